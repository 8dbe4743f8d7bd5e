"""Real agents (the code that runs in a car) in this process, talking to Django's live server over signed HTTP."""

from __future__ import annotations

import threading
import zoneinfo
from datetime import UTC, datetime

from django.core.management import call_command

from fleet.agent.client import AgentClient
from fleet.agent.executor import ArtifactCache, Executor
from fleet.agent.runner import Agent
from fleet.agent.simulation import SimulatedCar
from fleet.models import OptInPolicy
from marketplace.models import InferenceModel
from tests.factories import OwnerFactory, vehicle_with_credential

NIGHT_ZONES = (
    "Pacific/Honolulu", "America/Los_Angeles", "America/Denver", "America/New_York", "America/Halifax",
    "Atlantic/Azores", "Europe/London", "Europe/Berlin", "Asia/Dubai", "Asia/Kolkata", "Asia/Shanghai", "Asia/Tokyo",
    "Australia/Sydney", "Pacific/Auckland",
)  # fmt: skip


def night_zone() -> zoneinfo.ZoneInfo:
    """A time zone where it is between 01:00 and 05:00 now: every simulated homebody is parked at home on WiFi."""
    for name in NIGHT_ZONES:
        zone = zoneinfo.ZoneInfo(name)
        if 1 <= datetime.now(UTC).astimezone(zone).hour <= 4:
            return zone
    raise AssertionError("no listed time zone is between 01:00 and 05:00 now")


class NightClock:
    """The car's clock: real time in the car's time zone, at the car's real pace. The agent's loop is stepped by the
    test (sleep returns at once), while its keeper thread, which heartbeats and renews leases during a unit, waits in
    real time."""

    rate = 1.0

    def __init__(self, tz: zoneinfo.ZoneInfo) -> None:
        self.tz = tz

    def now(self) -> datetime:
        return datetime.now(self.tz)

    def sleep(self, car_seconds: float, stop: threading.Event) -> bool:
        return stop.is_set()


class StillClock:
    """The car's clock stopped at `now` (a simulated car's fixed hour, e.g. Sunday night at home); sleep returns at
    once, so the test steps the agent's loop itself."""

    rate = 1.0

    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current

    def sleep(self, car_seconds: float, stop: threading.Event) -> bool:
        return stop.is_set()


def digits_model_with_builds(client, digits_onnx: bytes, *, items: int = 100) -> tuple[InferenceModel, int]:
    """The logged-in customer's digits classifier, uploaded as on the web site, with a first dataset of `items`
    digits that calibrates its builds; returns the model once its four precision variants are ready, and the
    dataset's id."""
    import io

    import numpy as np
    from django.core.files.uploadedfile import SimpleUploadedFile

    from marketplace.inference.catalogue import DIGITS_OUTPUT, digits_items
    from tests.waiting import wait_for

    model_id = client.post(
        "/api/v1/models/",
        {"name": "digits", "onnx_file": SimpleUploadedFile("d.onnx", digits_onnx), "output_name": DIGITS_OUTPUT,
         "metric": "top1", "tolerance": 0.95},
    ).json()["id"]  # fmt: skip
    assert wait_for(lambda: InferenceModel.objects.get(pk=model_id).status == "ready", timeout=60)
    buffer = io.BytesIO()
    np.save(buffer, digits_items(items), allow_pickle=False)
    response = client.post(
        f"/api/v1/models/{model_id}/datasets/", {"file": SimpleUploadedFile("d.npy", buffer.getvalue())}
    )
    assert response.status_code == 201, response.content
    model = InferenceModel.objects.get(pk=model_id)
    assert wait_for(lambda: model.variants.filter(status="ready").count() == 4, timeout=120)
    return model, response.json()["id"]


def catalogue_minilm(documents: int = 100) -> InferenceModel:
    """The catalogue as `make demo` registers it (MiniLM from its PyPI package, with its variants), and its MiniLM."""
    call_command("catalogue_sync", documents=documents)
    return InferenceModel.objects.get(is_catalogue=True, kind=InferenceModel.Kind.TEXT)


def parked_agent(
    live_server, tmp_path, *, name: str, hardware_name: str = "HW4", tz: zoneinfo.ZoneInfo, clock=None, seed: int = 5,
    battery_floor_pct: int = 10, **executor_options,
):  # fmt: skip
    """A registered car (a homebody, parked at home on WiFi at night) and its agent, ready to step."""
    vehicle, credential = vehicle_with_credential(
        OwnerFactory(username=name), name=f"{name}'s car", hardware_name=hardware_name, time_zone=str(tz)
    )
    OptInPolicy.objects.filter(vehicle=vehicle).update(battery_floor_pct=battery_floor_pct)
    http = AgentClient(live_server.url, credential)
    executor = Executor(http, ArtifactCache(tmp_path / name, max_bytes=500_000_000), **executor_options)
    clock = clock or NightClock(tz)
    agent = Agent(http, SimulatedCar("homebody", seed, clock.now(), tz), clock, executor=executor)
    return vehicle, agent


def until_next_heartbeat(agent, *, steps: int = 10) -> None:
    """Step the agent until it sends its next heartbeat (and, with it, asks for work): a car the platform asked to
    heartbeat rarely (it held no work) does so a few steps later, not at once (fleet.agent.runner)."""
    sent = agent.heartbeats_sent
    for _ in range(steps):
        agent.step()
        if agent.heartbeats_sent > sent:
            return
    raise AssertionError(f"no heartbeat in {steps} steps")
