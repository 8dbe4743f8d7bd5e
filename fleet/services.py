"""Writes of the fleet: registering vehicles, credentials, opt-in policies, and the heartbeat stream."""

from __future__ import annotations

import hashlib
import secrets
import time
import zoneinfo
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.audit import audit_record
from accounts.models import Role, User
from core.exceptions import ApplicationError

from . import book, state_store
from .agent import hardware, protocol
from .agent.signing import Credential
from .authentication import credential_forget, credential_known
from .availability import ABSOLUTE_MAX_POWER_W
from .models import (
    STATE_FIELDS,
    HardwareProfile,
    OptInPolicy,
    ParkingSession,
    Vehicle,
    VehicleCredential,
    VehicleState,
    VehicleThroughput,
    VehicleWorkDay,
    region_normalize,
)
from .selectors import energy_price_default
from .signals import vehicle_stopped_working


def _raise_for(error: ValidationError) -> None:
    fields = {name: [str(m) for m in messages] for name, messages in error.message_dict.items()}
    first = next(iter(fields.items()))
    raise ApplicationError(f"{first[0]}: {' '.join(first[1])}", fields=fields) from error


def vin_fingerprint(vin: str) -> tuple[str, str]:
    """(hash, last four) of a VIN: enough to spot the same car registered twice, never the VIN itself."""
    normalized = vin.strip().upper().replace(" ", "")
    if not (11 <= len(normalized) <= 17) or not normalized.isalnum():
        raise ApplicationError(
            "vin: a VIN has 11 to 17 letters and digits.", fields={"vin": ["A VIN has 11 to 17 letters and digits."]}
        )
    digest = hashlib.sha256(f"idlefleet-vin:{normalized}".encode()).hexdigest()
    return digest, normalized[-4:]


def time_zone_problem(name: str) -> str | None:
    """Why `name` is not a time zone the car can be registered in (the IANA names Python knows, e.g. "Europe/Berlin"),
    or None when it is one."""
    if name in zoneinfo.available_timezones():
        return None
    return f"“{name}” is not a time zone: choose one from the list, e.g. Europe/Berlin or America/New_York."


@transaction.atomic
def vehicle_register(
    *,
    owner: User,
    display_name: str,
    hardware: HardwareProfile,
    time_zone: str = "UTC",
    region: str = "",
    battery_capacity_kwh: float = 75.0,
    energy_price_cents_per_kwh: Decimal | float | None = None,
    vin: str = "",
    is_simulated: bool = False,
) -> tuple[Vehicle, Credential]:
    """Register an owner's car with a default opt-in policy and its first credential (returned once, never stored)."""
    if owner.role != Role.OWNER:
        raise ApplicationError("Only car owners can register vehicles.", code="permission_denied", status=403)
    if problem := time_zone_problem(time_zone):
        raise ApplicationError.for_field("time_zone", problem)
    if energy_price_cents_per_kwh is None:
        energy_price_cents_per_kwh = energy_price_default()
    vehicle = Vehicle(
        owner=owner,
        display_name=display_name.strip(),
        hardware=hardware,
        time_zone=time_zone,
        region=region_normalize(region),
        battery_capacity_kwh=battery_capacity_kwh,
        energy_price_cents_per_kwh=Decimal(str(energy_price_cents_per_kwh)),
        is_simulated=is_simulated,
    )
    if vin:
        vehicle.vin_hash, vehicle.vin_last4 = vin_fingerprint(vin)
        if Vehicle.objects.filter(vin_hash=vehicle.vin_hash).exists():
            raise ApplicationError(
                "vin: this car is already registered.", fields={"vin": ["This car is already registered."]}
            )
    try:
        vehicle.full_clean()
    except ValidationError as error:
        if "__all__" in error.message_dict:
            raise ApplicationError(
                f"display_name: you already have a car called '{vehicle.display_name}'.",
                fields={"display_name": ["You already have a car with this name."]},
            ) from error
        _raise_for(error)
    vehicle.save()
    OptInPolicy.objects.create(vehicle=vehicle, max_power_w=min(300, hardware.max_power_w))
    return vehicle, credential_issue(vehicle=vehicle)


