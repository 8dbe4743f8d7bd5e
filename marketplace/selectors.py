"""Reads of the marketplace. A customer sees their own models and datasets and the catalogue; others' are 404."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import F, OuterRef, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from accounts.models import User
from core.exceptions import ApplicationError
from core.money import nc_from_cents, nc_from_mcents
from fleet.agent.precisions import FP8, FP16, FP32, INT8
from fleet.models import Vehicle, region_normalize, validate_region

from .models import Dataset, InferenceModel, PoolClearing, PrecisionVariant, PricingPolicy, Round, WorkUnit


@dataclass(frozen=True)
class Pricing:
    platform_fee_pct: float
    reserves: dict[str, int]  # pool -> m¢/CH
    price_ceiling_mcents: int
    auction_interval_seconds: int


def pricing_current() -> Pricing:
    """The market's rules in force: the newest PricingPolicy, or the settings' defaults before staff ever set one."""
    policy = PricingPolicy.objects.order_by("-created_at", "-pk").first()
    if policy is None:
        return Pricing(
            platform_fee_pct=settings.PLATFORM_FEE_PCT,
            reserves=dict(settings.RESERVE_PRICES_MCENTS_PER_CH),
            price_ceiling_mcents=settings.PRICE_CEILING_MCENTS_PER_CH,
            auction_interval_seconds=settings.AUCTION_INTERVAL_SECONDS,
        )
    return Pricing(
        platform_fee_pct=float(policy.platform_fee_pct),
        reserves=policy.reserves,
        price_ceiling_mcents=policy.price_ceiling_mcents,
        auction_interval_seconds=policy.auction_interval_seconds,
    )


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


def variant_scope(*, model: InferenceModel, dataset: Dataset | None) -> Dataset | None:
    """Whose builds of `model` a bid on `dataset` runs: the dataset's own when it is a customer's dataset of a model
    that customer does not own (a catalogue model), so nothing one customer uploads changes what another runs or is
    gated on; else None, the model's shared builds."""
    if dataset is not None and dataset.owner_id is not None and dataset.owner_id != model.owner_id:
        return dataset
    return None


def variants_in_force(*, model: InferenceModel, dataset: Dataset | None = None) -> dict[str, PrecisionVariant]:
    """Per precision, the build a new bid on `dataset` (the model's shared builds when None) would run
    (builds_in_force). A customer's dataset without builds of its own (uploaded before they existed) runs the
    shared ones.

    A bid is judged on its own dataset: the shared builds are rebuilt on each dataset their owner uploads, and the
    one in force was calibrated and measured on the newest, so a bid on an older dataset runs the newest ready build
    made on its own items (kept, though retired, for it), or one still on its way; only a dataset no build was ever
    made on (superseded before it was built) runs the builds in force."""
    scope = variant_scope(model=model, dataset=dataset)
    rows = _variant_rows(model, scope)
    if scope is not None and not rows:
        rows = _variant_rows(model, None)
    chosen = builds_in_force(rows)
    if dataset is not None and scope is None:
        chosen.update(_builds_made_on(model, dataset))
    return chosen


def _builds_made_on(model: InferenceModel, dataset: Dataset) -> dict[str, PrecisionVariant]:
    """Per precision, of the shared builds made on `dataset`: the newest ready one (retired or not: a newer dataset
    retires it, a bid on this one still runs it), else the newest not retired (on its way, or failed)."""
    rows = PrecisionVariant.objects.filter(inference_model=model, dataset=None, evaluated_on=dataset)
    rows = list(rows.select_related("inference_model").prefetch_related("accuracies").order_by("-pk"))
    chosen: dict[str, PrecisionVariant] = {}
    for variant in rows:
        if variant.status == PrecisionVariant.Status.READY:
            chosen.setdefault(variant.precision, variant)
    for variant in builds_in_force([v for v in rows if v.retired_at is None]).values():
        chosen.setdefault(variant.precision, variant)
    return chosen


def builds_in_force(rows) -> dict[str, PrecisionVariant]:
    """Per precision, of one scope's builds not retired: the one in force (ready or failed), else the newest on its
    way. A rebuild on its way leaves the build in force serving until it is ready."""
    chosen: dict[str, PrecisionVariant] = {}
    for variant in sorted(rows, key=lambda v: (v.pending, -v.pk)):
        chosen.setdefault(variant.precision, variant)
    return chosen


