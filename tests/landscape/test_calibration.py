"""Calibration metrics against a hand-worked example, numpy/sklearn formulas and torchmetrics' ECE,
including the confidences that fall exactly on a bin edge."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from landscape.calibration import (ReliabilityBins, accuracy, brier_score, expected_calibration_error,
                                   negative_log_likelihood, reliability_bins)
from landscape.errors import InputError

# Four samples, three classes, four bins [0, .25), [.25, .5), [.5, .75), [.75, 1].
HAND_PROBABILITIES = [[0.9, 0.05, 0.05],   # y=0: confidence .9, bin 3, correct
                      [0.8, 0.1, 0.1],     # y=1: confidence .8, bin 3, wrong
                      [0.1, 0.6, 0.3],     # y=1: confidence .6, bin 2, correct
                      [0.4, 0.35, 0.25]]   # y=2: confidence .4, bin 1, wrong
HAND_LABELS = [0, 1, 1, 2]


def hand_example(dtype=torch.float64):
    probabilities = torch.tensor(HAND_PROBABILITIES, dtype=dtype)
    # Logits are log-probabilities up to a per-sample constant; add one to check it is ignored.
    logits = probabilities.log() + torch.tensor([[3.0], [-2.0], [0.5], [7.0]], dtype=dtype)
    return logits, torch.tensor(HAND_LABELS)


def random_logits(seed, n_samples, n_classes, scale=2.0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n_samples, n_classes, generator=generator, dtype=dtype)
    labels = torch.randint(0, n_classes, (n_samples,), generator=generator)
    return logits, labels


def test_hand_worked_example():
    logits, labels = hand_example()
    assert accuracy(logits, labels).item() == pytest.approx(0.5)
    # Bin 3: n=2, acc .5, conf .85; bin 2: n=1, acc 1, conf .6; bin 1: n=1, acc 0, conf .4.
    expected_ece = 2 / 4 * 0.35 + 1 / 4 * 0.4 + 1 / 4 * 0.4
    assert expected_calibration_error(logits, labels, n_bins=4).item() == pytest.approx(expected_ece)
    expected_nll = -(math.log(0.9) + math.log(0.1) + math.log(0.6) + math.log(0.25)) / 4
    assert negative_log_likelihood(logits, labels).item() == pytest.approx(expected_nll)
    # Σ_c (p_c − onehot_c)² per sample: .015, 1.46, .26, .845.
    assert brier_score(logits, labels).item() == pytest.approx((0.015 + 1.46 + 0.26 + 0.845) / 4)


def test_hand_worked_reliability_bins():
    logits, labels = hand_example()
    bins = reliability_bins(logits, labels, n_bins=4)
    assert isinstance(bins, ReliabilityBins)
    torch.testing.assert_close(bins.lower, torch.tensor([0, 0.25, 0.5, 0.75], dtype=torch.float64))
    torch.testing.assert_close(bins.upper, torch.tensor([0.25, 0.5, 0.75, 1], dtype=torch.float64))
    assert bins.count.tolist() == [0, 1, 1, 2]
    nan = float("nan")
    torch.testing.assert_close(bins.confidence, torch.tensor([nan, 0.4, 0.6, 0.85], dtype=torch.float64),
                               equal_nan=True)
    torch.testing.assert_close(bins.accuracy, torch.tensor([nan, 0.0, 1.0, 0.5], dtype=torch.float64),
                               equal_nan=True)


def test_confidence_of_exactly_one_falls_in_the_last_bin():
    # softmax([0, -1000]) is exactly [1, 0] in float64.
    logits = torch.tensor([[0.0, -1000.0], [0.0, -1000.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    bins = reliability_bins(logits, labels, n_bins=15)
    assert bins.count.tolist() == [0] * 14 + [2]
    assert expected_calibration_error(logits, labels).item() == pytest.approx(0.5)


def numpy_expected_calibration_error(probabilities, labels, n_bins):
    """ECE written out per bin with a Python loop, from the definition."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    total = 0.0
    for b in range(n_bins):
        in_bin = (confidence >= b / n_bins) & (confidence < (b + 1) / n_bins)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return total


