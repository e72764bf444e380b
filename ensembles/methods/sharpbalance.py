"""SharpBalance (Wang et al., "Sharpness-diversity tradeoff: improving flat ensembles with
SharpBalance", NeurIPS 2024, §4.3 and App. D): the set selection and the mixed training step.

Until epoch T_d every member trains with SAM on all data. At T_d each member ``i`` scores every
training sample ``j`` by the trace of its per-sample Fisher information,
``s_ij = ‖∇θ_i ℓ(x_j, y_j)‖²`` (eval mode, no augmentation; :mod:`landscape.fisher`). Member i's
sharpness-aware set is the union of the other members' sharpest samples,

    D_SAM^i = ∪_{j ≠ i} TopK_k(s_j),        D_Normal^i = D \\ D_SAM^i,

with ``TopK_k`` the ``⌊k N⌋`` highest scores (k a fraction of the N training samples). A batch B is
split by membership and trained on the mixed objective

    L(θ) = (n_normal / |B|) · L_normal(θ) + (n_sam / |B|) · L_sam(θ + ε̂),

with ε̂ the SAM ascent computed from the SAM part's gradient only, and one optimizer step.

The released code (github.com/haiquanlu/SharpBalance, ``engine.py`` ``boosting_sam_split*``)
differs in four ways; :func:`reference_sharpness_aware_sets` and the trainer's
``reference_compatible`` switch reproduce them together:

1. it takes the **lowest** ``⌊kN⌋`` scores of the other members (the flattest samples);
2. samples in no member's lowest set ("leftovers", taken in increasing index order) are added:
   on CIFAR-10 member i gets all of them except its own share ``leftover[i::M]``, elsewhere it
   gets just that share;
3. it selects once, never again;
4. BatchNorm running statistics are updated on the perturbed pass too.

(Its selection also happens one epoch late, after epoch T_d + 1 in our counting; we select after
T_d epochs in both modes.) Ties between equal scores go to the lower sample index (a stable sort).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ensembles.methods.sam import SAM, frozen_batch_norm_statistics
from landscape.errors import InputError

__all__ = [
    "top_fraction",
    "sharpness_aware_sets",
    "reference_sharpness_aware_sets",
    "leftover_rule",
    "select_sets",
    "StepOutcome",
    "training_step",
]


def _check_scores(scores: torch.Tensor, k: float) -> None:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise InputError(f"scores must be a (members, samples) tensor, got {getattr(scores, 'shape', type(scores))}")
    if scores.shape[0] < 2:
        raise InputError(f"SharpBalance needs at least 2 members (a member's set comes from the others), got {scores.shape[0]}")
    if not 0 < k <= 1:
        raise InputError(f"k is a fraction of the training set in (0, 1], got {k!r}")
    if not torch.isfinite(scores).all():
        raise InputError("sharpness scores contain NaN or infinity; the members diverged — lower the learning rate or rho")


def top_fraction(scores: torch.Tensor, k: float, largest: bool = True) -> torch.Tensor:
    """``(M, N)`` boolean mask of each row's ``⌊k N⌋`` highest (``largest=False``: lowest) scores;
    ties go to the lower index."""
    count = int(k * scores.shape[1])
    order = torch.argsort(scores, dim=1, descending=largest, stable=True)[:, :count]
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, order, True)


def _union_of_others(chosen: torch.Tensor) -> torch.Tensor:
    """Row i: samples chosen by at least one member other than i."""
    times_chosen = chosen.sum(0, keepdim=True, dtype=torch.int64)
    return (times_chosen - chosen.to(torch.int64)) > 0


def sharpness_aware_sets(scores: torch.Tensor, k: float) -> torch.Tensor:
    """The paper's sets: ``D_SAM^i = ∪_{j≠i} TopK_k(s_j)`` as an ``(M, N)`` boolean mask."""
    _check_scores(scores, k)
    return _union_of_others(top_fraction(scores, k, largest=True))


def leftover_rule(dataset: str) -> str:
    """How the released code hands out samples in no member's set: ``"all-but-own-share"`` on
    CIFAR-10 (``boosting_sam_split_boost``), ``"own-share"`` elsewhere (``boosting_sam_split``)."""
    return "all-but-own-share" if dataset.lower().replace("-", "") == "cifar10" else "own-share"