def _variant_rows(model: InferenceModel, scope: Dataset | None) -> list[PrecisionVariant]:
    rows = PrecisionVariant.objects.filter(inference_model=model, dataset=scope, retired_at__isnull=True)
    return list(rows.select_related("inference_model").prefetch_related("accuracies"))


def rebuild_failures(
    *, model: InferenceModel, in_force: dict[str, PrecisionVariant], dataset: Dataset | None = None
) -> dict[str, PrecisionVariant]:
    """Per precision, a rebuild that failed after the build in force (`in_force`: variants_in_force) was made (that
    build keeps serving): its owner reads why (services.variant_decide)."""
    scope = variant_scope(model=model, dataset=dataset)
    failed = PrecisionVariant.objects.filter(
        inference_model=model, dataset=scope, status=PrecisionVariant.Status.FAILED, retired_at__isnull=False
    ).order_by("pk")
    return {
        v.precision: v
        for v in failed
        if v.precision in in_force and in_force[v.precision].status == "ready" and v.pk > in_force[v.precision].pk
    }


def variants_rebuilding(*, model: InferenceModel, dataset: Dataset | None = None) -> bool:
    """Whether builds of `model` in the scope of `dataset` are on their way (pages poll while they are)."""
    scope = variant_scope(model=model, dataset=dataset)
    return PrecisionVariant.objects.filter(
        inference_model=model, dataset=scope, retired_at__isnull=True, status__in=["queued", "building"]
    ).exists()


def datasets_with_own_builds(*, user: User, model: InferenceModel) -> QuerySet[Dataset]:
    """The user's datasets of `model` that have builds of their own (a customer's own data for a catalogue model),
    newest first."""
    return model.datasets.filter(owner=user, own_variants__isnull=False).distinct().order_by("-created_at")


def variant_passes(variant: PrecisionVariant) -> bool | None:
    """Whether a ready variant meets its model's tolerance; None while it has no accuracy yet."""
    from .inference.accuracy import passes

    if variant.status != PrecisionVariant.Status.READY or not variant.metrics:
        return None
    model = variant.inference_model
    return passes(variant.metrics, metric=model.metric, tolerance=model.tolerance)


def variant_pick_auto(*, model: InferenceModel, available: set[str] | None = None) -> PrecisionVariant | None:
    """The cheapest variant that meets the model's tolerance on the platform's measurement, among `available`
    precisions (all when None), regardless of the fleet: what "auto" would run with every car at hand. What it runs
    with the cars there are is `pools_outlook` / `auto_pick`."""
    from .inference.costing import AUTO_ORDER

    variants = variants_in_force(model=model)
    for precision in AUTO_ORDER:
        variant = variants.get(precision)
        if variant is None or (available is not None and precision not in available):
            continue
        if precision == "fp32" and variant.status == PrecisionVariant.Status.READY:
            return variant
        if variant_passes(variant):
            return variant
    return None


@dataclass(frozen=True)
class PoolOutlook:
    """Whether a model's variant of one precision can run on the fleet, and how much supply there is for it now."""

    precision: str
    variant: PrecisionVariant | None
    cars: int  # active, opted-in cars whose hardware runs the precision, outside classes it misses the tolerance on
    ch_on_offer: float  # CH the cars available now offer in this pool (the fleet overview: at most 15 s old)
    reserve_mcents: int
    problem: str  # why it cannot run, in the customer's words; "" when it can

    @property
    def runnable(self) -> bool:
        return not self.problem


