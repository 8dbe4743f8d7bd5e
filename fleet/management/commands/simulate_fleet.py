"""Run a simulated fleet: N real agents (fleet.agent, the code that runs in a car) against a running server."""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
import urllib.request
import zoneinfo
from datetime import datetime, timedelta
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Role, User
from fleet.agent.client import AgentClient
from fleet.agent.clock import SimClock
from fleet.agent.executor import ArtifactCache, Executor, MiB
from fleet.agent.runner import Agent
from fleet.agent.simulation import make_fleet
from fleet.curve import AvailabilityCurve
from fleet.models import HardwareProfile, Vehicle
from fleet.selectors import vehicles_live
from fleet.services import credential_issue, vehicle_register

# Who owns the simulated cars: the demo owners in turn (their story in ops/demo.py), so that whichever car wins a job,
# a demo owner's earnings page shows it; a fleet account only where there are no demo owners.
DEMO_OWNERS = ["olivia", "oscar", "oscar", "otto"]
FLEET_OWNER = "simfleet"
# Each simulated car's model cache: a temporary folder per car, all removed when the command ends.
SIM_CACHE_BYTES = 1024 * MiB
DEFAULT_COMPUTE_POWER_W = 100.0


def simulated_agents(
    cars, vehicles, credentials, *, server: str, start: datetime, speed: float, heartbeat_seconds: float,
    cache_root: str, stop: threading.Event,
) -> list[Agent]:  # fmt: skip
    """One real agent per simulated car, each with its own model cache under `cache_root` and a clock `speed` times
    faster than real time, not yet started (run each one's `run` in a thread)."""
    fastest = max(vehicle.hardware.int8_tops for vehicle in vehicles)
    agents = []
    for car, vehicle, credential in zip(cars, vehicles, credentials, strict=True):
        client = AgentClient(server, credential)
        executor = Executor(
            client,
            ArtifactCache(tempfile.mkdtemp(prefix=f"car-{vehicle.pk}-", dir=cache_root), SIM_CACHE_BYTES),
            threads=1,
            power_w=float(vehicle.hardware.typical_power_w or DEFAULT_COMPUTE_POWER_W),
            # Every car computes on this machine's CPU: an older chip is made as much slower as it is rated (HW3
            # against HW4: 245 / 144), so measured speeds differ by hardware as they do on the road.
            slowdown=fastest / vehicle.hardware.int8_tops,
            emulated_wh_per_ch=emulated_energy(vehicle.hardware),
        )
        agents.append(
            Agent(client, car, SimClock(start, speed), heartbeat_seconds=heartbeat_seconds, stop=stop,
                  executor=executor)
        )  # fmt: skip
    return agents


def emulated_energy(hardware: HardwareProfile) -> dict[str, float]:
    """Wh per CH of the car's own chip at each precision it runs: its typical power over its rated CH per hour.

    A simulated car runs its work on this machine's CPU, tens to thousands of times slower than the chip it stands
    for: the platform measures that speed and sizes the car's work for it. Its energy is the chip's, not this
    machine's power × time: a host CPU's watts say nothing of a car's battery, and they would price every simulated
    car out of the market."""
    return {
        precision: hardware.typical_power_w / hardware.ch_per_hour(precision)
        for precision in hardware.factors
        if hardware.ch_per_hour(precision) > 0
    }


