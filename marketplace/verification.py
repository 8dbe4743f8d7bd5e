"""Whether the results that untrusted cars returned for the same work unit agree: homogeneous redundancy, as in BOINC.

Pure NumPy, no Django, so it can be tested and benchmarked alone. Every car in a unit's replication runs the same
variant (same model file, same precision), so honest results differ only by the processor's arithmetic: summation
order, fused multiply-adds, kernel approximations and, for INT8/FP8, quantization scales computed from each batch.
A result that differs by more than that was not computed honestly (random output, skipped layers, a cheaper
precision, a stale model) or the car is faulty; either way it is not paid for.

A result is one model output over the unit's items, item axis first ([items, ...], float32 as `decode_npy` reads it);
everything after the item axis is flattened, so an item's output is one vector. Metrics (the model's
`InferenceModel.metric`) and the unit of each `Tolerance.threshold`:
- cosine: the least cosine similarity of an item's two vectors, unitless in [-1, 1]; for embeddings.
- top1: the two results must pick the same class for every item, but for near-ties; the threshold is the near-tie
  margin, relative to the item's largest |logit| (at least 1), within which honest noise may make another class the
  best; for classifiers.
- max_abs: the most absolute difference of any element, relative to the item's largest |value| (at least 1) in
  either result; in output units when capped by the customer's gate (`Tolerance.cap`).

Agreement is per item, and one item out of tolerance condemns a result: a cheater who computes most items and guesses
the rest must not be paid. Non-finite values never agree, not even with themselves.

`decide` picks the canonical result among 1..N results of a unit; `replication_needed` and `streak_after` are the
reputation side (adaptive replication): cars with a long clean record are replicated only at random.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleet import offers
from fleet.agent.precisions import PRECISIONS
from marketplace.inference.accuracy import COSINE, MAX_ABS, METRICS, TOP1

# Least cosine similarity between two cars' outputs of the same variant.
# fp32, fp16: different processors sum in different orders and approximate exp/tanh/GELU differently; for fp32 that is
# ~1e-6 relative, for fp16 (10-bit mantissa, eps ~1e-3) ~1e-3 per element, both far above 0.999 (an angle of 2.6°).
# int8, fp8: dynamic quantization derives each activation's scale from the batch it is in, so batch composition and
# the processor's integer kernels (VNNI, ARM dot product, an NPU) or FP8 emulation change outputs by ~1e-2 relative;
# 0.99 (8°) allows that. An unrelated vector is near 0 (about 1/sqrt(dims): 0.05 for 384-d embeddings), so even 0.99
# leaves a wide gap.
_COSINE_MIN = {"fp32": 0.999, "fp16": 0.999, "int8": 0.99, "fp8": 0.99}

# Most absolute difference per element, as a fraction of the item's largest |value| (at least 1, so that outputs near
# zero are not held to a bound below the arithmetic's own noise). Also the top1 near-tie margin: two classes whose
# logits are closer than what two honest cars may differ by can swap honestly.
# fp32: 1e-4 is ~1000 float32 ulps, room for reordered sums through a deep network.
# fp16: 1e-2, ten times fp16's epsilon, as half-precision accumulation differs between processors.
# int8, fp8: 5e-2, the size of a quantization step's effect on an output (FP8 E4M3 rounds each value by up to 6 %).
_RELATIVE_ERROR = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2, "fp8": 5e-2}


@dataclass(frozen=True)
class Tolerance:
    """How far two results of the same work unit may differ and still agree; units in the module docstring.

    threshold: cosine: the least cosine similarity per item; top1: the relative near-tie margin; max_abs: the most
    absolute difference per element, relative to max(1, the item's largest |value|).
    cap: max_abs only, in output units: the most absolute difference allowed whatever the outputs' magnitude (from the
    customer's gate, see `for_precision`); infinite when there is none.
    """

    metric: str
    threshold: float
    cap: float = math.inf

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; expected one of {', '.join(METRICS)}")
        if not math.isfinite(self.threshold) or (self.metric != COSINE and self.threshold < 0):
            raise ValueError(f"a {self.metric} threshold must be a finite number >= 0, not {self.threshold!r}")
        if math.isnan(self.cap) or self.cap < 0:
            raise ValueError(f"cap must be >= 0, not {self.cap!r}")

    @classmethod
    def for_precision(cls, metric: str, precision: str, model_tolerance: float | None = None) -> Tolerance:
        """The default tolerance between two cars' outputs of one variant of `precision` (see `_COSINE_MIN` and
        `_RELATIVE_ERROR` for why each value).

        model_tolerance is the customer's gate against FP32 (`InferenceModel.tolerance`). Two results that each pass
        it can be at most twice as far from each other, so verification is never looser than that: for cosine a gate
        t allows an angle of arccos(t) on each side, hence a cosine of 2t² - 1 between two results; for max_abs, 2t
        in output units. Top-1's gate is a fraction of the whole dataset and says nothing about one item, so it is
        not used.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if model_tolerance is not None and not (math.isfinite(model_tolerance) and model_tolerance >= 0):
            raise ValueError(f"model_tolerance must be a finite number >= 0, not {model_tolerance!r}")
        if metric == COSINE:
            threshold = _COSINE_MIN[precision]
            if model_tolerance is not None:
                gate = min(model_tolerance, 1.0)
                threshold = max(threshold, 2 * gate * gate - 1)
            return cls(metric, threshold)
        if metric == MAX_ABS:
            cap = math.inf if model_tolerance is None else 2 * model_tolerance
            return cls(metric, _RELATIVE_ERROR[precision], cap)
        return cls(metric, _RELATIVE_ERROR[precision])


