"""Checking untrusted cars' results (BOINC-style): replicas on cars of the same hardware, verdicts, reputation.

A car's first result for a slice of items decides how many agreeing results the slice needs (its quorum): 2 for a
car without a record (its result is run again on another car of the same hardware class, "homogeneous redundancy"),
1 for a car with a long streak of validated results, except for a random share of spot checks (adaptive
replication). When two results disagree a third car decides. The pure comparisons live in
marketplace/verification.py; this module keeps the books of it in the database, inside the transaction that takes
the result in (marketplace/dispatch.py: unit_result, which saves the result first and then asks for a verdict).

What this module saves: a unit's verdict (quorum, verification, canonical), the replicas it creates, and the cars'
records (streak, faults, suspension). A unit's lease, its result and its status, and a bid's status, are dispatch's:
what a verdict means for them (copies no longer needed, a slice no car can settle) is returned to dispatch, which
acts on it.

Only validated results are billed and paid (billing settles the closed bid: billing/services/settling.py); the
customer gets the canonical result of each slice; a car caught returning a wrong result loses its streak, and repeated
faults suspend it.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from django.conf import settings
from django.db.models import Count, F, Q

from fleet import book
from fleet.agent.inference import ModelRunner, ModelSpec, decode_npy
from fleet.models import Vehicle
from fleet.services import vehicle_suspend

from . import storage, verification
from .models import Allocation, Bid, InferenceModel, ResultAudit, ResultFault, WorkUnit
from .signals import bid_audited_announce

log = logging.getLogger(__name__)
Verification = WorkUnit.Verification


@dataclass(frozen=True)
class Judgement:
    """What a verdict leaves to dispatch, which owns the units' status and the bid's."""

    # Copies of the slice still waiting for a car that nobody needs to run any more (the results already agree).
    spares: list[WorkUnit] = field(default_factory=list)
    # The slice had its most replicas and still no quorum: nobody can tell who is right, and the bid fails.
    unresolved: bool = False
    # Items of the slice that this verdict validated (it had no canonical valid result before): the bid's progress.
    validated: int = 0


def result_recorded(*, unit: WorkUnit, outputs: np.ndarray, streak: int, now: datetime) -> Judgement:
    """Judge a car's result for `unit`, which dispatch.unit_result has just saved (status DONE, outputs stored), and
    save what is decided: the slice's quorum, its results' verification and canonical flags, the cars' records, a
    replica when one more car must run the slice. Runs in the caller's transaction: `unit`'s row is locked by the
    caller, a replica's primary row here, so two results of one slice are judged one after the other.

    `outputs`: the result's outputs (not read back from storage). `streak`: the car's validated results in a row, as
    read with the unit's lock; with the slice's first result it decides whether the slice is run again."""
    is_primary = unit.replica_of_id is None
    primary = unit if is_primary else WorkUnit.objects.select_for_update().get(pk=unit.replica_of_id)
    first_result = primary.quorum == 0
    if first_result:
        primary.quorum = 2 if _replication_needed(vehicle_id=unit.done_by_id, streak=streak, now=now) else 1
        if not is_primary:
            primary.save(update_fields=["quorum"])
    if is_primary and first_result and primary.quorum == 1:
        # Not replicated (a trusted car, no spot check): the slice is this one result, judged now. No other result
        # of the slice exists: copies are only made once it is judged.
        verdict = verification.decide([outputs], _tolerance(unit), quorum=1)
        valid = 0 in verdict.valid
        unit.verification = Verification.VALID if valid else Verification.INVALID
        unit.canonical = verdict.canonical == 0
        unit.save(update_fields=["quorum", "verification", "canonical"])
        reputation_record(vehicle_id=unit.done_by_id, valid=valid, now=now, unit=unit)
        return Judgement(validated=unit.items if valid and unit.canonical else 0)
    # A primary's quorum is written with its verdict's start, in one UPDATE.
    unit.verification, unit.canonical = Verification.PENDING, False
    unit.save(update_fields=["verification", "canonical", *(["quorum"] if is_primary else [])])
    return slice_decide(primary=primary, now=now, known={unit.pk: outputs})


def _replication_needed(*, vehicle_id: int, streak: int, now: datetime) -> bool:
    """Whether the first result of a slice, from a car with `streak` validated results in a row, is run again."""
    trusted_after = settings.VERIFICATION_TRUSTED_AFTER
    return verification.replication_needed(
        streak=streak,
        # Recent faults only matter to a car whose streak would trust it (any other is checked at the untrusted rate
        # either way): spare the count, a query on every slice's first result, for the others.
        faults_recent=_faults_recent(vehicle_id, now) if streak >= trusted_after else 0,
        rng_value=random.random(),  # noqa: S311 - a sampling decision, not a secret
        spot_check_rate=settings.VERIFICATION_SPOT_CHECK_RATE,
        trusted_after=trusted_after,
        new_car_rate=settings.VERIFICATION_NEW_CAR_RATE,
    )


def slice_decide(*, primary: WorkUnit, now: datetime, known: dict | None = None) -> Judgement:
    """Judge the slice's results; `known` maps units to outputs already in memory (the others are read)."""
    known = known or {}
    # The slice's results and, in the same query, its copies still waiting for a car (spare, if it is settled).
    units = list(
        WorkUnit.objects.filter(
            Q(pk=primary.pk) | Q(replica_of=primary), status__in=(WorkUnit.Status.DONE, WorkUnit.Status.QUEUED)
        )
        .select_related("bid__inference_model", "variant")
        .order_by("completed_at", "pk")
    )
    group = [u for u in units if u.status == WorkUnit.Status.DONE]
    if not group:
        return Judgement()
    tolerance = _tolerance(group[0])
    outputs = [known[u.pk] if u.pk in known else decode_npy(storage.artifact_read(u.output_sha256)) for u in group]
    verdict = verification.decide(outputs, tolerance, quorum=primary.quorum)
    if verdict.needs_more:
        return Judgement(unresolved=not replica_ensure(primary=primary, group=group, now=now))
    settled_before = any(u.canonical and u.verification == Verification.VALID for u in group)
    for index, unit in enumerate(group):
        decided = (
            Verification.VALID if index in verdict.valid
            else Verification.INVALID if index in verdict.invalid
            else unit.verification
        )  # fmt: skip
        canonical = index == verdict.canonical
        if decided != unit.verification or canonical != unit.canonical:
            WorkUnit.objects.filter(pk=unit.pk).update(verification=decided, canonical=canonical)
        if unit.verification in (Verification.PENDING, "") and decided in (Verification.VALID, Verification.INVALID):
            reputation_record(vehicle_id=unit.done_by_id, valid=decided == Verification.VALID, now=now, unit=unit)
    # The slice is settled: its copies still waiting for a car are not needed any more.
    validated = primary.items if verdict.canonical in verdict.valid and not settled_before else 0
    return Judgement(
        spares=[u for u in units if u.status == WorkUnit.Status.QUEUED and u.replica_of_id == primary.pk],
        validated=validated,
    )


