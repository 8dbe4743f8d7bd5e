"""Reads of billing: the payout rules in force, customers' spend and receipts, owners' earnings, the books."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, F, OuterRef, QuerySet, Subquery, Sum
from django.utils import timezone

from core.money import nc_from_cents, nc_from_mcents
from marketplace.models import WorkUnit
from marketplace.selectors import customer_results

from . import ledger, settlement
from .models import AccountKind, LedgerEntry, LedgerTransaction, PaymentAuthorization, PayoutPolicy, Refund, TopUp


def payout_policy_current() -> PayoutPolicy:
    """The payout rules in force: the newest PayoutPolicy, or (unsaved) the settings' defaults before staff ever set
    one."""
    policy = PayoutPolicy.objects.order_by("-created_at", "-pk").first()
    if policy is None:
        return PayoutPolicy(
            min_payout_cents=settings.MIN_PAYOUT_CENTS,
            earnings_hold_hours=settings.EARNINGS_HOLD_HOURS,
            payout_schedule=settings.PAYOUT_SCHEDULE,
        )
    return policy


# --- Customers: test mode, spend history, receipts -------------------------------------------------------------------


def stripe_test_mode() -> bool:
    """Whether cards are Stripe's test payment methods: the local Stripe server, a test key, or none set yet (then
    saving a card says that payments are not configured)."""
    return bool(settings.STRIPE_API_BASE) or not settings.STRIPE_SECRET_KEY.startswith("sk_live_")


def spend_history(*, user) -> QuerySet[PaymentAuthorization]:
    """The customer's settled jobs, newest first, each with `settled_at`: when the capture (or the release of an
    unused hold) was booked."""
    booked = (
        LedgerTransaction.objects.filter(
            bid_id=OuterRef("bid_id"), kind__in=(LedgerTransaction.Kind.CAPTURE, LedgerTransaction.Kind.RELEASE)
        )
        .order_by("created_at")
        .values("created_at")[:1]
    )
    return (
        PaymentAuthorization.objects.filter(customer=user, status=PaymentAuthorization.Status.SETTLED)
        .select_related("bid__inference_model", "bid__dataset")
        .annotate(settled_at=Subquery(booked))
        .order_by(F("settled_at").desc(nulls_last=True), "-created_at", "-pk")
    )


@dataclass(frozen=True)
class SpendTotals:
    """A customer's money, in n¢: spent this month and in all (net of refunds), the prepaid balance free to spend
    and reserved by open bids, and what open bids hold on the card."""

    month_nc: int
    all_time_nc: int
    held_nc: int
    balance_nc: int
    reserved_nc: int
    currency: str


def spend_totals(*, user, now: datetime | None = None, currency: str = "usd") -> SpendTotals:
    """What the customer paid for validated work, net of refunds, this calendar month and in all (their
    customer_spend account in the ledger, so it is what the books say), their prepaid balance, and what their open
    bids hold. Two queries."""
    now = now or timezone.now()
    month_start = timezone.localtime(now).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    entries = LedgerEntry.objects.filter(
        account__kind=AccountKind.CUSTOMER_SPEND, account__user=user, currency=currency
    )
    month = entries.filter(created_at__gte=month_start).aggregate(total=Sum("amount_nc"))["total"] or 0
    books = ledger.balances(user_id=user.pk, currency=currency)
    return SpendTotals(
        month_nc=month,
        all_time_nc=books.get(AccountKind.CUSTOMER_SPEND, 0),
        held_nc=books.get(AccountKind.CUSTOMER_HELD, 0),
        balance_nc=books.get(AccountKind.CUSTOMER_BALANCE, 0),
        reserved_nc=books.get(AccountKind.CUSTOMER_RESERVED, 0),
        currency=currency,
    )


def topups_recent(*, user, limit: int = 20) -> QuerySet[TopUp]:
    """The customer's latest top-ups (each with what of it was refunded as unused balance)."""
    return TopUp.objects.filter(customer=user).order_by("-created_at", "-pk")[:limit]


@dataclass(frozen=True)
class ReceiptLine:
    """Validated work that one round sold to the bid: `ch` compute-hours at the round's clearing price."""

    round_slot: datetime
    pool: str
    ch: float
    price_mcents_per_ch: int
    value_mcents: Decimal  # exact: each unit's CH (from its shortest repr) × the price, summed

    @property
    def value_nc(self) -> int:
        return nc_from_mcents(self.value_mcents)