def pools_outlook(
    *,
    model: InferenceModel,
    dataset: Dataset | None = None,
    max_price_mcents: int | None = None,
    fleet: dict | None = None,
) -> list[PoolOutlook]:
    """For each precision, cheapest first (costing.AUTO_ORDER): can the fleet run this model's variant of it?

    It can when the variant is ready and meets the model's tolerance (as the platform measured it when building it),
    its pool's reserve is within `max_price_mcents` (when given), and some active, opted-in car has hardware that
    runs the precision and is not of a compute class the variant missed the tolerance on (VariantAccuracy: every car
    of the class that self-tested it failed, and at least CLASS_FAILS_AFTER did). A car need not be online now: the
    fleet's cars park and leave all day. `ch_on_offer` is what the cars available now offer in the pool. `fleet`:
    fleet_capability(), when the caller already has it. `dataset`: the builds of a bid on it (variants_in_force)."""
    from fleet.agent.hardware import CLASS_NAMES
    from fleet.selectors import fleet_overview_cached

    from .inference.costing import AUTO_ORDER

    variants = variants_in_force(model=model, dataset=dataset)
    reserves = pricing_current().reserves
    fleet = fleet_capability() if fleet is None else fleet
    overview = fleet_overview_cached()
    failing = _classes_failing([v.pk for v in variants.values()])
    outlook = []
    for precision in AUTO_ORDER:
        variant = variants.get(precision)
        reserve = reserves[precision]
        problem, cars = "", 0
        if variant is None:
            problem = "no variant built yet"
        elif variant.status != PrecisionVariant.Status.READY:
            problem = f"its variant is {variant.get_status_display().lower()}"
        elif precision != "fp32" and not variant_passes(variant):
            measured = _metric_value(variant.metrics, model.metric)
            problem = f"misses your tolerance ({model.metric} {measured} against {model.tolerance:g})"
        else:
            bad = failing.get(variant.pk, set())
            runs = [(n, compute_class) for (runs_it, compute_class), n in fleet.get(precision, {}).items() if runs_it]
            cars = sum(n for n, compute_class in runs if compute_class not in bad)
            if not runs:
                problem = f"no car runs {precision.upper()}"
            elif not cars:
                names = ", ".join(sorted(CLASS_NAMES.get(c, c) for c in bad))
                problem = f"misses your tolerance on every car that runs it ({names})"
            elif max_price_mcents is not None and max_price_mcents < reserve:
                problem = f"its reserve price is {reserve:,} m¢ per CH, above your maximum"
        outlook.append(
            PoolOutlook(precision=precision, variant=variant, cars=cars, reserve_mcents=reserve, problem=problem,
                        ch_on_offer=overview.ch_per_precision.get(precision, 0.0))
        )  # fmt: skip
    return outlook


def auto_pick(outlook: list[PoolOutlook], *, ch_needed: float | None = None) -> PoolOutlook | None:
    """What "auto" runs: the cheapest runnable precision whose cars on offer now can do the job (`ch_needed` CH), else
    the cheapest runnable one (its cars are away now; the bid waits for them); None when none can run."""
    runnable = [pool for pool in outlook if pool.runnable]
    if ch_needed is not None:
        for pool in runnable:
            if pool.ch_on_offer >= ch_needed:
                return pool
    return runnable[0] if runnable else None


def outlook_message(outlook: list[PoolOutlook]) -> str:
    """Why nothing can run, precision by precision."""
    return "; ".join(f"{pool.precision.upper()}: {pool.problem}" for pool in outlook if pool.problem)


def _metric_value(metrics: dict, metric: str) -> str:
    key = {"cosine": "cosine_min", "top1": "top1_agreement", "max_abs": "max_abs_error"}.get(metric, "")
    return f"{metrics[key]:.4f}" if key in metrics else "not measured"


def fleet_capability() -> dict[str, dict[tuple[bool, str], int]]:
    """Active, opted-in cars by precision: {precision: {(its hardware runs it, compute class): cars}}, one query."""
    from django.db.models import Count

    from fleet.models import Vehicle

    rows = (
        Vehicle.objects.filter(status=Vehicle.Status.ACTIVE, policy__enabled=True)
        .values_list("compute_class", "hardware__factor_int8", "hardware__factor_fp8", "hardware__factor_fp16",
                     "hardware__factor_fp32")
        .annotate(n=Count("pk"))
        .order_by()
    )  # fmt: skip
    fleet: dict[str, dict[tuple[bool, str], int]] = {}
    for compute_class, int8, fp8, fp16, fp32, n in rows:
        for precision, factor in ((INT8, int8), (FP8, fp8), (FP16, fp16), (FP32, fp32)):
            key = (bool(factor), compute_class or "")
            fleet.setdefault(precision, {})[key] = fleet.get(precision, {}).get(key, 0) + n
    return fleet