@transaction.atomic
def credential_issue(*, vehicle: Vehicle) -> Credential:
    """A new signing key for the car; any previous one stops working at once. The private key is returned to be
    shown to the owner once: only the public key is stored."""
    Vehicle.objects.select_for_update().filter(pk=vehicle.pk).first()
    current = VehicleCredential.objects.filter(vehicle=vehicle, revoked_at__isnull=True)
    for key_id in current.values_list("key_id", flat=True):
        credential_forget(key_id)
    current.update(revoked_at=timezone.now())
    credential = Credential.generate(key_id=secrets.token_hex(8))
    VehicleCredential.objects.create(vehicle=vehicle, key_id=credential.key_id, public_key=credential.public_key)
    credential_known(credential.key_id)
    return credential


def credential_revoke(*, credential: VehicleCredential) -> None:
    """The key stops working, at once in every process (fleet.authentication.credential_forget); with Redis down too,
    then as soon as Redis answers again."""
    VehicleCredential.objects.filter(pk=credential.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    credential_forget(credential.key_id)


def vehicle_pause(*, vehicle: Vehicle) -> int:
    """The owner stops the car taking work: what it holds goes back to the market at once (it is not paid for work
    it does not finish). Returns the number of work units released."""
    if vehicle.status == Vehicle.Status.SUSPENDED:
        raise ApplicationError("This car is suspended by Idlefleet; pausing changes nothing.", code="suspended")
    with transaction.atomic():
        Vehicle.objects.filter(pk=vehicle.pk).update(status=Vehicle.Status.PAUSED)
        vehicle.status = Vehicle.Status.PAUSED
        book.vehicle_refresh(vehicle.pk)
        return vehicle_work_stop(vehicle=vehicle, reason="paused by its owner")


def vehicle_work_stop(*, vehicle: Vehicle, reason: str) -> int:
    """Announce that the car can no longer run the work it holds (fleet.signals); the marketplace releases it.
    Returns the number of work units released."""
    responses = vehicle_stopped_working.send(sender=Vehicle, vehicle=vehicle, reason=reason)
    return sum(count for _, count in responses if isinstance(count, int))


def vehicle_resume(*, vehicle: Vehicle) -> None:
    if vehicle.status == Vehicle.Status.SUSPENDED:
        raise ApplicationError(
            f"This car is suspended by Idlefleet ({vehicle.status_reason or 'no reason given'}); contact support.",
            code="suspended",
        )
    Vehicle.objects.filter(pk=vehicle.pk).update(status=Vehicle.Status.ACTIVE)
    vehicle.status = Vehicle.Status.ACTIVE
    book.vehicle_refresh(vehicle.pk)


def vehicle_suspend(*, vehicle: Vehicle, reason: str, actor=None) -> Vehicle:
    """Stop a car taking work (staff, or verification after repeated wrong results): it is offered in no round, the
    work it holds goes to other cars, and its owner is told why, on their dashboard and by email."""
    from django.core.mail import send_mail

    with transaction.atomic():
        vehicle = Vehicle.objects.select_for_update().select_related("owner").get(pk=vehicle.pk)
        if vehicle.status == Vehicle.Status.SUSPENDED:
            return vehicle
        previous = vehicle.status
        vehicle.status, vehicle.status_reason = Vehicle.Status.SUSPENDED, reason[:255]
        vehicle.save(update_fields=["status", "status_reason"])
        vehicle_work_stop(vehicle=vehicle, reason="suspended by Idlefleet")
        audit_record(actor=actor, action="vehicle.suspend", target=vehicle,
                     details={"previous_status": previous, "reason": reason})  # fmt: skip
    if vehicle.owner.email:
        send_mail(
            subject=f"Idlefleet: your car {vehicle.display_name} is suspended",
            message=f"{vehicle.display_name} no longer receives work.\n\nWhy: {reason}\n",
            from_email=None,
            recipient_list=[vehicle.owner.email],
            fail_silently=True,
        )
    return vehicle


def windows_validate(windows: Any) -> list[list[int]]:
    """Windows are [[weekday 0–6, start minute 0–1439, end minute 0–1440], ...] in the car's local time."""
    if not isinstance(windows, list) or len(windows) > 50:
        message = "Expected a list of at most 50 [weekday, start minute, end minute] entries."
        raise ApplicationError(f"windows: {message}", fields={"windows": [message]})
    clean = []
    for index, window in enumerate(windows):
        ok = (
            isinstance(window, list | tuple)
            and len(window) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in window)
            and 0 <= window[0] <= 6
            and 0 <= window[1] <= 1439
            and 0 <= window[2] <= 1440
        )
        if not ok:
            message = "Each window is [weekday 0–6 (Monday = 0), start minute 0–1439, end minute 0–1440]."
            raise ApplicationError(f"windows.{index}: {message}", fields={f"windows.{index}": [message]})
        clean.append([int(v) for v in window])
    return clean


