"""`simulate_fleet` runs real agents over HTTP; the fleet it yields is available more at night than at rush hour."""

import json
import signal

import pytest
from django.core.management import CommandError, call_command

from fleet.models import ParkingSession, Vehicle
from tests.factories import ensure_hardware_profiles


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.django_db(transaction=True)
def test_two_simulated_days_look_like_commuting(live_server, tmp_path, restore_signals, capsys):
    ensure_hardware_profiles()
    report = tmp_path / "curve.json"

    call_command(
        "simulate_fleet",
        vehicles=8,
        speed=4800,
        days=2,
        server=live_server.url,
        heartbeat_seconds=900,
        sample_minutes=20,
        report=str(report),
        quiet=True,
        # Monday and Tuesday: both mornings are rush hours (commuters stay home at weekends, so a run started on a
        # Friday would compare nights with weekend mornings).
        start="2026-11-30T00:00",
    )

    curve = json.loads(report.read_text())
    assert curve["night_share"] > curve["morning_peak_share"] + 0.2, curve
    assert Vehicle.objects.filter(is_simulated=True).count() == 8
    assert ParkingSession.objects.filter(departed_at__isnull=False, departure_announced=True).count() >= 8
    out = capsys.readouterr().out
    assert "night (00–05)" in out
    assert " 0 errors" in out


def test_a_start_that_is_not_a_date_is_refused_before_anything_runs():
    with pytest.raises(CommandError, match="--start: 'monday' is not a date and time"):
        call_command("simulate_fleet", start="monday", server="http://127.0.0.1:9", quiet=True)
