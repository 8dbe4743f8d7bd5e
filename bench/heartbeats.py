"""Heartbeat ingest: the real agent API behind gunicorn, driven by wrk from another process with signed heartbeats;
and what the adaptive heartbeat rate saves the web tier per car-minute.

    .venv/bin/python bench/heartbeats.py [--cars 10000] [--workers 1,2,3,4] [--requests 15000] [--connections 4]
                                         [--worker-class gthread] [--threads 4] [--mix-rounds 3] [--profile]

A quick run, a few minutes on a busy machine: --cars 2000 --requests 3000 --workers 2.

What it does, on this machine's PostgreSQL and Redis (nothing else is touched):

1. creates the database `idlefleet_bench_heartbeats` (dropped first if it exists), migrates it, and registers
   `--cars` cars of 100 owners with a credential each (Ed25519 keys, as `vehicle_register` makes them, in bulk);
   Redis db `--redis-db` (11) is flushed before and after;
2. signs heartbeats with the agent's own code (`fleet.agent.signing.Credential.sign`, the body as the agent's
   client serializes it): every request has its own nonce and a current timestamp, and the cars take turns, so each
   car sends one heartbeat per pass over the fleet, the way 10,000 cars every 15 s would look to the server;
3. for each worker count, starts gunicorn (`config/gunicorn.conf.py`, `config.settings.production`, plain HTTP on
   127.0.0.1) and runs wrk (`bench/heartbeats.lua`) twice: the baseline, `GET /healthz/` (Django's whole stack, a
   database query and Redis reads: about the cheapest request the site serves) for `--baseline-seconds`, then
   `--requests` signed heartbeats, each sent once (a second time would be a replay); on the first worker count's
   server, between the two, the per-car-minute measurements below;
4. reports throughput, latency (p50, p99), errors (any status but 2xx, and socket errors, and heartbeats never
   answered), the CPU the gunicorn workers spent per request (from /proc: robust to other load on the machine;
   cores / that figure is the machine's capacity for the app alone), the CPU of their PostgreSQL backends, of the
   Redis server (an upper bound: others may use it) and of wrk (cores / the sum is the capacity of one machine
   running everything, as here), and what PostgreSQL wrote (pg_stat_database) per heartbeat.

The first heartbeat of a car after registration opens its parking session (a write): a warm-up pass sends one
heartbeat per car first, and its writes are reported apart from the steady state. Then what each credential keeps in
Redis is spread over its lifetime, as in a fleet that has been running (credentials_age), so the steady state includes
the credential reads (one per car per 5 minutes, when its copy expires) and the last-use notes (one per car per 5
minutes, fleet.authentication.LAST_USED_RESOLUTION; the heartbeat snapshot task writes them to the database in bulk,
so no heartbeat does).

Per car-minute (the report's `per_car_minute`): the platform asks each car, in its heartbeat's answer
(`next_heartbeat_s`), to heartbeat often while it computes, holds work or is about to get some, and rarely while it
holds none and expects none (fleet.offers.heartbeat_interval_car_s); the agent asks for work only with a heartbeat.
Before, every car sent a heartbeat and a lease poll every 15 s (fleet.agent.protocol.HEARTBEAT_SECONDS), but a car
running a unit, which polls for none. For a fleet a third of which runs a unit (every third car), on the first worker
count's server:
- a few heartbeats of idle cars (computing false) and of working cars (computing, drawing power) and lease polls of
  idle cars are sent one at a time with urllib, through the same signing code: their answers are reported, the
  heartbeats' `next_heartbeat_s` give the rates after the change (a car answered N seconds sends 60/N heartbeats a
  minute: the mean over the answers), and every lease poll must be answered 204 (the cars hold no work);
- wrk then sends `--requests` of each of the three kinds (POST, signed, `bench/heartbeats.lua` given the path), in
  `--mix-rounds` turns taking the kinds in turn, after a few of each unmeasured, and the workers' CPU per request of
  each kind is measured as above;
- web CPU per car-minute = the requests of each kind a car sends a minute, averaged over the fleet × that kind's CPU
  per request, summed: before (idle cars 4 heartbeats and 4 lease polls, working cars 4 heartbeats) and after (working
  cars 60/answer heartbeats, idle cars 60/answer heartbeats and as many lease polls), with their ratio, the requests per
  car-minute, the same sums over all the processes (PostgreSQL, Redis and wrk included) and the web cores that 10,000
  cars keep busy. The ratio is the figure that matters: other load on the machine moves the absolute numbers.

`--profile` runs cProfile over signed heartbeats through Django's WSGI handler in this process instead (no server).

Results: bench/results/heartbeats.json. Tests never assert timings.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgres://postgres@127.0.0.1:5432")
DB_NAME = "idlefleet_bench_heartbeats"
HEARTBEAT_PATH = "/api/v1/agent/heartbeat/"
LEASE_PATH = "/api/v1/agent/lease/"
LEASE_BODY = b"{}"  # a lease poll's body, as the agent's client serializes {}
BASELINE_PATH = "/healthz/"
LUA = ROOT / "bench" / "heartbeats.lua"


def configure(redis_url: str) -> None:
    """The environment of a production deployment, on this machine: the benchmark's own database and Redis db."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings.production",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"{PG_SERVER}/{DB_NAME}",
        REDIS_URL=redis_url,
        # Plain HTTP on 127.0.0.1, no proxy in front: behind a TLS proxy these stay at their production defaults.
        SECURE_SSL_REDIRECT="false",
        NUM_PROXIES="0",
        LOG_LEVEL="WARNING",
    )


