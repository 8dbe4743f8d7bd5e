"""How close a quantized variant's outputs are to the FP32 reference: the accuracy gate of automatic quantization.

Pure NumPy, no Django. Both arrays are one model output over the same items, item axis first ([items, ...]);
everything after the item axis is flattened, so an item's output is one vector.

Metrics and their units:
- cosine (`cosine_min`, `cosine_mean`): cosine similarity of each item's candidate vector with its reference vector,
  unitless in [-1, 1] (1 = same direction); for embeddings, where only the direction matters.
- top1 (`top1_agreement`): the fraction of items, in [0, 1], whose arg-max class is the same in both; for classifiers.
- `max_abs_error`: the largest absolute difference of any element, in the output's own units (probabilities, embedding
  coordinates); reported with every metric, and a gate of its own with metric "max_abs".
"""

from __future__ import annotations

import numpy as np

COSINE = "cosine"
TOP1 = "top1"
MAX_ABS = "max_abs"
METRICS = (COSINE, TOP1, MAX_ABS)


def _as_items(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    return array.reshape(len(array), -1) if array.ndim != 1 else array.reshape(-1, 1)


def _check_same_shape(reference: np.ndarray, candidate: np.ndarray) -> None:
    if np.shape(reference) != np.shape(candidate):
        raise ValueError(f"outputs differ in shape: reference {np.shape(reference)}, candidate {np.shape(candidate)}")


def cosine_per_item(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each item of `a` with the same item of `b`, float64 [items].

    Two zero vectors count as identical (1.0); a zero vector against a non-zero one as unrelated (0.0).
    """
    _check_same_shape(a, b)
    x, y = _as_items(a), _as_items(b)
    dot = np.einsum("ij,ij->i", x, y)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    both_zero = (np.linalg.norm(x, axis=1) == 0) & (np.linalg.norm(y, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return np.clip(np.where(both_zero, 1.0, cosine), -1.0, 1.0)


def compare(reference: np.ndarray, candidate: np.ndarray, *, metric: str) -> dict[str, float]:
    """The candidate's distance from the reference over the same items.

    metric "cosine" -> {cosine_min, cosine_mean, max_abs_error}; "top1" -> {top1_agreement, max_abs_error};
    "max_abs" -> {max_abs_error}. Units are in this module's docstring.
    """
    _check_same_shape(reference, candidate)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    x, y = _as_items(reference), _as_items(candidate)
    metrics: dict[str, float] = {}
    if metric == COSINE:
        cosine = cosine_per_item(x, y)
        metrics["cosine_min"] = float(cosine.min()) if len(cosine) else 1.0
        metrics["cosine_mean"] = float(cosine.mean()) if len(cosine) else 1.0
    elif metric == TOP1:
        agree = np.argmax(x, axis=1) == np.argmax(y, axis=1)
        metrics["top1_agreement"] = float(agree.mean()) if len(agree) else 1.0
    metrics["max_abs_error"] = float(np.abs(x - y).max()) if x.size else 0.0
    return metrics


def passes(metrics: dict[str, float], *, metric: str, tolerance: float) -> bool:
    """Whether a variant's metrics clear the customer's gate.

    cosine: cosine_min >= tolerance (e.g. 0.99); top1: top1_agreement >= tolerance (a fraction, e.g. 0.95);
    max_abs: max_abs_error <= tolerance (output units). A metric that was not measured does not pass.
    """
    if metric == COSINE:
        return "cosine_min" in metrics and metrics["cosine_min"] >= tolerance
    if metric == TOP1:
        return "top1_agreement" in metrics and metrics["top1_agreement"] >= tolerance
    if metric == MAX_ABS:
        return "max_abs_error" in metrics and metrics["max_abs_error"] <= tolerance
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
