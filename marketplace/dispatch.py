"""From sold compute to finished work: cutting allocations into work units, leasing them to cars, taking results
and failures back, reissuing what a lost or departing car held, and assembling a bid's results in item order."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone

from config.exceptions import ApplicationError
from fleet.agent.inference import decode_npy, encode_npy
from fleet.models import Vehicle

from . import sizing, storage, verdicts
from .datasets import ParsedDataset
from .models import Allocation, Bid, WorkUnit

MAX_UNIT_ATTEMPTS = 3
# Items per inference call on the car (INT8 outputs depend a little on the batch an item ran in).
LEASE_BATCH_SIZE = 32


# --- Cutting -----------------------------------------------------------------------------------------------------


def units_cut(*, allocations: list[Allocation], bids: dict[int, Bid], cars: list[dict[str, Any]]) -> int:
    """Give each allocated car work worth the CH it sold: reissued units of the bid first, then new ones.

    `allocations` are a round's, in pk order; `bids` holds their bids, locked by the caller and with ch_allocated
    already raised by the round; `cars[i]` describes allocations[i]'s car as the round saw it: ch_per_hour,
    parked_seconds_left, down_mbps, up_mbps, model_cached, hardware_id. Units are sized (marketplace/sizing.py) to fit
    well inside the car's predicted stay with transfer small next to compute. The bid's last allocation takes whatever
    items are left, so rounding never strands an item. A constant number of queries, whatever the round's size.
    Returns the number of units handed out.
    """
    bid_ids = {allocation.bid_id for allocation in allocations}
    reissued: dict[int, list[WorkUnit]] = {}
    waiting = WorkUnit.objects.filter(bid_id__in=bid_ids, status=WorkUnit.Status.QUEUED, assigned_vehicle__isnull=True)
    for unit in waiting.order_by("bid_id", "index"):
        reissued.setdefault(unit.bid_id, []).append(unit)
    next_index = dict(
        WorkUnit.objects.filter(bid_id__in=bid_ids).values("bid").annotate(n=Count("pk")).values_list("bid", "n")
    )
    # Only the bid's last allocation in the round (they are cut in pk order) takes what is left, or the first car
    # would get the work every other car bought.
    last_of_bid = {allocation.bid_id: allocation.pk for allocation in allocations}
    cut: list[tuple] = []  # rows of _CUT_COLUMNS: a big round cuts tens of thousands, too many to build as models
    reassigned: list[WorkUnit] = []
    unitised_before = {bid_id: bids[bid_id].items_unitised for bid_id in bid_ids}
    for allocation, car in zip(allocations, cars, strict=True):
        bid = bids[allocation.bid_id]
        per_item = bid.variant.ch_per_item
        budget = max(1, round(allocation.ch / per_item))
        left: list[WorkUnit] = []
        for unit in reissued.get(bid.pk, []):
            # A replica checks another car's result: it runs on the same hardware class, never on a car that ran it
            # (rounds.verification_allocate finds it a car when no allocation of the bid fits).
            if budget <= 0 or (
                unit.replica_of_id
                and (
                    allocation.vehicle_id in unit.excluded_vehicles
                    or (unit.requires_hardware_id and unit.requires_hardware_id != car["hardware_id"])
                )
            ):
                left.append(unit)
                continue
            unit.assigned_vehicle_id, unit.allocation = allocation.vehicle_id, allocation
            reassigned.append(unit)
            budget -= unit.items
        reissued[bid.pk] = left
        fully_allocated = bid.ch_allocated >= bid.ch_total and last_of_bid[bid.pk] == allocation.pk
        remaining = bid.items - bid.items_unitised
        to_cut = remaining if fully_allocated else min(max(budget, 0), remaining)
        size = sizing.items_per_unit(
            ch_per_item=per_item,
            car_ch_per_hour=car["ch_per_hour"],
            parked_seconds_left=car["parked_seconds_left"],
            down_mbps=car["down_mbps"],
            up_mbps=car["up_mbps"],
            item_bytes_in=bid.dataset.size_bytes / max(bid.dataset.item_count, 1),
            item_bytes_out=4 * 1024,
            model_bytes=bid.variant.size_bytes or 0,
            model_cached=car["model_cached"],
        ) or 1  # fmt: skip
        index, start = next_index.get(bid.pk, 0), bid.items_unitised
        while to_cut > 0:
            count = min(size, to_cut)
            cut.append((bid.pk, index, start, start + count, count * per_item, allocation.vehicle_id, allocation.pk))
            index, start, to_cut = index + 1, start + count, to_cut - count
        next_index[bid.pk], bid.items_unitised = index, start
    WorkUnit.objects.bulk_update(reassigned, ["assigned_vehicle", "allocation"], batch_size=1000)
    _units_insert(cut)
    changed = [bids[bid_id] for bid_id in bid_ids if bids[bid_id].items_unitised != unitised_before[bid_id]]
    Bid.objects.bulk_update(changed, ["items_unitised"], batch_size=1000)
    return len(reassigned) + len(cut)


# What differs between the units a round cuts; every other column holds its default.
_CUT_COLUMNS = ("bid_id", "index", "item_start", "item_end", "ch", "assigned_vehicle_id", "allocation_id")


def _units_insert(rows: list[tuple]) -> None:
    """Insert newly cut units, given as rows of _CUT_COLUMNS; every other column takes its default. On PostgreSQL
    with one COPY: bulk_create would build a model and prepare each of its 27 columns one value at a time."""
    if connection.vendor != "postgresql" or not rows:
        WorkUnit.objects.bulk_create([WorkUnit(**dict(zip(_CUT_COLUMNS, row, strict=True))) for row in rows], 1000)
        return
    fields = [f for f in WorkUnit._meta.concrete_fields if not f.primary_key]
    fresh = WorkUnit()
    defaults = [f.get_db_prep_save(getattr(fresh, f.attname), connection) for f in fields]
    at = {name: i for i, name in enumerate(f.attname for f in fields)}
    where = [at[name] for name in _CUT_COLUMNS]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {WorkUnit._meta.db_table} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            values = defaults.copy()
            for i, value in zip(where, row, strict=True):
                values[i] = value
            copy.write_row(values)


# --- Leasing -----------------------------------------------------------------------------------------------------


def unit_lease(*, vehicle: Vehicle, now: datetime | None = None) -> WorkUnit | None:
    """Hand the car its next queued unit under a fresh lease; None when it has none. Safe under concurrency: the
    row is claimed with SELECT ... FOR UPDATE SKIP LOCKED inside the transaction."""
    now = now or timezone.now()
    with transaction.atomic():
        unit = (
            WorkUnit.objects.select_for_update(skip_locked=True, of=("self",))
            # What lease_payload reads, in the same query.
            .select_related("bid__variant", "bid__inference_model", "bid__dataset__inference_model")
            .filter(assigned_vehicle=vehicle, status=WorkUnit.Status.QUEUED, bid__status__in=Bid.OPEN_STATUSES)
            .order_by("bid__created_at", "index")
            .first()
        )
        if unit is None:
            return None
        unit.status = WorkUnit.Status.LEASED
        unit.lease_id = str(uuid.uuid4())
        unit.leased_at = now
        unit.lease_expires_at = now + timedelta(seconds=settings.WORK_LEASE_SECONDS)
        unit.probes = verdicts.probes_pick(unit=unit)
        unit.save(update_fields=["status", "lease_id", "leased_at", "lease_expires_at", "probes"])
    return unit


def lease_payload(unit: WorkUnit, *, vehicle: Vehicle) -> dict[str, Any]:
    """The lease JSON the agent's WorkUnit.from_lease reads (fleet/agent/executor.py)."""
    bid = unit.bid
    variant, model = bid.variant, bid.inference_model
    leased = leased_items(unit, _dataset_items(bid).items)
    payload: dict[str, Any] = {
        "unit_id": str(unit.pk),
        "lease_id": unit.lease_id,
        "model_sha256": variant.sha256,
        "model_url": f"/api/v1/agent/artifacts/{variant.sha256}/",
        "model_size": variant.size_bytes,
        "kind": model.kind,
        "output_name": model.output_name,
        "batch_size": LEASE_BATCH_SIZE,
        "precision": variant.precision,
        # FP8 only runs natively where the hardware declares it; anywhere else it is emulated, and labelled so.
        "emulated": variant.emulated or (variant.precision == "fp8" and not vehicle.hardware.factor_fp8),
    }
    if model.kind == "text":
        payload["items"] = leased
        payload["tokenizer_sha256"] = model.tokenizer_sha256
        payload["tokenizer_url"] = f"/api/v1/agent/artifacts/{model.tokenizer_sha256}/"
    else:
        data, _ = encode_npy(np.asarray(leased))
        payload["items_npy_b64"] = base64.b64encode(data).decode("ascii")
    return payload


