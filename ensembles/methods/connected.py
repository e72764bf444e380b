"""Constrained training: members kept linearly connected to an anchor (Lion, Noci, Hofmann and
Bachmann, "How good is a single basin?", AISTATS 2024).

The paper builds connected ensembles by training members under a constraint that keeps them in one
basin, and trades connectivity for diversity with its strength. Its exact objective could not be
recovered from the text available to us; this is our documented choice. A member θ minimises

    L(θ) + λ · L((1 - α) · θ_anchor + α · θ),      α ~ U(0, 1) drawn anew at every step,

so the loss along the straight line from the anchor to the member is pushed down with it (a
one-sample estimate of λ · E_α L on the segment, the linear path on which linear mode connectivity
is judged; Frankle et al. 2020, Entezari et al. 2022). The anchor is a constant: the gradient
reaches θ only, scaled by α. λ = 0 is plain training. The trainer
(:mod:`ensembles.training.trainer`) trains the anchor first and draws α from each member's own
generator.

Only the parameters are interpolated; the interpolated pass runs in the model's training mode, so
BatchNorm normalizes by the batch's statistics, and it leaves the running statistics untouched
(they belong to θ, not to a point of the path).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ensembles.methods.sam import frozen_batch_norm_statistics

__all__ = ["interpolated_parameters", "interpolated_loss", "constrained_loss"]


def interpolated_parameters(model: torch.nn.Module, anchor: Mapping[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - α) · θ_anchor + α · θ`` for every parameter of ``model`` (by name), differentiable in θ."""
    return {name: torch.lerp(anchor[name].detach(), parameter, alpha) for name, parameter in model.named_parameters()}


def interpolated_loss(model: torch.nn.Module, anchor: Mapping[str, torch.Tensor], inputs: torch.Tensor,
                      targets: torch.Tensor, alpha: float,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> torch.Tensor:
    """``L((1 - α) · θ_anchor + α · θ)`` on the batch, through :func:`torch.func.functional_call`
    (BatchNorm on the batch's statistics, its running statistics unchanged)."""
    with frozen_batch_norm_statistics(model):
        outputs = functional_call(model, interpolated_parameters(model, anchor, alpha), (inputs,))
    return loss_fn(outputs, targets)


def constrained_loss(outputs: torch.Tensor, targets: torch.Tensor, model: torch.nn.Module,
                     anchor: Mapping[str, torch.Tensor], inputs: torch.Tensor, strength: float,
                     alpha: float) -> torch.Tensor:
    """``L(θ) + λ · L((1 - α) · θ_anchor + α · θ)`` with the cross-entropy ``L``; ``outputs`` are
    the model's logits on ``inputs`` at θ (the first term)."""
    return F.cross_entropy(outputs, targets) + strength * interpolated_loss(model, anchor, inputs, targets, alpha)
