from django import template

from ..selectors import pricing_current

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


@register.filter
def every(seconds: int) -> str:
    """How often something that recurs each `seconds` happens, in words: "every 30 seconds", "every minute",
    "every 2 minutes", "every 90 seconds" (a whole number of the largest unit that divides it)."""
    seconds = int(seconds)
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    return "every second" if seconds == 1 else f"every {seconds} seconds"


@register.simple_tag
def auction_every() -> str:
    """How often the auction runs under the pricing policy in force, e.g. "every minute" (staff change the interval
    in the admin, so pages never hard-code it)."""
    return every(pricing_current().auction_interval_seconds)


# What a model's returned output is, by the metric that judges it (a customer picks the metric for what the model
# computes: cosine for embeddings, top-1 for classifiers).
OUTPUT_KINDS = {"cosine": "embedding", "top1": "class scores", "max_abs": "output"}


def _meaningful(name: str) -> bool:
    """A name an exporter gave on purpose ("probabilities", "sentence_embedding"), not a graph's generated one:
    "461", "onnx::Shape_422", "/pooler/Tanh_output_0"."""
    return bool(name) and not name.replace("_", "").isdigit() and not any(mark in name for mark in (":", "/"))


@register.filter
def output_summary(model) -> str:
    """What a model's results hold for each item, in a customer's words: "the model's embedding (384 values per
    item)", "the model's class scores, “probabilities” (10 values per item)". The size comes from the trial run of
    one item where the graph leaves it symbolic; a symbolic dimension that ran as 1 in a text model is the tokens."""
    returned = next((o for o in model.outputs or [] if o.get("name") == model.output_name), None)
    if returned is None:
        return "the model's output"
    what = f"the model's {OUTPUT_KINDS.get(model.metric, 'output')}"
    if _meaningful(returned["name"]) and returned["name"] not in ("output", what.split()[-1]):
        what += f", “{returned['name']}”"
    ran = returned.get("run_shape") or []
    declared = returned.get("shape") or ["?"] * len(ran)  # an unknown rank: as it ran
    if not declared:
        return f"{what} (its size per item is set when the model runs)"
    dims, per_token = [], False
    for index, dim in enumerate(declared[1:], start=1):  # the first dimension is the batch of items
        if isinstance(dim, int) and dim > 0:
            dims.append(dim)
        elif index < len(ran) and ran[index] > 1:
            dims.append(ran[index])
        elif index < len(ran) and model.kind == "text":
            per_token = True
        else:
            return f"{what} (its size per item is set when the model runs)"
    count = 1
    for dim in dims:
        count *= dim
    where = "per token of each item" if per_token else "per item"
    if len(dims) > 1:
        article = "an" if str(dims[0]).startswith("8") or dims[0] in (11, 18) else "a"
        size = f"{article} {' × '.join(str(d) for d in dims)} array {where}, {count:,} values"
    else:
        size = f"{count:,} value{'s' if count != 1 else ''} {where}"
    return f"{what} ({size})"
