"""Staff reconcile the ledger with Stripe: every captured payment, top-up, refund (of a job, or of unused balance) and
transfer at Stripe has its ledger booking with the same amount, and every booking its Stripe object. The ledger is in
n¢ (1 ¢ = 10⁹ n¢), Stripe in whole cents: amounts compare as n¢."""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.management import ManagementUtility, call_command
from django.core.management.base import CommandError
from django.utils import timezone

from billing import ledger, reconciliation, stripe_gateway
from billing.ledger import Leg
from billing.models import AccountKind, LedgerTransaction
from billing.reconciliation import AMOUNT_MISMATCH, MISSING_AT_STRIPE, MISSING_IN_LEDGER, Difference
from billing.services import payouts, refunds, settling, topups
from core.money import NC_PER_CENT, nc_from_cents
from tests.billing import builders

pytestmark = pytest.mark.django_db

Kind = LedgerTransaction.Kind
C = NC_PER_CENT  # 1 ¢ in n¢
FINANCE = "/staff/finance/"


# --- Stripe's side: stand-ins for the gateway's lists ----------------------------------------------------------------


def intent(id: str, *, received: int, status: str = "succeeded", amount: int = 1000, topup_id: str | None = None):
    """A PaymentIntent (amounts in cents): a bid's card hold, or a top-up's charge (`topup_id` in its metadata)."""
    metadata = {"topup_id": topup_id} if topup_id else {}
    return SimpleNamespace(id=id, object="payment_intent", status=status, amount=amount, amount_received=received,
                           currency="usd", metadata=metadata)  # fmt: skip


def refund(id: str, amount: int, *, payment_intent: str | None = "pi_1", status: str = "succeeded"):
    return SimpleNamespace(id=id, object="refund", amount=amount, payment_intent=payment_intent, status=status,
                           currency="usd")  # fmt: skip


def transfer(id: str, amount: int, *, reversed_: int = 0):
    return SimpleNamespace(id=id, object="transfer", amount=amount, amount_reversed=reversed_, currency="usd")


@pytest.fixture
def stripe_has(monkeypatch):
    """Make the gateway's lists return these objects (what Stripe holds)."""

    def set_(*, intents=(), refunds=(), transfers=()):
        monkeypatch.setattr(stripe_gateway, "payment_intents", lambda **kwargs: iter(intents))
        monkeypatch.setattr(stripe_gateway, "refunds", lambda **kwargs: iter(refunds))
        monkeypatch.setattr(stripe_gateway, "transfers", lambda **kwargs: iter(transfers))

    return set_


# --- The ledger's side: the postings billing/services/ makes --------------------------------------------------------


def book_capture(customer, owner, payment_intent: str, cents: int, *, fee: int = 1, work_nc: int | None = None):
    """A card hold of `cents` captured in full for work worth `work_nc` (default: all of it), `fee` ¢ of it to the
    platform; the rest of the last cent captured goes onto the customer's balance (as billing/services/settling.py
    books it)."""
    held, fee_nc = nc_from_cents(cents), nc_from_cents(fee)
    work = held if work_nc is None else work_nc
    ledger.post(
        kind=Kind.AUTHORIZE, key=f"authorize:{payment_intent}", stripe_object_id=payment_intent,
        legs=[Leg(AccountKind.STRIPE_CLEARING, held), Leg(AccountKind.CUSTOMER_HELD, -held, user_id=customer.pk)],
    )  # fmt: skip
    return ledger.post(
        kind=Kind.CAPTURE, key=f"capture:{payment_intent}", stripe_object_id=payment_intent,
        legs=[
            Leg(AccountKind.CUSTOMER_HELD, held, user_id=customer.pk),
            Leg(AccountKind.CUSTOMER_SPEND, work, user_id=customer.pk),
            Leg(AccountKind.PREPAID_CASH, held - work, user_id=customer.pk),
            Leg(AccountKind.STRIPE_CLEARING, -held),
            Leg(AccountKind.CUSTOMER_BALANCE, -(held - work), user_id=customer.pk),
            Leg(AccountKind.PLATFORM_FEE, -fee_nc),
            Leg(AccountKind.OWNER_PENDING, -(work - fee_nc), user_id=owner.pk),
        ],
    )  # fmt: skip


