"""Knowledge distillation (Hinton, Vinyals and Dean, "Distilling the knowledge in a neural network",
2015, §2): a student learns from a teacher's temperature-softened predictions as well as the labels.

With student logits ``z``, labels ``y``, the teacher's soft targets ``p_T^τ`` and the student's
``p_S^τ = softmax(z / τ)``, the loss is

    (1 - w) · CE(z, y) + w · τ² · KL(p_T^τ || p_S^τ)

(the τ² keeps the soft term's gradient on the scale of the hard one as τ changes, Hinton et al.
§2). Lion et al. ("How good is a single basin?", AISTATS 2024) distil a multi-basin deep ensemble
into members trained inside one basin; :mod:`ensembles.training.trainer` wires this loss in, with the
teacher's logits from its run folder's logit cache.

    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
    >>> teacher = soft_targets(logits, temperature=2.0)
    >>> float(distillation_loss(logits, torch.tensor([0]), teacher, weight=1.0, temperature=2.0)) < 1e-6
    True
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_targets", "ensemble_soft_targets", "distillation_loss"]


def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p_T^τ = softmax(z_T / τ)`` over the last dimension (Hinton et al. 2015, eq. 1)."""
    return F.softmax(teacher_logits.float() / temperature, dim=-1)


def ensemble_soft_targets(member_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher ensemble's soft targets: the mean over members ``(M, N, C) -> (N, C)`` of each
    member's ``softmax(z_m / τ)`` (the arithmetic mean of the members' predictions, as an ensemble
    predicts; Hinton et al. 2015 §3 average their ensemble's soft targets the same way)."""
    return soft_targets(member_logits, temperature).mean(dim=0)


def distillation_loss(student_logits: torch.Tensor, targets: torch.Tensor, teacher_probabilities: torch.Tensor,
                      weight: float, temperature: float) -> torch.Tensor:
    """``(1 - w) · CE(z, y) + w · τ² · KL(p_T^τ || softmax(z / τ))``, each term the mean over the batch.

    ``student_logits`` ``(B, C)``; ``targets`` ``(B,)``; ``teacher_probabilities`` ``(B, C)``, the
    teacher's soft targets at the same τ (:func:`soft_targets`), a constant (no gradient flows to
    the teacher). ``w = 0`` is the cross-entropy alone and ``w = 1`` the soft term alone; a term
    whose weight is 0 is not computed.
    """
    loss = torch.zeros((), device=student_logits.device)
    if weight < 1:
        loss = (1 - weight) * F.cross_entropy(student_logits, targets)
    if weight > 0:
        log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
        # kl_div(log q, p) = Σ p (log p - log q), with 0 · log 0 = 0 for a teacher certain of a class
        kl = F.kl_div(log_student, teacher_probabilities.detach(), reduction="batchmean")
        loss = loss + weight * temperature ** 2 * kl
    return loss
