"""Verifying cars' results by redundancy: honest noise agrees, lies do not, and decide() never pays a liar."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.agent.inference import decode_npy, encode_npy
from marketplace.verification import (
    Tolerance,
    Verdict,
    decide,
    items_agree,
    known_answer_check,
    replication_needed,
    results_agree,
    streak_after,
)

DIMS = 384  # a MiniLM sentence embedding
INT8_COSINE = Tolerance.for_precision("cosine", "int8")
FP32_COSINE = Tolerance.for_precision("cosine", "fp32")


def embeddings(rng, items=32):
    """Random unit vectors: what a sentence-embedding model returns, float32 as a car uploads them."""
    vectors = rng.standard_normal((items, DIMS))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def honest_copy(rng, output, noise=1e-3):
    """Another car's result of the same INT8 variant: the same output plus the processor's own rounding noise."""
    return (output + rng.normal(0, noise, output.shape)).astype(np.float32)


def uploaded(array):
    """The result as the platform reads it back from the car's upload."""
    data, _ = encode_npy(array)
    return decode_npy(data)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.mark.parametrize("metric", ["cosine", "top1", "max_abs"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "fp8"])
def test_identical_outputs_agree(rng, metric, precision):
    output = uploaded(embeddings(rng) * 7)

    assert results_agree(output, output.copy(), Tolerance.for_precision(metric, precision))


def test_int8_noise_agrees_and_random_vectors_do_not(rng):
    output = embeddings(rng)

    assert results_agree(uploaded(output), uploaded(honest_copy(rng, output)), INT8_COSINE)
    assert not items_agree(output, embeddings(rng), INT8_COSINE).any()


def test_int8_quantized_with_different_batch_scales_agrees(rng):
    """Dynamic quantization takes its scale from the batch: two cars batching the items differently round
    differently, and still agree."""
    output = embeddings(rng, items=64)

    def quantize(batch):
        scale = np.abs(batch).max() / 127
        return np.round(batch / scale) * scale

    car_a = np.concatenate([quantize(output[:16]), quantize(output[16:])])
    car_b = np.concatenate([quantize(output[:48]), quantize(output[48:])])

    assert not np.array_equal(car_a, car_b)
    assert results_agree(car_a, car_b, INT8_COSINE)


def test_int8_allows_more_noise_than_fp32(rng):
    output = embeddings(rng)
    noisy = honest_copy(rng, output, noise=3e-3)  # a cosine of about 0.998

    assert results_agree(output, noisy, INT8_COSINE)
    assert not results_agree(output, noisy, FP32_COSINE)


def test_one_corrupted_item_condemns_the_result_and_is_the_one_marked(rng):
    output = embeddings(rng)
    lie = output.copy()
    lie[17] = embeddings(rng, items=1)[0]

    agree = items_agree(output, lie, INT8_COSINE)

    assert not results_agree(output, lie, INT8_COSINE)
    assert np.flatnonzero(~agree).tolist() == [17]


def test_items_may_be_tensors(rng):
    output = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    lie = output.copy()
    lie[2, 1, 4, 4] += 5

    agree = items_agree(output, lie, Tolerance.for_precision("max_abs", "fp32"))

    assert agree.tolist() == [True, True, False, True, True]


def test_one_dimensional_results_are_one_value_per_item():
    agree = items_agree(
        np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 3.0]), Tolerance.for_precision("max_abs", "fp32")
    )

    assert agree.tolist() == [True, False, True]


class TestTop1:
    TOP1 = Tolerance.for_precision("top1", "int8")

    def test_a_near_tie_that_flips_agrees(self):
        car_a = np.array([[4.00, 3.98, -1.0, 0.5]])
        car_b = np.array([[3.97, 4.01, -1.0, 0.5]])

        assert results_agree(car_a, car_b, self.TOP1)

    def test_a_clear_flip_does_not(self):
        car_a = np.array([[4.0, 1.0, -1.0, 0.5]])
        car_b = np.array([[1.0, 4.0, -1.0, 0.5]])

        assert not results_agree(car_a, car_b, self.TOP1)

    def test_a_flip_needs_a_near_tie_on_both_sides(self):
        car_a = np.array([[4.00, 3.98, -1.0, 0.5]])
        car_b = np.array([[1.0, 4.0, -1.0, 0.5]])

        assert not results_agree(car_a, car_b, self.TOP1)
        assert not results_agree(car_b, car_a, self.TOP1)

    def test_a_swap_to_a_class_the_other_car_scored_far_lower_does_not(self):
        # Both cars see a near-tie, and c's best is a's runner-up... but c's runner-up is a class a scored at -1.
        car_a = np.array([[4.00, 3.98, -1.0, 0.5]])
        car_b = np.array([[4.00, -1.0, 3.99, 0.5]])
        car_c = np.array([[3.99, -1.0, 4.00, 0.5]])

        assert results_agree(car_a, car_b, self.TOP1)  # same class, whatever the runner-up
        assert not results_agree(car_a, car_c, self.TOP1)

    def test_a_three_way_tie_may_go_either_way(self):
        car_a = np.array([[4.00, 3.99, 3.98, 0.5]])
        car_b = np.array([[3.98, 3.99, 4.00, 0.5]])

        assert results_agree(car_a, car_b, self.TOP1)

    def test_each_item_must_agree(self, rng):
        logits = rng.standard_normal((100, 10)) * 5
        lie = logits.copy()
        best = logits[42].argmax()
        lie[42, best], lie[42, (best + 1) % 10] = -10.0, 20.0

        assert np.flatnonzero(~items_agree(logits, lie, self.TOP1)).tolist() == [42]

    def test_fp32_margin_is_tighter(self):
        car_a = np.array([[4.00, 3.98]])
        car_b = np.array([[3.97, 4.01]])

        assert not results_agree(car_a, car_b, Tolerance.for_precision("top1", "fp32"))


