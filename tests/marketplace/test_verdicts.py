"""Results from untrusted cars are checked (BOINC-style): a new car's result runs again on another car of the same
hardware and the two are compared; a disagreement brings a third car; a liar is caught, paid nothing, and suspended
after repeated faults; a car with a long record is only spot-checked."""

import base64
from datetime import timedelta

import numpy as np
import pytest
from django.core import mail
from django.utils import timezone

from billing import ledger
from billing.services import settling
from billing.services.settling import work_lines
from core.money import NC_PER_CENT
from fleet.agent.inference import decode_npy, encode_npy
from fleet.models import OptInPolicy, Vehicle
from marketplace import selectors, storage
from marketplace.models import Allocation, Bid, ResultFault, WorkUnit
from marketplace.rounds import auction_round_run
from tests.factories import OwnerFactory, vehicle_with_credential
from tests.fleet.agent_requests import heartbeat, signed_post
from tests.marketplace.conftest import measured_here
from tests.marketplace.test_dispatch import LEASE, RESULT, run_unit

pytestmark = pytest.mark.django_db


@pytest.fixture
def new_cars(client, settings):
    """Three parked HW4 cars with no record yet: honest Hana and Hugo, and Liam, whose agent returns noise."""
    settings.VERIFICATION_SPOT_CHECK_RATE = 0.0
    settings.AUCTION_INTERVAL_SECONDS = 10  # a round every 10 s: the heartbeats stay fresh over a few rounds
    cars = {}
    for name, min_price in (("hana", 2000), ("hugo", 2000), ("liam", 2000)):
        vehicle, credential = vehicle_with_credential(OwnerFactory(username=name), name=f"{name}'s car")
        OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=min_price)
        assert signed_post(client, credential, "/api/v1/agent/heartbeat/", heartbeat(battery_pct=90)).status_code == 200
        cars[name] = (vehicle, credential)
    return cars


def model_bytes_of(bid) -> bytes:
    from marketplace import storage

    return storage.artifact_read(bid.variant.sha256)


def lying(lease: dict, model: bytes) -> dict:
    """What a cheating car sends: random vectors of the right shape, checksummed properly."""
    honest = run_unit(lease, model)
    outputs = decode_npy(base64.b64decode(honest["output_npy_b64"]))
    noise = np.random.default_rng(7).normal(size=outputs.shape).astype(outputs.dtype)
    data, sha = encode_npy(noise)
    return {**honest, "output_npy_b64": base64.b64encode(data).decode(), "output_sha256": sha}


def work_off(client, credential, model: bytes, *, answer=run_unit) -> int:
    """The car leases and returns units until it has none; how many it ran (a new car's self-test, run honestly
    whatever `answer` is, first: it is not a unit)."""
    count = 0
    while (response := signed_post(client, credential, LEASE, {})).status_code == 200:
        lease = response.json()
        self_test = lease["unit_id"].startswith("selftest-")
        reply = run_unit(lease, model) if self_test else answer(lease, model)
        assert signed_post(client, credential, RESULT, reply).status_code == 200
        count += not self_test
    return count


def next_round(step: int):
    # A round every 10 s: the cars' one heartbeat stays fresh (1.5 intervals) over three rounds.
    return auction_round_run(now=timezone.now() + timedelta(seconds=10 * step))


def only_cars(new_cars, *names):
    """Only these cars of `new_cars` are in the market (the others' owners paused them)."""
    for name, (vehicle, _) in new_cars.items():
        Vehicle.objects.filter(pk=vehicle.pk).update(status="active" if name in names else "paused")