@pytest.mark.parametrize("seed, n_classes, n_bins", [(0, 3, 15), (1, 10, 15), (2, 5, 7), (3, 2, 10)])
def test_matches_torchmetrics_and_numpy_references(seed, n_classes, n_bins):
    logits, labels = random_logits(seed, 400, n_classes)
    probabilities = torch.softmax(logits, dim=-1)
    assert (probabilities.max(dim=-1).values < 1).all()  # torchmetrics differs only at exactly 1.0
    reference = multiclass_calibration_error(probabilities, labels, num_classes=n_classes, n_bins=n_bins, norm="l1")
    ours = expected_calibration_error(logits, labels, n_bins=n_bins)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)
    assert ours.item() == pytest.approx(numpy_expected_calibration_error(probabilities.numpy(), labels.numpy(), n_bins))

    y, p = labels.numpy(), probabilities.numpy()
    assert accuracy(logits, labels).item() == pytest.approx(accuracy_score(y, p.argmax(axis=1)))
    assert negative_log_likelihood(logits, labels).item() == pytest.approx(log_loss(y, p, labels=range(n_classes)))
    assert brier_score(logits, labels).item() == pytest.approx(
        brier_score_loss(y, p, labels=range(n_classes), scale_by_half=False))


def test_reliability_bins_agree_with_ece():
    logits, labels = random_logits(5, 300, 4)
    bins = reliability_bins(logits, labels)
    assert int(bins.count.sum()) == 300
    occupied = bins.count > 0
    weights = bins.count[occupied].double() / 300
    ece = (weights * (bins.accuracy[occupied] - bins.confidence[occupied]).abs()).sum()
    assert ece.item() == pytest.approx(expected_calibration_error(logits, labels).item())
    assert torch.isnan(bins.confidence[~occupied]).all() and torch.isnan(bins.accuracy[~occupied]).all()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_samples=st.integers(1, 40), n_classes=st.integers(2, 6),
       scale=st.sampled_from([0.0, 0.1, 1.0, 10.0, 100.0]), n_bins=st.integers(1, 20))
def test_properties(seed, n_samples, n_classes, scale, n_bins):
    logits, labels = random_logits(seed, n_samples, n_classes, scale)
    ece = expected_calibration_error(logits, labels, n_bins=n_bins).item()
    assert 0 <= ece <= 1
    assert 0 <= brier_score(logits, labels).item() <= 2
    assert negative_log_likelihood(logits, labels).item() >= 0
    # log_softmax(logits) describes the same distribution: every metric must accept it unchanged.
    log_probabilities = torch.log_softmax(logits, dim=-1)
    for metric in (accuracy, negative_log_likelihood, brier_score):
        torch.testing.assert_close(metric(log_probabilities, labels), metric(logits, labels))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_keeps_the_dtype(dtype):
    logits, labels = hand_example(dtype)
    for metric in (accuracy, expected_calibration_error, negative_log_likelihood, brier_score):
        result = metric(logits, labels)
        assert result.dtype == dtype and result.dim() == 0


def test_large_logits_give_finite_nll():
    logits = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])
    labels = torch.tensor([1, 1])
    assert negative_log_likelihood(logits, labels).item() == pytest.approx(500.0)


@pytest.mark.parametrize("logits, labels, message", [
    (torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), "NaN or Inf"),
    (torch.tensor([[0.0, float("inf")]]), torch.tensor([0]), "NaN or Inf"),
    (torch.zeros(3, 2), torch.tensor([0, 1]), "shape"),
    (torch.zeros(2, 2), torch.tensor([0, 2]), r"\[0, 2\)"),
    (torch.zeros(2, 2), torch.tensor([-1, 0]), r"\[0, 2\)"),
    (torch.zeros(2, 2), torch.tensor([0.0, 1.0]), "integer"),
    (torch.zeros(2, 2, 2), torch.tensor([0, 1]), r"\(N, C\)"),
    (torch.zeros(2), torch.tensor([0, 1]), r"\(N, C\)"),
    (torch.zeros(2, 2, dtype=torch.long), torch.tensor([0, 1]), "floating"),
])
def test_bad_input_raises_input_error(logits, labels, message):
    with pytest.raises(InputError, match=message):
        expected_calibration_error(logits, labels)
    with pytest.raises(InputError):
        negative_log_likelihood(logits, labels)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_bad_bin_count(n_bins):
    logits, labels = hand_example()
    with pytest.raises(InputError, match="n_bins"):
        reliability_bins(logits, labels, n_bins=n_bins)


def test_huge_finite_logits_are_accepted():
    # Their sum overflows to Inf, which must not be mistaken for an Inf entry.
    logits = torch.tensor([[3e38, 3e38, 0.0], [0.0, 3e38, 3e38]])
    assert accuracy(logits, torch.tensor([0, 1])).item() == 1.0


def _on_edge(logits, confidence):
    """``logits`` whose first row has a float32 softmax confidence of exactly ``float32(confidence)``
    (the edge is hit): its first logit is moved by float32 ulps from the given value until it does.
    exp and log_softmax round differently with different CPU kernels, so the logit that hits an edge
    is found on the machine running the test rather than pinned."""
    logits = torch.tensor(logits, dtype=torch.float32)
    target = torch.tensor(confidence, dtype=torch.float32)
    for _ in range(64):
        reached = torch.log_softmax(logits[0], dim=-1).max().exp()
        if reached == target:
            return logits
        logits[0, 0] = torch.nextafter(logits[0, 0], torch.tensor(math.inf if reached < target else -math.inf))
    raise AssertionError(f"no float32 logit near {logits[0, 0].item()} gives a confidence of exactly {confidence}")


