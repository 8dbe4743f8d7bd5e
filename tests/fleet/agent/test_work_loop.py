"""The agent's work loop: lease a unit, run it with the real Executor (a tiny ONNX model), report result or failure."""

import base64
import hashlib
import io
import logging
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleet.agent.client import AgentHTTPError, AgentUnavailable
from fleet.agent.clock import SimClock
from fleet.agent.executor import ArtifactCache, Executor
from fleet.agent.inference import decode_npy
from fleet.agent.runner import (
    DEPARTURE_PATH,
    FAILURE_PATH,
    HARDWARE_PATH,
    HEARTBEAT_PATH,
    LEASE_PATH,
    RENEW_PATH,
    RESULT_PATH,
    Agent,
)
from fleet.agent.simulation import SimulatedCar

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = datetime(2025, 3, 3, 3, tzinfo=BERLIN)  # Monday 03:00: the commuter (seed 2) is parked at home on WiFi
POWER_W = 75.0


def tiny_model() -> tuple[bytes, np.ndarray]:
    """softmax(x @ W) for x [N, 4], W [4, 3]."""
    weights = np.random.default_rng(7).normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 3])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString(), weights


MODEL, WEIGHTS = tiny_model()
MODEL_SHA = hashlib.sha256(MODEL).hexdigest()
MODEL_URL = f"/api/v1/agent/artifacts/{MODEL_SHA}/"
ITEMS = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)


def expected_outputs() -> np.ndarray:
    logits = ITEMS @ WEIGHTS
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def lease(number: int = 1, **changes) -> dict:
    buffer = io.BytesIO()
    np.save(buffer, ITEMS, allow_pickle=False)
    body = {
        "unit_id": f"unit-{number}",
        "lease_id": f"lease-{number}",
        "model_sha256": MODEL_SHA,
        "model_url": MODEL_URL,
        "model_size": len(MODEL),
        "kind": "tensor",
        "output_name": "probs",
        "tokenizer_sha256": None,
        "tokenizer_url": None,
        "items_npy_b64": base64.b64encode(buffer.getvalue()).decode(),
        "batch_size": 2,
        "precision": "fp32",
    }
    body.update(changes)
    return body


class WorkPlatform:
    """A fake platform: records every request; `leases` are the answers to lease requests in turn (204 once they run
    out); `failures[path]` are exceptions raised, one per call, before answering again; `files` are served by GET."""

    def __init__(self, *leases: dict | None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.hardware: list[dict] = []
        self.leases = list(leases)
        self.failures: dict[str, list[Exception]] = {}
        self.files = {MODEL_URL: MODEL}
        self.downloads: list[str] = []

    def post(self, path: str, payload: dict):
        if path == HARDWARE_PATH:  # the compute report, sent once before the first heartbeat: kept apart
            self.hardware.append(payload)
            return 200, {"compute_class": "x86_64-avx2", "description": "x86-64 with AVX2, no VNNI"}
        self.calls.append((path, payload))
        if self.failures.get(path):
            raise self.failures[path].pop(0)
        if path == HEARTBEAT_PATH:
            return 200, {"received_at": payload["observed_at"], "next_heartbeat_s": 15}
        if path == DEPARTURE_PATH:
            return 200, {"released_work_units": 0}
        if path == LEASE_PATH:
            return (200, self.leases.pop(0)) if self.leases else (204, None)
        if path == RESULT_PATH:
            return 200, {"accepted": True}
        if path == FAILURE_PATH:
            return 200, {}
        raise AssertionError(f"unexpected POST {path}")

    def get_bytes(self, path: str, *, max_bytes: int) -> bytes:
        self.downloads.append(path)
        data = self.files[path]
        assert len(data) <= max_bytes
        return data

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]

    def sent(self, path: str) -> list[dict]:
        return [payload for sent_path, payload in self.calls if sent_path == path]


class SpyCar:
    """A SimulatedCar that records set_compute calls."""

    def __init__(self, car: SimulatedCar) -> None:
        self.car = car
        self.compute_calls: list[float] = []

    def advance_to(self, now):
        self.car.advance_to(now)

    def state(self, now):
        return self.car.state(now)

    def seconds_until_departure(self, now):
        return self.car.seconds_until_departure(now)

    def set_compute(self, power_w: float) -> bool:
        self.compute_calls.append(power_w)
        return self.car.set_compute(power_w)


class PlainCar(SpyCar):
    """A car that cannot account for compute power: no set_compute at all."""

    set_compute = None