def test_a_new_cars_result_is_run_again_on_another_car_and_both_are_paid_once_agreed(client, bid, new_cars):
    (hana, hana_key), (hugo, hugo_key) = new_cars["hana"], new_cars["hugo"]
    only_cars(new_cars, "hana")
    model = model_bytes_of(bid)
    next_round(0)
    assert work_off(client, hana_key, model) > 0

    bid.refresh_from_db()
    assert bid.status == Bid.Status.RUNNING  # not complete before a second car agrees
    primaries = bid.units.filter(replica_of__isnull=True)
    assert set(primaries.values_list("quorum", "verification")) == {(2, "pending")}
    replicas = bid.units.filter(replica_of__isnull=False)
    assert replicas.count() == primaries.count()
    assert {(r.requires_hardware_id, tuple(r.excluded_vehicles)) for r in replicas} == {(hana.hardware_id, (hana.pk,))}

    only_cars(new_cars, "hugo")
    next_round(1)
    assert work_off(client, hugo_key, model) == replicas.count()

    bid.refresh_from_db()
    assert bid.status == Bid.Status.COMPLETED
    assert set(bid.units.values_list("verification", flat=True)) == {"valid"}
    assert set(bid.units.filter(canonical=True).values_list("done_by", flat=True)) == {hana.pk}
    hana.refresh_from_db()
    hugo.refresh_from_db()
    assert (hana.valid_streak, hugo.valid_streak) == (primaries.count(), replicas.count())


def test_a_liar_is_outvoted_by_a_third_car_gets_nothing_and_is_suspended(client, bid, new_cars, settings):
    settings.VERIFICATION_SUSPEND_AFTER_FAULTS = 2
    (hana, hana_key), (liam, liam_key) = new_cars["hana"], new_cars["liam"]
    hugo, hugo_key = new_cars["hugo"]
    model = model_bytes_of(bid)
    only_cars(new_cars, "liam")
    next_round(0)
    lies = work_off(client, liam_key, model, answer=lying)
    assert lies >= 1
    # Hana checks Liam's results; they disagree, so Hugo decides.
    only_cars(new_cars, "hana")
    next_round(1)
    assert work_off(client, hana_key, model) == lies
    only_cars(new_cars, "hugo")
    next_round(2)
    assert work_off(client, hugo_key, model) == lies

    bid.refresh_from_db()
    assert bid.status == Bid.Status.COMPLETED
    liars_units = bid.units.filter(done_by=liam)
    assert set(liars_units.values_list("verification", "canonical")) == {("invalid", False)}
    assert not bid.units.filter(done_by__in=[hana, hugo], verification="invalid").exists()
    # The customer's results contain none of the liar's outputs: they are the honest cars' own.
    from marketplace import storage

    canonical = bid.units.filter(canonical=True).order_by("item_start")
    assert set(canonical.values_list("done_by", flat=True)) <= {hana.pk, hugo.pk}
    result = decode_npy(storage.artifact_read(bid.result_sha256))
    honest = np.concatenate([decode_npy(storage.artifact_read(u.output_sha256)) for u in canonical])
    np.testing.assert_array_equal(result, honest)

    liam.refresh_from_db()
    assert (liam.valid_streak, liam.results_invalid) == (0, lies)
    assert (liam.status == Vehicle.Status.SUSPENDED) == (lies >= 2)  # (else still paused by the test)


def test_repeated_faults_suspend_the_car_release_its_work_and_tell_its_owner(client, bid, new_cars, settings):
    settings.VERIFICATION_SUSPEND_AFTER_FAULTS = 2
    from marketplace.verdicts import reputation_record

    liam, liam_key = new_cars["liam"]
    only_cars(new_cars, "liam")
    next_round(0)
    held = list(bid.units.filter(assigned_vehicle=liam).values_list("pk", flat=True))
    assert held
    now = timezone.now()
    ResultFault.objects.create(vehicle=liam, kind="outvoted", created_at=now - timedelta(days=2))  # earlier this week

    car = reputation_record(vehicle_id=liam.pk, valid=False, now=now)

    assert car.status == Vehicle.Status.SUSPENDED
    assert car.status_reason.startswith("2 results in the last 168 hours disagreed with other cars")
    assert [m.to for m in mail.outbox] == [[liam.owner.email]]
    assert "suspended" in mail.outbox[0].subject
    # Its work goes back to the bid for other cars, and it gets no more.
    assert not WorkUnit.objects.filter(pk__in=held, assigned_vehicle=liam).exists()
    refused = signed_post(client, liam_key, LEASE, {})
    assert (refused.status_code, refused.json()["code"]) == (409, "cannot_work")
    assert "suspended by Idlefleet" in refused.json()["message"]
    client.force_login(liam.owner)
    page = client.get(f"/owner/vehicles/{liam.pk}/").content.decode()
    assert "disagreed with other cars" in page
    assert "0 validated results in a row · 0 validated, 1 rejected in all" in page
    assert list(liam.result_faults.values_list("kind", flat=True)) == ["outvoted", "outvoted"]


