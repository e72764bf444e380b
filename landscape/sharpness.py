"""Worst-case and average-case sharpness in weight space (m-sharpness).

Definitions (Andriushchenko et al., "A Modern Look at the Relationship between Sharpness and
Generalization", ICML 2023, eq. 1–2; SharpBalance, Lu et al. NeurIPS 2024, eq. 3, 9, 10). For a
batch ``B`` of ``m`` examples with mean loss ``L_B``:

- worst-case  ``S_max(θ) = max_{‖T⁻¹ε‖_p ≤ ρ} L_B(θ + ε) − L_B(θ)``,
- average-case ``S_avg(θ) = E_ε L_B(θ + ε) − L_B(θ)``, ``ε ~ N(0, ρ²T²)`` (ℓ2) or ``U[−ρT, ρT]``
  (ℓ∞),

with ``T = diag(|θ|)`` (adaptive) or ``T = I`` (standard), ``p ∈ {2, ∞}``. The data is cut into
batches of size ``m``; every batch gets its own perturbation and the result is the mean over
batches, with its standard error. The model is in eval mode throughout: BatchNorm uses its
running statistics, which are shared and never perturbed. All trainable parameters are perturbed
unless ``params``/``exclude`` name globs say otherwise (:func:`landscape._checks.select_parameters`,
the rule of every module here). Adaptive ``T = |θ|`` scales every perturbed parameter, biases and
BatchNorm affine included — the reference sharpness code's rule; official ASAM *training* scales
only parameters named "weight" (:mod:`ensembles.methods.sam`), so the two differ on purpose.

Worst case: the maximum is searched by APGD (Croce & Hein, ICML 2020) in weight space, as in the
reference code of Andriushchenko et al.: step ``η`` starting at ``2ρ``, momentum ``α = 0.75``,

    z      = P(ε_k + η·s(g_k)),      s(g) = T²g/‖Tg‖₂ (ℓ2) or T·sign(g) (ℓ∞),
    ε_k+1  = P(ε_k + α(z − ε_k) + (1 − α)(ε_k − ε_k−1))        (α = 1 at the first step),

``P`` the projection onto the ball in its scaled metric (see :mod:`landscape.perturbation`), and
``η`` halved at the APGD checkpoints (:func:`apgd_checkpoints`) when fewer than 0.75 of the steps
since the last checkpoint improved the best loss, or when the step was not halved last time and
the best loss did not improve; on halving the search returns to the best point, perturbation
*and* momentum *and* gradient. Every evaluated point is feasible, so the result is a lower bound
of the true maximum (up to rounding). Compared with the reference code this fixes: steepest
ascent in the ball's own metric (the reference steps along ``Tg/‖g‖₂`` with the raw gradient's
norm and projects Euclidean-wise, whose fixed points are not the constrained maxima of the
adaptive ℓ2 problem); true APGD momentum; restoring perturbation and momentum on halving;
weights equal to 0 in adaptive mode (a zero-radius coordinate that never moves, never NaN);
working random starts and restarts; no copies of the state dict. ``reference_ascent=True``
reproduces the reference ascent (see :func:`worst_case_sharpness`).

Speed: the ``B`` perturbations of one measurement are one computation. Batches are stacked into
``(B, m, ...)``, a perturbation is ``(B, *parameter.shape)`` per parameter, and the loss and its
gradient for every batch come from ``vmap`` over ``functional_call`` (``vmap(grad)`` for the
ascent); ``chunk_size`` bounds how many batches (or, for the average case, draws) are in flight.

Example — least squares at an exact fit is a quadratic with Hessian ``H = 2XᵀX/m`` and zero
gradient, so the worst case over the adaptive ℓ2 ball is ``ρ²/2 · λmax(THT)``::

    >>> _ = torch.manual_seed(0)
    >>> X = torch.randn(32, 4, dtype=torch.float64); w = torch.randn(4, dtype=torch.float64)
    >>> model = nn.Linear(4, 1, bias=False).double(); model.weight.data = w[None].clone()
    >>> mse = lambda outputs, targets: (outputs.squeeze(-1) - targets).pow(2).mean()
    >>> result = worst_case_sharpness(model, mse, [(X, X @ w)], rho=0.5, init="random")
    >>> T = torch.diag(w.abs()); exact = 0.5 ** 2 / 2 * torch.linalg.eigvalsh(T @ (2 * X.T @ X / 32) @ T)[-1]
    >>> bool(0.98 * exact <= result.value <= exact * (1 + 1e-9))
    True
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, fields
from typing import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from landscape._checks import (Patterns, _deprecated_alias, batch_pair, evaluation_mode, finite_float, legacy_positionals,
                               model_dtype_device, norm_name, patterns, positive_int, require_model,
                               select_parameters)
from landscape.errors import InputError, NonFiniteError
from landscape.hvp import BatchNormAsAffine
from landscape.perturbation import Perturbation, PerturbationBall, batched_where, per_batch, squared_norm

__all__ = [
    "SharpnessResult", "worst_case_sharpness", "average_case_sharpness", "apgd_checkpoints",
    "select_parameters", "normalize_logits", "check_radius",
]

# APGD's constants (Croce & Hein 2020, §3.2), also those of the reference code
_SUCCESS_FRACTION = 0.75
_STEP_REDUCTION = 0.5
# Default bound on B·P, the perturbed weights of all batches in flight: 2^26 (256 MB per copy in
# float32; the ascent keeps about eight copies). A ResNet-18 (11M weights) then runs 6 batches at
# once, a 1M-weight model 64.
_WEIGHTS_IN_FLIGHT = 1 << 26
_LARGE_BATCH = 32


# ------------------------------------------------------------------------------------------------
# The result
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SharpnessResult:
    """One sharpness measurement: the value, its spread over batches, and every setting.

    ``value`` = mean over batches of ``per_batch`` = perturbed loss − clean loss; ``stderr`` =
    ``std(per_batch) / √n_batches`` (NaN for one batch). ``perturbed_loss`` is the mean loss at the
    worst point found (worst case) or over the draws (average case); ``error_increase`` the mean
    increase of the 0-1 error there (NaN when the targets are not class labels).
    """

    value: float
    per_batch: torch.Tensor
    stderr: float
    clean_loss: float
    perturbed_loss: float
    error_increase: float
    # settings
    kind: str  # "worst" or "average"
    rho: float
    norm: str
    adaptive: bool
    m: int
    n_batches: int
    n_perturbed: int  # number of scalar weights perturbed
    params: tuple[str, ...] | None
    exclude: tuple[str, ...] | None
    logit_normalization: bool
    n_iters: int | None = None
    n_restarts: int | None = None
    init: str | None = None
    step_size: float | None = None
    momentum: float | None = None
    reference_ascent: bool | None = None
    n_draws: int | None = None

    _MEASURED = ("value", "per_batch", "stderr", "clean_loss", "perturbed_loss", "error_increase")

    @property
    def worst_loss(self) -> float:
        """Mean loss at the worst point found (worst-case sharpness only)."""
        if self.kind != "worst":
            raise AttributeError("average-case sharpness has no worst point; use perturbed_loss")
        return self.perturbed_loss

    @property
    def include(self) -> tuple[str, ...] | None:
        """Deprecated name of :attr:`params`."""
        warnings.warn("SharpnessResult.include is deprecated; use .params.", DeprecationWarning, stacklevel=2)
        return self.params

    @property
    def n_samples(self) -> int | None:
        """Deprecated name of :attr:`n_draws` (Monte Carlo draws per batch)."""
        warnings.warn("SharpnessResult.n_samples is deprecated; use .n_draws.", DeprecationWarning, stacklevel=2)
        return self.n_draws

    @property
    def metric(self) -> str:
        """The results-table name, e.g. ``sharpness/worst/l2/adaptive``."""
        return f"sharpness/{self.kind}/{self.norm}/{'adaptive' if self.adaptive else 'standard'}"

    def settings(self) -> dict:
        """Every setting that produced the value (those that apply to this kind), for a results row."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in self._MEASURED and getattr(self, f.name) is not None
                or f.name in ("params", "exclude")}


