"""Run the vehicle agent: `python -m fleet.agent --credential car.json [--server URL] [--simulate commuter]`.

Reading a real car's sensors is out of scope for now, so the agent always drives a simulated car (see
simulation.py); a vehicle-bus reader implementing runner.Car plugs in here later. SIGINT/SIGTERM finish the current
request and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import protocol
from .client import AgentClient
from .clock import RealClock, SimClock
from .runner import Agent
from .signing import Credential
from .simulation import PERSONAS, SimulatedCar


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
    log.info(
        "agent for key %s -> %s: simulated %s (seed %s, %s, speed %sx)",
        credential.key_id,
        server,
        args.simulate,
        args.seed,
        args.tz,
        args.speed,
    )
    agent = Agent(client, car, clock, heartbeat_seconds=args.heartbeat, stop=stop, log=log)
    try:
        agent.run()
    finally:
        client.close()
    # A refused credential is not a clean shutdown: a supervisor should not restart the agent in a loop, but see it.
    return 1 if agent.stopped_reason else 0


if __name__ == "__main__":
    sys.exit(main())
