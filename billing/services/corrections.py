"""Corrections after an audit: a car caught lying had results that a settled job was charged for and its owner was
credited for (marketplace/verdicts.py: audit_open). Once the audit has judged them again (other cars' results
replace the wrong ones), the job's charge and earnings are computed anew from its validated work, exactly as at
settling (billing/services/settling.py), and the difference is booked: the customer gets the charge they no longer
owe back through Stripe, the caught car's owner loses the earnings for its wrong results, the cars whose results
replaced them are credited, and the platform's fee and verification cost follow. The customer is told by email.

The earnings a correction takes back are still pending: they are held longer than the audit window
(billing.PayoutPolicy), and a job's earnings leave the hold only once no audit of it is open (payouts). Where they
have left it anyway (a policy changed), the correction takes them from the owner's available balance, which the next
payouts net out."""

from __future__ import annotations

import logging

from django.core.mail import send_mail
from django.db import transaction

from core.money import cents_floor, nc_from_cents, usd
from marketplace.models import Bid, ResultAudit

from .. import ledger, settlement, stripe_gateway
from ..ledger import Leg
from ..models import AccountKind, LedgerTransaction, PaymentAuthorization, Refund
from .keys import stripe_key
from .settling import work_lines

log = logging.getLogger(__name__)
Kind = LedgerTransaction.Kind


def corrections_due() -> list[int]:
    """Settled bids with an audit closed since they were settled (or corrected): the sweeper corrects them."""
    closed: dict[int, set[int]] = {}
    for bid_id, audit_id in ResultAudit.objects.filter(
        closed_at__isnull=False, bid__authorization__status=PaymentAuthorization.Status.SETTLED
    ).values_list("bid_id", "pk")[:5000]:
        closed.setdefault(bid_id, set()).add(audit_id)
    accounted = PaymentAuthorization.objects.filter(bid_id__in=closed).values_list("bid_id", "settlement")
    return sorted(bid_id for bid_id, books in accounted if closed[bid_id] - set((books or {}).get("audits", [])))


def audit_correct(*, bid_id: int) -> PaymentAuthorization | None:
    """Correct a settled job's charge and earnings for its audits closed since it was settled. Safe to run any number
    of times, and after a crash at any point: the plan and its refund's idempotency key are stored before Stripe
    hears of them."""
    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().filter(bid_id=bid_id).first()
        if auth is None or auth.status != PaymentAuthorization.Status.SETTLED:
            return auth
        plan = auth.settlement.get("correction")
        if plan is None:
            accounted = set(auth.settlement.get("audits", []))
            audits = sorted(
                set(ResultAudit.objects.filter(bid_id=bid_id, closed_at__isnull=False).values_list("pk", flat=True))
                - accounted
            )
            if not audits:
                return auth
            plan = _plan(auth, audits)
            auth.settlement = {**auth.settlement, "correction": plan}
            auth.save(update_fields=["settlement", "updated_at"])
    stripe_refund = None
    if plan["refund_cents"]:
        stripe_refund = stripe_gateway.refund_create(
            payment_intent_id=auth.stripe_payment_intent_id, amount_cents=plan["refund_cents"],
            key=plan["refund_key"], reason=f"Bid {bid_id}: results of a car caught lying were replaced",
        )  # fmt: skip
    booked = _book(authorization_id=auth.pk, stripe_refund=stripe_refund)
    if booked is not None:
        _customer_tell(booked, plan)
    return PaymentAuthorization.objects.get(pk=auth.pk)


def _plan(auth: PaymentAuthorization, audits: list[int]) -> dict:
    """The job's charge and earnings computed anew from its validated work (n¢), and the refund they make due: whole
    cents back to the card for a job paid by card, the rest (all of it, for a job paid from the balance) onto the
    customer's balance."""
    bid = Bid.objects.get(pk=auth.bid_id)
    charged = auth.settlement.get("charge_nc", auth.charged_nc or 0)
    lines, replica_lines, usage = work_lines(bid)
    # Never more than was charged: the customer's price is capped already, and a card cannot be charged again.
    split = settlement.settle(lines, budget_nc=charged)
    replicas = settlement.replicas_pay(replica_lines) if split.charge_nc else {}
    refund = charged - split.charge_nc
    card_cents = cents_floor(refund) if auth.method == PaymentAuthorization.Method.CARD else 0
    return {
        "audits": audits,
        "charge_nc": split.charge_nc,
        "fee_nc": split.fee_nc,
        "cars": {
            key: {
                "nc": split.shares.get(key, 0) + replicas.get(key, 0),
                "verification_nc": replicas.get(key, 0),
                **usage[key],
            }
            for key in usage
        },
        "refund_nc": refund,
        "refund_cents": card_cents,
        "refund_key": stripe_key("refund", auth.pk) if card_cents else "",
    }


def _released(auth: PaymentAuthorization) -> bool:
    """Whether the job's earnings have left the hold (payouts.earnings_release_due)."""
    capture = LedgerTransaction.objects.filter(idempotency_key=f"capture:{auth.pk}").first()
    return capture is not None and LedgerTransaction.objects.filter(idempotency_key=f"hold_over:{capture.pk}").exists()