# Cars of one class whose self-tests must all have missed a variant's tolerance before "auto" counts the class out:
# one car (broken, or lying on purpose) does not speak for its class. Each car is gated by its own self-test anyway.
CLASS_FAILS_AFTER = 2


def _classes_failing(variant_ids: list[int]) -> dict[int, set[str]]:
    """Per variant, the compute classes on which every car that self-tested it (CLASS_FAILS_AFTER at least) missed
    the model's tolerance."""
    from django.db.models import F

    from .models import VariantAccuracy

    failing: dict[int, set[str]] = {}
    rows = VariantAccuracy.objects.filter(
        variant_id__in=variant_ids, cars_failed__gte=CLASS_FAILS_AFTER, cars_failed=F("cars_tested")
    ).values_list("variant_id", "compute_class")
    for variant_id, compute_class in rows:
        failing.setdefault(variant_id, set()).add(compute_class)
    return failing


def bids_for_customer(*, user: User) -> QuerySet:
    from .models import Bid

    return Bid.objects.filter(customer=user).select_related("inference_model", "dataset", "variant")


def bid_get_for_customer(*, user: User, bid_id: int, progress: bool = False):
    """The customer's bid `bid_id` (another customer's is a 404); with `progress`, as `bids_with_progress` gives it."""
    from .models import Bid

    bids = bids_for_customer(user=user)
    try:
        return (bids_with_progress(bids) if progress else bids).get(pk=bid_id)
    except Bid.DoesNotExist:
        raise Http404("No such bid.") from None


def bids_with_progress(bids: QuerySet) -> QuerySet:
    """Bids with `items_done` (items whose result is the customer's: validated, each slice once) and
    `allocations_won` (the rounds that sold the customer compute for them, oldest first), in two queries for any
    number of bids."""
    from django.db.models import F, Prefetch, Subquery, Sum
    from django.db.models.functions import Coalesce

    from .models import Allocation

    done = (
        WorkUnit.objects.filter(_CUSTOMER_RESULT, bid=OuterRef("pk"))
        .order_by()
        .values("bid")
        .annotate(items=Sum(F("item_end") - F("item_start")))
        .values("items")
    )
    won = Allocation.objects.filter(for_verification=False).select_related("round").order_by("round__slot", "pk")
    return bids.annotate(items_done=Coalesce(Subquery(done), 0)).prefetch_related(
        Prefetch("allocations", queryset=won, to_attr="allocations_won")
    )


JOB_FILTERS = {
    "open": ("waiting", "running", "paused", "authorizing", "validating"),
    "completed": ("completed",),
    "ended": ("failed", "cancelled", "expired", "declined"),
}


def jobs_for_customer(*, user: User, show: str = "") -> QuerySet:
    """The customer's jobs for "My jobs", newest first, with their progress; `show` keeps one group of statuses
    (JOB_FILTERS) or one status; anything else shows all."""
    from .models import Bid

    bids = bids_for_customer(user=user).order_by("-created_at", "-pk")  # a stable order for the pages
    statuses = JOB_FILTERS.get(show) or ((show,) if show in Bid.Status.values else None)
    if statuses:
        bids = bids.filter(status__in=statuses)
    return bids_with_progress(bids)


_CUSTOMER_RESULT = Q(canonical=True, verification=WorkUnit.Verification.VALID, status=WorkUnit.Status.DONE)


def customer_results(*, bid) -> QuerySet:
    """The bid's results that are the customer's: for each slice of items, its one canonical, validated result
    (whichever car returned it). Replicas that confirmed it are the platform's cost, not the customer's work;
    billing charges exactly these (billing/services/settling.py)."""
    return bid.units.filter(_CUSTOMER_RESULT)


def bid_progress(*, bid) -> dict[str, int]:
    """How many slices of items the bid has been cut into, and how many of its items have their result, in one
    query. A slice run again to check it counts once: replicas are not the customer's work, and a result still
    waiting for a second opinion is not done."""
    from django.db.models import Count, F, Sum

    return bid.units.aggregate(
        unit_count=Count("pk", filter=Q(replica_of__isnull=True)),
        done_items=Sum(
            F("item_end") - F("item_start"),
            filter=_CUSTOMER_RESULT,
            default=0,
        ),
    )


