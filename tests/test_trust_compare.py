"""Issue 20: numbers comparable with the literature (ECE edges, ASAM's scaling rule, the reference
ascent) and the OpenMP/thread settings every command applies before torch is imported."""
import math

import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from landscape.calibration import expected_calibration_error, reliability_bins


def _on_edge(logits, confidence):
    """Check the float32 softmax confidence of the first row is exactly ``confidence`` (the edge is hit)."""
    logits = torch.tensor(logits, dtype=torch.float32)
    assert torch.log_softmax(logits[0], dim=-1).max().exp() == torch.tensor(confidence, dtype=torch.float32)
    return logits


def test_torchmetrics_edges_differ_from_float32_k_over_15_exactly_at_3_6_7():
    edges = torch.linspace(0, 1, 16)
    on_edge = torch.tensor([k / 15 for k in range(16)], dtype=torch.float32)
    assert torch.nonzero(edges > on_edge).flatten().tolist() == [3, 6, 7]  # (8, 9, 10 lie below: harmless)
    assert ((on_edge * 15).floor() == torch.arange(16.0)).all()  # ⌊float32(k/15)·15⌋ = k for every k


def test_ece_confidence_exactly_on_an_edge_goes_to_the_upper_bin():
    # A: confidence exactly float32(7/15) (an edge), right; B: confidence 0.45 (bin 6), wrong.
    # Our rule: ⌊(7/15)·15⌋ = 7, so A is alone in bin 7 and B alone in bin 6:
    #   ECE = (|1 − 7/15| + |0 − 0.45|) / 2 = (8/15 + 0.45) / 2 = 0.491667.
    # torchmetrics: linspace(0, 1, 16)[7] lies just above float32(7/15), so A joins B in bin 6:
    #   ECE = |(1 − 7/15) + (0 − 0.45)| / 2 = (1/12) / 2 = 0.041667.
    logits = _on_edge([[0.5596157908439636, 0.0, 0.0], [math.log(0.45), math.log(0.3), math.log(0.25)]], 7 / 15)
    labels = torch.tensor([0, 1])
    assert reliability_bins(logits, labels).count[6:8].tolist() == [1, 1]
    ours = expected_calibration_error(logits, labels).item()
    assert ours == pytest.approx((8 / 15 + 0.45) / 2, abs=1e-6)
    theirs = multiclass_calibration_error(logits.softmax(-1), labels, num_classes=3, n_bins=15, norm="l1").item()
    assert theirs == pytest.approx((1 / 12) / 2, abs=1e-6)


def test_ece_wrong_prediction_with_confidence_one_shares_the_last_bin():
    # C: confidence exactly 1, wrong; D: confidence 0.95 (bin 14), right.
    # Our rule: both in bin 14: |(0 − 1) + (1 − 0.95)| / 2 = 0.475.
    # torchmetrics gives 1.0 its own bin: (|0 − 1| + |1 − 0.95|) / 2 = 0.525.
    logits = _on_edge([[0.0, -200.0], [2.9444386959075928, 0.0]], 1.0)
    labels = torch.tensor([1, 0])
    assert logits.softmax(-1)[1, 0] == torch.tensor(0.95)
    probabilities = logits.softmax(-1)
    ours = expected_calibration_error(logits, labels).item()
    assert ours == pytest.approx(0.475, abs=1e-6)
    theirs = multiclass_calibration_error(probabilities, labels, num_classes=2, n_bins=15, norm="l1").item()
    assert theirs == pytest.approx(0.525, abs=1e-6)