def book_refund(customer, refund_id: str, cents: int) -> None:
    nc = nc_from_cents(cents)
    ledger.post(
        kind=Kind.REFUND, key=f"refund:{refund_id}", stripe_object_id=refund_id,
        legs=[Leg(AccountKind.REFUNDS, nc, user_id=customer.pk),
              Leg(AccountKind.CUSTOMER_SPEND, -nc, user_id=customer.pk)],
    )  # fmt: skip


def book_payout(owner, transfer_id: str, cents: int) -> None:
    nc = nc_from_cents(cents)
    ledger.post(
        kind=Kind.EARNINGS_RELEASE, key=f"hold_over:{transfer_id}",
        legs=[Leg(AccountKind.OWNER_PENDING, nc, user_id=owner.pk),
              Leg(AccountKind.OWNER_AVAILABLE, -nc, user_id=owner.pk)],
    )  # fmt: skip
    ledger.post(
        kind=Kind.PAYOUT, key=f"payout:{transfer_id}", stripe_object_id=transfer_id,
        legs=[Leg(AccountKind.OWNER_AVAILABLE, nc, user_id=owner.pk),
              Leg(AccountKind.OWNER_PAID_OUT, -nc, user_id=owner.pk)],
    )  # fmt: skip


def book_topup(customer, payment_intent: str, cents: int) -> LedgerTransaction:
    nc = nc_from_cents(cents)
    return ledger.post(
        kind=Kind.TOPUP, key=f"topup:{payment_intent}", stripe_object_id=payment_intent,
        legs=[Leg(AccountKind.PREPAID_CASH, nc, user_id=customer.pk),
              Leg(AccountKind.CUSTOMER_BALANCE, -nc, user_id=customer.pk)],
    )  # fmt: skip


def book_balance_refund(customer, topup_intent: str, key: str, cents: int) -> LedgerTransaction:
    """Unused balance back to the card: a refund of the top-up's payment, so it names the top-up's intent."""
    nc = nc_from_cents(cents)
    return ledger.post(
        kind=Kind.BALANCE_REFUND, key=f"balance_refund:{key}", stripe_object_id=topup_intent,
        legs=[Leg(AccountKind.CUSTOMER_BALANCE, nc, user_id=customer.pk),
              Leg(AccountKind.PREPAID_CASH, -nc, user_id=customer.pk)],
    )  # fmt: skip


@pytest.fixture
def books(alice, olivia):
    """A captured job (400 ¢, 60 ¢ fee), a 100 ¢ refund of it, and a 300 ¢ payout to olivia."""
    book_capture(alice, olivia, "pi_1", 400, fee=60)
    book_refund(alice, "re_1", 100)
    book_payout(olivia, "tr_1", 300)


def matching_stripe():
    return {
        "intents": [
            intent("pi_1", received=400),
            intent("pi_open", received=0, status="requires_capture"),  # a hold: nothing captured, nothing booked
            intent("pi_gone", received=0, status="canceled"),
        ],
        # The local Stripe server gives the uncaptured rest of a partial capture back as a refund with no payment
        # intent: that is the hold's release, not a refund.
        "refunds": [refund("re_1", 100), refund("re_release", 600, payment_intent=None)],
        "transfers": [transfer("tr_1", 300)],
    }


# --- The report ------------------------------------------------------------------------------------------------------


def test_the_books_reconcile_when_every_stripe_object_is_booked_with_its_amount(books, stripe_has):
    stripe_has(**matching_stripe())

    report = reconciliation.reconciliation_report()

    assert report.reconciles
    assert report.differences == []
    assert report.unbalanced_transaction_ids == []
    assert [(t.what, t.stripe_nc, t.ledger_nc, t.delta_nc) for t in report.totals] == [
        ("capture", 400 * C, 400 * C, 0),
        ("topup", 0, 0, 0),
        ("refund", 100 * C, 100 * C, 0),
        ("balance_refund", 0, 0, 0),
        ("transfer", 300 * C, 300 * C, 0),
    ]


def test_a_capture_missing_in_the_ledger_is_flagged(books, stripe_has):
    stripe = matching_stripe()
    stripe["intents"].append(intent("pi_2", received=250))
    stripe_has(**stripe)

    report = reconciliation.reconciliation_report()

    assert not report.reconciles
    assert report.differences == [Difference("capture", MISSING_IN_LEDGER, "pi_2", 250 * C, None)]
    assert report.totals[0].delta_nc == 250 * C