# ------------------------------------------------------------------------------------------------
# Inputs: parameters, batches, model mode
# ------------------------------------------------------------------------------------------------

class _Staged:
    """Stacked batches ``(B, m, ...)`` kept where they came from (the host, for a DataLoader) and
    moved to the model's device one chunk at a time, so only a chunk's batches are ever there."""

    def __init__(self, stacked: torch.Tensor, device: torch.device):
        self.stacked, self.device, self.shape = stacked, device, stacked.shape

    def __getitem__(self, index):
        if isinstance(index, torch.Tensor):
            index = index.to(self.stacked.device)
        return self.stacked[index].to(self.device)


def _stack_batches(batches: Iterable, device: torch.device, dtype: torch.dtype, n_batches: int | None = None
                   ) -> tuple[_Staged, _Staged]:
    """Stack ``(inputs, targets)`` pairs of equal batch size ``m`` into ``(B, m, ...)`` tensors, the
    first ``n_batches`` of them when given (then the iterable must hold that many)."""
    if n_batches is not None:
        batches = itertools.islice(batches, positive_int("n_batches", n_batches))
    inputs, targets = [], []
    for index, batch in enumerate(batches):
        x, y = batch_pair(batch, "batches", index)
        if inputs and (x.shape != inputs[0].shape or y.shape != targets[0].shape):
            raise InputError(f"batch {index} has inputs {tuple(x.shape)} and targets {tuple(y.shape)} but batch 0 has "
                             f"{tuple(inputs[0].shape)} and {tuple(targets[0].shape)}; m-sharpness needs batches of "
                             "one size m (use DataLoader(..., drop_last=True))")
        inputs.append(x)
        targets.append(y)
    if not inputs:
        raise InputError("no batches given; pass at least one (inputs, targets) pair")
    if n_batches is not None and len(inputs) < n_batches:
        raise InputError(f"n_batches={n_batches} but the batches ran out after {len(inputs)}; pass a longer "
                         "iterable (a DataLoader with enough samples) or a smaller n_batches")
    stacked = torch.stack(inputs)
    if stacked.is_floating_point():
        stacked = stacked.to(dtype)  # work in the model's own dtype
    return _Staged(stacked, device), _Staged(torch.stack(targets), device)


