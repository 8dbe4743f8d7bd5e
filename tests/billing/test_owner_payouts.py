"""An owner sets up payouts through Stripe's hosted onboarding (the local Stripe server's page here) and sees their
payouts, and nobody else's."""

import urllib.parse
import urllib.request
from datetime import timedelta

import pytest
from django.utils import timezone

from billing import ledger, stripe_gateway
from billing.ledger import Leg
from billing.models import AccountKind, ConnectAccount, LedgerTransaction, Payout
from billing.services import payouts
from core.money import NC_PER_CENT

pytestmark = pytest.mark.django_db


def test_an_owner_onboards_through_stripe_and_comes_back_ready_for_payouts(client, olivia, stripe_server):
    client.force_login(olivia)
    assert "Set up payouts with Stripe" in client.get("/owner/payouts/").content.decode()

    response = client.post("/owner/payouts/onboard/")

    assert response.status_code == 302
    onboarding = response["Location"]
    assert onboarding.startswith(f"{stripe_server}/_connect/onboard/acct_")
    account = ConnectAccount.objects.get(user=olivia)
    assert not account.payouts_enabled
    # On Stripe's page the owner fills in their details and presses the button; Stripe sends them back.
    page = urllib.request.urlopen(onboarding, timeout=10).read().decode()  # noqa: S310 - the local test server
    assert "Complete onboarding" in page
    return_url = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(onboarding).query))["return_url"]
    assert urllib.parse.urlsplit(return_url).path == "/owner/payouts/return/"
    form = urllib.request.Request(onboarding, data=b"", method="POST")  # noqa: S310
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(form, timeout=10)
    assert redirect.value.code == 303 and redirect.value.headers["Location"] == return_url

    back = client.get("/owner/payouts/return/", follow=True)

    assert "Payouts are set up" in back.content.decode()
    account.refresh_from_db()
    assert account.payouts_enabled and account.details_submitted


def test_an_owner_who_leaves_onboarding_halfway_is_told_so(client, olivia, stripe_server):
    client.force_login(olivia)
    client.post("/owner/payouts/onboard/")

    back = client.get("/owner/payouts/return/", follow=True).content.decode()

    assert "Onboarding is not finished yet" in back
    assert "Continue onboarding" in back


def test_owners_see_only_their_own_payouts_and_customers_none(client, olivia, oscar, alice):
    Payout.objects.create(owner=olivia, amount_cents=1234, period="2026-11-23", idempotency_key="p1",
                          destination="acct_1", status=Payout.Status.PAID, stripe_transfer_id="tr_olivia")  # fmt: skip
    client.force_login(oscar)
    page = client.get("/owner/payouts/").content.decode()
    assert "tr_olivia" not in page and "No payouts yet" in page
    client.force_login(olivia)
    assert "tr_olivia" in client.get("/owner/payouts/").content.decode()
    assert "$12.34" in client.get("/owner/payouts/").content.decode()
    client.force_login(alice)
    assert client.get("/owner/payouts/").status_code == 403
    assert client.post("/owner/payouts/onboard/").status_code == 403


def _earned_and_released(owner, nc: int, key: str) -> None:
    """`nc` earned (as a check the platform paid for) and out of the hold: available to be paid out."""
    for kind, legs in (
        (LedgerTransaction.Kind.CAPTURE, [Leg(AccountKind.VERIFICATION_COST, nc), Leg(AccountKind.OWNER_PENDING, -nc,
                                                                                 user_id=owner.pk)]),
        (LedgerTransaction.Kind.EARNINGS_RELEASE, [Leg(AccountKind.OWNER_PENDING, nc, user_id=owner.pk),
                                                   Leg(AccountKind.OWNER_AVAILABLE, -nc, user_id=owner.pk)]),
    ):  # fmt: skip
        ledger.post(kind=kind, key=f"{kind}:{key}", legs=legs)


def test_a_subcent_rest_of_earnings_is_carried_to_the_next_payout(olivia, onboarded, settings):
    """Transfers are whole cents: the sub-cent rest stays available and counts towards the next payout."""
    onboarded(olivia)
    settings.MIN_PAYOUT_CENTS = 1000
    available = lambda: ledger.balance(kind=AccountKind.OWNER_AVAILABLE, user_id=olivia.pk)  # noqa: E731
    day = timezone.now()
    _earned_and_released(olivia, 1234 * NC_PER_CENT + 999_999_999, "one")

    (first,) = payouts.payouts_run(now=day, force=True)

    assert (first.status, first.amount_cents) == (Payout.Status.PAID, 1234)
    assert stripe_gateway.transfer_retrieve(first.stripe_transfer_id).amount == 1234
    assert available() == 999_999_999  # carried, not lost and not rounded up
    assert ledger.balance(kind=AccountKind.OWNER_PAID_OUT, user_id=olivia.pk) == 1234 * NC_PER_CENT

    _earned_and_released(olivia, 999 * NC_PER_CENT, "two")  # 999.999999999 ¢: under the 10 $ minimum
    assert payouts.payouts_run(now=day + timedelta(days=1), force=True) == []
    _earned_and_released(olivia, 1, "three")  # one n¢ more, and the carried rest makes it 1000 ¢
    (second,) = payouts.payouts_run(now=day + timedelta(days=2), force=True)

    assert second.amount_cents == 1000
    assert available() == 0
    assert ledger.balance(kind=AccountKind.OWNER_PAID_OUT, user_id=olivia.pk) == 2234 * NC_PER_CENT


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
