"""Run the vehicle agent: `python -m fleet.agent --credential car.json [--server URL] [--simulate commuter]`.

Reading a real car's sensors is out of scope for now, so the agent always drives a simulated car (see
simulation.py); a vehicle-bus reader implementing runner.Car plugs in here later. Work units run with ONNX Runtime
(executor.py); model files are kept in --cache-dir between runs. SIGINT/SIGTERM finish the current request (and the
work unit running, if any) and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import protocol
from .client import AgentClient
from .clock import RealClock, SimClock
from .executor import ArtifactCache, Executor, MiB
from .runner import Agent
from .signing import Credential
from .simulation import PERSONAS, SimulatedCar


def default_cache_dir() -> Path:
    """Where model files are kept: idlefleet-agent in the user's cache directory ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "idlefleet-agent"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleet.agent", description="The Idlefleet vehicle agent.")
    parser.add_argument("--server", help="platform base URL, e.g. https://idlefleet.example (overrides the file's)")
    parser.add_argument("--credential", required=True, help="credential file shown once at the car's registration")
    parser.add_argument("--simulate", choices=PERSONAS, default="commuter", help="simulated car's persona")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated car seconds per real second (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated car's behaviour")
    parser.add_argument("--tz", default="UTC", help="the car's time zone, e.g. Europe/Berlin")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=protocol.HEARTBEAT_SECONDS,
        help=f"car seconds between heartbeats (default {protocol.HEARTBEAT_SECONDS})",
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
    return parser.parse_args(argv)


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
        tz = ZoneInfo(args.tz)
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

    start = datetime.now(tz)
    clock = RealClock(tz) if args.speed == 1 else SimClock(start, args.speed)
    car = SimulatedCar(args.simulate, args.seed, start, tz)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s received: stopping after the current request", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    client = AgentClient(server, credential)
    cache_dir = args.cache_dir or default_cache_dir()
    try:
        cache = ArtifactCache(cache_dir, args.cache_mb * MiB)
        executor = Executor(client, cache, threads=args.threads, power_w=args.power_w, slowdown=args.slowdown)
    except (OSError, ImportError) as error:
        client.close()
        log.error("cannot start: the work-unit runner is not usable (cache %s): %s", cache_dir, error)
        return 2
    log.info(
        "agent for key %s -> %s: simulated %s (seed %s, %s, speed %sx); model cache %s (%d models), %d threads, %g W",
        credential.key_id,
        server,
        args.simulate,
        args.seed,
        args.tz,
        args.speed,
        cache_dir,
        len(cache.holds()),
        args.threads,
        args.power_w,
    )
    agent = Agent(client, car, clock, heartbeat_seconds=args.heartbeat, stop=stop, executor=executor, log=log)
    try:
        agent.run()
    finally:
        client.close()
    # A refused credential is not a clean shutdown: a supervisor should not restart the agent in a loop, but see it.
    return 1 if agent.stopped_reason else 0


if __name__ == "__main__":
    sys.exit(main())
