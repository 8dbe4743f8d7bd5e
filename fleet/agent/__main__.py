"""Run the vehicle agent: `idlefleet-agent --credential car.json --vehicle-state state.json`.

Installed as its own distribution (pyproject.toml in this folder: `pip install ./fleet/agent`), or run from a checkout
as `python -m fleet.agent`. The car's readings come from a vehicle interface (vehicle.py): `--vehicle-state FILE`, a
JSON file a vehicle integration keeps up to date, or, for demos and tests only, `--simulate PERSONA`, a simulated car
(simulation.py); one of the two is required. The car's time zone is the one it was registered with, read from the
platform at start (GET /api/v1/agent/me/), unless --tz overrides it. Work units run with ONNX Runtime (executor.py);
model files are kept in --cache-dir between runs. SIGINT/SIGTERM finish the current request (and the work unit
running, if any) and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import protocol
from .client import AgentClient, AgentHTTPError, AgentUnavailable
from .clock import RealClock, SimClock
from .executor import ArtifactCache, Executor, MiB, runtime_version
from .runner import ME_PATH, Agent
from .signing import Credential
from .simulation import PERSONAS, SimulatedCar
from .vehicle import DEFAULT_MAX_AGE_S, StateFileCar

NO_VEHICLE = (
    "say which car this agent runs in: --vehicle-state FILE (a JSON file your vehicle integration keeps up to date; "
    "README, 'Installing the agent in a car') or, for a demo, --simulate PERSONA (a simulated car: {personas})"
)


def default_cache_dir() -> Path:
    """Where model files are kept: idlefleet-agent in the user's cache directory ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "idlefleet-agent"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="idlefleet-agent",
        description="The Idlefleet vehicle agent: sells the car's idle compute while it is parked on WiFi.",
    )
    parser.add_argument("--server", help="platform base URL, e.g. https://idlefleet.example (overrides the file's)")
    parser.add_argument("--credential", required=True, help="credential file shown once at the car's registration")
    vehicle = parser.add_mutually_exclusive_group()
    vehicle.add_argument(
        "--vehicle-state",
        type=Path,
        metavar="FILE",
        help="the real car: a JSON file of its state that a vehicle integration keeps up to date, re-read at every "
        "heartbeat (fields: README, 'Installing the agent in a car')",
    )
    vehicle.add_argument(
        "--simulate", choices=PERSONAS, metavar="PERSONA", help=f"a simulated car instead: {', '.join(PERSONAS)}"
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=DEFAULT_MAX_AGE_S,
        help=f"seconds after which the state file is stale: the car does no work (default {DEFAULT_MAX_AGE_S:g})",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="simulated car seconds per real second (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated car's behaviour")
    parser.add_argument(
        "--tz", default=None, help="the car's time zone, e.g. Europe/Berlin (default: the one it was registered with)"
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=protocol.HEARTBEAT_SECONDS,
        help=f"car seconds between the agent's steps, the shortest interval between heartbeats (default "
        f"{protocol.HEARTBEAT_SECONDS}); the platform may ask for fewer",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="folder for model files (default: idlefleet-agent in ~/.cache)"
    )
    parser.add_argument("--cache-mb", type=int, default=2048, help="model cache size, MiB (default 2048)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for work units (default 1)")
    parser.add_argument("--power-w", type=float, default=100.0, help="power drawn while computing, W (default 100)")
    parser.add_argument(
        "--slowdown", type=float, default=1.0, help="simulate a car this many times slower than this machine (>= 1)"
    )
    parser.add_argument("--verbose", action="store_true", help="log every heartbeat")
    args = parser.parse_args(argv)
    if args.vehicle_state is None and args.simulate is None:
        parser.error(NO_VEHICLE.format(personas=", ".join(PERSONAS)))
    if args.vehicle_state is not None and args.speed != 1:
        parser.error("--speed is for a simulated car (--simulate): a real car lives in real time")
    return args


