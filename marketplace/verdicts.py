"""Checking untrusted cars' results (BOINC-style): replicas on cars of the same hardware, verdicts, reputation.

A car's first result for a slice of items decides how many agreeing results the slice needs (its quorum): 2 for a
car without a record (its result is run again on another car of the same hardware class, "homogeneous redundancy"),
1 for a car with a long streak of validated results, except for a random share of spot checks (adaptive
replication). When two results disagree a third car decides. The pure comparisons live in
marketplace/verification.py; this module keeps the books of it in the database, inside the transaction that takes
the result in (marketplace/dispatch.py: unit_result).

Only validated results are billed and paid (billing/services.py); the customer gets the canonical result of each
slice; a car caught returning a wrong result loses its streak, and repeated faults suspend it.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from fleet.agent.inference import decode_npy
from fleet.models import Vehicle

from . import storage, verification
from .models import Allocation, Bid, ResultFault, WorkUnit
from .signals import bid_closed_announce

log = logging.getLogger(__name__)
Verification = WorkUnit.Verification


def result_recorded(*, unit: WorkUnit, now: datetime | None = None, outputs=None, unsaved: Sequence[str] = ()) -> None:
    """A car's result for `unit` was just taken (status DONE): decide what it means. Runs in the caller's
    transaction; the slice's primary row is locked so two results of one slice are judged one after the other.
    `outputs`: the result's outputs when the caller holds them (they are not read back from storage). `unsaved`: the
    fields of `unit` the caller set and leaves to this function to save (with the verdict, when the result stands
    alone: one UPDATE)."""
    now = now or timezone.now()
    # A primary unit was locked by the caller (dispatch.unit_result): its row is this object.
    primary = unit if unit.replica_of_id is None else WorkUnit.objects.select_for_update().get(pk=unit.replica_of_id)
    first_result = primary.quorum == 0
    if first_result:
        # The car's record as read with this request's credential (one query fewer than asking again).
        car = WorkUnit.done_by.field.get_cached_value(unit, None)
        streak = (
            car.valid_streak
            if car is not None
            else Vehicle.objects.values_list("valid_streak", flat=True).get(pk=unit.done_by_id)
        )
        trusted_after = settings.VERIFICATION_TRUSTED_AFTER
        replicate = verification.replication_needed(
            streak=streak,
            # Recent faults only matter to a car whose streak would trust it: spare the count for the others.
            faults_recent=_faults_recent(unit.done_by_id, now) if streak >= trusted_after else 0,
            rng_value=random.random(),  # noqa: S311 - a sampling decision, not a secret
            spot_check_rate=settings.VERIFICATION_SPOT_CHECK_RATE,
            trusted_after=trusted_after,
        )
        primary.quorum = 2 if replicate else 1
        if primary is not unit:
            primary.save(update_fields=["quorum"])
    if primary is unit and first_result and unit.quorum == 1 and outputs is not None:
        # Not replicated (a trusted car, no spot check): the slice is this one result, judged now, and written with
        # the result in one UPDATE. No other result of the slice exists: copies are only made once it is judged.
        verdict = verification.decide([outputs], _tolerance(unit), quorum=1)
        valid = 0 in verdict.valid
        unit.verification = Verification.VALID if valid else Verification.INVALID
        unit.canonical = verdict.canonical == 0
        unit.save(update_fields=[*unsaved, "quorum", "verification", "canonical"])
        reputation_record(vehicle_id=unit.done_by_id, valid=valid, now=now, unit=unit)
        return
    # A primary's quorum is written with its verdict's start, in one UPDATE.
    unit.verification, unit.canonical = Verification.PENDING, False
    unit.save(update_fields=[*unsaved, "verification", "canonical", *(["quorum"] if primary is unit else [])])
    slice_decide(primary=primary, now=now, known={} if outputs is None else {unit.pk: outputs})


def slice_decide(*, primary: WorkUnit, now: datetime, known: dict | None = None) -> None:
    """Judge the slice's results; `known` maps units to outputs already in memory (the others are read)."""
    known = known or {}
    # The slice's results and, in the same query, its copies still waiting for a car (done last, if it is settled).
    units = list(
        WorkUnit.objects.filter(
            Q(pk=primary.pk) | Q(replica_of=primary), status__in=(WorkUnit.Status.DONE, WorkUnit.Status.QUEUED)
        )
        .select_related("bid__inference_model", "variant")
        .order_by("completed_at", "pk")
    )
    group = [u for u in units if u.status == WorkUnit.Status.DONE]
    if not group:
        return
    tolerance = _tolerance(group[0])
    outputs = [known[u.pk] if u.pk in known else decode_npy(storage.artifact_read(u.output_sha256)) for u in group]
    verdict = verification.decide(outputs, tolerance, quorum=primary.quorum)
    if verdict.needs_more:
        replica_ensure(primary=primary, group=group, now=now)
        return
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
    # The slice is settled: copies still waiting for a car are not needed any more.
    for spare in (u for u in units if u.status == WorkUnit.Status.QUEUED and u.replica_of_id == primary.pk):
        spare.status, spare.error = WorkUnit.Status.FAILED, "not needed: the results already agree"
        spare.assigned_vehicle = None
        spare.save(update_fields=["status", "error", "assigned_vehicle"])