def reference_sharpness_aware_sets(scores: torch.Tensor, k: float, leftovers: str = "own-share") -> torch.Tensor:
    """The released code's sets: union of the other members' **lowest** ``⌊kN⌋`` scores, plus
    leftovers (samples in no member's lowest set, in index order) by ``leftovers``:
    ``"own-share"`` adds ``leftover[i::M]``, ``"all-but-own-share"`` adds every leftover but those."""
    _check_scores(scores, k)
    if leftovers not in ("own-share", "all-but-own-share"):
        raise InputError(f"leftovers must be 'own-share' or 'all-but-own-share', got {leftovers!r}")
    lowest = top_fraction(scores, k, largest=False)
    sets = _union_of_others(lowest)
    in_no_set = ~lowest.any(0)
    leftover = torch.nonzero(in_no_set).flatten()
    members = scores.shape[0]
    for i in range(members):  # M is a handful; the work per member is vectorized
        own_share = torch.zeros_like(in_no_set)
        own_share[leftover[i::members]] = True
        sets[i] |= own_share if leftovers == "own-share" else in_no_set & ~own_share
    return sets


def select_sets(scores: torch.Tensor, k: float, reference_compatible: bool = False, dataset: str = "") -> torch.Tensor:
    """Each member's sharpness-aware set from the members' per-sample scores ``(M, N)``."""
    if reference_compatible:
        return reference_sharpness_aware_sets(scores, k, leftover_rule(dataset))
    return sharpness_aware_sets(scores, k)


@dataclass(frozen=True)
class StepOutcome:
    """A step's objective at θ (``Σ_parts (n_part/|B|) L_part(θ)``, the unperturbed value) and
    the number of correct predictions at θ; both tensors, so no device synchronisation."""

    loss: torch.Tensor
    correct: torch.Tensor


def training_step(model: torch.nn.Module, optimizer: SAM, inputs: torch.Tensor, targets: torch.Tensor,
                  in_sam_set: torch.Tensor | None = None, *, loss_fn: Callable = F.cross_entropy,
                  freeze_batch_norm: bool = True, scaler: "torch.amp.GradScaler | None" = None,
                  autocast_dtype: torch.dtype | None = None) -> StepOutcome:
    """One optimizer step on the mixed objective
    ``(n_normal/|B|) L_normal(θ) + (n_sam/|B|) L_sam(θ + ε̂)``, ε̂ from the SAM part alone.

    ``in_sam_set`` (bool ``(B,)``) marks the batch's samples in the member's sharpness-aware
    set; ``None`` puts all of them there (plain SAM/ASAM). With ``optimizer.rho == 0`` every
    sample is normal and this is one forward-backward pass and the base optimizer's step, exactly.
    ``freeze_batch_norm`` keeps the perturbed pass out of BatchNorm's running statistics.
    ``autocast_dtype`` runs forward passes under ``torch.autocast`` on the inputs' device.
    """
    batch = len(targets)
    if not optimizer.perturbs:
        in_sam_set = torch.zeros(batch, dtype=torch.bool, device=targets.device)
    elif in_sam_set is None:
        in_sam_set = torch.ones(batch, dtype=torch.bool, device=targets.device)
    sam_count = int(in_sam_set.sum())
    parts = []  # (weight, inputs, targets)
    if sam_count:
        parts.append(("sam", sam_count / batch, *_part(inputs, targets, in_sam_set, sam_count, batch)))
    if sam_count < batch:
        normal = ~in_sam_set
        parts.append(("normal", (batch - sam_count) / batch, *_part(inputs, targets, normal, batch - sam_count, batch)))

    def weighted_loss(part_inputs, part_targets, weight):
        with torch.autocast(inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outputs = model(part_inputs)
            loss = loss_fn(outputs, part_targets)
        return outputs, (loss if weight == 1 else loss * weight)

    def backward(loss):
        (loss if scaler is None else scaler.scale(loss)).backward()

    optimizer.zero_grad()
    total = torch.zeros((), device=targets.device)
    correct = torch.zeros((), dtype=torch.int64, device=targets.device)
    for name, weight, part_inputs, part_targets in parts:
        outputs, loss = weighted_loss(part_inputs, part_targets, weight)
        backward(loss)
        total = total + loss.detach().float()
        correct = correct + (outputs.detach().argmax(1) == part_targets).sum()
        if name == "sam":
            # ε̂ from the SAM part's gradient only; then its loss again at θ + ε̂.
            optimizer.first_step(zero_grad=True)
            with frozen_batch_norm_statistics(model, freeze_batch_norm):
                _, perturbed_loss = weighted_loss(part_inputs, part_targets, weight)
            backward(perturbed_loss)
            optimizer.restore()  # the normal part's gradient is taken at θ and accumulates
    optimizer.base_step(scaler)
    return StepOutcome(loss=total, correct=correct)


def _part(inputs, targets, mask, count, batch):
    if count == batch:  # no copy when the whole batch is one part
        return inputs, targets
    return inputs[mask], targets[mask]