def bid_audits(*, bid) -> QuerySet:
    """The audits of the bid's results (a car that ran part of it was caught lying), newest first."""
    return bid.audits.order_by("-opened_at", "-pk")


def bid_allocations_won(*, bid) -> QuerySet:
    """The rounds the customer won for the bid: its allocations, less those the platform bought to check results
    (rounds.verification_allocate marks them). Newest first."""
    return bid.allocations.filter(for_verification=False).order_by("-round__slot")


# --- Market regions ---------------------------------------------------------------------------------------------------
# Each region is a market of its own (rounds.py runs one round per slot and region): its cars, its prices, its history.
# The blank region is the market of the cars that have no region.

MARKET_REGIONS_WINDOW = timedelta(hours=24)


def market_regions() -> list[str]:
    """The regions whose market is running: each has a finished round in the last 24 hours. Sorted, so the blank
    region (cars without one) comes first. One query, on Round's (region, -slot) index."""
    since = timezone.now() - MARKET_REGIONS_WINDOW
    rows = Round.objects.filter(finished_at__isnull=False, slot__gte=since).order_by().values_list("region", flat=True)
    return sorted(set(rows.distinct()))


def regions_known() -> list[str]:
    """The regions a bid may be pinned to, sorted (the blank region left out: a bid without one runs anywhere): the
    regions whose market is running, and those of the active cars (a region's first cars sell in its next round)."""
    cars = Vehicle.objects.filter(status=Vehicle.Status.ACTIVE).exclude(region="").order_by()
    return sorted({*market_regions(), *cars.values_list("region", flat=True).distinct()} - {""})


def region_known(region: str, *, regions: list[str] | None = None) -> bool:
    """Whether `region` is a market: a round was ever held in it, or an active car sells in it. None of the two
    indexed look-ups for a region among `regions` (market_regions(), when the caller has it)."""
    if not region or region in (regions or ()):
        return True
    return (
        Round.objects.filter(region=region).exists()
        or Vehicle.objects.filter(region=region, status=Vehicle.Status.ACTIVE).exists()
    )


def region_check(value: str, *, field: str = "region", regions: list[str] | None = None) -> str:
    """`value` as a region code (upper case: " de" is DE), if it is one of a market (region_known; `regions`:
    market_regions(), when the caller has it); else an ApplicationError naming `field`. Blank stays blank."""
    region = region_normalize(value)
    try:
        validate_region(region)
    except ValidationError as error:
        raise ApplicationError.for_field(field, error.messages[0]) from None
    if not region_known(region, regions=regions):
        raise ApplicationError.for_field(
            field, f"No market in region {region}: no car sells there. Leave it out, or pick a region cars sell in."
        )
    return region


def market_region_default(*, regions: list[str] | None = None) -> str:
    """The market shown when none is asked for: the first whose market is running (market_regions, or `regions` when
    the caller has it: the blank region's when it is, as before there were regions), else the region of the newest
    round (a market that stopped still shows its last prices), else blank."""
    regions = market_regions() if regions is None else regions
    if regions:
        return regions[0]
    newest = Round.objects.filter(finished_at__isnull=False).order_by("-slot", "region")
    return newest.values_list("region", flat=True).first() or ""


def market_region_get(region: str | None, *, regions: list[str] | None = None) -> str:
    """The market region a page or the API is asked for (`?region=`; blank: the cars without one), checked by
    region_check (an ApplicationError naming `region`); the default market when none is asked for (None).
    `regions`: market_regions(), when the caller has it (a page that lists them): then a running market costs no
    query."""
    if region is None:
        return market_region_default(regions=regions)
    return region_check(region, regions=regions)


def _region_or_default(region: str | None) -> str:
    return market_region_default() if region is None else region


def market_latest(*, region: str | None = None) -> dict[str, dict]:
    """Per pool of `region`'s market (None: market_region_default): its last round's clearing price, volume and
    unfilled demand (m¢/CH, CH), and the pool's last trade (`last_trade_mcents` at `last_trade_at`, the slot of the
    newest round where it traded; None when it never did), so a pool that did not trade in the last round still shows
    its last price. Rounds carry the last trade forward (rounds._store), so this is two queries however long the
    history."""
    region = _region_or_default(region)
    last = Round.objects.filter(region=region, finished_at__isnull=False).order_by("-slot").first()
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
            "last_trade_mcents": c.last_trade_mcents,
            "last_trade_at": c.last_trade_at,
        }
        for c in PoolClearing.objects.filter(round=last)
    }