class TestMaxAbs:
    def test_bound_scales_with_the_output_magnitude(self):
        fp32 = Tolerance.for_precision("max_abs", "fp32")
        large = np.array([[1000.0, -200.0]])

        assert results_agree(large, large + np.array([[0.05, 0.0]]), fp32)  # within 1e-4 × 1000
        assert not results_agree(large, large + np.array([[0.2, 0.0]]), fp32)

    def test_small_outputs_are_held_to_a_floor_of_one(self):
        fp32 = Tolerance.for_precision("max_abs", "fp32")
        small = np.array([[0.01, 0.02]])

        assert results_agree(small, small + 5e-5, fp32)
        assert not results_agree(small, small + 5e-4, fp32)

    def test_each_precision_has_its_own_bound(self):
        probabilities = np.array([[0.7, 0.2, 0.1]])
        off = probabilities + np.array([[0.02, -0.02, 0.0]])

        assert not results_agree(probabilities, off, Tolerance.for_precision("max_abs", "fp16"))
        assert results_agree(probabilities, off, Tolerance.for_precision("max_abs", "int8"))

    def test_the_customer_gate_caps_the_bound(self):
        # A gate of 0.005 from FP32 on each side: two results may be 0.01 apart, not int8's default 0.05.
        capped = Tolerance.for_precision("max_abs", "int8", model_tolerance=0.005)
        probabilities = np.array([[0.7, 0.2, 0.1]])

        assert capped.cap == pytest.approx(0.01)
        assert results_agree(probabilities, probabilities + np.array([[0.009, 0, 0]]), capped)
        assert not results_agree(probabilities, probabilities + np.array([[0.02, 0, 0]]), capped)

    def test_huge_values_do_not_overflow_into_agreement(self):
        tolerance = Tolerance.for_precision("max_abs", "int8")

        assert not results_agree(np.array([[1e308]]), np.array([[-1e308]]), tolerance)


class TestMalformedResults:
    @pytest.mark.parametrize("metric", ["cosine", "top1", "max_abs"])
    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_values_condemn_their_item(self, rng, metric, bad):
        output = embeddings(rng, items=4)
        broken = output.copy()
        broken[1, 5] = bad
        tolerance = Tolerance.for_precision(metric, "int8")

        assert items_agree(output, broken, tolerance).tolist() == [True, False, True, True]
        assert items_agree(broken, broken, tolerance).tolist() == [True, False, True, True]

    @pytest.mark.parametrize(
        "other_shape",
        [(32, 383), (31, DIMS), (32, DIMS, 1), (32 * DIMS,)],
    )
    def test_shape_mismatch_agrees_on_nothing(self, rng, other_shape):
        output = embeddings(rng)
        other = np.resize(output, other_shape)

        agree = items_agree(output, other, INT8_COSINE)

        assert not agree.any()
        assert len(agree) == max(32, other_shape[0])
        assert not results_agree(output, other, INT8_COSINE)

    def test_empty_result_does_not_agree_with_a_full_one(self, rng):
        assert not results_agree(embeddings(rng), np.zeros((0, DIMS)), INT8_COSINE)

    def test_non_numeric_result_agrees_on_nothing(self):
        assert not results_agree(np.array([["a", "b"]]), np.array([["a", "b"]]), INT8_COSINE)