def _tolerance(unit: WorkUnit) -> verification.Tolerance:
    """How close two results of this unit's model and precision must be to agree."""
    model = unit.bid.inference_model
    return verification.Tolerance.for_precision(model.metric, unit.variant.precision, model.tolerance)


def replica_ensure(*, primary: WorkUnit, group: list[WorkUnit], now: datetime) -> WorkUnit | None:
    """Make sure one more car runs this slice: a car of the same hardware class that has not run it yet."""
    outstanding = WorkUnit.objects.filter(
        replica_of=primary, status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED)
    )
    if outstanding.exists():
        return None
    if primary.replicas.count() >= settings.VERIFICATION_MAX_REPLICAS:
        _slice_unresolved(primary, now)
        return None
    bid = Bid.objects.select_for_update().get(pk=primary.bid_id)
    excluded = sorted({u.done_by_id for u in group} | set(primary.excluded_vehicles))
    hardware_id = Vehicle.objects.filter(pk=group[0].done_by_id).values_list("hardware_id", flat=True).first()
    replica = WorkUnit.objects.create(
        bid=bid, variant_id=primary.variant_id, index=bid.units.count(), item_start=primary.item_start,
        item_end=primary.item_end, ch=primary.ch, replica_of=primary, requires_hardware_id=hardware_id,
        excluded_vehicles=excluded,
    )  # fmt: skip
    # A car of the same hardware already working for this bid takes it within what it sold; otherwise the next
    # round finds it a free car of that class (rounds.verification_allocate). The customer's demand is unchanged.
    allocation = (
        Allocation.objects.filter(bid=bid, ends_at__gt=now, vehicle__hardware_id=hardware_id,
                                  vehicle__status=Vehicle.Status.ACTIVE)
        .exclude(vehicle_id__in=excluded)
        .order_by("ends_at")
        .first()
    )  # fmt: skip
    if allocation is not None:
        replica.assigned_vehicle_id, replica.allocation = allocation.vehicle_id, allocation
        replica.save(update_fields=["assigned_vehicle", "allocation"])
    return replica


def _slice_unresolved(primary: WorkUnit, now: datetime) -> None:
    """Too many cars disagree about these items to tell who is right: nobody is blamed, nobody is paid for them,
    and the bid fails (its customer pays only for what was validated)."""
    log.warning("slice %s of bid %s: no quorum after %s replicas", primary.pk, primary.bid_id, primary.replicas.count())
    if Bid.objects.filter(pk=primary.bid_id, status__in=Bid.OPEN_STATUSES).update(
        status=Bid.Status.FAILED, closed_at=now
    ):
        bid_closed_announce(primary.bid_id)


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
        return None
    car = Vehicle.objects.select_for_update().get(pk=vehicle_id)
    ResultFault.objects.create(vehicle=car, unit=unit, kind=fault, created_at=now)
    car.valid_streak = verification.streak_after(car.valid_streak, valid=False)
    car.results_invalid += 1
    car.last_fault_at = now
    car.save(update_fields=["valid_streak", "results_invalid", "last_fault_at"])
    faults = _faults_recent(car.pk, now)
    log.warning("vehicle %s returned a wrong result (unit %s); %s fault(s) recently", car.pk,
                unit.pk if unit else "?", faults)  # fmt: skip
    if faults >= settings.VERIFICATION_SUSPEND_AFTER_FAULTS and car.status == Vehicle.Status.ACTIVE:
        from fleet.services import vehicle_suspend

        car = vehicle_suspend(
            vehicle=car, actor=None,
            reason=f"{faults} results in the last {settings.VERIFICATION_FAULT_WINDOW_HOURS} hours disagreed with "
                   "other cars running the same work. Suspended cars get no work; contact support to appeal.",
        )  # fmt: skip
    return car


