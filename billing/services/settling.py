"""Settling a finished job: capture exactly its validated work × the clearing prices of the rounds that sold it,
release the rest of the hold, and book both. The money split itself is billing/settlement.py (pure, no Django); this
module reads the work from the database, calls Stripe and posts to the ledger."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.db.models import Exists, OuterRef, Sum

from marketplace.models import Bid, ResultAudit, WorkUnit

from .. import ledger, settlement, stripe_gateway
from ..ledger import Leg
from ..models import AccountKind, LedgerTransaction, PaymentAuthorization
from .keys import stripe_key

Kind = LedgerTransaction.Kind


def work_lines(bid) -> tuple[list[settlement.WorkLine], list[settlement.WorkLine], dict]:
    """The bid's validated work, one line per (car, round price): what the customer pays for (the canonical result
    of each slice of items), what the platform pays for (replicas that confirmed it), and each car's CH and energy.
    Rejected results and results still waiting for a second opinion are nobody's to pay.

    A customer never pays above the price of their own allocation of a slice: when the slice's canonical result came
    from a replica that verification bought dearer (its first result was outvoted), the customer pays their own
    price and the platform pays the car the difference, as verification (`settlement.customer_price_mcents`); so
    for a slice sent to another car after a failed known-answer check and sold again dearer (`price_cap_mcents`)."""
    rows = (
        WorkUnit.objects.filter(
            bid=bid, status=WorkUnit.Status.DONE, verification=WorkUnit.Verification.VALID, allocation__isnull=False
        )
        .values_list("canonical", "done_by_id", "done_by__owner_id", "allocation__price_mcents_per_ch",
                     "replica_of__allocation__price_mcents_per_ch", "price_cap_mcents",
                     "replica_of__price_cap_mcents", "allocation__round__platform_fee_pct")
        .annotate(ch=Sum("ch"), energy_wh=Sum("energy_wh"))
        .order_by()
    )  # fmt: skip
    customer_lines, replica_lines, usage = [], [], {}
    for canonical, vehicle_id, owner_id, price, primary_price, cap, primary_cap, fee_pct, ch, energy_wh in rows:
        key, fee = f"{vehicle_id}:{owner_id}", Decimal(fee_pct)
        if not canonical:
            replica_lines.append(settlement.WorkLine(key=key, ch=ch, price_mcents=price, fee_pct=fee))
        else:
            customer_price = settlement.customer_price_mcents(price, primary_price, cap, primary_cap)
            customer_lines.append(settlement.WorkLine(key=key, ch=ch, price_mcents=customer_price, fee_pct=fee))
            if price > customer_price:
                replica_lines.append(
                    settlement.WorkLine(key=key, ch=ch, price_mcents=price - customer_price, fee_pct=fee)
                )
        used = usage.setdefault(key, {"ch": 0.0, "energy_wh": 0.0})
        used["ch"] += ch
        used["energy_wh"] += energy_wh or 0.0
    return customer_lines, replica_lines, usage


def bid_settle(*, bid_id: int) -> PaymentAuthorization | None:
    """When a job has ended, capture exactly its validated work × the clearing prices of the rounds that sold it, and
    release the rest of the hold. Safe to run any number of times, and after a crash at any point."""
    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().filter(bid_id=bid_id).first()
        if auth is None or auth.status not in (PaymentAuthorization.Status.AUTHORIZED,
                                               PaymentAuthorization.Status.SETTLING):  # fmt: skip
            return auth
        bid = Bid.objects.get(pk=bid_id)
        if auth.status == PaymentAuthorization.Status.AUTHORIZED:
            if bid.status not in (Bid.Status.COMPLETED, Bid.Status.FAILED, Bid.Status.CANCELLED, Bid.Status.EXPIRED):
                return auth
            if bid.units.filter(status=WorkUnit.Status.LEASED).exists():
                return auth  # a car is still running a unit of this closed bid: bill it once it reports or expires
            if bid.audits.filter(closed_at__isnull=True).exists():
                return auth  # results a caught car returned are being judged again: bill what they turn out to be
            lines, replica_lines, usage = work_lines(bid)
            split = settlement.settle(lines, authorized_cents=auth.amount_cents)
            # A job too small to charge pays nobody, replicas included.
            replicas = settlement.replicas_pay(replica_lines) if split.charge_cents else {}
            auth.capture_cents, auth.work_mcents = split.charge_cents, split.work_mcents
            auth.capture_key = stripe_key("capture" if split.charge_cents else "cancel", auth.pk)
            auth.settlement = {
                "fee_cents": split.fee_cents,
                "charge_cents": split.charge_cents,
                # Audits already closed are in these figures; one that closes later corrects them (corrections.py).
                "audits": sorted(bid.audits.filter(closed_at__isnull=False).values_list("pk", flat=True)),
                "cars": {
                    key: {"cents": split.shares.get(key, 0) + replicas.get(key, 0),
                          "verification_cents": replicas.get(key, 0), **usage[key]}
                    for key in usage
                },
            }  # fmt: skip
            auth.status = PaymentAuthorization.Status.SETTLING
            auth.save(update_fields=["capture_cents", "work_mcents", "capture_key", "settlement", "status",
                                     "updated_at"])  # fmt: skip
    # Committed: the amount and the key are on record before Stripe hears of them.
    _settle_at_stripe(auth)
    return settlement_book(authorization_id=auth.pk)


def _settle_at_stripe(auth: PaymentAuthorization) -> None:
    try:
        if auth.capture_cents:
            stripe_gateway.payment_capture(
                payment_intent_id=auth.stripe_payment_intent_id, amount_cents=auth.capture_cents, key=auth.capture_key
            )
        else:
            stripe_gateway.payment_cancel(payment_intent_id=auth.stripe_payment_intent_id, key=auth.capture_key)
    except stripe_gateway.GatewayError:
        # Past Stripe's 24 h key memory a repeated capture is refused as "already captured": re-read the object.
        intent = stripe_gateway.payment_retrieve(auth.stripe_payment_intent_id)
        if not stripe_settled(intent, auth):
            raise


def stripe_settled(intent, auth: PaymentAuthorization) -> bool:
    """Whether Stripe's payment intent shows the settlement stored on `auth`: the capture of exactly its amount, or
    the cancel of a job too small to charge. (The webhooks ask too, to book a capture whose booking was lost.)"""
    if auth.capture_cents:
        return intent.status == "succeeded" and intent.amount_received == auth.capture_cents
    return intent.status == "canceled"


def settlement_book(*, authorization_id: int) -> PaymentAuthorization:
    """Book a settlement Stripe has done: the capture (customer spend, owners' pending earnings, the fee) and the
    release of the rest of the hold."""
    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().get(pk=authorization_id)
        if auth.status != PaymentAuthorization.Status.SETTLING:
            return auth
        captured = auth.capture_cents or 0
        released = auth.amount_cents - captured
        if captured:
            legs = [
                Leg(AccountKind.CUSTOMER_HELD, captured, user_id=auth.customer_id),
                Leg(AccountKind.CUSTOMER_SPEND, captured, user_id=auth.customer_id),
                Leg(AccountKind.STRIPE_CLEARING, -captured),
                Leg(AccountKind.PLATFORM_FEE, -auth.settlement["fee_cents"]),
                Leg(AccountKind.VERIFICATION_COST,
                    sum(car.get("verification_cents", 0) for car in auth.settlement["cars"].values())),
            ]  # fmt: skip
            for key, car in sorted(auth.settlement["cars"].items()):
                vehicle_id, owner_id = (int(part) for part in key.split(":"))
                if car["cents"]:
                    legs.append(Leg(AccountKind.OWNER_PENDING, -car["cents"], user_id=owner_id,
                                    vehicle_id=vehicle_id, ch=car["ch"], energy_wh=car["energy_wh"]))  # fmt: skip
            ledger.post(
                kind=Kind.CAPTURE, key=f"capture:{auth.pk}", currency=auth.currency, bid_id=auth.bid_id, legs=legs,
                stripe_object_id=auth.stripe_payment_intent_id, description=f"Bid {auth.bid_id}: validated work",
            )  # fmt: skip
        if released:
            ledger.post(
                kind=Kind.RELEASE, key=f"release:{auth.pk}", currency=auth.currency, bid_id=auth.bid_id,
                stripe_object_id=auth.stripe_payment_intent_id, description=f"Bid {auth.bid_id}: unused budget",
                legs=[
                    Leg(AccountKind.CUSTOMER_HELD, released, user_id=auth.customer_id),
                    Leg(AccountKind.STRIPE_CLEARING, -released),
                ],
            )  # fmt: skip
        auth.captured_cents, auth.released_cents = captured, released
        auth.status = PaymentAuthorization.Status.SETTLED
        auth.save(update_fields=["captured_cents", "released_cents", "status", "updated_at"])
    return auth


def settlements_due() -> list[int]:
    """Closed bids whose authorization is still open (a lost message, a crash): the sweeper settles them."""
    closed = (Bid.Status.COMPLETED, Bid.Status.FAILED, Bid.Status.CANCELLED, Bid.Status.EXPIRED)
    return list(
        PaymentAuthorization.objects.filter(
            status__in=(PaymentAuthorization.Status.AUTHORIZED, PaymentAuthorization.Status.SETTLING),
            bid__status__in=closed,
        )
        # A job whose audit is open is settled when it closes (the audit's event, or this sweeper then).
        .exclude(Exists(ResultAudit.objects.filter(bid_id=OuterRef("bid_id"), closed_at__isnull=True)))
        .values_list("bid_id", flat=True)[:500]
    )