def _tolerance(unit: WorkUnit) -> verification.Tolerance:
    """How close two results of this unit's model and precision must be to agree."""
    model = unit.bid.inference_model
    return verification.Tolerance.for_precision(model.metric, unit.variant.precision, model.tolerance)


def replica_ensure(*, primary: WorkUnit, group: list[WorkUnit], now: datetime) -> bool:
    """Make sure one more car runs this slice: a car of the same hardware class that has not run it yet. False when
    the slice already had VERIFICATION_MAX_REPLICAS copies: too many cars disagree about these items to tell who is
    right, nobody is blamed or paid for them, and the caller fails the bid (its customer pays only for what was
    validated)."""
    outstanding = WorkUnit.objects.filter(
        replica_of=primary, status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED)
    )
    if outstanding.exists():
        return True
    replicas = primary.replicas.count()
    if replicas >= settings.VERIFICATION_MAX_REPLICAS:
        log.warning("slice %s of bid %s: no quorum after %s replicas", primary.pk, primary.bid_id, replicas)
        return False
    bid = Bid.objects.select_for_update().get(pk=primary.bid_id)
    excluded = sorted({u.done_by_id for u in group} | set(primary.excluded_vehicles))
    hardware_id = Vehicle.objects.filter(pk=group[0].done_by_id).values_list("hardware_id", flat=True).first()
    # A car of the same hardware already working for this bid takes it within what it sold; otherwise the next
    # round finds it a free car of that class (rounds.verification_allocate). The customer's demand is unchanged.
    # Never a car of an owner who already ran the slice: two cars of one owner would confirm each other.
    allocation = (
        Allocation.objects.filter(bid=bid, ends_at__gt=now, vehicle__hardware_id=hardware_id,
                                  vehicle__status=Vehicle.Status.ACTIVE)
        .exclude(vehicle__owner_id__in=Vehicle.objects.filter(pk__in=excluded).values("owner_id"))
        .order_by("ends_at")
        .first()
    )  # fmt: skip
    WorkUnit.objects.create(
        bid=bid, variant_id=primary.variant_id, index=bid.units.count(), item_start=primary.item_start,
        item_end=primary.item_end, ch=primary.ch, replica_of=primary, requires_hardware_id=hardware_id,
        excluded_vehicles=excluded, allocation=allocation,
        assigned_vehicle_id=allocation.vehicle_id if allocation is not None else None,
    )  # fmt: skip
    return True


