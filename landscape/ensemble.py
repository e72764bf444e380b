"""Combining ensemble members and measuring what ensembling gains.

Member logits ``L`` have shape ``(M, N, C)`` (members × samples × classes), labels ``y`` shape ``(N,)``.

- Member error ``E_i = (1/N) Σ_n 1[argmax_c L_inc ≠ y_n]``; mean member error ``Ē = (1/M) Σ_i E_i``.
- :func:`combine` gives the ensemble's log-probabilities ``(N, C)``:

  - ``"probs"`` (the deep-ensemble convention, Lakshminarayanan et al. 2017, and what SharpBalance's
    released code does): ``log (1/M) Σ_i softmax(L_i) = logsumexp_i log_softmax(L_i) − log M``;
  - ``"logits"`` (what the SharpBalance paper's text says, §2): ``log_softmax((1/M) Σ_i L_i)``;
  - ``"vote"``: majority vote of the members' predicted classes, returned as classes ``(N,)``;
    a tie goes to the lowest class index. NLL, ECE and Brier are not defined for it.

  Both log-probability modes are fixed points of ``log_softmax``, so every function in
  :mod:`landscape.calibration` accepts them in place of logits.
- Ensemble improvement rate (Theisen et al. 2023, "When are ensembles really effective?";
  SharpBalance eq. 4): ``EIR = (Ē − E_ens) / Ē``. It is undefined when ``Ē = 0``: NaN with an
  :class:`UndefinedMetricWarning`.

Results are tensors in the dtype and on the device of the member logits.

Example (three members, each wrong on a different one of three samples; the vote is always right,
so ``Ē = 1/3``, ``E_ens = 0`` and ``EIR = 1``)::

    >>> import torch
    >>> labels = torch.tensor([0, 0, 0])
    >>> wrong = torch.eye(3, dtype=torch.long)          # member i predicts class 1 on sample i
    >>> members = torch.nn.functional.one_hot(wrong, 2).double()
    >>> mean_member_error(members, labels).item(), ensemble_error(members, labels, "vote").item()
    (0.3333333333333333, 0.0)
    >>> ensemble_improvement_rate(members, labels, "vote").item()
    1.0
"""
from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F

from landscape.calibration import validate_logits
from landscape.errors import InputError

__all__ = [
    "UndefinedMetricWarning",
    "combine",
    "combined_log_probabilities",
    "divide_by_mean_member_error",
    "ensemble_error",
    "ensemble_improvement_rate",
    "ensemble_predictions",
    "mean_member_error",
    "mean_member_error_from_predictions",
    "member_errors",
    "member_predictions",
    "validate_member_logits",
]

Combine = Literal["probs", "logits", "vote"]
COMBINE_MODES = ("probs", "logits", "vote")


class UndefinedMetricWarning(RuntimeWarning):
    """A ratio metric was asked for where its denominator is zero; the result is NaN."""


def validate_member_logits(member_logits: torch.Tensor, labels: torch.Tensor | None = None,
                           minimum_members: int = 1) -> None:
    """Raise :class:`InputError` unless ``member_logits`` is a finite floating ``(M, N, C)`` tensor
    with at least ``minimum_members`` members and ``labels`` (if given) has ``N`` classes in ``[0, C)``."""
    if isinstance(member_logits, torch.Tensor) and member_logits.dim() != 3:
        raise InputError(f"member_logits have shape {tuple(member_logits.shape)} but must be (M, N, C): "
                         "members × samples × classes; stack each member's (N, C) logits with torch.stack.")
    validate_logits(member_logits, labels)
    if member_logits.shape[0] < minimum_members:
        raise InputError(f"this metric compares members and needs at least {minimum_members}, "
                         f"got {member_logits.shape[0]}; pass the logits of more members.")


def _check_combine(combine: str, allowed: tuple[str, ...] = COMBINE_MODES) -> None:
    if combine not in allowed:
        raise InputError(f"combine must be one of {', '.join(map(repr, allowed))}, got {combine!r}.")


def member_predictions(member_logits: torch.Tensor) -> torch.Tensor:
    """Each member's predicted class, ``argmax_c L_inc``, shape ``(M, N)``; ties go to the lowest class."""
    validate_member_logits(member_logits)
    return member_logits.argmax(dim=-1)


