"""The ledger reconciled against Stripe: what Stripe says was captured, refunded and transferred, object by object,
against the ledger transactions that booked it.

Each ledger transaction that moves money at Stripe names its Stripe object (`stripe_object_id`): the PaymentIntent
for a capture or a top-up, the refund for a refund, the top-up's PaymentIntent for a refund of unused balance, the
transfer for a payout. A reversal of one of them counts against the same object. Every Stripe object must have its
booking with the same amount, and every booking its Stripe object; anything else is a difference for staff to look
at. Amounts are n¢ (Stripe's cents × 10⁹), so a booking that is not whole cents is a difference too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import stripe
from django.core.cache import cache
from django.db.models import Case, F, Sum, When
from django.utils import timezone

from core.money import nc_from_cents

from . import ledger, stripe_gateway
from .models import AccountKind, LedgerEntry, LedgerTransaction

Kind = LedgerTransaction.Kind

CAPTURES, TOPUPS, REFUNDS, BALANCE_REFUNDS, TRANSFERS = "capture", "topup", "refund", "balance_refund", "transfer"
LABELS = {
    CAPTURES: "Captured from cards", TOPUPS: "Top-ups charged", REFUNDS: "Refunded to customers",
    BALANCE_REFUNDS: "Unused balance refunded", TRANSFERS: "Transferred to owners",
}  # fmt: skip
MISSING_IN_LEDGER, MISSING_AT_STRIPE, AMOUNT_MISMATCH = "missing_in_ledger", "missing_at_stripe", "amount_mismatch"
PROBLEMS = {
    MISSING_IN_LEDGER: "Missing in the ledger",
    MISSING_AT_STRIPE: "Missing at Stripe",
    AMOUNT_MISMATCH: "Amounts differ",
}


@dataclass(frozen=True)
class Difference:
    what: str  # one of LABELS
    problem: str  # one of PROBLEMS
    object_id: str  # the Stripe id ("" for a booking that names none)
    stripe_nc: int | None  # None: Stripe has no such object
    ledger_nc: int | None  # None: the ledger has no booking of it

    @property
    def what_display(self) -> str:
        return LABELS[self.what]

    @property
    def problem_display(self) -> str:
        return PROBLEMS[self.problem]

    @property
    def delta_nc(self) -> int:
        """Stripe minus ledger."""
        return (self.stripe_nc or 0) - (self.ledger_nc or 0)


@dataclass(frozen=True)
class Total:
    what: str
    ledger_nc: int
    stripe_nc: int | None  # None: Stripe could not be read

    @property
    def label(self) -> str:
        return LABELS[self.what]

    @property
    def delta_nc(self) -> int | None:
        return None if self.stripe_nc is None else self.stripe_nc - self.ledger_nc


@dataclass
class Report:
    currency: str
    totals: list[Total]
    differences: list[Difference] = field(default_factory=list)
    unbalanced_transaction_ids: list[int] = field(default_factory=list)
    stripe_errors: list[str] = field(default_factory=list)  # what could not be read from Stripe, and why
    checked_at: datetime = field(default_factory=timezone.now)

    @property
    def stripe_reachable(self) -> bool:
        return not self.stripe_errors

    @property
    def reconciles(self) -> bool:
        """Every Stripe object was read and matches its booking, and every ledger transaction balances."""
        return self.stripe_reachable and not self.differences and not self.unbalanced_transaction_ids


# --- Stripe's side ----------------------------------------------------------------------------------------------------


def _get(obj, name: str, default=None):
    """A field of a Stripe object (or of any object with attributes, such as a test's stand-in)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _is_hold_release(refund) -> bool:
    # The local Stripe server (localstripe) captures a charge in full and gives the uncaptured rest back as a refund
    # of the charge with no payment intent. Real Stripe makes no refund for that, and every refund of ours names its
    # payment intent, so such a refund is the release of a hold, not money given back.
    return not _get(refund, "payment_intent")


def _captured_cents(intent) -> int:
    """What Stripe captured on a PaymentIntent (amount_received); the local Stripe server reports no amount_received,
    so there it is the charge's amount less the hold it released."""
    if _get(intent, "status") != "succeeded":
        return 0
    received = _get(intent, "amount_received")
    if received is not None:
        return int(received)
    charge = _get(intent, "latest_charge")
    if charge is None or isinstance(charge, str):
        return int(_get(intent, "amount", 0))
    captured = _get(charge, "amount_captured")
    if captured is not None:
        return int(captured)
    refunds = _get(_get(charge, "refunds"), "data", None) or []
    return int(_get(charge, "amount", 0)) - sum(int(_get(r, "amount", 0)) for r in refunds if _is_hold_release(r))


def _is_topup(intent) -> bool:
    # Stripe's metadata is a StripeObject, not a dict (it has no .get): read it as any other field.
    return bool(_get(_get(intent, "metadata") or {}, "topup_id"))


def _stripe_intents(currency: str, *, topups: bool) -> tuple[dict[str, int], set[str]]:
    """Captured n¢ per PaymentIntent id (those that captured anything), and the ids of every intent: the bids' card
    payments, or the top-ups."""
    captured, seen = {}, set()
    for intent in stripe_gateway.payment_intents():
        if _get(intent, "currency") != currency or _is_topup(intent) != topups:
            continue
        seen.add(intent.id)
        cents = _captured_cents(intent)
        if cents:
            captured[intent.id] = nc_from_cents(cents)
    return captured, seen


def _stripe_captures(currency: str) -> tuple[dict[str, int], set[str]]:
    return _stripe_intents(currency, topups=False)


def _stripe_topups(currency: str) -> tuple[dict[str, int], set[str]]:
    return _stripe_intents(currency, topups=True)


def _topup_intent_ids(currency: str) -> set[str]:
    return {intent.id for intent in stripe_gateway.payment_intents() if _is_topup(intent)}


def _stripe_refunds_of(currency: str, *, balance: bool) -> tuple[dict[str, int], set[str]]:
    """Refunded n¢: of the bids' card payments per refund id, or of top-ups (unused balance) per top-up's intent."""
    topup_intents = _topup_intent_ids(currency)
    refunded: dict[str, int] = defaultdict(int)
    seen = set()
    for refund in stripe_gateway.refunds():
        if _get(refund, "currency") != currency or _is_hold_release(refund):
            continue
        intent_id = _get(refund, "payment_intent")
        if (intent_id in topup_intents) != balance:
            continue
        key = intent_id if balance else refund.id
        seen.add(key)
        # A failed or canceled refund gave nothing back (refund_book books only these two statuses).
        if _get(refund, "status") in ("succeeded", "pending"):
            refunded[key] += nc_from_cents(int(_get(refund, "amount", 0)))
    return dict(refunded), seen


def _stripe_refunds(currency: str) -> tuple[dict[str, int], set[str]]:
    return _stripe_refunds_of(currency, balance=False)


def _stripe_balance_refunds(currency: str) -> tuple[dict[str, int], set[str]]:
    return _stripe_refunds_of(currency, balance=True)


def _stripe_transfers(currency: str) -> tuple[dict[str, int], set[str]]:
    transferred, seen = {}, set()
    for transfer in stripe_gateway.transfers():
        if _get(transfer, "currency") != currency:
            continue
        seen.add(transfer.id)
        cents = int(_get(transfer, "amount", 0)) - int(_get(transfer, "amount_reversed", 0) or 0)
        if cents:
            transferred[transfer.id] = nc_from_cents(cents)
    return transferred, seen


# --- The ledger's side ------------------------------------------------------------------------------------------------


def _ledger_amounts(*, kind: str, account_kind: str, sign: int, currency: str) -> dict[str, int]:
    """n¢ booked per Stripe object id: the `account_kind` entries of `kind` transactions (times `sign`, so that
    a credit counts positive) less those of the reversals of such transactions."""
    rows = (
        LedgerEntry.objects.filter(account__kind=account_kind, currency=currency)
        .filter(transaction__kind__in=(kind, Kind.REVERSAL))
        .annotate(
            booked_kind=Case(
                When(transaction__kind=Kind.REVERSAL, then=F("transaction__reverses__kind")),
                default=F("transaction__kind"),
            ),
            object_id=Case(
                When(transaction__kind=Kind.REVERSAL, then=F("transaction__reverses__stripe_object_id")),
                default=F("transaction__stripe_object_id"),
            ),
        )
        .filter(booked_kind=kind)
        .values_list("object_id")
        .annotate(total=Sum("amount_nc"))
        .order_by()
    )
    amounts: dict[str, int] = defaultdict(int)
    for object_id, total in rows:
        amounts[object_id or ""] += total * sign
    return {object_id: amount for object_id, amount in amounts.items() if amount}


# --- Matching ---------------------------------------------------------------------------------------------------------


def _match(what: str, stripe_side: dict[str, int], seen: set[str], ledger_side: dict[str, int]) -> list[Difference]:
    differences = []
    for object_id in sorted(set(stripe_side) | set(ledger_side)):
        at_stripe, booked = stripe_side.get(object_id), ledger_side.get(object_id)
        if booked is None:
            differences.append(Difference(what, MISSING_IN_LEDGER, object_id, at_stripe, None))
        elif at_stripe is None and object_id not in seen:
            differences.append(Difference(what, MISSING_AT_STRIPE, object_id, None, booked))
        elif at_stripe != booked:
            # Stripe knows the object but moved a different amount (nothing at all, say, for a canceled intent).
            differences.append(Difference(what, AMOUNT_MISMATCH, object_id, at_stripe or 0, booked))
    return differences


# What is compared: Stripe's reader, and the ledger transactions and account (with the sign that makes it positive).
# A card capture is what left the customer's hold (customer_held): the work, and the rest of its last cent that went
# onto the balance. A job paid from the balance touches no hold and nothing at Stripe.
SOURCES: list[tuple[str, Callable[[str], tuple[dict[str, int], set[str]]], str, str, int]] = [
    (CAPTURES, _stripe_captures, Kind.CAPTURE, AccountKind.CUSTOMER_HELD, 1),
    (TOPUPS, _stripe_topups, Kind.TOPUP, AccountKind.PREPAID_CASH, 1),
    (REFUNDS, _stripe_refunds, Kind.REFUND, AccountKind.REFUNDS, 1),
    (BALANCE_REFUNDS, _stripe_balance_refunds, Kind.BALANCE_REFUND, AccountKind.PREPAID_CASH, -1),
    (TRANSFERS, _stripe_transfers, Kind.PAYOUT, AccountKind.OWNER_PAID_OUT, -1),
]


def reconciliation_report(*, currency: str = "usd") -> Report:
    """Reconcile the ledger with Stripe: totals of captures, top-ups, refunds and transfers on both sides, every
    difference object by object, and the ledger's own check that each transaction balances. A part of Stripe that
    cannot be read is reported (`stripe_errors`) with the ledger's side alone; it never raises for Stripe."""
    report = Report(currency=currency, totals=[], unbalanced_transaction_ids=sorted(ledger.unbalanced_transactions()))
    unreachable = ""
    for what, read_stripe, kind, account_kind, sign in SOURCES:
        booked = _ledger_amounts(kind=kind, account_kind=account_kind, sign=sign, currency=currency)
        try:
            if unreachable:
                # The SDK retries a connection with back-off: one wait for the whole report is enough.
                raise stripe_gateway.GatewayError(unreachable)
            at_stripe, seen = read_stripe(currency)
        # Pages after the first are fetched while iterating, outside stripe_gateway's wrapper: its errors are raw.
        except (stripe_gateway.GatewayError, stripe.StripeError) as error:
            message = " ".join((getattr(error, "message", None) or str(error)).split())
            if isinstance(error, stripe.APIConnectionError) or isinstance(error.__cause__, stripe.APIConnectionError):
                unreachable = message
            report.stripe_errors.append(f"{LABELS[what]}: Stripe could not be read ({message})")
            report.totals.append(Total(what, ledger_nc=sum(booked.values()), stripe_nc=None))
            continue
        report.totals.append(Total(what, ledger_nc=sum(booked.values()), stripe_nc=sum(at_stripe.values())))
        report.differences += _match(what, at_stripe, seen, booked)
    return report


# --- For the staff's finance page ----------------------------------------------------------------------------------

REPORT_CACHE_KEY = "billing:reconciliation"
REPORT_FRESH_S = 300  # beat refreshes it more often than this (billing.tasks.reconciliation_refresh)


def reconciliation_report_recent(*, currency: str = "usd") -> Report:
    """The last reconciliation, at most REPORT_FRESH_S old (its `checked_at` says when). Reconciling lists every Stripe
    object and sums the whole ledger, seconds once the books are big: beat does it, and a page view only when there
    is no recent report (or the last could not read Stripe, which is never kept)."""
    report = cache.get(f"{REPORT_CACHE_KEY}:{currency}")
    if report is not None and (timezone.now() - report.checked_at).total_seconds() < REPORT_FRESH_S:
        return report
    return reconciliation_refresh(currency=currency)


def reconciliation_refresh(*, currency: str = "usd") -> Report:
    report = reconciliation_report(currency=currency)
    if report.stripe_reachable:
        cache.set(f"{REPORT_CACHE_KEY}:{currency}", report, REPORT_FRESH_S * 2)
    return report