def owners_of(vehicle_ids) -> dict[int, int]:
    """The owner of each of these cars, in one query: what vehicle_refused needs for a round's or a bid's units."""
    return dict(Vehicle.objects.filter(pk__in=set(vehicle_ids)).values_list("pk", "owner_id"))


def vehicle_refused(*, unit: WorkUnit, vehicle_id: int, owners: dict[int, int]) -> bool:
    """Whether `unit` may not go to this car: the car already ran its items (or got one of its known answers wrong,
    which must not count against it twice), or, for a replica, the car's owner owns a car that did. Like BOINC's
    one result per user per work unit: two cars of one owner would otherwise confirm each other's fake result.
    `owners` maps this car and the unit's excluded cars to their owners (owners_of)."""
    if vehicle_id in unit.excluded_vehicles:
        return True
    if unit.replica_of_id is None:
        return False
    owner = owners.get(vehicle_id)
    return owner is None or owner in {owners.get(excluded) for excluded in unit.excluded_vehicles}


def reputation_record(
    *, vehicle_id: int, valid: bool, now: datetime, unit: WorkUnit | None = None,
    fault: str = ResultFault.Kind.OUTVOTED,
) -> Vehicle | None:  # fmt: skip
    """A streak of validated results earns trust; a rejected result resets it, and repeated faults suspend the car.
    Returns the car after a fault; None after a validated result, which only counts."""
    if valid:
        # streak_after(streak, valid=True) is streak + 1: every validated result is one UPDATE, with no read first.
        Vehicle.objects.filter(pk=vehicle_id).update(
            valid_streak=F("valid_streak") + 1, results_valid=F("results_valid") + 1
        )
        book.vehicle_refresh(vehicle_id)  # its reputation, in its offer
        return None
    car = Vehicle.objects.select_for_update().get(pk=vehicle_id)
    ResultFault.objects.create(vehicle=car, unit=unit, kind=fault, created_at=now)
    car.valid_streak = verification.streak_after(car.valid_streak, valid=False)
    car.results_invalid += 1
    car.last_fault_at = now
    car.save(update_fields=["valid_streak", "results_invalid", "last_fault_at"])
    by_kind = _faults_recent_by_kind(car.pk, now)
    faults = sum(by_kind.values())
    log.warning("vehicle %s returned a wrong result (unit %s); %s fault(s) recently", car.pk,
                unit.pk if unit else "?", faults)  # fmt: skip
    audit_open(vehicle_id=car.pk, evidence=fault, now=now)
    if faults >= settings.VERIFICATION_SUSPEND_AFTER_FAULTS and car.status == Vehicle.Status.ACTIVE:
        # Its work goes back to the market (fleet.signals.vehicle_stopped_working: dispatch releases it).
        car = vehicle_suspend(vehicle=car, actor=None, reason=_suspension_reason(by_kind))
    return car


