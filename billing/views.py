import logging

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import Role
from accounts.permissions import role_required, staff_required
from core.exceptions import ApplicationError
from core.forms import add_application_error
from core.money import usd_cents
from marketplace.selectors import verification_overview

from . import ledger, reconciliation, reports, selectors, stripe_gateway, webhooks
from .forms import CardForm, TopUpForm
from .models import BillingProfile, ConnectAccount, Payout
from .services import cards, connect, topups

log = logging.getLogger(__name__)


# --- Stripe webhook ------------------------------------------------------------------------------------------------


@csrf_exempt
@require_POST
def stripe_webhook(request):
    """Verify, store once, answer at once; a task does the work (billing/webhooks.py)."""
    from .tasks import stripe_event_process

    try:
        event, first_time = webhooks.event_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
    except webhooks.BadWebhook as error:
        log.warning("refused a Stripe webhook: %s", error)
        return HttpResponse(f"Bad webhook: {error}", status=400, content_type="text/plain")
    if first_time:
        stripe_event_process.delay(event.event_id)
    return HttpResponse("ok", content_type="text/plain")


# --- Customers: card, spend history, receipts ------------------------------------------------------------------------


@role_required(Role.CUSTOMER)
@require_http_methods(["GET", "POST"])
def customer_billing(request):
    """The prepaid balance and its top-ups, the saved card (add or replace it), and what the customer's settled jobs
    cost, with a receipt for each."""
    test_mode = selectors.stripe_test_mode()
    form = CardForm(request.POST or None)
    if request.method == "POST" and test_mode and form.is_valid():
        try:
            profile = cards.card_save(user=request.user, payment_method=form.cleaned_data["payment_method"])
        except ApplicationError as error:
            add_application_error(form, error)
        else:
            messages.success(request, f"Card saved: {profile.card_brand.title()} ending in {profile.card_last4}.")
            return redirect("billing:customer-billing")
    return _customer_billing_page(request, form=form, topup_form=TopUpForm())


def _customer_billing_page(request, *, form: CardForm, topup_form: TopUpForm):
    history = Paginator(selectors.spend_history(user=request.user), 25).get_page(request.GET.get("page"))
    context = {
        "profile": BillingProfile.objects.filter(user=request.user).first(),
        "form": form,
        "topup_form": topup_form,
        "test_mode": selectors.stripe_test_mode(),
        "history": history,
        "totals": selectors.spend_totals(user=request.user),
        "topups": selectors.topups_recent(user=request.user),
    }
    status = 400 if form.errors or topup_form.errors else 200
    return render(request, "billing/customer_billing.html", context, status=status)


@role_required(Role.CUSTOMER)
@require_POST
def topup(request):
    """Charge the card and add the amount to the prepaid balance; a refusal shows on the form, and adds nothing."""
    form = TopUpForm(request.POST)
    if form.is_valid():
        try:
            done = topups.topup_create(customer=request.user, amount_cents=form.amount_cents())
        except ApplicationError as error:
            add_application_error(form, error)
        else:
            if done.status == done.Status.SUCCEEDED:
                messages.success(request, f"{usd_cents(done.amount_cents)} added to your balance.")
            else:
                messages.info(request, f"Your card is being charged {usd_cents(done.amount_cents)}: the balance "
                              "shows it once Stripe confirms.")  # fmt: skip
            return redirect("billing:customer-billing")
    return _customer_billing_page(request, form=CardForm(), topup_form=form)


@role_required(Role.CUSTOMER)
@require_POST
def balance_refund(request):
    """Give the free prepaid balance back to the cards that paid it, in whole cents."""
    try:
        refunds = topups.balance_refund(customer=request.user)
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        sent = sum(r.amount_cents for r in refunds if r.status == r.Status.SUCCEEDED)
        failed = [r for r in refunds if r.status == r.Status.FAILED]
        if sent:
            messages.success(request, f"{usd_cents(sent)} refunded to your card.")
        for refund in failed:
            messages.error(request, f"Stripe refused to refund {usd_cents(refund.amount_cents)}: "
                           f"{refund.failure_message} It is back on your balance.")  # fmt: skip
    return redirect("billing:customer-billing")


