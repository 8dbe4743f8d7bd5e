"""The fleet's availability over the day: samples by local hour, averaged and drawn as text bars (pure, no Django)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AvailabilityCurve:
    """Per local hour of day: how many cars were sampled, how many were available, and the INT8 CH on offer."""

    samples: list[int] = field(default_factory=lambda: [0] * 24)
    cars: list[int] = field(default_factory=lambda: [0] * 24)
    available: list[int] = field(default_factory=lambda: [0] * 24)
    ch_int8: list[float] = field(default_factory=lambda: [0.0] * 24)

    def add(self, *, hour: int, cars: int, available: int, ch_int8: float) -> None:
        self.samples[hour] += 1
        self.cars[hour] += cars
        self.available[hour] += available
        self.ch_int8[hour] += ch_int8

    def share(self, hour: int) -> float:
        """Mean share of cars available at that hour (0–1); 0 when never sampled."""
        return self.available[hour] / self.cars[hour] if self.cars[hour] else 0.0

    def mean_share(self, hours: range | list[int]) -> float:
        cars = sum(self.cars[h] for h in hours)
        return sum(self.available[h] for h in hours) / cars if cars else 0.0

    def as_dict(self) -> dict:
        return {
            "hours": [
                {
                    "hour": h,
                    "samples": self.samples[h],
                    "available_share": round(self.share(h), 4),
                    "mean_ch_int8": round(self.ch_int8[h] / self.samples[h], 3) if self.samples[h] else 0.0,
                }
                for h in range(24)
            ],
            "night_share": round(self.mean_share(NIGHT), 4),
            "morning_peak_share": round(self.mean_share(MORNING_PEAK), 4),
        }

    def render(self, width: int = 50) -> str:
        lines = ["hour  available cars (share of fleet)                      INT8 CH on offer"]
        for h in range(24):
            if not self.samples[h]:
                lines.append(f"{h:02d}:00  (not sampled)")
                continue
            share = self.share(h)
            bar = "█" * round(share * width)
            lines.append(f"{h:02d}:00 {bar:<{width}} {share:4.0%}  {self.ch_int8[h] / self.samples[h]:8.1f}")
        lines.append(
            f"night (00–05): {self.mean_share(NIGHT):.0%} available; "
            f"morning peak (07–09): {self.mean_share(MORNING_PEAK):.0%} available"
        )
        return "\n".join(lines)


NIGHT = range(0, 5)
MORNING_PEAK = range(7, 9)
