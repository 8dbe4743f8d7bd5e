"""availability_get: why a car cannot work, and what it can offer when it can."""

from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.availability import (
    CarState,
    Hardware,
    Policy,
    Window,
    availability_get,
)

BERLIN = ZoneInfo("Europe/Berlin")
WED, THU, SAT, SUN, MON = 2, 3, 5, 6, 0
NOW = datetime(2025, 1, 15, 22, 0, tzinfo=BERLIN)  # a Wednesday evening
HOUR = 3600.0

# An HW4-like computer: 245 INT8 TOPS at 100 W; FP16 at half speed, no FP8.
HW4 = Hardware(int8_tops=245, factors={"int8": 1.0, "fp16": 0.5, "fp32": 0.125}, typical_power_w=100, max_power_w=160)
# A hungrier computer, so that battery and charger limits show within hours.
BIG = Hardware(int8_tops=1000, factors={"int8": 1.0, "fp8": 2.0}, typical_power_w=800, max_power_w=1000)
POLICY = Policy(battery_floor_pct=60, max_energy_kwh_per_day=5.0, max_power_w=1000)
STATE = CarState(
    observed_at=NOW,
    heartbeat_age_s=5,
    parked=True,
    plugged_in=False,
    charge_power_w=0,
    battery_pct=80,
    battery_capacity_kwh=75,
    network="wifi",
    energy_used_today_kwh=0,
)


def offer(*, hardware=HW4, policy=POLICY, state=STATE, status="active", parked_s=8 * HOUR, **changes):
    """What the car offers; keyword changes go to the car state or the policy, whichever has the field."""
    state_changes = {k: v for k, v in changes.items() if hasattr(state, k)}
    policy_changes = {k: v for k, v in changes.items() if k not in state_changes}
    return availability_get(
        hardware=hardware,
        policy=replace(policy, **policy_changes),
        state=replace(state, **state_changes),
        vehicle_status=status,
        tz=BERLIN,
        parked_seconds_left=parked_s,
    )


def test_a_parked_car_on_wifi_with_battery_to_spare_is_available():
    result = offer()
    assert result.available
    assert result.reasons == ()
    assert result.power_w == 100
    assert result.hours_offered == pytest.approx(8)
    assert result.limited_by == "departure"
    assert result.ch_offered == pytest.approx({"int8": 8 * 2.45, "fp16": 8 * 1.225, "fp32": 8 * 0.30625})
    assert result.energy_kwh == pytest.approx(0.8)


# --- Every reason a car is not available -------------------------------------------------------------------------


def test_battery_below_floor_says_so_with_numbers():
    result = offer(battery_pct=41)
    assert not result.available
    assert "battery 41% is below your 60% floor" in result.reasons


def test_battery_just_under_floor_never_reads_as_at_the_floor():
    assert "battery 59.9% is below your 60% floor" in offer(battery_pct=59.96).reasons


def test_idle_car_just_above_floor_waits_for_the_start_margin():
    result = offer(battery_pct=61)
    assert not result.available
    assert "battery 61% is within 2% of your 60% floor: work starts at 62%" in result.reasons


def test_computing_car_just_above_floor_keeps_working():
    result = offer(hardware=BIG, battery_pct=61, computing=True)
    assert result.available
    assert result.limited_by == "battery"
    assert result.hours_offered == pytest.approx(0.75 / 0.8)  # 1% of 75 kWh at 800 W


def test_idle_car_past_the_start_margin_starts():
    assert offer(battery_pct=62).available


def test_computing_car_at_its_floor_says_the_battery_is_spent():
    result = offer(hardware=BIG, battery_pct=60.05, computing=True)
    assert not result.available
    assert "battery 60% leaves under 5 min of work above your 60% floor" in result.reasons


def test_cellular_says_work_only_runs_on_wifi():
    result = offer(network="cellular")
    assert not result.available
    assert "on cellular: work only runs on WiFi" in result.reasons


def test_ethernet_is_as_good_as_wifi():
    assert offer(network="ethernet").available


def test_no_network_says_so():
    result = offer(network="none")
    assert not result.available
    assert "no network" in result.reasons