def leased_items(unit: WorkUnit, items) -> list:
    """The items a lease hands the car: the unit's own, with the known-answer probes (verdicts.probes_pick) among
    them where the car cannot tell them apart."""
    leased = list(items[unit.item_start : unit.item_end])
    for position, index in unit.probes:  # ascending positions: each lands where it was meant to
        leased.insert(position, items[index])
    return leased


def _dataset_items(bid: Bid) -> ParsedDataset:
    from .services import dataset_items

    return dataset_items(bid.dataset)


def _leased_unit(*, vehicle: Vehicle, unit_id: str, lease_id: str) -> WorkUnit:
    try:
        # Only the unit's row: FOR UPDATE over the join would lock the bid too, and every result of the bid would
        # wait for the one before it to commit (bid_finish_if_done locks the bid, briefly, at the end).
        unit = (
            WorkUnit.objects.select_for_update(of=("self",))
            .select_related("bid__inference_model", "bid__variant")  # what judging the result reads
            .get(pk=int(unit_id))
        )
    except (ValueError, WorkUnit.DoesNotExist):
        message = "No such work unit."
        raise ApplicationError(f"unit_id: {message}", fields={"unit_id": [message]}, status=404) from None
    if unit.status != WorkUnit.Status.LEASED or unit.lease_id != lease_id or unit.assigned_vehicle_id != vehicle.pk:
        raise ApplicationError(
            "lease_id: this lease is no longer yours (it expired or the unit was reissued).",
            fields={"lease_id": ["Not your current lease."]},
            code="lease_lost",
            status=409,
        )
    return unit


