"""Adversarial robustness of a classifier or an ensemble, measured with AutoAttack.

Robust accuracy at radius ``ε`` in the norm ``‖·‖_p`` (``p ∈ {∞, 2}``) is the fraction of samples
that stay correctly classified under every perturbation the attacks find:
``(1/N) Σ_n 1[f(x_n + δ) = y_n  for all found δ with ‖δ‖_p ≤ ε and x_n + δ ∈ [0, 1]^d]``.
It is an upper bound on the true robust accuracy; AutoAttack (Croce & Hein 2020, "Reliable
evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks") makes it
tight in practice with APGD on the cross-entropy loss (``"apgd-ce"``) and APGD on the targeted
difference-of-logits-ratio loss (``"apgd-t"``); its "standard" version adds FAB-T and Square.

Attacks work in input space ``[0, 1]``, so any normalization belongs inside the model:
:class:`Normalized` wraps one member, :class:`EnsembleClassifier` a whole ensemble, whose output is
the ensemble's log-probabilities (:func:`landscape.ensemble.combine`). Both the cross-entropy and
the DLR loss are unchanged by the per-sample shift from logits to log-probabilities, so attacking
the log-probabilities attacks the ensemble's prediction itself.

Uses ``pyautoattack`` 0.2.0 (fra31's AutoAttack packaged). Four details of that package shape this
module: it works in float32 (so the attack sees float32 inputs and scores, and the model runs in its
own dtype in between); it takes a 3-d batch for one unbatched image (so non-image inputs are
attacked flattened); APGD reseeds torch's global generator (so the caller's generator state is saved
and restored); and targeted attacks index the ``n_target_classes + 1`` top classes, the targeted DLR
loss the 4th largest (so targets are capped at ``C − 1`` and targeted DLR needs ``C ≥ 4`` classes).

Norms are spelled ``"linf"`` and ``"l2"`` as everywhere in ``landscape/`` (AutoAttack's ``"Linf"``
and ``"L2"`` are accepted, in any case); only the call into AutoAttack uses its own spelling.

Example (a linear classifier whose class changes where ``x₀ = 0.5``, so a sample is robust at
radius ``ε`` in l∞ exactly when ``|x₀ − 0.5| > ε``)::

    >>> import torch
    >>> model = torch.nn.Linear(2, 2).double()
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])), model.bias.copy_(torch.tensor([-0.5, 0.5]))
    >>> X = torch.tensor([[0.6, 0.5], [0.9, 0.5], [0.1, 0.5], [0.45, 0.5]], dtype=torch.float64)
    >>> result = robust_accuracy(model, X, torch.tensor([0, 0, 1, 1]), eps=0.2, norm="linf",
    ...                          attacks=("apgd-ce",), iterations=10)
    >>> result.clean_accuracy, result.robust_accuracy, result.robust.tolist()
    (1.0, 0.5, [False, True, True, False])
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from landscape.ensemble import _combine_log_probabilities
from landscape._checks import (evaluation_mode, finite_float, frozen_parameters, model_dtype_device, norm_name,
                               positive_int, require_model)
from landscape.errors import InputError

__all__ = ["EnsembleClassifier", "Normalized", "RobustnessResult", "check_attacks", "check_radius", "robust_accuracy"]

Norm = Literal["linf", "l2"]
# AutoAttack's spelling of our norms
AUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2"}
ATTACKS = ("apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square")
DEFAULT_ATTACKS = ("apgd-ce", "apgd-t")
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
# Fewest classes each attack's loss can be computed for (DLR needs the 3rd, targeted DLR the 4th
# largest logit; targeted attacks need a class to target).
MINIMUM_CLASSES = {"apgd-ce": 2, "apgd-dlr": 3, "apgd-t": 4, "fab": 2, "fab-t": 2, "square": 2}


def _channel_statistic(values, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-channel ``mean``/``std`` as a tensor broadcastable against ``(N, channels, H, W)``."""
    statistic = torch.as_tensor(values, dtype=dtype, device=device)
    if statistic.dim() == 1:
        statistic = statistic.view(-1, 1, 1)
    if not torch.isfinite(statistic).all():
        raise InputError(f"normalization {name} contains NaN or Inf; pass finite per-channel values.")
    return statistic


def _normalization_buffers(module: nn.Module, model: nn.Module, mean, std) -> None:
    if (mean is None) != (std is None):
        raise InputError("pass both mean and std for the input normalization, or neither.")
    if mean is None:
        module.mean = module.std = None
        return
    dtype, device = model_dtype_device(model)
    module.register_buffer("mean", _channel_statistic(mean, "mean", dtype, device))
    module.register_buffer("std", _channel_statistic(std, "std", dtype, device))
    if (module.std <= 0).any():
        raise InputError("normalization std must be positive in every channel.")