class TestTolerance:
    def test_defaults(self):
        assert Tolerance.for_precision("cosine", "fp32") == Tolerance("cosine", 0.999)
        assert Tolerance.for_precision("cosine", "fp16") == Tolerance("cosine", 0.999)
        assert Tolerance.for_precision("cosine", "int8") == Tolerance("cosine", 0.99)
        assert Tolerance.for_precision("cosine", "fp8") == Tolerance("cosine", 0.99)
        assert Tolerance.for_precision("max_abs", "fp32") == Tolerance("max_abs", 1e-4)
        assert Tolerance.for_precision("max_abs", "fp16") == Tolerance("max_abs", 1e-2)
        assert Tolerance.for_precision("max_abs", "int8") == Tolerance("max_abs", 5e-2)

    def test_a_strict_customer_gate_tightens_cosine(self):
        # Each result within cosine 0.999 of FP32: the two are within cos(2 × arccos 0.999) = 0.996 of each other.
        strict = Tolerance.for_precision("cosine", "int8", model_tolerance=0.999)

        assert strict.threshold == pytest.approx(math.cos(2 * math.acos(0.999)))

    def test_a_loose_customer_gate_does_not_loosen_cosine(self):
        assert Tolerance.for_precision("cosine", "int8", model_tolerance=0.9) == INT8_COSINE

    def test_top1_ignores_the_gate(self):
        assert Tolerance.for_precision("top1", "fp16", model_tolerance=0.95) == Tolerance.for_precision("top1", "fp16")

    @pytest.mark.parametrize(
        ("metric", "precision", "model_tolerance"),
        [("l2", "fp32", None), ("cosine", "bf16", None), ("cosine", "int8", -1.0), ("max_abs", "int8", math.nan)],
    )
    def test_nonsense_is_refused(self, metric, precision, model_tolerance):
        with pytest.raises(ValueError):
            Tolerance.for_precision(metric, precision, model_tolerance)


class TestDecide:
    def test_two_agreeing_results(self, rng):
        output = embeddings(rng)

        verdict = decide([output, honest_copy(rng, output)], INT8_COSINE)

        assert verdict == Verdict(canonical=0, valid=frozenset({0, 1}), invalid=frozenset(), needs_more=False)

    def test_two_disagreeing_results_need_a_third_car(self, rng):
        verdict = decide([embeddings(rng), embeddings(rng)], INT8_COSINE)

        assert verdict == Verdict(canonical=None, valid=frozenset(), invalid=frozenset(), needs_more=True)

    def test_one_result_needs_a_second(self, rng):
        assert decide([embeddings(rng)], INT8_COSINE).needs_more

    @pytest.mark.parametrize("liar", [0, 1, 2])
    def test_a_third_car_condemns_the_liar(self, rng, liar):
        output = embeddings(rng)
        results = [honest_copy(rng, output) for _ in range(3)]
        results[liar] = embeddings(rng)
        honest = {0, 1, 2} - {liar}

        verdict = decide(results, INT8_COSINE)

        assert verdict.canonical == min(honest)
        assert verdict.valid == honest
        assert verdict.invalid == {liar}
        assert not verdict.needs_more

    def test_a_liar_with_a_subtle_error_in_one_item_is_condemned(self, rng):
        output = embeddings(rng)
        lie = honest_copy(rng, output)
        lie[3] = -lie[3]

        verdict = decide([lie, honest_copy(rng, output), honest_copy(rng, output)], INT8_COSINE)

        assert verdict.canonical == 1
        assert verdict.invalid == {0}

    def test_three_different_results_need_more(self, rng):
        verdict = decide([embeddings(rng) for _ in range(3)], INT8_COSINE)

        assert verdict.needs_more
        assert verdict.canonical is None
        assert not verdict.invalid

    def test_quorum_one_takes_a_single_result(self, rng):
        verdict = decide([embeddings(rng)], INT8_COSINE, quorum=1)

        assert verdict == Verdict(canonical=0, valid=frozenset({0}), invalid=frozenset(), needs_more=False)

    def test_quorum_one_still_refuses_a_non_finite_result(self, rng):
        output = embeddings(rng)
        output[0, 0] = np.nan

        assert decide([output], INT8_COSINE, quorum=1).needs_more

    def test_no_results_need_more(self):
        assert decide([], INT8_COSINE).needs_more

    def test_a_drifting_chain_is_not_one_group(self):
        # a ~ b and b ~ c but not a ~ c: b cannot vouch for both, so the group is {a, b} and c is invalid.
        tolerance = Tolerance("max_abs", 0.1)
        a, b, c = np.array([[0.0]]), np.array([[0.08]]), np.array([[0.16]])

        verdict = decide([a, b, c], tolerance)

        assert verdict == Verdict(canonical=0, valid=frozenset({0, 1}), invalid=frozenset({2}), needs_more=False)

    def test_colluding_liars_outnumbered_by_honest_cars_lose(self, rng):
        output = embeddings(rng)
        lie = embeddings(rng)
        results = [lie, lie.copy(), honest_copy(rng, output), honest_copy(rng, output), honest_copy(rng, output)]

        verdict = decide(results, INT8_COSINE)

        assert verdict.canonical == 2
        assert verdict.valid == {2, 3, 4}
        assert verdict.invalid == {0, 1}

    @settings(max_examples=200, deadline=None)
    @given(
        seed=st.integers(0, 2**32 - 1),
        honest=st.integers(1, 6),
        liars_fraction=st.floats(0, 1, exclude_max=True),
        colluding=st.booleans(),
        metric=st.sampled_from(["cosine", "max_abs"]),
    )
    def test_never_pays_a_liar_nor_condemns_an_honest_car(self, seed, honest, liars_fraction, colluding, metric):
        rng = np.random.default_rng(seed)
        liars = int(liars_fraction * honest)  # fewer than half of all results
        output = embeddings(rng, items=8)
        lie = embeddings(rng, items=8)
        results = [honest_copy(rng, output) for _ in range(honest)]
        results += [lie.copy() if colluding else embeddings(rng, items=8) for _ in range(liars)]
        order = rng.permutation(len(results))
        results = [results[i] for i in order]
        honest_indices = {position for position, i in enumerate(order) if i < honest}

        verdict = decide(results, Tolerance.for_precision(metric, "int8"))

        assert not verdict.invalid & honest_indices
        if verdict.canonical is None:
            assert verdict.needs_more
            assert honest < 2
        else:
            assert verdict.canonical in honest_indices
            assert verdict.valid == honest_indices

    @settings(max_examples=100, deadline=None)
    @given(seed=st.integers(0, 2**32 - 1), metric=st.sampled_from(["cosine", "top1", "max_abs"]))
    def test_agreement_is_symmetric(self, seed, metric):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((6, 5)) * rng.uniform(0.01, 100)
        b = a + rng.normal(0, rng.uniform(1e-6, 1), a.shape)

        tolerance = Tolerance.for_precision(metric, "fp16")

        assert items_agree(a, b, tolerance).tolist() == items_agree(b, a, tolerance).tolist()

    def test_quorum_must_be_positive(self, rng):
        with pytest.raises(ValueError):
            decide([embeddings(rng)], INT8_COSINE, quorum=0)