def test_an_amount_that_differs_is_flagged(books, stripe_has):
    stripe = matching_stripe()
    stripe["intents"][0] = intent("pi_1", received=401)
    stripe_has(**stripe)

    (difference,) = reconciliation.reconciliation_report().differences

    assert difference == Difference("capture", AMOUNT_MISMATCH, "pi_1", 401 * C, 400 * C)
    assert difference.delta_nc == 1 * C


def test_a_transfer_missing_from_the_ledger_is_flagged(books, stripe_has):
    stripe = matching_stripe()
    stripe["transfers"].append(transfer("tr_2", 700))
    stripe_has(**stripe)

    report = reconciliation.reconciliation_report()

    assert report.differences == [Difference("transfer", MISSING_IN_LEDGER, "tr_2", 700 * C, None)]


def test_a_booking_stripe_knows_nothing_of_is_flagged(books, stripe_has, alice):
    book_refund(alice, "re_ghost", 5)
    stripe_has(**matching_stripe())

    report = reconciliation.reconciliation_report()

    assert report.differences == [Difference("refund", MISSING_AT_STRIPE, "re_ghost", None, 5 * C)]


def test_a_capture_stripe_canceled_is_an_amount_difference(books, stripe_has):
    stripe = matching_stripe()
    stripe["intents"][0] = intent("pi_1", received=0, status="canceled")
    stripe_has(**stripe)

    assert reconciliation.reconciliation_report().differences == [
        Difference("capture", AMOUNT_MISMATCH, "pi_1", 0, 400 * C)
    ]


def test_a_reversed_booking_no_longer_counts_and_a_reversed_transfer_nets_out(books, stripe_has):
    capture = LedgerTransaction.objects.get(kind=Kind.CAPTURE)
    ledger.reverse(txn=capture, key="reverse:capture")
    stripe = matching_stripe()
    stripe["transfers"] = [transfer("tr_1", 500, reversed_=200)]
    stripe_has(**stripe)

    report = reconciliation.reconciliation_report()

    assert report.differences == [Difference("capture", MISSING_IN_LEDGER, "pi_1", 400 * C, None)]


def test_when_stripe_cannot_be_read_the_ledger_side_is_reported_with_the_error(books, stripe_has, monkeypatch):
    stripe_has(**matching_stripe())

    def unreachable(**kwargs):
        raise stripe_gateway.GatewayError("Could not connect to Stripe.", code="api_connection_error")

    monkeypatch.setattr(stripe_gateway, "transfers", unreachable)

    report = reconciliation.reconciliation_report()

    assert not report.reconciles
    assert report.differences == []
    assert report.stripe_errors == ["Transferred to owners: Stripe could not be read (Could not connect to Stripe.)"]
    assert [(t.what, t.stripe_nc, t.ledger_nc) for t in report.totals][4] == ("transfer", None, 300 * C)


def test_when_stripe_cannot_be_reached_it_is_tried_once_not_once_per_list(books, stripe_has, monkeypatch):
    import stripe

    stripe_has(**matching_stripe())
    calls = []

    def unreachable(**kwargs):
        calls.append(kwargs)
        try:
            raise stripe.APIConnectionError("Unexpected error communicating with Stripe.")
        except stripe.APIConnectionError as error:
            raise stripe_gateway.GatewayError(error.user_message or str(error)) from error

    for name in ("payment_intents", "refunds", "transfers"):
        monkeypatch.setattr(stripe_gateway, name, unreachable)

    report = reconciliation.reconciliation_report()

    assert len(calls) == 1
    assert len(report.stripe_errors) == 5  # captures, top-ups, refunds, balance refunds, transfers
    assert [t.stripe_nc for t in report.totals] == [None] * 5


def test_an_unbalanced_transaction_spoils_the_reconciliation(books, stripe_has, monkeypatch):
    stripe_has(**matching_stripe())
    monkeypatch.setattr(reconciliation.ledger, "unbalanced_transactions", lambda: [42])

    report = reconciliation.reconciliation_report()

    assert (report.reconciles, report.unbalanced_transaction_ids) == (False, [42])