def _faults_recent(vehicle_id: int, now: datetime) -> int:
    window = timedelta(hours=settings.VERIFICATION_FAULT_WINDOW_HOURS)
    return ResultFault.objects.filter(vehicle_id=vehicle_id, created_at__gte=now - window).count()


def slice_resolved(primary: WorkUnit) -> WorkUnit | None:
    """The canonical result of a slice, or None while it has none."""
    return (
        WorkUnit.objects.filter(Q(pk=primary.pk) | Q(replica_of=primary), canonical=True,
                                verification=Verification.VALID)
        .order_by("pk")
        .first()
    )  # fmt: skip


# --- Known-answer probes ------------------------------------------------------------------------------------------


def probes_pick(*, unit: WorkUnit) -> list[list[int]]:
    """For a share of leases (VERIFICATION_PROBE_RATE), a few other items of the same dataset, mixed in at random
    places: the platform computes their answers itself, so a car that fakes its work is caught even when no
    other car runs the unit. [[position in the lease, dataset item], ...], positions ascending."""
    from .services import dataset_items

    if random.random() >= settings.VERIFICATION_PROBE_RATE:  # noqa: S311 - sampling, not a secret
        return []
    count = len(dataset_items(unit.bid.dataset).items)
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
    import numpy as np

    from .services import dataset_items

    bid = unit.bid
    items = dataset_items(bid.dataset).items
    positions = [position for position, _ in unit.probes]
    runner = runner_for(unit.variant.sha256, bid.inference_model_id)
    expected = runner.run([items[index] for _, index in unit.probes], batch_size=len(positions))
    ok = verification.known_answer_check(outputs[positions], np.asarray(expected), _tolerance(unit))
    keep = np.ones(outputs.shape[0], dtype=bool)
    keep[positions] = False
    return outputs[keep], ok


def probe_failed(*, unit: WorkUnit, vehicle: Vehicle, now: datetime) -> WorkUnit:
    """The car got a known answer wrong: its result is thrown away (never stored, paid or shown), the fault counts
    against it, and the unit goes to another car."""
    from .dispatch import unit_release

    log.warning("vehicle %s failed a known-answer check on unit %s", vehicle.pk, unit.pk)
    unit.excluded_vehicles = sorted(set(unit.excluded_vehicles) | {vehicle.pk})
    unit.save(update_fields=["excluded_vehicles"])
    reputation_record(vehicle_id=vehicle.pk, valid=False, now=now, unit=unit, fault=ResultFault.Kind.KNOWN_ANSWER)
    unit.refresh_from_db()
    if unit.status == WorkUnit.Status.LEASED:  # (a suspension may have released it already)
        unit_release(unit, error="a known-answer check failed: given to another car", count_attempt=False)
    return unit


def runner_for(variant_sha256: str, model_id: int):
    """The platform's own ONNX Runtime session for a variant (kept for the next probes of the same job). Made once
    per process: the results of a job's first units arrive together, and each thread loading the model itself would
    cost a second of CPU and the model's memory again."""
    with _runner_lock:
        return _runner_made(variant_sha256, model_id)


_runner_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _runner_made(variant_sha256: str, model_id: int):
    from fleet.agent.inference import ModelRunner, ModelSpec

    from .models import InferenceModel

    model = InferenceModel.objects.get(pk=model_id)
    tokenizer = storage.artifact_read(model.tokenizer_sha256).decode() if model.kind == "text" else None
    return ModelRunner(storage.artifact_read(variant_sha256), ModelSpec(model.kind, model.output_name, tokenizer))