class WatchedExecutor(Executor):
    """The real Executor, noting whether the car said it was computing while each unit ran."""

    def __init__(self, *args, car: SpyCar, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.car = car
        self.computing_while_running: list[bool] = []

    def run(self, unit, **kwargs):
        self.computing_while_running.append(self.car.car.computing)
        return super().run(unit, **kwargs)


class HandClock:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


@pytest.fixture
def make_agent(tmp_path):
    def make(*leases, start: datetime = NIGHT, car_class=SpyCar, with_executor: bool = True):
        hand = HandClock()
        platform = WorkPlatform(*leases)
        car = car_class(SimulatedCar("commuter", 2, start, BERLIN))
        executor = None
        if with_executor:
            cache = ArtifactCache(tmp_path / "cache", 64 * 1024 * 1024)
            executor = WatchedExecutor(platform, cache, threads=1, power_w=POWER_W, car=car)
        agent = Agent(platform, car, SimClock(start, 1.0, monotonic=hand), executor=executor)
        return agent, platform, car, hand

    return make


def test_a_leased_unit_runs_and_its_result_is_posted(make_agent):
    agent, platform, _, _ = make_agent(lease())

    agent.step()

    assert platform.paths() == [HEARTBEAT_PATH, LEASE_PATH, RESULT_PATH]
    (result,) = platform.sent(RESULT_PATH)
    assert (result["unit_id"], result["lease_id"]) == ("unit-1", "lease-1")
    output_npy = base64.b64decode(result["output_npy_b64"])
    assert hashlib.sha256(output_npy).hexdigest() == result["output_sha256"]
    np.testing.assert_allclose(decode_npy(output_npy), expected_outputs(), rtol=1e-5, atol=1e-6)
    assert result["items"] == len(ITEMS)
    assert agent.units_done == 1
    assert agent.units_failed == 0
    assert agent.errors == 0
    assert platform.downloads == [MODEL_URL]


def test_the_car_reports_computing_while_the_unit_runs_and_stops_after(make_agent):
    agent, platform, car, hand = make_agent(lease())

    agent.step()

    assert car.compute_calls == [POWER_W, 0.0]
    assert agent.executor.computing_while_running == [True]
    assert not car.car.computing
    # The heartbeat went out before the unit ran (not computing yet); the next one says the car stopped again.
    hand.seconds += 15
    agent.step()
    first, second = platform.sent(HEARTBEAT_PATH)
    assert first["computing"] is False
    assert second["computing"] is False
    assert second["compute_power_w"] == 0


def test_heartbeats_report_the_models_in_the_cache(make_agent):
    agent, platform, _, hand = make_agent(lease(1), lease(2))

    agent.step()
    hand.seconds += 15
    agent.step()  # the second unit uses the cached model
    hand.seconds += 15
    agent.step()

    heartbeats = platform.sent(HEARTBEAT_PATH)
    assert heartbeats[0]["models_cached"] == []
    assert heartbeats[1]["models_cached"] == [MODEL_SHA]
    assert heartbeats[2]["models_cached"] == [MODEL_SHA]
    assert platform.downloads == [MODEL_URL]
    assert [payload["unit_id"] for payload in platform.sent(RESULT_PATH)] == ["unit-1", "unit-2"]
    assert agent.units_done == 2


def test_one_unit_per_step(make_agent):
    agent, platform, _, _ = make_agent(lease(1), lease(2), lease(3))

    agent.step()

    assert platform.paths().count(LEASE_PATH) == 1
    assert agent.units_done == 1
    assert len(platform.leases) == 2


def test_a_corrupted_model_is_reported_as_a_failure_not_a_result(make_agent):
    agent, platform, car, _ = make_agent(lease())
    platform.files[MODEL_URL] = MODEL[:-1] + bytes([MODEL[-1] ^ 0xFF])

    agent.step()

    assert RESULT_PATH not in platform.paths()
    (failure,) = platform.sent(FAILURE_PATH)
    assert (failure["unit_id"], failure["lease_id"]) == ("unit-1", "lease-1")
    assert "sha256 mismatch" in failure["error"]
    assert agent.units_failed == 1
    assert agent.units_done == 0
    assert agent.errors == 0
    assert car.compute_calls == [POWER_W, 0.0]
    assert agent.executor.cache.holds() == []


def test_a_malformed_lease_is_reported_and_the_agent_carries_on(make_agent):
    agent, platform, _, hand = make_agent(lease(1, batch_size=0), lease(2))

    agent.step()

    assert RESULT_PATH not in platform.paths()
    (failure,) = platform.sent(FAILURE_PATH)
    assert (failure["unit_id"], failure["lease_id"]) == ("unit-1", "lease-1")
    assert failure["error"].startswith("malformed lease: batch_size:")
    assert agent.units_failed == 1
    assert agent.errors == 0
    assert platform.downloads == []

    hand.seconds += 15
    agent.step()

    assert [payload["unit_id"] for payload in platform.sent(RESULT_PATH)] == ["unit-2"]
    assert agent.units_done == 1
    assert not agent.stop.is_set()


@pytest.mark.parametrize("body", [None, [], {"kind": "tensor"}, {"unit_id": "u", "lease_id": 7}])
def test_a_lease_that_names_no_unit_is_dropped_without_a_failure_report(make_agent, body, caplog):
    agent, platform, car, _ = make_agent(body)

    with caplog.at_level(logging.ERROR, logger="idlefleet.agent"):
        agent.step()

    assert platform.paths() == [HEARTBEAT_PATH, LEASE_PATH]
    assert "malformed lease" in caplog.text
    assert agent.units_failed == 1
    assert agent.errors == 0
    assert car.compute_calls == []


def test_a_result_for_a_lease_no_longer_ours_is_dropped_quietly(make_agent, caplog):
    agent, platform, car, hand = make_agent(lease(1), lease(2))
    gone = {"code": "lease_expired", "message": "This lease is no longer yours.", "fields": {}}
    platform.failures[RESULT_PATH] = [AgentHTTPError(409, gone)]

    with caplog.at_level(logging.INFO, logger="idlefleet.agent"):
        agent.step()

    assert "lease no longer ours" in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert agent.units_done == 0
    assert agent.results_refused == 1
    assert agent.errors == 0
    assert not agent.stop.is_set()
    assert car.compute_calls == [POWER_W, 0.0]

    hand.seconds += 15
    agent.step()
    assert agent.units_done == 1


def test_a_failure_for_a_lease_no_longer_ours_is_dropped_quietly(make_agent):
    agent, platform, _, _ = make_agent(lease())
    platform.files[MODEL_URL] = b"not the model"
    platform.failures[FAILURE_PATH] = [AgentHTTPError(409, {"code": "lease_expired", "message": "", "fields": {}})]

    agent.step()

    assert agent.units_failed == 1
    assert agent.results_refused == 1
    assert agent.errors == 0


def test_an_unreachable_platform_when_reporting_is_an_error_and_compute_stops(make_agent):
    agent, platform, car, _ = make_agent(lease())
    platform.failures[RESULT_PATH] = [AgentUnavailable("down")]

    agent.step()

    assert agent.errors == 1
    assert agent.units_done == 0
    assert car.compute_calls == [POWER_W, 0.0]
    assert not car.car.computing


def test_no_work_is_asked_for_on_cellular_or_while_driving(make_agent):
    agent, platform, _, _ = make_agent(lease())

    agent.poll_work({"parked": True, "network": "cellular"})
    agent.poll_work({"parked": True, "network": "none"})
    agent.poll_work({"parked": False, "network": "wifi"})

    assert platform.calls == []
    assert agent.lease_requests == 0


def test_no_work_is_asked_for_without_an_executor(make_agent):
    agent, platform, _, _ = make_agent(lease(), with_executor=False)

    agent.step()

    assert platform.paths() == [HEARTBEAT_PATH]
    assert platform.sent(HEARTBEAT_PATH)[0]["models_cached"] == []


def test_no_unit_runs_in_the_step_that_announces_a_departure(make_agent):
    probe = SimulatedCar("commuter", 2, NIGHT, BERLIN)
    departure = probe.next_departure(NIGHT)
    agent, platform, car, _ = make_agent(lease(), start=departure - timedelta(seconds=10))

    agent.step()

    assert platform.paths() == [DEPARTURE_PATH, HEARTBEAT_PATH]
    assert car.compute_calls == []
    assert agent.units_done == 0


def test_a_car_without_set_compute_still_runs_units(make_agent):
    agent, platform, _, _ = make_agent(lease(), car_class=PlainCar)

    agent.step()

    assert agent.units_done == 1
    assert platform.paths() == [HEARTBEAT_PATH, LEASE_PATH, RESULT_PATH]


# --- While a unit runs: heartbeats, lease renewals, and stopping it ---------------------------------------------------


class LongUnitExecutor(Executor):
    """The real Executor, on a car slow enough that the unit takes `seconds` of real time (it waits between batches
    on the agent's cancel event, as the real slowdown does, so a cancel stops it at once)."""

    def __init__(self, *args, seconds: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = seconds

    def _infer(self, runner, unit, cancel=None):
        from fleet.agent.executor import UnitCancelled

        if cancel is not None and cancel.wait(self.seconds):
            raise UnitCancelled
        return super()._infer(runner, unit, cancel)


class RenewingPlatform(WorkPlatform):
    """Answers lease renewals (200, or 409 once `lose_lease_after` renewals were granted)."""

    def __init__(self, *leases, lose_lease_after: int | None = None) -> None:
        super().__init__(*leases)
        self.lose_lease_after = lose_lease_after

    def post(self, path, payload):
        if path == RENEW_PATH:
            self.calls.append((path, payload))
            if self.lose_lease_after is not None and len(self.sent(RENEW_PATH)) > self.lose_lease_after:
                raise AgentHTTPError(409, {"code": "lease_lost", "message": "this lease is no longer yours"})
            return 200, {"lease_seconds": 0.6}
        return super().post(path, payload)


def long_unit_agent(tmp_path, platform, *, seconds: float, start: datetime = NIGHT, speed: float = 1.0,
                    heartbeat_seconds: float = 0.2):  # fmt: skip
    car = SpyCar(SimulatedCar("commuter", 2, start, BERLIN))
    executor = LongUnitExecutor(platform, ArtifactCache(tmp_path / "cache", 64 * 1024 * 1024), seconds=seconds)
    # A real clock here (SimClock on time.monotonic): the keeper thread waits in real time.
    agent = Agent(platform, car, SimClock(start, speed), executor=executor, heartbeat_seconds=heartbeat_seconds)
    return agent, car


def test_heartbeats_and_lease_renewals_go_on_while_a_long_unit_runs(tmp_path):
    platform = RenewingPlatform(lease(lease_seconds=0.6))
    agent, _ = long_unit_agent(tmp_path, platform, seconds=1.2)

    agent.step()

    heartbeats = platform.sent(HEARTBEAT_PATH)
    assert len(heartbeats) >= 4  # the step's own, then one every 0.2 s while the unit ran
    assert any(beat["computing"] for beat in heartbeats[1:])  # a working car says so: it is never taken for gone
    renewals = platform.sent(RENEW_PATH)
    assert len(renewals) >= 3 and agent.lease_renewals == len(renewals)  # every third of the 0.6 s lease
    assert renewals[0] == {"unit_id": "unit-1", "lease_id": "lease-1"}
    assert platform.paths()[-1] == RESULT_PATH and agent.units_done == 1


def test_a_lease_the_platform_took_back_stops_the_unit_and_nothing_is_reported(tmp_path):
    platform = RenewingPlatform(lease(lease_seconds=0.6), lose_lease_after=1)
    agent, car = long_unit_agent(tmp_path, platform, seconds=30)

    started = time.monotonic()
    agent.step()

    assert time.monotonic() - started < 5  # stopped at the second renewal, not after 30 s
    assert agent.units_stopped == 1 and agent.units_done == agent.units_failed == 0
    assert RESULT_PATH not in platform.paths() and FAILURE_PATH not in platform.paths()
    assert car.compute_calls[-1] == 0.0  # and the car stops drawing power


def test_a_car_that_leaves_during_a_unit_announces_it_and_stops_the_unit(tmp_path):
    probe = SimulatedCar("commuter", 2, NIGHT, BERLIN)
    departure = probe.next_departure(NIGHT + timedelta(hours=1))
    platform = RenewingPlatform(lease(lease_seconds=600))
    # 60 car seconds per real second: the car drives off about half a real second into a unit of 30 s.
    agent, _ = long_unit_agent(
        tmp_path, platform, seconds=30, start=departure - timedelta(seconds=40), speed=60, heartbeat_seconds=15
    )

    started = time.monotonic()
    agent.step()

    assert time.monotonic() - started < 5
    assert platform.paths().count(DEPARTURE_PATH) == 1
    assert agent.units_stopped == 1
    assert RESULT_PATH not in platform.paths() and FAILURE_PATH not in platform.paths()


def test_the_car_reports_its_compute_once_before_its_first_heartbeat(make_agent):
    agent, platform, _, hand = make_agent()

    agent.step()
    assert len(platform.hardware) == 1 and platform.paths()[0] == HEARTBEAT_PATH
    hand.seconds += 15
    agent.step()

    assert len(platform.hardware) == 1
    report = platform.hardware[0]
    assert set(report) == {"arch", "isa", "cpu_model", "cpus", "accelerator", "providers", "runtime_version", "fp8"}
    assert agent.hardware_reported["compute_class"] == "x86_64-avx2"  # what the (fake) platform answered


def test_a_compute_report_the_platform_cannot_take_now_is_sent_again_and_heartbeats_go_on(make_agent):
    agent, platform, _, hand = make_agent()
    platform.failures[HARDWARE_PATH] = [AgentUnavailable("down"), AgentHTTPError(400, {"code": "invalid"})]

    def post(path, payload, post=platform.post):  # the fake records reports apart: route failures through it
        if path == HARDWARE_PATH and platform.failures[HARDWARE_PATH]:
            raise platform.failures[HARDWARE_PATH].pop(0)
        return post(path, payload)

    platform.post = post
    agent.step()  # unavailable: asked again next step
    hand.seconds += 15
    agent.step()  # refused (400): not sent again
    hand.seconds += 15
    agent.step()

    assert platform.hardware == []
    assert agent.hardware_reported == {}
    assert len(platform.sent(HEARTBEAT_PATH)) == 3