def pool_prices_now(
    *, outlook: list[PoolOutlook], market: dict[str, dict] | None = None, region: str | None = None
) -> dict[str, int]:
    """Per precision, what a CH costs now in `region`'s market (m¢/CH; None: market_region_default): the pool's last
    clearing price, or its reserve before any round cleared it. One query (the last round), none when `market` is
    given."""
    market = market_latest(region=region) if market is None else market
    return {
        p.precision: (market.get(p.precision) or {}).get("clearing_price_mcents") or p.reserve_mcents for p in outlook
    }


def market_history(*, region: str | None = None, rounds: int = 120) -> dict:
    """The smoothed price index per pool of `region`'s market (None: market_region_default) over its last rounds, for
    the chart (oldest first)."""
    region = _region_or_default(region)
    slots = list(
        Round.objects.filter(region=region, finished_at__isnull=False)
        .order_by("-slot")
        .values_list("slot", flat=True)[:rounds]
    )
    slots.reverse()
    series: dict[str, list] = {}
    by_key = {
        (c.round.slot, c.pool): c
        for c in PoolClearing.objects.filter(round__region=region, round__slot__in=slots).select_related("round")
    }
    # The order the chart's legend and the API's `history.series` have always had (neither the pools' order nor
    # cheapest first); kept, as readers of the chart and clients of the API know it.
    prices: dict[str, list] = {}
    for pool in (INT8, FP16, FP32, FP8):
        series[pool] = [(by_key[(slot, pool)].index_mcents if (slot, pool) in by_key else None) for slot in slots]
        prices[pool] = [
            (by_key[(slot, pool)].clearing_price_mcents if (slot, pool) in by_key else None) for slot in slots
        ]
    return {"labels": [slot.isoformat() for slot in slots], "series": series, "prices": prices}


MARKET_HISTORY_POOLS = (INT8, FP16, FP32, FP8)


def market_history_rows(
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    pools: Iterable[str] | None = None,
    region: str | None = None,
) -> QuerySet:
    """What each round of `region`'s market (None: market_region_default) published per pool, newest first (then by
    pool), with the round's slot as `slot` and its region as `region`: the public price history (GET
    /api/v1/market/history/). `start` is inclusive and `end` exclusive (slot >= start and slot < end), so
    consecutive ranges never share a round. Only finished rounds; no bid, customer or car is in any row.

    One region's rows only: a round is one (slot, region), so within a region (slot, pool) names a row, which the
    API's pages key on. One query per page: the region's rounds are walked newest first on Round's (region, -slot)
    index and each round's clearings are found on the (round, pool) unique index, so a page costs its rows however
    long the history is."""
    region = _region_or_default(region)
    rows = PoolClearing.objects.filter(round__region=region, round__finished_at__isnull=False).annotate(
        slot=F("round__slot"), region=F("round__region")
    )
    if start is not None:
        rows = rows.filter(round__slot__gte=start)
    if end is not None:
        rows = rows.filter(round__slot__lt=end)
    if pools:
        rows = rows.filter(pool__in=list(pools))
    return rows.order_by("-slot", "pool")


# --- The bid form's estimate ------------------------------------------------------------------------------------------


def ch_text(ch: float | None) -> str:
    """Compute-hours as plain digits, whatever their size, never with an exponent: 1240.4 → "1,240", 2.449 → "2.45",
    0.0000140 → "0.000014" (three significant digits under 0.1 CH); "—" for none. A small dataset is a millionth
    of a CH, which `.3g` prints as "1.4e-06"."""
    if ch is None:
        return "—"
    value = Decimal(repr(float(ch)))
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= Decimal("0.1") or value == 0:
        return f"{value:.2f}"
    rounded = value.quantize(Decimal(1).scaleb(value.adjusted() - 2), rounding=ROUND_HALF_UP)
    return f"{rounded.normalize():f}"


def bid_worst_case_cents(*, ch: float, max_price_mcents: int) -> int:
    """The least budget a bid of `ch` CH at up to `max_price_mcents` m¢ per CH may have, in whole cents: every CH at
    the maximum price, rounded up, and at least a cent (the rule services.bid_place enforces, computed the same way)."""
    return max(1, math.ceil(ch * max_price_mcents / 1000))


