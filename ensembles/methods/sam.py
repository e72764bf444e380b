"""Sharpness-aware minimization (SAM) and its adaptive variant (ASAM), around any base optimizer.

SAM (Foret et al., ICLR 2021) minimizes ``max_{‖ε‖₂ ≤ ρ} L(θ + ε)`` with one ascent step:

    ε̂ = ρ · g / ‖g‖₂,            g = ∇L(θ)            (first_step: climb to θ + ε̂)
    θ ← base_step(θ, ∇L(θ + ε̂))                        (second_step: return to θ and step)

ASAM (Kwon et al., ICML 2021) measures the neighbourhood in the weights' own scale,
``‖T⁻¹ε‖₂ ≤ ρ`` with ``T = diag(t)``, which gives

    ε̂ = ρ · T² g / ‖T g‖₂.

Which parameters ``T`` scales is ``scaled``: the official ASAM scales only the parameters whose
name contains ``"weight"`` (``t = |θ| + η`` there) and leaves biases and batch-norm shifts
unscaled (``t = 1``), so for weights ``ε̂_w = ρ (|θ_w| + η)² g_w / N`` and for the rest
``ε̂_b = ρ g_b / N`` with ``N = sqrt(Σ_w ‖(|θ_w| + η) g_w‖² + Σ_b ‖g_b‖²)``. That is the default of
ASAM training (``asam_scale="weights"``, :func:`asam_scaled_parameters`); ``asam_scale="all"``
scales every parameter. (Adaptive sharpness *measurement*, :mod:`landscape.sharpness`, follows the
reference sharpness code instead: ``T = |θ|`` on every trainable parameter unless excluded.)

The norm is global, over every parameter that has a gradient. ``ρ = 0`` is exactly the base
optimizer: :attr:`SAM.perturbs` is False and the caller skips the ascent and its second
forward-backward pass (:func:`ensembles.methods.sharpbalance.training_step` does), so the trajectory is
the base optimizer's bit for bit.

The base point θ is kept as a copy and restored by assignment, not by subtracting ε̂, so
returning is exact. BatchNorm running statistics should not see the perturbed forward pass (the
statistics are of the model at θ): wrap it in :func:`frozen_batch_norm_statistics`.

Mixed precision: with a gradient scaler the gradients are ``S·g``; ε̂ is invariant to ``S``, so
first_step needs no unscaling; a non-finite gradient norm (an overflow the scaler will skip)
gives ε̂ = 0. second_step hands the base optimizer to ``scaler.step``. Checked on the CPU with
``torch.amp.GradScaler("cpu")`` and bfloat16 autocast; CUDA AMP is unverified here.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from landscape.errors import InputError

__all__ = ["ASAM_SCALES", "SAM", "asam_scaled_parameters", "frozen_batch_norm_statistics"]

#: Which parameters ASAM's ``T = |θ| + η`` scales: "weights" (official ASAM: names containing
#: "weight"; biases and batch-norm shifts get T = 1) or "all".
ASAM_SCALES = ("weights", "all")


def asam_scaled_parameters(model: nn.Module, rule: str = "weights") -> list[nn.Parameter]:
    """The parameters of ``model`` that ASAM's ``T`` scales under ``rule`` (see :data:`ASAM_SCALES`)."""
    if rule not in ASAM_SCALES:
        raise InputError(f"unknown ASAM scaling {rule!r}; choose one of {', '.join(ASAM_SCALES)}")
    return [p for name, p in model.named_parameters() if rule == "all" or "weight" in name]