def database_create() -> None:
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def database_writes() -> dict[str, int]:
    """PostgreSQL's counters for the bench database (read from a fresh connection, after the server has stopped, so
    every backend has flushed its statistics)."""
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = %s",
            [DB_NAME],
        ).fetchone()
    return dict(zip(("xact_commit", "tup_inserted", "tup_updated", "tup_deleted"), row, strict=True))


def credentials_age() -> None:
    """Spread what each credential keeps in Redis over its lifetime, as in a fleet that has been sending heartbeats for
    a while (the warm-up made all of it at the same moment): the last-use stamp's key (the credential's last use is
    written to the database when it expires, once per LAST_USED_RESOLUTION) and the credential's copy (read from the
    database again when it expires, once per CREDENTIAL_COPY_MAX_AGE_S). The steady state measured includes both."""
    import time

    from fleet import state_store
    from fleet.authentication import CREDENTIAL_COPY_MAX_AGE_S, LAST_USED_RESOLUTION
    from fleet.models import VehicleCredential

    rng = random.Random(11)  # noqa: S311 (benchmark timing, not secrets)
    redis = state_store.client()
    key_ids = list(VehicleCredential.objects.values_list("key_id", flat=True))
    copies = redis.mget([state_store._credential_key(k) for k in key_ids])
    pipe = redis.pipeline(transaction=False)
    for key_id, raw in zip(key_ids, copies, strict=True):
        pipe.expire(state_store._stamp_key(key_id), rng.randint(1, int(LAST_USED_RESOLUTION.total_seconds())))
        if raw:
            left = rng.randint(1, CREDENTIAL_COPY_MAX_AGE_S)
            copy = {**json.loads(raw), "expires_at": time.time() + left}
            pipe.set(state_store._credential_key(key_id), json.dumps(copy), ex=left)
    pipe.execute()


def fleet_seed(cars: int) -> list[tuple[int, object]]:
    """Register `cars` cars of 100 owners, each with a default opt-in policy and one credential: the rows
    `vehicle_register` makes, written in bulk. Returns (vehicle id, signing credential) pairs."""
    from accounts.models import Role, User
    from fleet.agent.signing import Credential
    from fleet.models import HardwareProfile, OptInPolicy, Vehicle, VehicleCredential

    hardware = list(HardwareProfile.objects.filter(name__in=["HW3", "HW4"]))
    owners = User.objects.bulk_create(
        [User(username=f"bench-{i}", email=f"bench-{i}@idlefleet.example", role=Role.OWNER) for i in range(100)]
    )
    vehicles = Vehicle.objects.bulk_create(
        [
            Vehicle(
                owner=owners[i % len(owners)],
                display_name=f"Bench car {i}",
                hardware=hardware[i % len(hardware)],
                battery_capacity_kwh=75.0,
                energy_price_cents_per_kwh=16,
                is_simulated=True,
            )
            for i in range(cars)
        ],
        batch_size=2000,
    )
    OptInPolicy.objects.bulk_create(
        [OptInPolicy(vehicle=v, max_power_w=min(300, v.hardware.max_power_w)) for v in vehicles], batch_size=2000
    )
    signers = [Credential.generate(key_id=secrets.token_hex(8)) for _ in vehicles]
    VehicleCredential.objects.bulk_create(
        [
            VehicleCredential(vehicle=v, key_id=c.key_id, public_key=c.public_key)
            for v, c in zip(vehicles, signers, strict=True)
        ],
        batch_size=2000,
    )
    return [(v.pk, c) for v, c in zip(vehicles, signers, strict=True)]