@dataclass(frozen=True)
class Receipt:
    bid: object  # marketplace.models.Bid
    authorization: PaymentAuthorization | None
    lines: list[ReceiptLine]
    refunds: list[Refund] = field(default_factory=list)

    @property
    def work_mcents(self) -> Decimal:
        return sum((line.value_mcents for line in self.lines), Decimal(0))

    @property
    def ch(self) -> float:
        return sum(line.ch for line in self.lines)

    @property
    def settled(self) -> bool:
        return self.authorization is not None and self.authorization.status == PaymentAuthorization.Status.SETTLED

    @property
    def work_nc(self) -> int:
        """The work rounded half-up to the n¢, once per job (billing/settlement.py)."""
        return nc_from_mcents(self.work_mcents)

    @property
    def estimate_nc(self) -> int:
        """What the job would be charged now: never more than its budget."""
        if self.authorization is None:
            return self.work_nc
        return min(self.work_nc, nc_from_cents(self.authorization.amount_cents))

    @property
    def capped(self) -> bool:
        return self.estimate_nc < self.work_nc

    @property
    def charged_nc(self) -> int:
        """What the validated work was charged (after any correction of an audit)."""
        if self.authorization is None:
            return 0
        return self.authorization.charged_nc or 0

    @property
    def returned_nc(self) -> int:
        """For a job paid from the balance: what of its reservation went back to the balance when it ended."""
        if self.authorization is None:
            return 0
        return nc_from_cents(self.authorization.amount_cents) - self.charged_nc

    @property
    def carried_nc(self) -> int:
        """For a job paid by card: the rest of the last cent captured, kept on the customer's balance."""
        return (self.authorization.settlement or {}).get("carried_nc", 0) if self.authorization else 0


def receipt_get(*, bid) -> Receipt:
    """A bid's receipt: one line per round that sold it validated work, the work the job is charged for
    (services/settling.py): each slice's canonical result once. Replicas that checked it are the platform's cost;
    units under no allocation, not done (queued, leased, failed) or not validated are not billed and do not
    appear."""
    rows = (
        customer_results(bid=bid)
        .filter(allocation__isnull=False)
        .values_list(
            "allocation__round_id",
            "allocation__round__slot",
            "allocation__pool",
            "allocation__price_mcents_per_ch",
            # A replica's result that outvoted the first: shown in the round the customer bought the slice in, at
            # the price they pay (settlement.customer_price_mcents).
            "replica_of__allocation__round_id",
            "replica_of__allocation__round__slot",
            "replica_of__allocation__price_mcents_per_ch",
            "price_cap_mcents",
            "replica_of__price_cap_mcents",
            "ch",
        )
        .order_by("allocation__round__slot", "allocation__round_id", "pk")
    )
    groups: dict[tuple, list[float]] = defaultdict(list)
    for round_id, slot, pool, price, own_round_id, own_slot, own_price, cap, own_cap, ch in rows:
        if own_round_id is not None:
            round_id, slot = own_round_id, own_slot
        groups[(slot, round_id, pool, settlement.customer_price_mcents(price, own_price, cap, own_cap))].append(ch)
    lines = [
        ReceiptLine(
            round_slot=slot, pool=pool, ch=sum(chs), price_mcents_per_ch=price,
            value_mcents=sum((Decimal(repr(ch)) * price for ch in chs), Decimal(0)),
        )
        for (slot, _, pool, price), chs in sorted(groups.items(), key=lambda group: group[0][:2])
    ]  # fmt: skip
    authorization = PaymentAuthorization.objects.filter(bid=bid).first()
    refunds = list(authorization.refunds.order_by("created_at", "pk")) if authorization else []
    return Receipt(bid=bid, authorization=authorization, lines=lines, refunds=refunds)


