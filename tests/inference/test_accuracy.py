"""The accuracy gate's metrics: what a customer's tolerance is compared with."""

import numpy as np
import pytest

from marketplace.inference.accuracy import compare, cosine_per_item, passes


def test_cosine_per_item_is_one_for_the_same_direction_and_zero_for_orthogonal():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    b = np.array([[5.0, 0.0], [1.0, 0.0], [-3.0, -4.0]], dtype=np.float32)

    np.testing.assert_allclose(cosine_per_item(a, b), [1.0, 0.0, -1.0], atol=1e-12)


def test_cosine_per_item_flattens_everything_after_the_item_axis():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)

    np.testing.assert_allclose(cosine_per_item(a, a * 3), [1.0, 1.0])


def test_zero_vectors_are_identical_to_each_other_and_unrelated_to_anything_else():
    zero, one = np.zeros((1, 3)), np.ones((1, 3))

    assert cosine_per_item(zero, zero)[0] == 1.0
    assert cosine_per_item(zero, one)[0] == 0.0


def test_compare_with_cosine_reports_the_worst_item():
    reference = np.array([[1.0, 0.0], [1.0, 0.0]])
    candidate = np.array([[1.0, 0.0], [1.0, 1.0]])

    metrics = compare(reference, candidate, metric="cosine")

    assert metrics == pytest.approx({"cosine_min": 2**-0.5, "cosine_mean": (1 + 2**-0.5) / 2, "max_abs_error": 1.0})


def test_compare_with_top1_counts_items_whose_class_changed():
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    candidate = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.3, 0.7]])

    metrics = compare(reference, candidate, metric="top1")

    assert metrics == pytest.approx({"top1_agreement": 0.75, "max_abs_error": 0.2})


def test_compare_refuses_outputs_of_different_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        compare(np.zeros((3, 4)), np.zeros((3, 5)), metric="cosine")


def test_compare_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        compare(np.zeros((3, 4)), np.zeros((3, 4)), metric="bleu")


@pytest.mark.parametrize(
    ("metric", "metrics", "tolerance", "expected"),
    [
        ("cosine", {"cosine_min": 0.995, "cosine_mean": 0.999, "max_abs_error": 0.1}, 0.99, True),
        ("cosine", {"cosine_min": 0.985, "cosine_mean": 0.999, "max_abs_error": 0.1}, 0.99, False),
        ("cosine", {"cosine_min": 0.99, "cosine_mean": 0.99, "max_abs_error": 0.1}, 0.99, True),
        ("top1", {"top1_agreement": 0.97, "max_abs_error": 0.1}, 0.95, True),
        ("top1", {"top1_agreement": 0.94, "max_abs_error": 0.1}, 0.95, False),
        ("max_abs", {"cosine_min": 1.0, "max_abs_error": 0.01}, 0.02, True),
        ("max_abs", {"cosine_min": 1.0, "max_abs_error": 0.03}, 0.02, False),
        ("top1", {"cosine_min": 1.0, "max_abs_error": 0.0}, 0.5, False),  # not measured: not passed
    ],
)
def test_passes_applies_the_tolerance_of_each_metric(metric, metrics, tolerance, expected):
    assert passes(metrics, metric=metric, tolerance=tolerance) is expected


def test_a_variant_that_produced_nan_never_passes():
    reference = np.ones((2, 3))
    candidate = np.array([[1.0, 1.0, 1.0], [np.nan, 1.0, 1.0]])

    for metric in ("cosine", "max_abs"):
        assert not passes(compare(reference, candidate, metric=metric), metric=metric, tolerance=0.5)