def _normalize(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    return inputs if module.mean is None else (inputs - module.mean) / module.std


class Normalized(nn.Module):
    """``x ↦ model((x − mean) / std)``: a model trained on normalized inputs, seen from ``[0, 1]``.

    ``mean`` and ``std`` are per-channel sequences (viewed as ``(channels, 1, 1)`` for inputs
    ``(N, channels, H, W)``) or tensors broadcastable against one input.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] | torch.Tensor,
                 std: Sequence[float] | torch.Tensor):
        super().__init__()
        self.model = model
        _normalization_buffers(self, model, mean, std)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(_normalize(self, inputs))


class EnsembleClassifier(nn.Module):
    """An ensemble as one differentiable classifier: ``x ↦ combine([f_1(x̃), …, f_M(x̃)])`` with
    ``x̃ = (x − mean)/std`` (if given), returning the ensemble's log-probabilities ``(N, C)``.

    ``combine="probs"``: ``log (1/M) Σ_i softmax(f_i)``; ``combine="logits"``: ``log_softmax((1/M) Σ_i f_i)``.
    Majority vote has no gradient, so it is not offered. Members run one after another, which allows
    members of different architectures.
    """

    def __init__(self, members: Sequence[nn.Module], combine: Literal["probs", "logits"] = "probs",
                 mean: Sequence[float] | torch.Tensor | None = None,
                 std: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        if combine not in ("probs", "logits"):
            raise InputError(f"combine must be 'probs' or 'logits' for an attacked ensemble, got {combine!r} "
                             "(a majority vote has no gradient to attack).")
        members = list(members)
        if not members or not all(isinstance(member, nn.Module) for member in members):
            raise InputError("members must be a non-empty sequence of torch.nn.Module.")
        self.members = nn.ModuleList(members)
        self.combine = combine
        _normalization_buffers(self, members[0], mean, std)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        normalized = _normalize(self, inputs)
        member_logits = torch.stack([member(normalized) for member in self.members])
        return _combine_log_probabilities(member_logits, self.combine)


class _AttackView(nn.Module):
    """The model as AutoAttack needs to see it. AutoAttack works in float32 throughout (APGD casts
    its inputs, FAB mixes the logits with float32 buffers), so the model runs in its own dtype on
    inputs cast to it and hands back float32 scores. AutoAttack treats 3-d batches as one unbatched
    image, so non-image inputs are attacked as ``(N, 1, 1, d)`` and reshaped back here (the l∞ and
    l2 norms do not depend on the shape)."""

    def __init__(self, model: nn.Module, sample_shape: torch.Size):
        super().__init__()
        self.model = model
        self.sample_shape = sample_shape
        self.dtype, _ = model_dtype_device(model)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs.reshape(-1, *self.sample_shape).to(self.dtype)).float()


def _as_images(inputs: torch.Tensor) -> torch.Tensor:
    return inputs if inputs.dim() == 4 else inputs.reshape(inputs.shape[0], 1, 1, -1)


@dataclass(frozen=True)
class RobustnessResult:
    """Clean and robust accuracy, the per-sample masks behind them, and the attack settings.

    ``robust[n]`` is True when sample ``n`` is correctly classified and no attack changed that;
    ``robust`` implies ``clean``. ``iterations``, ``restarts`` and ``target_classes`` describe the
    APGD attacks.
    """

    clean_accuracy: float
    robust_accuracy: float
    clean: torch.Tensor
    robust: torch.Tensor
    norm: str
    eps: float
    attacks: tuple[str, ...]
    version: str
    seed: int
    iterations: int
    restarts: int
    target_classes: int


def _validate_inputs(inputs: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise InputError("inputs must be a floating-point torch.Tensor of shape (N, ...) with values in [0, 1].")
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        raise InputError(f"inputs have shape {tuple(inputs.shape)} but must be (N, ...) with N ≥ 1 samples.")
    if not torch.isfinite(inputs).all():
        raise InputError("inputs contain NaN or Inf; pass finite inputs in [0, 1].")
    if inputs.min() < 0 or inputs.max() > 1:
        raise InputError(f"inputs must lie in [0, 1] (found [{float(inputs.min()):.4g}, {float(inputs.max()):.4g}]); "
                         "pass unnormalized inputs and put the normalization inside the model "
                         "(landscape.robustness.Normalized or EnsembleClassifier(mean=..., std=...)).")
    if not isinstance(labels, torch.Tensor) or labels.shape != (inputs.shape[0],):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise InputError(f"labels have shape {shape} but must be ({inputs.shape[0]},), one class per input.")


def _validate_labels(labels: torch.Tensor, n_classes: int) -> None:
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels have dtype {labels.dtype} but must hold integer class indices; convert with .long().")
    if (labels < 0).any() or (labels >= n_classes).any():
        raise InputError(f"labels must lie in [0, {n_classes}) for the model's {n_classes} classes, found "
                         f"min {int(labels.min())} and max {int(labels.max())}; check the label mapping.")


def check_radius(norm: str, eps: float, input_size: int | None = None) -> None:
    """Reject a radius that is not a threat model in input space ``[0, 1]^d``.

    The input box has l∞ diameter 1 and l2 diameter ``√d``: an l∞ ball with ``ε ≥ 1`` (or an l2
    ball with ``ε ≥ √d``) around any input covers the whole box, so every input may become every
    other and robust accuracy measures nothing. ``ε`` equal to the diameter is still accepted; above
    it is a unit mistake (pixels in 0..255, not in [0, 1]). ``input_size`` is ``d = C·H·W``, when known.
    """
    norm = norm_name(norm)
    eps = finite_float("eps", eps, minimum=0, exclusive=True)
    hint = f"; did you mean {eps:g}/255 = {eps / 255:.4g}?" if eps <= 255 else ""
    if norm == "linf" and eps > 1:
        raise InputError(f"eps {eps:g} is larger than 1, the whole [0, 1] range of an input: an l∞ ball that big "
                         f"lets the attack set every pixel to any value. eps is in [0, 1] input units, e.g. "
                         f"8/255 = 0.0314{hint}")
    if norm == "l2" and input_size is not None and eps > input_size ** 0.5:
        raise InputError(f"eps {eps:g} is larger than {input_size ** 0.5:.4g} = √{input_size}, the l2 diameter "
                         f"of the input box [0, 1]^{input_size}: the ball covers every input. l2 radii are in [0, 1] "
                         f"input units, typically 0.5 for CIFAR-10{hint}")


def check_attacks(attacks: Sequence[str]) -> None:
    """Reject attack names AutoAttack does not know (``ATTACKS``), an empty choice, or a bare string."""
    choices = ", ".join(ATTACKS)
    if isinstance(attacks, str):
        raise InputError(f"attacks must be a sequence of names such as ({attacks!r},), not the string {attacks!r}.")
    if not attacks:
        raise InputError(f"no attacks named; choose from {choices} (the default attacks are "
                         f"{','.join(DEFAULT_ATTACKS)}).")
    for attack in attacks:
        if attack not in ATTACKS:
            raise InputError(f"unknown attack {attack!r}; choose from {choices} (the default attacks are "
                             f"{','.join(DEFAULT_ATTACKS)}).")


def _validate_settings(norm: str, eps: float, batch_size: int, version: str, attacks, iterations, restarts,
                       target_classes, seed) -> None:
    check_radius(norm, eps)
    positive_int("batch_size", batch_size)
    if version not in ("custom", "standard"):
        raise InputError(f"version must be 'custom' or 'standard', got {version!r}.")
    if version == "standard" and any(option is not None for option in (attacks, iterations, restarts, target_classes)):
        raise InputError("version='standard' fixes the attacks and their settings; leave attacks, iterations, "
                         "restarts and target_classes unset, or use version='custom'.")
    if attacks is not None:
        check_attacks(attacks)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}.")
    for name, value in (("iterations", iterations), ("restarts", restarts), ("target_classes", target_classes)):
        positive_int(name, value, optional=True)


@contextlib.contextmanager
def _prepared_for_attack(model: nn.Module):
    """Eval mode (batch norm on running statistics, no dropout) and no parameter gradients, both
    restored afterwards: the attack differentiates with respect to the inputs only."""
    with evaluation_mode(model), frozen_parameters(model):
        yield


@torch.no_grad()
def _predict(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.cat([model(batch.to(device)).argmax(dim=-1).to(inputs.device)
                      for batch in inputs.split(batch_size)])


def _count_classes(attacked: nn.Module, inputs: torch.Tensor, device: torch.device) -> int:
    with torch.no_grad():
        probe = attacked(_as_images(inputs[:1]).to(device))
    if probe.dim() != 2:
        raise InputError(f"the model returns shape {tuple(probe.shape)} for one input but must return (1, C) "
                         "class scores.")
    return probe.shape[-1]


def _adversary(attacked: nn.Module, *, attacks: tuple[str, ...], version: str, norm: str, eps: float, seed: int,
               iterations: int, restarts: int, target_classes: int, device: torch.device):
    """AutoAttack with our APGD settings (custom version) and targets capped at ``C − 1``."""
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    norm = AUTOATTACK_NORMS[norm]
    adversary = AutoAttack(attacked, attacks=None if version == "standard" else list(attacks), device=device,
                           eps=eps, norm=norm, seed=seed, version=version)
    if version == "custom":
        # AutoAttack derives APGD's step-size checkpoints from n_iter in the constructor, so a
        # different number of iterations needs new attack objects rather than a changed attribute.
        adversary.apgd = APGDAttack(attacked, n_iter=iterations, norm=norm, n_restarts=restarts, eps=eps,
                                    seed=seed, device=device, logger=adversary.logger)
        adversary.apgd_targeted = APGDAttack_targeted(attacked, n_iter=iterations, norm=norm, n_restarts=restarts,
                                                      eps=eps, seed=seed, device=device, logger=adversary.logger)
    adversary.apgd_targeted.n_target_classes = target_classes
    adversary.fab.n_target_classes = target_classes
    return adversary


def _adversarial_predictions(adversary, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                             device: torch.device) -> torch.Tensor:
    """The model's predictions on AutoAttack's adversarial examples (the clean input where no attack
    succeeded), leaving torch's random state and any running tracer as they were."""
    tracer = sys.gettrace()   # AutoAttack's dynamic-defence check ends with sys.settrace(None)
    try:
        # APGD reseeds torch's global generator.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            # AutoAttack writes float32 adversarial examples into a copy of its inputs: give it float32.
            _, predictions = adversary.run_standard_evaluation(images.float(), labels, batch_size=batch_size)
    finally:
        sys.settrace(tracer)
    return predictions


def robust_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float,
                    norm: Norm = "linf", attacks: Sequence[str] | None = None, batch_size: int = 250,
                    seed: int = 0, version: Literal["custom", "standard"] = "custom",
                    iterations: int | None = None, restarts: int | None = None,
                    target_classes: int | None = None) -> RobustnessResult:
    """Clean and robust accuracy of ``model`` on ``inputs`` in ``[0, 1]`` under AutoAttack at radius ``eps``.

    ``version="custom"`` runs ``attacks`` (default ``("apgd-ce", "apgd-t")``) with ``iterations``
    APGD steps (default 100), ``restarts`` random starts (default 1) and ``target_classes`` targets
    for the targeted attacks (default 9, capped at ``C − 1``); FAB and Square keep AutoAttack's
    settings. ``version="standard"`` is AutoAttack's standard evaluation (APGD-CE, APGD-T, FAB-T,
    Square; 100 iterations, 9 targets capped at ``C − 1``). ``norm`` is ``"linf"`` or ``"l2"`` (any
    case; stored as spelled here). ``eps`` must lie within the diameter of the
    input box (:func:`check_radius`: 1 for l∞, ``√d`` for l2). The model runs in eval mode on its own
    device and dtype; torch's global random state is left as it was.
    """
    require_model(model)
    _validate_inputs(inputs, labels)
    norm = norm_name(norm)
    _validate_settings(norm, eps, batch_size, version, attacks, iterations, restarts, target_classes, seed)
    check_radius(norm, eps, inputs[0].numel())  # the l2 bound needs d = C·H·W
    chosen = STANDARD_ATTACKS if version == "standard" else tuple(attacks or DEFAULT_ATTACKS)
    if "square" in chosen and inputs.dim() != 4:
        raise InputError(f"the Square attack needs image inputs (N, channels, height, width), got shape "
                         f"{tuple(inputs.shape)}; choose attacks without 'square' (version='custom').")
    labels = labels.to(inputs.device)
    _, device = model_dtype_device(model)
    attacked = _AttackView(model, inputs.shape[1:])
    images = _as_images(inputs)
    with _prepared_for_attack(model):
        n_classes = _count_classes(attacked, inputs, device)
        _validate_labels(labels, n_classes)
        too_few = [attack for attack in chosen if n_classes < MINIMUM_CLASSES[attack]]
        if too_few:
            raise InputError(f"attacks {too_few} need at least {max(MINIMUM_CLASSES[a] for a in too_few)} classes "
                             f"but the model has {n_classes}; use attacks=('apgd-ce',) with version='custom'.")
        iterations, restarts = iterations or 100, restarts or 1
        target_classes = min(target_classes or 9, n_classes - 1)
        adversary = _adversary(attacked, attacks=chosen, version=version, norm=norm, eps=float(eps), seed=seed,
                               iterations=iterations, restarts=restarts, target_classes=target_classes,
                               device=device)
        clean = _predict(attacked, images, batch_size, device) == labels
        adversarial = _adversarial_predictions(adversary, images, labels, batch_size, device)
    # "& clean": a point that only float32 rounding of the inputs misclassifies is not robust either.
    robust = (adversarial == labels) & clean
    return RobustnessResult(
        clean_accuracy=clean.double().mean().item(), robust_accuracy=robust.double().mean().item(),
        clean=clean, robust=robust, norm=norm, eps=float(eps), attacks=chosen, version=version, seed=seed,
        iterations=iterations, restarts=restarts, target_classes=target_classes)
