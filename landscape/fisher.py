"""Per-sample sharpness: the trace of each sample's Fisher information.

For a sample ``(x_j, y_j)`` with loss ``ℓ_j(θ) = loss_fn(f_θ(x_j), y_j)``, the (empirical) Fisher
information is ``F_j = ∇_θ ℓ_j ∇_θ ℓ_jᵀ``, so

    tr F_j = ‖∇_θ ℓ(f_θ(x_j), y_j)‖²,

which SharpBalance (Wang et al., NeurIPS 2024, §4.3 "Per-data-sample sharpness", following Bottou,
Curtis & Nocedal 2018) uses to rank training samples by how sharp the loss is around each of them.
It is measured in eval mode (BatchNorm on its running statistics, dropout off), without
augmentation, with ``loss_fn`` applied to a one-sample batch.

Two ways to compute it, both exact:

- ``"layerwise"`` (the default wherever it applies): one forward and one backward pass of a whole
  chunk, with the summed per-sample losses differentiated only with respect to each layer's
  *output*. A layer ``y = W a (+ b)`` gets sample ``j``'s weight gradient from its input ``a_j`` and
  output gradient ``δ_j`` alone, so the squared norm follows without a per-sample gradient of the
  whole model ever existing (Goodfellow 2015, "Efficient per-example gradient computations"):

      dense layer, one position:    ‖∇_W ℓ_j‖² = ‖a_j‖² ‖δ_j‖²,   ‖∇_b ℓ_j‖² = ‖δ_j‖²
      T positions (conv, sequence): ‖∇_W ℓ_j‖² = ‖Σ_t δ_jt u_jtᵀ‖² = Σ_{s,t} (δ_js·δ_jt)(u_js·u_jt)

  where ``u_jt`` is the input patch at position ``t``. Per layer the cheaper side is taken: the
  ``(C_out × K)`` per-sample weight gradient of that layer alone (``T·K·C_out`` multiply-adds; for
  a convolution one grouped-convolution weight gradient with a group per sample) or the two
  ``T × T`` Gram matrices (``T²·(K + C_out)``, "ghost norms", Li et al. 2022, from ``F.unfold``
  patches) — the latter wins for deep layers with few positions. Eval-mode batch norm ``y = γ x̂ + β`` gives
  ``∇_γ ℓ_j = Σ_t δ_jt x̂_jt`` and ``∇_β ℓ_j = Σ_t δ_jt`` per channel. It applies when every
  measured parameter is the weight or bias of an ``nn.Linear``, ``nn.Conv2d`` (zero padding) or an
  eval-mode batch norm with running statistics, each called once per forward pass. Layers without
  parameters must treat samples independently, as every standard layer in eval mode does.
- ``"vmap"`` (the fallback for anything else): ``vmap`` over samples of ``grad`` of a
  ``functional_call``, each gradient reduced to its squared norm inside the vmapped function;
  memory is one chunk of per-sample gradients (``chunk_size × D`` numbers).

The layerwise method costs about one forward and backward pass of the chunk, so its ceiling is the
speed of plain batched training; measured speeds against a loop of ``autograd.grad`` over single
samples are in ``benchmarks/README.md`` (``bench_fisher.py``).

Example (least squares, where ``∇_w (wᵀx − y)² = 2(wᵀx − y) x`` is known exactly)::

    >>> import torch
    >>> X = torch.randn(6, 3, dtype=torch.float64); y = torch.randn(6, dtype=torch.float64)
    >>> model = torch.nn.Linear(3, 1, bias=False).double()
    >>> mse = lambda out, target: ((out.squeeze(1) - target) ** 2).mean()
    >>> residual = (X @ model.weight.detach()[0] - y)
    >>> exact = (2 * residual) ** 2 * (X ** 2).sum(1)
    >>> torch.allclose(per_sample_fisher_trace(model, mse, (X, y)), exact)
    True
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from landscape.errors import InputError
from landscape._checks import (Patterns, _deprecated_alias, differentiable_parameters, evaluation_mode,
                               legacy_positionals, positive_int, require_model)
from landscape.hvp import as_batches, move_batch

__all__ = ["per_sample_fisher_trace", "METHODS"]

METHODS = ("auto", "layerwise", "vmap")


@_deprecated_alias(inputs_or_batches="batches")
@legacy_positionals("chunk_size", "params", "method")
def per_sample_fisher_trace(model: torch.nn.Module, loss_fn: Callable, batches, *, params: Patterns = None,
                            exclude: Patterns = None, chunk_size: int | None = 64,
                            method: str = "auto") -> torch.Tensor:
    """``‖∇_θ ℓ(f_θ(x_j), y_j)‖²`` for every sample, shape ``(N,)``, in the order of the data.

    ``batches`` is one ``(inputs, targets)`` pair or an iterable of them (their results are
    concatenated in order). ``loss_fn(outputs, targets)`` is called on a one-sample batch
    (``outputs`` of shape ``(1, ...)``), so any mean-reduced loss gives the per-sample loss. ``θ`` is
    every parameter requiring grad, or those matching the ``params`` globs and no ``exclude`` glob
    (:func:`landscape._checks.select_parameters`). ``chunk_size`` bounds how
    many samples are processed at once (``None``: a whole batch). ``method`` is ``"layerwise"``,
    ``"vmap"`` or ``"auto"`` (layerwise where it applies, see the module docstring). The model's
    own mode is restored afterwards.
    """
    require_model(model)
    chunk_size = positive_int("chunk_size", chunk_size, optional=True)
    if not callable(loss_fn):
        raise InputError(f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}.")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    names, tensors = differentiable_parameters(model, params, exclude)
    dtype, device = tensors[0].dtype, tensors[0].device
    parameters = {name: tensor.detach() for name, tensor in zip(names, tensors)}

    with evaluation_mode(model):
        layers, unsupported = _layers_of(model, names) if method != "vmap" else (None, None)
        if method == "layerwise" and layers is None:
            raise InputError(f"method='layerwise' needs every measured parameter to be the weight or bias of an "
                             f"nn.Linear, nn.Conv2d (zero padding) or eval-mode batch norm; {unsupported} "
                             "is not. Use method='vmap' or 'auto'.")
        if layers is not None:
            chunk_traces = _LayerwiseTraces(model, loss_fn, parameters, layers, may_fall_back=method == "auto")
        else:
            chunk_traces = _vmap_traces(model, loss_fn, parameters)
        traces = []
        for batch in as_batches(batches):
            inputs, targets = move_batch(batch, device, dtype)
            if len(inputs) != len(targets):
                raise InputError(f"a batch has {len(inputs)} inputs but {len(targets)} targets; pair each input with its target.")
            step = chunk_size or max(len(inputs), 1)
            for start in range(0, len(inputs), step):
                traces.append(chunk_traces(inputs[start:start + step], targets[start:start + step]))
    if not traces:
        raise InputError("no samples: pass (inputs, targets) or a non-empty iterable of such pairs.")
    return torch.cat(traces)


# ------------------------------------------------------------------------------------------------
# vmap over samples
# ------------------------------------------------------------------------------------------------

def _vmap_traces(model, loss_fn, parameters) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def sample_loss(parameters, inputs, target):
        outputs = functional_call(model, parameters, (inputs.unsqueeze(0),))
        return loss_fn(outputs, target.unsqueeze(0)).reshape(())

    def squared_gradient_norm(parameters, inputs, target):
        gradient = grad(sample_loss)(parameters, inputs, target)
        return sum(part.pow(2).sum() for part in gradient.values())

    per_sample = vmap(squared_gradient_norm, in_dims=(None, 0, 0))
    return lambda inputs, targets: per_sample(parameters, inputs, targets)


# ------------------------------------------------------------------------------------------------
# Layerwise: per-sample norms from each layer's input and output gradient
# ------------------------------------------------------------------------------------------------

def _is_eval_batch_norm(module: nn.Module) -> bool:
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training
            and module.running_mean is not None and module.running_var is not None)


def _is_supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear) or _is_eval_batch_norm(module):
        return True
    return (isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _owners(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[nn.Module, str]]:
    """For every parameter name, the module that holds it and the attribute it is under."""
    modules = dict(model.named_modules())
    owners = {}
    for name in names:
        path, _, attribute = name.rpartition(".")
        owners[name] = (modules[path], attribute)
    return owners


def _layers_of(model: nn.Module, names: Sequence[str]) -> tuple[dict[str, tuple[str, ...]] | None, str | None]:
    """``({module path: measured attributes}, None)`` when the layerwise method applies, else
    ``(None, the first parameter it does not apply to)``."""
    layers: dict[str, list[str]] = {}
    for name, (module, attribute) in _owners(model, names).items():
        if not (_is_supported(module) and attribute in ("weight", "bias")):
            return None, f"{name!r} ({type(module).__name__})"
        layers.setdefault(name.rpartition(".")[0], []).append(attribute)
    return {path: tuple(attributes) for path, attributes in layers.items()}, None


class _Reused(Exception):
    """A measured layer ran twice in one forward pass (shared weights): the layerwise formulas,
    which see one input and one output per layer, do not apply."""


class _LayerwiseTraces:
    """``(inputs, targets) ↦ ‖∇_θ ℓ_j‖²`` for a chunk, from one forward and one backward pass."""

    def __init__(self, model: nn.Module, loss_fn: Callable, parameters: dict[str, torch.Tensor],
                 layers: dict[str, tuple[str, ...]], may_fall_back: bool):
        self.model, self.loss_fn, self.parameters, self.layers = model, loss_fn, parameters, layers
        self.may_fall_back = may_fall_back
        self.modules = dict(model.named_modules())
        self.fallback = None
        self.per_sample_loss = vmap(lambda outputs, target: loss_fn(outputs.unsqueeze(0), target.unsqueeze(0)).reshape(()))

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.fallback is None:
            try:
                return self._layerwise(inputs, targets)
            except _Reused as reused:
                if not self.may_fall_back:
                    raise InputError(f"method='layerwise' needs each measured layer to run once per forward pass, but "
                                     f"{reused.args[0]!r} ran twice (shared weights); use method='vmap' or 'auto'.") from None
                self.fallback = _vmap_traces(self.model, self.loss_fn, self.parameters)
        return self.fallback(inputs, targets)

    def _layerwise(self, inputs, targets) -> torch.Tensor:
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def record(path):
            def hook(module, arguments, output):
                if path in seen:
                    raise _Reused(path)
                seen[path] = (arguments[0].detach(), output)
            return hook

        # Differentiable views of the measured weights (no copy): the user's requires_grad flags don't matter.
        weights = {name: value.detach().requires_grad_(True) for name, value in self.parameters.items()}
        handles = [self.modules[path].register_forward_hook(record(path)) for path in self.layers]
        try:
            with torch.enable_grad():
                outputs = functional_call(self.model, weights, (inputs,))
                losses = self.per_sample_loss(outputs, targets)
                paths = [path for path in self.layers if path in seen and seen[path][1].requires_grad]
                output_gradients = torch.autograd.grad(losses.sum(), [seen[path][1] for path in paths],
                                                       allow_unused=True) if paths else ()
        finally:
            for handle in handles:
                handle.remove()
        total = torch.zeros(len(inputs), dtype=losses.dtype, device=losses.device)
        for path, gradient in zip(paths, output_gradients):
            if gradient is not None:
                total = total + _squared_norms(self.modules[path], self.layers[path], seen[path][0], gradient)
        return total.detach()


def _squared_norms(module: nn.Module, attributes: tuple[str, ...], inputs: torch.Tensor,
                   output_gradient: torch.Tensor) -> torch.Tensor:
    """``Σ_attributes ‖∇_attribute ℓ_j‖²`` of one layer for every sample ``j``."""
    n = inputs.shape[0]
    if isinstance(module, nn.Linear):
        patches = inputs.reshape(n, -1, inputs.shape[-1])  # (n, T, K): T positions of a sequence
        deltas = output_gradient.reshape(n, -1, output_gradient.shape[-1])  # (n, T, C_out)
        return _dense_norms(patches, deltas, attributes, groups=1)
    if isinstance(module, nn.Conv2d):
        return _convolution_norms(module, attributes, inputs, output_gradient)
    # eval-mode batch norm: y = γ x̂ + β per channel (dimension 1)
    shape = (1, -1) + (1,) * (inputs.dim() - 2)
    total = inputs.new_zeros(n)
    per_channel = output_gradient.reshape(n, output_gradient.shape[1], -1)
    if "weight" in attributes:
        normalized = (inputs - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var.reshape(shape) + module.eps)
        total = total + (per_channel * normalized.reshape(per_channel.shape)).sum(2).pow(2).sum(1)
    if "bias" in attributes:
        total = total + per_channel.sum(2).pow(2).sum(1)
    return total


def _convolution_norms(module: nn.Conv2d, attributes: tuple[str, ...], inputs: torch.Tensor,
                       output_gradient: torch.Tensor) -> torch.Tensor:
    """Squared norms of a 2-d convolution's per-sample weight (and bias) gradients.

    With many output positions the per-sample weight gradients themselves are cheapest: with every
    sample made a group of one grouped convolution, that convolution's weight gradient (one kernel
    call, about as fast as the layer's ordinary weight gradient) is the stack of per-sample
    gradients, faster than unfold + batched matmul (``benchmarks/README.md``, ``bench_fisher.py``)
    and without an unfolded copy of the input. With few positions
    (``T (K + C_out) < K C_out`` per group) the Gram-matrix form of :func:`_dense_norms` is cheaper.
    """
    n, groups = inputs.shape[0], module.groups
    out_channels, in_per_group, height, width = module.weight.shape
    positions = output_gradient.shape[2] * output_gradient.shape[3]
    size, out_per_group = in_per_group * height * width, out_channels // groups
    total = inputs.new_zeros(n)
    if "weight" in attributes and positions * (size + out_per_group) >= size * out_per_group:
        # The weight argument only fixes shapes; a contiguous one keeps oneDNN on its fast path
        # (an expanded zero-stride one made it compile a slow kernel for a second per shape).
        shape_only = inputs.new_zeros(n * out_channels, in_per_group, height, width)
        per_sample = torch.ops.aten.convolution_backward(
            output_gradient.reshape(1, n * out_channels, *output_gradient.shape[2:]),
            inputs.reshape(1, -1, *inputs.shape[2:]), shape_only, None, list(module.stride),
            list(module.padding), list(module.dilation), False, [0, 0], n * groups, [False, True, False])[1]
        total = total + per_sample.reshape(n, -1).pow(2).sum(1)
        attributes = tuple(attribute for attribute in attributes if attribute != "weight")
    if attributes:
        patches = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride) \
            if "weight" in attributes else inputs.new_zeros(n, 0, positions)
        total = total + _dense_norms(patches.transpose(1, 2), output_gradient.flatten(2).transpose(1, 2),
                                     attributes, groups=groups)
    return total


def _dense_norms(patches: torch.Tensor, deltas: torch.Tensor, attributes: tuple[str, ...], groups: int) -> torch.Tensor:
    """Squared norms of ``∇_W ℓ_j = Σ_t δ_jt u_jtᵀ`` (and ``∇_b ℓ_j = Σ_t δ_jt``) for ``patches``
    ``u`` of shape ``(n, T, K)`` and output gradients ``δ`` of shape ``(n, T, C_out)``; a grouped
    layer's channels split into ``groups`` independent blocks."""
    n, positions = patches.shape[0], patches.shape[1]
    total = patches.new_zeros(n)
    if "weight" in attributes:
        u = patches.reshape(n, positions, groups, -1).transpose(1, 2).reshape(n * groups, positions, -1)
        d = deltas.reshape(n, positions, groups, -1).transpose(1, 2).reshape(n * groups, positions, -1)
        k, c = u.shape[2], d.shape[2]
        if positions == 1:
            squared = u.pow(2).sum((1, 2)) * d.pow(2).sum((1, 2))
        elif positions * (k + c) < k * c:  # ghost norms: two T×T Gram matrices
            squared = (torch.bmm(d, d.transpose(1, 2)) * torch.bmm(u, u.transpose(1, 2))).sum((1, 2))
        else:  # the per-sample (C_out × K) gradient of this layer alone
            squared = torch.bmm(d.transpose(1, 2), u).pow(2).sum((1, 2))
        total = total + squared.reshape(n, groups).sum(1)
    if "bias" in attributes:
        total = total + deltas.sum(1).pow(2).sum(1)
    return total
