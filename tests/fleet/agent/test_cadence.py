"""How often the agent heartbeats: as the platform asks (next_heartbeat_s, real seconds), at once when something that
matters changed, and with the departure notice never waiting for it."""

import math
from datetime import datetime, timedelta

import pytest

from fleet.agent import protocol
from fleet.agent.client import AgentUnavailable
from fleet.agent.clock import SimClock
from fleet.agent.runner import DEPARTURE_PATH, HEARTBEAT_PATH, LEASE_PATH, MAX_HEARTBEAT_INTERVAL_S, RENEW_PATH, Agent
from fleet.agent.simulation import SimulatedCar
from tests.fleet.agent.test_runner import BERLIN, MONDAY, FakePlatform, HandClock, IdleExecutor
from tests.fleet.agent.test_work_loop import RenewingPlatform, lease, long_unit_agent

NIGHT = MONDAY + timedelta(hours=3)
STEP_S = protocol.HEARTBEAT_SECONDS  # car seconds between steps, the agent's default
OMITTED = object()


class PacingPlatform(FakePlatform):
    """The fake platform of test_runner, answering heartbeats with `next_heartbeat_s` (left out when OMITTED)."""

    def __init__(self, next_heartbeat_s=protocol.IDLE_HEARTBEAT_SECONDS) -> None:
        super().__init__()
        self.next_heartbeat_s = next_heartbeat_s

    def post(self, path: str, payload: dict):
        status, body = super().post(path, payload)
        if path == HEARTBEAT_PATH:
            body = {"received_at": payload["observed_at"]}
            if self.next_heartbeat_s is not OMITTED:
                body["next_heartbeat_s"] = self.next_heartbeat_s
        return status, body

    def steps_with(self, path: str, steps: list[int]) -> list[int]:
        """The steps (by number) in which `path` was sent; `steps[i]` is len(calls) when step i began."""
        bounds = [*steps, len(self.calls)]
        return [i for i in range(len(steps)) if path in self.paths()[bounds[i] : bounds[i + 1]]]


class HandCar:
    """A car whose state the test sets: parked at home on WiFi, plugged in, never leaving."""

    def __init__(self) -> None:
        self.fields = {
            "parked": True,
            "plugged_in": True,
            "charge_power_w": 0.0,
            "battery_pct": 80.0,
            "battery_capacity_kwh": 60.0,
            "network": "wifi",
            "bandwidth_down_mbps": 100.0,
            "bandwidth_up_mbps": 20.0,
            "latency_ms": 30.0,
            "runtime_version": "1.20.1",
            "models_cached": [],
            "computing": False,
            "compute_power_w": 0.0,
            "energy_used_today_wh": 0.0,
        }

    def advance_to(self, now: datetime) -> None:
        pass

    def state(self, now: datetime) -> dict:
        return dict(self.fields)

    def seconds_until_departure(self, now: datetime) -> float | None:
        return None


def paced_agent(next_heartbeat_s=protocol.IDLE_HEARTBEAT_SECONDS, *, car=None, start=NIGHT, speed: float = 1.0):
    hand = HandClock()
    platform = PacingPlatform(next_heartbeat_s)
    car = car or HandCar()
    agent = Agent(platform, car, SimClock(start, speed, monotonic=hand), executor=IdleExecutor())
    return agent, platform, car, hand


def run_steps(agent, platform, hand, count: int, *, real_seconds: float = STEP_S, before_step=None) -> list[int]:
    """`count` steps, `real_seconds` apart; before_step(i) may change the car. Returns where each step's calls begin."""
    starts = []
    for number in range(count):
        if before_step is not None:
            before_step(number)
        starts.append(len(platform.calls))
        agent.step()
        hand.seconds += real_seconds
    return starts


def test_an_idle_car_asked_for_a_heartbeat_a_minute_sends_one_and_asks_for_work_once_every_four_steps():
    agent, platform, _, hand = paced_agent(60)

    starts = run_steps(agent, platform, hand, 12)

    assert platform.steps_with(HEARTBEAT_PATH, starts) == [0, 4, 8]
    assert platform.steps_with(LEASE_PATH, starts) == [0, 4, 8]
    assert platform.paths() == [HEARTBEAT_PATH, LEASE_PATH] * 3
    assert agent.heartbeats_sent == 3 and agent.lease_requests == 3
    assert agent.heartbeats_skipped == 9
    assert agent.errors == 0


