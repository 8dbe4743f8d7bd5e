from django import template

from ..selectors import platform_health_get

register = template.Library()


@register.inclusion_tag("ops/_platform_health.html")
def platform_health():
    return {"health": platform_health_get()}