class SAM:
    """SAM (``adaptive=False``) or ASAM (``adaptive=True``) around ``base_optimizer``.

    Shares the base optimizer's ``param_groups`` (a learning-rate change on either is seen by
    both); its ``state_dict`` is the base optimizer's, since between steps SAM stores nothing.
    ``eta`` is ASAM's η in ``T = |θ| + η`` (0.01 as in Kwon et al.). ``scaled`` (ASAM only) are
    the parameters ``T`` scales, the others get ``T = 1``; None scales every parameter. Official
    ASAM: ``scaled=asam_scaled_parameters(model, "weights")``.
    """

    def __init__(self, base_optimizer: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False,
                 eta: float = 0.01, scaled: "Iterable[torch.Tensor] | None" = None):
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise InputError(f"SAM wraps a torch.optim.Optimizer, got {type(base_optimizer).__name__}")
        if not rho >= 0:
            raise InputError(f"rho must be >= 0, got {rho!r}")
        if not eta >= 0:
            raise InputError(f"eta must be >= 0, got {eta!r}")
        self.base_optimizer = base_optimizer
        if scaled is not None and not adaptive:
            raise InputError("scaled chooses the parameters ASAM's T scales; it needs adaptive=True")
        self.rho, self.adaptive, self.eta = float(rho), bool(adaptive), float(eta)
        # Keyed by identity: tensors compare elementwise, so a set of them would not work.
        self._scaled = None if scaled is None else {id(p) for p in scaled}
        self._origin: dict[torch.Tensor, torch.Tensor] = {}

    @property
    def param_groups(self):
        return self.base_optimizer.param_groups

    @property
    def perturbs(self) -> bool:
        """Whether a step climbs at all (ρ > 0); with ρ = 0 SAM is its base optimizer."""
        return self.rho > 0

    def _parameters_with_gradient(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def _scale(self, parameter: torch.Tensor) -> torch.Tensor | float:
        """ASAM's ``T = |θ| + η`` on the scaled parameters, 1 elsewhere and for plain SAM."""
        if not self.adaptive or (self._scaled is not None and id(parameter) not in self._scaled):
            return 1.0
        return parameter.abs() + self.eta

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """Climb to ``θ + ε̂`` with ``ε̂ = ρ T² g / ‖T g‖`` (``T = I`` for SAM); keep θ to return to."""
        if self._origin:
            raise RuntimeError("first_step twice without second_step (or restore) in between")
        parameters = self._parameters_with_gradient()
        if not parameters:
            return
        scaled = [self._scale(p) * p.grad for p in parameters]  # T g
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
        finite = bool(torch.isfinite(norm)) and float(norm) > 0
        for parameter, scaled_gradient in zip(parameters, scaled):
            self._origin[parameter] = parameter.detach().clone()
            if finite and self.perturbs:
                # ε̂ = ρ · T (T g) / ‖T g‖
                epsilon = self._scale(parameter) * scaled_gradient * (self.rho / norm).to(parameter.dtype)
                parameter.add_(epsilon)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Return to θ exactly (the gradients, taken at θ + ε̂, stay)."""
        for parameter, origin in self._origin.items():
            parameter.copy_(origin)
        self._origin.clear()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True, scaler: "torch.amp.GradScaler | None" = None) -> None:
        """Return to θ and let the base optimizer step with the gradient taken at ``θ + ε̂``."""
        self.restore()
        self.base_step(scaler)
        if zero_grad:
            self.zero_grad()

    def base_step(self, scaler: "torch.amp.GradScaler | None" = None) -> None:
        """The base optimizer's step (through ``scaler`` when given: it unscales and skips overflows)."""
        if scaler is None:
            self.base_optimizer.step()
        else:
            scaler.step(self.base_optimizer)
            scaler.update()

    def step(self, closure) -> torch.Tensor:
        """A whole SAM step. ``closure`` zeroes nothing, runs forward and backward, returns the loss;
        it is called twice (at θ, then at θ + ε̂) unless ρ = 0."""
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        if not self.perturbs:
            self.base_step()
            return loss
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step(zero_grad=False)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base_optimizer.load_state_dict(state)

    def __repr__(self) -> str:
        kind = "ASAM" if self.adaptive else "SAM"
        extra = f", eta={self.eta}" if self.adaptive else ""
        if self.adaptive and self._scaled is not None:
            extra += f", scaled={len(self._scaled)} tensors"
        return f"{kind}(rho={self.rho}{extra}, base={type(self.base_optimizer).__name__})"


_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def frozen_batch_norm_statistics(model: nn.Module, frozen: bool = True) -> Iterator[None]:
    """Within the block, training-mode BatchNorm normalizes by the batch's statistics but leaves
    its running mean, variance and batch counter untouched (``track_running_stats`` off).

    SAM's perturbed pass evaluates the loss at θ + ε̂; its statistics are not those of the model
    being trained (θ), so they must not enter the running averages. ``frozen=False`` does nothing
    (what SharpBalance's released code does).
    """
    changed = []
    if frozen:
        for module in model.modules():
            if isinstance(module, _BATCH_NORMS) and module.track_running_stats:
                module.track_running_stats = False
                changed.append(module)
    try:
        yield
    finally:
        for module in changed:
            module.track_running_stats = True
