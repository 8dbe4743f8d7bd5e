"""Departure prediction: how long a parked car stays, from its own parking history."""

import random
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.departure import ParkingRecord, remaining_parked_seconds, survival

BERLIN = ZoneInfo("Europe/Berlin")
HOUR = 3600.0
WEDNESDAY = date(2025, 3, 12)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=BERLIN)


def commuter_history(weeks: int = 8, seed: int = 1) -> list[ParkingRecord]:
    """A car that is at work from ~08:30 to ~17:30 and at home from ~18:00 until ~07:30 the next working day."""
    rng = random.Random(seed)
    history = []
    first_monday = WEDNESDAY - timedelta(days=2 + 7 * weeks)
    for offset in range(7 * weeks):
        day = first_monday + timedelta(days=offset)
        if day.weekday() >= 5:
            continue
        work_arrival = at(day, 8, 30) + timedelta(minutes=rng.uniform(-15, 15))
        work_departure = at(day, 17, 30) + timedelta(minutes=rng.uniform(-20, 20))
        history.append(ParkingRecord(work_arrival, (work_departure - work_arrival).total_seconds()))
        next_working_day = day + timedelta(days=3 if day.weekday() == 4 else 1)
        home_arrival = at(day, 18) + timedelta(minutes=rng.uniform(-30, 30))
        home_departure = at(next_working_day, 7, 30) + timedelta(minutes=rng.uniform(-15, 10))
        history.append(ParkingRecord(home_arrival, (home_departure - home_arrival).total_seconds()))
    return history


COMMUTER = commuter_history()


def left(**kwargs) -> float:
    return remaining_parked_seconds(tz=BERLIN, **kwargs)


def test_commuter_at_home_at_ten_pm_stays_until_the_morning():
    arrived, now = at(WEDNESDAY, 18, 5), at(WEDNESDAY, 22)
    assert survival(history=COMMUTER, arrived_at=arrived, now=now, horizon_s=6 * HOUR, tz=BERLIN) >= 0.95
    seconds = left(history=COMMUTER, arrived_at=arrived, now=now)
    assert seconds >= 8 * HOUR
    assert now + timedelta(seconds=seconds) <= at(WEDNESDAY + timedelta(days=1), 7, 30)


def test_commuter_at_home_is_not_expected_to_stay_past_the_next_evening():
    arrived, now = at(WEDNESDAY, 18, 5), at(WEDNESDAY, 22)
    # Only Friday nights run that long (the weekend), about one night in five.
    assert survival(history=COMMUTER, arrived_at=arrived, now=now, horizon_s=20 * HOUR, tz=BERLIN) <= 0.3


def test_commuter_at_work_is_predicted_a_working_day():
    arrived, now = at(WEDNESDAY, 8, 30), at(WEDNESDAY, 10)
    seconds = left(history=COMMUTER, arrived_at=arrived, now=now)
    assert 6 * HOUR <= seconds <= 7.5 * HOUR


def test_car_parked_long_already_is_expected_to_stay_long():
    # Home since Friday evening: on Saturday noon only the weekend stays are still running, and they last until Monday.
    friday = WEDNESDAY + timedelta(days=2)
    arrived, now = at(friday, 18), at(friday + timedelta(days=1), 12)
    assert survival(history=COMMUTER, arrived_at=arrived, now=now, horizon_s=12 * HOUR, tz=BERLIN) >= 0.9
    assert left(history=COMMUTER, arrived_at=arrived, now=now) == 24 * HOUR


def test_new_car_arriving_in_the_evening_is_expected_overnight():
    arrived = at(WEDNESDAY, 19)
    end = arrived + timedelta(seconds=left(history=[], arrived_at=arrived, now=arrived))
    assert at(WEDNESDAY + timedelta(days=1), 7) <= end <= at(WEDNESDAY + timedelta(days=1), 8)


def test_new_car_arriving_on_a_weekday_morning_is_expected_a_working_day():
    arrived = at(WEDNESDAY, 8)
    assert 8 * HOUR <= left(history=[], arrived_at=arrived, now=arrived) <= 9 * HOUR


def test_new_car_arriving_on_a_weekend_morning_is_expected_an_errand():
    saturday = WEDNESDAY + timedelta(days=3)
    arrived = at(saturday, 8)
    assert 0.5 * HOUR <= left(history=[], arrived_at=arrived, now=arrived) <= 2 * HOUR


def test_new_car_arriving_in_the_afternoon_is_expected_an_errand():
    arrived = at(WEDNESDAY, 14)
    assert 0.5 * HOUR <= left(history=[], arrived_at=arrived, now=arrived) <= 2 * HOUR


def test_own_history_outweighs_the_prior():
    # This car arrives at 19:00 and always leaves after three hours, not the next morning.
    history = [
        ParkingRecord(at(WEDNESDAY - timedelta(days=7 * w + d), 19), 3 * HOUR) for w in range(1, 5) for d in (0, 1)
    ]
    arrived = at(WEDNESDAY, 19)
    assert left(history=history, arrived_at=arrived, now=arrived) == pytest.approx(3 * HOUR)