POLICY_FIELDS = (
    "enabled",
    "windows",
    "battery_floor_pct",
    "plugged_in_only",
    "max_energy_kwh_per_day",
    "max_power_w",
    "min_price_mcents_per_ch",
    "leave_at",
)


@transaction.atomic
def policy_update(*, policy: OptInPolicy, **changes: Any) -> OptInPolicy:
    """Change an opt-in policy. Every rule is checked before anything is saved; a bad value changes nothing."""
    unknown = set(changes) - set(POLICY_FIELDS)
    if unknown:
        name = sorted(unknown)[0]
        raise ApplicationError(f"{name}: not a policy setting.", fields={name: ["Not a policy setting."]})
    policy = OptInPolicy.objects.select_for_update().select_related("vehicle__hardware").get(pk=policy.pk)
    if "windows" in changes:
        changes["windows"] = windows_validate(changes["windows"])
    for name, value in changes.items():
        setattr(policy, name, value)
    try:
        policy.full_clean(exclude=["vehicle"])
    except ValidationError as error:
        _raise_for(error)
    hardware = policy.vehicle.hardware
    limit = min(hardware.max_power_w, ABSOLUTE_MAX_POWER_W)
    if policy.max_power_w > limit:
        message = (
            f"At most {limit:.0f} W: {hardware.name} draws up to {hardware.max_power_w} W"
            if hardware.max_power_w < ABSOLUTE_MAX_POWER_W
            else f"At most {ABSOLUTE_MAX_POWER_W:.0f} W, the most a car may spend on compute"
        ) + "."
        raise ApplicationError(f"max_power_w: {message}", fields={"max_power_w": [message]})
    if "leave_at" in changes and policy.leave_at is not None and policy.leave_at <= timezone.now():
        message = "That time has already passed."
        raise ApplicationError(f"leave_at: {message}", fields={"leave_at": [message]})
    policy.save()
    return policy


# --- The heartbeat stream -------------------------------------------------------------------------------------------


def heartbeat_record(
    *, vehicle: Vehicle, data: dict[str, Any], received_at: datetime, admission: state_store.Admission
) -> state_store.Admitted:
    """Keep the car's state hot in Redis and open or close its parking session when it parks or drives off.

    Only a change of parked/driving touches the database, so a stream of heartbeats costs Redis writes alone. The state
    is stored in the round trip that admits the request (`admission`, from fleet.authentication), and nothing at all
    when the request is refused: the caller enforces what is returned.
    """
    state = {**data, "observed_at": data["observed_at"].isoformat(), "received_at": received_at.isoformat()}
    # The common case in one Redis round trip: the state is stored unless the car had announced its departure.
    admitted = state_store.agent_admit(
        admission, vehicle_id=vehicle.pk, state=state, received_ts=received_at.timestamp()
    )
    if admitted.outcome != state_store.ADMITTED:
        return admitted
    stored, previous, profile = admitted.stored, admitted.previous, admitted.profile
    if not stored:
        announced = _departure_announced_at(previous)
        leaving = announced is not None and data["parked"]
        if leaving and (data["observed_at"] - announced).total_seconds() < protocol.DEPARTURE_GRACE_SECONDS:
            # The car said it is leaving but has not moved yet: it stays "leaving" (not parked, takes no work).
            state.update(parked=False, departure_announced_at=announced.isoformat())
        previous = state_store.state_swap(vehicle_id=vehicle.pk, state=state, received_ts=received_at.timestamp())
    was_parked = None if previous is None else previous.get("parked")
    parking_changed = was_parked is None or was_parked != state["parked"]
    if parking_changed and _parking_transition(
        vehicle=vehicle, parked=state["parked"], at=data["observed_at"], announced=False
    ):
        profile = book.profile_rebuild(vehicle.pk)  # a stay began or ended: its departure prediction with it
    if previous is not None and _can_work(previous) and not _can_work(state):
        # The moment a car drives off or loses WiFi, its work goes to other cars (the sweeper would, seconds later).
        vehicle_work_stop(vehicle=vehicle, reason="driving" if not state["parked"] else f"on {state['network']}")
    # The car's offer in the supply book, as of this heartbeat, and how soon it should send the next.
    next_heartbeat_s = book.heartbeat_offer(
        vehicle_id=vehicle.pk, state=state, received_ts=received_at.timestamp(), profile=profile,
        holds_work=admitted.holds_work,
    )  # fmt: skip
    return replace(admitted, next_heartbeat_s=next_heartbeat_s)