def test_outside_windows_says_so():
    result = offer(windows=(Window(WED, 8 * 60, 17 * 60),))
    assert not result.available
    assert "outside your availability windows" in result.reasons


def test_window_starting_later_tonight_is_not_open_yet():
    assert "outside your availability windows" in offer(windows=(Window(WED, 23 * 60, 1440),)).reasons


def test_window_ending_within_minutes_says_when():
    result = offer(windows=(Window(WED, 18 * 60, 22 * 60 + 4),))
    assert not result.available
    assert "your availability window ends at 22:04" in result.reasons


def test_lost_heartbeat_says_how_long_ago():
    result = offer(heartbeat_age_s=180)
    assert not result.available
    assert "heartbeat lost 3 min ago" in result.reasons


def test_heartbeat_lost_for_hours_reads_in_hours():
    assert "heartbeat lost 5 h ago" in offer(heartbeat_age_s=5 * HOUR).reasons


def test_recent_heartbeat_is_not_lost():
    assert offer(heartbeat_age_s=20).available  # a heartbeat every 15 s, one a little late


def test_a_car_silent_for_one_and_a_half_heartbeat_intervals_is_gone():
    assert not offer(heartbeat_age_s=23).available  # 1.5 × 15 s: its work goes to other cars


def test_driving_says_so():
    result = offer(parked=False)
    assert not result.available
    assert "driving" in result.reasons


def test_unplugged_car_says_owner_chose_plugged_in_only():
    result = offer(plugged_in_only=True)
    assert not result.available
    assert "not plugged in (you chose plugged-in only)" in result.reasons


def test_plugged_in_car_works_under_plugged_in_only():
    assert offer(plugged_in_only=True, plugged_in=True, charge_power_w=7000).available


def test_used_up_energy_cap_says_which_cap():
    result = offer(energy_used_today_kwh=5.0)
    assert not result.available
    assert "today's energy cap of 5.0 kWh is used up" in result.reasons


def test_energy_cap_with_only_minutes_left_counts_as_used_up():
    # 0.005 kWh at 100 W is 3 minutes of work.
    assert "today's energy cap of 5.0 kWh is used up" in offer(energy_used_today_kwh=4.995).reasons


def test_leaving_at_declared_time_within_minutes_says_when():
    result = offer(leave_at=NOW + timedelta(minutes=3))
    assert not result.available
    assert "you said you leave at 22:03" in result.reasons


def test_paused_vehicle_says_paused_by_you():
    result = offer(status="paused")
    assert not result.available
    assert "paused by you" in result.reasons


def test_suspended_vehicle_says_suspended_by_idlefleet():
    result = offer(status="suspended")
    assert not result.available
    assert "suspended by Idlefleet" in result.reasons


def test_opt_in_off_says_so():
    result = offer(enabled=False)
    assert not result.available
    assert "opt-in is off" in result.reasons


def test_predicted_departure_within_minutes_says_leaving():
    result = offer(parked_s=120)
    assert not result.available
    assert "expected to leave within minutes" in result.reasons


def test_no_compute_power_allowed_says_so():
    result = offer(max_power_w=0)
    assert not result.available
    assert "compute power is limited to 0 W" in result.reasons


def test_every_reason_that_applies_is_listed():
    result = offer(
        status="paused", enabled=False, parked=False, network="cellular", battery_pct=30, energy_used_today_kwh=6
    )
    assert not result.available
    assert set(result.reasons) == {
        "paused by you",
        "opt-in is off",
        "driving",
        "on cellular: work only runs on WiFi",
        "battery 30% is below your 60% floor",
        "today's energy cap of 5.0 kWh is used up",
    }
    assert result.ch_offered == {}
    assert result.hours_offered == 0


# --- What binds the offer --------------------------------------------------------------------------------------------


def test_battery_floor_limits_ch_offered():
    # 2% of 75 kWh above the floor = 1.5 kWh, at 800 W = 1.875 h.
    result = offer(hardware=BIG, battery_pct=62, max_energy_kwh_per_day=10)
    assert result.limited_by == "battery"
    assert result.hours_offered == pytest.approx(1.875)
    assert result.energy_kwh == pytest.approx(1.5)
    assert result.ch_offered == pytest.approx({"int8": 1.875 * 10, "fp8": 1.875 * 20})


