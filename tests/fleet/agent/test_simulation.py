"""The simulated cars behave like real owners' cars: what the availability curve and the demos rely on."""

from datetime import datetime, time, timedelta
from functools import cache
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from fleet.agent.simulation import DRIVING, HOME, PERSONAS, WORK, SimulatedCar, make_fleet

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY = datetime(2025, 3, 3, tzinfo=BERLIN)  # a week without a DST change
STEP = timedelta(minutes=15)
SEEDS = range(40)


@cache
def week_of(persona: str, seed: int) -> tuple[tuple[datetime, str, dict], ...]:
    """(time, location, state) every 15 minutes over one week, starting Monday 00:00 in Berlin."""
    car = SimulatedCar(persona, seed, MONDAY, BERLIN)
    samples = []
    moment = MONDAY
    while moment < MONDAY + timedelta(days=7):
        state = car.state(moment)
        samples.append((moment, car.location(moment), state))
        moment += STEP
    return tuple(samples)


def weekday_samples(persona: str, hour: int, minute: int = 0):
    for seed in SEEDS:
        for moment, location, state in week_of(persona, seed):
            if moment.weekday() < 5 and (moment.hour, moment.minute) == (hour, minute):
                yield location, state


def test_commuters_are_parked_at_home_at_3am_on_weekdays():
    samples = list(weekday_samples("commuter", 3))

    assert len(samples) == 5 * len(SEEDS)
    assert all(location == HOME and state["parked"] for location, state in samples)


def test_most_commuters_are_on_the_road_or_at_work_between_8_and_9_on_weekdays():
    samples = [s for minute in (0, 15, 30, 45) for s in weekday_samples("commuter", 8, minute)]

    away = sum(location in (DRIVING, WORK) for location, _ in samples)
    assert away / len(samples) > 0.6


def test_commuters_are_parked_at_work_at_11_on_weekdays():
    samples = list(weekday_samples("commuter", 11))

    at_work = [state for location, state in samples if location == WORK]
    assert len(at_work) / len(samples) > 0.85
    assert all(state["parked"] for state in at_work)


def test_some_workplaces_have_wifi_and_others_only_cellular():
    networks = {state["network"] for location, state in weekday_samples("commuter", 11) if location == WORK}

    assert networks == {"wifi", "cellular"}


def test_more_cars_are_parked_on_wifi_at_night_than_in_the_morning_peak():
    fleet = make_fleet(100, seed=7, start=MONDAY, tz=BERLIN)
    assert sum(car.persona == "commuter" for car in fleet) > 50

    on_wifi = {"night": [], "peak": []}
    moment = MONDAY
    while moment < MONDAY + timedelta(days=5):
        period = "night" if moment.hour == 3 else "peak" if time(7, 30) <= moment.time() <= time(9) else None
        for car in fleet:
            state = car.state(moment)  # every car moves forward through the week, so sample every car every step
            if period:
                on_wifi[period].append(state["parked"] and state["network"] == "wifi")
        moment += STEP
    night = sum(on_wifi["night"]) / len(on_wifi["night"])
    peak = sum(on_wifi["peak"]) / len(on_wifi["peak"])
    assert night > 0.85
    assert night - peak > 0.2


def test_homebodies_are_parked_more_than_90_percent_of_the_time():
    for seed in SEEDS:
        samples = week_of("homebody", seed)
        parked = sum(state["parked"] for _, _, state in samples)
        assert parked / len(samples) > 0.9


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_battery_stays_between_0_and_100_percent(persona):
    for seed in SEEDS:
        for _, _, state in week_of(persona, seed):
            assert 0 <= state["battery_pct"] <= 100


def test_a_plugged_in_car_charges_and_stops_at_its_limit():
    charged = 0
    for seed in SEEDS:
        samples = week_of("commuter", seed)
        for (_, _, before), (_, _, after) in pairwise(samples):
            if before["plugged_in"] and after["plugged_in"]:
                assert after["battery_pct"] >= before["battery_pct"]
                assert after["battery_pct"] <= 90.0 + 1e-6
                if before["battery_pct"] < 89:
                    assert after["battery_pct"] > before["battery_pct"]
                    assert before["charge_power_w"] >= 7000
                    charged += 1
    assert charged > 100


def test_a_car_that_is_not_plugged_in_draws_no_charge():
    for seed in SEEDS:
        for _, _, state in week_of("commuter", seed):
            if not state["plugged_in"]:
                assert state["charge_power_w"] == 0


def _unplugged_at_home(persona: str, moment: datetime) -> SimulatedCar:
    for seed in range(200):
        car = SimulatedCar(persona, seed, moment, BERLIN)
        state = car.state(moment)
        if (
            car.location(moment) == HOME
            and not state["plugged_in"]
            and car.location(moment + timedelta(hours=3)) == HOME
        ):
            return car
    raise AssertionError("no unplugged car found")