def bid_charges_nc(*, bids) -> dict[int, int]:
    """What each bid has cost its customer so far, n¢ by bid id, in four queries whatever the number of bids (a page
    of jobs, the API's list): a settled job's charge net of its refunds and corrections (its customer_spend in the
    ledger); an open or unsettled one's validated work at the prices the customer pays (as its receipt computes
    it), never above its budget. marketplace.signals.bid_charges asks it (billing.apps connects it)."""
    ids = [bid.pk for bid in bids]
    auths = dict(
        PaymentAuthorization.objects.filter(bid_id__in=ids).values_list("bid_id", "status").order_by()
    )  # fmt: skip
    budgets = {bid.pk: nc_from_cents(bid.budget_cents) for bid in bids}
    settled = [bid_id for bid_id, status in auths.items() if status == PaymentAuthorization.Status.SETTLED]
    charges = dict.fromkeys(ids, 0)
    charges.update(
        LedgerEntry.objects.filter(transaction__bid_id__in=settled, account__kind=AccountKind.CUSTOMER_SPEND)
        .values_list("transaction__bid_id")
        .annotate(total=Sum("amount_nc"))
        .order_by()
    )
    open_ids = [bid_id for bid_id in ids if bid_id in auths and bid_id not in settled]
    rows = (
        WorkUnit.objects.filter(bid_id__in=open_ids, allocation__isnull=False)
        .filter(canonical=True, verification=WorkUnit.Verification.VALID, status=WorkUnit.Status.DONE)
        .values_list("bid_id", "allocation__price_mcents_per_ch", "replica_of__allocation__price_mcents_per_ch",
                     "price_cap_mcents", "replica_of__price_cap_mcents", "ch")
        .order_by()
    )  # fmt: skip
    work: dict[int, Decimal] = defaultdict(Decimal)
    for bid_id, price, own_price, cap, own_cap, ch in rows:
        work[bid_id] += Decimal(repr(ch)) * settlement.customer_price_mcents(price, own_price, cap, own_cap)
    for bid_id, mcents in work.items():
        charges[bid_id] = min(nc_from_mcents(mcents), budgets[bid_id])
    return charges


# --- Staff: the books at a glance ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinanceSummary:
    """The platform's books, in n¢, from the ledger's account totals (billing/models.py, AccountKind)."""

    gross_nc: int  # everything customers were charged for validated work, before refunds
    fee_nc: int
    refunds_nc: int
    owner_pending_nc: int
    owner_available_nc: int
    owner_paid_out_nc: int
    open_holds_nc: int
    prepaid_free_nc: int  # customers' prepaid balances, free to spend
    prepaid_reserved_nc: int  # ... and reserved by open bids
    transactions: list[tuple[str, int]]  # (kind, how many), every kind
    currency: str

    @property
    def net_nc(self) -> int:
        return self.gross_nc - self.refunds_nc

    @property
    def take_rate_pct(self) -> Decimal | None:
        """The platform fee as a share of gross volume, in %; None before the first charge."""
        if not self.gross_nc:
            return None
        return (Decimal(self.fee_nc) * 100 / self.gross_nc).quantize(Decimal("0.01"))


def finance_summary(*, currency: str = "usd") -> FinanceSummary:
    totals = ledger.totals_by_kind(currency=currency)
    counts = dict(LedgerTransaction.objects.values_list("kind").annotate(n=Count("pk")).order_by())
    return FinanceSummary(
        # A refund moves money from customer_spend to refunds: together they are all that was ever charged.
        gross_nc=totals.get(AccountKind.CUSTOMER_SPEND, 0) + totals.get(AccountKind.REFUNDS, 0),
        fee_nc=totals.get(AccountKind.PLATFORM_FEE, 0),
        refunds_nc=totals.get(AccountKind.REFUNDS, 0),
        owner_pending_nc=totals.get(AccountKind.OWNER_PENDING, 0),
        owner_available_nc=totals.get(AccountKind.OWNER_AVAILABLE, 0),
        owner_paid_out_nc=totals.get(AccountKind.OWNER_PAID_OUT, 0),
        open_holds_nc=totals.get(AccountKind.CUSTOMER_HELD, 0),
        prepaid_free_nc=totals.get(AccountKind.CUSTOMER_BALANCE, 0),
        prepaid_reserved_nc=totals.get(AccountKind.CUSTOMER_RESERVED, 0),
        transactions=[(label, counts.get(kind, 0)) for kind, label in LedgerTransaction.Kind.choices],
        currency=currency,
    )
