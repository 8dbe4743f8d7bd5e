"""Heartbeat ingest: the real agent API behind gunicorn, driven by wrk from another process with signed heartbeats.

    .venv/bin/python bench/heartbeats.py [--cars 10000] [--workers 1,2,3,4] [--requests 15000] [--connections 4]
                                         [--worker-class gthread] [--threads 4] [--profile]

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
   `--requests` signed heartbeats, each sent once (a second time would be a replay);
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
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgres://postgres@127.0.0.1:5432")
DB_NAME = "idlefleet_bench_heartbeats"
HEARTBEAT_PATH = "/api/v1/agent/heartbeat/"
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


def heartbeat_body(rng: random.Random) -> bytes:
    """A parked car's heartbeat, serialized as the agent's client does (compact, sorted keys)."""
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
        "computing": False,
        "compute_power_w": 0.0,
        "energy_used_today_wh": round(rng.uniform(0, 2000), 1),
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class Signer:
    """Signs heartbeats round-robin over the fleet, resuming where the previous batch stopped."""

    def __init__(self, fleet: list, seed: int = 7) -> None:
        self.fleet = fleet
        self.next = 0
        self.rng = random.Random(seed)  # noqa: S311 (car readings, not secrets)

    def batch(self, count: int) -> list[tuple[dict[str, str], bytes]]:
        signed = []
        now = int(time.time())
        for _ in range(count):
            _, credential = self.fleet[self.next % len(self.fleet)]
            self.next += 1
            body = heartbeat_body(self.rng)
            signed.append((credential.sign(method="POST", path=HEARTBEAT_PATH, body=body, timestamp=now), body))
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


def wrk(url: str, *, threads: int, connections: int, seconds: float = 0, prefix: Path | None = None) -> dict:
    """One wrk run: `seconds` of the baseline, or every heartbeat in the files `prefix`.* sent once. Its RESULT line,
    with the CPU wrk used."""
    markers = []
    if prefix:
        lines = sum(1 for i in range(threads) for _ in open(f"{prefix}.{i}"))  # noqa: SIM115
        seconds = 30 + lines / 100  # only a guard (at 100 heartbeats/s): wrk is stopped when every thread is done
        markers = [Path(f"{prefix}.done.{i}") for i in range(threads)]
        for marker in markers:
            marker.unlink(missing_ok=True)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s", "-s", str(LUA)]
    command += [url + (HEARTBEAT_PATH if prefix else BASELINE_PATH), "--", str(prefix) if prefix else "-"]
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

        for workers in [int(w) for w in args.workers.split(",")]:
            server = Server(workers=workers, worker_class=args.worker_class, threads=args.threads, log=log)
            connections_n = args.connections * workers
            wrk_args = {"threads": args.wrk_threads, "connections": max(connections_n, args.wrk_threads)}
            # Each worker imports the API's modules on its first requests: not part of what is measured.
            signer.write(200 * workers, workdir / "prime", args.wrk_threads)
            wrk(server.url, prefix=workdir / "prime", **wrk_args)
            baseline = measured(server, seconds=args.baseline_seconds, **wrk_args)
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
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.json}")


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
