"""The pricing in force: the newest PricingPolicy, or the settings' defaults before staff ever set one."""

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from .models import PricingPolicy


@dataclass(frozen=True)
class Pricing:
    platform_fee_pct: float
    reserves: dict[str, int]  # pool -> m¢/CH
    price_ceiling_mcents: int
    default_energy_price_cents_per_kwh: Decimal
    auction_interval_seconds: int


def pricing_current() -> Pricing:
    policy = PricingPolicy.objects.order_by("-created_at", "-pk").first()
    if policy is None:
        return Pricing(
            platform_fee_pct=settings.PLATFORM_FEE_PCT,
            reserves=dict(settings.RESERVE_PRICES_MCENTS_PER_CH),
            price_ceiling_mcents=settings.PRICE_CEILING_MCENTS_PER_CH,
            default_energy_price_cents_per_kwh=Decimal(str(settings.DEFAULT_ENERGY_PRICE_CENTS_PER_KWH)),
            auction_interval_seconds=settings.AUCTION_INTERVAL_SECONDS,
        )
    return Pricing(
        platform_fee_pct=float(policy.platform_fee_pct),
        reserves=policy.reserves,
        price_ceiling_mcents=policy.price_ceiling_mcents,
        default_energy_price_cents_per_kwh=policy.default_energy_price_cents_per_kwh,
        auction_interval_seconds=policy.auction_interval_seconds,
    )