def heartbeat_body(rng: random.Random, *, computing: bool = False) -> bytes:
    """A parked car's heartbeat, serialized as the agent's client does (compact, sorted keys): idle, or running a unit
    (`computing`, drawing power for it)."""
    payload = {
        "observed_at": datetime.now(UTC).isoformat(),
        "clock_rate": 1.0,
        "parked": True,
        "plugged_in": rng.random() < 0.6,
        "charge_power_w": rng.choice([0.0, 7200.0, 11000.0]),
        "battery_pct": round(rng.uniform(20, 95), 1),
        "battery_capacity_kwh": 75.0,
        "network": "wifi",
        "bandwidth_down_mbps": round(rng.uniform(20, 500), 1),
        "bandwidth_up_mbps": round(rng.uniform(5, 50), 1),
        "latency_ms": round(rng.uniform(5, 80), 1),
        "runtime_version": "1.20.1",
        "models_cached": [hex(rng.getrandbits(256))[2:].rjust(64, "0") for _ in range(rng.randint(0, 2))],
        "computing": computing,
        "compute_power_w": round(rng.uniform(150, 300), 1) if computing else 0.0,
        "energy_used_today_wh": round(rng.uniform(0, 2000), 1),
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class Signer:
    """Signs agent requests round-robin over the fleet, resuming where the previous batch stopped: heartbeats (of idle
    cars, or of cars running a unit: `computing`), or lease polls (`path` LEASE_PATH)."""

    def __init__(self, fleet: list, seed: int = 7, *, path: str = HEARTBEAT_PATH, computing: bool = False) -> None:
        self.fleet = fleet
        self.next = 0
        self.rng = random.Random(seed)  # noqa: S311 (car readings, not secrets)
        self.path = path
        self.computing = computing

    def body(self) -> bytes:
        if self.path == LEASE_PATH:
            return LEASE_BODY
        return heartbeat_body(self.rng, computing=self.computing)

    def batch(self, count: int) -> list[tuple[dict[str, str], bytes]]:
        signed = []
        now = int(time.time())
        for _ in range(count):
            _, credential = self.fleet[self.next % len(self.fleet)]
            self.next += 1
            body = self.body()
            signed.append((credential.sign(method="POST", path=self.path, body=body, timestamp=now), body))
        return signed

    def write(self, count: int, prefix: Path, threads: int) -> None:
        """One file per wrk thread, one request a line: key, timestamp, nonce, signature, body (tab-separated)."""
        files = [open(f"{prefix}.{i}", "w") for i in range(threads)]  # noqa: SIM115
        try:
            for n, (headers, body) in enumerate(self.batch(count)):
                values = [headers[h] for h in ("X-Idlefleet-Key", "X-Idlefleet-Timestamp", "X-Idlefleet-Nonce")]
                files[n % threads].write("\t".join([*values, headers["X-Idlefleet-Signature"], body.decode()]) + "\n")
        finally:
            for f in files:
                f.close()


# --- Processes and their CPU ---------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (0 if it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """gunicorn with the production settings and config/gunicorn.conf.py, on a free port of 127.0.0.1."""

    def __init__(self, *, workers: int, worker_class: str, threads: int, log: Path) -> None:
        self.port = free_port()
        self.workers = workers
        env = {
            **os.environ,
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_WORKER_CLASS": worker_class,
            "GUNICORN_THREADS": str(threads),
            "GUNICORN_LOGLEVEL": "warning",
        }
        self.log = open(log, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "config" / "gunicorn.conf.py"), "config.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + BASELINE_PATH, timeout=5) as response:  # noqa: S310
                    if response.status == 200 and len(children(self.process.pid)) >= workers:
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gunicorn did not start: see {log}")
            time.sleep(0.2)

    def worker_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in children(self.process.pid))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def wrk(
    url: str, *, threads: int, connections: int, seconds: float = 0, prefix: Path | None = None, path=HEARTBEAT_PATH
) -> dict:
    """One wrk run: `seconds` of the baseline, or every request in the files `prefix`.* (signed for `path`) sent once.
    Its RESULT line, with the CPU wrk used."""
    markers = []
    if prefix:
        lines = sum(1 for i in range(threads) for _ in open(f"{prefix}.{i}"))  # noqa: SIM115
        seconds = 30 + lines / 100  # only a guard (at 100 heartbeats/s): wrk is stopped when every thread is done
        markers = [Path(f"{prefix}.done.{i}") for i in range(threads)]
        for marker in markers:
            marker.unlink(missing_ok=True)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s", "-s", str(LUA)]
    command += [url + (path if prefix else BASELINE_PATH), "--", *([str(prefix), path] if prefix else ["-"])]
    started = os.times()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # noqa: S603
    while markers and process.poll() is None:
        if all(marker.exists() for marker in markers):
            process.send_signal(signal.SIGINT)  # wrk's main thread would sleep out the whole -d; it prints at once
            break
        time.sleep(0.05)
    output = process.communicate()[0]
    ended = os.times()
    match = re.search(r"^RESULT (.*)$", output, re.MULTILINE)
    if not match:
        raise SystemExit(f"wrk printed no result:\n{output}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / result["duration_s"]
    result["errors"] = result["non2xx"] + sum(result["socket_errors"].values())
    if prefix:
        result["errors"] += result["issued"] - result["requests"]  # sent and never answered
    result["loadgen_cpu_s"] = (ended.children_user - started.children_user) + (
        ended.children_system - started.children_system
    )
    return result


def database_backends() -> list[int]:
    """The PostgreSQL backends serving the bench database (the gunicorn workers' connections)."""
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [DB_NAME]
        ).fetchall()
    return [pid for (pid,) in rows]


