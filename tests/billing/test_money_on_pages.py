"""Money reads one way on every page a customer, an owner and staff visit: dollars with the digits the amount needs,
never an exponent, never cents or milli-cents; and a price per CH, where a model gives it a cost per item, also per
1M items (what customers compare with inference APIs). The pages are rendered with a job worth less than a
millionth of a dollar and one worth over a thousand dollars in the books."""

import re
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.utils import timezone

from billing.services import payouts, settling, topups
from tests.billing import builders

pytestmark = pytest.mark.django_db
MINILM_CH_PER_ITEM = 1.4e-8

# A number with an exponent, as Python's %g or repr print small floats ("1.4e-08", "4.17e-05", "2E+3"); not the
# inside of a hash or an id (a digit run glued to letters).
EXPONENT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?[eE][+-]?\d+(?![\w])")
CENTS = re.compile(r"\d\s*(?:m¢|¢)|¢/CH|m¢")


class _VisibleText(HTMLParser):
    """The text a person reads: no scripts, styles or JSON data islands."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "template"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style", "template") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def visible_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).split())


@pytest.fixture
def books(client, digits_with_variants, alice, olivia, olivia_car, onboarded, settings):
    """alice's $10,000 top-up; a $1,234.56789 job on her card and a sub-cent MiniLM job on her balance, both run by
    olivia's car; olivia's earnings partly paid out; a bid of alice's on her digits model still waiting."""
    settings.MIN_PAYOUT_CENTS = 1
    alice.exposure_cap_cents = 10**8
    alice.save(update_fields=["exposure_cap_cents"])
    topups.topup_create(customer=alice, amount_cents=1_000_000)

    large = builders.bid_authorized(alice, budget_cents=200_000)
    builders.validate(builders.sell(large, olivia_car, ch=2469.13578, price_mcents=50_000))  # $1,234.56789
    builders.close(large)
    settling.bid_settle(bid_id=large.pk)
    onboarded(olivia)
    payouts.earnings_release_due(now=timezone.now() + timedelta(hours=73))
    payouts.payouts_run(force=True)

    small = builders.bid_reserved(alice, budget_cents=100, items=2000)
    builders.validate(builders.sell(small, olivia_car, ch=2000 * MINILM_CH_PER_ITEM, price_mcents=1_500))
    builders.close(small)
    settling.bid_settle(bid_id=small.pk)

    model = digits_with_variants
    waiting = client.post(
        "/api/v1/bids/",
        {"inference_model": model.pk, "dataset": model.datasets.get().pk, "max_price_usd_per_ch": "0.05",
         "budget_usd": "1.00", "deadline": (timezone.now() + timedelta(hours=2)).isoformat()},
        content_type="application/json",
    ).json()  # fmt: skip
    return {"large": large, "small": small, "waiting": waiting["id"], "model": model.pk, "car": olivia_car.pk}


def pages(books) -> dict[str, list[str]]:
    customer = [
        "/customer/", "/customer/models/", f"/customer/models/{books['model']}/",
        f"/customer/models/{books['model']}/bid/", f"/customer/bids/{books['waiting']}/",
        f"/customer/bids/{books['large'].pk}/", f"/customer/bids/{books['small'].pk}/", "/customer/billing/",
        f"/customer/billing/receipts/{books['large'].pk}/", f"/customer/billing/receipts/{books['small'].pk}/",
        f"/customer/billing/receipts/{books['waiting']}/", "/market/", "/account/",
    ]  # fmt: skip
    owner = ["/owner/", f"/owner/vehicles/{books['car']}/", f"/owner/vehicles/{books['car']}/policy/",
             "/owner/earnings/", "/owner/payouts/", "/market/"]  # fmt: skip
    staff = ["/staff/", "/staff/finance/", "/staff/fleet/", "/staff/health/", "/market/"]
    return {"alice": customer, "olivia": owner, "staff": staff}


ADMIN = [
    "/admin/billing/ledgerentry/", "/admin/billing/ledgertransaction/", "/admin/billing/paymentauthorization/",
    "/admin/billing/topup/", "/admin/billing/payout/", "/admin/billing/refund/", "/admin/marketplace/bid/",
]  # fmt: skip


def test_no_page_shows_an_exponent_or_cents_with_subcent_and_large_amounts(client, books, alice, olivia, staff):
    people = {"alice": alice, "olivia": olivia, "staff": staff}
    for who, urls in pages(books).items():
        client.force_login(people[who])
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, (who, url, response.status_code)
            text = visible_text(response.content.decode())
            assert not EXPONENT.findall(text), (who, url, EXPONENT.findall(text))
            assert not CENTS.findall(text), (who, url, CENTS.findall(text))
    client.force_login(staff)
    for url in ADMIN:
        response = client.get(url)
        assert response.status_code == 200, url
        text = visible_text(response.content.decode())
        assert not EXPONENT.findall(text), (url, EXPONENT.findall(text))


def test_the_amounts_read_in_dollars_to_the_digits_they_need(client, books, alice, olivia, staff):
    client.force_login(alice)
    large = visible_text(client.get(f"/customer/billing/receipts/{books['large'].pk}/").content.decode())
    small = visible_text(client.get(f"/customer/billing/receipts/{books['small'].pk}/").content.decode())
    billing = visible_text(client.get("/customer/billing/").content.decode())

    assert "Charged for the validated work $1,234.57" in large
    assert "Captured from your card (whole cents) $1,234.57" in large
    assert "Charged for the validated work $0.00000042" in small  # 2,000 documents × 21 n¢
    # $10,000 less the sub-cent job and the $1.00 the waiting bid reserved (read to the cent above $1)
    assert "Prepaid balance $9,999.00 free to spend · $1.00 reserved by open bids" in billing

    client.force_login(olivia)
    earnings = visible_text(client.get("/owner/earnings/").content.decode())
    assert "Pending (released after 72 hours) $0.000000357" in earnings  # the sub-cent job's 85 %, in its hold
    assert "Paid out $1,049.38" in earnings  # 85 % of $1,234.56789 = $1,049.3827065: whole cents sent
    assert "Available (sent on the next payout run) $0.00271" in earnings  # the rest of the last cent, carried

    client.force_login(staff)
    finance = visible_text(client.get("/staff/finance/").content.decode())
    assert "Gross volume $1,234.57" in finance
    assert "Platform fee revenue $185.19" in finance


def test_each_price_per_ch_of_a_model_is_also_priced_per_million_items(client, books, alice):
    client.force_login(alice)
    for url in (f"/customer/billing/receipts/{books['large'].pk}/", f"/customer/billing/receipts/{books['small'].pk}/",
                f"/customer/bids/{books['waiting']}/", f"/customer/bids/{books['large'].pk}/",
                f"/customer/models/{books['model']}/"):  # fmt: skip
        text = visible_text(client.get(url).content.decode())
        per_ch = re.findall(r"\$[\d,.]+/CH", text)
        assert per_ch, url
        assert text.count("per 1M items") >= len(per_ch), (url, per_ch, text.count("per 1M items"))
    small = visible_text(client.get(f"/customer/billing/receipts/{books['small'].pk}/").content.decode())
    assert "$0.015/CH ($15.00 per 1M items)" in small  # the test model's 0.001 CH per item at $0.015 per CH
    large = visible_text(client.get(f"/customer/billing/receipts/{books['large'].pk}/").content.decode())
    assert "$0.50/CH ($500.00 per 1M items)" in large
