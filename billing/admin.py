from django.contrib import admin, messages

from accounts.audit import audit_record
from accounts.policy_admin import AppendOnlyPolicyAdmin
from core.admin import LargeTableAdmin, ReadOnlyAdmin
from core.exceptions import ApplicationError
from core.money import usd, usd_cents

from .models import (
    BalanceRefund,
    BillingProfile,
    ConnectAccount,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    PaymentAuthorization,
    Payout,
    PayoutPolicy,
    Refund,
    StripeEvent,
    TopUp,
)
from .selectors import payout_policy_current
from .services import payouts, refunds


@admin.register(PayoutPolicy)
class PayoutPolicyAdmin(AppendOnlyPolicyAdmin):
    list_display = ("created_at", "created_by", "min_payout_cents", "earnings_hold_hours", "payout_schedule", "note")
    # Only the staff who made a version, not every user of the platform.
    list_filter = (("created_by", admin.RelatedOnlyFieldListFilter), "payout_schedule")
    fieldsets = (
        ("Owners' payouts", {"fields": ("min_payout_cents", "earnings_hold_hours", "payout_schedule")}),
        ("Change", {"fields": ("note", "created_by", "created_at")}),
    )
    audit_action = "payout_policy.change"

    def defaults_in_force(self) -> dict:
        policy = payout_policy_current()
        return {name: getattr(policy, name) for name in ("min_payout_cents", "earnings_hold_hours", "payout_schedule")}


@admin.display(description="amount", ordering="amount_nc")
def entry_amount(entry: LedgerEntry) -> str:
    """Dollars with the digits the amount needs (+ debit, − credit); the exact n¢ are in `amount_nc`."""
    return usd(entry.amount_nc, entry.currency)


class LedgerEntryInline(admin.TabularInline):
    model = LedgerEntry
    fields = ("account", entry_amount, "amount_nc", "currency", "vehicle", "ch", "energy_wh")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class CurrencyListFilter(admin.SimpleListFilter):
    """The currencies of the ledger's accounts (a handful of rows), not a DISTINCT over every entry."""

    title = "currency"
    parameter_name = "currency"

    def lookups(self, request, model_admin):
        currencies = LedgerAccount.objects.order_by("currency").values_list("currency", flat=True).distinct()
        return [(currency, currency) for currency in currencies]

    def queryset(self, request, queryset):
        return queryset.filter(currency=self.value()) if self.value() else queryset


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(ReadOnlyAdmin, LargeTableAdmin):
    list_display = ("id", "created_at", "kind", "description", "bid", "payout", "stripe_object_id")
    list_filter = ("kind", ("created_at", admin.DateFieldListFilter))
    search_fields = ("idempotency_key", "description", "stripe_object_id", "bid__id")
    inlines = [LedgerEntryInline]
    list_select_related = ("bid__inference_model", "payout__owner")


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin, LargeTableAdmin):
    list_display = ("id", "created_at", "transaction", "account", entry_amount, "amount_nc", "currency", "vehicle")
    list_filter = ("account__kind", CurrencyListFilter, "transaction__kind")
    search_fields = ("account__user__username", "transaction__idempotency_key")
    list_select_related = ("transaction", "account__user", "vehicle")


