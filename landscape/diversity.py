"""How differently ensemble members predict: disagreement, DER, prediction variance, pairwise KL.

Member logits ``L`` have shape ``(M, N, C)``, labels ``y`` shape ``(N,)``; ``ŷ_in = argmax_c L_inc``
(ties to the lowest class) and ``p_i = softmax(L_i)``.

- Disagreement (Masegosa 2020; Jiang et al. 2022): ``Dis(i, j) = (1/N) Σ_n 1[ŷ_in ≠ ŷ_jn]``.
- Disagreement-error ratio (Theisen et al. 2023; SharpBalance eq. 2): the mean disagreement over
  unordered pairs ``i < j`` divided by the mean member error ``Ē``:
  ``DER = (2 / (M(M−1))) Σ_{i<j} Dis(i, j) / Ē``. Undefined (NaN with a warning) when ``Ē = 0``.
  Not robustness_metrics' "normalized disagreement", which divides by the ensemble's error.
- Prediction variance (Ortega et al. 2022; SharpBalance eq. 1, ``D(θ) = E_D[Var(f_θ(D))]``): per sample
  the unbiased variance across members of the output vector, summed over classes, averaged over
  samples: ``(1/N) Σ_n Σ_c (1/(M−1)) Σ_i (f_inc − f̄_nc)²`` with ``f = L`` (``space="logits"``, as in
  SharpBalance's released code) or ``f = p`` (``space="probs"``).
- Pairwise KL (SharpBalance eq. 11): ``KL(p_i ‖ p_j) = Σ_c p_ic (log p_ic − log p_jc)`` per sample,
  averaged over samples and over the ``M(M−1)`` ordered pairs ``i ≠ j``; computed from
  ``log_softmax`` so that tiny probabilities keep their logarithms.

All metrics need at least two members. Results are tensors in the dtype and on the device of the
member logits.

Example (two members, each wrong on one of four samples, ``Ē = 1/4``, and disagreeing on two of
them, ``Dis = 1/2``, so ``DER = 2``)::

    >>> import torch
    >>> labels = torch.tensor([0, 1, 0, 1])
    >>> predictions = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 1]])
    >>> members = torch.nn.functional.one_hot(predictions, 2).double()    # logits (M, N, C)
    >>> disagreement_matrix(members)[0, 1].item(), disagreement_error_ratio(members, labels).item()
    (0.5, 2.0)
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from landscape.checks import positive_int
from landscape.ensemble import divide_by_mean_member_error, mean_member_error_from_predictions, validate_member_logits
from landscape.errors import InputError

__all__ = [
    "disagreement_error_ratio",
    "disagreement_matrix",
    "pairwise_kl",
    "pairwise_kl_matrix",
    "prediction_variance",
]


def _mean_off_diagonal(pairwise: torch.Tensor) -> torch.Tensor:
    """Mean of an ``(M, M)`` matrix over the ``M(M−1)`` entries ``i ≠ j``."""
    n_members = pairwise.shape[0]
    off_diagonal = ~torch.eye(n_members, dtype=torch.bool, device=pairwise.device)
    return pairwise[off_diagonal].mean()


def disagreement_matrix(member_logits: torch.Tensor) -> torch.Tensor:
    """``Dis(i, j)``, the fraction of samples on which members ``i`` and ``j`` predict different
    classes; a symmetric ``(M, M)`` matrix with zero diagonal."""
    validate_member_logits(member_logits)
    return _disagreement_matrix(member_logits.argmax(dim=-1), member_logits.dtype)


def _disagreement_matrix(predictions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (predictions[:, None, :] != predictions[None, :, :]).to(dtype).mean(dim=-1)


def disagreement_error_ratio(member_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``DER = mean_{i<j} Dis(i, j) / Ē`` (Theisen et al. 2023); NaN with a warning when ``Ē = 0``."""
    validate_member_logits(member_logits, labels, minimum_members=2)
    predictions = member_logits.argmax(dim=-1)
    # Dis is symmetric, so the mean over unordered pairs equals the mean over ordered ones.
    mean_disagreement = _mean_off_diagonal(_disagreement_matrix(predictions, member_logits.dtype))
    mean_error = mean_member_error_from_predictions(predictions, labels, member_logits.dtype)
    return divide_by_mean_member_error(mean_disagreement, mean_error, "The disagreement-error ratio")


def prediction_variance(member_logits: torch.Tensor,
                        space: Literal["logits", "probs"] = "logits") -> torch.Tensor:
    """``(1/N) Σ_n Σ_c Var_i(f_inc)`` with the unbiased (``M − 1``) variance across members, where
    ``f`` is the logits or the softmax probabilities (SharpBalance eq. 1)."""
    validate_member_logits(member_logits, minimum_members=2)
    if space == "logits":
        outputs = member_logits
    elif space == "probs":
        outputs = F.softmax(member_logits, dim=-1)
    else:
        raise InputError(f"space must be 'logits' or 'probs', got {space!r}.")
    return outputs.var(dim=0, correction=1).sum(dim=-1).mean()


def pairwise_kl_matrix(member_logits: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """``K[i, j] = (1/N) Σ_n KL(p_in ‖ p_jn)``, an ``(M, M)`` matrix with exactly zero diagonal.

    Samples are taken ``chunk_size`` at a time (default: about 2¹⁶ numbers per ``(M, chunk, C)``
    block), which bounds memory and, on a CPU, keeps the blocks in cache. On a GPU a larger
    ``chunk_size`` means fewer kernel launches.
    """
    validate_member_logits(member_logits)
    n_members, n_samples, n_classes = member_logits.shape
    if chunk_size is None:
        chunk_size = max(1, 2**16 // (n_members * n_classes))
    chunk_size = positive_int("chunk_size", chunk_size)
    total = member_logits.new_zeros(n_members, n_members)
    for chunk in member_logits.split(chunk_size, dim=1):
        log_probabilities = F.log_softmax(chunk, dim=-1)
        probabilities = log_probabilities.exp()
        # Column j holds Σ_n KL(p_in ‖ p_jn) for every i; log-probabilities are subtracted before
        # weighting, so identical members give exactly 0.
        total += torch.stack([(probabilities * (log_probabilities - log_probabilities_j)).sum(dim=(-2, -1))
                              for log_probabilities_j in log_probabilities], dim=1)
    return total / n_samples


def pairwise_kl(member_logits: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Mean of ``KL(p_i ‖ p_j)`` over samples and ordered member pairs ``i ≠ j`` (SharpBalance eq. 11)."""
    validate_member_logits(member_logits, minimum_members=2)
    return _mean_off_diagonal(pairwise_kl_matrix(member_logits, chunk_size))