def test_the_liar_is_paid_nothing_and_the_platform_pays_the_checking_cars(alice, card_for, new_cars, settings):
    from tests.billing import builders

    card_for(alice)
    (hana, _), (hugo, _), (liam, _) = new_cars["hana"], new_cars["hugo"], new_cars["liam"]
    bid = builders.bid_authorized(alice, budget_cents=5_000)
    primary = builders.validate(builders.sell(bid, hana, ch=100.0, price_mcents=5_000))  # 500 ¢, canonical
    for car, verdict in ((hugo, WorkUnit.Verification.VALID), (liam, WorkUnit.Verification.INVALID)):
        allocation = builders.sell(bid, car, ch=100.0, price_mcents=5_000)
        WorkUnit.objects.filter(allocation=allocation).update(
            status="done", done_by=car, verification=verdict, canonical=False, replica_of=primary,
            completed_at=timezone.now(),
        )  # fmt: skip
    builders.close(bid)

    auth = settling.bid_settle(bid_id=bid.pk)

    assert auth.captured_cents == 500  # the customer pays for the items once
    cent = NC_PER_CENT  # the ledger's unit is the n¢
    assert ledger.balance(kind="owner_pending", user_id=hana.owner_id) == 425 * cent
    # The checker, paid by the platform:
    assert ledger.balance(kind="owner_pending", user_id=hugo.owner_id) == 425 * cent
    assert ledger.balance(kind="owner_pending", user_id=liam.owner_id) == 0  # the liar, nothing
    assert ledger.balance(kind="verification_cost") == 425 * cent
    assert ledger.balance(kind="platform_fee") == 75 * cent


def test_a_trusted_car_is_only_spot_checked(client, bid, new_cars, settings):
    hana, hana_key = new_cars["hana"]
    only_cars(new_cars, "hana")
    Vehicle.objects.filter(pk=hana.pk).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
    next_round(0)

    work_off(client, hana_key, model_bytes_of(bid))

    bid.refresh_from_db()
    assert bid.status == Bid.Status.COMPLETED
    assert not bid.units.filter(replica_of__isnull=False).exists()
    assert set(bid.units.values_list("quorum", "verification", "canonical")) == {(1, "valid", True)}


def test_a_fault_costs_a_trusted_car_its_trust(client, bid, new_cars, settings):
    settings.VERIFICATION_SUSPEND_AFTER_FAULTS = 99
    from marketplace.verdicts import reputation_record

    hana, _ = new_cars["hana"]
    Vehicle.objects.filter(pk=hana.pk).update(valid_streak=50)

    car = reputation_record(vehicle_id=hana.pk, valid=False, now=timezone.now())

    assert (car.valid_streak, car.results_invalid, car.status) == (0, 1, "active")


def test_staff_see_what_verification_costs_and_catches(client, staff, bid, new_cars):
    hana, _ = new_cars["hana"]
    liam, _ = new_cars["liam"]
    slice_ = {"bid": bid, "variant": bid.variant, "item_start": 0, "item_end": 10, "ch": 2.0, "status": "done"}
    primary = WorkUnit.objects.create(**slice_, index=50, done_by=hana, verification="valid", canonical=True)
    WorkUnit.objects.create(**slice_, index=51, done_by=liam, verification="invalid", replica_of=primary)
    WorkUnit.objects.create(**slice_, index=52, done_by=hana, verification="valid", replica_of=primary)
    Vehicle.objects.filter(pk=liam.pk).update(status="suspended")
    client.force_login(staff)

    page = client.get("/staff/finance/").content.decode()

    assert "Result verification" in page
    assert "100.0 %" in page  # 2 CH of checks for 2 CH billed
    assert '<th scope="row">Results rejected (outvoted by other cars)</th><td>1</td>' in page
    assert '<th scope="row">Suspended cars</th><td>1</td>' in page


