"""Settling a finished job: charge exactly its validated work × the clearing prices of the rounds that sold it, to
the n¢, release the rest of its budget, and book both. A budget reserved from the prepaid balance is drawn on in the
ledger alone; a budget held on a card is captured in whole cents (the fewest that cover the work), and the rest of
the last cent goes onto the customer's balance. The money split itself is billing/settlement.py (pure, no Django);
this module reads the work from the database, calls Stripe and posts to the ledger."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.db.models import Exists, OuterRef, Sum

from core.money import cents_ceil, nc_from_cents
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
    """When a job has ended, charge exactly its validated work × the clearing prices of the rounds that sold it, and
    release the rest of its budget. Safe to run any number of times, and after a crash at any point."""
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
            split = settlement.settle(lines, budget_nc=nc_from_cents(auth.amount_cents))
            # A job with no validated work pays nobody, replicas included.
            replicas = settlement.replicas_pay(replica_lines) if split.charge_nc else {}
            auth.charged_nc, auth.work_mcents = split.charge_nc, split.work_mcents
            carried = 0
            if auth.method == PaymentAuthorization.Method.CARD:
                auth.capture_cents = cents_ceil(split.charge_nc)
                auth.capture_key = stripe_key("capture" if auth.capture_cents else "cancel", auth.pk)
                carried = nc_from_cents(auth.capture_cents) - split.charge_nc
            auth.settlement = {
                "carried_nc": carried,  # the rest of the last cent captured, onto the customer's balance
                "fee_nc": split.fee_nc,
                "charge_nc": split.charge_nc,
                # Audits already closed are in these figures; one that closes later corrects them (corrections.py).
                "audits": sorted(bid.audits.filter(closed_at__isnull=False).values_list("pk", flat=True)),
                "cars": {
                    key: {"nc": split.shares.get(key, 0) + replicas.get(key, 0),
                          "verification_nc": replicas.get(key, 0), **usage[key]}
                    for key in usage
                },
            }  # fmt: skip
            auth.status = PaymentAuthorization.Status.SETTLING
            auth.save(update_fields=["capture_cents", "charged_nc", "work_mcents", "capture_key", "settlement",
                                     "status", "updated_at"])  # fmt: skip
    # Committed: the amount and the key are on record before Stripe hears of them.
    if auth.method == PaymentAuthorization.Method.CARD:
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
    the cancel of a job with nothing to charge. (The webhooks ask too, to book a capture whose booking was lost.)"""
    if auth.capture_cents:
        return intent.status == "succeeded" and intent.amount_received == auth.capture_cents
    return intent.status == "canceled"


def _work_legs(auth: PaymentAuthorization) -> list[Leg]:
    """What the work pays for, from the settlement stored on `auth`: the customer's spend, each car's earnings (with
    the CH and energy they are for), the fee, and the verification the platform pays for."""
    books = auth.settlement
    legs = [
        Leg(AccountKind.CUSTOMER_SPEND, auth.charged_nc, user_id=auth.customer_id),
        Leg(AccountKind.PLATFORM_FEE, -books["fee_nc"]),
        Leg(AccountKind.VERIFICATION_COST, sum(car.get("verification_nc", 0) for car in books["cars"].values())),
    ]
    for key, car in sorted(books["cars"].items()):
        vehicle_id, owner_id = (int(part) for part in key.split(":"))
        if car["nc"]:
            legs.append(Leg(AccountKind.OWNER_PENDING, -car["nc"], user_id=owner_id, vehicle_id=vehicle_id,
                            ch=car["ch"], energy_wh=car["energy_wh"]))  # fmt: skip
    return legs


def settlement_book(*, authorization_id: int) -> PaymentAuthorization:
    """Book a settlement (Stripe's part done, for a card): the charge (customer spend, owners' pending earnings, the
    fee), drawn from the reservation or the card's capture, and the release of the rest of the budget."""
    with transaction.atomic():
        auth = PaymentAuthorization.objects.select_for_update().get(pk=authorization_id)
        if auth.status != PaymentAuthorization.Status.SETTLING:
            return auth
        budget, charged = nc_from_cents(auth.amount_cents), auth.charged_nc or 0
        card = auth.method == PaymentAuthorization.Method.CARD
        taken = nc_from_cents(auth.capture_cents or 0) if card else charged  # out of the budget
        customer = auth.customer_id
        if charged:
            if card:
                rest = auth.settlement["carried_nc"]  # the rest of the last cent captured: onto the balance
                source = [
                    Leg(AccountKind.CUSTOMER_HELD, taken, user_id=customer), Leg(AccountKind.STRIPE_CLEARING, -taken),
                    Leg(AccountKind.PREPAID_CASH, rest, user_id=customer),
                    Leg(AccountKind.CUSTOMER_BALANCE, -rest, user_id=customer),
                ]  # fmt: skip
            else:
                source = [
                    Leg(AccountKind.CUSTOMER_RESERVED, charged, user_id=customer),
                    Leg(AccountKind.PREPAID_CASH, -charged, user_id=customer),
                ]
            ledger.post(
                kind=Kind.CAPTURE, key=f"capture:{auth.pk}", currency=auth.currency, bid_id=auth.bid_id,
                legs=source + _work_legs(auth), stripe_object_id=auth.stripe_payment_intent_id,
                description=f"Bid {auth.bid_id}: validated work",
            )  # fmt: skip
        released = budget - taken
        if released:
            held = (AccountKind.CUSTOMER_HELD, AccountKind.STRIPE_CLEARING, None) if card else (
                AccountKind.CUSTOMER_RESERVED, AccountKind.CUSTOMER_BALANCE, customer)  # fmt: skip
            ledger.post(
                kind=Kind.RELEASE, key=f"release:{auth.pk}", currency=auth.currency, bid_id=auth.bid_id,
                stripe_object_id=auth.stripe_payment_intent_id, description=f"Bid {auth.bid_id}: unused budget",
                legs=[Leg(held[0], released, user_id=customer), Leg(held[1], -released, user_id=held[2])],
            )  # fmt: skip
        auth.captured_cents = (auth.capture_cents or 0) if card else 0
        auth.released_cents = auth.amount_cents - auth.captured_cents if card else 0
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
