"""Accuracy and calibration of one classifier's predictions: accuracy, ECE, reliability bins, NLL, Brier.

Every function takes ``logits`` of shape ``(N, C)`` and integer ``labels`` of shape ``(N,)``. The
predicted distribution is ``p = softmax(logits)``. Since ``log_softmax`` is the identity on
log-probabilities, the functions accept an ensemble's combined log-probabilities
(:func:`landscape.ensemble.combine`) just as well as raw logits.

With confidence ``ĉ_n = max_c p_nc`` and prediction ``ŷ_n = argmax_c p_nc``:

- accuracy = ``(1/N) Σ_n 1[ŷ_n = y_n]``;
- expected calibration error (Naeini et al. 2015; Guo et al. 2017, "On calibration of modern neural
  networks") over ``B`` equal-width bins, sample ``n`` in bin ``b_n = min(⌊ĉ_n · B⌋, B − 1)``, so bin
  ``b`` is ``[b/B, (b+1)/B)`` and a confidence of exactly 1 falls in the last bin:
  ``ECE = Σ_b (n_b/N) · |acc_b − conf_b| = (1/N) Σ_b |Σ_{n∈b} (1[ŷ_n = y_n] − ĉ_n)|``.
  The bin is computed arithmetically, ``⌊ĉ·B⌋`` in the dtype of the logits, not by comparing ``ĉ``
  with stored edges. torchmetrics instead uses ``bucketize(ĉ, linspace(0, 1, B + 1), right=True) − 1``
  and gives ``ĉ = 1`` a bin of its own. The two agree except on exact edges: in float32 with
  ``B = 15``, ``linspace`` edges 3, 6 and 7 lie an ulp above ``float32(k/15)`` (with x86 kernels;
  linspace's last bits depend on the CPU), so a confidence of
  exactly ``float32(0.2)``, ``float32(0.4)`` or ``float32(7/15)`` goes to bin ``k`` here and to bin
  ``k − 1`` in torchmetrics, and a wrong prediction with confidence 1 is summed with the rest of
  the last bin here but kept apart there (``tests/landscape/test_calibration.py`` works both cases
  by hand);
- negative log-likelihood = ``−(1/N) Σ_n log p_{n y_n}``;
- Brier score (Brier 1950) = ``(1/N) Σ_n Σ_c (p_nc − 1[c = y_n])²``, in ``[0, 2]``.

Ties in ``argmax`` go to the lowest class index (``torch.argmax`` returns the first maximum).
Results are 0-d tensors in the dtype and on the device of ``logits``.

Example (two samples predicted with confidence 0.8, one of them right: accuracy 1/2, and
``ECE = |(1 − 0.8) + (0 − 0.8)| / 2 = 0.3`` with both in one bin)::

    >>> import math, torch
    >>> logits = torch.tensor([[math.log(4.0), 0.0], [math.log(4.0), 0.0]], dtype=torch.float64)
    >>> labels = torch.tensor([0, 1])
    >>> accuracy(logits, labels).item(), round(expected_calibration_error(logits, labels).item(), 12)
    (0.5, 0.3)
    >>> round(brier_score(logits, labels).item(), 12)    # ((0.2² + 0.2²) + (0.8² + 0.8²)) / 2
    0.68
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from landscape.checks import positive_int
from landscape.errors import InputError

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "brier_score",
    "expected_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
    "validate_logits",
]


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry is finite. A NaN or Inf anywhere makes the sum non-finite, so the
    elementwise check (an order of magnitude slower on a CPU) runs only when the sum overflows or
    something is wrong."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def validate_logits(logits: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    """Raise :class:`InputError` unless ``logits`` is a finite floating tensor ``(..., N, C)`` and
    ``labels`` (if given) holds ``N`` integer classes in ``[0, C)``.

    Leading dimensions are allowed so that member logits ``(M, N, C)`` share this check.
    """
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"logits must be a torch.Tensor, got {type(logits).__name__}; "
                         "convert with torch.as_tensor.")
    if logits.dim() < 2:
        raise InputError(f"logits have shape {tuple(logits.shape)} but must be (N, C): "
                         "samples × classes; add the class dimension.")
    if not logits.is_floating_point():
        raise InputError(f"logits have dtype {logits.dtype} but must be floating point; "
                         "convert with .float() or .double().")
    n_samples, n_classes = logits.shape[-2:]
    if n_samples == 0 or n_classes == 0:
        raise InputError(f"logits have shape {tuple(logits.shape)}: no samples or no classes; "
                         "pass at least one sample and one class.")
    if not _all_finite(logits):
        raise InputError("logits contain NaN or Inf; check the model (e.g. a diverged run) "
                         "or mask those samples out before measuring.")
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor):
        raise InputError(f"labels must be a torch.Tensor, got {type(labels).__name__}; "
                         "convert with torch.as_tensor.")
    if labels.shape != (n_samples,):
        raise InputError(f"labels have shape {tuple(labels.shape)} but logits have {n_samples} samples; "
                         f"labels must have shape ({n_samples},), one class index per sample.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels have dtype {labels.dtype} but must hold integer class indices; "
                         "convert with .long().")
    if labels.device != logits.device:
        raise InputError(f"labels are on {labels.device} but logits on {logits.device}; "
                         "move both to one device.")
    if (labels < 0).any() or (labels >= n_classes).any():
        raise InputError(f"labels must lie in [0, {n_classes}) for {n_classes} classes, found "
                         f"min {int(labels.min())} and max {int(labels.max())}; check the label mapping.")


def _validate_single_model(logits: torch.Tensor, labels: torch.Tensor) -> None:
    validate_logits(logits, labels)
    if logits.dim() != 2:
        raise InputError(f"logits have shape {tuple(logits.shape)} but must be (N, C); for member "
                         "logits (M, N, C) combine them first (landscape.ensemble.combine) or pick one member.")


def _check_bin_count(n_bins: int) -> None:
    positive_int("n_bins", n_bins)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose ``argmax`` class equals the label."""
    _validate_single_model(logits, labels)
    return (logits.argmax(dim=-1) == labels).to(logits.dtype).mean()


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin summary for a reliability diagram; bin ``b`` covers ``[lower[b], upper[b])``.

    ``confidence`` and ``accuracy`` are the bins' mean confidence and accuracy (NaN for empty bins);
    ``count`` is the number of samples in each bin (an integer tensor).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor


