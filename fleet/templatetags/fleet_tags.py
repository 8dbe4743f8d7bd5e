from django import template

from core.money import plain_significant

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


@register.filter
def energy_wh(value) -> str:
    """Energy in Wh for people: '1.2 kWh', '35 Wh', '0.014 Wh' (three significant figures below 10 Wh)."""
    if value is None or value == "":
        return "—"
    value = float(value)
    if value >= 1000:
        return f"{value / 1000:.1f} kWh"
    if value >= 10:
        return f"{value:.0f} Wh"
    return f"{value:.3g} Wh"


@register.filter
def compute_class_name(value: str) -> str:
    """A compute class (fleet/agent/hardware.py) in words: "x86_64-avx2" -> "x86-64 with AVX2, no VNNI"."""
    from fleet.agent.hardware import CLASS_NAMES

    return CLASS_NAMES.get(value, value or "unknown CPU")


@register.filter
def ch_amount(value) -> str:
    """Compute-hours for people, whatever their size: '1,240', '2.45', '0.00135' (a CPU-bound car measures a
    thousandth of its rated CH), '0.000000014', '—' for none."""
    if value is None or value == "":
        return "—"
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 0.1 or value == 0:
        return f"{value:.2f}"
    return plain_significant(value)  # never an exponent: a MiniLM document is 0.000000014 CH
