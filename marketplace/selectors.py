"""Reads of the marketplace. A customer sees their own models and datasets and the catalogue; others' are 404."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet
from django.http import Http404

from accounts.models import User

from .models import Dataset, InferenceModel, PrecisionVariant, WorkUnit


def inference_models_visible(*, user: User) -> QuerySet[InferenceModel]:
    return InferenceModel.objects.filter(Q(owner=user) | Q(is_catalogue=True)).order_by("-is_catalogue", "-created_at")


def inference_model_get(*, user: User, model_id: int) -> InferenceModel:
    try:
        return inference_models_visible(user=user).get(pk=model_id)
    except InferenceModel.DoesNotExist:
        raise Http404("No such model.") from None


def inference_model_get_own(*, user: User, model_id: int) -> InferenceModel:
    """A model the user may change: their own (catalogue models are read-only to customers)."""
    try:
        return InferenceModel.objects.get(pk=model_id, owner=user)
    except InferenceModel.DoesNotExist:
        raise Http404("No such model.") from None


def datasets_visible(*, user: User, model: InferenceModel) -> QuerySet[Dataset]:
    return model.datasets.filter(Q(owner=user) | Q(owner__isnull=True))


def variant_passes(variant: PrecisionVariant) -> bool | None:
    """Whether a ready variant meets its model's tolerance; None while it has no accuracy yet."""
    from .inference.accuracy import passes

    if variant.status != PrecisionVariant.Status.READY or not variant.metrics:
        return None
    model = variant.inference_model
    return passes(variant.metrics, metric=model.metric, tolerance=model.tolerance)


def variant_pick_auto(*, model: InferenceModel, available: set[str] | None = None) -> PrecisionVariant | None:
    """The cheapest variant that meets the model's tolerance ("auto" precision)."""
    from .inference.costing import AUTO_ORDER

    variants = {v.precision: v for v in model.variants.all()}
    for precision in AUTO_ORDER:
        variant = variants.get(precision)
        if variant is None or (available is not None and precision not in available):
            continue
        if precision == "fp32" and variant.status == PrecisionVariant.Status.READY:
            return variant
        if variant_passes(variant):
            return variant
    return None


def bids_for_customer(*, user: User) -> QuerySet:
    from .models import Bid

    return Bid.objects.filter(customer=user).select_related("inference_model", "dataset", "variant")


def bid_get_for_customer(*, user: User, bid_id: int):
    from .models import Bid

    try:
        return bids_for_customer(user=user).get(pk=bid_id)
    except Bid.DoesNotExist:
        raise Http404("No such bid.") from None


def bid_progress(*, bid) -> dict[str, int]:
    """How many work units the bid has (replicas included) and the items of those done, in one query."""
    from django.db.models import Count, F, Sum

    return bid.units.aggregate(
        unit_count=Count("pk"),
        done_items=Sum(F("item_end") - F("item_start"), filter=Q(status=WorkUnit.Status.DONE), default=0),
    )


def market_latest() -> dict[str, dict]:
    """Per pool: the last round's clearing price, volume and unfilled demand (m¢/CH, CH)."""
    from .models import PoolClearing, Round

    last = Round.objects.filter(finished_at__isnull=False).order_by("-slot").first()
    if last is None:
        return {}
    return {
        c.pool: {
            "clearing_price_mcents": c.clearing_price_mcents,
            "reserve_mcents": c.reserve_mcents,
            "volume_ch": c.volume_ch,
            "unfilled_demand_ch": c.unfilled_demand_ch,
            "supply_ch": c.supply_ch,
            "index_mcents": c.index_mcents,
            "round": last.slot,
        }
        for c in PoolClearing.objects.filter(round=last)
    }


def market_history(*, rounds: int = 120) -> dict:
    """The smoothed price index per pool over the last rounds, for the chart (oldest first)."""
    from .models import PoolClearing, Round

    slots = list(
        Round.objects.filter(finished_at__isnull=False).order_by("-slot").values_list("slot", flat=True)[:rounds]
    )
    slots.reverse()
    series: dict[str, list] = {}
    by_key = {
        (c.round.slot, c.pool): c for c in PoolClearing.objects.filter(round__slot__in=slots).select_related("round")
    }
    for pool in ("int8", "fp16", "fp32", "fp8"):
        series[pool] = [(by_key[(slot, pool)].index_mcents if (slot, pool) in by_key else None) for slot in slots]
    return {"labels": [slot.isoformat() for slot in slots], "series": series}


def bid_estimates(*, datasets, variant, market: dict[str, dict]) -> list[dict]:
    """What each dataset would cost with this variant at the pool's last clearing price (or its reserve)."""
    from billing.selectors import pricing_current

    if variant is None or variant.ch_per_item is None:
        return []
    last = market.get(variant.precision, {})
    price = last.get("clearing_price_mcents") or pricing_current().reserves[variant.precision]
    rows = []
    for dataset in datasets:
        ch = dataset.item_count * variant.ch_per_item
        rows.append({"dataset": dataset, "ch": ch, "price_mcents": price, "cost_cents": ch * price / 1000})
    return rows


@dataclass(frozen=True)
class VerificationOverview:
    results_valid: int
    results_invalid: int
    results_pending: int
    canonical_ch: float
    replica_ch: float
    cars_suspended: int
    cars_trusted: int

    @property
    def overhead_pct(self) -> float | None:
        """CH run again to check results, as a share of the CH customers paid for."""
        return round(100 * self.replica_ch / self.canonical_ch, 1) if self.canonical_ch else None


def verification_overview(*, trusted_after: int) -> VerificationOverview:
    """For staff: how much checking untrusted cars costs and what it catches."""
    from django.db.models import Count, Sum

    from fleet.models import Vehicle

    done = WorkUnit.objects.filter(status=WorkUnit.Status.DONE)
    counts = dict(done.values_list("verification").annotate(n=Count("pk")).order_by())
    ch = dict(done.filter(verification=WorkUnit.Verification.VALID).values_list("canonical").annotate(
        ch=Sum("ch")).order_by())  # fmt: skip
    cars = Vehicle.objects.aggregate(
        suspended=Count("pk", filter=Q(status=Vehicle.Status.SUSPENDED)),
        trusted=Count("pk", filter=Q(valid_streak__gte=trusted_after)),
    )
    return VerificationOverview(
        results_valid=counts.get(WorkUnit.Verification.VALID, 0),
        results_invalid=counts.get(WorkUnit.Verification.INVALID, 0),
        results_pending=counts.get(WorkUnit.Verification.PENDING, 0),
        canonical_ch=ch.get(True, 0.0) or 0.0,
        replica_ch=ch.get(False, 0.0) or 0.0,
        cars_suspended=cars["suspended"],
        cars_trusted=cars["trusted"],
    )
