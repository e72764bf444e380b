"""Combining members and the ensemble improvement rate, against hand-worked examples and numpy/scipy."""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import mode

from landscape.calibration import negative_log_likelihood
from landscape.ensemble import (
    UndefinedMetricWarning,
    combine,
    ensemble_error,
    ensemble_improvement_rate,
    ensemble_predictions,
    mean_member_error,
    member_errors,
    member_predictions,
)
from landscape.errors import InputError
from member_logits_examples import hand_example, numpy_softmax, random_member_logits

def test_hand_worked_errors_and_improvement_rate():
    member_logits, labels = hand_example()
    assert member_predictions(member_logits).tolist() == [[0, 1, 2, 0], [0, 2, 2, 1], [1, 1, 0, 2]]
    torch.testing.assert_close(member_errors(member_logits, labels),
                               torch.tensor([1 / 4, 2 / 4, 2 / 4], dtype=torch.float64))
    assert mean_member_error(member_logits, labels).item() == pytest.approx(5 / 12)
    for mode_name in ("probs", "logits", "vote"):
        # Every mode predicts [0, 1, 2, 0]: only sample 3 is wrong.
        assert ensemble_predictions(member_logits, mode_name).tolist() == [0, 1, 2, 0]
        assert ensemble_error(member_logits, labels, mode_name).item() == pytest.approx(1 / 4)
        assert ensemble_improvement_rate(member_logits, labels, mode_name).item() == pytest.approx(
            (5 / 12 - 1 / 4) / (5 / 12))


def test_vote_breaks_ties_towards_the_lowest_class():
    member_logits, _ = hand_example()
    assert combine(member_logits, "vote").tolist() == [0, 1, 2, 0]
    two_way_tie = torch.tensor([[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]])
    assert combine(two_way_tie, "vote").tolist() == [1]


def test_probability_and_logit_averaging_can_disagree():
    # Member 0 is moderately sure of class 0; member 1 puts a huge negative logit on class 0.
    member_logits = torch.tensor([[[4.0, 0.0, 0.0]], [[-10.0, 1.0, 0.0]]], dtype=torch.float64)
    p0 = [math.exp(4) / (math.exp(4) + 2), 1 / (math.exp(4) + 2), 1 / (math.exp(4) + 2)]
    z1 = math.exp(-10) + math.exp(1) + 1
    p1 = [math.exp(-10) / z1, math.exp(1) / z1, 1 / z1]
    mean_probabilities = [(a + b) / 2 for a, b in zip(p0, p1)]   # ≈ [.482, .374, .143]
    torch.testing.assert_close(combine(member_logits, "probs")[0],
                               torch.tensor(mean_probabilities, dtype=torch.float64).log())
    mean_logits = [-3.0, 0.5, 0.0]
    z = sum(math.exp(v) for v in mean_logits)
    torch.testing.assert_close(combine(member_logits, "logits")[0],
                               torch.tensor([v - math.log(z) for v in mean_logits], dtype=torch.float64))
    assert ensemble_predictions(member_logits, "probs").tolist() == [0]
    assert ensemble_predictions(member_logits, "logits").tolist() == [1]
    assert ensemble_predictions(member_logits, "vote").tolist() == [0]  # tie 0 vs 1


def test_combined_probabilities_stay_finite_for_extreme_logits():
    member_logits = torch.tensor([[[1000.0, -1000.0]], [[-1000.0, 1000.0]]], dtype=torch.float64)
    torch.testing.assert_close(combine(member_logits, "probs"), torch.full((1, 2), math.log(0.5), dtype=torch.float64))
    assert negative_log_likelihood(combine(member_logits, "probs"), torch.tensor([0])).item() == pytest.approx(
        math.log(2))