def test_compute_drains_the_battery_and_counts_the_energy_used_today():
    start = MONDAY + timedelta(hours=12)
    car = _unplugged_at_home("homebody", start)
    before = car.state(start)

    assert car.set_compute(1000) is True
    after = car.state(start + timedelta(hours=2))

    assert after["computing"] is True
    assert after["compute_power_w"] == 1000
    assert after["energy_used_today_wh"] == pytest.approx(2000)
    drained_kwh = (before["battery_pct"] - after["battery_pct"]) / 100 * before["battery_capacity_kwh"]
    assert drained_kwh == pytest.approx(2.0, abs=1e-3)


def test_the_daily_compute_energy_starts_again_at_local_midnight():
    start = MONDAY + timedelta(hours=22)
    car = SimulatedCar("commuter", 3, start, BERLIN)
    car.advance_to(start)
    car.set_compute(800)

    assert car.state(start + timedelta(hours=1, minutes=59))["energy_used_today_wh"] == pytest.approx(800 * 119 / 60)
    assert car.state(start + timedelta(hours=2, minutes=30))["energy_used_today_wh"] == pytest.approx(400)


def test_compute_stops_when_the_battery_runs_empty():
    start = MONDAY + timedelta(hours=12)
    car = _unplugged_at_home("homebody", start)
    car.advance_to(start)
    capacity_kwh = car.profile.capacity_kwh
    car.set_compute(20_000)

    state = car.state(start + timedelta(hours=capacity_kwh / 20 + 0.5))

    assert state["battery_pct"] == 0
    assert state["computing"] is False
    assert state["energy_used_today_wh"] == pytest.approx(car.profile.capacity_kwh * 0.55 * 1000, rel=0.5)


def test_compute_stops_when_the_car_drives_off():
    start = MONDAY + timedelta(hours=5)
    car = SimulatedCar("commuter", 1, start, BERLIN)
    car.advance_to(start)
    car.set_compute(500)
    departure = start + timedelta(seconds=car.seconds_until_departure(start))

    assert car.state(departure - timedelta(seconds=1))["computing"] is True
    driving = car.state(departure + timedelta(seconds=1))
    assert driving["parked"] is False
    assert driving["computing"] is False
    assert driving["plugged_in"] is False
    assert car.set_compute(500) is False


def test_the_same_seed_gives_the_same_week_whatever_the_step_size():
    coarse = week_of("commuter", 5)
    fine = SimulatedCar("commuter", 5, MONDAY, BERLIN)
    moment = MONDAY
    for sample_time, location, state in coarse:
        while moment < sample_time:
            moment += timedelta(minutes=1, seconds=7)
            fine.advance_to(min(moment, sample_time))
        assert fine.location(sample_time) == location
        fine_state = fine.state(sample_time)
        assert fine_state["battery_pct"] == pytest.approx(state["battery_pct"], abs=1e-3)
        assert {k: v for k, v in fine_state.items() if k != "battery_pct"} == {
            k: v for k, v in state.items() if k != "battery_pct"
        }
    week_of.cache_clear()
    assert week_of("commuter", 5) == coarse
    assert week_of("commuter", 6) != coarse


def test_seconds_until_departure_counts_down_to_the_moment_the_car_drives_off():
    start = MONDAY + timedelta(hours=4)
    car = SimulatedCar("commuter", 2, start, BERLIN)
    seconds = car.seconds_until_departure(start)
    assert seconds is not None and 0 < seconds < 6 * 3600
    departure = start + timedelta(seconds=seconds)

    just_before = departure - timedelta(seconds=10)
    assert car.seconds_until_departure(just_before) == pytest.approx(10)
    assert car.state(just_before)["parked"] is True

    just_after = departure + timedelta(seconds=1)
    assert car.state(just_after)["parked"] is False
    assert car.seconds_until_departure(just_after) is None


def test_the_state_has_exactly_the_heartbeat_fields_the_agent_does_not_add():
    state = SimulatedCar("rideshare", 1, MONDAY, BERLIN).state(MONDAY)

    assert set(state) == {
        "parked", "plugged_in", "charge_power_w", "battery_pct", "battery_capacity_kwh", "network",
        "bandwidth_down_mbps", "bandwidth_up_mbps", "latency_ms", "runtime_version", "models_cached", "computing",
        "compute_power_w", "energy_used_today_wh",
    }  # fmt: skip
    assert state["models_cached"] == []
    assert 60 <= state["battery_capacity_kwh"] <= 100


def test_home_wifi_is_in_the_range_of_real_home_connections():
    for seed in SEEDS:
        for _, location, state in week_of("homebody", seed):
            if location == HOME:
                assert state["network"] == "wifi"
                assert 40 <= state["bandwidth_down_mbps"] <= 810
                assert 8 <= state["bandwidth_up_mbps"] <= 46
                assert 4 <= state["latency_ms"] <= 46


def test_an_unknown_persona_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="commuter"):
        SimulatedCar("pilot", 1, MONDAY, BERLIN)


def test_a_simulated_car_cannot_be_read_in_its_past():
    car = SimulatedCar("commuter", 1, MONDAY, BERLIN)
    car.advance_to(MONDAY + timedelta(hours=1))

    with pytest.raises(ValueError, match="cannot go back"):
        car.state(MONDAY)
