"""An owner sets up payouts through Stripe's hosted onboarding (the local Stripe server's page here) and sees their
payouts, and nobody else's."""

import urllib.parse
import urllib.request

import pytest

from billing.models import ConnectAccount, Payout

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


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