def test_a_car_asked_for_a_heartbeat_every_15_seconds_sends_one_and_asks_for_work_every_step():
    agent, platform, _, hand = paced_agent(15)

    starts = run_steps(agent, platform, hand, 8)

    assert platform.steps_with(HEARTBEAT_PATH, starts) == list(range(8))
    assert platform.steps_with(LEASE_PATH, starts) == list(range(8))
    assert agent.heartbeats_skipped == 0


@pytest.mark.parametrize("answer", [OMITTED, None, 0, -60, "60", True, math.nan, math.inf])
def test_an_answer_without_a_usable_interval_means_a_heartbeat_every_step_as_before(answer):
    agent, platform, _, hand = paced_agent(answer)

    starts = run_steps(agent, platform, hand, 6)

    assert platform.steps_with(HEARTBEAT_PATH, starts) == list(range(6))
    assert platform.steps_with(LEASE_PATH, starts) == list(range(6))
    assert agent.heartbeats_skipped == 0


def test_a_very_long_interval_is_cut_to_the_agents_maximum():
    agent, platform, _, hand = paced_agent(24 * 3600)
    steps = int(MAX_HEARTBEAT_INTERVAL_S // STEP_S)  # 40 steps of 15 s: ten minutes

    starts = run_steps(agent, platform, hand, steps + 2)

    assert platform.steps_with(HEARTBEAT_PATH, starts) == [0, steps]


@pytest.mark.parametrize(
    ("field", "value", "asks_for_work"),
    [
        ("plugged_in", False, True),
        ("network", "cellular", False),  # never work over cellular
        ("parked", False, False),
        ("computing", True, True),
    ],
)
def test_a_change_that_matters_is_sent_in_the_next_step_even_mid_interval(field, value, asks_for_work):
    agent, platform, car, hand = paced_agent(60)

    def change_at_step_2(number):
        if number == 2:
            car.fields[field] = value

    starts = run_steps(agent, platform, hand, 8, before_step=change_at_step_2)

    # The change goes out at once (step 2, 30 s into a 60 s interval); the next heartbeat is 60 s after that one.
    assert platform.steps_with(HEARTBEAT_PATH, starts) == [0, 2, 6]
    beats = [payload for path, payload in platform.calls if path == HEARTBEAT_PATH]
    assert [beat[field] for beat in beats][1:] == [value, value]
    assert platform.steps_with(LEASE_PATH, starts) == ([0, 2, 6] if asks_for_work else [0])


def test_a_change_of_a_reading_that_does_not_matter_waits_for_the_interval():
    agent, platform, car, hand = paced_agent(60)

    def drain_battery(number):
        car.fields["battery_pct"] -= 0.5
        car.fields["bandwidth_down_mbps"] += 1

    starts = run_steps(agent, platform, hand, 8, before_step=drain_battery)

    assert platform.steps_with(HEARTBEAT_PATH, starts) == [0, 4]


def test_a_departure_is_announced_in_the_step_before_the_car_drives_even_while_idle():
    probe = SimulatedCar("commuter", 2, MONDAY + timedelta(hours=4), BERLIN)
    departure = probe.next_departure(MONDAY + timedelta(hours=4))
    start = departure - timedelta(seconds=100)
    agent, platform, _, hand = paced_agent(60, car=SimulatedCar("commuter", 2, start, BERLIN), start=start)

    starts = run_steps(agent, platform, hand, 12)

    # Steps at -100 (heartbeat), -85, -70, -55 (none), -40 (heartbeat), -25 (none), -10: the notice, mid-interval.
    assert platform.steps_with(DEPARTURE_PATH, starts) == [6]
    assert platform.paths()[starts[6] : starts[7]] == [DEPARTURE_PATH]
    assert agent.departures_sent == 1
    notice = platform.paths().index(DEPARTURE_PATH)
    observed = datetime.fromisoformat(platform.calls[notice][1]["observed_at"])
    assert departure - timedelta(seconds=15) <= observed < departure
    # The next step sees the car driving: that heartbeat goes out at once, and no work is asked for any more.
    assert 7 in platform.steps_with(HEARTBEAT_PATH, starts)
    first_driving = next(
        i for i, (path, body) in enumerate(platform.calls) if path == HEARTBEAT_PATH and not body["parked"]
    )
    assert notice < first_driving < starts[8]
    assert LEASE_PATH not in platform.paths()[notice:]


def test_a_fast_clock_counts_the_platforms_real_seconds_in_car_seconds():
    # 60 car seconds per real second: 1.0 real second is 60 car seconds, four steps of 15 car seconds.
    agent, platform, _, hand = paced_agent(1.0, speed=60)

    starts = run_steps(agent, platform, hand, 12, real_seconds=STEP_S / 60)

    assert platform.steps_with(HEARTBEAT_PATH, starts) == [0, 4, 8]
    assert platform.steps_with(LEASE_PATH, starts) == [0, 4, 8]
    assert agent.heartbeats_skipped == 9


def test_a_fast_clock_told_a_quarter_second_beats_every_step():
    agent, platform, _, hand = paced_agent(0.25, speed=60)

    starts = run_steps(agent, platform, hand, 6, real_seconds=STEP_S / 60)

    assert platform.steps_with(HEARTBEAT_PATH, starts) == list(range(6))


@pytest.mark.parametrize(("answer", "heartbeat_steps"), [(15, list(range(8))), (60, [0, 4])])
def test_a_car_clock_that_stands_still_does_not_silence_the_car(answer, heartbeat_steps):
    agent, platform, _, hand = paced_agent(answer)

    starts = run_steps(agent, platform, hand, 8, real_seconds=0)  # steps go on, the car's clock does not

    assert platform.steps_with(HEARTBEAT_PATH, starts) == heartbeat_steps


def test_a_car_clock_set_back_does_not_silence_the_car():
    agent, platform, _, hand = paced_agent(60)

    def set_back_an_hour_at_step_2(number):
        if number == 2:
            hand.seconds -= 3600

    starts = run_steps(agent, platform, hand, 12, before_step=set_back_an_hour_at_step_2)

    assert platform.steps_with(HEARTBEAT_PATH, starts) == [0, 4, 8]


def test_a_heartbeat_that_did_not_get_through_is_tried_again_in_the_next_step():
    agent, platform, _, hand = paced_agent(60)

    def fail_at_step_4(number):
        if number == 4:
            platform.failures[HEARTBEAT_PATH] = [AgentUnavailable("down")]

    starts = run_steps(agent, platform, hand, 10, before_step=fail_at_step_4)

    # Step 4's heartbeat failed (it is recorded, then raised): step 5 sends it; the next is due 60 s after that.
    assert platform.steps_with(HEARTBEAT_PATH, starts) == [0, 4, 5, 9]
    assert agent.heartbeats_sent == 3 and agent.errors == 1
    assert platform.steps_with(LEASE_PATH, starts) == [0, 5, 9]


def test_heartbeats_go_on_every_heartbeat_interval_while_a_unit_runs_whatever_the_platform_suggests(tmp_path):
    class IdlePacingPlatform(RenewingPlatform):
        def post(self, path, payload):
            status, body = super().post(path, payload)
            if path == HEARTBEAT_PATH:
                body = {**body, "next_heartbeat_s": protocol.IDLE_HEARTBEAT_SECONDS}
            return status, body

    platform = IdlePacingPlatform(lease(lease_seconds=0.6))
    agent, _ = long_unit_agent(tmp_path, platform, seconds=1.2)

    agent.step()

    heartbeats = platform.sent(HEARTBEAT_PATH)
    assert len(heartbeats) >= 4  # the step's own, then one every 0.2 s while the unit ran
    assert any(beat["computing"] for beat in heartbeats[1:])
    assert RENEW_PATH in platform.paths() and agent.units_done == 1
