"""Per-sample sharpness: the trace of each sample's Fisher information.

For a sample ``(x_j, y_j)`` with loss ``ℓ_j(θ) = loss_fn(f_θ(x_j), y_j)``, the (empirical) Fisher
information is ``F_j = ∇_θ ℓ_j ∇_θ ℓ_jᵀ``, so

    tr F_j = ‖∇_θ ℓ(f_θ(x_j), y_j)‖²,

which SharpBalance (Wang et al., NeurIPS 2024, §4.3 "Per-data-sample sharpness", following Bottou,
Curtis & Nocedal 2018) uses to rank training samples by how sharp the loss is around each of them.
It is measured in eval mode (BatchNorm on its running statistics, dropout off), without
augmentation, with ``loss_fn`` applied to a one-sample batch.

All per-sample gradients of a chunk are computed at once with ``torch.func``: ``vmap`` over samples
of ``grad`` of a ``functional_call``, each gradient reduced to its squared norm inside the vmapped
function. Memory is one chunk of per-sample gradients (``chunk_size × D`` numbers); the result is in
the model's dtype and on its device.

Speed (``benchmarks/bench_fisher.py``, 256 samples of 32×32×3, float32, two threads, the shared
2-core CPU when quiet), against a loop of ``autograd.grad`` over single samples: ``small_cnn`` 2.3×
faster with chunks of 64 (1.7× with 256); one full-batch forward and backward pass is only 3.4×
faster than the loop, so no per-sample method can reach 10× on this conv net on a CPU. A
3072-256-10 MLP (789k parameters): 1.4× with chunks of 16, slower than the loop with 64 or more
(each sample's 3 MB gradient no longer stays in cache). Hence the default ``chunk_size=64``. Under
heavy load the loop's many tiny operations wait on thread synchronisation and the ratios grow to
5–7×. Norm tricks that skip per-sample gradients (Goodfellow's ``‖a‖²‖δ‖²`` for dense layers)
would help MLPs most and conv nets little (a conv's per-sample weight gradients cost as much as
its batch gradient); they are not implemented.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call, grad, vmap

from landscape.errors import InputError
from landscape.hvp import as_batches, evaluation_mode, move_batch, selected_parameters

__all__ = ["per_sample_fisher_trace"]


def per_sample_fisher_trace(model: torch.nn.Module, loss_fn: Callable, inputs_or_batches,
                            chunk_size: int | None = 64, params: Sequence[str] | None = None) -> torch.Tensor:
    """``‖∇_θ ℓ(f_θ(x_j), y_j)‖²`` for every sample, shape ``(N,)``, in the order of the data.

    ``inputs_or_batches`` is one ``(inputs, targets)`` pair or an iterable of them (their results are
    concatenated in order). ``loss_fn(outputs, targets)`` is called on a one-sample batch
    (``outputs`` of shape ``(1, ...)``), so any mean-reduced loss gives the per-sample loss. ``θ`` is
    every parameter requiring grad, or the parameters named in ``params``. ``chunk_size`` bounds how
    many per-sample gradients exist at once (``None``: a whole batch). The model's own mode is
    restored afterwards.
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1):
        raise InputError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    if not callable(loss_fn):
        raise InputError(f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}.")
    names, tensors = selected_parameters(model, params)
    dtype, device = tensors[0].dtype, tensors[0].device
    parameters = {name: tensor.detach() for name, tensor in zip(names, tensors)}

    def sample_loss(parameters, inputs, target):
        outputs = functional_call(model, parameters, (inputs.unsqueeze(0),))
        return loss_fn(outputs, target.unsqueeze(0)).reshape(())

    def squared_gradient_norm(parameters, inputs, target):
        gradient = grad(sample_loss)(parameters, inputs, target)
        return sum(part.pow(2).sum() for part in gradient.values())

    per_sample = vmap(squared_gradient_norm, in_dims=(None, 0, 0), chunk_size=chunk_size)
    traces = []
    with evaluation_mode(model):
        for batch in as_batches(inputs_or_batches):
            inputs, targets = move_batch(batch, device, dtype)
            if len(inputs) != len(targets):
                raise InputError(f"a batch has {len(inputs)} inputs but {len(targets)} targets; pair each input with its target.")
            if len(inputs):
                traces.append(per_sample(parameters, inputs, targets))
    if not traces:
        raise InputError("no samples: pass (inputs, targets) or a non-empty iterable of such pairs.")
    return torch.cat(traces)
