"""The number of SQL queries of each page people use most, pinned: it must not grow with the data (no N+1).

Each test requests the page with a little data (2 of everything) and again with ten times as much (20), under the
same `django_assert_num_queries`: a page that queried per row would need more queries the second time. The timings
of the same pages at full scale (10,000 cars, 1,000,000 ledger entries) are measured by bench/pages.py, never here.
"""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone

from tests.factories import CustomerFactory, OwnerFactory, hardware

pytestmark = pytest.mark.django_db

SMALL, LARGE = 2, 20
_serial = itertools.count()


def _live_state(vehicle, *, parked=True, network="wifi"):
    from fleet import state_store

    now = timezone.now()
    state = {
        "received_at": now.isoformat(), "observed_at": now.isoformat(), "clock_rate": 1.0, "parked": parked,
        "plugged_in": False, "charge_power_w": 0.0, "battery_pct": 80.0, "battery_capacity_kwh": 75.0,
        "network": network, "bandwidth_down_mbps": 100.0, "bandwidth_up_mbps": 20.0, "latency_ms": 20.0,
        "runtime_version": "1.20.1", "models_cached": [], "computing": False, "compute_power_w": 0.0,
        "energy_used_today_wh": 0.0,
    }  # fmt: skip
    state_store.state_swap(vehicle_id=vehicle.pk, state=json.loads(json.dumps(state)), received_ts=now.timestamp())


def _car(owner, *, live=True):
    """A car with its policy, a finished and an open parking stay, a database snapshot and (live) its heartbeat."""
    from fleet.models import OptInPolicy, ParkingSession, Vehicle, VehicleState

    n = next(_serial)
    now = timezone.now()
    vehicle = Vehicle.objects.create(
        owner=owner, display_name=f"Car {n}", hardware=hardware("HW4"), energy_price_cents_per_kwh=16
    )
    OptInPolicy.objects.create(vehicle=vehicle)
    ParkingSession.objects.create(
        vehicle=vehicle, arrived_at=now - timedelta(hours=9), departed_at=now - timedelta(hours=2)
    )
    ParkingSession.objects.create(vehicle=vehicle, arrived_at=now - timedelta(hours=1))
    VehicleState.objects.create(
        vehicle=vehicle, received_at=now, observed_at=now, parked=True, plugged_in=False, battery_pct=80, network="wifi"
    )
    if live:
        _live_state(vehicle, network="wifi" if n % 2 else "cellular")
    return vehicle


def _model(customer):
    from marketplace.models import Dataset, InferenceModel, PrecisionVariant

    n = next(_serial)
    model = InferenceModel.objects.create(
        owner=customer, name=f"model {n}", onnx_sha256="a" * 64, onnx_size=1000, status="ready"
    )
    dataset = Dataset.objects.create(
        owner=customer, inference_model=model, name=f"data {n}", sha256="b" * 64, size_bytes=100, format="npy",
        item_count=1000, status="ready",
    )  # fmt: skip
    variant = PrecisionVariant.objects.create(
        inference_model=model, precision="int8", status="ready", ch_per_item=0.001
    )
    return model, dataset, variant


def _bid(customer, status="running"):
    from marketplace.models import Bid

    model, dataset, variant = _model(customer)
    return Bid.objects.create(
        customer=customer, inference_model=model, dataset=dataset, variant=variant, precision_requested="int8",
        pool="int8", max_price_mcents_per_ch=5000, budget_cents=10_000, deadline=timezone.now() + timedelta(hours=6),
        items=1000, ch_total=1.0, status=status,
    )  # fmt: skip


def _round():
    from marketplace.models import PoolClearing, Round

    slot = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=next(_serial) + 1)
    round_ = Round.objects.create(slot=slot, finished_at=slot + timedelta(seconds=2))
    for pool in ("int8", "fp16", "fp32", "fp8"):
        PoolClearing.objects.create(round=round_, pool=pool, clearing_price_mcents=2000, reserve_mcents=1000)
    return round_


def _won(bid, vehicle):
    """One round won by the bid on a car, and the work unit it paid for (done)."""
    from marketplace.models import Allocation, WorkUnit

    round_ = _round()
    allocation = Allocation.objects.create(
        round=round_, bid=bid, vehicle=vehicle, pool="int8", ch=0.1, price_mcents_per_ch=2000,
        ends_at=round_.slot + timedelta(minutes=30),
    )  # fmt: skip
    index = bid.units.count()
    return WorkUnit.objects.create(
        bid=bid, variant_id=bid.variant_id, index=index, item_start=index * 10, item_end=(index + 1) * 10, ch=0.01,
        status="done", allocation=allocation, assigned_vehicle=vehicle, done_by=vehicle, verification="valid",
        canonical=True,
    )  # fmt: skip