def auto_pick_for_bid(outlook: list[PoolOutlook], *, items: int, max_price_mcents: int) -> PoolOutlook | None:
    """The pool "auto" would put a bid of `items` items at up to `max_price_mcents` in, as services.bid_place picks
    it: of the runnable precisions, the cheapest whose reserve is within the maximum, preferring one whose cars on
    offer now can do the job (sized by the cheapest runnable build); else the cheapest runnable one (whose reserve
    the bid then fails to reach). None when nothing can run."""
    ch_needed = next((items * p.variant.ch_per_item for p in outlook if p.runnable and p.variant.ch_per_item), None)
    affordable = [pool for pool in outlook if pool.reserve_mcents <= max_price_mcents]
    return auto_pick(affordable, ch_needed=ch_needed) or auto_pick(outlook, ch_needed=ch_needed)


@dataclass(frozen=True)
class PoolEstimate:
    """What a dataset would cost in one precision's pool, and whether the pool can take the job now.

    Units: CH for work and supply, m¢ per CH for prices, n¢ for the cost."""

    precision: str
    ch_per_item: float | None  # of the build a bid would run; None before there is one
    ch: float | None  # the whole dataset
    price_mcents: int  # the pool's last clearing price, else its reserve
    price_is_reserve: bool  # the last round set no price in the pool (or no round has run)
    reserve_mcents: int
    cost_nc: int | None  # every item at price_mcents, to the n¢
    cars: int  # cars that can run it (PoolOutlook.cars)
    ch_on_offer: float  # what the cars available now offer in the pool
    problem: str  # why a bid cannot run here ("" when it can): PoolOutlook.problem
    accuracy: str  # the build's measured accuracy on the model's metric; "" for FP32 (the reference)
    passes: bool | None  # whether `accuracy` is within the model's tolerance; None while not measured

    @property
    def runnable(self) -> bool:
        return not self.problem

    @property
    def supply_covers(self) -> bool:
        """Whether the CH on offer now would do the whole job (else a bid waits for more cars)."""
        return self.ch is not None and self.ch_on_offer >= self.ch

    @property
    def warning(self) -> str:
        """Why a bid in this pool would not get work done now, in the customer's words; "" when it would."""
        name = self.precision.upper()
        if self.problem:
            return f"{name} cannot run: {self.problem}."
        if not self.ch_on_offer:
            return f"No car offers {name} now: a bid here waits until one parks."
        return ""

    @property
    def ch_text(self) -> str:
        return ch_text(self.ch)

    @property
    def ch_on_offer_text(self) -> str:
        return ch_text(self.ch_on_offer)


@dataclass(frozen=True)
class BidEstimate:
    """The bid form's estimate for one dataset: every precision's pool, cheapest first (`pools`), the one a bid would
    run (`chosen`: the precision picked, or auto's pick) and a budget covering its worst case.

    Units: m¢ per CH for prices, whole cents for the budget (as the form takes it)."""

    dataset: Dataset
    precision: str  # as picked in the form: "auto" or a precision
    pools: list[PoolEstimate]
    chosen: PoolEstimate | None  # None: auto finds nothing that can run
    max_price_mcents: int  # the price the worst case is priced at: the form's maximum
    suggested_budget_cents: int | None  # every item of `chosen` at max_price_mcents; None when it has no cost per item
    nothing_runs: str  # why no precision can run, when none can
    metric: str  # the model's accuracy metric, as people read it
    tolerance: str  # the model's tolerance as plain digits

    @property
    def auto(self) -> bool:
        return self.precision == "auto"

    @property
    def below_reserve(self) -> bool:
        """Whether the maximum price is below the chosen pool's reserve: such a bid never trades."""
        return self.chosen is not None and self.max_price_mcents < self.chosen.reserve_mcents

    @property
    def suggested_budget_nc(self) -> int | None:
        """The suggested budget in n¢ (the ledger's unit, as the prepaid balance reads)."""
        return nc_from_cents(self.suggested_budget_cents) if self.suggested_budget_cents is not None else None


