"""Fill a PostgreSQL database of its own with a marketplace at scale, for bench/pages.py.

    .venv/bin/python bench/seed_scale.py [--reset]

What it makes (the sizes of issue 8): 10,000 cars (one owner, `bench_owner`, has a fleet of 50; the rest belong to
1,999 owners of about five each) with their opt-in policies, a VehicleState row each, parking histories (61,750
stays), and their live state in Redis; 1,000 bids of 100 customers (the first of `bench_customer`'s is the measured
job: running, 200 work units, 60 rounds won); a day of auction rounds (1,440, four pool clearings each) with 9,050
allocations and 18,180 work units; 10,000 payouts, 20,000 audit events; and 1,000,000 ledger entries in about
192,000 balanced transactions (authorizations, captures that pay six cars each, earnings out of hold) over 90 days,
13,000 of them bench_owner's earnings. A few transactions go through the real posting code (billing/ledger.py) so
the accounts exist as the services make them; the volume is written with COPY, every transaction balanced, so the
database's own checks (billing migration 0003: append-only, balanced at commit) pass.

Where: DATABASE `idlefleet_bench_pages` on BENCH_PG (default postgres://postgres@127.0.0.1:5432), created and
migrated here; Redis BENCH_REDIS_URL (default redis://127.0.0.1:6379/15). One to two minutes. Run it
once: a second run sees the data, applies new migrations and refreshes the cars' live state in Redis (which
bench/pages.py also does).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH_PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432").rstrip("/")
BENCH_DB = os.environ.get("BENCH_DB", "idlefleet_bench_pages")
os.environ["DATABASE_URL"] = f"{BENCH_PG}/{BENCH_DB}"
os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ["DEBUG"] = "false"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402

from fleet.agent.precisions import FP8, FP16, FP32, INT8  # noqa: E402

OWNERS = 2_000
CARS = 10_000
FLEET = 50  # bench_owner's cars
CUSTOMERS = 100
BIDS = 1_000
ROUNDS = 1_440
ENTRIES = 1_000_000
PASSWORD = "bench-pages"  # noqa: S105 - a throwaway database


def _database_create(reset: bool) -> bool:
    """Create the database (drop it first with reset); True when it was created now."""
    import psycopg

    with psycopg.connect(f"{BENCH_PG}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,)).fetchone()
        if exists and reset:
            conn.execute(f'DROP DATABASE "{BENCH_DB}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
            return True
    return False


def live_states_write(now=None) -> int:
    """Every car's last heartbeat in Redis, as if received in the last 20 s (so most cars are online): 80 % parked,
    most on WiFi, some plugged in, batteries 20–95 %. Deterministic per car; returns how many."""
    from django.utils import timezone

    from core.redis import client
    from fleet import state_store
    from fleet.models import Vehicle

    now = now or timezone.now()
    pipe = client().pipeline(transaction=False)
    count = 0
    for vehicle_id in Vehicle.objects.values_list("pk", flat=True).iterator(chunk_size=5000):
        rng = random.Random(vehicle_id)  # noqa: S311 - made-up data
        received = now - timedelta(seconds=rng.uniform(0, 20))
        parked = rng.random() < 0.8
        state = {
            "received_at": received.isoformat(),
            "observed_at": received.isoformat(),
            "clock_rate": 1.0,
            "parked": parked,
            "plugged_in": parked and rng.random() < 0.4,
            "charge_power_w": 7000.0 if parked and rng.random() < 0.3 else 0.0,
            "battery_pct": rng.uniform(20, 95),
            "battery_capacity_kwh": 75.0,
            "network": "wifi" if parked and rng.random() < 0.85 else "cellular",
            "bandwidth_down_mbps": rng.uniform(20, 300),
            "bandwidth_up_mbps": rng.uniform(5, 50),
            "latency_ms": rng.uniform(5, 60),
            "runtime_version": "1.20.1",
            "models_cached": [],
            "computing": parked and rng.random() < 0.2,
            "compute_power_w": 90.0,
            "energy_used_today_wh": rng.uniform(0, 3000),
        }
        pipe.set(state_store._key(vehicle_id), json.dumps(state))
        pipe.zadd(state_store.SEEN_KEY, {str(vehicle_id): received.timestamp()})
        count += 1
        if count % 2000 == 0:
            pipe.execute()
    pipe.execute()
    return count


def _users():
    from accounts.models import Role, User

    hashed = User(username="x")
    hashed.set_password(PASSWORD)
    rows = [User(username="bench_staff", role=Role.STAFF, is_staff=True, is_superuser=True)]
    rows += [User(username="bench_owner", role=Role.OWNER)]
    rows += [User(username=f"owner{n:04d}", role=Role.OWNER) for n in range(OWNERS - 1)]
    rows += [User(username="bench_customer", role=Role.CUSTOMER)]
    rows += [User(username=f"customer{n:03d}", role=Role.CUSTOMER) for n in range(CUSTOMERS - 1)]
    for user in rows:
        user.password = hashed.password
        user.email = f"{user.username}@example.test"
    User.objects.bulk_create(rows, batch_size=2000)
    owners = list(User.objects.filter(role=Role.OWNER).order_by("pk"))
    customers = list(User.objects.filter(role=Role.CUSTOMER).order_by("pk"))
    return owners, customers


def _fleet(owners, now):
    from fleet.models import HardwareProfile, OptInPolicy, ParkingSession, Vehicle, VehicleState

    hardware = list(HardwareProfile.objects.filter(name__in=("HW3", "HW4")).order_by("name"))
    zones = ["UTC", "Europe/Berlin", "America/New_York", "America/Los_Angeles", "Asia/Tokyo"]
    owner_of = [owners[0]] * FLEET + [owners[1 + n % (len(owners) - 1)] for n in range(CARS - FLEET)]
    rng = random.Random(1)  # noqa: S311 - made-up data
    vehicles = [
        Vehicle(
            owner=owner, display_name=f"Car {n:05d}", hardware=hardware[n % 2], time_zone=zones[n % len(zones)],
            region="US-CA", energy_price_cents_per_kwh=16, valid_streak=rng.randint(0, 30),
            results_valid=rng.randint(0, 300),
            status=Vehicle.Status.SUSPENDED if n % 200 == 7 else Vehicle.Status.ACTIVE,
        )
        for n, owner in enumerate(owner_of)
    ]  # fmt: skip
    Vehicle.objects.bulk_create(vehicles, batch_size=2000)
    vehicles = list(Vehicle.objects.order_by("pk"))
    OptInPolicy.objects.bulk_create(
        [
            OptInPolicy(vehicle=v, battery_floor_pct=rng.choice((30, 40, 50, 60)), plugged_in_only=rng.random() < 0.2)
            for v in vehicles
        ],
        batch_size=2000,
    )
    VehicleState.objects.bulk_create(
        [
            VehicleState(
                vehicle=v, received_at=now - timedelta(minutes=1), observed_at=now - timedelta(minutes=1),
                parked=True, plugged_in=False, battery_pct=70, network="wifi",
            )
            for v in vehicles
        ],
        batch_size=2000,
    )  # fmt: skip
    # Parking history: 40 past stays for each of bench_owner's cars, 5 for the others, and an open stay if parked.
    sessions = []
    for n, vehicle in enumerate(vehicles):
        start = now - timedelta(days=30)
        for _ in range(40 if n < FLEET else 5):
            arrived = start + timedelta(hours=rng.uniform(2, 14))
            departed = arrived + timedelta(hours=rng.uniform(0.5, 10))
            sessions.append(ParkingSession(vehicle=vehicle, arrived_at=arrived, departed_at=departed))
            start = departed
        sessions.append(ParkingSession(vehicle=vehicle, arrived_at=now - timedelta(hours=rng.uniform(0.2, 8))))
    ParkingSession.objects.bulk_create(sessions, batch_size=5000)
    return vehicles


def _market(customers, vehicles, now):
    from marketplace.models import (
        Allocation,
        Bid,
        Dataset,
        InferenceModel,
        PoolClearing,
        PrecisionVariant,
        Round,
        WorkUnit,
    )

    rng = random.Random(2)  # noqa: S311 - made-up data
    model = InferenceModel.objects.create(
        is_catalogue=True, name="MiniLM embeddings", kind="text", onnx_sha256="a" * 64, onnx_size=90_000_000,
        status="ready",
    )  # fmt: skip
    dataset = Dataset.objects.create(
        inference_model=model, name="documents", sha256="b" * 64, size_bytes=10_000_000, format="jsonl",
        item_count=20_000, status="ready",
    )  # fmt: skip
    variants = {
        p: PrecisionVariant.objects.create(inference_model=model, precision=p, status="ready", ch_per_item=0.0005)
        for p in ("int8", "fp16", "fp32")
    }
    rounds = Round.objects.bulk_create(
        [
            Round(slot=now - timedelta(minutes=ROUNDS - n), finished_at=now - timedelta(minutes=ROUNDS - n),
                  cars_offered=8000, bids_considered=300)
            for n in range(ROUNDS)
        ],
        batch_size=2000,
    )  # fmt: skip
    rounds = list(Round.objects.order_by("slot"))
    PoolClearing.objects.bulk_create(
        [
            PoolClearing(round=r, pool=pool, clearing_price_mcents=rng.randint(1500, 4000), reserve_mcents=1000,
                         volume_ch=rng.uniform(10, 200), supply_ch=rng.uniform(200, 2000),
                         index_mcents=rng.uniform(1500, 4000))
            for r in rounds for pool in (INT8, FP16, FP32, FP8)
        ],
        batch_size=5000,
    )  # fmt: skip
    statuses = ["completed"] * 6 + ["running"] * 2 + ["waiting", "expired"]
    bids = []
    for n in range(BIDS):
        pool = ("int8", "int8", "fp16", "fp32")[n % 4]
        status = "running" if n == 0 else statuses[n % len(statuses)]
        bids.append(
            Bid(
                customer=customers[n % len(customers)], inference_model=model, dataset=dataset, variant=variants[pool],
                precision_requested=pool, pool=pool, max_price_mcents_per_ch=5000, budget_cents=50_000,
                deadline=now + timedelta(hours=6), items=20_000, ch_total=10.0, ch_allocated=rng.uniform(0, 10),
                items_unitised=20_000 if status != "waiting" else 0, status=status,
            )
        )  # fmt: skip
    Bid.objects.bulk_create(bids, batch_size=1000)
    bids = list(Bid.objects.order_by("pk"))  # bids[0] is bench_customer's running job (customers[0])
    allocations = []
    for n, bid in enumerate(bids):
        if bid.status == "waiting":
            continue
        won = 60 if n == 0 else 10
        for k in range(won):
            r = rounds[(n * 7 + k * 13) % ROUNDS]
            allocations.append(
                Allocation(round=r, bid=bid, vehicle=vehicles[(n * 31 + k) % CARS], pool=bid.pool, ch=0.2,
                           price_mcents_per_ch=2500, ends_at=r.slot + timedelta(minutes=30))
            )  # fmt: skip
    Allocation.objects.bulk_create(allocations, batch_size=5000)
    by_bid: dict[int, list] = {}
    for allocation in Allocation.objects.order_by("pk").only("pk", "bid_id", "vehicle_id"):
        by_bid.setdefault(allocation.bid_id, []).append(allocation)
    units = []
    for n, bid in enumerate(bids):
        mine = by_bid.get(bid.pk)
        if not mine:
            continue
        count = 200 if n == 0 else 20
        per = bid.items // count
        for i in range(count):
            allocation = mine[i % len(mine)]
            done = bid.status == "completed" or (bid.status == "running" and i < count // 2)
            units.append(
                WorkUnit(
                    bid=bid, variant_id=bid.variant_id, index=i, item_start=i * per, item_end=(i + 1) * per, ch=0.05,
                    status="done" if done else "queued", allocation=allocation,
                    assigned_vehicle_id=allocation.vehicle_id, done_by_id=allocation.vehicle_id if done else None,
                    verification="valid" if done else "", canonical=done, output_sha256="c" * 64 if done else "",
                    completed_at=now if done else None,
                )
            )  # fmt: skip
    WorkUnit.objects.bulk_create(units, batch_size=5000)
    return bids


def _ledger(owners, customers, vehicles, bids, now):
    """Real postings for the structure, then COPY for the volume: every transaction sums to zero."""
    from django.db import connection, transaction

    from billing import ledger
    from billing.models import AccountKind, LedgerAccount, LedgerTransaction

    # The services' own postings make every account the volume below uses.
    with transaction.atomic():
        for customer in customers:
            ledger.post(kind="authorize", key=f"bench:auth:{customer.pk}", legs=[
                ledger.Leg(AccountKind.STRIPE_CLEARING, 100),
                ledger.Leg(AccountKind.CUSTOMER_HELD, -100, customer.pk),
            ])  # fmt: skip
            ledger.post(kind="capture", key=f"bench:capture:{customer.pk}", legs=[
                ledger.Leg(AccountKind.CUSTOMER_HELD, 100, customer.pk),
                ledger.Leg(AccountKind.CUSTOMER_SPEND, 100, customer.pk),
                ledger.Leg(AccountKind.STRIPE_CLEARING, -100),
                ledger.Leg(AccountKind.OWNER_PENDING, -85, owners[0].pk, vehicle_id=vehicles[0].pk, ch=0.1),
                ledger.Leg(AccountKind.PLATFORM_FEE, -15),
            ])  # fmt: skip
        for kind in (AccountKind.OWNER_AVAILABLE, AccountKind.OWNER_PAID_OUT, AccountKind.OWNER_PENDING):
            for owner in owners:
                ledger.account_get(kind=kind, user_id=owner.pk)
    account = {(a.kind, a.user_id): a.pk for a in LedgerAccount.objects.all()}
    cars_of: dict[int, list[int]] = {}
    for vehicle in vehicles:
        cars_of.setdefault(vehicle.owner_id, []).append(vehicle.pk)
    owner_ids = [o.pk for o in owners]
    start_txn = (LedgerTransaction.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
    rng = random.Random(3)  # noqa: S311 - made-up data
    txn_rows, entry_rows = [], []
    txn_id = start_txn
    span = timedelta(days=90).total_seconds()

    def txn(kind, bid_id, created):
        nonlocal txn_id
        txn_rows.append((txn_id, kind, f"bench:volume:{txn_id}", "", bid_id, "", created))
        txn_id += 1
        return txn_id - 1

    def entry(t, kind, user_id, cents, created, vehicle_id=None, ch=None, wh=None):
        entry_rows.append((t, account[(kind, user_id)], cents, "usd", vehicle_id, ch, wh, created))

    while len(entry_rows) < ENTRIES:
        created = now - timedelta(seconds=rng.uniform(0, span))
        bid = bids[rng.randrange(len(bids))]
        customer = bid.customer_id
        amount = rng.randint(600, 5000) * 10**9  # n¢: $6 to $50
        t = txn("authorize", bid.pk, created)
        entry(t, AccountKind.STRIPE_CLEARING, None, amount, created)
        entry(t, AccountKind.CUSTOMER_HELD, customer, -amount, created)
        # A capture paying six cars (one of bench_owner's fleet in about one capture of six).
        created = created + timedelta(minutes=30)
        fee = amount * 15 // 100
        shares = [(amount - fee) // 6] * 5
        shares.append(amount - fee - sum(shares))
        t = txn("capture", bid.pk, created)
        entry(t, AccountKind.CUSTOMER_HELD, customer, amount, created)
        entry(t, AccountKind.CUSTOMER_SPEND, customer, amount, created)
        entry(t, AccountKind.STRIPE_CLEARING, None, -amount, created)
        entry(t, AccountKind.PLATFORM_FEE, None, -fee, created)
        for k, share in enumerate(shares):
            owner_id = owner_ids[0] if k == 0 and rng.random() < 0.17 else owner_ids[1 + rng.randrange(OWNERS - 1)]
            vehicle_id = rng.choice(cars_of[owner_id])
            entry(t, AccountKind.OWNER_PENDING, owner_id, -share, created, vehicle_id, share / 2500, share * 3.0)
        if rng.random() < 0.5:
            created = created + timedelta(hours=72)
            t = txn("earnings_release", None, created)
            entry(t, AccountKind.OWNER_PENDING, owner_id, share, created)
            entry(t, AccountKind.OWNER_AVAILABLE, owner_id, -share, created)

    with transaction.atomic(), connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor: COPY
        with raw.copy(
            "COPY billing_ledgertransaction (id, kind, idempotency_key, description, bid_id, stripe_object_id, "
            "created_at) FROM STDIN"
        ) as copy:
            for row in txn_rows:
                copy.write_row(row)
        with raw.copy(
            "COPY billing_ledgerentry (transaction_id, account_id, amount_nc, currency, vehicle_id, ch, energy_wh, "
            "created_at) FROM STDIN"
        ) as copy:
            for row in entry_rows:
                copy.write_row(row)
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('billing_ledgertransaction', 'id'), "
            "(SELECT MAX(id) FROM billing_ledgertransaction))"
        )
    # The balance trigger (deferred) checked each transaction at that commit.
    return len(txn_rows), len(entry_rows)


def _audit_and_payouts(owners, now):
    from accounts.models import AuditEvent
    from billing.models import Payout

    Payout.objects.bulk_create(
        [
            Payout(owner=owner, amount_cents=1500 + n, period=(now - timedelta(weeks=w)).date(), status="paid",
                   idempotency_key=f"bench:payout:{owner.pk}:{w}", destination="acct_bench", paid_at=now)
            for n, owner in enumerate(owners) for w in range(5)
        ],
        batch_size=5000,
    )  # fmt: skip
    AuditEvent.objects.bulk_create(
        [
            AuditEvent(actor_username="bench_staff", action="vehicle.suspend", target_type="fleet.vehicle",
                       target_id=str(n), target_repr=f"Car {n:05d}")
            for n in range(20_000)
        ],
        batch_size=5000,
    )  # fmt: skip


def seed(reset: bool = False) -> None:
    created = _database_create(reset)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from accounts.models import User

    call_command("migrate", verbosity=0)
    if not created and User.objects.filter(username="bench_owner").exists():
        print(f"{BENCH_DB} is seeded already (use --reset to start again); live states refreshed:", live_states_write())
        return
    now = timezone.now()
    began = time.perf_counter()
    step = time.perf_counter()

    def done(what):
        nonlocal step
        print(f"  {what}: {time.perf_counter() - step:.1f} s", flush=True)
        step = time.perf_counter()

    owners, customers = _users()
    done(f"{len(owners)} owners, {len(customers)} customers")
    vehicles = _fleet(owners, now)
    done(f"{len(vehicles)} cars, policies, states, parking sessions")
    print(f"  live states in Redis: {live_states_write(now)}")
    bids = _market(customers, vehicles, now)
    done(f"{len(bids)} bids, {ROUNDS} rounds, allocations, work units")
    transactions, entries = _ledger(owners, customers, vehicles, bids, now)
    done(f"{entries} ledger entries in {transactions} transactions")
    _audit_and_payouts(owners, now)
    done("payouts and audit events")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    done("VACUUM ANALYZE")
    print(f"seeded {BENCH_DB} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reset", action="store_true", help="drop the bench database and seed it again")
    seed(reset=parser.parse_args().reset)