class Command(BaseCommand):
    help = (
        "Run N simulated cars, each a real agent talking to the server over HTTP, with commuting patterns, WiFi at "
        "home, cellular on the road, batteries and early departures. Time can run faster than real time."
    )

    def add_arguments(self, parser):
        parser.add_argument("--vehicles", type=int, default=8, help="number of cars (default 8)")
        parser.add_argument("--speed", type=float, default=60.0, help="car seconds per real second (default 60)")
        parser.add_argument("--server", default="http://127.0.0.1:8000", help="the platform's base URL")
        parser.add_argument("--days", type=float, default=0, help="stop after this many simulated days (0: run on)")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--time-zone", default="America/Los_Angeles", help="where the simulated cars live")
        parser.add_argument(
            "--region", default="US-CA", help="the market region the new simulated cars sell in (default US-CA)"
        )
        parser.add_argument(
            "--heartbeat-seconds",
            type=float,
            default=None,
            help="car seconds between heartbeats (default: 5 s of real time, at least 15 car seconds)",
        )
        parser.add_argument("--sample-minutes", type=float, default=30, help="car minutes between curve samples")
        parser.add_argument("--report", default="", help="write the availability curve as JSON to this file")
        parser.add_argument("--quiet", action="store_true", help="only print the curve at the end")
        parser.add_argument(
            "--start", default="", help="the cars' clock at the start, e.g. 2026-11-30T06:00, in --time-zone (default: "
            "now); days of the week matter: commuters stay home at weekends",
        )  # fmt: skip

    def handle(self, *args, **opts):
        if opts["vehicles"] < 1 or opts["speed"] <= 0:
            raise CommandError("--vehicles must be at least 1 and --speed above 0.")
        tz = zoneinfo.ZoneInfo(opts["time_zone"])
        try:
            start = datetime.fromisoformat(opts["start"]).replace(tzinfo=tz) if opts["start"] else None
        except ValueError:
            raise CommandError(f"--start: '{opts['start']}' is not a date and time such as 2026-11-30T06:00.") from None
        speed = opts["speed"]
        # Every 5 real seconds at least 15 car seconds apart: a fast clock must not flood the server.
        heartbeat = opts["heartbeat_seconds"] or max(15.0, 5.0 * speed)
        server = opts["server"].rstrip("/")
        self._wait_for(server)

        start = start or datetime.now(tz).replace(microsecond=0)
        cars = make_fleet(opts["vehicles"], opts["seed"], start=start, tz=tz)
        vehicles, credentials = self._register(cars, tz, opts["region"])
        stop = threading.Event()
        # Every car has its own model cache, as real cars do; the folder and all in it go when the command ends.
        with tempfile.TemporaryDirectory(prefix="idlefleet-sim-", ignore_cleanup_errors=True) as cache_root:
            agents = simulated_agents(
                cars, vehicles, credentials, server=server, start=start, speed=speed, heartbeat_seconds=heartbeat,
                cache_root=cache_root, stop=stop,
            )  # fmt: skip
            threads = [
                threading.Thread(target=a.run, name=f"agent-{v.pk}", daemon=True)
                for a, v in zip(agents, vehicles, strict=True)
            ]
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())

            if not opts["quiet"]:
                mix = ", ".join(f"{p}: {sum(c.persona == p for c in cars)}" for p in sorted({c.persona for c in cars}))
                self.stdout.write(
                    f"simulating {len(cars)} cars ({mix}) at {speed:g}× real time against {server}; "
                    f"heartbeat every {heartbeat:g} car seconds. Ctrl-C stops."
                )
            for thread in threads:
                thread.start()

            curve = self._sample(vehicles, SimClock(start, speed), tz, stop, opts)
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            for agent in agents:
                agent.client.close()
            sent = sum(a.heartbeats_sent for a in agents)
            self.stdout.write(
                f"fleet stopped: {sent} heartbeats, {sum(a.departures_sent for a in agents)} departure notices, "
                f"{sum(a.errors for a in agents)} errors"
            )
            if curve.samples != [0] * 24:
                self.stdout.write(curve.render())
            if opts["report"]:
                Path(opts["report"]).write_text(json.dumps(curve.as_dict(), indent=2) + "\n")

    def _wait_for(self, server: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{server}/healthz/", timeout=2):  # noqa: S310 - the operator's URL
                    return
            except OSError as error:
                if time.monotonic() > deadline:
                    raise CommandError(f"the server at {server} did not answer within {timeout:.0f} s") from error
                time.sleep(0.5)

    def _owners(self, count: int) -> list[User]:
        fleet_owner, created = User.objects.get_or_create(
            username=FLEET_OWNER, defaults={"email": f"{FLEET_OWNER}@demo.idlefleet.test", "role": Role.OWNER}
        )
        if created:
            fleet_owner.set_unusable_password()
            fleet_owner.save(update_fields=["password"])
        demo = {u.username: u for u in User.objects.filter(username__in=DEMO_OWNERS, role=Role.OWNER)}
        owners = [demo[name] for name in DEMO_OWNERS if name in demo] or [fleet_owner]
        return [owners[i % len(owners)] for i in range(count)]

    def _register(self, cars, tz, region: str = ""):
        """The simulated vehicles (made on first use, reused after) and a fresh credential for each."""
        hardware = {h.name: h for h in HardwareProfile.objects.filter(name__in=["HW3", "HW4"])}
        if len(hardware) < 2:
            raise CommandError("hardware profiles HW3 and HW4 are missing: run `manage.py migrate`.")
        vehicles, credentials = [], []
        for index, (car, owner) in enumerate(zip(cars, self._owners(len(cars)), strict=True)):
            name = f"Sim {index + 1:02d} · {car.persona.replace('_', ' ')}"
            vehicle = Vehicle.objects.filter(owner=owner, display_name=name).first()
            if vehicle is None:
                vehicle, credential = vehicle_register(
                    owner=owner,
                    display_name=name,
                    hardware=hardware["HW3" if index % 3 == 2 else "HW4"],  # a third are older HW3 cars
                    time_zone=str(tz),
                    region=region,
                    battery_capacity_kwh=car.profile.capacity_kwh,
                    is_simulated=True,
                )
            else:
                credential = credential_issue(vehicle=vehicle)
            vehicles.append(vehicle)
            credentials.append(credential)
        return vehicles, credentials

    def _sample(self, vehicles, clock: SimClock, tz, stop: threading.Event, opts) -> AvailabilityCurve:
        """Every --sample-minutes of car time, ask the platform which cars could work; until stop or --days."""
        curve = AvailabilityCurve()
        step = timedelta(minutes=opts["sample_minutes"])
        end = clock.now() + timedelta(days=opts["days"]) if opts["days"] else None
        # The first samples would count cars that have not sent their first heartbeat yet.
        next_sample = clock.now() + max(step, timedelta(seconds=3 * clock.rate))
        while not stop.is_set():
            if end is not None and clock.now() >= end:
                break
            if clock.now() >= next_sample:
                live = vehicles_live(list(Vehicle.objects.filter(pk__in=[v.pk for v in vehicles]).select_related(
                    "hardware", "policy")))  # fmt: skip
                available = [item for item in live if item.availability.available]
                curve.add(
                    hour=clock.now().astimezone(tz).hour,
                    cars=len(live),
                    available=len(available),
                    ch_int8=sum(item.availability.ch_offered.get("int8", 0.0) for item in available),
                )
                next_sample += step
            stop.wait(min(1.0, max(0.05, 30 / clock.rate)))
        return curve