def redis_pid() -> int:
    from core.redis import client

    return int(client().info("server")["process_id"])


def measured(server: Server, **wrk_kwargs) -> dict:
    """A wrk run with the CPU spent during it by the gunicorn workers, by their PostgreSQL backends, and by the Redis
    server (which other programs on this machine may use too: an upper bound)."""
    redis = redis_pid()
    before = {"server": server.worker_cpu(), "redis": cpu_seconds(redis)}
    before["postgres"] = {pid: cpu_seconds(pid) for pid in database_backends()}
    result = wrk(server.url, **wrk_kwargs)
    result["server_cpu_s"] = server.worker_cpu() - before["server"]
    result["postgres_cpu_s"] = sum(cpu_seconds(pid) - before["postgres"].get(pid, 0.0) for pid in database_backends())
    result["redis_cpu_s"] = cpu_seconds(redis) - before["redis"]
    issued = max(result["issued"], 1)
    result["cpu_ms_per_request"] = 1000 * result["server_cpu_s"] / issued
    result["total_cpu_ms_per_request"] = (
        1000
        * (result["server_cpu_s"] + result["postgres_cpu_s"] + result["redis_cpu_s"] + result["loadgen_cpu_s"])
        / issued
    )
    return result


# --- Per car-minute: a fleet a third of which works, before and after the adaptive rate ---------------------------

WORKING_EVERY = 3  # every third car runs a unit: a fleet a third of which works
KINDS = ("idle_heartbeat", "working_heartbeat", "lease_poll")


def mix_signers(fleet: list) -> dict[str, Signer]:
    """The requests of a fleet a third of which runs a unit: the working cars' heartbeats (computing; a car that runs a
    unit asks for no work), the other cars' heartbeats and lease polls (they hold no work, so the answer is 204)."""
    working = fleet[::WORKING_EVERY]
    idle = [car for n, car in enumerate(fleet) if n % WORKING_EVERY]
    return {
        "idle_heartbeat": Signer(idle, seed=8),
        "working_heartbeat": Signer(working, seed=9, computing=True),
        "lease_poll": Signer(idle, seed=10, path=LEASE_PATH),
    }


