"""Diversity metrics against hand-worked examples, Python-loop/numpy references and scipy's KL."""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import entropy

from landscape.diversity import (
    disagreement_error_ratio,
    disagreement_matrix,
    pairwise_kl,
    pairwise_kl_matrix,
    prediction_variance,
)
from landscape.ensemble import UndefinedMetricWarning
from landscape.errors import InputError
from member_logits_examples import hand_example, numpy_softmax, random_member_logits

def test_hand_worked_disagreement_and_der():
    member_logits, labels = hand_example()
    # 0 vs 1 differ on samples 1, 3; 0 vs 2 on 0, 2, 3; 1 vs 2 on all four.
    expected = torch.tensor([[0, 2 / 4, 3 / 4], [2 / 4, 0, 1], [3 / 4, 1, 0]], dtype=torch.float64)
    torch.testing.assert_close(disagreement_matrix(member_logits), expected)
    mean_disagreement = (2 / 4 + 3 / 4 + 1) / 3
    assert disagreement_error_ratio(member_logits, labels).item() == pytest.approx(mean_disagreement / (5 / 12))


def test_hand_worked_prediction_variance():
    # Two members: the unbiased variance of {a, b} is (a − b)² / 2.
    member_logits = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[3.0, -2.0], [1.0, 0.0]]], dtype=torch.float64)
    per_sample = [((1 - 3) ** 2 + (2 + 2) ** 2) / 2, ((0 - 1) ** 2 + 0) / 2]
    assert prediction_variance(member_logits, "logits").item() == pytest.approx(sum(per_sample) / 2)
    p = [1 / (1 + math.e), math.e / (1 + math.e)]                         # softmax([1, 2]) = softmax([0, 1])
    q = [1 / (1 + math.exp(-5)), math.exp(-5) / (1 + math.exp(-5))]       # softmax([3, -2])
    r = [1 / (1 + math.e), math.e / (1 + math.e)][::-1]                   # softmax([1, 0])
    per_sample = [((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2) / 2, ((0.5 - r[0]) ** 2 + (0.5 - r[1]) ** 2) / 2]
    assert prediction_variance(member_logits, "probs").item() == pytest.approx(sum(per_sample) / 2)


def test_hand_worked_pairwise_kl():
    p, q = [0.5, 0.5], [0.9, 0.1]
    member_logits = torch.tensor([[p], [q]], dtype=torch.float64).log()
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    torch.testing.assert_close(pairwise_kl_matrix(member_logits),
                               torch.tensor([[0, kl_pq], [kl_qp, 0]], dtype=torch.float64))
    assert pairwise_kl(member_logits).item() == pytest.approx((kl_pq + kl_qp) / 2)


def test_kl_uses_log_softmax_for_tiny_probabilities():
    # softmax underflows to exactly 0 for the second class of member 1; the KL is still finite and exact.
    member_logits = torch.tensor([[[0.0, 0.0]], [[0.0, -800.0]]], dtype=torch.float64)
    kl = pairwise_kl_matrix(member_logits)
    assert kl[0, 1].item() == pytest.approx(0.5 * (math.log(0.5) - 0.0) + 0.5 * (math.log(0.5) + 800.0))
    assert torch.isfinite(kl).all()


members = st.integers(2, 5)
samples = st.integers(1, 20)
classes = st.integers(2, 6)
seeds = st.integers(0, 2**31 - 1)


@settings(max_examples=50, deadline=None)
@given(seed=seeds, n_members=members, n_samples=samples, n_classes=classes, discrete=st.booleans())
def test_matches_loop_references(seed, n_members, n_samples, n_classes, discrete):
    member_logits, labels = random_member_logits(seed, n_members, n_samples, n_classes, discrete)
    logits, y = member_logits.numpy(), labels.numpy()
    predictions = logits.argmax(axis=-1)
    probabilities = numpy_softmax(logits)

    pairs = list(itertools.combinations(range(n_members), 2))
    disagreements = {(i, j): np.mean(predictions[i] != predictions[j]) for i, j in pairs}
    matrix = disagreement_matrix(member_logits).numpy()
    for (i, j), value in disagreements.items():
        assert matrix[i, j] == pytest.approx(value) and matrix[j, i] == pytest.approx(value)
    mean_error = np.mean([np.mean(predictions[i] != y) for i in range(n_members)])
    if mean_error > 0:
        expected_der = np.mean(list(disagreements.values())) / mean_error
        assert disagreement_error_ratio(member_logits, labels).item() == pytest.approx(expected_der)

    for space, outputs in (("logits", logits), ("probs", probabilities)):
        expected = np.mean([np.var(outputs[:, n, :], axis=0, ddof=1).sum() for n in range(n_samples)])
        assert prediction_variance(member_logits, space).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)

    # scipy's entropy(p, q) is KL(p ‖ q); all pairs at once, shape (M, M, N).
    kl = entropy(probabilities[:, None], probabilities[None, :], axis=-1)
    off_diagonal = ~np.eye(n_members, dtype=bool)
    assert pairwise_kl(member_logits).item() == pytest.approx(kl[off_diagonal].mean(), rel=1e-8, abs=1e-12)
    for chunk_size in (1, 3):  # chunking over samples changes only the summation order
        torch.testing.assert_close(pairwise_kl_matrix(member_logits, chunk_size), pairwise_kl_matrix(member_logits))


