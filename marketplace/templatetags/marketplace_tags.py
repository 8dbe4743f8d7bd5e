from django import template

register = template.Library()

METRIC_LABELS = {
    "cosine_min": "cosine, worst item",
    "cosine_mean": "cosine, mean",
    "top1_agreement": "top-1 agreement",
    "max_abs_error": "max abs error",
}


@register.filter
def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key.replace("_", " "))


@register.filter
def dollars_per_ch(mcents) -> str:
    """A price in milli-cents per CH as dollars: 5200 -> "$0.0520/CH"."""
    if mcents is None or mcents == "":  # "": a missing variable, e.g. a pool before the first round
        return "—"
    return f"${mcents / 100_000:.4f}/CH"


@register.filter
def cents(value) -> str:
    """Integer cents as a dollar amount: 1234 -> "12.34"."""
    return f"{int(value) / 100:,.2f}"


@register.filter
def make_list_of_pools(value: str) -> list[str]:
    return value.split()


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if mapping else None