@role_required(Role.CUSTOMER)
def receipt(request, bid_id: int):
    """One job's receipt. Another customer's bid is a 404, the same as a bid that does not exist."""
    from marketplace.models import Bid

    bid = get_object_or_404(
        Bid.objects.select_related("inference_model", "dataset", "variant"), pk=bid_id, customer=request.user
    )
    return render(request, "billing/receipt.html", {"receipt": selectors.receipt_get(bid=bid), "bid": bid})


# --- Owners: earnings dashboard, CSV, payouts ----------------------------------------------------------------------


@role_required(Role.OWNER)
def owner_earnings(request):
    """What the owner's cars earned: totals by period, a stacked daily chart per car, energy cost, net profit and
    balances (billing/reports.py)."""
    now = timezone.now()
    chart = reports.owner_daily_earnings(owner=request.user, now=now)
    context = {
        "summary": reports.owner_earnings_summary(owner=request.user, now=now),
        "chart": chart,
        "chart_rows": reports.daily_rows(chart),
    }
    return render(request, "billing/owner_earnings.html", context)


@role_required(Role.OWNER)
def owner_earnings_csv(request):
    """Every earning (and voided earning) of the owner's cars, a line each, streamed."""
    response = StreamingHttpResponse(
        reports.owner_earnings_csv_lines(owner=request.user), content_type="text/csv; charset=utf-8"
    )
    filename = f"idlefleet-earnings-{request.user.username}-{timezone.localdate().isoformat()}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@role_required(Role.OWNER)
def owner_payouts(request):
    account = ConnectAccount.objects.filter(user=request.user).first()
    payouts = Payout.objects.filter(owner=request.user).order_by("-created_at")
    policy = selectors.payout_policy_current()
    return render(
        request,
        "billing/owner_payouts.html",
        {"account": account, "payouts": payouts[:100], "hold_hours": policy.earnings_hold_hours},
    )


@role_required(Role.OWNER)
@require_POST
def owner_onboard(request):
    """Off to Stripe's hosted onboarding (the local Stripe server's page in the demo); it sends the owner back."""
    try:
        url = connect.connect_onboarding_url(
            user=request.user,
            refresh_url=request.build_absolute_uri(reverse("billing:owner-payouts")),
            return_url=request.build_absolute_uri(reverse("billing:owner-onboard-return")),
        )
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("billing:owner-payouts")
    return redirect(url)


@role_required(Role.OWNER)
def owner_onboard_return(request):
    account = ConnectAccount.objects.filter(user=request.user).exclude(stripe_account_id="").first()
    if account is not None:
        try:
            account = connect.connect_account_sync(account_id=account.stripe_account_id)
        except stripe_gateway.GatewayError as error:
            messages.error(request, f"Stripe could not be reached: {error.message}. Your status will update shortly.")
            return redirect("billing:owner-payouts")
    if account is not None and account.payouts_enabled:
        messages.success(request, "Payouts are set up: your available earnings will be sent on the next payout run.")
    else:
        messages.warning(request, "Onboarding is not finished yet: Stripe still needs some details from you.")
    return redirect("billing:owner-payouts")


# --- Staff: the books ------------------------------------------------------------------------------------------------


@staff_required
def staff_finance(request):
    """The books at a glance, and the ledger's last reconciliation against Stripe, at most a few minutes old (a Stripe
    outage shows the ledger alone)."""
    return render(
        request,
        "billing/staff_finance.html",
        {
            "books": selectors.finance_summary(),
            "report": reconciliation.reconciliation_report_recent(),
            "verification": verification_overview(trusted_after=settings.VERIFICATION_TRUSTED_AFTER),
            "verification_cost_nc": ledger.balance(kind="verification_cost"),
        },
    )