def test_known_answers_hidden_in_a_lease_catch_a_trusted_cheat_that_no_replica_would(client, bid, new_cars, settings):
    settings.VERIFICATION_PROBE_RATE = 1.0
    settings.VERIFICATION_SUSPEND_AFTER_FAULTS = 99
    liam, liam_key = new_cars["liam"]
    hana, hana_key = new_cars["hana"]
    Vehicle.objects.filter(pk__in=[liam.pk, hana.pk]).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
    for car in (liam, hana):
        measured_here(car, bid.variant)  # trusted: they have run this work before (and passed its self-test)
    only_cars(new_cars, "liam")
    next_round(0)
    lease = signed_post(client, liam_key, LEASE, {}).json()
    unit = WorkUnit.objects.get(pk=lease["unit_id"])
    assert len(unit.probes) == settings.VERIFICATION_PROBE_ITEMS
    leased = decode_npy(base64.b64decode(lease["items_npy_b64"]))
    assert len(leased) == unit.items + len(unit.probes)  # the car cannot tell which are which

    answer = lying(lease, model_bytes_of(bid))
    assert signed_post(client, liam_key, RESULT, answer).json() == {"accepted": True}

    unit.refresh_from_db()
    assert (unit.status, unit.assigned_vehicle_id, unit.output_sha256) == ("queued", None, "")  # thrown away
    assert liam.pk in unit.excluded_vehicles
    liam.refresh_from_db()
    assert (liam.valid_streak, liam.results_invalid) == (0, 1)
    assert liam.result_faults.get().kind == "known_answer"
    # An honest car gets the unit, answers the probes right, and its own outputs alone are kept.
    only_cars(new_cars, "hana")
    next_round(1)
    assert work_off(client, hana_key, model_bytes_of(bid)) >= 1
    unit.refresh_from_db()
    assert (unit.status, unit.done_by_id, unit.verification) == ("done", hana.pk, "valid")
    assert decode_npy(storage.artifact_read(unit.output_sha256)).shape[0] == unit.items