# --- The three pages of the product --------------------------------------------------------------------------------


# session, user, the owner's cars (with hardware and policy), their parking stays, their measured speeds
OWNER_DASHBOARD_QUERIES = 5


def test_the_owner_dashboard_queries_the_same_for_2_or_20_cars(client, olivia, django_assert_num_queries):
    client.force_login(olivia)
    for size in (SMALL, LARGE):
        while olivia.vehicles.count() < size:
            _car(olivia)
        _car(OwnerFactory())  # someone else's car: not shown, not read
        with django_assert_num_queries(OWNER_DASHBOARD_QUERIES):
            page = client.get(reverse("fleet:dashboard"))
        assert len(page.context["live"]) == size
        with django_assert_num_queries(OWNER_DASHBOARD_QUERIES):
            assert client.get(reverse("fleet:fleet-live"), headers={"HX-Request": "true"}).status_code == 200


def test_a_car_without_a_live_heartbeat_costs_one_query_more_not_one_per_car(client, olivia, django_assert_num_queries):
    # Redis lost the states: the database snapshots are read instead, all in one query.
    client.force_login(olivia)
    for size in (SMALL, LARGE):
        while olivia.vehicles.count() < size:
            _car(olivia, live=False)
        with django_assert_num_queries(OWNER_DASHBOARD_QUERIES + 1):
            assert client.get(reverse("fleet:dashboard")).status_code == 200


# session, user, the bid (model, dataset, variant), its rounds won (round, car), its progress, its audits, its cost
JOB_PAGE_QUERIES = 7


def test_the_customers_job_page_queries_the_same_for_2_or_20_rounds_won(
    client, alice, olivia, django_assert_num_queries
):
    bid = _bid(alice)
    client.force_login(alice)
    url = reverse("marketplace:bid", args=[bid.pk])
    for size in (SMALL, LARGE):
        while bid.allocations.count() < size:
            _won(bid, _car(olivia))
        with django_assert_num_queries(JOB_PAGE_QUERIES):
            page = client.get(url)
        assert len(page.context["allocations"]) == size
        assert page.context["unit_count"] == size
        assert f"{size * 10} of 1000 items done in {size} work units" in page.content.decode()
        # The fragment htmx polls, with the rounds won: no session user's menu, no audits.
        with django_assert_num_queries(JOB_PAGE_QUERIES - 1):
            assert client.get(url, headers={"HX-Request": "true"}).status_code == 200


# My jobs: session, user, the count and the page of bids (model, dataset, variant; items done), their rounds won, their
# costs (authorizations, validated work), the models
MY_JOBS_QUERIES = 8
# The API's list: token or session, user, the bids, their rounds won, their costs
BID_LIST_API_QUERIES = 6


def test_my_jobs_and_the_bid_list_api_query_the_same_for_2_or_20_jobs(client, alice, olivia, django_assert_num_queries):
    from billing.models import PaymentAuthorization

    client.force_login(alice)
    car = _car(olivia)
    for size in (SMALL, LARGE):
        while alice.bids.count() < size:
            bid = _bid(alice)
            _won(bid, car)
            PaymentAuthorization.objects.create(
                bid=bid, customer=alice, amount_cents=bid.budget_cents, status="authorized",
                create_key=f"authorize:bid:{bid.pk}",
            )  # fmt: skip
        with django_assert_num_queries(MY_JOBS_QUERIES):
            page = client.get(reverse("marketplace:dashboard"))
        assert page.content.decode().count('aria-label="items done for bid') == size
        assert page.content.decode().count("$0.0002") == size  # 0.01 CH at $0.02 each, validated
        with django_assert_num_queries(BID_LIST_API_QUERIES):
            listed = client.get("/api/v1/bids/").json()
        rows = [(b["items_done"], b["charged_usd"], len(b["allocations"])) for b in listed]
        assert rows == [(10, "0.0002", 1)] * size


def test_the_market_page_queries_the_same_for_2_or_20_rounds_and_cars(client, alice, olivia, django_assert_num_queries):
    from django.core.cache import cache

    from fleet.selectors import OVERVIEW_CACHE_KEY

    client.force_login(alice)
    for size in (SMALL, LARGE):
        while olivia.vehicles.count() < size:
            _car(olivia)
            _round()
        cache.delete(OVERVIEW_CACHE_KEY)
        # With the fleet's overview to compute (a cold cache): the cars, their stays, their measured speeds, and the
        # market's rounds.
        with django_assert_num_queries(MARKET_QUERIES_COLD):
            page = client.get(reverse("market"))
        assert page.context["overview"].vehicles == size
        assert len(page.context["history"]["labels"]) == size
        # And as nearly every request finds it: the overview comes from the cache.
        with django_assert_num_queries(MARKET_QUERIES_COLD - 3):
            assert client.get(reverse("market")).status_code == 200