def test_charger_covering_the_drain_lifts_the_battery_limit():
    result = offer(hardware=BIG, battery_pct=62, max_energy_kwh_per_day=10, plugged_in=True, charge_power_w=7000)
    assert result.limited_by == "departure"
    assert result.hours_offered == pytest.approx(8)


def test_weak_charger_stretches_the_battery():
    # 1.5 kWh above the floor drained at 800 W − 400 W.
    result = offer(hardware=BIG, battery_pct=62, max_energy_kwh_per_day=10, plugged_in=True, charge_power_w=400)
    assert result.limited_by == "battery"
    assert result.hours_offered == pytest.approx(3.75)


def test_charger_power_reported_while_unplugged_does_not_count():
    result = offer(hardware=BIG, battery_pct=62, max_energy_kwh_per_day=10, plugged_in=False, charge_power_w=7000)
    assert result.limited_by == "battery"
    assert result.hours_offered == pytest.approx(1.875)


def test_energy_cap_limits_ch_offered():
    # 0.5 kWh left of 5 at 100 W = 5 h.
    result = offer(energy_used_today_kwh=4.5)
    assert result.limited_by == "energy cap"
    assert result.hours_offered == pytest.approx(5)
    assert result.energy_kwh == pytest.approx(0.5)
    assert result.ch_offered["int8"] == pytest.approx(5 * 2.45)


def test_policy_power_cap_scales_throughput_down():
    result = offer(max_power_w=50, parked_s=2 * HOUR)
    assert result.power_w == 50
    assert result.ch_offered["int8"] == pytest.approx(2 * 2.45 * 0.5)
    assert result.energy_kwh == pytest.approx(0.1)


def test_hardware_max_power_caps_below_typical_draw():
    hardware = replace(HW4, max_power_w=80)
    result = offer(hardware=hardware, parked_s=2 * HOUR)
    assert result.power_w == 80
    assert result.ch_offered["int8"] == pytest.approx(2 * 2.45 * 0.8)


def test_power_above_typical_draw_buys_no_extra_throughput():
    result = offer(parked_s=2 * HOUR)  # policy allows 1000 W, hardware would take 160 W
    assert result.power_w == 100
    assert result.ch_offered["int8"] == pytest.approx(2 * 2.45)


def test_no_car_draws_more_than_one_kilowatt():
    hungry = Hardware(int8_tops=3000, factors={"int8": 1.0}, typical_power_w=1500, max_power_w=2000)
    result = offer(hardware=hungry, max_power_w=5000, max_energy_kwh_per_day=24, parked_s=2 * HOUR)
    assert result.power_w == 1000
    assert result.ch_offered["int8"] == pytest.approx(2 * 30 * 1000 / 1500)
    assert result.energy_kwh == pytest.approx(2)


def test_predicted_departure_limits_ch_offered():
    result = offer(parked_s=1.5 * HOUR)
    assert result.limited_by == "departure"
    assert result.hours_offered == pytest.approx(1.5)
    assert result.ch_offered["int8"] == pytest.approx(1.5 * 2.45)


def test_declared_leave_at_limits_ch_offered():
    result = offer(leave_at=NOW + timedelta(hours=2))
    assert result.limited_by == "leave_at"
    assert result.hours_offered == pytest.approx(2)
    assert result.ch_offered["int8"] == pytest.approx(2 * 2.45)


def test_leave_at_is_named_when_the_prediction_already_includes_it():
    result = offer(leave_at=NOW + timedelta(hours=2), parked_s=2 * HOUR)
    assert result.limited_by == "leave_at"


def test_leave_at_in_the_past_is_ignored():
    result = offer(leave_at=NOW - timedelta(hours=14))
    assert result.available
    assert result.limited_by == "departure"
    assert result.hours_offered == pytest.approx(8)


def test_window_running_past_midnight_limits_until_it_ends():
    result = offer(windows=(Window(WED, 18 * 60, 7 * 60),), parked_s=12 * HOUR)
    assert result.limited_by == "window"
    assert result.hours_offered == pytest.approx(9)