def test_top_ups_and_refunds_of_unused_balance_reconcile_by_the_top_ups_payment_intent(books, stripe_has, alice):
    book_topup(alice, "pi_topup", 2_000)
    book_balance_refund(alice, "pi_topup", "1", 700)
    book_balance_refund(alice, "pi_topup", "2", 300)  # two refunds of the same top-up: one sum per intent
    stripe = matching_stripe()
    stripe["intents"].append(intent("pi_topup", received=2_000, amount=2_000, topup_id="7"))
    stripe["refunds"] += [
        refund("re_b1", 700, payment_intent="pi_topup"),
        refund("re_b2", 300, payment_intent="pi_topup"),
    ]
    stripe_has(**stripe)

    report = reconciliation.reconciliation_report()

    assert report.reconciles, report.differences
    totals = {t.what: (t.stripe_nc, t.ledger_nc) for t in report.totals}
    assert totals["topup"] == (2_000 * C, 2_000 * C)
    assert totals["balance_refund"] == (1_000 * C, 1_000 * C)
    assert totals["refund"] == (100 * C, 100 * C)  # a top-up's refunds are not refunds of a job


def test_a_balance_refund_that_stripe_refused_and_the_ledger_reversed_reconciles(books, stripe_has, alice):
    book_topup(alice, "pi_topup", 1_000)
    refused = book_balance_refund(alice, "pi_topup", "1", 400)
    ledger.reverse(txn=refused, key="balance_refund_failed:1")
    stripe = matching_stripe()
    stripe["intents"].append(intent("pi_topup", received=1_000, topup_id="7"))
    stripe["refunds"].append(refund("re_b1", 400, payment_intent="pi_topup", status="failed"))
    stripe_has(**stripe)

    assert reconciliation.reconciliation_report().reconciles


def test_a_balance_refund_missing_at_stripe_and_a_top_up_missing_in_the_ledger_are_flagged(books, stripe_has, alice):
    book_topup(alice, "pi_topup", 1_000)
    book_balance_refund(alice, "pi_topup", "1", 400)
    stripe = matching_stripe()
    stripe["intents"] += [intent("pi_topup", received=1_000, topup_id="7"),
                          intent("pi_topup_2", received=500, topup_id="8")]  # fmt: skip
    stripe_has(**stripe)

    assert reconciliation.reconciliation_report().differences == [
        Difference("topup", MISSING_IN_LEDGER, "pi_topup_2", 500 * C, None),
        Difference("balance_refund", MISSING_AT_STRIPE, "pi_topup", None, 400 * C),
    ]


def test_a_subcent_job_captured_in_whole_cents_reconciles(stripe_has, alice, olivia):
    """Work worth 6.17283945 ¢ is captured as 7 ¢: the capture is what left the hold, the rest of the last cent went
    onto the balance, and Stripe's 7 ¢ match."""
    book_capture(alice, olivia, "pi_sub", 7, fee=1, work_nc=6_172_839_450)
    stripe_has(intents=[intent("pi_sub", received=7)])

    report = reconciliation.reconciliation_report()

    assert report.reconciles, report.differences
    assert report.totals[0].ledger_nc == 7 * C
    assert ledger.balance(kind=AccountKind.CUSTOMER_BALANCE, user_id=alice.pk) == 7 * C - 6_172_839_450


def test_a_booking_that_is_not_whole_cents_is_an_amount_difference(stripe_has, alice, olivia):
    """Stripe moves whole cents: a capture booked to the n¢ (the hold debited by the work, not by the cents taken)
    cannot match, and the difference is shown to the n¢."""
    ledger.post(
        kind=Kind.CAPTURE, key="capture:pi_bad", stripe_object_id="pi_bad",
        legs=[Leg(AccountKind.CUSTOMER_HELD, 6_172_839_450, user_id=alice.pk),
              Leg(AccountKind.STRIPE_CLEARING, -6_172_839_450)],
    )  # fmt: skip
    stripe_has(intents=[intent("pi_bad", received=7)])

    (difference,) = reconciliation.reconciliation_report().differences

    assert difference == Difference("capture", AMOUNT_MISMATCH, "pi_bad", 7 * C, 6_172_839_450)
    assert difference.delta_nc == 827_160_550


# --- The staff page --------------------------------------------------------------------------------------------------


def test_staff_see_the_books_and_that_they_reconcile(client, staff, books, stripe_has):
    stripe_has(**matching_stripe())
    client.force_login(staff)

    response = client.get(FINANCE)

    assert response.status_code == 200
    page = " ".join(response.content.decode().split())
    for text in (
        "Gross volume</small><div class=\"stat\">$4.00", "Platform fee revenue</small><div class=\"stat\">$0.60",
        "take rate 15.00 %", "Refunds</small><div class=\"stat\">$1.00", "$3.00 net of refunds",
        "Pending (in the hold period)</th><td>$0.40", "Available (to be paid out)</th><td>$0.00",
        "Paid out</th><td>$3.00", "Open authorizations</small><div class=\"stat\">$0.00",
        "Books reconcile: no difference.", "Every ledger transaction's entries sum to zero.",
        "<td>Charged for validated work</td><td>1</td>",
    ):  # fmt: skip
        assert text in page, text