def normalize_logits(outputs: torch.Tensor) -> torch.Tensor:
    """Centre the logits and divide by their ℓ2 norm (floored at 1e-10), as in Andriushchenko et al."""
    centred = outputs - outputs.mean(-1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-10)


def _zero_one_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of wrong arg-max predictions; NaN when the targets are not class labels."""
    labels = not targets.is_floating_point() and not targets.is_complex() and targets.dtype != torch.bool
    if labels and outputs.dim() == targets.dim() + 1:
        return (outputs.argmax(-1) != targets).to(outputs.dtype).mean()
    return outputs.new_full((), math.nan)


# ------------------------------------------------------------------------------------------------
# The loss of every batch at its own perturbation, at once
# ------------------------------------------------------------------------------------------------

def _with_batch_axis(result):
    """Give every tensor in a (nested) tuple or dict a leading batch axis of size 1."""
    if isinstance(result, dict):
        return {name: _with_batch_axis(value) for name, value in result.items()}
    if isinstance(result, tuple):
        return tuple(_with_batch_axis(value) for value in result)
    return result.unsqueeze(0)


class _PerturbedLoss:
    """``ε ↦ (L_b(θ + ε_b), error_b)`` for all batches ``b`` at once, and its gradient in ``ε``.

    ``θ`` are the selected parameters (the others and all buffers are the model's own, shared by
    every batch). vmap runs ``functional_call`` once over the stacked batches; a chunk of one
    batch skips vmap and runs the model's own kernels (per-batch weights turn convolutions into
    grouped ones, which only pays off when a batch is small). Under vmap, eval-mode batch norm is
    computed as the affine map it is (:class:`landscape.hvp.BatchNormAsAffine`): vmap's batch-norm
    kernels with per-batch γ, β cost 8-17% of the whole ascent step
    (``benchmarks/bench_sharpness.py``).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, center: dict[str, torch.Tensor], logit_normalization: bool):
        self.model, self.loss_fn, self.center = model, loss_fn, center
        self.logit_normalization = logit_normalization

        def loss(perturbation: Perturbation, inputs: torch.Tensor, targets: torch.Tensor):
            weights = {name: self.center[name] + value for name, value in perturbation.items()}
            outputs = functional_call(self.model, weights, (inputs,))
            if self.logit_normalization:
                outputs = normalize_logits(outputs)
            value = self.loss_fn(outputs, targets)
            return value, (value.detach(), _zero_one_error(outputs.detach(), targets))

        def value(perturbation, inputs, targets):
            return loss(perturbation, inputs, targets)[1]

        def value_and_gradient_of_one(perturbation, inputs, targets):
            # plain autograd: for a single batch it is cheaper than torch.func.grad's wrappers
            with torch.enable_grad():
                leaves = {name: tensor.detach().requires_grad_(True) for name, tensor in perturbation.items()}
                loss_value, aux = loss(leaves, inputs, targets)
                gradients = torch.autograd.grad(loss_value, list(leaves.values())) if leaves else ()
            return dict(zip(leaves, gradients)), aux

        self._one = {"value": value, "value_and_gradient": value_and_gradient_of_one}
        self._all = {"value": vmap(value), "value_and_gradient": vmap(grad(loss, has_aux=True))}
        self._clean = vmap(lambda x, y: value({}, x, y))

    def _call(self, kind: str, perturbation: Perturbation, inputs, targets):
        if inputs.shape[0] > 1:
            with BatchNormAsAffine():
                return self._all[kind](perturbation, inputs, targets)
        result = self._one[kind]({name: value[0] for name, value in perturbation.items()}, inputs[0], targets[0])
        return _with_batch_axis(result)

    def clean(self, inputs, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and error at ``θ`` for every batch (the unperturbed weights need no per-batch copy)."""
        with BatchNormAsAffine():
            return self._clean(inputs, targets)

    def value(self, perturbation, inputs, targets) -> tuple[torch.Tensor, torch.Tensor]:
        return self._call("value", perturbation, inputs, targets)

    def value_and_gradient(self, perturbation, inputs, targets):
        """``(loss, error), gradient`` with the gradient in ``ε`` per batch, ``(B, *parameter.shape)``."""
        gradient, (loss, error) = self._call("value_and_gradient", perturbation, inputs, targets)
        return (loss, error), gradient


def _check_model_output(model, loss_fn, inputs, targets, logit_normalization):
    """One plain forward on the first batch: the loss must be a scalar (the mean over the batch)."""
    outputs = model(inputs[0])
    if logit_normalization:
        outputs = normalize_logits(outputs)
    loss = loss_fn(outputs, targets[0])
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise InputError(f"loss_fn must return the mean loss over the batch (a scalar tensor); it returned "
                         f"{type(loss).__name__} of shape {tuple(getattr(loss, 'shape', ()))} "
                         "(use reduction='mean')")


# ------------------------------------------------------------------------------------------------
# APGD in weight space
# ------------------------------------------------------------------------------------------------

def apgd_checkpoints(n_iters: int) -> list[int]:
    """APGD's step-size checkpoints ``w_j = ⌈p_j · n_iters⌉`` (Croce & Hein 2020, §3.2).

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``, until the
    iterations are used up. For 20 iterations: 5, 9, 12, 15, 16, 18, 19, 20 (the float rounding of
    the ``p_j`` is part of the definition, as in the reference code). The check happens after the
    update of (0-based) iteration ``w_j``.
    """
    fractions, checkpoints = [0.0, 0.22], [0, math.ceil(0.22 * n_iters)]
    while checkpoints[-1] < n_iters and checkpoints[-1] != checkpoints[-2]:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
        checkpoints.append(math.ceil(fractions[-1] * n_iters))
    return checkpoints[1:]


def _reference_step(ball: PerturbationBall, gradient: Perturbation, step_size: torch.Tensor) -> Perturbation:
    """The reference code's step: ``η T·g / (‖g‖₂ + 1e-12)`` (ℓ2; the raw gradient's norm), ``η T·sign(g)``."""
    if ball.norm == "linf":
        return ball.ascent_step(gradient, step_size)
    reference = next(iter(gradient.values()))
    factor = step_size / (squared_norm(gradient, reference).sqrt() + 1e-12)
    return {name: value * per_batch(factor, value) for name, value in ball.stretch(gradient).items()}


def _plus(step: Perturbation, perturbation: Perturbation) -> Perturbation:
    """``ε + step``, written into ``step`` (a fresh tensor of the ascent's own)."""
    return {name: value.add_(perturbation[name]) for name, value in step.items()}


def _ascend(loss: _PerturbedLoss, ball: PerturbationBall, inputs, targets, start: Perturbation,
            n_iters: int, step_size: float, momentum: float, reference: bool, tick: Callable[[], None],
            check: Callable[..., None] = lambda values, at_start=False: None):
    """One APGD run from ``start`` for each batch of the chunk: the best loss, its error, and the
    loss and error at ``start`` (returned so that a zero start gives the clean loss for free).
    ``check(loss, at_start)`` sees every evaluated loss (it refuses non-finite ones, which ``>`` would skip)."""
    batch = inputs.shape[0]
    if n_iters == 0:
        start_loss, start_error = loss.value(start, inputs, targets)
        check(start_loss, True)
        return start_loss, start_error, start_loss, start_error
    (current_loss, current_error), gradient = loss.value_and_gradient(start, inputs, targets)
    check(current_loss, True)
    start_loss, start_error = current_loss, current_error
    perturbation, previous = start, start
    best_loss, best_error = current_loss, current_error
    best, best_previous, best_gradient = perturbation, previous, gradient

    dtype, device = current_loss.dtype, current_loss.device
    step = torch.full((batch,), step_size, dtype=dtype, device=device)
    improvements = torch.zeros(batch, dtype=dtype, device=device)
    halved_last = torch.zeros(batch, dtype=torch.bool, device=device)
    best_at_checkpoint = best_loss
    last_checkpoint = 0
    checkpoints = set(apgd_checkpoints(n_iters))

    for iteration in range(n_iters):
        if reference:
            # the reference: z = P_euclid(ε + η T g/‖g‖), ε_k+1 = α z + (1 − α) ε_k−1
            z = ball.project_euclidean(_plus(_reference_step(ball, gradient, step), perturbation))
            following = {name: z[name].mul(momentum).add_(previous[name], alpha=1 - momentum) for name in z}
        else:
            z = ball.project(_plus(ball.ascent_step(gradient, step), perturbation))
            if iteration == 0 or momentum == 1:
                following = z
            else:  # ε + α(z − ε) + (1 − α)(ε − ε_k−1) = αz + 2(1 − α)ε − (1 − α)ε_k−1
                following = ball.project({
                    name: z[name].mul(momentum).add_(perturbation[name], alpha=2 * (1 - momentum))
                    .sub_(previous[name], alpha=1 - momentum) for name in z})
        previous, perturbation = perturbation, following

        last = iteration == n_iters - 1
        if last:
            current_loss, current_error = loss.value(perturbation, inputs, targets)
        else:
            (current_loss, current_error), gradient = loss.value_and_gradient(perturbation, inputs, targets)
        check(current_loss)
        tick()

        improved = current_loss > best_loss
        improvements = improvements + improved.to(dtype)
        best_loss = torch.where(improved, current_loss, best_loss)
        best_error = torch.where(improved, current_error, best_error)
        if not last:
            best_gradient = batched_where(improved, gradient, best_gradient)
            if not reference:
                best = batched_where(improved, perturbation, best)
                best_previous = batched_where(improved, previous, best_previous)

        if iteration in checkpoints and not last:
            too_few_improvements = improvements < _SUCCESS_FRACTION * (iteration - last_checkpoint)
            stalled = ~halved_last & (best_loss == best_at_checkpoint)
            halve = too_few_improvements | stalled
            halved_last, best_at_checkpoint, last_checkpoint = halve, best_loss, iteration
            improvements = torch.zeros_like(improvements)
            step = torch.where(halve, step * _STEP_REDUCTION, step)
            # back to the best point: the next gradient is the best point's
            gradient = batched_where(halve, best_gradient, gradient)
            if not reference:  # ... and so are the perturbation and its momentum (the reference keeps its own)
                perturbation = batched_where(halve, best, perturbation)
                previous = batched_where(halve, best_previous, previous)
    return best_loss, best_error, start_loss, start_error


# ------------------------------------------------------------------------------------------------
# Public measurements
# ------------------------------------------------------------------------------------------------

def _default_chunk(n_batches: int, selected: dict[str, torch.Tensor], m: int = 1) -> int:
    """All batches at once, unless their perturbed weights would exceed ``_WEIGHTS_IN_FLIGHT``
    (then the fewest equal chunks that fit).

    Batches of ``_LARGE_BATCH`` samples or more go one at a time: such a batch already keeps the
    device busy, and per-batch weights then only cost (measured in ``benchmarks/README.md``,
    ``bench_sharpness.py``). The rule depends on nothing but the sizes, so a measurement does not
    change with the machine's load; it was checked at 1 and 2 threads on a quiet and on a busy
    machine (load average 5-7 on 2 cores, ``OMP_WAIT_POLICY=PASSIVE``, which every command sets).
    """
    if m >= _LARGE_BATCH:
        return 1
    n_perturbed = sum(parameter.numel() for parameter in selected.values())
    largest = max(1, min(n_batches, _WEIGHTS_IN_FLIGHT // max(n_perturbed, 1)))
    # equal chunks: 100 batches that fit 95 at a time run as 50 + 50, not as 95 + a slow 5
    return math.ceil(n_batches / math.ceil(n_batches / largest))


def _check_common(rho, norm, chunk_size):
    """The checked ``(rho, norm, chunk_size)``; the norm in its one spelling."""
    return (finite_float("rho", rho, minimum=0), norm_name(norm),
            positive_int("chunk_size", chunk_size, optional=True))


def check_radius(rho: float, norm: str, kind: str, dtype: torch.dtype) -> None:
    """Refuse a radius a sharpness of this ``kind`` (worst, average) and ``norm`` cannot be computed
    at in ``dtype`` (an :class:`InputError`); callers check before any work."""
    norm = norm_name(norm)
    _check_in_range("rho", rho, dtype, squared=kind == "worst" and norm == "l2")
    if kind == "worst":
        _check_in_range("step_size", 2 * rho, dtype, squared=norm == "l2")  # the default step


def _check_in_range(name: str, value: float, dtype: torch.dtype, squared: bool = False) -> None:
    """Refuse a radius or step the model's dtype cannot hold. ``squared``: the ℓ2 ascent squares
    ``‖T⁻¹(ε + step)‖ ≤ ρ + η``; if that overflows, the projection scales by ρ/inf = 0 and the search
    silently stays at ε = 0 (sharpness 0), so both must stay below √max / 4."""
    largest = torch.finfo(dtype).max
    limit = math.sqrt(largest) / 4 if squared else largest
    if value > limit:
        what = f"the l2 ascent squares it, which overflows {dtype} above {limit:.3g}" if squared \
            else f"the largest {dtype} number is {largest:.3g}"
        raise InputError(f"{name}={value:g} is too large ({what}); "
                         "use a radius a perturbed loss can be computed at (sharpness radii are below 10 or so)")


def _require_finite(loss: torch.Tensor, where: str, batch: int | torch.Tensor, settings: dict) -> None:
    """Refuse a NaN or infinite loss: a comparison would discard it (NaN > x is false) and report 0,
    an average would carry it into the result. ``batch``: the number of the first batch of a chunk,
    or the batch of every entry (the draws of the average case)."""
    bad = ~torch.isfinite(loss)
    if not bad.any():
        return
    batches = sorted(set((batch[bad] if isinstance(batch, torch.Tensor) else bad.nonzero().flatten() + batch).tolist()))
    shown = ("batch " if len(batches) == 1 else "batches ") + ", ".join(map(str, batches[:5])) \
        + (", ..." if len(batches) > 5 else "")
    what = f"{settings['kind']}-case sharpness at rho={settings['rho']:g} ({settings['norm']}, " \
           f"{'adaptive' if settings['adaptive'] else 'standard'})"
    if where == "clean":
        fix = "the loss at the model's own weights is not finite; check the weights and the data for NaN/inf"
    else:
        fix = f"the perturbation overflows {str(loss.dtype).replace('torch.', '')}; use a smaller rho"
    raise NonFiniteError(f"{what}: the {where} loss is {loss[bad][0].item()} on {shown}; {fix}")


def _summarize(per_batch_perturbed, per_batch_clean, per_batch_error_increase, **settings) -> SharpnessResult:
    per_batch_value = per_batch_perturbed - per_batch_clean
    n_batches = per_batch_value.shape[0]
    stderr = (per_batch_value.std() / math.sqrt(n_batches)).item() if n_batches > 1 else math.nan
    return SharpnessResult(
        value=per_batch_value.mean().item(), per_batch=per_batch_value.detach(), stderr=stderr,
        clean_loss=per_batch_clean.mean().item(), perturbed_loss=per_batch_perturbed.mean().item(),
        error_increase=per_batch_error_increase.mean().item(), n_batches=n_batches, **settings)


@_deprecated_alias(include="params")
@legacy_positionals("n_iters", "n_restarts", "init", "step_size", "momentum", "params", "exclude",
                    "logit_normalization", "reference_ascent", "chunk_size", "generator", "progress")
def worst_case_sharpness(model: nn.Module, loss_fn: Callable, batches: Iterable, rho: float, norm: str = "l2",
                         adaptive: bool = True, *, params: Patterns = None, exclude: Patterns = None,
                         n_iters: int = 20, n_restarts: int = 1, init: str = "zero", step_size: float | None = None,
                         momentum: float = 0.75, logit_normalization: bool = False, reference_ascent: bool = False,
                         chunk_size: int | None = None, generator: torch.Generator | None = None,
                         progress: bool = False, n_batches: int | None = None) -> SharpnessResult:
    """Worst-case m-sharpness ``mean_b max_{‖T⁻¹ε_b‖_p ≤ ρ} L_b(θ + ε_b) − L_b(θ)``, by APGD in weights.

    ``batches``: any iterable of ``(inputs, targets)`` (a DataLoader with ``drop_last=True``, a
    list of tuples) with one batch size ``m``: m is the number of samples that share one
    perturbation, so the value is the mean over batches of each batch's own worst-case loss
    increase (m-sharpness, Andriushchenko et al. 2023; small m such as 5 to 128 tracks
    generalization, m = the whole set is the classical sharpness). ``n_batches`` takes only the
    first that many (an endless or long DataLoader is fine). Batches wait on the host and reach
    the model's device one chunk at a time. ``loss_fn(outputs, targets)`` returns the mean loss. ``params`` and ``exclude``
    (name globs, :func:`landscape._checks.select_parameters`) choose the perturbed weights (default:
    every trainable parameter, biases and BatchNorm affine included; ``adaptive`` scales each of them
    by ``|θ|``, the reference code's rule, not official ASAM's "weight"-only one);
    ``norm`` is ``"l2"`` or ``"linf"`` (any case). ``init="zero"`` starts at
    ``ε = 0`` (the reference's start; note that at an exact stationary point the gradient there
    is 0 and the search cannot leave it), ``"random"`` uniformly in the ball; restarts after the
    first always start at random, and the best over restarts counts (the clean loss counts as
    well: ``ε = 0`` is feasible, so the value is never negative). ``step_size`` defaults to
    ``2ρ``; ``momentum`` is APGD's ``α`` (the weight of the new step). ``generator`` (on the
    model's device) drives random starts, whose draws depend on the chunking. ``progress`` shows a
    progress bar.

    ``chunk_size`` batches are searched at once in one vmapped computation; ``None`` means all of
    them unless ``B × (number of perturbed weights)`` exceeds 2^26 (then the fewest equal chunks
    below that). A chunk of 1 runs without vmap. On a CPU, vectorizing pays for small batches (m = 5)
    and costs for large ones (m ≥ 32: use ``chunk_size=1``); see ``benchmarks/bench_sharpness.py``.

    ``reference_ascent=True`` reproduces the ascent of Andriushchenko et al.'s code: step
    ``T·g/(‖g‖₂ + 1e-12)`` (raw gradient norm) or ``T·sign(g)``, Euclidean projection (the
    ellipsoid solved exactly here rather than by their uncapped bisection), "momentum"
    ``ε_k+1 = α z + (1 − α) ε_k−1``, and on halving only the gradient point returns to the best
    point, not the perturbation or momentum. Random starts and restarts (which crash there) use
    this module's uniform start; weights equal to 0 stay fixed instead of producing NaN.

    Cost per restart: ``n_iters`` forward+backward passes and one forward pass of every batch
    (plus one forward for the clean loss with random starts).
    """
    require_model(model)
    rho, norm, chunk_size = _check_common(rho, norm, chunk_size)
    n_iters = positive_int("n_iters", n_iters, minimum=0)
    n_restarts = positive_int("n_restarts", n_restarts)
    if init not in ("zero", "random"):
        raise InputError(f"unknown init {init!r}; choose 'zero' or 'random'")
    if not (0 < momentum <= 1):
        raise InputError(f"momentum (APGD's alpha, the weight of the new step) must be in (0, 1], got {momentum!r}")
    step_size = finite_float("step_size", 2 * rho if step_size is None else step_size, minimum=0)

    dtype, device = model_dtype_device(model, purpose="to perturb")
    _check_in_range("rho", rho, dtype, squared=norm == "l2")
    _check_in_range("step_size", step_size, dtype, squared=norm == "l2")
    selected = select_parameters(model, params, exclude)
    inputs, targets = _stack_batches(batches, device, dtype, n_batches)
    n_batches = inputs.shape[0]
    chunk = chunk_size or _default_chunk(n_batches, selected, m=inputs.shape[1])
    settings = dict(kind="worst", rho=float(rho), norm=norm, adaptive=bool(adaptive), m=int(inputs.shape[1]),
                    n_perturbed=sum(p.numel() for p in selected.values()),
                    params=patterns(params, "params"), exclude=patterns(exclude, "exclude"),
                    logit_normalization=bool(logit_normalization), n_iters=n_iters, n_restarts=n_restarts,
                    init=init, step_size=float(step_size), momentum=float(momentum),
                    reference_ascent=bool(reference_ascent))

    with evaluation_mode(model), torch.no_grad():
        _check_model_output(model, loss_fn, inputs, targets, logit_normalization)
        center = {name: parameter.detach() for name, parameter in selected.items()}
        loss = _PerturbedLoss(model, loss_fn, center, logit_normalization)
        chunks = [slice(start, start + chunk) for start in range(0, n_batches, chunk)]

        clean_loss = torch.empty(n_batches, dtype=dtype, device=device)
        clean_error = torch.empty(n_batches, dtype=dtype, device=device)
        if init == "random" or not selected:
            for part in chunks:
                clean_loss[part], clean_error[part] = loss.clean(inputs[part], targets[part])
                _require_finite(clean_loss[part], "clean", part.start, settings)
        if not selected:  # nothing to perturb: the ball is {0}
            return _summarize(clean_loss, clean_loss, torch.zeros_like(clean_error), **settings)

        ball = PerturbationBall.around(center, rho, norm, adaptive)
        worst_loss = torch.full((n_batches,), -math.inf, dtype=dtype, device=device)
        worst_error = torch.full((n_batches,), math.nan, dtype=dtype, device=device)
        bar = _progress_bar(progress, n_restarts * len(chunks) * n_iters)
        try:
            # restarts outside chunks: the first restart's random draws do not depend on n_restarts
            for restart in range(n_restarts):
                for part in chunks:
                    size = inputs[part].shape[0]
                    if restart == 0 and init == "zero":
                        start = {name: torch.zeros((size, *value.shape), dtype=dtype, device=device)
                                 for name, value in center.items()}
                    else:
                        start = ball.random_point(size, center, generator)
                    def check(values, at_start=False, first=part.start, zero=restart == 0 and init == "zero"):
                        _require_finite(values, "clean" if at_start and zero else "perturbed", first, settings)

                    best_loss, best_error, start_loss, start_error = _ascend(
                        loss, ball, inputs[part], targets[part], start, n_iters, step_size, momentum,
                        reference_ascent, bar.update if bar else lambda: None, check)
                    if restart == 0 and init == "zero":
                        clean_loss[part], clean_error[part] = start_loss, start_error
                    better = best_loss > worst_loss[part]
                    worst_loss[part] = torch.where(better, best_loss, worst_loss[part])
                    worst_error[part] = torch.where(better, best_error, worst_error[part])
        finally:
            if bar:
                bar.close()
        # ε = 0 is feasible: the clean point counts too (matters for random starts only)
        clean_is_worst = clean_loss >= worst_loss
        worst_error = torch.where(clean_is_worst, clean_error, worst_error)
        worst_loss = torch.where(clean_is_worst, clean_loss, worst_loss)
        result = _summarize(worst_loss, clean_loss, worst_error - clean_error, **settings)
    return result


@_deprecated_alias(include="params", n_samples="n_draws")
@legacy_positionals("n_draws", "params", "exclude", "logit_normalization", "chunk_size", "generator")
def average_case_sharpness(model: nn.Module, loss_fn: Callable, batches: Iterable, rho: float, norm: str = "l2",
                           adaptive: bool = True, *, params: Patterns = None, exclude: Patterns = None,
                           n_draws: int = 100, logit_normalization: bool = False, chunk_size: int | None = None,
                           generator: torch.Generator | None = None, n_batches: int | None = None) -> SharpnessResult:
    """Average-case m-sharpness ``mean_b E_ε L_b(θ + ε) − L_b(θ)``, estimated with ``n_draws`` draws per batch.

    ``ε = ρ T z`` with ``z ~ N(0, I)`` (ℓ2, so ``ε ~ N(0, ρ²T²)``) or ``z ~ U[−1, 1]`` (ℓ∞), drawn
    independently for every batch and draw. All ``n_draws × B`` evaluations are vectorized;
    ``chunk_size`` of them run at once (default ``B``, one draw for every batch, bounded as in
    :func:`worst_case_sharpness`). The draws depend on ``generator`` (on the model's device) and
    on ``chunk_size``. Cost: ``n_draws + 1`` forward passes of every batch. ``params``, ``exclude``
    ``norm``, ``n_batches`` and what m means as in :func:`worst_case_sharpness`.
    """
    require_model(model)
    rho, norm, chunk_size = _check_common(rho, norm, chunk_size)
    n_draws = positive_int("n_draws", n_draws)
    dtype, device = model_dtype_device(model, purpose="to perturb")
    _check_in_range("rho", rho, dtype)
    selected = select_parameters(model, params, exclude)
    inputs, targets = _stack_batches(batches, device, dtype, n_batches)
    n_batches = inputs.shape[0]
    chunk = chunk_size or _default_chunk(n_batches, selected)
    settings = dict(kind="average", rho=float(rho), norm=norm, adaptive=bool(adaptive), m=int(inputs.shape[1]),
                    n_perturbed=sum(p.numel() for p in selected.values()),
                    params=patterns(params, "params"), exclude=patterns(exclude, "exclude"),
                    logit_normalization=bool(logit_normalization), n_draws=n_draws)

    with evaluation_mode(model), torch.no_grad():
        _check_model_output(model, loss_fn, inputs, targets, logit_normalization)
        center = {name: parameter.detach() for name, parameter in selected.items()}
        loss = _PerturbedLoss(model, loss_fn, center, logit_normalization)
        clean_loss = torch.empty(n_batches, dtype=dtype, device=device)
        clean_error = torch.empty(n_batches, dtype=dtype, device=device)
        for start in range(0, n_batches, chunk):
            part = slice(start, start + chunk)
            clean_loss[part], clean_error[part] = loss.clean(inputs[part], targets[part])
            _require_finite(clean_loss[part], "clean", start, settings)
        if not selected:
            return _summarize(clean_loss, clean_loss, torch.zeros_like(clean_error), **settings)

        ball = PerturbationBall.around(center, rho, norm, adaptive)
        loss_sum = torch.zeros(n_batches, dtype=dtype, device=device)
        error_sum = torch.zeros(n_batches, dtype=dtype, device=device)
        total = n_draws * n_batches  # evaluation j is draw j // B of batch j % B
        for start in range(0, total, chunk):
            which = torch.arange(start, min(start + chunk, total), device=device) % n_batches
            size = which.shape[0]
            if norm == "l2":
                draws = {name: torch.randn((size, *value.shape), generator=generator, dtype=dtype, device=device)
                         for name, value in center.items()}
            else:
                draws = {name: 2 * torch.rand((size, *value.shape), generator=generator, dtype=dtype, device=device) - 1
                         for name, value in center.items()}
            noise = ball.stretch({name: rho * value for name, value in draws.items()})
            perturbed_loss, perturbed_error = loss.value(noise, inputs[which], targets[which])
            _require_finite(perturbed_loss, "perturbed", which, settings)
            loss_sum.index_add_(0, which, perturbed_loss)
            error_sum.index_add_(0, which, perturbed_error)
        mean_loss, mean_error = loss_sum / n_draws, error_sum / n_draws
        result = _summarize(mean_loss, clean_loss, mean_error - clean_error, **settings)
    return result


def _progress_bar(progress: bool, total: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sharpness ascent", unit="step")
