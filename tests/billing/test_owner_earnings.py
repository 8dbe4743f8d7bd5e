"""A car owner's earnings page (/owner/earnings/) and its CSV export, read from the ledger."""

import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.utils import timezone

from billing import ledger
from billing.ledger import Leg
from billing.models import AccountKind, LedgerTransaction
from billing.reports import CSV_HEADER, daily_rows, owner_daily_earnings, owner_earnings_summary
from core.money import NC_PER_CENT
from tests.factories import vehicle_with_credential

pytestmark = pytest.mark.django_db

Kind = LedgerTransaction.Kind
C = NC_PER_CENT  # 1 ¢ in n¢, the ledger's unit: 5 * C is 5 ¢
# A Wednesday afternoon: the week began on Monday 10 March, the month on 1 March.
NOW = datetime(2025, 3, 12, 15, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _site_in_utc(settings):
    settings.TIME_ZONE = "UTC"


def car(owner, name="Blue car", price="20.00"):
    vehicle, _ = vehicle_with_credential(owner, name=name, energy_price_cents_per_kwh=Decimal(price))
    return vehicle


def at(moment):
    """Book what follows as if it happened at `moment` (entries take their time from the clock)."""
    return mock.patch("django.utils.timezone.now", return_value=moment)


def capture(customer, *earnings, key, when=None, fee=10 * C):
    """A customer's job captured: `earnings` are (vehicle, n¢, ch, energy_wh) credited to each car's owner."""
    charged = sum(nc for _, nc, _, _ in earnings) + fee
    legs = [
        Leg(AccountKind.CUSTOMER_HELD, charged, user_id=customer.pk),
        Leg(AccountKind.CUSTOMER_SPEND, charged, user_id=customer.pk),
        Leg(AccountKind.STRIPE_CLEARING, -charged),
        Leg(AccountKind.PLATFORM_FEE, -fee),
    ] + [
        Leg(AccountKind.OWNER_PENDING, -nc, user_id=v.owner_id, vehicle_id=v.pk, ch=ch, energy_wh=wh)
        for v, nc, ch, wh in earnings
    ]
    with at(when or timezone.now()):
        return ledger.post(kind=Kind.CAPTURE, key=f"capture:{key}", legs=legs, description=f"job {key}")


def release(owner, vehicle, nc, key):
    return ledger.post(
        kind=Kind.EARNINGS_RELEASE, key=f"hold_over:{key}",
        legs=[Leg(AccountKind.OWNER_PENDING, nc, user_id=owner.pk, vehicle_id=vehicle.pk),
              Leg(AccountKind.OWNER_AVAILABLE, -nc, user_id=owner.pk, vehicle_id=vehicle.pk)],
    )  # fmt: skip


def correct(customer, vehicle, nc, *, key, account=AccountKind.OWNER_PENDING, ch=0.0, energy_wh=0.0, when=None):
    """An audit took `nc` of a car's earnings back (from `account`: pending, or available once released), and the
    customer of a job paid from the balance gets it back onto the balance (as billing/services/corrections.py books
    it)."""
    with at(when or timezone.now()):
        return ledger.post(
            kind=Kind.CORRECTION, key=f"correction:{key}",
            legs=[Leg(account, nc, user_id=vehicle.owner_id, vehicle_id=vehicle.pk, ch=-ch if ch else None,
                      energy_wh=-energy_wh if energy_wh else None),
                  Leg(AccountKind.CUSTOMER_SPEND, -nc, user_id=customer.pk),
                  Leg(AccountKind.PREPAID_CASH, nc, user_id=customer.pk),
                  Leg(AccountKind.CUSTOMER_BALANCE, -nc, user_id=customer.pk)],
        )  # fmt: skip


def csv_rows(response):
    assert response.status_code == 200
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


# --- The figures -----------------------------------------------------------------------------------------------------


def test_totals_follow_the_calendar_today_this_week_this_month_all_time(olivia, alice):
    blue = car(olivia)
    capture(alice, (blue, 500 * C, 1.0, 100), key="today", when=NOW - timedelta(hours=5))
    capture(alice, (blue, 300 * C, 0.5, 50), key="monday", when=datetime(2025, 3, 10, 0, 30, tzinfo=UTC))
    capture(alice, (blue, 200 * C, 0.5, 50), key="first", when=datetime(2025, 3, 1, 8, tzinfo=UTC))
    capture(alice, (blue, 1000 * C, 2.0, 200), key="february", when=datetime(2025, 2, 28, 23, 59, tzinfo=UTC))

    summary = owner_earnings_summary(owner=olivia, now=NOW)

    assert (summary.today_nc, summary.week_nc, summary.month_nc) == (500 * C, 800 * C, 1000 * C)
    assert summary.all_time_nc == 2000 * C
    assert summary.ch_sold == pytest.approx(4.0)
    assert summary.avg_mcents_per_ch == 500_000  # 2000 ¢ over 4 CH: 500 ¢ ($5) per CH
    assert summary.has_earnings


def test_days_are_the_sites_calendar_days(olivia, alice):
    blue = car(olivia)
    # 02:00 UTC on the 12th is still the evening of the 11th in New York.
    capture(alice, (blue, 700 * C, 1.0, 100), key="late", when=datetime(2025, 3, 12, 2, tzinfo=UTC))

    with timezone.override("America/New_York"):
        summary = owner_earnings_summary(owner=olivia, now=NOW)
        chart = owner_daily_earnings(owner=olivia, days=3, now=NOW)

    assert (summary.today_nc, summary.week_nc) == (0, 700 * C)
    assert chart["labels"] == ["2025-03-10", "2025-03-11", "2025-03-12"]
    assert chart["datasets"][0]["data"] == [0, 700 * C, 0]


def test_net_profit_is_earnings_less_energy_at_each_cars_own_price(olivia, alice):
    blue = car(olivia, "Blue car", price="20.00")
    red = car(olivia, "Red car", price="35.50")
    capture(alice, (blue, 1000 * C, 2.0, 1000), (red, 500 * C, 1.0, 600), key="one")
    # A job worth a document or two: 21 n¢ to each car, none of it rounded away.
    capture(alice, (blue, 21, 0.0, 500), (red, 21, 0.0, 400), key="two")

    summary = owner_earnings_summary(owner=olivia)

    # Blue: 1.5 kWh × 20 ¢ = 30 ¢. Red: 1.0 kWh × 35.5 ¢ = 35.5 ¢, exact to the n¢ (no rounding to the cent).
    assert summary.energy_kwh == pytest.approx(2.5)
    assert summary.energy_cost_nc == 65_500_000_000
    assert summary.all_time_nc == 1500 * C + 42
    assert summary.net_profit_nc == 1500 * C + 42 - 65_500_000_000
    by_car = {v.name: v for v in summary.vehicles}
    assert (by_car["Blue car"].energy_cost_nc, by_car["Red car"].energy_cost_nc) == (30 * C, 35_500_000_000)
    assert by_car["Red car"].earned_nc == 500 * C + 21
    assert by_car["Red car"].net_profit_nc == 500 * C + 21 - 35_500_000_000


def test_a_voided_earning_is_taken_back_and_moving_money_to_payout_is_not_earning_again(olivia, alice):
    blue = car(olivia)
    capture(alice, (blue, 900 * C, 3.0, 900), key="kept")
    voided = capture(alice, (blue, 400 * C, 1.0, 300), key="voided")
    ledger.reverse(txn=voided, key="reverse:voided")
    # A release undone (pending credited again) and done again: money moving between olivia's own accounts.
    ledger.reverse(txn=release(olivia, blue, 900 * C, "first"), key="reverse:release")
    release(olivia, blue, 900 * C, "second")
    ledger.post(
        kind=Kind.PAYOUT, key="payout:1",
        legs=[Leg(AccountKind.OWNER_AVAILABLE, 600 * C, user_id=olivia.pk),
              Leg(AccountKind.OWNER_PAID_OUT, -600 * C, user_id=olivia.pk)],
    )  # fmt: skip

    summary = owner_earnings_summary(owner=olivia)

    assert summary.all_time_nc == summary.today_nc == 900 * C
    assert summary.ch_sold == pytest.approx(3.0)
    assert summary.energy_kwh == pytest.approx(0.9)
    assert (summary.pending_nc, summary.available_nc, summary.paid_out_nc) == (0, 300 * C, 600 * C)


def test_a_correction_after_an_audit_changes_earnings_whether_pending_or_released(client, olivia, alice):
    blue, red = car(olivia, "Blue car"), car(olivia, "Red car")
    job = capture(alice, (blue, 900 * C, 3.0, 900), (red, 500 * C + 21, 1.0, 100), key="job",
                  when=datetime(2025, 3, 11, 9, tzinfo=UTC))  # fmt: skip
    release(olivia, red, 500 * C + 21, "red")
    # The audit replaced a third of blue's results (still pending), and took 21 n¢ of red's (already available).
    blue_fix = correct(
        alice, blue, 300 * C, ch=1.0, energy_wh=300, key="blue", when=datetime(2025, 3, 12, 9, tzinfo=UTC)
    )
    red_fix = correct(alice, red, 21, account=AccountKind.OWNER_AVAILABLE, key="red",
                      when=datetime(2025, 3, 12, 10, tzinfo=UTC))  # fmt: skip

    summary = owner_earnings_summary(owner=olivia, now=NOW)
    chart = owner_daily_earnings(owner=olivia, days=2, now=NOW)

    assert summary.all_time_nc == 1100 * C
    assert summary.today_nc == -300 * C - 21  # what the audit took back today
    by_car = {v.name: v for v in summary.vehicles}
    assert (by_car["Blue car"].earned_nc, by_car["Red car"].earned_nc) == (600 * C, 500 * C)
    assert by_car["Blue car"].ch == pytest.approx(2.0) and by_car["Blue car"].energy_kwh == pytest.approx(0.6)
    assert (summary.pending_nc, summary.available_nc) == (600 * C, 500 * C)
    assert [(s["label"], s["data"]) for s in chart["datasets"]] == [
        ("Blue car", [900 * C, -300 * C]),
        ("Red car", [500 * C + 21, -21]),
    ]
    client.force_login(olivia)
    _header, *rows = csv_rows(client.get("/owner/earnings.csv"))
    assert [(row[1], row[4], row[5], row[6], row[7], row[8]) for row in rows] == [
        (str(job.pk), "3.000000", "0.900000", "900000000000", "9.00", "earned"),
        (str(job.pk), "1.000000", "0.100000", "500000000021", "5.00000000021", "earned"),
        (str(blue_fix.pk), "-1.000000", "-0.300000", "-300000000000", "-3.00", "corrected"),
        (str(red_fix.pk), "", "", "-21", "-0.00000000021", "corrected"),
    ]


def test_the_chart_stacks_each_cars_daily_earnings_with_every_day_present(olivia, alice):
    blue, red = car(olivia, "Blue car"), car(olivia, "Red car")
    capture(alice, (blue, 100 * C, 1.0, 10), key="a", when=NOW - timedelta(hours=1))
    capture(alice, (blue, 250 * C, 1.0, 10), (red, 40 * C, 1.0, 10), key="b", when=NOW - timedelta(days=2))
    capture(alice, (red, 60 * C, 1.0, 10), key="c", when=NOW - timedelta(days=2, hours=3))
    capture(alice, (red, 999 * C, 1.0, 10), key="too-old", when=NOW - timedelta(days=7))

    chart = owner_daily_earnings(owner=olivia, days=7, now=NOW)

    assert chart["labels"] == [(date(2025, 3, 6) + timedelta(days=n)).isoformat() for n in range(7)]
    assert [(s["label"], s["data"]) for s in chart["datasets"]] == [
        ("Blue car", [0, 0, 0, 0, 250 * C, 0, 100 * C]),
        ("Red car", [0, 0, 0, 0, 100 * C, 0, 0]),
    ]
    rows = daily_rows(chart)  # the table under the chart, newest day first
    assert [(row.day, row.amounts, row.total_nc) for row in rows[:3]] == [
        (date(2025, 3, 12), [100 * C, 0], 100 * C),
        (date(2025, 3, 11), [0, 0], 0),
        (date(2025, 3, 10), [250 * C, 100 * C], 350 * C),
    ]


# --- The page and the CSV --------------------------------------------------------------------------------------------


def test_the_page_shows_totals_chart_stats_and_balances(client, olivia, alice):
    blue = car(olivia, "Blue car", price="25.00")
    capture(alice, (blue, 1234 * C, 2.0, 2000), key="one")
    client.force_login(olivia)

    response = client.get("/owner/earnings/")

    assert response.status_code == 200
    page = response.content.decode()
    assert page.count("$12.34") >= 4  # today, this week, this month, all time
    assert "$0.50" in page  # 2 kWh at 25 ¢/kWh
    assert "$11.84" in page  # net profit
    assert "$6.17/CH" in page  # 1234 ¢ over 2 CH
    assert "released after 72 hours" in page
    assert 'id="daily-earnings"' in page and "vendor/chartjs/chart.umd.min.js" in page
    assert "/owner/earnings.csv" in page and "/owner/payouts/" in page
    assert "No earnings yet" not in page
    chart = response.context["chart"]
    assert chart["datasets"][0]["label"] == "Blue car" and chart["datasets"][0]["data"][-1] == 1234 * C


def test_a_subcent_earning_shows_to_the_nano_cent_never_as_zero_or_an_exponent(client, olivia, alice):
    blue = car(olivia, "Blue car")
    # The car's share of one document embedded: 21 n¢ for 1.4e-8 CH, i.e. 1500 m¢ ($0.015) per CH earned.
    capture(alice, (blue, 21, 1.4e-8, 0.0), key="one-document", fee=4)
    client.force_login(olivia)

    page = client.get("/owner/earnings/").content.decode()
    _header, *rows = csv_rows(client.get("/owner/earnings.csv"))

    summary = owner_earnings_summary(owner=olivia)
    assert (summary.all_time_nc, summary.pending_nc, summary.has_earnings) == (21, 21, True)
    assert summary.avg_mcents_per_ch == 1500  # 21 n¢ over 1.4e-8 CH
    # The four periods, the net profit, the pending balance, and today's row (the car, the total) under the chart.
    assert page.count("$0.00000000021") >= 8
    assert "$0.015/CH" in page
    # No exponent in any amount, nor in the chart's data (the page's random tokens aside).
    chart_data = page.split('id="daily-earnings"', 1)[1].split("</script>", 1)[0]
    assert not re.search(r"\$[\d.,]*[eE]", page) and not re.search(r"\d[eE][-+]?\d", chart_data)
    assert json.loads(chart_data.split(">", 1)[1])["datasets"][0]["data"][-1] == 21  # today's 21 n¢, an integer
    assert 'All time</small><div class="stat">$0.00000000021<' in page  # never rounded to nothing
    assert [(row[6], row[7], row[8]) for row in rows] == [("21", "0.00000000021", "earned")]


def test_an_owner_without_earnings_is_told_when_they_will_appear(client, olivia):
    car(olivia)
    client.force_login(olivia)

    page = client.get("/owner/earnings/").content.decode()

    assert "No earnings yet" in page
    assert "validated" in page
    assert "chart.umd.min.js" not in page


def test_the_csv_lists_each_earning_and_each_voided_one(client, olivia, alice):
    blue = car(olivia, "=Blue car")
    earned = capture(alice, (blue, 1234 * C, 2.5, 1500), key="one", when=datetime(2025, 3, 11, 9, 30, tzinfo=UTC))
    with at(datetime(2025, 3, 12, 10, tzinfo=UTC)):
        voided = ledger.reverse(txn=earned, key="reverse:one")
    client.force_login(olivia)

    response = client.get("/owner/earnings.csv")

    assert response["Content-Type"].startswith("text/csv")
    filename = f"idlefleet-earnings-olivia-{timezone.localdate().isoformat()}.csv"
    assert response["Content-Disposition"] == f'attachment; filename="{filename}"'
    header, *rows = csv_rows(response)
    assert tuple(header) == CSV_HEADER
    assert CSV_HEADER[6:8] == ("amount_nc", "amount_usd")
    name = "'=Blue car"  # a name that starts like a formula is kept as text
    assert rows == [
        ["2025-03-11 09:30:00", str(earned.pk), "", name, "2.500000", "1.500000", "1234000000000", "12.34", "earned"],
        ["2025-03-12 10:00:00", str(voided.pk), "", name, "-2.500000", "-1.500000", "-1234000000000", "-12.34",
         "voided"],
    ]  # fmt: skip


def test_oscar_sees_none_of_olivias_money(client, olivia, oscar, alice):
    capture(alice, (car(olivia), 5000 * C, 10.0, 5000), key="olivia")
    car(oscar, "Oscar's car")
    client.force_login(oscar)

    page = client.get("/owner/earnings/").content.decode()
    _header, *rows = csv_rows(client.get("/owner/earnings.csv"))

    assert "No earnings yet" in page and "$50.00" not in page
    assert rows == []
    summary = owner_earnings_summary(owner=oscar)
    assert (summary.all_time_nc, summary.pending_nc, summary.has_earnings) == (0, 0, False)
    assert owner_daily_earnings(owner=oscar)["datasets"] == []


def test_only_owners_see_earnings(client, alice):
    client.force_login(alice)

    assert client.get("/owner/earnings/").status_code == 403
    assert client.get("/owner/earnings.csv").status_code == 403


def test_the_page_costs_a_handful_of_queries_however_many_cars_and_jobs(
    client, olivia, alice, django_assert_max_num_queries
):
    cars = [car(olivia, f"Car {n}", price=f"{20 + n}.00") for n in range(5)]
    now = timezone.now()
    for job in range(60):
        capture(alice, *((v, (100 + job) * C, 0.5, 250) for v in cars), key=job, when=now - timedelta(hours=11 * job))
    client.force_login(olivia)

    # Session, user, the chart, the figures per car, the balances, the hold period.
    with django_assert_max_num_queries(6):
        response = client.get("/owner/earnings/")

    assert response.status_code == 200
    assert len(response.context["chart"]["datasets"]) == 5