def _can_work(state: dict[str, Any]) -> bool:
    return bool(state.get("parked")) and state.get("network") in protocol.WORK_NETWORKS


def _departure_announced_at(state: dict[str, Any] | None) -> datetime | None:
    value = (state or {}).get("departure_announced_at")
    return datetime.fromisoformat(value) if value else None


def _parking_transition(*, vehicle: Vehicle, parked: bool, at: datetime, announced: bool) -> bool:
    """Open or close the car's stay. Returns whether this call changed it."""
    open_session = ParkingSession.objects.filter(vehicle=vehicle, departed_at__isnull=True).first()
    if parked and open_session is None:
        try:
            with transaction.atomic():
                ParkingSession.objects.create(vehicle=vehicle, arrived_at=at)
        except IntegrityError:
            return False  # another heartbeat of the same car opened it a moment ago
        return True
    if not parked and open_session is not None:
        departed = max(at, open_session.arrived_at)
        return bool(
            ParkingSession.objects.filter(pk=open_session.pk, departed_at__isnull=True).update(
                departed_at=departed, departure_announced=announced
            )
        )
    return False


def vehicle_depart(*, vehicle: Vehicle, observed_at: datetime, received_at: datetime) -> int:
    """The car is about to drive: close its parking session and release its work at once.

    Returns the number of work units released (the marketplace hooks in here).
    """
    _parking_transition(vehicle=vehicle, parked=False, at=observed_at, announced=True)
    previous = state_store.state_get(vehicle.pk)
    if previous is not None:
        previous.update(
            parked=False, computing=False, compute_power_w=0.0, departure_announced_at=observed_at.isoformat(),
            observed_at=observed_at.isoformat(), received_at=received_at.isoformat(),
        )  # fmt: skip
        state_store.state_swap(vehicle_id=vehicle.pk, state=previous, received_ts=received_at.timestamp())
    book.vehicle_refresh(vehicle.pk)  # its offer leaves the book at once
    return vehicle_work_stop(vehicle=vehicle, reason="the car left")


def vehicle_compute_report(*, vehicle: Vehicle, report: dict[str, Any], at: datetime) -> Vehicle:
    """Store what the car's agent says its compute can do, and the class the platform derives from it
    (fleet/agent/hardware.py). A car whose class changes (a new computer, or an agent that now reports its CPU) keeps
    no measurement of the old one: the marketplace measures speed per car and variant, accuracy per class."""
    report = {**report, "isa": hardware.clean_features(report.get("isa", ()))}
    compute_class = hardware.compute_class(report)
    with transaction.atomic():
        previous = Vehicle.objects.select_for_update().values_list("compute_class", flat=True).get(pk=vehicle.pk)
        if previous and previous != compute_class:
            VehicleThroughput.objects.filter(vehicle_id=vehicle.pk).delete()  # measured on other hardware
        Vehicle.objects.filter(pk=vehicle.pk).update(
            compute=report, compute_class=compute_class, compute_reported_at=at
        )
        if previous and previous != compute_class:
            book.vehicle_refresh(vehicle.pk)  # its measured speeds are gone
    vehicle.compute, vehicle.compute_class, vehicle.compute_reported_at = report, compute_class, at
    return vehicle


# A new unit's timing weighs this much in the car's measured speed (the rest is its history): a car that slows down
# (heat, a busy computer) is followed within a few units, one slow unit does not halve its offer.
THROUGHPUT_SMOOTHING = 0.3
# Shorter compute than this is timer noise: a tiny unit of a tiny model says little about speed.
MIN_MEASURED_SECONDS = 1e-3