def bid_estimate(
    *,
    model: InferenceModel,
    dataset: Dataset,
    precision: str = "auto",
    max_price_mcents: int | None = None,
    market: dict[str, dict] | None = None,
) -> BidEstimate:
    """What a bid on `dataset` would cost in each precision's pool (priced at its last clearing price, else its
    reserve), which pool the bid would run in, and the budget its worst case needs (all items at
    `max_price_mcents`; when None, at twice the estimate's price, within the ceiling and at least the reserve).
    `market`: market_latest(), when the caller already has it."""
    outlook = pools_outlook(model=model, dataset=dataset)
    market = market_latest() if market is None else market
    pools = []
    for pool in outlook:
        variant = pool.variant
        cleared = market.get(pool.precision, {}).get("clearing_price_mcents")
        price = cleared or pool.reserve_mcents
        ch_per_item = variant.ch_per_item if variant is not None else None
        ch = dataset.item_count * ch_per_item if ch_per_item is not None else None
        accuracy, passes = "", None
        if variant is not None and pool.precision != FP32:
            passes = variant_passes(variant)
            accuracy = _metric_value(variant.metrics, model.metric) if passes is not None else ""
        pools.append(
            PoolEstimate(
                precision=pool.precision, ch_per_item=ch_per_item, ch=ch, price_mcents=price,
                price_is_reserve=not cleared, reserve_mcents=pool.reserve_mcents,
                cost_nc=nc_from_mcents(Decimal(repr(ch)) * price) if ch is not None else None,
                cars=pool.cars, ch_on_offer=pool.ch_on_offer, problem=pool.problem, accuracy=accuracy, passes=passes,
            )
        )  # fmt: skip
    by_precision = {row.precision: row for row in pools}
    ceiling = pricing_current().price_ceiling_mcents if max_price_mcents is None else None
    if precision == "auto":
        # Auto's pick depends on the maximum price: a pool whose reserve is above it is passed over.
        within = max_price_mcents if max_price_mcents is not None else ceiling
        picked = auto_pick_for_bid(outlook, items=dataset.item_count, max_price_mcents=within)
        chosen = by_precision[picked.precision] if picked else None
    else:
        chosen = by_precision.get(precision)
    if max_price_mcents is None:
        # No maximum given: room for the clearing price to double before the budget runs short.
        twice = max(2 * chosen.price_mcents, chosen.reserve_mcents) if chosen else 0
        max_price_mcents = min(twice, ceiling)
    suggested = None
    if chosen is not None and chosen.ch is not None:
        suggested = bid_worst_case_cents(ch=chosen.ch, max_price_mcents=max_price_mcents)
    return BidEstimate(
        dataset=dataset, precision=precision, pools=pools, chosen=chosen, max_price_mcents=max_price_mcents,
        suggested_budget_cents=suggested,
        nothing_runs=outlook_message(outlook) if not any(pool.runnable for pool in outlook) else "",
        metric=model.get_metric_display(), tolerance=f"{Decimal(repr(float(model.tolerance))).normalize():f}",
    )  # fmt: skip


@dataclass(frozen=True)
class VerificationOverview:
    results_valid: int
    results_invalid: int
    results_pending: int
    canonical_ch: float
    replica_ch: float
    cars_suspended: int
    cars_trusted: int
    audits: int = 0
    audits_open: int = 0
    audited_results_wrong: int = 0
    audited_items_replaced: int = 0

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
    from .models import ResultAudit

    audits = ResultAudit.objects.aggregate(
        n=Count("pk"), open=Count("pk", filter=Q(closed_at__isnull=True)), wrong=Sum("units_wrong", default=0),
        replaced=Sum("items_replaced", default=0),
    )  # fmt: skip
    return VerificationOverview(
        audits=audits["n"],
        audits_open=audits["open"],
        audited_results_wrong=audits["wrong"],
        audited_items_replaced=audits["replaced"],
        results_valid=counts.get(WorkUnit.Verification.VALID, 0),
        results_invalid=counts.get(WorkUnit.Verification.INVALID, 0),
        results_pending=counts.get(WorkUnit.Verification.PENDING, 0),
        canonical_ch=ch.get(True, 0.0) or 0.0,
        replica_ch=ch.get(False, 0.0) or 0.0,
        cars_suspended=cars["suspended"],
        cars_trusted=cars["trusted"],
    )