def _book(*, authorization_id: int, stripe_refund) -> PaymentAuthorization | None:
    """Book a planned correction once: the refund Stripe made, then the earnings, fee and verification cost that
    change with it. None when it was booked already."""
    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().get(pk=authorization_id)
        plan = auth.settlement.get("correction")
        if plan is None:
            return None
        old, refund, customer = auth.settlement, plan["refund_nc"], auth.customer_id
        card_refund = nc_from_cents(plan["refund_cents"])
        if stripe_refund is not None and not Refund.objects.filter(stripe_refund_id=stripe_refund.id).exists():
            Refund.objects.create(
                authorization=auth, amount_cents=plan["refund_cents"], idempotency_key=plan["refund_key"],
                reason="Results of a car caught lying were replaced", stripe_refund_id=stripe_refund.id,
            )  # fmt: skip
            ledger.post(
                kind=Kind.REFUND, key=f"refund:{stripe_refund.id}", currency=auth.currency, bid_id=auth.bid_id,
                stripe_object_id=stripe_refund.id, description=f"Bid {auth.bid_id}: refund after an audit",
                legs=[
                    Leg(AccountKind.REFUNDS, card_refund, user_id=customer),
                    Leg(AccountKind.CUSTOMER_SPEND, -card_refund, user_id=customer),
                ],
            )  # fmt: skip
            auth.refunded_cents += plan["refund_cents"]
        earnings = AccountKind.OWNER_AVAILABLE if _released(auth) else AccountKind.OWNER_PENDING
        to_balance = refund - card_refund  # what no card refund carries: back onto the customer's balance
        legs = [
            Leg(AccountKind.PLATFORM_FEE, old["fee_nc"] - plan["fee_nc"]),
            Leg(AccountKind.VERIFICATION_COST, _verification(plan) - _verification(old)),
            # The refund is not the platform's loss: the earnings and the fee it reverses pay for it.
            Leg(AccountKind.REFUNDS, -refund, user_id=customer),
            Leg(AccountKind.REFUNDS, to_balance, user_id=customer),
            Leg(AccountKind.CUSTOMER_SPEND, -to_balance, user_id=customer),
            Leg(AccountKind.PREPAID_CASH, to_balance, user_id=customer),
            Leg(AccountKind.CUSTOMER_BALANCE, -to_balance, user_id=customer),
        ]
        for key in sorted(set(old["cars"]) | set(plan["cars"])):
            before, after = old["cars"].get(key, {}), plan["cars"].get(key, {})
            vehicle_id, owner_id = (int(part) for part in key.split(":"))
            change = before.get("nc", 0) - after.get("nc", 0)
            if change:
                legs.append(Leg(earnings, change, user_id=owner_id, vehicle_id=vehicle_id,
                                ch=after.get("ch", 0.0) - before.get("ch", 0.0),
                                energy_wh=after.get("energy_wh", 0.0) - before.get("energy_wh", 0.0)))  # fmt: skip
        legs = [leg for leg in legs if leg.amount_nc]
        if legs:
            ledger.post(
                kind=Kind.CORRECTION, key=f"correction:{auth.pk}:{','.join(map(str, plan['audits']))}",
                currency=auth.currency, bid_id=auth.bid_id, legs=legs,
                description=f"Bid {auth.bid_id}: corrected after an audit of a caught car's results",
            )  # fmt: skip
        auth.settlement = {
            "fee_nc": plan["fee_nc"], "cars": plan["cars"], "charge_nc": plan["charge_nc"],
            "carried_nc": old.get("carried_nc", 0),
            "audits": sorted(set(old.get("audits", [])) | set(plan["audits"])),
        }  # fmt: skip
        auth.charged_nc = plan["charge_nc"]
        auth.save(update_fields=["settlement", "charged_nc", "refunded_cents", "updated_at"])
    log.warning("bid %s corrected after audits %s: %s n¢ refunded", auth.bid_id, plan["audits"], refund)
    return auth


def _verification(split: dict) -> int:
    return sum(car.get("verification_nc", 0) for car in split["cars"].values())


def _customer_tell(auth: PaymentAuthorization, plan: dict) -> None:
    """Email the customer what the audit changed: which results were replaced, the file's version, the refund."""
    bid = Bid.objects.select_related("customer").get(pk=auth.bid_id)
    audits = list(ResultAudit.objects.filter(pk__in=plan["audits"]))
    replaced = sum(a.items_replaced for a in audits)
    removed = sum(a.items_removed for a in audits)
    if not bid.customer.email or not (replaced or removed or plan["refund_nc"]):
        return
    lines = [
        f"A car that ran part of your job {bid.pk} was caught returning wrong results, so every result it had "
        "returned unchecked was judged again.",
    ]
    if bid.status == Bid.Status.COMPLETED:
        lines.append(f"- {replaced} item{'s' if replaced != 1 else ''} had wrong outputs and now have the outputs "
                     "of other cars that ran them again.")  # fmt: skip
        if removed:
            lines.append(f"- {removed} item{'s' if removed != 1 else ''} could not be settled by other cars: their "
                         "rows in the results file are empty (NaN) and you are not charged for them.")  # fmt: skip
        lines.append(f"- Your results file is now version {bid.result_version}: download it again from the job's "
                     "page.")  # fmt: skip
    elif removed:
        lines.append(f"- The job had ended, so nobody runs its {removed} item{'s' if removed != 1 else ''} again: "
                     "you are not charged for them.")  # fmt: skip
    if plan["refund_nc"]:
        card, rest = nc_from_cents(plan["refund_cents"]), plan["refund_nc"] - nc_from_cents(plan["refund_cents"])
        parts = [f"{usd(card)} to your card"] if card else []
        parts += [f"{usd(rest)} to your prepaid balance"] if rest else []
        lines.append(f"- {' and '.join(parts)} refunded: you pay only for validated work.")
    send_mail(
        subject=f"Idlefleet: the results of job {bid.pk} were corrected",
        message="\n".join(lines) + "\n",
        from_email=None, recipient_list=[bid.customer.email], fail_silently=True,
    )  # fmt: skip