def throughput_record(
    *,
    vehicle: Vehicle,
    workload: str,
    precision: str,
    ch_per_item: float,
    items: int,
    seconds: float,
    energy_wh: float,
    at: datetime,
    first: bool = False,
) -> VehicleThroughput | None:
    """Fold one run of `items` items of `workload` (the model file's sha256) in `seconds` of compute, using
    `energy_wh`, into the car's measured speed and energy, and into its day's work (VehicleWorkDay). `first` (a
    self-test) replaces what was measured before. Smoothed on seconds per item, so a slow unit weighs as much as the
    time it took. Returns None for a run with nothing to measure."""
    if items <= 0 or seconds is None or seconds < 0 or ch_per_item <= 0:
        return None
    # What an agent request's vehicle does not carry (fleet.authentication loads only its id, owner and hardware).
    time_zone, compute_class = Vehicle.objects.values_list("time_zone", "compute_class").get(pk=vehicle.pk)
    _work_day_add(vehicle=vehicle, day=at.astimezone(zoneinfo.ZoneInfo(time_zone)).date(), items=items,
                  seconds=seconds, energy_wh=max(energy_wh or 0.0, 0.0))  # fmt: skip
    seconds_per_item = max(seconds, MIN_MEASURED_SECONDS) / items
    wh_per_item = max(energy_wh or 0.0, 0.0) / items
    with transaction.atomic():
        row = VehicleThroughput.objects.select_for_update().filter(vehicle=vehicle, workload=workload).first()
        if row is None:
            row = VehicleThroughput(vehicle=vehicle, workload=workload)
        elif not first:
            weight = THROUGHPUT_SMOOTHING
            seconds_per_item = (1 - weight) / row.items_per_s + weight * seconds_per_item
            wh_per_item = (1 - weight) * row.wh_per_item + weight * wh_per_item
        row.precision, row.ch_per_item, row.compute_class = precision, ch_per_item, compute_class
        row.items_per_s, row.wh_per_item = 1 / seconds_per_item, wh_per_item
        row.samples = 1 if first else row.samples + 1
        row.measured_at = at
        row.save()
    return row


def _work_day_add(*, vehicle: Vehicle, day, items: int, seconds: float, energy_wh: float) -> None:
    """Count one run in the car's `day` (its own calendar), in one statement whoever else counts at the same time."""
    from django.db.models import F

    VehicleWorkDay.objects.get_or_create(vehicle_id=vehicle.pk, day=day)
    VehicleWorkDay.objects.filter(vehicle_id=vehicle.pk, day=day).update(
        units=F("units") + 1, items=F("items") + items, seconds=F("seconds") + seconds,
        energy_wh=F("energy_wh") + energy_wh,
    )  # fmt: skip


def vehicle_states_snapshot(*, since: timedelta = timedelta(minutes=10)) -> int:
    """Copy the live heartbeats of recently seen cars from Redis into VehicleState. Safe to run twice."""
    ids = state_store.seen_since((timezone.now() - since).timestamp())
    live = state_store.states_get(ids)
    existing = set(Vehicle.objects.filter(pk__in=live.keys()).values_list("pk", flat=True))
    rows = []
    for vehicle_id, state in live.items():
        if vehicle_id not in existing:
            continue  # deleted since
        values = {name: state[name] for name in STATE_FIELDS if name in state}
        values["received_at"] = datetime.fromisoformat(state["received_at"])
        values["observed_at"] = datetime.fromisoformat(state["observed_at"])
        rows.append(VehicleState(vehicle_id=vehicle_id, **values))
    VehicleState.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["vehicle"], update_fields=[n for n in STATE_FIELDS]
    )
    return len(rows)


def credentials_last_used_record() -> int:
    """Write the keys' last uses that agent requests noted in Redis (fleet.authentication: at most once per key per
    LAST_USED_RESOLUTION) to the database, in bulk: no agent request writes it. Safe to run twice. Returns the number
    of credentials stamped."""
    until = time.time()
    used = state_store.credentials_used(until=until)
    stamped = 0
    keys = list(used)
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        rows = list(VehicleCredential.objects.filter(key_id__in=batch).only("pk", "key_id"))
        for credential in rows:
            credential.last_used_at = datetime.fromtimestamp(used[credential.key_id], tz=UTC)
        VehicleCredential.objects.bulk_update(rows, ["last_used_at"])
        stamped += len(rows)
    state_store.credentials_used_forget(until=until)  # after the database has them: a crash loses none
    return stamped