# --- Audits of caught cars ---------------------------------------------------------------------------------------


def audit_open(*, vehicle_id: int, evidence: str, now: datetime) -> list[ResultAudit]:
    """A car was caught returning a wrong result: nothing else it returned on trust may stay delivered or paid.

    Every result it returned in the audit window (VERIFICATION_AUDIT_WINDOW_HOURS) that no other car checked (a unit
    judged alone, quorum 1) is checked again. First the platform computes a sample of its items itself
    (VERIFICATION_AUDIT_SAMPLE_ITEMS, like the known answers of a lease, which the car could not tell apart): a result
    whose sample is right stays as it is. Any other (a sample wrong, or none to take) is judged again by other cars:
    its slice needs two agreeing results now, it is not the customer's result meanwhile, and a replica goes to a car
    of another owner (replica_ensure). The car's result counts as one vote: an honest one is confirmed by one
    replica, a wrong one is outvoted by two and replaced. So an audit buys replicas for the lies, not for everything
    the car did. Owners' earnings are held longer than the window (billing.PayoutPolicy): nothing audited is paid
    out first.

    A bid that closed without completing (failed, expired, cancelled) has no results file and nobody runs its work
    again: its results that the sample does not clear are rejected at once, so that its customer pays only for what
    was validated. Returns one audit per bid touched (none when the car returned nothing on trust)."""
    since = now - timedelta(hours=settings.VERIFICATION_AUDIT_WINDOW_HOURS)
    unchecked = list(
        WorkUnit.objects.select_for_update(of=("self",))
        .filter(done_by_id=vehicle_id, replica_of__isnull=True, status=WorkUnit.Status.DONE, quorum=1,
                verification=Verification.VALID, completed_at__gte=since)
        .select_related("bid__dataset", "variant")
        .order_by("bid_id", "item_start")
    )  # fmt: skip
    by_bid: dict[int, list[WorkUnit]] = {}
    for unit in unchecked:
        by_bid.setdefault(unit.bid_id, []).append(unit)
    audits = []
    for units in by_bid.values():
        bid = units[0].bid
        rerun = bid.status in (*Bid.OPEN_STATUSES, Bid.Status.COMPLETED)
        suspect = [unit for unit in units if not _sample_right(unit)]
        for unit in suspect:
            unit.quorum, unit.canonical = 2, False
            unit.verification = Verification.PENDING if rerun else Verification.INVALID
            unit.save(update_fields=["quorum", "verification", "canonical"])
            if rerun:
                replica_ensure(primary=unit, group=[unit], now=now)
        removed = 0 if rerun else sum(u.items for u in suspect)
        audits.append(ResultAudit.objects.create(
            bid=bid, vehicle_id=vehicle_id, evidence=evidence, opened_at=now, units=[u.pk for u in units],
            items_checked=sum(u.items for u in units), sampled_right=len(units) - len(suspect),
            # Nothing left to judge (every sample right, or a job that ended): the audit is over.
            **({"closed_at": now, "items_removed": removed} if not (rerun and suspect) else {}),
        ))  # fmt: skip
        if removed:
            bid_audited_announce(bid.pk, [audits[-1].pk])  # billing takes the rejected work off its charge
    if audits:
        log.warning("vehicle %s caught: %s unchecked result(s) in %s bid(s) audited", vehicle_id, len(unchecked),
                    len(audits))  # fmt: skip
    return audits


