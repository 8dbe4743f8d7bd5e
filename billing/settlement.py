"""What a finished job costs and who gets it, to the nano-cent (n¢: 1 ¢ = 10⁹ n¢, core/money.py). No Django.

Work is priced exactly: a work unit's CH × the clearing price of the round that sold it, in milli-cents (m¢), as a
Decimal built from the CH's shortest repr, so the same inputs give the same amounts on every machine. The total is
rounded half-up to the n¢ once, per job; the platform's fee is the fee of each round's price, rounded once; the
rest is split between the cars by the largest-remainder method, so the shares add up to the charge exactly and no
car is more than a n¢ from its exact share. A document's embedding is worth tens of n¢, so even a job worth a
millionth of a cent is charged, and paid to its cars, to the item. Whole cents appear only where Stripe needs them
(billing/services).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from core.money import nc_from_mcents


@dataclass(frozen=True)
class WorkLine:
    """Validated work of one car sold in one round: `ch` compute-hours at `price_mcents` m¢ per CH."""

    key: Hashable  # who earns it, e.g. (vehicle id, owner id)
    ch: float
    price_mcents: int
    fee_pct: Decimal

    @property
    def value_mcents(self) -> Decimal:
        return Decimal(repr(self.ch)) * self.price_mcents


@dataclass(frozen=True)
class Split:
    charge_nc: int
    fee_nc: int
    shares: dict[Hashable, int]  # key -> n¢; sum(shares) + fee_nc == charge_nc
    work_mcents: Decimal


def customer_price_mcents(price: int, *caps: int | None) -> int:
    """What the customer pays per CH for a canonical result sold at `price`: that price, but never above the price
    of the customer's own allocation of the slice. The caps (None: none) are those prices: the primary's, when the
    result is a replica's (a replica that outvoted the first result may have been bought dearer), and the first
    allocation's, when a failed known-answer check sent the slice to another car, sold in a later round (a reissue
    may be dearer too). The platform bears the difference as verification."""
    return min([price, *(cap for cap in caps if cap is not None)])


def settle(lines: Iterable[WorkLine], *, budget_nc: int) -> Split:
    """The charge for `lines` in n¢ (never above the budget), the platform's fee, and each car's share."""
    lines = [line for line in lines if line.ch > 0]
    work = sum((line.value_mcents for line in lines), Decimal(0))
    charge = min(nc_from_mcents(work), budget_nc)
    if charge <= 0 or work <= 0:
        return Split(charge_nc=0, fee_nc=0, shares={}, work_mcents=work)
    fee_exact = sum((line.value_mcents * line.fee_pct / 100 for line in lines), Decimal(0))
    fee = int((Decimal(charge) * fee_exact / work).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    earned: dict[Hashable, Decimal] = {}
    for line in lines:
        earned[line.key] = earned.get(line.key, Decimal(0)) + line.value_mcents * (100 - line.fee_pct) / 100
    return Split(charge_nc=charge, fee_nc=fee, shares=largest_remainder(charge - fee, earned), work_mcents=work)


def largest_remainder(total: int, weights: dict[Hashable, Decimal]) -> dict[Hashable, int]:
    """Split `total` (n¢) in proportion to `weights`: floors first, then one n¢ each to the largest remainders
    (ties by key order, so the split is deterministic). Keys whose share is 0 are left out."""
    weight_sum = sum(weights.values(), Decimal(0))
    if total <= 0 or weight_sum <= 0:
        return {}
    exact = {key: Decimal(total) * weight / weight_sum for key, weight in weights.items()}
    shares = {key: int(value) for key, value in exact.items()}
    left = total - sum(shares.values())
    by_remainder = sorted(exact, key=lambda key: (-(exact[key] - shares[key]), repr(key)))
    for key in by_remainder[:left]:
        shares[key] += 1
    return {key: amount for key, amount in shares.items() if amount > 0}


def replicas_pay(lines: Iterable[WorkLine]) -> dict[Hashable, int]:
    """What the platform pays each car for validated replicas: results that confirmed another car's (verification),
    which the customer does not pay for. Each car gets its work's value less the fee, in n¢, rounded half-up once."""
    earned: dict[Hashable, Decimal] = {}
    for line in lines:
        if line.ch > 0:
            earned[line.key] = earned.get(line.key, Decimal(0)) + line.value_mcents * (100 - line.fee_pct) / 100
    paid = {key: nc_from_mcents(value) for key, value in earned.items()}
    return {key: nc for key, nc in paid.items() if nc > 0}