def test_the_probes_model_is_loaded_once_when_the_first_results_arrive_together(monkeypatch):
    """A job's first results arrive at once; each web thread loading the model would cost its CPU and memory again."""
    import functools
    import threading
    import time

    from marketplace import verdicts

    loads = []

    @functools.lru_cache(maxsize=2)
    def slow_load(variant_sha256, model_id):
        loads.append(variant_sha256)
        time.sleep(0.05)  # building an ONNX Runtime session takes a while
        return object()

    monkeypatch.setattr(verdicts, "_runner_made", slow_load)
    runners = []
    threads = [threading.Thread(target=lambda: runners.append(verdicts.runner_for("ab" * 32, 1))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert loads == ["ab" * 32]
    assert len(runners) == 4 and len({id(runner) for runner in runners}) == 1


def test_a_car_that_fails_a_known_answer_never_gets_that_unit_again_and_another_car_runs_it_at_its_first_price(
    client, bid, new_cars, settings
):
    settings.VERIFICATION_PROBE_RATE = 1.0
    settings.VERIFICATION_SUSPEND_AFTER_FAULTS = 99
    (liam, liam_key), (hana, hana_key) = new_cars["liam"], new_cars["hana"]
    Vehicle.objects.filter(pk__in=[liam.pk, hana.pk]).update(valid_streak=settings.VERIFICATION_TRUSTED_AFTER)
    # Liam asks the least: the auction sells him the bid first, every round he is free.
    OptInPolicy.objects.filter(vehicle=liam).update(min_price_mcents_per_ch=1000)
    Vehicle.objects.filter(pk=liam.pk).update(energy_price_cents_per_kwh=0)
    for car in (liam, hana):
        measured_here(car, bid.variant)
    model = model_bytes_of(bid)
    only_cars(new_cars, "liam")
    next_round(0)
    lease = signed_post(client, liam_key, LEASE, {}).json()
    assert signed_post(client, liam_key, RESULT, lying(lease, model)).json() == {"accepted": True}
    unit = WorkUnit.objects.get(pk=lease["unit_id"])
    work_off(client, liam_key, model)  # the rest of his work, honestly
    Allocation.objects.filter(vehicle=liam).update(ends_at=timezone.now())  # his sold time is over: he is free

    first_price = Allocation.objects.filter(vehicle=liam).order_by("pk").first().price_mcents_per_ch
    assert WorkUnit.objects.get(pk=unit.pk).price_cap_mcents == first_price
    # Both are offered, Hana dearer. The auction, which cannot tell, sells Liam the bid again (he asks the least),
    # but not the unit he lied about: the round gives it to Hana, a car it did not sell, rather than let it wait.
    OptInPolicy.objects.filter(vehicle=hana).update(min_price_mcents_per_ch=4000)
    only_cars(new_cars, "liam", "hana")
    assert Allocation.objects.filter(round=next_round(1), bid=bid, vehicle=liam).exists()
    assert WorkUnit.objects.get(pk=unit.pk).assigned_vehicle_id == hana.pk
    assert work_off(client, liam_key, model) == 0
    assert work_off(client, hana_key, model) >= 1

    unit.refresh_from_db()
    assert (unit.status, unit.done_by_id, unit.verification) == ("done", hana.pk, "valid")
    # The customer pays the price of the allocation that first ran the items, not the reissue's dearer one: the
    # platform bears the difference, as verification.
    assert unit.allocation.price_mcents_per_ch > first_price
    lines, checks, _ = work_lines(bid)
    hana_key_ = f"{hana.pk}:{hana.owner_id}"
    assert {line.price_mcents for line in lines if line.key == hana_key_} == {first_price}
    assert {line.price_mcents for line in checks if line.key == hana_key_} == {
        unit.allocation.price_mcents_per_ch - first_price
    }
    liam.refresh_from_db()
    assert (liam.results_invalid, liam.result_faults.count()) == (1, 1)  # one lie, one fault
    bid.refresh_from_db()
    assert bid.status == Bid.Status.COMPLETED
    result = decode_npy(storage.artifact_read(bid.result_sha256))
    np.testing.assert_array_equal(
        result[unit.item_start : unit.item_end], decode_npy(storage.artifact_read(unit.output_sha256))
    )


def test_a_car_caught_by_known_answers_is_suspended_with_a_reason_that_says_so(client, bid, new_cars, settings):
    settings.VERIFICATION_SUSPEND_AFTER_FAULTS = 2
    from marketplace.verdicts import probe_failed

    liam, _ = new_cars["liam"]
    unit = WorkUnit.objects.create(bid=bid, variant=bid.variant, index=0, item_start=0, item_end=10, ch=2.0)
    now = timezone.now()
    ResultFault.objects.create(vehicle=liam, kind="known_answer", created_at=now - timedelta(days=1))

    probe_failed(unit=unit, vehicle_id=liam.pk, now=now)

    liam.refresh_from_db()
    assert liam.status == Vehicle.Status.SUSPENDED
    assert "failed 2 known-answer checks in the last 168 hours" in liam.status_reason
    assert "disagreed" not in liam.status_reason
    assert "known-answer checks" in mail.outbox[0].body
    client.force_login(liam.owner)
    page = client.get(f"/owner/vehicles/{liam.pk}/").content.decode()
    assert "failed 2 known-answer checks" in page


def test_a_car_caught_both_ways_is_told_both(bid, new_cars, settings):
    settings.VERIFICATION_SUSPEND_AFTER_FAULTS = 2
    from marketplace.verdicts import reputation_record

    liam, _ = new_cars["liam"]
    now = timezone.now()
    ResultFault.objects.create(vehicle=liam, kind="known_answer", created_at=now - timedelta(days=1))

    car = reputation_record(vehicle_id=liam.pk, valid=False, now=now)

    assert "1 result disagreed with other cars running the same work" in car.status_reason
    assert "failed 1 known-answer check " in car.status_reason
    assert len(car.status_reason) < 255  # stored whole


@pytest.fixture
def two_of_hanas(client, new_cars):
    """Hana's second HW4 car, registered after Hugo's so that a round offers it first, and asking as little."""
    hana, _ = new_cars["hana"]
    vehicle, credential = vehicle_with_credential(hana.owner, name="hana's other car")
    OptInPolicy.objects.filter(vehicle=vehicle).update(min_price_mcents_per_ch=1000)
    assert signed_post(client, credential, "/api/v1/agent/heartbeat/", heartbeat(battery_pct=90)).status_code == 200
    return vehicle, credential


def test_a_replica_never_goes_to_another_car_of_the_owner_who_ran_the_slice(client, bid, new_cars, two_of_hanas):
    (_, hana_key), (hugo, hugo_key) = new_cars["hana"], new_cars["hugo"]
    other, other_key = two_of_hanas
    model = model_bytes_of(bid)
    only_cars(new_cars, "hana")
    Vehicle.objects.filter(pk=other.pk).update(status="paused")
    next_round(0)
    assert work_off(client, hana_key, model) > 0
    replicas = bid.units.filter(replica_of__isnull=False)
    assert replicas.exists() and not replicas.filter(assigned_vehicle__isnull=False).exists()

    # Only Hana's other car is free: the slices wait rather than be confirmed by their own owner.
    only_cars(new_cars)
    Vehicle.objects.filter(pk=other.pk).update(status="active")
    next_round(1)
    assert not replicas.filter(assigned_vehicle__isnull=False).exists()
    assert work_off(client, other_key, model) == 0

    # Hugo's car is free too: Hugo checks them, though Hana's other car asks less.
    only_cars(new_cars, "hugo")
    next_round(2)
    assert set(replicas.values_list("assigned_vehicle", flat=True)) == {hugo.pk}
    # The platform bought hugo's time to check the results: not a round the customer won.
    assert not selectors.bid_allocations_won(bid=bid).filter(vehicle=hugo).exists()
    assert bid.allocations.filter(vehicle=hugo, for_verification=True).exists()
    assert work_off(client, other_key, model) == 0
    assert work_off(client, hugo_key, model) == replicas.count()
    bid.refresh_from_db()
    assert bid.status == Bid.Status.COMPLETED
    assert set(replicas.values_list("done_by", flat=True)) == {hugo.pk}


def test_a_replica_made_while_the_owners_other_car_works_for_the_bid_goes_to_another_owners_car(
    bid, new_cars, two_of_hanas
):
    from marketplace.verdicts import replica_ensure
    from tests.billing import builders

    (hana, _), (hugo, _) = new_cars["hana"], new_cars["hugo"]
    other, _ = two_of_hanas
    primary = builders.validate(builders.sell(bid, hana, ch=1.0, price_mcents=3_000))
    builders.sell(bid, other, ch=1.0, price_mcents=2_000)  # ends first: it would be chosen
    hugos = builders.sell(bid, hugo, ch=1.0, price_mcents=3_000)
    Allocation.objects.filter(pk=hugos.pk).update(ends_at=timezone.now() + timedelta(hours=1))

    assert replica_ensure(primary=primary, group=[primary], now=timezone.now())

    replica = primary.replicas.get()
    assert (replica.assigned_vehicle_id, replica.allocation_id) == (hugo.pk, hugos.pk)


def test_a_replica_waits_when_only_the_owners_other_car_works_for_the_bid(bid, new_cars, two_of_hanas):
    from marketplace.verdicts import replica_ensure
    from tests.billing import builders

    hana, _ = new_cars["hana"]
    other, _ = two_of_hanas
    primary = builders.validate(builders.sell(bid, hana, ch=1.0, price_mcents=3_000))
    builders.sell(bid, other, ch=1.0, price_mcents=2_000)

    assert replica_ensure(primary=primary, group=[primary], now=timezone.now())

    assert primary.replicas.get().assigned_vehicle_id is None