def test_with_few_similar_stays_the_whole_history_still_counts():
    # No weekend history at all: the commuter's weekday stays (mostly long nights) beat the errand prior.
    saturday = WEDNESDAY + timedelta(days=3)
    arrived = at(saturday, 14)
    assert left(history=COMMUTER, arrived_at=arrived, now=arrived) >= 8 * HOUR


def test_car_parked_longer_than_any_precedent_is_still_offered_time():
    # Parked for three days, longer than any stay it ever made: predicted as if it had arrived now (Wednesday 09:00).
    now = at(WEDNESDAY, 9)
    arrived = now - timedelta(days=3)
    history = [ParkingRecord(at(WEDNESDAY - timedelta(days=7), 14), HOUR)]
    assert 8 * HOUR <= left(history=history, arrived_at=arrived, now=now) <= 9 * HOUR


def test_declared_departure_caps_the_prediction():
    arrived, now = at(WEDNESDAY, 18, 5), at(WEDNESDAY, 22)
    declared = at(WEDNESDAY, 23, 15)
    assert left(history=COMMUTER, arrived_at=arrived, now=now, declared_departure=declared) == pytest.approx(
        1.25 * HOUR
    )
    kwargs = {"history": COMMUTER, "arrived_at": arrived, "now": now, "tz": BERLIN, "declared_departure": declared}
    assert survival(horizon_s=HOUR, **kwargs) > 0.9
    assert survival(horizon_s=1.25 * HOUR, **kwargs) == 0
    assert survival(horizon_s=3 * HOUR, **kwargs) == 0


def test_declared_departure_in_the_past_is_ignored():
    arrived, now = at(WEDNESDAY, 18, 5), at(WEDNESDAY, 22)
    without = left(history=COMMUTER, arrived_at=arrived, now=now)
    assert left(history=COMMUTER, arrived_at=arrived, now=now, declared_departure=at(WEDNESDAY, 7)) == without


def test_prediction_never_exceeds_the_horizon():
    arrived, now = at(WEDNESDAY, 18, 5), at(WEDNESDAY, 22)
    assert left(history=COMMUTER, arrived_at=arrived, now=now, max_horizon_s=2 * HOUR) == 2 * HOUR


def test_higher_confidence_gives_a_shorter_prediction():
    arrived, now = at(WEDNESDAY, 8, 30), at(WEDNESDAY, 10)
    cautious = left(history=COMMUTER, arrived_at=arrived, now=now, confidence=0.95)
    bold = left(history=COMMUTER, arrived_at=arrived, now=now, confidence=0.5)
    assert cautious < bold


def test_similar_arrivals_match_across_midnight():
    # Weeknight arrivals at 23:30 stay 10.5 h; afternoon stops last an hour. An arrival at 00:30 is like the former.
    weekdays = [WEDNESDAY - timedelta(days=7 * week + d) for week in range(5) for d in (1, 2, 5, 6)]
    history = [ParkingRecord(at(day, 23, 30), 10.5 * HOUR) for day in weekdays]
    history += [ParkingRecord(at(day, 14), HOUR) for day in weekdays]
    arrived = at(WEDNESDAY, 0, 30)
    assert left(history=history, arrived_at=arrived, now=arrived) == pytest.approx(10.5 * HOUR)


stays = st.lists(
    st.builds(
        ParkingRecord,
        arrived_at=st.datetimes(
            min_value=datetime(2025, 1, 1), max_value=datetime(2025, 3, 1), timezones=st.just(BERLIN)
        ),
        duration_s=st.floats(60, 4 * 24 * HOUR),
    ),
    max_size=60,
)


@given(
    history=stays,
    elapsed_s=st.floats(0, 3 * 24 * HOUR),
    horizons=st.lists(st.floats(0, 48 * HOUR), min_size=2, max_size=6),
)
def test_survival_never_rises_with_a_longer_horizon(history, elapsed_s, horizons):
    now = at(WEDNESDAY, 12)
    arrived = now - timedelta(seconds=elapsed_s)
    values = [survival(history=history, arrived_at=arrived, now=now, horizon_s=h, tz=BERLIN) for h in sorted(horizons)]
    assert all(0 <= v <= 1 for v in values)
    assert values == sorted(values, reverse=True)


@given(history=stays, elapsed_s=st.floats(0, 3 * 24 * HOUR), confidence=st.floats(0.5, 0.99))
def test_predicted_stay_is_held_with_the_asked_confidence(history, elapsed_s, confidence):
    now = at(WEDNESDAY, 12)
    arrived = now - timedelta(seconds=elapsed_s)
    seconds = left(history=history, arrived_at=arrived, now=now, confidence=confidence)
    assert 0 < seconds <= 24 * HOUR
    kwargs = {"history": history, "arrived_at": arrived, "now": now, "tz": BERLIN}
    # Just before the predicted end the car is still there with the asked confidence; at the end it no longer is.
    assert survival(horizon_s=seconds - 1e-3, **kwargs) >= confidence - 1e-9
    if seconds < 24 * HOUR:
        assert survival(horizon_s=seconds, **kwargs) < confidence
