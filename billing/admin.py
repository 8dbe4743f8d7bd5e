from django.contrib import admin

from .models import PricingPolicy
from .selectors import pricing_current


@admin.register(PricingPolicy)
class PricingPolicyAdmin(admin.ModelAdmin):
    """Append-only: "change" saves a new version (the history keeps who changed what, and when)."""

    list_display = (
        "created_at", "created_by", "platform_fee_pct", "reserve_int8_mcents", "reserve_fp8_mcents",
        "reserve_fp16_mcents", "reserve_fp32_mcents", "price_ceiling_mcents", "auction_interval_seconds", "note",
    )  # fmt: skip
    list_filter = ("created_by", "payout_schedule")
    readonly_fields = ("created_by", "created_at")
    fieldsets = (
        ("Market", {"fields": ("platform_fee_pct", "price_ceiling_mcents", "auction_interval_seconds")}),
        (
            "Reserve prices (m¢ per CH; 1 ¢ = 1000 m¢)",
            {"fields": ("reserve_int8_mcents", "reserve_fp8_mcents", "reserve_fp16_mcents", "reserve_fp32_mcents")},
        ),
        (
            "Owners",
            {
                "fields": (
                    "default_energy_price_cents_per_kwh",
                    "min_payout_cents",
                    "earnings_hold_hours",
                    "payout_schedule",
                )
            },
        ),
        ("Change", {"fields": ("note", "created_by", "created_at")}),
    )

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_changeform_initial_data(self, request):
        current = PricingPolicy.objects.first()
        if current is not None:
            skip = ("id", "created_by", "created_at", "note")
            return {f.name: getattr(current, f.name) for f in PricingPolicy._meta.fields if f.name not in skip}
        pricing = pricing_current()
        return {
            "platform_fee_pct": pricing.platform_fee_pct,
            "price_ceiling_mcents": pricing.price_ceiling_mcents,
            "auction_interval_seconds": pricing.auction_interval_seconds,
            "default_energy_price_cents_per_kwh": pricing.default_energy_price_cents_per_kwh,
            **{f"reserve_{pool}_mcents": value for pool, value in pricing.reserves.items()},
        }

    def save_model(self, request, obj, form, change):
        # Never edit history: a change is saved as a new version.
        obj.pk = None
        obj.created_by = request.user
        super().save_model(request, obj, form, False)