# ... and the pricing policy in force, whose auction interval the page states ("every 30 seconds"), and the market
# regions of the last day (the page's region picker)
MARKET_QUERIES_COLD = 11


def test_the_fleet_overview_is_computed_once_per_interval_not_per_view(client, staff, olivia, monkeypatch):
    import time

    from fleet import selectors

    _car(olivia)
    first = selectors.fleet_overview_cached()
    _car(olivia)
    assert selectors.fleet_overview_cached() == first  # still fresh: the second car shows in the next interval
    client.force_login(staff)
    assert client.get(reverse("fleet:staff-fleet")).context["overview"].vehicles == 1

    later = time.time() + selectors.OVERVIEW_FRESH_S + 1
    monkeypatch.setattr(selectors, "time", SimpleNamespace(time=lambda: later))  # the cached copy is stale now
    assert selectors.fleet_overview_cached().vehicles == 2


def test_beat_refreshes_the_overview_so_pages_show_new_cars_without_computing_it(client, staff, olivia):
    from fleet import selectors, tasks

    _car(olivia)
    selectors.fleet_overview_cached()
    _car(olivia)
    tasks.fleet_overview_refresh()  # what beat runs every OVERVIEW_FRESH_S
    client.force_login(staff)
    page = client.get(reverse("fleet:staff-fleet"))
    assert page.context["overview"].vehicles == 2


# --- The admin's lists ---------------------------------------------------------------------------------------------


def _everything(staff) -> None:
    """One more row of each thing the admin lists, each tied to the others as the services tie them."""
    from knox.models import AuthToken

    from accounts.audit import audit_record
    from accounts.models import IdempotentRequest
    from billing import ledger
    from billing.models import (
        AccountKind,
        BalanceRefund,
        BillingProfile,
        ConnectAccount,
        PaymentAuthorization,
        Payout,
        Refund,
        StripeEvent,
        TopUp,
    )
    from fleet.services import throughput_record
    from marketplace.models import ResultAudit, ResultFault, SelfTest, VariantAccuracy
    from notifications.models import BidEvent, WebhookDelivery, WebhookEndpoint
    from ops.models import PlatformHeartbeat

    n = next(_serial)
    owner, customer = OwnerFactory(), CustomerFactory()
    vehicle = _car(owner)
    bid = _bid(customer, status="completed")
    unit = _won(bid, vehicle)
    ResultFault.objects.create(vehicle=vehicle, unit=unit, kind="outvoted", created_at=timezone.now())
    ResultAudit.objects.create(bid=bid, vehicle=vehicle, evidence="outvoted", opened_at=timezone.now(),
                               units=[unit.pk], items_checked=unit.items)  # fmt: skip
    throughput_record(vehicle=vehicle, workload=f"{n:064x}", precision="int8", ch_per_item=1e-8, items=10,
                      seconds=0.1, energy_wh=0.01, at=timezone.now(), first=True)  # fmt: skip
    SelfTest.objects.create(
        vehicle=vehicle, variant=bid.variant, dataset=bid.dataset, items=[0, 1], lease_id=f"lease-{n}",
        leased_at=timezone.now(), lease_expires_at=timezone.now(), status="passed", compute_class="x86_64-avx2",
    )  # fmt: skip
    VariantAccuracy.objects.create(variant=bid.variant, compute_class=f"class-{n}", passes=True,
                                   measured_at=timezone.now())  # fmt: skip
    authorization = PaymentAuthorization.objects.create(
        bid=bid, customer=customer, amount_cents=1000, status="settled", create_key=f"create-{n}", captured_cents=100
    )
    Refund.objects.create(authorization=authorization, amount_cents=10, idempotency_key=f"refund-{n}", created_by=staff)
    ledger.post(kind="capture", key=f"capture-{n}", bid_id=bid.pk, legs=[
        ledger.Leg(AccountKind.STRIPE_CLEARING, -100),
        ledger.Leg(AccountKind.CUSTOMER_SPEND, 100, customer.pk),
        ledger.Leg(AccountKind.OWNER_PENDING, -85, owner.pk, vehicle_id=vehicle.pk, ch=0.1),
        ledger.Leg(AccountKind.PLATFORM_FEE, 85),
    ])  # fmt: skip
    payout = Payout.objects.create(
        owner=owner, amount_cents=85, period=timezone.localdate() - timedelta(days=n), idempotency_key=f"payout-{n}",
        destination="acct_x", status="paid",
    )  # fmt: skip
    ledger.post(kind="payout", key=f"payout-{n}", payout_id=payout.pk, legs=[
        ledger.Leg(AccountKind.OWNER_AVAILABLE, 85, owner.pk), ledger.Leg(AccountKind.OWNER_PAID_OUT, -85, owner.pk),
    ])  # fmt: skip
    topup = TopUp.objects.create(customer=customer, amount_cents=1000, idempotency_key=f"topup-{n}", status="succeeded")
    BalanceRefund.objects.create(topup=topup, customer=customer, amount_cents=5, idempotency_key=f"balance-refund-{n}")
    BillingProfile.objects.create(user=customer, stripe_customer_id=f"cus_{n}")
    ConnectAccount.objects.create(user=owner, stripe_account_id=f"acct_{n}", create_key=f"connect-{n}")
    StripeEvent.objects.create(event_id=f"evt_{n}", type="charge.refunded", payload={})
    PlatformHeartbeat.objects.create(worker=f"worker{n}@host", last_seen_at=timezone.now())
    AuthToken.objects.create(user=customer)
    IdempotentRequest.objects.create(user=customer, key=f"key-{n}", method="POST", path="/api/v1/bids/",
                                     fingerprint="0" * 64, status_code=201, response={"id": n})  # fmt: skip
    audit_record(actor=staff, action="vehicle.suspend", target=vehicle)
    endpoint = WebhookEndpoint.objects.create(customer=customer, url=f"https://example.com/{n}", secret="whsec_x")
    event = BidEvent.objects.create(event_id=f"evt_bid_{n}", bid=bid, type="bid.completed", payload={})
    WebhookDelivery.objects.create(endpoint=endpoint, event_id=event.event_id, event_type=event.type, bid=bid,
                                   payload={})  # fmt: skip