# --- Results and failures ----------------------------------------------------------------------------------------


# What a result sets on its unit.
_RESULT_FIELDS = (
    "output_sha256", "status", "done_by", "completed_at", "seconds", "energy_wh", "emulated", "runtime_version",
)  # fmt: skip


@transaction.atomic
def unit_result(*, vehicle: Vehicle, data: dict[str, Any], now: datetime | None = None) -> WorkUnit | None:
    """Take a car's outputs for a leased unit: checked (checksum, one output per item, finite, the known answers
    right), stored, counted once. None when the result was refused for a wrong known answer."""
    now = now or timezone.now()
    unit = _leased_unit(vehicle=vehicle, unit_id=data["unit_id"], lease_id=data["lease_id"])
    try:
        raw = base64.b64decode(data["output_npy_b64"], validate=True)
        outputs = decode_npy(raw)
    except (ValueError, OSError) as error:
        raise ApplicationError(f"output_npy_b64: not a base64 .npy array ({error}).",
                               fields={"output_npy_b64": ["Not a base64-encoded .npy array."]}) from None  # fmt: skip
    if hashlib.sha256(raw).hexdigest() != data["output_sha256"]:
        raise ApplicationError("output_sha256: does not match the outputs sent.",
                               fields={"output_sha256": ["Does not match the outputs."]})  # fmt: skip
    leased = unit.items + len(unit.probes)
    if outputs.ndim < 1 or outputs.shape[0] != leased or not np.isfinite(outputs).all():
        raise ApplicationError(
            f"output_npy_b64: expected {leased} finite outputs, got shape {list(outputs.shape)}.",
            fields={"output_npy_b64": [f"Expected {leased} finite outputs."]},
        )
    if unit.probes:
        outputs, probes_ok = verdicts.probes_check(unit=unit, outputs=outputs)
        if not probes_ok:
            verdicts.probe_failed(unit=unit, vehicle=vehicle, now=now)
            return None
        raw, _ = encode_npy(outputs)
    unit.output_sha256 = storage.artifact_save(raw)
    unit.status, unit.done_by, unit.completed_at = WorkUnit.Status.DONE, vehicle, now
    unit.seconds, unit.energy_wh = data.get("seconds"), data.get("energy_wh")
    unit.emulated, unit.runtime_version = bool(data.get("emulated")), str(data.get("runtime_version", ""))[:40]
    # Saved with its verdict's first step (or the verdict itself), in one UPDATE.
    verdicts.result_recorded(unit=unit, now=now, outputs=outputs, unsaved=_RESULT_FIELDS)
    bid_finish_if_done(bid=unit.bid)
    return unit


@transaction.atomic
def unit_failure(*, vehicle: Vehicle, unit_id: str, lease_id: str, error: str) -> WorkUnit:
    unit = _leased_unit(vehicle=vehicle, unit_id=unit_id, lease_id=lease_id)
    _release(unit, error=error[:2000], count_attempt=True)
    return unit


def _release(unit: WorkUnit, *, error: str, count_attempt: bool) -> None:
    """Give a unit back: to be reissued to the car of a later allocation, or failed for good after too many tries.

    Its CH go back to the bid, so the bid enters the next rounds for them; a failed unit is never billed.
    """
    unit.attempts += 1 if count_attempt else 0
    unit.error = error
    unit.lease_id, unit.leased_at, unit.lease_expires_at = "", None, None
    unit.assigned_vehicle, unit.allocation = None, None
    if unit.attempts >= MAX_UNIT_ATTEMPTS:
        unit.status = WorkUnit.Status.FAILED
        unit.save()
        if unit.replica_of_id:
            # A copy that no car could run: another car of the class checks the result instead.
            primary = WorkUnit.objects.select_for_update().get(pk=unit.replica_of_id)
            group = list(WorkUnit.objects.filter(Q(pk=primary.pk) | Q(replica_of=primary), status=WorkUnit.Status.DONE))
            verdicts.replica_ensure(primary=primary, group=group or [primary], now=timezone.now())
            return
        if Bid.objects.filter(pk=unit.bid_id, status__in=Bid.OPEN_STATUSES).update(
            status=Bid.Status.FAILED, closed_at=timezone.now()
        ):
            settle_bid_later(unit.bid_id)
        return
    unit.status = WorkUnit.Status.QUEUED
    unit.save()
    if unit.replica_of_id is None:  # a replica's CH are bought by verification, not the customer's bid
        Bid.objects.filter(pk=unit.bid_id).update(ch_allocated=F("ch_allocated") - unit.ch)