def _bin_sums(logits: torch.Tensor, labels: torch.Tensor, n_bins: int):
    """Per-bin sample count, sum of confidences and number of correct predictions (the one place
    the binning rule ``b = min(⌊ĉ·B⌋, B − 1)`` lives)."""
    _validate_single_model(logits, labels)
    _check_bin_count(n_bins)
    log_probabilities = F.log_softmax(logits, dim=-1)
    log_confidence, predicted = log_probabilities.max(dim=-1)
    confidence = log_confidence.exp()
    correct = (predicted == labels).to(logits.dtype)
    bin_index = (confidence * n_bins).floor().long().clamp(0, n_bins - 1)
    count = torch.bincount(bin_index, minlength=n_bins)
    confidence_sum = torch.zeros(n_bins, dtype=logits.dtype, device=logits.device)
    confidence_sum.index_add_(0, bin_index, confidence)
    correct_sum = torch.zeros_like(confidence_sum).index_add_(0, bin_index, correct)
    return count, confidence_sum, correct_sum


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Mean confidence, accuracy and sample count in ``n_bins`` equal-width confidence bins."""
    count, confidence_sum, correct_sum = _bin_sums(logits, labels, n_bins)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=logits.dtype, device=logits.device)
    # Empty bins have no mean: NaN rather than a made-up 0.
    occupied = count.to(logits.dtype).where(count > 0, torch.nan)
    return ReliabilityBins(lower=edges[:-1], upper=edges[1:], confidence=confidence_sum / occupied,
                           accuracy=correct_sum / occupied, count=count)


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """``ECE = Σ_b (n_b/N)·|acc_b − conf_b| = (1/N)·Σ_b |Σ_{n∈b}(correct_n − ĉ_n)|``, in ``[0, 1]``.

    Binning rule: ``b = min(⌊ĉ·B⌋, B − 1)`` computed in the logits' dtype, so bin ``b`` is
    ``[b/B, (b+1)/B)`` and ``ĉ = 1`` joins the last bin. torchmetrics' ``bucketize`` on a float
    ``linspace`` disagrees only for confidences exactly on an edge ``k/B`` (see the module docstring).
    """
    count, confidence_sum, correct_sum = _bin_sums(logits, labels, n_bins)
    return (correct_sum - confidence_sum).abs().sum() / count.sum()


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``−(1/N) Σ_n log p_{n y_n}`` with ``log p = log_softmax(logits)`` (stable for large logits)."""
    _validate_single_model(logits, labels)
    log_probabilities = F.log_softmax(logits, dim=-1)
    return -log_probabilities.gather(-1, labels.unsqueeze(-1)).mean()


def brier_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(1/N) Σ_n Σ_c (p_nc − onehot(y_n)_c)²`` (the multi-class Brier score, in ``[0, 2]``)."""
    _validate_single_model(logits, labels)
    probabilities = F.softmax(logits, dim=-1)
    one_hot = F.one_hot(labels, probabilities.shape[-1]).to(probabilities.dtype)
    return (probabilities - one_hot).square().sum(dim=-1).mean()