def _sample_right(unit: WorkUnit) -> bool:
    """Whether the platform's own outputs for a random sample of the unit's items agree with the car's stored result
    (the tolerance between two cars). False when they do not, or when no sample can be taken (no stored result)."""
    if not unit.output_sha256:
        return False
    try:
        outputs = decode_npy(storage.artifact_read(unit.output_sha256))
    except (FileNotFoundError, ValueError):
        return False
    count = min(settings.VERIFICATION_AUDIT_SAMPLE_ITEMS, unit.items, len(outputs))
    if count < 1 or len(outputs) != unit.items:
        return False
    picks = sorted(random.sample(range(unit.items), count))
    items = storage.dataset_items(unit.bid.dataset).items
    runner = runner_for(unit.variant.sha256, unit.bid.inference_model_id)
    expected = runner.run([items[unit.item_start + i] for i in picks], batch_size=count)
    return verification.known_answer_check(outputs[picks], np.asarray(expected), _tolerance(unit))


def audits_conclude(*, bid: Bid, now: datetime, result_version: int | None) -> list[ResultAudit]:
    """Close the bid's open audits whose results have all been judged again: how many were wrong, how many items the
    customer's results got replaced (a completed bid's file, now at `result_version`) or lost (no quorum: NaN, not
    charged). Called by dispatch once the bid's results are assembled again (or for the first time). Returns the
    audits closed."""
    open_audits = list(ResultAudit.objects.select_for_update().filter(bid=bid, closed_at__isnull=True))
    closed = []
    for audit in open_audits:
        units = list(WorkUnit.objects.filter(pk__in=audit.units))
        outstanding = WorkUnit.objects.filter(
            replica_of__in=audit.units, status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED)
        )
        # A result still pending with no copy left to run is a slice no quorum settled (replica_ensure gave up).
        if any(u.verification == Verification.PENDING for u in units) and outstanding.exists():
            continue
        canonical = set(
            WorkUnit.objects.filter(replica_of__in=audit.units, canonical=True, verification=Verification.VALID)
            .values_list("replica_of_id", flat=True)
        )  # fmt: skip
        wrong = [u for u in units if u.verification == Verification.INVALID]
        audit.units_wrong = len(wrong)
        audit.items_replaced = sum(u.items for u in wrong if u.pk in canonical)
        audit.items_removed = sum(u.items for u in units if not u.canonical and u.pk not in canonical)
        audit.result_version, audit.closed_at = result_version, now
        audit.save(update_fields=["units_wrong", "items_replaced", "items_removed", "result_version", "closed_at"])
        closed.append(audit)
    return closed


def _suspension_reason(by_kind: dict[str, int]) -> str:
    """What the owner reads on the car's page and in the email: the evidence that caught the car, since an owner
    told "disagreed with other cars" about a car that failed known answers is told the wrong thing to look into."""
    hours = settings.VERIFICATION_FAULT_WINDOW_HOURS
    outvoted, known = by_kind.get(ResultFault.Kind.OUTVOTED, 0), by_kind.get(ResultFault.Kind.KNOWN_ANSWER, 0)
    disagreed = f"{outvoted} result{'s' if outvoted != 1 else ''}"
    checks = f"{known} known-answer check{'s' if known != 1 else ''}"
    if outvoted and known:
        evidence = (f"In the last {hours} hours, {disagreed} disagreed with other cars running the same work and it "
                    f"failed {checks} (items whose answers Idlefleet computes itself).")  # fmt: skip
    elif known:
        evidence = f"It failed {checks} in the last {hours} hours (items whose answers Idlefleet computes itself)."
    else:
        evidence = f"{disagreed} in the last {hours} hours disagreed with other cars running the same work."
    return f"{evidence} Suspended cars get no work; contact support to appeal."


def _faults_recent(vehicle_id: int, now: datetime) -> int:
    window = timedelta(hours=settings.VERIFICATION_FAULT_WINDOW_HOURS)
    return ResultFault.objects.filter(vehicle_id=vehicle_id, created_at__gte=now - window).count()