def leases_expire(*, now: datetime | None = None) -> int:
    """The sweeper: every lease past its expiry is a lost car; its unit is reissued. Safe to run twice."""
    now = now or timezone.now()
    count = 0
    for unit_id in WorkUnit.objects.filter(status=WorkUnit.Status.LEASED, lease_expires_at__lt=now).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            unit = WorkUnit.objects.select_for_update().get(pk=unit_id)
            if unit.status == WorkUnit.Status.LEASED and unit.lease_expires_at < now:
                _release(unit, error="lease expired: the car went silent", count_attempt=True)
                count += 1
    return count


@transaction.atomic
def vehicle_units_release(*, vehicle: Vehicle) -> int:
    """A departing car gives back at once every unit it holds or was given; none counts as its failure."""
    units = list(
        WorkUnit.objects.select_for_update().filter(
            assigned_vehicle=vehicle, status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED)
        )
    )
    for unit in units:
        _release(unit, error="the car left", count_attempt=False)
    Allocation.objects.filter(vehicle=vehicle, ends_at__gt=timezone.now()).update(ends_at=timezone.now())
    return len(units)


# --- Assembling ---------------------------------------------------------------------------------------------------


def bid_finish_if_done(*, bid: Bid) -> bool:
    """When every item of a bid has a done unit, assemble the outputs in item order and complete the bid."""
    # The bid's row alone: FOR UPDATE over a join would also lock its inference model, which every bid on a
    # catalogue model shares, and so make every result of every such bid wait for the one before it.
    bid = Bid.objects.select_for_update().get(pk=bid.pk)
    if bid.status not in Bid.OPEN_STATUSES or bid.items_unitised < bid.items:
        return False
    # Every result asks: answer "not yet" from one indexed query that stops at the first unresolved slice, rather
    # than loading every unit of the bid each time (quadratic over a job).
    resolved = WorkUnit.objects.filter(
        Q(pk=OuterRef("pk")) | Q(replica_of=OuterRef("pk")),
        canonical=True, verification=WorkUnit.Verification.VALID, status=WorkUnit.Status.DONE,
    )  # fmt: skip
    if bid.units.filter(replica_of__isnull=True).exclude(Exists(resolved)).exists():
        return False
    # Each slice of items counts once, by its canonical (validated) result, whichever car returned it.
    canonical = {
        u.primary_id: u
        for u in bid.units.filter(canonical=True, verification=WorkUnit.Verification.VALID, status=WorkUnit.Status.DONE)
    }
    primaries = list(bid.units.filter(replica_of__isnull=True).order_by("item_start"))
    if not primaries or any(p.pk not in canonical for p in primaries):
        return False
    units = [canonical[p.pk] for p in primaries]
    outputs = np.concatenate([decode_npy(storage.artifact_read(u.output_sha256)) for u in units])
    if outputs.shape[0] != bid.items:
        return False
    data, _ = encode_npy(outputs)
    bid.result_sha256 = storage.artifact_save(data)
    bid.status, bid.closed_at = Bid.Status.COMPLETED, timezone.now()
    bid.save(update_fields=["result_sha256", "status", "closed_at"])
    settle_bid_later(bid.pk)
    return True


def settle_bid_later(bid_id: int) -> None:
    from .services import settle_when_committed

    settle_when_committed(bid_id)


def bid_result_file(*, bid: Bid) -> tuple[bytes, str, str]:
    """(content, filename, content type): `.npy` for tensor models, JSON lines with each text's vector for text."""
    outputs = decode_npy(storage.artifact_read(bid.result_sha256))
    if bid.inference_model.kind == "text":
        texts = _dataset_items(bid).items
        buffer = io.StringIO()
        for index, (text, vector) in enumerate(zip(texts, outputs, strict=True)):
            buffer.write(_json_line({"index": index, "text": text, "vector": [float(v) for v in np.ravel(vector)]}))
        return buffer.getvalue().encode(), f"bid-{bid.pk}-results.jsonl", "application/jsonl"
    data, _ = encode_npy(outputs)
    return data, f"bid-{bid.pk}-results.npy", "application/octet-stream"


def _json_line(value: dict) -> str:
    import json

    return json.dumps(value, separators=(",", ":")) + "\n"
