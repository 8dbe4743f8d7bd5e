"""Quantities written for people (pure: no Django, so the pure cores and the agent-side checks may use it)."""


def human_bytes(size: int) -> str:
    """A size in bytes as people read it, in powers of 1,000: 268435456 -> "268.4 MB"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