def test_the_page_shows_the_last_reconciliation_and_beat_brings_a_new_one(client, staff, books, stripe_has):
    """Reconciling reads every Stripe object and the whole ledger: page views reuse a report of the last few minutes,
    and beat's task makes the next one."""
    from billing import tasks

    stripe_has(**matching_stripe())
    client.force_login(staff)
    assert "Books reconcile: no difference." in client.get(FINANCE).content.decode()

    stripe = matching_stripe()
    stripe["intents"] += [intent("pi_2", received=250)]  # Stripe now holds a capture the ledger lacks
    stripe_has(**stripe)
    assert "Books reconcile: no difference." in client.get(FINANCE).content.decode()  # the report of a moment ago

    tasks.reconciliation_refresh()
    page = " ".join(client.get(FINANCE).content.decode().split())
    assert "Differences (1)" in page
    assert "<code>pi_2</code>" in page


def test_a_report_that_could_not_read_stripe_is_not_kept(client, staff, books, stripe_has, monkeypatch):
    def unreachable(**kwargs):
        raise stripe_gateway.GatewayError("Stripe is down")

    monkeypatch.setattr(stripe_gateway, "payment_intents", unreachable)
    client.force_login(staff)
    assert "Stripe could not be reached." in client.get(FINANCE).content.decode()

    stripe_has(**matching_stripe())  # Stripe is back: the next view reads it again
    assert "Books reconcile: no difference." in client.get(FINANCE).content.decode()


def test_staff_see_every_difference_in_a_table(client, staff, books, stripe_has, alice):
    book_refund(alice, "re_ghost", 5)
    stripe = matching_stripe()
    stripe["intents"] += [intent("pi_2", received=250)]
    stripe["transfers"] = [transfer("tr_1", 301)]
    stripe_has(**stripe)
    client.force_login(staff)

    page = " ".join(client.get(FINANCE).content.decode().split())

    assert "Books reconcile" not in page
    assert "Differences (3)" in page
    for row in (
        '<code>pi_2</code></td> <td><span class="status status-bad">Missing in the ledger</span></td> '
        "<td>$2.50</td> <td>—</td>",
        '<code>re_ghost</code></td> <td><span class="status status-bad">Missing at Stripe</span></td> '
        "<td>—</td> <td>$0.05</td>",
        '<code>tr_1</code></td> <td><span class="status status-bad">Amounts differ</span></td> '
        "<td>$3.01</td> <td>$3.00</td>",
    ):
        assert row in page, row


def test_a_stripe_outage_shows_the_ledger_and_a_warning_not_an_error_page(client, staff, books, monkeypatch):
    def unreachable(**kwargs):
        raise stripe_gateway.GatewayError("Payments are not configured: set STRIPE_SECRET_KEY.")

    for name in ("payment_intents", "refunds", "transfers"):
        monkeypatch.setattr(stripe_gateway, name, unreachable)
    client.force_login(staff)

    response = client.get(FINANCE)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Stripe could not be reached." in page
    assert page.count("Stripe could not be read (Payments are not configured: set STRIPE_SECRET_KEY.)") == 5
    assert "Books reconcile" not in page
    assert "unavailable" in page
    assert "$4.00" in page  # the ledger's captures


def test_only_staff_see_the_finance_page(client, alice, olivia):
    assert client.get(FINANCE).status_code == 302  # to the login page
    for user in (alice, olivia):
        client.force_login(user)
        assert client.get(FINANCE).status_code == 403


# --- The command -----------------------------------------------------------------------------------------------------


def test_the_command_exits_0_when_the_books_reconcile(books, stripe_has, capsys):
    stripe_has(**matching_stripe())

    call_command("reconcile")

    assert "Books reconcile: no difference." in capsys.readouterr().out