def _items(array: np.ndarray) -> np.ndarray | None:
    """float64 [items, values], or None when the array holds no real numbers (a car can send any .npy dtype)."""
    array = np.asarray(array)
    if not (
        array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        return None
    array = np.atleast_1d(array).astype(np.float64)
    return array.reshape(len(array), -1)


def _largest_magnitude(x: np.ndarray) -> np.ndarray:
    """max(1, the largest |value|) of each item: the scale of relative bounds."""
    return np.maximum(1.0, np.max(np.abs(x), axis=1, initial=0.0))


def _cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosine similarity per item, computed as 1 - |x̂ - ŷ|² / 2 on unit vectors: exactly 1 for identical items and
    accurate near 1, where the thresholds lie (dot / norms loses digits there). Items are scaled by their largest
    |value| first, so that huge values cannot overflow. Two zero vectors are identical (1), one zero vector is
    unrelated to anything else (0)."""
    unit = []
    for z in (x, y):
        scale = np.max(np.abs(z), axis=1, initial=0.0)
        z = z / np.where(scale > 0, scale, 1.0)[:, None]
        norm = np.linalg.norm(z, axis=1)
        unit.append((z / np.where(norm > 0, norm, 1.0)[:, None], norm > 0))
    (x_unit, x_nonzero), (y_unit, y_nonzero) = unit
    cosine = np.clip(1.0 - 0.5 * np.sum((x_unit - y_unit) ** 2, axis=1), -1.0, 1.0)
    return np.where(x_nonzero & y_nonzero, cosine, np.where(x_nonzero | y_nonzero, 0.0, 1.0))


def _top1_agree(x: np.ndarray, y: np.ndarray, margin: float) -> np.ndarray:
    """Same best class, or a near-tie both cars see: each car scores the other's best class within the margin of its
    own best. Checking the other car's choice in each car's own logits (not only that some two classes are close)
    refuses a car that swaps in a class the other scored far lower, and still lets a three-way tie go either way."""
    rows = np.arange(len(x))
    x_best, y_best = np.argmax(x, axis=1), np.argmax(y, axis=1)
    x_close = x[rows, x_best] - x[rows, y_best] <= margin * _largest_magnitude(x)
    y_close = y[rows, y_best] - y[rows, x_best] <= margin * _largest_magnitude(y)
    return x_close & y_close


def items_agree(a: np.ndarray, b: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    """Whether each item of `a` agrees with the same item of `b`: bool [items].

    Symmetric in a and b. Results of different shapes (or that hold no real numbers) agree on nothing: all False,
    as many as the longer one has items. An item holding a NaN or an infinity in either result is False.
    """
    x, y = _items(a), _items(b)
    if x is None or y is None or np.shape(np.atleast_1d(a)) != np.shape(np.atleast_1d(b)):
        count = max(len(np.atleast_1d(a)), len(np.atleast_1d(b)))
        return np.zeros(count, dtype=bool)
    finite = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
    if x.shape[1] == 0:
        return finite
    # Zeros stand in for non-finite values so that the arithmetic stays quiet; those items are False anyway.
    x = np.where(np.isfinite(x), x, 0.0)
    y = np.where(np.isfinite(y), y, 0.0)
    if tolerance.metric == COSINE:
        agree = _cosine(x, y) >= tolerance.threshold
    elif tolerance.metric == TOP1:
        agree = _top1_agree(x, y, tolerance.threshold)
    else:
        with np.errstate(over="ignore"):
            error = np.max(np.abs(x - y), axis=1)
        bound = np.minimum(
            tolerance.threshold * np.maximum(_largest_magnitude(x), _largest_magnitude(y)), tolerance.cap
        )
        agree = error <= bound
    return finite & agree


def results_agree(a: np.ndarray, b: np.ndarray, tolerance: Tolerance) -> bool:
    """True only if the two results have the same shape and every item agrees."""
    if np.shape(np.atleast_1d(a)) != np.shape(np.atleast_1d(b)):
        return False
    return bool(items_agree(a, b, tolerance).all())


@dataclass(frozen=True)
class Verdict:
    """What `decide` concluded about a unit's results, as indices into the results it was given.

    canonical: the result whose output the customer gets (None until there is one); valid: the results that agree
    with it (paid, and they lengthen their car's streak); invalid: those that do not (not paid, the car's streak ends);
    needs_more: no quorum yet, so the unit goes to another car.
    """

    canonical: int | None
    valid: frozenset[int]
    invalid: frozenset[int]
    needs_more: bool


def decide(results: Sequence[np.ndarray], tolerance: Tolerance, *, quorum: int = 2) -> Verdict:
    """The canonical result among 1..N results of one work unit from different cars, and which results are valid.

    Agreement within a tolerance is not transitive (a ~ b and b ~ c without a ~ c), so a group is built around each
    result: the results that agree with it and with every member already taken, in index order. The biggest group
    wins; between groups of the same size, the one whose sorted indices come first (so the lowest index). If it has
    at least `quorum` members, its first (lowest-indexed) member is canonical, every result that agrees with the
    canonical is valid and every other one invalid. Otherwise nothing is decided (needs_more, nothing invalid): one
    result waits for a second, two that disagree wait for a third car to side with one of them.

    quorum=1 is for a car that adaptive replication did not replicate: its single result is canonical if it is
    well formed (finite numbers).
    """
    if quorum < 1:
        raise ValueError(f"quorum must be at least 1, not {quorum}")
    count = len(results)
    agree = [[False] * count for _ in range(count)]
    for i in range(count):
        for j in range(i, count):  # agreement is symmetric: compare each pair once
            agree[i][j] = agree[j][i] = results_agree(results[i], results[j], tolerance)
    best: list[int] = []
    for center in range(count):
        if not agree[center][center]:
            continue
        group = [center]
        for other in range(count):
            if other != center and agree[center][other] and all(agree[other][member] for member in group):
                group.append(other)
        group.sort()
        if len(group) > len(best) or (len(group) == len(best) and group < best):
            best = group
    if len(best) < quorum:
        return Verdict(canonical=None, valid=frozenset(), invalid=frozenset(), needs_more=True)
    canonical = best[0]
    valid = frozenset(i for i in range(count) if agree[canonical][i])
    return Verdict(canonical=canonical, valid=valid, invalid=frozenset(range(count)) - valid, needs_more=False)


def known_answer_check(output: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> bool:
    """Whether a car's output for a spot check agrees with the output the platform computed itself.

    Spot checks are items whose correct output is known, slipped into units so that a car cannot tell them from
    customer items; `expected` should come from the same variant, so that the same tolerance as between two cars
    applies. One wrong item fails the check.
    """
    return results_agree(output, expected, tolerance)


def replication_needed(
    *, streak: int, faults_recent: int, rng_value: float, spot_check_rate: float = 0.1, trusted_after: int = 10,
    new_car_rate: float = 1.0,
) -> bool:  # fmt: skip
    """Whether a car's next result must be replicated on another car (adaptive replication, as in BOINC).

    Replicating every unit doubles the compute paid for. A car that has returned `trusted_after` consecutive
    validated results (`streak`) and had no recent fault has shown it computes honestly, so its units are replicated
    only at random, with probability `spot_check_rate`: a cheater cannot predict which results are checked. Any other
    car (no record yet, or a recent fault: a fault resets trust) is replicated with probability `new_car_rate`: 1 is
    BOINC's rule; below 1 relies on known answers in every lease and on the audit of a caught car's unchecked
    results for the rest (README: Trust), since replicating every result of cheap untrusted cars costs more than the
    platform's fee. A single invalid result resets the streak to 0 (`streak_after`).

    rng_value: a uniform random number in [0, 1), drawn by the caller so that this stays a pure function.
    """
    if streak < 0 or faults_recent < 0 or trusted_after < 0:
        raise ValueError("streak, faults_recent and trusted_after cannot be negative")
    for name, rate in (("spot_check_rate", spot_check_rate), ("new_car_rate", new_car_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], not {rate}")
    trusted = streak >= trusted_after and faults_recent == 0
    return rng_value < (spot_check_rate if trusted else new_car_rate)


def streak_after(streak: int, *, valid: bool) -> int:
    """A car's count of consecutive validated results after one more verdict: +1 when valid, back to 0 when not."""
    return streak + 1 if valid else 0


def reputation(*, results_valid: int, results_invalid: int) -> float:
    """A car's reputation in [0, 1) (fleet.offers.reputation: the supply book keeps it in each car's offer)."""
    return offers.reputation(results_valid=results_valid, results_invalid=results_invalid)