def _faults_recent_by_kind(vehicle_id: int, now: datetime) -> dict[str, int]:
    window = timedelta(hours=settings.VERIFICATION_FAULT_WINDOW_HOURS)
    recent = ResultFault.objects.filter(vehicle_id=vehicle_id, created_at__gte=now - window)
    return dict(recent.order_by().values("kind").annotate(n=Count("pk")).values_list("kind", "n"))


# --- Known-answer probes ------------------------------------------------------------------------------------------


def probes_pick(*, unit: WorkUnit) -> list[list[int]]:
    """For a share of leases (VERIFICATION_PROBE_RATE), a few other items of the same dataset, mixed in at random
    places: the platform computes their answers itself, so a car that fakes its work is caught even when no
    other car runs the unit. [[position in the lease, dataset item], ...], positions ascending."""
    if random.random() >= settings.VERIFICATION_PROBE_RATE:  # noqa: S311 - sampling, not a secret
        return []
    count = len(storage.dataset_items(unit.bid.dataset).items)
    wanted = min(settings.VERIFICATION_PROBE_ITEMS, count)
    # Items of other units, so that no input is seen twice in one lease; a one-unit job has only its own. Drawn
    # without listing the dataset, which may hold millions of items.
    outside = count - unit.items
    drawn: set[int] = set()
    while len(drawn) < min(wanted, outside):
        index = random.randrange(outside)  # noqa: S311 - sampling, not a secret
        drawn.add(index if index < unit.item_start else index + unit.items)
    chosen = random.sample(sorted(drawn), len(drawn)) if drawn else random.sample(range(count), wanted)
    positions = sorted(random.sample(range(unit.items + len(chosen)), len(chosen)))
    return [[position, index] for position, index in zip(positions, chosen, strict=True)]


def probes_check(*, unit: WorkUnit, outputs):
    """(the unit's own outputs, whether the car's answers to the probes match the platform's).

    The platform runs the probes together, as one batch of their own: the car ran them among the unit's items, and
    INT8 dynamic quantization scales each batch by its own values, but the tolerance between two results of one
    variant already allows for batch composition (verification._COSINE_MIN), as it must between a unit and its
    replica, whose leases mix in different probes. So a check costs the probes' inference, not their batches'.
    """
    bid = unit.bid
    items = storage.dataset_items(bid.dataset).items
    positions = [position for position, _ in unit.probes]
    runner = runner_for(unit.variant.sha256, bid.inference_model_id)
    expected = runner.run([items[index] for _, index in unit.probes], batch_size=len(positions))
    ok = verification.known_answer_check(outputs[positions], np.asarray(expected), _tolerance(unit))
    keep = np.ones(outputs.shape[0], dtype=bool)
    keep[positions] = False
    return outputs[keep], ok


def probe_failed(*, unit: WorkUnit, vehicle_id: int, now: datetime) -> None:
    """The car got a known answer wrong: the fault counts against it (repeated faults suspend it). Its result is
    thrown away, never stored, paid or shown, and the unit goes to another car: dispatch.unit_result does both."""
    log.warning("vehicle %s failed a known-answer check on unit %s", vehicle_id, unit.pk)
    reputation_record(vehicle_id=vehicle_id, valid=False, now=now, unit=unit, fault=ResultFault.Kind.KNOWN_ANSWER)


def runner_for(variant_sha256: str, model_id: int):
    """The platform's own ONNX Runtime session for a variant (kept for the next probes of the same job). Made once
    per process: the results of a job's first units arrive together, and each thread loading the model itself would
    cost a second of CPU and the model's memory again."""
    with _runner_lock:
        return _runner_made(variant_sha256, model_id)


_runner_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _runner_made(variant_sha256: str, model_id: int):
    model = InferenceModel.objects.get(pk=model_id)
    tokenizer = storage.artifact_read(model.tokenizer_sha256).decode() if model.kind == "text" else None
    return ModelRunner(storage.artifact_read(variant_sha256), ModelSpec(model.kind, model.output_name, tokenizer))