@admin.register(PaymentAuthorization)
class PaymentAuthorizationAdmin(ReadOnlyAdmin):
    list_display = (
        "bid", "customer", "method", "status", "budget", "charged", "captured", "refunded", "created_at",
    )  # fmt: skip
    list_filter = ("method", "status", "currency", ("created_at", admin.DateFieldListFilter))
    search_fields = ("customer__username", "stripe_payment_intent_id", "bid__id")
    list_select_related = ("bid__inference_model", "customer")
    actions = ["refund_in_full"]

    @admin.display(description="budget", ordering="amount_cents")
    def budget(self, auth: PaymentAuthorization) -> str:
        return usd_cents(auth.amount_cents, auth.currency)

    @admin.display(description="charged for the work", ordering="charged_nc")
    def charged(self, auth: PaymentAuthorization) -> str:
        return usd(auth.charged_nc, auth.currency) if auth.charged_nc is not None else "—"

    @admin.display(description="captured from the card", ordering="captured_cents")
    def captured(self, auth: PaymentAuthorization) -> str:
        return usd_cents(auth.captured_cents, auth.currency) if auth.method == auth.Method.CARD else "—"

    @admin.display(description="refunded", ordering="refunded_cents")
    def refunded(self, auth: PaymentAuthorization) -> str:
        return usd_cents(auth.refunded_cents, auth.currency)

    @admin.action(description="Refund what was charged and not yet refunded (to the card, or onto the balance)")
    def refund_in_full(self, request, queryset):
        for auth in queryset.filter(status=PaymentAuthorization.Status.SETTLED):
            amount = refunds.refundable_cents(auth)
            if amount <= 0:
                continue
            try:
                refund = refunds.refund_create(
                    authorization=auth, amount_cents=amount, reason="Refunded by staff", by=request.user
                )
            except ApplicationError as error:
                self.message_user(request, f"Bid {auth.bid_id}: {error.message}", messages.ERROR)
            else:
                audit_record(
                    actor=request.user, action="payment.refund", target=auth,
                    details={"bid_id": auth.bid_id, "amount_cents": amount, "refund_id": refund.pk},
                )  # fmt: skip
                self.message_user(request, f"Bid {auth.bid_id}: refunded {usd_cents(amount)}.", messages.SUCCESS)


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = ("id", "authorization", "amount", "reason", "stripe_refund_id", "created_by", "created_at")
    list_filter = (("created_at", admin.DateFieldListFilter),)
    list_select_related = ("authorization", "created_by")

    @admin.display(description="amount", ordering="amount_cents")
    def amount(self, refund: Refund) -> str:
        return usd_cents(refund.amount_cents)


@admin.register(Payout)
class PayoutAdmin(ReadOnlyAdmin, LargeTableAdmin):
    list_display = ("id", "owner", "amount", "period", "status", "stripe_transfer_id", "paid_at")
    list_filter = ("status", CurrencyListFilter, "period")
    search_fields = ("owner__username", "stripe_transfer_id", "destination")
    list_select_related = ("owner",)
    actions = ["pay_out_now"]

    @admin.display(description="amount", ordering="amount_cents")
    def amount(self, payout: Payout) -> str:
        return usd_cents(payout.amount_cents, payout.currency)

    @admin.action(description="Run payouts now (every owner with enough available)")
    def pay_out_now(self, request, queryset):
        sent = payouts.payouts_run(force=True)
        self.message_user(request, f"{len(sent)} payout(s) processed.", messages.SUCCESS)


@admin.register(ConnectAccount)
class ConnectAccountAdmin(ReadOnlyAdmin):
    list_display = ("user", "stripe_account_id", "details_submitted", "payouts_enabled", "updated_at")
    list_filter = ("payouts_enabled", "details_submitted")
    search_fields = ("user__username", "stripe_account_id")
    list_select_related = ("user",)


@admin.register(BillingProfile)
class BillingProfileAdmin(ReadOnlyAdmin):
    list_display = ("user", "stripe_customer_id", "card_brand", "card_last4", "updated_at")
    search_fields = ("user__username", "stripe_customer_id")
    list_select_related = ("user",)


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin, LargeTableAdmin):
    list_display = ("event_id", "type", "object_id", "received_at", "processed_at")
    list_filter = ("type", ("received_at", admin.DateFieldListFilter))
    search_fields = ("event_id", "object_id")


@admin.register(TopUp)
class TopUpAdmin(ReadOnlyAdmin):
    list_display = ("id", "customer", "amount", "status", "refunded", "stripe_payment_intent_id", "created_at")
    list_filter = ("status", ("created_at", admin.DateFieldListFilter))
    search_fields = ("customer__username", "stripe_payment_intent_id")
    list_select_related = ("customer",)

    @admin.display(description="amount", ordering="amount_cents")
    def amount(self, topup: TopUp) -> str:
        return usd_cents(topup.amount_cents, topup.currency)

    @admin.display(description="refunded to the card", ordering="refunded_cents")
    def refunded(self, topup: TopUp) -> str:
        return usd_cents(topup.refunded_cents, topup.currency)


@admin.register(BalanceRefund)
class BalanceRefundAdmin(ReadOnlyAdmin):
    list_display = ("id", "customer", "topup", "amount", "stripe_refund_id", "created_at")
    list_filter = (("created_at", admin.DateFieldListFilter),)
    search_fields = ("customer__username", "stripe_refund_id")
    list_select_related = ("customer", "topup__customer")

    @admin.display(description="amount", ordering="amount_cents")
    def amount(self, refund: BalanceRefund) -> str:
        return usd_cents(refund.amount_cents)