def test_window_entered_from_the_day_before_still_counts():
    result = offer(windows=(Window(WED, 18 * 60, 7 * 60),), observed_at=NOW + timedelta(hours=5), parked_s=12 * HOUR)
    assert result.limited_by == "window"
    assert result.hours_offered == pytest.approx(4)


def test_chained_windows_count_as_one_stretch():
    windows = (Window(WED, 18 * 60, 1440), Window(THU, 0, 7 * 60))
    result = offer(windows=windows, parked_s=12 * HOUR)
    assert result.limited_by == "window"
    assert result.hours_offered == pytest.approx(9)


def test_windows_chain_across_the_end_of_the_week():
    sunday_night = datetime(2025, 1, 19, 22, 0, tzinfo=BERLIN)
    windows = (Window(SUN, 20 * 60, 1440), Window(MON, 0, 6 * 60))
    result = offer(windows=windows, observed_at=sunday_night, parked_s=12 * HOUR)
    assert result.limited_by == "window"
    assert result.hours_offered == pytest.approx(8)


def test_sunday_night_window_still_holds_on_monday_morning():
    monday_early = datetime(2025, 1, 20, 3, 0, tzinfo=BERLIN)
    result = offer(windows=(Window(SUN, 22 * 60, 6 * 60),), observed_at=monday_early, parked_s=12 * HOUR)
    assert result.limited_by == "window"
    assert result.hours_offered == pytest.approx(3)


def test_window_end_counts_real_hours_across_a_clock_change():
    # Clocks go forward at 02:00 on 30 March 2025 in Berlin: 22:00 to 07:00 that night is 8 real hours.
    saturday_night = datetime(2025, 3, 29, 22, 0, tzinfo=BERLIN)
    result = offer(windows=(Window(SAT, 18 * 60, 7 * 60),), observed_at=saturday_night, parked_s=12 * HOUR)
    assert result.hours_offered == pytest.approx(8)


def test_whole_day_windows_every_day_never_limit():
    result = offer(windows=tuple(Window(day, 0, 0) for day in range(7)))
    assert result.limited_by == "departure"


def test_windows_are_read_in_the_cars_time_zone():
    # 21:00 UTC is 22:00 in Berlin, inside an evening window there.
    result = offer(windows=(Window(WED, 21 * 60 + 30, 23 * 60),), observed_at=NOW.astimezone(ZoneInfo("UTC")))
    assert result.available
    assert result.hours_offered == pytest.approx(1)


# --- Properties ----------------------------------------------------------------------------------------------------


@given(
    battery_pct=st.floats(0, 100),
    floor=st.floats(10, 100),
    capacity=st.floats(5, 300),
    power=st.floats(10, 1000),
    charge=st.floats(0, 2000),
    plugged_in=st.booleans(),
    used=st.floats(0, 30),
    cap=st.floats(0, 24),
    parked_s=st.floats(0, 48 * HOUR),
    computing=st.booleans(),
)
def test_offer_never_breaks_floor_cap_power_or_departure(
    battery_pct, floor, capacity, power, charge, plugged_in, used, cap, parked_s, computing
):
    result = offer(
        hardware=BIG,
        battery_pct=battery_pct,
        battery_floor_pct=floor,
        battery_capacity_kwh=capacity,
        max_power_w=power,
        charge_power_w=charge,
        plugged_in=plugged_in,
        energy_used_today_kwh=used,
        max_energy_kwh_per_day=cap,
        parked_s=parked_s,
        computing=computing,
    )
    if not result.available:
        assert result.reasons
        assert result.ch_offered == {}
        return
    assert result.power_w <= min(power, BIG.typical_power_w)
    assert result.hours_offered <= parked_s / 3600 + 1e-9
    assert result.energy_kwh <= max(cap - used, 0) + 1e-9
    drained_kwh = result.hours_offered * (result.power_w - (charge if plugged_in else 0)) / 1000
    assert drained_kwh <= (battery_pct - floor) / 100 * capacity + 1e-9
    assert result.ch_offered["int8"] <= result.hours_offered * BIG.int8_tops / 100 + 1e-9
