from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class PricingPolicy(models.Model):
    """The market's prices and rules, set by staff. Append-only: every change is a new row (who, when, what), and
    the newest row is in force from the next auction round. Prices are milli-cents per CH (1 ¢ = 1000 m¢)."""

    class PayoutSchedule(models.TextChoices):
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly"

    platform_fee_pct = models.DecimalField(
        "platform fee (%)", max_digits=5, decimal_places=2, validators=[MinValueValidator(0), MaxValueValidator(50)]
    )
    reserve_int8_mcents = models.PositiveIntegerField("INT8 reserve (m¢/CH)")
    reserve_fp8_mcents = models.PositiveIntegerField("FP8 reserve (m¢/CH)")
    reserve_fp16_mcents = models.PositiveIntegerField("FP16 reserve (m¢/CH)")
    reserve_fp32_mcents = models.PositiveIntegerField("FP32 reserve (m¢/CH)")
    price_ceiling_mcents = models.PositiveIntegerField("price ceiling (m¢/CH)", validators=[MinValueValidator(1)])
    default_energy_price_cents_per_kwh = models.DecimalField(
        "default energy price (¢/kWh)", max_digits=6, decimal_places=2, validators=[MinValueValidator(0)]
    )
    auction_interval_seconds = models.PositiveIntegerField(
        "auction interval (s)", validators=[MinValueValidator(10), MaxValueValidator(3600)]
    )
    min_payout_cents = models.PositiveIntegerField("minimum payout (¢)", default=1000)
    earnings_hold_hours = models.PositiveIntegerField("earnings hold (hours)", default=72)
    payout_schedule = models.CharField(max_length=8, choices=PayoutSchedule.choices, default=PayoutSchedule.WEEKLY)
    note = models.CharField(max_length=255, blank=True, help_text="Why this change (shown in the history).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "pricing policy"
        verbose_name_plural = "pricing policies (newest is in force)"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(price_ceiling_mcents__gte=models.F("reserve_int8_mcents"))
                & models.Q(price_ceiling_mcents__gte=models.F("reserve_fp8_mcents"))
                & models.Q(price_ceiling_mcents__gte=models.F("reserve_fp16_mcents"))
                & models.Q(price_ceiling_mcents__gte=models.F("reserve_fp32_mcents")),
                name="ceiling_above_reserves",
                violation_error_message="The price ceiling must be at least every reserve price.",
            )
        ]

    def __str__(self) -> str:
        return f"Pricing of {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def reserves(self) -> dict[str, int]:
        return {
            "int8": self.reserve_int8_mcents,
            "fp8": self.reserve_fp8_mcents,
            "fp16": self.reserve_fp16_mcents,
            "fp32": self.reserve_fp32_mcents,
        }