def member_errors(member_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each member's error rate ``E_i = (1/N) Σ_n 1[argmax_c L_inc ≠ y_n]``, shape ``(M,)``."""
    validate_member_logits(member_logits, labels)
    return (member_logits.argmax(dim=-1) != labels).to(member_logits.dtype).mean(dim=-1)


def mean_member_error(member_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean member error ``Ē = (1/M) Σ_i E_i``, the denominator of both DER and EIR."""
    validate_member_logits(member_logits, labels)
    return mean_member_error_from_predictions(member_logits.argmax(dim=-1), labels, member_logits.dtype)


def mean_member_error_from_predictions(predictions: torch.Tensor, labels: torch.Tensor,
                                       dtype: torch.dtype) -> torch.Tensor:
    """``Ē`` from member predictions ``(M, N)``: the one place DER (landscape.diversity) and EIR get it,
    taking predictions so that callers that already have them do not repeat the argmax."""
    return (predictions != labels).to(dtype).mean()


def divide_by_mean_member_error(quantity: torch.Tensor, mean_error: torch.Tensor, metric: str) -> torch.Tensor:
    """``quantity / Ē``; NaN with an :class:`UndefinedMetricWarning` when ``Ē = 0``.

    Theisen et al. (2023) define DER and EIR relative to the mean member error, so neither is
    defined when every member is perfect on the data; a NaN keeps that visible in result tables.
    """
    if mean_error == 0:
        warnings.warn(f"{metric} is undefined because the mean member error is 0 (every member is "
                      "correct on every sample); returning NaN. Measure on harder data.",
                      UndefinedMetricWarning, stacklevel=3)
        return torch.full_like(quantity, torch.nan)
    return quantity / mean_error


def combined_log_probabilities(member_logits: torch.Tensor, mode: str) -> torch.Tensor:
    """The ensemble's log-probabilities without input checks (shared with the attack wrapper, whose
    forward must stay cheap and differentiable)."""
    if mode == "probs":
        n_members = member_logits.shape[0]
        return torch.logsumexp(F.log_softmax(member_logits, dim=-1), dim=0) - math.log(n_members)
    return F.log_softmax(member_logits.mean(dim=0), dim=-1)


def _majority_vote(predictions: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Most frequent class per sample from member predictions ``(M, N)``; ties go to the lowest class."""
    n_samples = predictions.shape[1]
    votes = torch.zeros(n_samples, n_classes, dtype=torch.long, device=predictions.device)
    votes.scatter_add_(1, predictions.T, torch.ones_like(predictions.T))
    # torch.argmax returns the first maximal index, i.e. the lowest tied class.
    return votes.argmax(dim=-1)


def _combine(member_logits: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "vote":
        return _majority_vote(member_logits.argmax(dim=-1), member_logits.shape[-1])
    return combined_log_probabilities(member_logits, mode)


def _ensemble_predictions(member_logits: torch.Tensor, mode: str) -> torch.Tensor:
    combined = _combine(member_logits, mode)
    return combined if mode == "vote" else combined.argmax(dim=-1)


def combine(member_logits: torch.Tensor, combine: Combine = "probs") -> torch.Tensor:
    """The ensemble's prediction: log-probabilities ``(N, C)`` for ``"probs"`` and ``"logits"``,
    predicted classes ``(N,)`` for ``"vote"`` (see the module docstring for the formulas)."""
    validate_member_logits(member_logits)
    _check_combine(combine)
    return _combine(member_logits, combine)


def ensemble_predictions(member_logits: torch.Tensor, combine: Combine = "probs") -> torch.Tensor:
    """The ensemble's predicted class per sample, shape ``(N,)``; ties go to the lowest class."""
    validate_member_logits(member_logits)
    _check_combine(combine)
    return _ensemble_predictions(member_logits, combine)


def ensemble_error(member_logits: torch.Tensor, labels: torch.Tensor, combine: Combine = "probs") -> torch.Tensor:
    """``E_ens = (1/N) Σ_n 1[ŷ_ens,n ≠ y_n]`` for the chosen way of combining members."""
    validate_member_logits(member_logits, labels)
    _check_combine(combine)
    return _ensemble_error(member_logits, labels, combine)


def _ensemble_error(member_logits: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    return (_ensemble_predictions(member_logits, mode) != labels).to(member_logits.dtype).mean()


def ensemble_improvement_rate(member_logits: torch.Tensor, labels: torch.Tensor,
                              combine: Combine = "probs") -> torch.Tensor:
    """``EIR = (Ē − E_ens) / Ē`` (Theisen et al. 2023; SharpBalance eq. 4); at most 1, NaN if ``Ē = 0``."""
    validate_member_logits(member_logits, labels)
    _check_combine(combine)
    mean_error = mean_member_error_from_predictions(member_logits.argmax(dim=-1), labels, member_logits.dtype)
    improvement = mean_error - _ensemble_error(member_logits, labels, combine)
    return divide_by_mean_member_error(improvement, mean_error, "The ensemble improvement rate")
