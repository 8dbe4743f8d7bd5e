from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


class PayoutSchedule(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"


class PayoutPolicy(models.Model):
    """How and when owners are paid, set by staff: the smallest payout, how long earnings are held before they can
    be paid out, and the payout schedule. Append-only like the market's own rules, which the marketplace keeps: every
    change is a new row, and the newest is in force."""

    min_payout_cents = models.PositiveIntegerField("minimum payout (¢)", default=1000)
    earnings_hold_hours = models.PositiveIntegerField("earnings hold (hours)", default=72)
    payout_schedule = models.CharField(max_length=8, choices=PayoutSchedule.choices, default=PayoutSchedule.WEEKLY)
    note = models.CharField(max_length=255, blank=True, help_text="Why this change (shown in the history).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "payout policy"
        verbose_name_plural = "payout policies (newest is in force)"

    def __str__(self) -> str:
        return f"Payouts of {self.created_at:%Y-%m-%d %H:%M}"

    def clean(self) -> None:
        # Earnings are held at least as long as a caught car's results can be audited (marketplace/verdicts.py:
        # audit_open), so that no wrong result is paid out before the audit that would reverse it.
        window = settings.VERIFICATION_AUDIT_WINDOW_HOURS
        if self.earnings_hold_hours is not None and self.earnings_hold_hours < window:
            raise ValidationError({"earnings_hold_hours": (
                f"At least {window} hours: the audit window, within which a caught car's unchecked results are run "
                "again and their earnings reversed, must close before the earnings can be paid out."
            )})  # fmt: skip


# --- The ledger ------------------------------------------------------------------------------------------------------


class AccountKind(models.TextChoices):
    """The ledger's accounts, in nano-cents (n¢: 1 ¢ = 10⁹ n¢, core/money.py). Amounts are signed: + is a debit, − a
    credit. Each kind has a normal side, and its balance (shown as a positive number) is the sum of its entries times
    that side.

    The postings (billing/ledger.py), W the job's validated work (exact, to the n¢), S the cars' shares, F the fee:
      top-up T        Dr prepaid_cash T                    Cr customer_balance T
      reserve B       Dr customer_balance B                Cr customer_reserved B
      authorize B     Dr stripe_clearing B                 Cr customer_held B
      release R       Dr customer_held R                   Cr stripe_clearing R           (a card's hold), or
                      Dr customer_reserved R               Cr customer_balance R          (a reservation)
      capture W       from the balance:  Dr customer_reserved W, customer_spend W   Cr prepaid_cash W, owner_pending S…,
                                         platform_fee F
                      from a card (C whole cents ≥ W):  Dr customer_held C, customer_spend W, prepaid_cash C−W
                                         Cr stripe_clearing C, owner_pending S…, platform_fee F, customer_balance C−W
                                         (the rest of the last cent is kept on the customer's balance)
                      and, for validated replicas:  Dr verification_cost V   Cr owner_pending V…
      hold over X     Dr owner_pending X                   Cr owner_available X
      payout A        Dr owner_available A                 Cr owner_paid_out A            (whole cents; the sub-cent
                                                                                          rest stays available)
      refund X        Dr refunds X                         Cr customer_spend X            (and, for a job paid from
                      the balance, Dr prepaid_cash X, Cr customer_balance X: the money goes back to the balance)
      balance refund  Dr customer_balance X                Cr prepaid_cash X              (whole cents, to the card)
      correction      after an audit (billing/services/corrections.py), the change in the job's books: the
                      earnings reversed Dr owner_pending, the fee Dr platform_fee, the cars whose results replaced
                      them Cr owner_pending, verification cost ± V, and Cr refunds R for the refund they pay for
    so that, at every moment:
      customers' spend (customer_spend + refunds) + verification cost = owners' earnings (pending + available + paid
      out) + the platform's fee;
      stripe_clearing = customer_held = card authorizations still open;
      prepaid_cash = customer_balance + customer_reserved (each customer's, and in all).
    """

    STRIPE_CLEARING = "stripe_clearing", "Stripe clearing (card authorizations open at Stripe)"
    CUSTOMER_HELD = "customer_held", "Customer funds held (authorized, not yet captured or released)"
    CUSTOMER_SPEND = "customer_spend", "Customer spend (captured for validated work)"
    OWNER_PENDING = "owner_pending", "Owner earnings pending (in the hold period)"
    OWNER_AVAILABLE = "owner_available", "Owner earnings available (to be paid out)"
    OWNER_PAID_OUT = "owner_paid_out", "Owner earnings paid out"
    PLATFORM_FEE = "platform_fee", "Platform fee revenue"
    REFUNDS = "refunds", "Refunds to customers"
    VERIFICATION_COST = "verification_cost", "Verification cost (replicas paid by the platform)"
    PREPAID_CASH = "prepaid_cash", "Prepaid money (top-ups, and the rest of captured cents, not yet spent)"
    CUSTOMER_BALANCE = "customer_balance", "Customer balance (prepaid, free to spend)"
    CUSTOMER_RESERVED = "customer_reserved", "Customer balance reserved by open bids"


# +1: debit-normal (authorizations Stripe holds for us, what customers spent, refunds); −1: credit-normal (owed).
NORMAL_SIDE = {
    AccountKind.STRIPE_CLEARING: 1,
    AccountKind.CUSTOMER_HELD: -1,
    AccountKind.CUSTOMER_SPEND: 1,
    AccountKind.OWNER_PENDING: -1,
    AccountKind.OWNER_AVAILABLE: -1,
    AccountKind.OWNER_PAID_OUT: -1,
    AccountKind.PLATFORM_FEE: -1,
    AccountKind.REFUNDS: 1,
    AccountKind.VERIFICATION_COST: 1,
    AccountKind.PREPAID_CASH: 1,
    AccountKind.CUSTOMER_BALANCE: -1,
    AccountKind.CUSTOMER_RESERVED: -1,
}
PER_USER_KINDS = {
    AccountKind.CUSTOMER_HELD, AccountKind.CUSTOMER_SPEND, AccountKind.OWNER_PENDING, AccountKind.OWNER_AVAILABLE,
    AccountKind.OWNER_PAID_OUT, AccountKind.REFUNDS, AccountKind.PREPAID_CASH, AccountKind.CUSTOMER_BALANCE,
    AccountKind.CUSTOMER_RESERVED,
}  # fmt: skip


class LedgerAccount(models.Model):
    kind = models.CharField(max_length=20, choices=AccountKind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_accounts"
    )
    currency = models.CharField(max_length=3, default="usd")

    class Meta:
        ordering = ["kind", "user_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "user", "currency"], condition=models.Q(user__isnull=False), name="one_account_per_user"
            ),
            models.UniqueConstraint(
                fields=["kind", "currency"], condition=models.Q(user__isnull=True), name="one_platform_account"
            ),
        ]

    def __str__(self) -> str:
        owner = f" of {self.user}" if self.user_id else ""
        return f"{self.get_kind_display().split(' (')[0]}{owner} ({self.currency.upper()})"

    @property
    def normal_side(self) -> int:
        return NORMAL_SIDE[self.kind]


class LedgerTransaction(models.Model):
    """One balanced posting: its entries sum to zero per currency. Append-only (enforced by triggers on PostgreSQL);
    a correction is a new transaction that reverses an old one. The idempotency key makes a retried task a no-op."""

    class Kind(models.TextChoices):
        AUTHORIZE = "authorize", "Card authorized"
        RELEASE = "release", "Authorization released"
        CAPTURE = "capture", "Charged for validated work"
        EARNINGS_RELEASE = "earnings_release", "Earnings out of hold"
        PAYOUT = "payout", "Payout to owner"
        REFUND = "refund", "Refund"
        REVERSAL = "reversal", "Reversal (correction)"
        CORRECTION = "correction", "Corrected after an audit"
        TOPUP = "topup", "Balance topped up"
        RESERVE = "reserve", "Budget reserved from the balance"
        BALANCE_REFUND = "balance_refund", "Balance refunded to the card"
        REFUND_TO_BALANCE = "refund_to_balance", "Refunded onto the prepaid balance"

    kind = models.CharField(max_length=20, choices=Kind.choices, db_index=True)
    idempotency_key = models.CharField(max_length=120, unique=True)
    description = models.CharField(max_length=255, blank=True)
    bid = models.ForeignKey(
        "marketplace.Bid", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_transactions"
    )
    payout = models.ForeignKey("Payout", null=True, blank=True, on_delete=models.PROTECT, related_name="transactions")
    reverses = models.OneToOneField("self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversed_by")
    stripe_object_id = models.CharField(max_length=64, blank=True, help_text="The Stripe object this books.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"


class LedgerEntry(models.Model):
    transaction = models.ForeignKey(LedgerTransaction, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(LedgerAccount, on_delete=models.PROTECT, related_name="entries")
    amount_nc = models.BigIntegerField(help_text="n¢ (1 ¢ = 10⁹ n¢): + debit, − credit.")
    currency = models.CharField(max_length=3)
    vehicle = models.ForeignKey(
        "fleet.Vehicle", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries",
        help_text="The car whose work earned this (owner earnings).",
    )  # fmt: skip
    ch = models.FloatField(null=True, blank=True, help_text="Compute-hours this earning pays for.")
    energy_wh = models.FloatField(null=True, blank=True, help_text="Energy the car reported for that work.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]
        verbose_name_plural = "ledger entries"
        indexes = [
            models.Index(fields=["account", "created_at"]),
            # An account's entries (its balance, an owner's earnings per car and per day) read from the index alone:
            # they are scattered over the whole table, so reading their rows was most of the time at 1M entries.
            # (Key columns, not INCLUDE: SQLite, the demo's database, has no INCLUDE.)
            models.Index(
                fields=[
                    "account",
                    "currency",
                    "created_at",
                    "amount_nc",
                    "transaction",
                    "vehicle",
                    "ch",
                    "energy_wh",
                ],
                name="billing_entry_account_cover",
            ),
        ]
        constraints = [models.CheckConstraint(condition=~models.Q(amount_nc=0), name="entry_not_zero")]

    def __str__(self) -> str:
        return f"{self.amount_nc:+d} n¢ {self.currency} {self.account}"


# --- Stripe-side records ------------------------------------------------------------------------------------------


class BillingProfile(models.Model):
    """A customer's Stripe customer and saved card (only the brand and last four digits are kept here)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="billing_profile")
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    customer_key = models.CharField(max_length=80, blank=True, help_text="Idempotency key of the customer's creation.")
    payment_method_id = models.CharField(max_length=64, blank=True)
    card_brand = models.CharField(max_length=20, blank=True)
    card_last4 = models.CharField(max_length=4, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Billing of {self.user}"

    @property
    def has_card(self) -> bool:
        return bool(self.payment_method_id)


class PaymentAuthorization(models.Model):
    """How a bid's budget is set aside, and how it ended: reserved from the customer's prepaid balance (`balance`), or
    held on their card (`card`: a PaymentIntent with manual capture). A reservation waiting for funds is PENDING.

    Idempotency keys are derived from this row's id and stored before each Stripe call, so a crash between the call
    and the commit is repaired by calling again with the same key: Stripe answers with the same object.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Authorizing"
        AUTHORIZED = "authorized", "Authorized"
        DECLINED = "declined", "Declined"
        SETTLING = "settling", "Capturing"
        SETTLED = "settled", "Settled"

    class Method(models.TextChoices):
        BALANCE = "balance", "Prepaid balance"
        CARD = "card", "Card hold"

    bid = models.OneToOneField("marketplace.Bid", on_delete=models.PROTECT, related_name="authorization")
    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="authorizations")
    method = models.CharField(max_length=8, choices=Method.choices, default=Method.CARD)
    amount_cents = models.PositiveBigIntegerField(help_text="Reserved or authorized: the bid's budget.")
    currency = models.CharField(max_length=3, default="usd")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    stripe_payment_intent_id = models.CharField(max_length=64, blank=True, db_index=True)
    create_key = models.CharField(max_length=80, unique=True)
    capture_key = models.CharField(max_length=80, blank=True)
    capture_cents = models.PositiveBigIntegerField(null=True, blank=True, help_text="Decided before capturing.")
    captured_cents = models.PositiveBigIntegerField(default=0)
    released_cents = models.PositiveBigIntegerField(default=0)
    refunded_cents = models.PositiveBigIntegerField(default=0)
    work_mcents = models.DecimalField(
        max_digits=24, decimal_places=6, null=True, blank=True,
        help_text="Validated work × clearing prices, exactly, in milli-cents (before rounding to the n¢).",
    )  # fmt: skip
    charged_nc = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="What the validated work costs the customer, in n¢ (after corrections)."
    )
    settlement = models.JSONField(
        default=dict, blank=True, help_text="The split decided before capturing: fee, and each car's n¢, CH, Wh."
    )
    failure_code = models.CharField(max_length=60, blank=True)
    failure_message = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Authorization of bid {self.bid_id}"


class Refund(models.Model):
    """A refund of captured money: ours (requested by staff) or one made in Stripe's dashboard, booked from its
    webhook. One row per Stripe refund id."""

    authorization = models.ForeignKey(PaymentAuthorization, on_delete=models.PROTECT, related_name="refunds")
    amount_cents = models.PositiveBigIntegerField()
    reason = models.CharField(max_length=255, blank=True)
    idempotency_key = models.CharField(max_length=80, unique=True)
    stripe_refund_id = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["stripe_refund_id"], condition=~models.Q(stripe_refund_id=""), name="one_row_per_refund"
            )
        ]

    def __str__(self) -> str:
        return f"Refund of {self.amount_cents} ¢ on bid {self.authorization.bid_id}"