# Queries of each admin list: the session and user, the list's count and page, and its filters' choices (on a big
# table, the count is first asked of PostgreSQL's estimate: one query more here, where the tables are small). The
# same with 2 or 20 rows of everything.
ADMIN_QUERIES = {
    "accounts.auditevent": 8,
    "accounts.idempotentrequest": 7,
    "accounts.user": 5,
    "auth.group": 5,
    "billing.balancerefund": 4,
    "billing.billingprofile": 4,
    "billing.connectaccount": 4,
    "billing.ledgerentry": 6,
    "billing.ledgertransaction": 5,
    "billing.paymentauthorization": 5,
    "billing.payout": 6,
    "billing.payoutpolicy": 6,
    "billing.refund": 4,
    "billing.stripeevent": 6,
    "billing.topup": 4,
    "fleet.fleetpolicy": 6,
    "fleet.hardwareprofile": 6,
    "fleet.parkingsession": 5,
    "fleet.vehicle": 9,
    "fleet.vehiclestate": 6,
    "fleet.vehiclethroughput": 6,
    "fleet.vehicleworkday": 5,
    "knox.authtoken": 5,
    "marketplace.bid": 7,  # and the region filter's choices: the market regions and the active cars' (2 queries)
    "marketplace.dataset": 5,
    "marketplace.inferencemodel": 5,
    "marketplace.precisionvariant": 5,
    "marketplace.pricingpolicy": 6,
    "marketplace.resultaudit": 4,
    "marketplace.resultfault": 5,
    "marketplace.round": 7,  # and the region filter's choices, as for bids
    "marketplace.roundsale": 5,
    "marketplace.selftest": 6,
    "marketplace.variantaccuracy": 5,
    "marketplace.workunit": 5,
    "notifications.bidevent": 5,
    "notifications.webhookdelivery": 5,
    "notifications.webhookendpoint": 5,
    "ops.platformheartbeat": 5,
}


def _admin_lists():
    return sorted(f"{model._meta.app_label}.{model._meta.model_name}" for model in admin.site._registry)


def test_every_admin_list_has_its_query_count_pinned():
    assert sorted(ADMIN_QUERIES) == _admin_lists()


def test_the_admin_lists_query_the_same_for_2_or_20_rows(client, staff, django_assert_num_queries):
    from billing.models import StripeEvent

    client.force_login(staff)
    for size in (SMALL, LARGE):
        while StripeEvent.objects.count() < size:  # one of each thing per call
            _everything(staff)
        for name, queries in ADMIN_QUERIES.items():
            app_label, model_name = name.split(".")
            with django_assert_num_queries(queries - _no_estimate(app_label, model_name)):
                page = client.get(reverse(f"admin:{app_label}_{model_name}_changelist"))
            assert page.status_code == 200, name


def _no_estimate(app_label: str, model_name: str) -> int:
    """1 where a big table's list would ask PostgreSQL for its estimate first and the database is another one."""
    from django.apps import apps
    from django.db import connection

    from core.admin import EstimatedCountPaginator

    model_admin = admin.site._registry[apps.get_model(app_label, model_name)]
    return int(issubclass(model_admin.paginator, EstimatedCountPaginator) and connection.vendor != "postgresql")