def test_the_command_exits_1_on_a_difference(books, stripe_has, capsys):
    stripe = matching_stripe()
    stripe["intents"].append(intent("pi_2", received=250))
    stripe_has(**stripe)

    with pytest.raises(SystemExit) as exit_:
        ManagementUtility(["manage.py", "reconcile"]).execute()

    assert exit_.value.code == 1
    out = capsys.readouterr()
    assert "DIFFERENCE capture pi_2: Missing in the ledger (Stripe $2.50, ledger —)" in out.out
    assert "The books do not reconcile: 1 difference(s)." in out.err


def test_the_command_exits_2_when_stripe_cannot_be_read(books, stripe_has, monkeypatch):
    stripe_has(**matching_stripe())

    def unreachable(**kwargs):
        raise stripe_gateway.GatewayError("Could not connect to Stripe.")

    monkeypatch.setattr(stripe_gateway, "refunds", unreachable)

    with pytest.raises(CommandError) as error:
        call_command("reconcile")

    assert error.value.returncode == 2


# --- Against the local Stripe server ---------------------------------------------------------------------------------


def test_a_job_settled_refunded_and_paid_out_at_the_local_stripe_server_reconciles(
    alice, alice_card, olivia, olivia_car, onboarded, staff, settings
):
    """The real SDK's objects: a partial capture (whose released rest the local server records as a refund), a
    refund and a transfer. The server is shared by the session, so only this test's objects are checked."""
    bid = builders.bid_authorized(alice, budget_cents=1000)
    builders.validate(builders.sell(bid, olivia_car, ch=2.0, price_mcents=5_000))
    builders.close(bid)
    auth = settling.bid_settle(bid_id=bid.pk)
    stripe_refund = refunds.refund_create(authorization=auth, amount_cents=4, reason="slow job", by=staff)
    onboarded(olivia)
    settings.MIN_PAYOUT_CENTS = 1
    payouts.earnings_release_due(now=timezone.now() + timedelta(hours=73))
    (payout,) = payouts.payouts_run(force=True)

    report = reconciliation.reconciliation_report()

    assert payout.stripe_transfer_id.startswith("tr_")
    ours = {auth.stripe_payment_intent_id, stripe_refund.stripe_refund_id, payout.stripe_transfer_id}
    assert report.stripe_errors == []
    assert [d for d in report.differences if d.object_id in ours] == []
    # Other tests' Stripe objects (their bookings rolled back) show as missing in the ledger, never ours.
    assert {d.problem for d in report.differences} <= {MISSING_IN_LEDGER}


def test_a_subcent_job_a_top_up_and_a_balance_refund_at_the_local_stripe_server_reconcile(
    alice, alice_card, olivia, olivia_car, onboarded, settings
):
    """Work worth 6.17283945 ¢ captured as 7 ¢ (the rest of the last cent onto alice's balance), a top-up and the
    refund of the unused balance in whole cents, and a payout of olivia's whole cents (the rest carried): every
    Stripe object of this test has its booking, to the n¢."""
    bid = builders.bid_authorized(alice, budget_cents=1000)
    builders.validate(builders.sell(bid, olivia_car, ch=1.23456789, price_mcents=5_000))
    builders.close(bid)
    auth = settling.bid_settle(bid_id=bid.pk)
    topup = topups.topup_create(customer=alice, amount_cents=500)
    (balance_refund,) = topups.balance_refund(customer=alice)
    onboarded(olivia)
    settings.MIN_PAYOUT_CENTS = 1
    payouts.earnings_release_due(now=timezone.now() + timedelta(hours=73))
    (payout,) = payouts.payouts_run(force=True)

    report = reconciliation.reconciliation_report()

    assert (auth.charged_nc, auth.captured_cents) == (6_172_839_450, 7)
    assert (topup.status, balance_refund.status, balance_refund.amount_cents) == ("succeeded", "succeeded", 500)
    # 15 % of 6_172_839_450 n¢ is 925_925_917.5, half up; olivia's 5_246_913_532 n¢ are paid as 5 ¢.
    assert payout.amount_cents == 5
    assert ledger.balance(kind=AccountKind.OWNER_AVAILABLE, user_id=olivia.pk) == 246_913_532
    assert ledger.balance(kind=AccountKind.CUSTOMER_BALANCE, user_id=alice.pk) == 7 * C - 6_172_839_450
    ours = {auth.stripe_payment_intent_id, topup.stripe_payment_intent_id, payout.stripe_transfer_id}
    assert report.stripe_errors == []
    assert [d for d in report.differences if d.object_id in ours or not d.object_id] == []
    assert {d.problem for d in report.differences} <= {MISSING_IN_LEDGER}