class ConnectAccount(models.Model):
    """An owner's Stripe Connect (Express) account, where payouts go."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="connect_account")
    stripe_account_id = models.CharField(max_length=64, blank=True)
    create_key = models.CharField(max_length=80, unique=True)
    details_submitted = models.BooleanField(default=False)
    payouts_enabled = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Connect account of {self.user}"


class Payout(models.Model):
    """A transfer of an owner's available earnings to their connected account: one per owner per period."""

    class Status(models.TextChoices):
        PENDING = "pending", "Sending"
        PAID = "paid", "Paid"
        FAILED = "failed", "Failed"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payouts")
    amount_cents = models.PositiveBigIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    period = models.DateField(help_text="The day (daily) or the Monday (weekly) this payout belongs to.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING, db_index=True)
    idempotency_key = models.CharField(max_length=80, unique=True)
    stripe_transfer_id = models.CharField(max_length=64, blank=True)
    destination = models.CharField(max_length=64)
    failure_message = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "period", "currency"], name="one_payout_per_owner_and_period"),
            models.CheckConstraint(condition=models.Q(amount_cents__gt=0), name="payout_positive"),
        ]

    def __str__(self) -> str:
        return f"Payout {self.pk} to {self.owner}"


class StripeEvent(models.Model):
    """A webhook event, stored once by its id: a duplicate delivery finds the row and does nothing."""

    event_id = models.CharField(max_length=80, unique=True)
    type = models.CharField(max_length=80, db_index=True)
    object_id = models.CharField(max_length=80, blank=True)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class TopUp(models.Model):
    """Money a customer adds to their prepaid balance: a PaymentIntent charged to their saved card at once. Booked
    once, whether the charging request or Stripe's webhook sees it succeed first."""

    class Status(models.TextChoices):
        PENDING = "pending", "Charging the card"
        SUCCEEDED = "succeeded", "Added to the balance"
        FAILED = "failed", "Declined"

    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="topups")
    amount_cents = models.PositiveBigIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    idempotency_key = models.CharField(max_length=80, unique=True)
    stripe_payment_intent_id = models.CharField(max_length=64, blank=True, db_index=True)
    refunded_cents = models.PositiveBigIntegerField(default=0, help_text="Given back to the card (unused balance).")
    failure_message = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.CheckConstraint(condition=models.Q(amount_cents__gt=0), name="topup_positive")]

    def __str__(self) -> str:
        return f"Top-up {self.pk} of {self.customer}"


class BalanceRefund(models.Model):
    """Unused prepaid balance given back to the card that paid it in: a Stripe refund of part of one top-up. The money
    leaves the balance in the ledger before Stripe is called (so it cannot be reserved meanwhile), and comes back if
    Stripe refuses."""

    class Status(models.TextChoices):
        PENDING = "pending", "Refunding"
        SUCCEEDED = "succeeded", "Refunded"
        FAILED = "failed", "Failed: back on the balance"

    topup = models.ForeignKey(TopUp, on_delete=models.PROTECT, related_name="balance_refunds")
    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="balance_refunds")
    amount_cents = models.PositiveBigIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    idempotency_key = models.CharField(max_length=80, unique=True)
    stripe_refund_id = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"Balance refund {self.pk} of {self.customer}"