def server_time_zone(client: AgentClient, stop: threading.Event, log: logging.Logger, retry_s: float) -> tzinfo | None:
    """The time zone the car was registered with (GET /api/v1/agent/me/), asked again every `retry_s` seconds while
    the platform cannot be reached. None when the platform refuses the credential or `stop` is set first."""
    while not stop.is_set():
        try:
            me = client.get_json(ME_PATH) or {}
        except AgentUnavailable as error:
            log.warning("cannot reach the platform to read the car's time zone, trying again: %s", error)
            stop.wait(retry_s)
            continue
        except AgentHTTPError as error:
            log.error(
                "the platform refused this car's credential (%s); register the car again or check the file", error
            )
            return None
        name = me.get("time_zone") or "UTC"
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("the car's time zone %r is unknown on this machine: using UTC (pass --tz to choose)", name)
            zone = ZoneInfo("UTC")
        log.info("car %r: time zone %s (from the platform)", me.get("display_name", "?"), zone.key)
        return zone
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("idlefleet.agent")
    try:
        credential, file_server = Credential.from_file(args.credential)
        tz = ZoneInfo(args.tz) if args.tz else None
    except (OSError, ValueError, KeyError, ZoneInfoNotFoundError) as error:
        log.error("cannot start: %s", error)
        return 2
    server = args.server or file_server
    if not server:
        log.error('cannot start: no server URL (pass --server or put "server" in the credential file)')
        return 2
    if not 0 < args.speed <= protocol.MAX_CLOCK_RATE:
        log.error("cannot start: --speed must be in (0, %s]", protocol.MAX_CLOCK_RATE)
        return 2
    if args.cache_mb < 1 or args.threads < 1 or args.slowdown < 1 or not 0 < args.power_w <= protocol.MAX_POWER_W:
        log.error(
            "cannot start: --cache-mb, --threads and --slowdown must be at least 1, --power-w in (0, %s]",
            protocol.MAX_POWER_W,
        )
        return 2
    if args.max_age <= 0:
        log.error("cannot start: --max-age must be more than 0 seconds")
        return 2

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s received: stopping after the current request", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    client = AgentClient(server, credential)
    try:
        return _run(args, client, credential, server, tz, stop, log)
    finally:
        client.close()


def _run(args, client, credential, server, tz, stop, log) -> int:
    cache_dir = args.cache_dir or default_cache_dir()
    try:
        cache = ArtifactCache(cache_dir, args.cache_mb * MiB)
        executor = Executor(client, cache, threads=args.threads, power_w=args.power_w, slowdown=args.slowdown)
    except (OSError, ImportError) as error:
        log.error("cannot start: the work-unit runner is not usable (cache %s): %s", cache_dir, error)
        return 2
    if tz is None:
        tz = server_time_zone(client, stop, log, retry_s=args.heartbeat)
        if tz is None:
            return 0 if stop.is_set() else 1
    zone = getattr(tz, "key", str(tz))
    start = datetime.now(tz)
    if args.simulate:
        clock = RealClock(tz) if args.speed == 1 else SimClock(start, args.speed)
        car = SimulatedCar(args.simulate, args.seed, start, tz)
        vehicle = f"SIMULATED car (--simulate {args.simulate}, seed {args.seed}, speed {args.speed}x)"
    else:
        clock = RealClock(tz)
        car = StateFileCar(args.vehicle_state, max_age_s=args.max_age, runtime_version=runtime_version(), log=log)
        vehicle = car.describe()
    log.info(
        "agent for key %s -> %s; vehicle interface: %s; time zone %s; model cache %s (%d models), %d threads, %g W",
        credential.key_id,
        server,
        vehicle,
        zone,
        cache_dir,
        len(cache.holds()),
        args.threads,
        args.power_w,
    )
    agent = Agent(client, car, clock, heartbeat_seconds=args.heartbeat, stop=stop, executor=executor, log=log)
    agent.run()
    # A refused credential is not a clean shutdown: a supervisor should not restart the agent in a loop, but see it.
    return 1 if agent.stopped_reason else 0


if __name__ == "__main__":
    sys.exit(main())