def test_a_confidence_exactly_on_an_edge_goes_to_the_bin_above_it():
    # The rule b = ⌊ĉ·15⌋ on float32 ĉ = float32(k/15) gives bin k (IEEE rounding of k/15·15 is exact).
    # With C classes [l, 0, …, 0] the confidence is e^l/(e^l + C − 1): whether moving l a few ulps hits an
    # edge exactly depends on the CPU's exp kernel (generic kernels reach fewer), so several class counts
    # are tried per edge, on the machine running the test, rather than one logit pinned.
    reached = []
    for k in range(1, 15):
        for classes in (16, 2, 3, 5, 7, 11, 13):
            if k / 15 <= 1 / classes:
                continue  # the confidence of the largest of C logits is at least 1/C
            first = math.log((classes - 1) * k / (15 - k))
            try:
                logits = _on_edge([[first] + [0.0] * (classes - 1)], k / 15)
            except AssertionError:
                continue
            bins = reliability_bins(logits, torch.tensor([0]))
            assert bins.count.tolist() == [int(b == k) for b in range(15)], (k, classes)
            assert expected_calibration_error(logits, torch.tensor([0])).item() == pytest.approx(1 - k / 15, abs=1e-6)
            reached.append(k)
            break
    assert len(reached) >= 6, reached  # 9 of 14 here with AVX2 kernels and with the generic ones


def _torchmetrics_edges_above():
    """The k at which torchmetrics' float32 edges ``linspace(0, 1, 16)`` lie above ``float32(k/15)``:
    3, 6 and 7 with the x86 kernels we ran, but linspace's last bits come from the CPU's kernel, so
    the tests read them here rather than pin them."""
    edges = torch.linspace(0, 1, 16)
    on_edge = torch.tensor([k / 15 for k in range(16)], dtype=torch.float32)
    return set(torch.nonzero(edges > on_edge).flatten().tolist())


def test_ece_confidence_exactly_on_an_edge_goes_to_the_upper_bin():
    # A: confidence exactly float32(7/15) (an edge), right; B: confidence 0.45 (bin 6), wrong.
    # Our rule: ⌊(7/15)·15⌋ = 7, so A is alone in bin 7 and B alone in bin 6:
    #   ECE = (|1 − 7/15| + |0 − 0.45|) / 2 = (8/15 + 0.45) / 2 = 0.491667.
    # torchmetrics, where linspace(0, 1, 16)[7] lies just above float32(7/15), puts A with B in bin 6:
    #   ECE = |(1 − 7/15) + (0 − 0.45)| / 2 = (1/12) / 2 = 0.041667 (and agrees with us elsewhere).
    logits = _on_edge([[math.log(1.75), 0.0, 0.0], [math.log(0.45), math.log(0.3), math.log(0.25)]], 7 / 15)
    labels = torch.tensor([0, 1])
    assert reliability_bins(logits, labels).count[6:8].tolist() == [1, 1]
    ours = expected_calibration_error(logits, labels).item()
    assert ours == pytest.approx((8 / 15 + 0.45) / 2, abs=1e-6)
    theirs = multiclass_calibration_error(logits.softmax(-1), labels, num_classes=3, n_bins=15, norm="l1").item()
    assert theirs == pytest.approx((1 / 12) / 2 if 7 in _torchmetrics_edges_above() else ours, abs=1e-6)


def test_ece_wrong_prediction_with_confidence_one_shares_the_last_bin():
    # C: confidence exactly 1, wrong; D: confidence 0.95 (bin 14), right.
    # Our rule: both in bin 14: |(0 − 1) + (1 − 0.95)| / 2 = 0.475.
    # torchmetrics gives 1.0 its own bin: (|0 − 1| + |1 − 0.95|) / 2 = 0.525.
    logits = _on_edge([[0.0, -200.0], [math.log(19.0), 0.0]], 1.0)  # exp(−200) is 0 in float32: exactly 1
    labels = torch.tensor([1, 0])
    probabilities = logits.softmax(-1)
    assert probabilities[1, 0].item() == pytest.approx(0.95, abs=1e-6)  # bin 14, whatever its last bits
    ours = expected_calibration_error(logits, labels).item()
    assert ours == pytest.approx(0.475, abs=1e-6)
    theirs = multiclass_calibration_error(probabilities, labels, num_classes=2, n_bins=15, norm="l1").item()
    assert theirs == pytest.approx(0.525, abs=1e-6)
