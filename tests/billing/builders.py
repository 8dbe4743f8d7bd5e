"""Jobs built straight in the database, for billing tests: a bid, the rounds that sold it, and its work units.

The money path is the real one (authorization through the local Stripe server, settlement, ledger); only the
auction and the cars are skipped, since other tests cover them.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

from django.utils import timezone

from billing.services import authorizations
from marketplace.models import Allocation, Bid, Dataset, InferenceModel, PrecisionVariant, Round, WorkUnit

_slots = itertools.count(1)


def catalogue_variant() -> PrecisionVariant:
    model, _ = InferenceModel.objects.get_or_create(
        name="billing-test-model", is_catalogue=True,
        defaults={"onnx_sha256": "0" * 64, "onnx_size": 1, "status": InferenceModel.Status.READY},
    )  # fmt: skip
    Dataset.objects.get_or_create(
        inference_model=model, name="billing-test-data",
        defaults={"sha256": "1" * 64, "size_bytes": 1, "format": "npy", "item_count": 1000, "status": "ready"},
    )  # fmt: skip
    variant, _ = PrecisionVariant.objects.get_or_create(
        inference_model=model, precision="int8",
        defaults={"status": PrecisionVariant.Status.READY, "sha256": "2" * 64, "ch_per_item": 0.001},
    )  # fmt: skip
    return variant


def bid_authorized(customer, *, budget_cents: int = 1000, items: int = 1000) -> Bid:
    """A bid whose budget is held on the customer's card (the customer must have one)."""
    variant = catalogue_variant()
    bid = Bid.objects.create(
        customer=customer, inference_model=variant.inference_model, dataset=variant.inference_model.datasets.get(),
        variant=variant, precision_requested="int8", pool="int8", max_price_mcents_per_ch=10_000,
        budget_cents=budget_cents, funding=Bid.Funding.CARD, deadline=timezone.now() + timedelta(hours=2), items=items,
        ch_total=items * variant.ch_per_item, status=Bid.Status.AUTHORIZING,
    )  # fmt: skip
    auth = authorizations.authorization_prepare(bid=bid)
    authorizations.authorization_confirm(authorization_id=auth.pk)
    bid.refresh_from_db()
    return bid


def bid_reserved(customer, *, budget_cents: int = 500, items: int = 1000) -> Bid:
    """A bid whose budget is reserved from the customer's prepaid balance (paused when the balance is short)."""
    from django.db import transaction

    variant = catalogue_variant()
    with transaction.atomic():
        bid = Bid.objects.create(
            customer=customer, inference_model=variant.inference_model, dataset=variant.inference_model.datasets.get(),
            variant=variant, precision_requested="int8", pool="int8", max_price_mcents_per_ch=10_000,
            budget_cents=budget_cents, funding=Bid.Funding.BALANCE, deadline=timezone.now() + timedelta(hours=2),
            items=items, ch_total=items * variant.ch_per_item, status=Bid.Status.AUTHORIZING,
        )  # fmt: skip
        authorizations.authorization_prepare(bid=bid)
    bid.refresh_from_db()
    return bid


def sell(bid: Bid, vehicle, *, ch: float, price_mcents: int, fee_pct=15) -> Allocation:
    """A round sells `ch` of `vehicle` to `bid` at `price_mcents` per CH; its units are leased, not yet done."""
    now = timezone.now()
    round_ = Round.objects.create(slot=now + timedelta(days=3650 + next(_slots)), platform_fee_pct=fee_pct)
    allocation = Allocation.objects.create(
        round=round_, bid=bid, vehicle=vehicle, pool="int8", ch=ch, price_mcents_per_ch=price_mcents,
        ends_at=now + timedelta(minutes=30),
    )  # fmt: skip
    index = bid.units.count()
    start = bid.units.order_by("-item_end").values_list("item_end", flat=True).first() or 0
    items = max(1, round(ch / bid.variant.ch_per_item))
    WorkUnit.objects.create(
        bid=bid, variant_id=bid.variant_id, index=index, item_start=start, item_end=start + items, ch=ch,
        status=WorkUnit.Status.LEASED, assigned_vehicle=vehicle, allocation=allocation, lease_id=f"lease-{index}",
    )  # fmt: skip
    Bid.objects.filter(pk=bid.pk).update(status=Bid.Status.RUNNING, items_unitised=start + items)
    return allocation


def validate(allocation: Allocation, *, energy_wh: float = 5.0) -> WorkUnit:
    unit = allocation.units.get()
    unit.status, unit.done_by, unit.energy_wh = WorkUnit.Status.DONE, allocation.vehicle, energy_wh
    unit.verification, unit.canonical = WorkUnit.Verification.VALID, True  # as if another car had agreed
    unit.completed_at = timezone.now()
    unit.save()
    return unit


def confirm(unit: WorkUnit, vehicle, *, price_mcents: int, fee_pct=15, valid: bool = True) -> WorkUnit:
    """Another car ran `unit`'s items again and its result agreed (or, valid=False, was outvoted)."""
    allocation = sell(unit.bid, vehicle, ch=unit.ch, price_mcents=price_mcents, fee_pct=fee_pct)
    Allocation.objects.filter(pk=allocation.pk).update(for_verification=True)  # as rounds.verification_allocate does
    replica = allocation.units.get()
    replica.replica_of, replica.item_start, replica.item_end = unit, unit.item_start, unit.item_end
    replica.status, replica.done_by, replica.energy_wh, replica.completed_at = (
        WorkUnit.Status.DONE, vehicle, 1.0, timezone.now())  # fmt: skip
    replica.verification = WorkUnit.Verification.VALID if valid else WorkUnit.Verification.INVALID
    replica.save()
    return replica


def fail(allocation: Allocation) -> WorkUnit:
    unit = allocation.units.get()
    unit.status, unit.error = WorkUnit.Status.FAILED, "the car gave up"
    unit.save()
    return unit


def close(bid: Bid, status: str = Bid.Status.COMPLETED) -> None:
    Bid.objects.filter(pk=bid.pk).update(status=status, closed_at=timezone.now())