def test_known_answer_check(rng):
    expected = embeddings(rng)

    assert known_answer_check(honest_copy(rng, expected), expected, INT8_COSINE)
    assert not known_answer_check(embeddings(rng), expected, INT8_COSINE)


class TestAdaptiveReplication:
    def test_a_new_car_is_always_replicated(self):
        assert replication_needed(streak=0, faults_recent=0, rng_value=0.99)

    def test_a_trusted_car_is_replicated_only_at_random(self):
        assert not replication_needed(streak=10, faults_recent=0, rng_value=0.5)
        assert replication_needed(streak=10, faults_recent=0, rng_value=0.05)

    def test_a_recent_fault_ends_trust(self):
        assert replication_needed(streak=50, faults_recent=1, rng_value=0.99)

    def test_the_spot_check_rate_is_the_share_replicated(self):
        draws = np.random.default_rng(1).random(10_000)

        replicated = [replication_needed(streak=20, faults_recent=0, rng_value=v, spot_check_rate=0.1) for v in draws]

        assert np.mean(replicated) == pytest.approx(0.1, abs=0.01)

    def test_streak(self):
        assert streak_after(9, valid=True) == 10
        assert streak_after(9, valid=False) == 0

    def test_one_invalid_result_means_full_replication_again(self):
        streak = streak_after(25, valid=False)

        assert replication_needed(streak=streak, faults_recent=0, rng_value=0.99)
        # The fault that reset it is recent: its results are checked as a new car's, however long its record.
        assert replication_needed(streak=50, faults_recent=1, rng_value=0.2, new_car_rate=0.25)
        assert not replication_needed(streak=50, faults_recent=1, rng_value=0.3, new_car_rate=0.25)

    def test_a_new_car_is_replicated_at_the_new_car_rate_and_a_trusted_one_at_the_spot_check_rate(self):
        draws = np.random.default_rng(2).random(10_000)
        rates = {"new_car_rate": 0.25, "spot_check_rate": 0.05}

        new = [replication_needed(streak=3, faults_recent=0, rng_value=v, **rates) for v in draws]
        trusted = [replication_needed(streak=10, faults_recent=0, rng_value=v, **rates) for v in draws]

        assert np.mean(new) == pytest.approx(0.25, abs=0.015)
        assert np.mean(trusted) == pytest.approx(0.05, abs=0.01)
        with pytest.raises(ValueError, match="new_car_rate must be in"):
            replication_needed(streak=0, faults_recent=0, rng_value=0.5, new_car_rate=1.5)