@settings(max_examples=50, deadline=None)
@given(seed=seeds, n_members=members, n_samples=samples, n_classes=classes, discrete=st.booleans())
def test_properties_and_member_order(seed, n_members, n_samples, n_classes, discrete):
    member_logits, labels = random_member_logits(seed, n_members, n_samples, n_classes, discrete)
    permuted = member_logits[torch.randperm(n_members, generator=torch.Generator().manual_seed(seed))]
    assert pairwise_kl(member_logits).item() >= -1e-12
    assert prediction_variance(member_logits).item() >= 0
    for metric in (pairwise_kl, prediction_variance, lambda logits: prediction_variance(logits, "probs")):
        assert metric(permuted).item() == pytest.approx(metric(member_logits).item(), rel=1e-12, abs=1e-12)
    matrix = disagreement_matrix(member_logits)
    torch.testing.assert_close(matrix, matrix.T)
    assume(((member_logits.argmax(-1) != labels).double().mean() > 0).item())
    ratio = disagreement_error_ratio(member_logits, labels)
    assert ratio.item() >= 0
    assert disagreement_error_ratio(permuted, labels).item() == pytest.approx(ratio.item(), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, n_members=members, n_samples=samples, n_classes=classes)
def test_identical_members_have_no_diversity(seed, n_members, n_samples, n_classes):
    one_member, labels = random_member_logits(seed, 1, n_samples, n_classes)
    member_logits = one_member.expand(n_members, -1, -1)
    assert (disagreement_matrix(member_logits) == 0).all()
    assert prediction_variance(member_logits, "logits").item() == 0
    assert prediction_variance(member_logits, "probs").item() == 0
    assert pairwise_kl(member_logits).item() == 0
    assume(((one_member.argmax(-1) != labels).double().mean() > 0).item())
    assert disagreement_error_ratio(member_logits, labels).item() == 0


def test_zero_member_error_gives_nan_with_a_warning():
    member_logits, _ = hand_example()
    perfect = member_logits[:1].expand(3, -1, -1)
    with pytest.warns(UndefinedMetricWarning, match="mean member error is 0"):
        ratio = disagreement_error_ratio(perfect, torch.tensor([0, 1, 2, 0]))
    assert torch.isnan(ratio)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_keep_the_dtype(dtype):
    member_logits, labels = hand_example(dtype)
    assert disagreement_matrix(member_logits).dtype == dtype
    for value in (disagreement_error_ratio(member_logits, labels), prediction_variance(member_logits),
                  pairwise_kl(member_logits)):
        assert value.dtype == dtype and value.dim() == 0


def test_one_member_is_not_enough():
    member_logits, labels = hand_example()
    for metric in (pairwise_kl, prediction_variance):
        with pytest.raises(InputError, match="at least 2"):
            metric(member_logits[:1])
    with pytest.raises(InputError, match="at least 2"):
        disagreement_error_ratio(member_logits[:1], labels)


def test_bad_input_raises_input_error():
    member_logits, labels = hand_example()
    with pytest.raises(InputError, match="space"):
        prediction_variance(member_logits, "entropy")
    with pytest.raises(InputError, match=r"\(M, N, C\)"):
        disagreement_matrix(member_logits[0])
    with pytest.raises(InputError, match="NaN or Inf"):
        pairwise_kl(member_logits.index_fill(0, torch.tensor([1]), float("inf")))
    with pytest.raises(InputError, match="shape"):
        disagreement_error_ratio(member_logits, labels[:3])
    with pytest.raises(InputError, match="chunk_size"):
        pairwise_kl(member_logits, chunk_size=0)
