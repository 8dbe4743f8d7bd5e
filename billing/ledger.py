"""Posting to the double-entry ledger, and reading balances from its entries.

Every posting is one LedgerTransaction whose entries sum to zero per currency (checked here, and again by a deferred
constraint trigger on PostgreSQL); rows are never updated or deleted (triggers refuse it); a correction is a
reversing transaction. Each posting has an idempotency key: posting the same key twice returns the first posting.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import Sum

from core.exceptions import ApplicationError

from .models import NORMAL_SIDE, PER_USER_KINDS, AccountKind, LedgerAccount, LedgerEntry, LedgerTransaction


@dataclass(frozen=True)
class Leg:
    """One entry to post: `amount_nc` (n¢, core/money.py) > 0 debits the account, < 0 credits it."""

    kind: str
    amount_nc: int
    user_id: int | None = None
    vehicle_id: int | None = None
    ch: float | None = None
    energy_wh: float | None = None


def account_get(*, kind: str, user_id: int | None = None, currency: str = "usd") -> LedgerAccount:
    if (kind in PER_USER_KINDS) != (user_id is not None):
        raise ValueError(f"{kind} accounts {'need' if kind in PER_USER_KINDS else 'take no'} user")
    account, _ = LedgerAccount.objects.get_or_create(kind=kind, user_id=user_id, currency=currency)
    return account


def post(
    *,
    kind: str,
    key: str,
    legs: list[Leg],
    currency: str = "usd",
    description: str = "",
    bid_id: int | None = None,
    payout_id: int | None = None,
    reverses: LedgerTransaction | None = None,
    stripe_object_id: str = "",
) -> LedgerTransaction:
    """Post a balanced transaction once per `key`; a second call with the same key returns the first one."""
    legs = [leg for leg in legs if leg.amount_nc != 0]
    if not legs:
        raise ApplicationError("A ledger transaction needs at least one non-zero entry.", code="ledger_empty")
    if sum(leg.amount_nc for leg in legs) != 0:
        raise ApplicationError(
            f"Ledger transaction {key} does not balance: its entries sum to {sum(leg.amount_nc for leg in legs)} n¢.",
            code="ledger_unbalanced",
        )
    existing = LedgerTransaction.objects.filter(idempotency_key=key).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            txn = LedgerTransaction.objects.create(
                kind=kind, idempotency_key=key, description=description[:255], bid_id=bid_id, payout_id=payout_id,
                reverses=reverses, stripe_object_id=stripe_object_id,
            )  # fmt: skip
            LedgerEntry.objects.bulk_create(
                LedgerEntry(
                    transaction=txn,
                    account=account_get(kind=leg.kind, user_id=leg.user_id, currency=currency),
                    amount_nc=leg.amount_nc,
                    currency=currency,
                    vehicle_id=leg.vehicle_id,
                    ch=leg.ch,
                    energy_wh=leg.energy_wh,
                )
                for leg in legs
            )
    except IntegrityError:
        # Another process posted the same key between our check and our insert: theirs stands.
        existing = LedgerTransaction.objects.filter(idempotency_key=key).first()
        if existing is None:
            raise
        return existing
    return txn


def reverse(*, txn: LedgerTransaction, key: str, description: str = "") -> LedgerTransaction:
    """The correcting transaction: every entry of `txn` with its sign flipped."""
    legs = [
        Leg(kind=e.account.kind, amount_nc=-e.amount_nc, user_id=e.account.user_id, vehicle_id=e.vehicle_id,
            ch=-e.ch if e.ch else None, energy_wh=-e.energy_wh if e.energy_wh else None)
        for e in txn.entries.select_related("account")
    ]  # fmt: skip
    currency = txn.entries.values_list("currency", flat=True).first() or "usd"
    return post(
        kind=LedgerTransaction.Kind.REVERSAL, key=key, legs=legs, currency=currency,
        description=description or f"Reverses #{txn.pk}", bid_id=txn.bid_id, reverses=txn,
    )  # fmt: skip


def balance(*, kind: str, user_id: int | None = None, currency: str = "usd") -> int:
    """An account's balance in n¢ on its normal side (what a person would call the balance)."""
    total = (
        LedgerEntry.objects.filter(account__kind=kind, account__user_id=user_id, currency=currency).aggregate(
            total=Sum("amount_nc")
        )["total"]
        or 0
    )
    return total * NORMAL_SIDE[kind]


def balances_by_user(*, kind: str, user_ids, currency: str = "usd") -> dict[int, int]:
    """One account kind's balance (normal side) for many users, in one query; users without entries are left out."""
    rows = (
        LedgerEntry.objects.filter(account__kind=kind, account__user_id__in=user_ids, currency=currency)
        .values_list("account__user_id")
        .annotate(total=Sum("amount_nc"))
        .order_by()
    )
    return {user_id: total * NORMAL_SIDE[kind] for user_id, total in rows}


def balances(*, user_id: int | None = None, currency: str = "usd") -> dict[str, int]:
    """Every account kind of one user (or the platform's when user_id is None), on its normal side."""
    rows = (
        LedgerEntry.objects.filter(account__user_id=user_id, currency=currency)
        .values_list("account__kind")
        .annotate(total=Sum("amount_nc"))
        .order_by()
    )
    return {kind: total * NORMAL_SIDE[kind] for kind, total in rows}


def totals_by_kind(*, currency: str = "usd") -> dict[str, int]:
    """Each account kind summed over every user, on its normal side: the books at a glance."""
    result: dict[str, int] = defaultdict(int)
    rows = (
        LedgerEntry.objects.filter(currency=currency)
        .values_list("account__kind")
        .annotate(total=Sum("amount_nc"))
        .order_by()
    )
    for kind, total in rows:
        result[kind] = total * NORMAL_SIDE[kind]
    return dict(result)


def unbalanced_transactions() -> list[int]:
    """Ids of transactions whose entries do not sum to zero: always empty, unless the database was tampered with."""
    return list(
        LedgerEntry.objects.values("transaction_id", "currency")
        .annotate(total=Sum("amount_nc"))
        .exclude(total=0)
        .values_list("transaction_id", flat=True)
    )


__all__ = ["AccountKind", "Leg", "account_get", "balance", "balances", "post", "reverse", "totals_by_kind"]
