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
def make_list_of_pools(value: str) -> list[str]:
    return value.split()


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if mapping else None


@register.filter
def ago(moment) -> str:
    """How long ago `moment` was, in its largest unit: "just now" under a minute, "4 minutes ago", "2 hours ago"."""
    from django.utils import timezone
    from django.utils.timesince import timesince

    if moment is None:
        return ""
    if (timezone.now() - moment).total_seconds() < 60:
        return "just now"
    return f"{timesince(moment, depth=1)} ago"