def answers_sample(url: str, signers: dict[str, Signer], count: int = 5) -> dict[str, list]:
    """What the server answers `count` requests of each kind, sent one at a time through the same signing code: the
    heartbeats' next_heartbeat_s (the rates after the change come from these, not from the settings), and the lease
    polls' statuses. Stops the bench if a heartbeat is refused or a lease poll is answered anything but 204."""
    sampled: dict[str, list] = {kind: [] for kind in signers}
    for kind, signer in signers.items():
        for headers, body in signer.batch(count):
            request = urllib.request.Request(  # noqa: S310 (our own server on 127.0.0.1)
                url + signer.path, data=body, method="POST", headers={**headers, "Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    status, answer = response.status, response.read()
            except urllib.error.HTTPError as error:
                status, answer = error.code, error.read()
            expected = 204 if signer.path == LEASE_PATH else 200
            if status != expected:
                raise SystemExit(f"{kind}: {status} (expected {expected}) {answer[:300]!r}")
            sampled[kind].append(status if signer.path == LEASE_PATH else json.loads(answer)["next_heartbeat_s"])
    return sampled


def mix_measure(server: Server, signers: dict[str, Signer], *, requests: int, rounds: int, workdir: Path, **wrk_args):
    """CPU per request of each kind: `requests` of each, in `rounds` turns that take the kinds in turn (the other load
    on this machine varies: each kind gets its share of it). Each worker serves a few of each kind first, unmeasured
    (the first requests of a code path import and compile what it needs)."""
    for kind, signer in signers.items():
        signer.write(100 * server.workers, workdir / f"prime-{kind}", wrk_args["threads"])
        wrk(server.url, prefix=workdir / f"prime-{kind}", path=signer.path, **wrk_args)
    turns: dict[str, list[dict]] = {kind: [] for kind in signers}
    for turn in range(rounds):
        size = requests // rounds + (turn < requests % rounds)
        for kind, signer in signers.items():
            signer.write(size, workdir / kind, wrk_args["threads"])
            turns[kind].append(measured(server, prefix=workdir / kind, path=signer.path, **wrk_args))
    return {kind: _turns_merged(runs) for kind, runs in turns.items()}


def _turns_merged(runs: list[dict]) -> dict:
    names = ("requests", "issued", "errors", "duration_s", "server_cpu_s", "postgres_cpu_s", "redis_cpu_s")
    merged = {name: sum(run[name] for run in runs) for name in (*names, "loadgen_cpu_s")}
    merged["statuses"] = {}
    for run in runs:
        for status, count in run["statuses"].items():
            merged["statuses"][status] = merged["statuses"].get(status, 0) + count
    issued = max(merged["issued"], 1)
    others_s = merged["postgres_cpu_s"] + merged["redis_cpu_s"] + merged["loadgen_cpu_s"]
    return {
        **merged,
        "rps": merged["requests"] / merged["duration_s"],
        "p99_ms_worst_turn": max(run["p99_ms"] for run in runs),
        "cpu_ms_per_request": 1000 * merged["server_cpu_s"] / issued,
        "total_cpu_ms_per_request": 1000 * (merged["server_cpu_s"] + others_s) / issued,
    }


def request_rates(answers: dict[str, list], *, working_share: float, often_s: float) -> dict[str, dict[str, float]]:
    """Requests of each kind per car-minute, over the whole fleet. Before the adaptive rate every car heartbeat every
    `often_s` and the idle ones polled for work as often (a car running a unit polls for none). After it each car
    heartbeats as the server answered (a car answered N seconds sends 60/N a minute: the mean over the answers
    sampled), and an idle car polls for work only with a heartbeat."""

    def per_minute(answers_s: list[float]) -> float:
        return sum(60 / answer for answer in answers_s) / len(answers_s)

    idle, often = 1 - working_share, 60 / often_s
    after_idle = per_minute(answers["idle_heartbeat"])
    return {
        "before": {
            "idle_heartbeat": idle * often,
            "working_heartbeat": working_share * often,
            "lease_poll": idle * often,
        },
        "after": {
            "idle_heartbeat": idle * after_idle,
            "working_heartbeat": working_share * per_minute(answers["working_heartbeat"]),
            "lease_poll": idle * after_idle,
        },
    }


def per_car_minute(mix: dict) -> dict:
    """The report's per_car_minute: rate × CPU per request, summed over the kinds, before and after."""
    from fleet.agent.protocol import HEARTBEAT_SECONDS

    share = 1 / WORKING_EVERY
    rates = request_rates(mix["answers"], working_share=share, often_s=HEARTBEAT_SECONDS)
    kinds = mix["kinds"]

    def cost(measure: str) -> dict[str, float]:
        return {
            when: sum(rate * kinds[kind][measure] for kind, rate in by_kind.items()) for when, by_kind in rates.items()
        }

    web, everything = cost("cpu_ms_per_request"), cost("total_cpu_ms_per_request")
    requests = {when: sum(by_kind.values()) for when, by_kind in rates.items()}
    return {
        "what": (
            "web CPU (the gunicorn workers) per car-minute of a fleet a third of which runs a unit, before the "
            "adaptive heartbeat rate (every car heartbeats every 15 s and the idle ones poll for work as often) and "
            "after it (each car heartbeats as the server answered, an idle car polls for work only with a heartbeat): "
            "requests of each kind per car-minute × the CPU per request measured for that kind, summed"
        ),
        "workers": mix["workers"],
        "requests_per_kind": mix["requests"],
        "rounds": mix["rounds"],
        "working_share": round(share, 4),
        "answers_s": {
            "idle": statistics.median(mix["answers"]["idle_heartbeat"]),
            "working": statistics.median(mix["answers"]["working_heartbeat"]),
        },
        "answers_sampled_s": {
            "idle": mix["answers"]["idle_heartbeat"],
            "working": mix["answers"]["working_heartbeat"],
        },
        "lease_poll_statuses_sampled": mix["answers"]["lease_poll"],
        "cpu_ms_per_request": {kind: round(kinds[kind]["cpu_ms_per_request"], 4) for kind in KINDS},
        "total_cpu_ms_per_request": {kind: round(kinds[kind]["total_cpu_ms_per_request"], 4) for kind in KINDS},
        "requests_per_car_minute_by_kind": {
            when: {kind: round(rate, 4) for kind, rate in by_kind.items()} for when, by_kind in rates.items()
        },
        "requests_per_car_minute": {when: round(value, 4) for when, value in requests.items()},
        "cpu_ms_per_car_minute": {when: round(value, 4) for when, value in web.items()},
        "ratio": round(web["before"] / web["after"], 3),
        "requests_ratio": round(requests["before"] / requests["after"], 3),
        "total_cpu_ms_per_car_minute": {when: round(value, 4) for when, value in everything.items()},
        "total_ratio": round(everything["before"] / everything["after"], 3),
        "web_cores_per_10000_cars": {when: round(value * 10_000 / 60_000, 3) for when, value in web.items()},
        "runs": {
            kind: {
                "requests": run["requests"],
                "errors": run["errors"],
                "statuses": run["statuses"],
                "rps": round(run["rps"], 1),
                "p99_ms_worst_turn": round(run["p99_ms_worst_turn"], 2),
            }
            for kind, run in kinds.items()
        },
        "note": (
            "the three kinds are measured on the same server, in turns; the CPU per request is the workers' own (from "
            "/proc), which other load on the machine moves less than throughput, and the ratio less still"
        ),
    }


# --- The profile (no server) ---------------------------------------------------------------------------------------


def profile(signer: Signer, count: int) -> None:
    """cProfile of `count` heartbeats through Django's WSGI handler in this process (no server, no network)."""
    import cProfile
    import io
    import pstats

    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()

    def call(headers: dict[str, str], body: bytes) -> str:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": HEARTBEAT_PATH,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()},
        }
        statuses = []
        b"".join(handler(environ, lambda status, headers, exc_info=None: statuses.append(status)))
        return statuses[0]

    # Warm-up: imports, connections, and every car's first contact (which writes to the database once).
    for headers, body in signer.batch(len(signer.fleet)):
        call(headers, body)
    batch = signer.batch(count)
    started = time.process_time()
    statuses = [call(headers, body) for headers, body in batch[: count // 2]]
    plain = (time.process_time() - started) / (count // 2)
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    statuses += [call(headers, body) for headers, body in batch[count // 2 :]]
    profiler.disable()
    print(f"{count} heartbeats, statuses {sorted(set(statuses))}: {1000 * plain:.3f} ms CPU each in this process")
    stats = pstats.Stats(profiler)
    by_package: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():
        package = re.sub(r".*/site-packages/([^/]+)/.*", r"\1", filename)
        package = re.sub(rf"^{re.escape(str(ROOT))}/([^/]+)/.*", r"\1 (ours)", package)
        package = "python" if "/lib/python3" in package or filename.startswith("<") else package
        package = "builtins (C)" if filename == "~" else package
        by_package[package] = by_package.get(package, 0.0) + tottime
    total = sum(by_package.values())
    print("CPU by package (own time, profiled):")
    for package, seconds in sorted(by_package.items(), key=lambda item: -item[1])[:12]:
        print(f"  {100 * seconds / total:5.1f} %  {package}")
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(30)


# --- Main ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cars", type=int, default=10_000)
    parser.add_argument("--workers", default="1,2,3,4", help="gunicorn worker counts to measure, comma-separated")
    parser.add_argument("--worker-class", default="gthread", choices=["gthread", "sync"])
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--requests", type=int, default=15_000, help="signed heartbeats per worker count")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections per gunicorn worker")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads (each runs an event loop)")
    parser.add_argument("--baseline-seconds", type=float, default=4)
    parser.add_argument(
        "--mix-rounds", type=int, default=3, help="turns over the three kinds of the per-car-minute figures"
    )
    parser.add_argument("--redis-db", type=int, default=int(os.environ.get("BENCH_REDIS_DB", 11)))
    parser.add_argument("--redis-server", default=os.environ.get("BENCH_REDIS_SERVER", "redis://127.0.0.1:6379"))
    parser.add_argument("--profile", action="store_true", help="cProfile heartbeats in-process instead")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "heartbeats.json")
    args = parser.parse_args()
    if not args.profile and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    configure(f"{args.redis_server}/{args.redis_db}")
    began = time.monotonic()
    print(f"database {DB_NAME}: creating and migrating", flush=True)
    database_create()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    from core.redis import client

    call_command("migrate", verbosity=0)
    client().flushdb()
    fleet = fleet_seed(args.cars)
    connections.close_all()
    signer = Signer(fleet)
    print(f"{len(fleet)} cars registered ({time.monotonic() - began:.0f} s)", flush=True)

    if args.profile:
        profile(signer, min(args.requests, 5000))
        client().flushdb()
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench-heartbeats-"))
    log = workdir / "gunicorn.log"
    runs = {}
    worker_counts = [int(w) for w in args.workers.split(",")]
    mix = None
    try:
        # Warm-up: every car's first heartbeat (opens its parking session).
        server = Server(workers=2, worker_class=args.worker_class, threads=args.threads, log=log)
        writes_before = database_writes()
        signer.write(len(fleet), workdir / "warmup", args.wrk_threads)
        first = measured(server, threads=args.wrk_threads, connections=8, prefix=workdir / "warmup")
        server.stop()
        writes_first = _delta(database_writes(), writes_before)
        print(f"warm-up: {first['requests']} first heartbeats, {first['errors']} errors, writes {writes_first}")
        credentials_age()

        for workers in worker_counts:
            server = Server(workers=workers, worker_class=args.worker_class, threads=args.threads, log=log)
            connections_n = args.connections * workers
            wrk_args = {"threads": args.wrk_threads, "connections": max(connections_n, args.wrk_threads)}
            # Each worker imports the API's modules on its first requests: not part of what is measured.
            signer.write(200 * workers, workdir / "prime", args.wrk_threads)
            wrk(server.url, prefix=workdir / "prime", **wrk_args)
            baseline = measured(server, seconds=args.baseline_seconds, **wrk_args)
            if workers == worker_counts[0]:
                mix = _mix_run(server, fleet, args=args, workdir=workdir, wrk_args=wrk_args)
                time.sleep(2)  # PostgreSQL's backends flush their statistics: the heartbeats' writes are counted apart
            signer.write(args.requests, workdir / "heartbeats", args.wrk_threads)
            writes_before = database_writes()
            heartbeats = measured(server, prefix=workdir / "heartbeats", **wrk_args)
            server.stop()
            writes = _delta(database_writes(), writes_before)
            runs[workers] = {"baseline": baseline, "heartbeats": heartbeats, "db": writes}
            _print_run(workers, connections_n, baseline, heartbeats, writes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        client().flushdb()

    report = _report(args, fleet, first, writes_first, runs, began)
    report["per_car_minute"] = per_car_minute(mix)
    _print_per_car_minute(report["per_car_minute"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.json}")


def _mix_run(server: Server, fleet: list, *, args, workdir: Path, wrk_args: dict) -> dict:
    """The per-car-minute measurements on this server: the answers first, then the three kinds under wrk."""
    signers = mix_signers(fleet)
    answers = answers_sample(server.url, signers)
    print(
        f"answers: idle heartbeats next_heartbeat_s {answers['idle_heartbeat']}, working heartbeats "
        f"{answers['working_heartbeat']}, lease polls of idle cars {answers['lease_poll']}",
        flush=True,
    )
    kinds = mix_measure(server, signers, requests=args.requests, rounds=args.mix_rounds, workdir=workdir, **wrk_args)
    for kind, run in kinds.items():
        print(
            f"{server.workers} worker(s): {kind:17} {run['rps']:7.0f}/s errors {run['errors']} "
            f"statuses {run['statuses']} cpu {run['cpu_ms_per_request']:.3f} ms/req "
            f"(all {run['total_cpu_ms_per_request']:.3f})",
            flush=True,
        )
    return {
        "workers": server.workers,
        "requests": args.requests,
        "rounds": args.mix_rounds,
        "answers": answers,
        "kinds": kinds,
    }


def _print_per_car_minute(figures: dict) -> None:
    requests, cpu = figures["requests_per_car_minute"], figures["cpu_ms_per_car_minute"]
    print(
        f"per car-minute, {figures['working_share']:.0%} of the fleet working (answers: idle "
        f"{figures['answers_s']['idle']:g} s, working {figures['answers_s']['working']:g} s): "
        f"before {requests['before']:.2f} requests, {cpu['before']:.2f} ms web CPU; "
        f"after {requests['after']:.2f} requests, {cpu['after']:.2f} ms web CPU; "
        f"ratio {figures['ratio']:.2f} (requests {figures['requests_ratio']:.2f}, "
        f"all processes {figures['total_ratio']:.2f})",
        flush=True,
    )


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after}


def _writes(db: dict[str, int]) -> int:
    return db["tup_inserted"] + db["tup_updated"] + db["tup_deleted"]


def _print_run(workers: int, connections_n: int, baseline: dict, heartbeats: dict, writes: dict) -> None:
    print(
        f"{workers} worker(s), {connections_n} connections: heartbeats {heartbeats['rps']:7.0f}/s "
        f"p50 {heartbeats['p50_ms']:.1f} ms p99 {heartbeats['p99_ms']:.1f} ms errors {heartbeats['errors']} "
        f"cpu {heartbeats['cpu_ms_per_request']:.3f} ms/req (all {heartbeats['total_cpu_ms_per_request']:.3f}) "
        f"| baseline {BASELINE_PATH} {baseline['rps']:7.0f}/s "
        f"cpu {baseline['cpu_ms_per_request']:.3f} ms/req | ratio {heartbeats['rps'] / baseline['rps']:.2f} | "
        f"db writes/heartbeat {_writes(writes) / max(heartbeats['issued'], 1):.4f}",
        flush=True,
    )


def _report(args, fleet, first, writes_first, runs, began) -> dict:
    def summary(run: dict) -> dict:
        return {
            "rps": round(run["rps"], 1),
            "p50_ms": round(run["p50_ms"], 2),
            "p99_ms": round(run["p99_ms"], 2),
            "max_ms": round(run["max_ms"], 2),
            "errors": run["errors"],
            "statuses": run["statuses"],
            "socket_errors": run["socket_errors"],
            "requests": run["requests"],
            "cpu_ms_per_request": round(run["cpu_ms_per_request"], 4),
            "postgres_cpu_ms_per_request": round(1000 * run["postgres_cpu_s"] / max(run["issued"], 1), 4),
            "redis_cpu_ms_per_request": round(1000 * run["redis_cpu_s"] / max(run["issued"], 1), 4),
            "loadgen_cpu_ms_per_request": round(1000 * run["loadgen_cpu_s"] / max(run["issued"], 1), 4),
            "total_cpu_ms_per_request": round(run["total_cpu_ms_per_request"], 4),
        }

    cpus = os.cpu_count() or 1
    workers = {}
    for count, run in runs.items():
        heartbeats = summary(run["heartbeats"])
        # What this machine could serve if it did nothing else: its cores over the CPU one heartbeat costs (the app
        # alone, and everything: app, PostgreSQL, Redis and the load generator on the same cores, as here).
        heartbeats["capacity_rps_app_only"] = round(1000 * cpus / heartbeats["cpu_ms_per_request"])
        heartbeats["capacity_rps_everything"] = round(1000 * cpus / heartbeats["total_cpu_ms_per_request"])
        workers[str(count)] = {
            **heartbeats,
            "connections": args.connections * count,
            "baseline": summary(run["baseline"]),
            "ratio_to_baseline": round(run["heartbeats"]["rps"] / run["baseline"]["rps"], 3),
            "db": run["db"],
            "db_writes_per_heartbeat": round(_writes(run["db"]) / max(run["heartbeats"]["issued"], 1), 5),
        }
    steady_writes = sum(_writes(run["db"]) for run in runs.values())
    steady_heartbeats = sum(run["heartbeats"]["issued"] for run in runs.values())
    best = max(workers.items(), key=lambda item: item[1]["rps"]) if workers else (None, {})
    return {
        "what": "signed heartbeats (POST /api/v1/agent/heartbeat/) through gunicorn, wrk from another process",
        "cars": len(fleet),
        "requests_per_worker_count": args.requests,
        "worker_class": args.worker_class,
        "threads_per_worker": args.threads if args.worker_class == "gthread" else 1,
        "connections_per_worker": args.connections,
        "baseline": f"GET {BASELINE_PATH} on the same server, in the same run",
        "workers": workers,
        "best": {"workers": best[0], "rps": best[1].get("rps"), "p99_ms": best[1].get("p99_ms")},
        "db_writes_per_heartbeat": round(steady_writes / max(steady_heartbeats, 1), 5),
        "db_note": (
            "writes = tup_inserted + tup_updated + tup_deleted of pg_stat_database; xact_commit also counts every "
            "read in autocommit: the credential lookup (when its copy in Redis is missing or expired) and Django's "
            "connection health check (CONN_HEALTH_CHECKS). "
            "The steady state includes the credentials' last-use stamps and credential reads (each once per car per 5 "
            "minutes, spread over 5 minutes before the timed runs); the parking sessions are opened at first contact."
        ),
        "first_contact": {
            "heartbeats": first["issued"],
            "errors": first["errors"],
            "db": writes_first,
            "db_writes_per_heartbeat": round(_writes(writes_first) / max(first["issued"], 1), 3),
            "why": "a car's first heartbeat opens its parking session",
        },
        "target": {"rps": 2000, "p99_ms": 50, "errors": 0},
        "seconds": round(time.monotonic() - began, 1),
        "machine": {
            "python": platform.python_version(),
            "cpus": cpus,
            "processor": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(),
            "loadavg_at_end": os.getloadavg(),
        },
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    main()