members = st.integers(1, 5)
samples = st.integers(1, 25)
classes = st.integers(2, 6)
seeds = st.integers(0, 2**31 - 1)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, n_members=members, n_samples=samples, n_classes=classes, discrete=st.booleans())
def test_matches_numpy_and_scipy(seed, n_members, n_samples, n_classes, discrete):
    member_logits, labels = random_member_logits(seed, n_members, n_samples, n_classes, discrete)
    logits, y = member_logits.numpy(), labels.numpy()
    np.testing.assert_allclose(combine(member_logits, "probs").numpy(),
                               np.log(numpy_softmax(logits).mean(axis=0)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(combine(member_logits, "logits").numpy(),
                               np.log(numpy_softmax(logits.mean(axis=0))), rtol=1e-10, atol=1e-12)
    predictions = logits.argmax(axis=-1)
    # scipy's mode returns the smallest of tied values, the documented tie rule.
    np.testing.assert_array_equal(combine(member_logits, "vote").numpy(), mode(predictions, axis=0).mode)
    np.testing.assert_allclose(member_errors(member_logits, labels).numpy(), (predictions != y).mean(axis=1))
    vote_error = (mode(predictions, axis=0).mode != y).mean()
    assert ensemble_error(member_logits, labels, "vote").item() == pytest.approx(vote_error)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, n_members=members, n_samples=samples, n_classes=classes, discrete=st.booleans(),
       combine_mode=st.sampled_from(["probs", "logits", "vote"]))
def test_improvement_rate_properties(seed, n_members, n_samples, n_classes, discrete, combine_mode):
    member_logits, labels = random_member_logits(seed, n_members, n_samples, n_classes, discrete)
    assume(mean_member_error(member_logits, labels) > 0)
    rate = ensemble_improvement_rate(member_logits, labels, combine_mode)
    assert rate.item() <= 1
    permutation = torch.randperm(n_members, generator=torch.Generator().manual_seed(seed))
    permuted = member_logits[permutation]
    if combine_mode != "probs":  # summing probabilities in another order may break exact ties differently
        assert ensemble_improvement_rate(permuted, labels, combine_mode).item() == pytest.approx(rate.item(), abs=1e-12)
    else:
        torch.testing.assert_close(combine(permuted, "probs"), combine(member_logits, "probs"))
    # A log-probability output is a fixed point of log_softmax, so calibration code may take it.
    if combine_mode != "vote":
        combined = combine(member_logits, combine_mode)
        torch.testing.assert_close(torch.log_softmax(combined, dim=-1), combined)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, n_members=st.integers(2, 5), n_samples=samples, n_classes=classes,
       combine_mode=st.sampled_from(["probs", "logits", "vote"]))
def test_identical_members_improve_nothing(seed, n_members, n_samples, n_classes, combine_mode):
    one_member, labels = random_member_logits(seed, 1, n_samples, n_classes)
    member_logits = one_member.expand(n_members, -1, -1)
    assume(mean_member_error(member_logits, labels) > 0)
    assert ensemble_improvement_rate(member_logits, labels, combine_mode).item() == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("combine_mode", ["probs", "logits", "vote"])
def test_zero_member_error_gives_nan_with_a_warning(combine_mode):
    member_logits, _ = hand_example()
    labels = torch.tensor([0, 1, 2, 0])
    perfect = member_logits[:1].expand(3, -1, -1)   # member 0 is right everywhere
    with pytest.warns(UndefinedMetricWarning, match="mean member error is 0"):
        rate = ensemble_improvement_rate(perfect, labels, combine_mode)
    assert torch.isnan(rate)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_keep_the_dtype(dtype):
    member_logits, labels = hand_example(dtype)
    assert combine(member_logits).dtype == dtype
    assert ensemble_error(member_logits, labels).dtype == dtype
    assert ensemble_improvement_rate(member_logits, labels).dim() == 0
    assert combine(member_logits, "vote").dtype == torch.long


@pytest.mark.parametrize("member_logits, labels, message", [
    (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), r"\(M, N, C\)"),
    (torch.zeros(2, 4, 3), torch.zeros(5, dtype=torch.long), "shape"),
    (torch.zeros(2, 4, 3), torch.full((4,), 3), r"\[0, 3\)"),
    (torch.zeros(2, 4, 3).index_fill(1, torch.tensor([2]), float("nan")), torch.zeros(4, dtype=torch.long),
     "NaN or Inf"),
    (torch.zeros(2, 4, 3), torch.zeros(4), "integer"),
])
def test_bad_input_raises_input_error(member_logits, labels, message):
    with pytest.raises(InputError, match=message):
        ensemble_improvement_rate(member_logits, labels)


def test_unknown_combine_mode():
    member_logits, labels = hand_example()
    with pytest.raises(InputError, match="combine"):
        combine(member_logits, "mean")
    with pytest.raises(InputError, match="combine"):
        ensemble_error(member_logits, labels, "geometric")
