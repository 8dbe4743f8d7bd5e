from django import template

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """Seconds as '3 h 20 min', '12 min' or '40 s'."""
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


@register.filter
def get(mapping, key):
    return mapping.get(key) if mapping else None
