"""Hessian-vector products of a model's loss over a stream of batches.

The operator is the Hessian of the full-data loss with respect to the chosen parameters θ,

    H = Σ_b (n_b / N) ∇²_θ L_b(θ),        N = Σ_b n_b,

where ``L_b = loss_fn(model(x_b), y_b)`` is the mean loss of batch ``b`` and ``n_b`` its size: the
average of the per-batch Hessians weighted by batch size, which for a mean-reduced loss is the
Hessian of the mean loss over all the data. Vectors are flat: a row of length ``D`` (the number of
chosen parameters) concatenates the flattened parameter tensors in the order of ``names``.

How a product is computed (reverse over reverse on a retained graph). For each batch the gradient
``g_b = ∇_θ L_b`` is built once with ``create_graph=True``; then ``H_b v = ∇_θ (g_b · v)`` is one
more backward pass through that graph, repeated for every probe with ``retain_graph=True``. A
block of ``k`` probes goes through the batch before the next batch is touched, so each batch's
forward and first backward pass is paid once per *pass* over the data, not once per probe (which
is what PyHessian's dataloader mode pays). Blocks of more than one probe are pushed through the
graph together with ``torch.autograd.grad(..., is_grads_batched=True)`` (a vmap over the second
backward pass) in chunks of ``probe_chunk_size``.

The default is reverse over reverse, one probe at a time: the least work, and the only path that
can keep a graph between Lanczos steps. Keeping the graph saves one forward and one first backward
pass per probe and batch; an exact product costs about two gradients (Pearlmutter's R-operator),
so against a fresh graph per probe the gain is at most ``(G + 2G) / 2G = 1.5`` with equally
efficient products, and the rest comes from the rewrites below. The alternatives that were timed
(vmapped probes, forward over reverse, Taylor mode, PyHessian, curvlinops) and the measured ratios
are in ``benchmarks/README.md`` under ``bench_hessian.py`` and ``bench_taylor.py``.

Rewrites while the graph is built (the same function, so the same Hessian; tests compare with
torch.func's dense Hessian):

- batch norm in eval mode is differentiated as the affine map it is (:class:`BatchNormAsAffine`):
  PyTorch's batch-norm double backward follows the training-mode formula;
- ReLU and max pooling use their activation pattern as a constant (:class:`PiecewiseLinearAsMasked`):
  PyTorch's double backward otherwise builds activation-sized zeros for their second derivative.

Memory. A pass keeps one batch's graph alive at a time. Lanczos needs one pass per product; with
``keep_graphs=True`` every batch's graph is kept between passes (memory: all batches' activations
at once) and later passes skip the forward and first backward pass entirely. With the default
``keep_graphs=None`` the graph is kept only when there is exactly one batch.

Batches. ``batches`` is an iterable of ``(inputs, targets)`` pairs, or a single such pair. A one-shot
iterator (a generator) is read into a list, because Lanczos passes over the data many times; a
re-iterable (a list, a ``DataLoader``) is iterated once per pass and must yield the same data
each time (shuffling is harmless, random augmentation is not). Floating inputs and targets are
moved to the model's device and dtype, other tensors to its device.

Example (a quadratic loss, whose Hessian ``2XᵀX/n`` is known exactly)::

    >>> import torch
    >>> X = torch.randn(16, 3, dtype=torch.float64); y = torch.randn(16, dtype=torch.float64)
    >>> model = torch.nn.Linear(3, 1, bias=False).double()
    >>> mse = lambda out, target: ((out.squeeze(1) - target) ** 2).mean()
    >>> H = LossHessian(model, mse, [(X[:8], y[:8]), (X[8:], y[8:])])
    >>> torch.allclose(H.matmat(torch.eye(3, dtype=torch.float64)), 2 * X.T @ X / 16)
    True
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from landscape._checks import Patterns, batch_pair, differentiable_parameters, positive_int, require_model
from landscape.errors import InputError

__all__ = [
    "BatchNormAsAffine",
    "LossHessian",
    "PiecewiseLinearAsMasked",
    "as_batches",
    "rademacher_rows",
    "seed_from",
]

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def as_batches(batches) -> Iterable:
    """``batches`` as something that can be iterated once per pass: a single ``(inputs, targets)``
    pair becomes a one-element list, a one-shot iterator is read into a list."""
    if isinstance(batches, (tuple, list)) and len(batches) == 2 and all(
            isinstance(item, torch.Tensor) for item in batches):
        return [tuple(batches)]
    if isinstance(batches, torch.Tensor):
        raise InputError("batches is a single tensor; pass (inputs, targets) or an iterable of such pairs.")
    try:
        iterator = iter(batches)
    except TypeError:
        raise InputError(f"batches must be an iterable of (inputs, targets) pairs, got {type(batches).__name__}.") from None
    return list(iterator) if iterator is batches else batches


def move_batch(batch, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Check that ``batch`` is an ``(inputs, targets)`` pair and move it to the model: floating
    tensors to ``dtype`` on ``device``, others (class labels) to ``device`` only."""
    inputs, targets = batch_pair(batch, "batches")

    def move(tensor):
        return tensor.to(device=device, dtype=dtype) if tensor.is_floating_point() else tensor.to(device)

    return move(inputs), move(targets)


def seed_from(generator: torch.Generator | None) -> int:
    """One 62-bit seed drawn from ``generator`` (or from torch's global generator), from which every
    probe of a measurement is derived: probe ``i`` uses seed ``seed + i``, so the same probe can be
    regenerated for every batch without keeping it in memory."""
    if generator is None:
        return int(torch.randint(0, 2 ** 62, (1,)))
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))


def rademacher_rows(seed: int, start: int, stop: int, dim: int, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
    """Rows ``start..stop-1`` of a Rademacher matrix (independent ±1 entries), shape
    ``(stop - start, dim)``; row ``i`` depends only on ``seed + i``."""
    rows = torch.empty(stop - start, dim, dtype=dtype, device=device)
    for row, index in zip(rows, range(start, stop)):
        generator = torch.Generator(device=device).manual_seed(seed + index)
        row.copy_(torch.randint(0, 2, (dim,), generator=generator, device=device, dtype=dtype).mul_(2).sub_(1))
    return rows


class BatchNormAsAffine(TorchFunctionMode):
    """Within this mode, eval-mode batch norm ``y = (x − μ)/√(σ² + ε) · γ + β`` is computed as the
    per-channel affine map ``y = x·s + t`` with ``s = γ/√(σ² + ε)``, ``t = β − μ·s``: the same
    function of ``x``, ``γ`` and ``β``, so the same derivatives, but PyTorch's batch-norm double
    backward follows the training-mode formula (its measured cost: ``benchmarks/README.md``).
    Training-mode batch norm is left alone."""

    _signature = inspect.signature(F.batch_norm)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            call = self._signature.bind(*args, **kwargs)
            call.apply_defaults()
            arguments = call.arguments
            if not arguments["training"] and arguments["running_mean"] is not None \
                    and arguments["running_var"] is not None:
                inputs = arguments["input"]
                scale = torch.rsqrt(arguments["running_var"] + arguments["eps"])
                if arguments["weight"] is not None:
                    scale = scale * arguments["weight"]
                shift = -arguments["running_mean"] * scale
                if arguments["bias"] is not None:
                    shift = shift + arguments["bias"]
                channels = (1, -1) + (1,) * (inputs.dim() - 2)  # channel dimension 1
                return torch.addcmul(shift.reshape(channels), inputs, scale.reshape(channels))  # one pass, not two
        return func(*args, **kwargs)


class PiecewiseLinearAsMasked(TorchFunctionMode):
    """Within this mode, ReLU and 2-d max pooling of inputs that require grad are computed from their
    activation pattern, held constant: ``relu(x) = x ⊙ [x > 0]`` and ``max_pool(x) = x[argmax]``
    with the mask and the argmax indices computed without grad.

    Both functions are linear on each piece, so their second derivative is zero wherever it exists
    and the Hessian is unchanged (bit for bit: the same products are formed). What changes is the
    graph of the first backward pass: PyTorch's formulas for ``threshold_backward`` and
    ``max_pool2d_with_indices_backward`` differentiate in their input too, so every second backward
    pass built and added activation-sized zero tensors (measured in ``benchmarks/README.md``).
    """

    _relus = (F.relu, torch.relu, torch.Tensor.relu)
    _max_pool_signature = inspect.signature(F.max_pool2d_with_indices)  # F.max_pool2d hides its own

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._relus:
            inputs = args[0] if args else kwargs["input"]
            if inputs.requires_grad:
                return inputs * (inputs.detach() > 0).to(inputs.dtype)
        elif func is F.max_pool2d:
            call = self._max_pool_signature.bind(*args, **kwargs)
            inputs = call.arguments["input"]
            if inputs.requires_grad and inputs.dim() in (3, 4):
                options = dict(call.arguments, input=inputs.detach(), return_indices=True)
                with torch.no_grad():
                    pooled, indices = func(**options)
                output = inputs.flatten(-2).gather(-1, indices.flatten(-2)).view_as(pooled)
                return (output, indices) if call.arguments.get("return_indices") else output
        return func(*args, **kwargs)


class LossHessian:
    """The Hessian ``H = Σ_b (n_b/N) ∇²_θ L_b(θ)`` of a model's full-data loss as a linear operator
    on flat parameter vectors (see the module docstring for the conventions and the engine).

    The model is used as it is: callers put it in eval mode (:func:`evaluation_mode`) first.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: LossFunction, batches, *, params: Patterns = None,
                 exclude: Patterns = None, keep_graphs: bool | None = None, probe_chunk_size: int = 1,
                 progress: bool = False):
        if not callable(loss_fn):
            raise InputError(f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}.")
        probe_chunk_size = positive_int("probe_chunk_size", probe_chunk_size)
        self.model = require_model(model)
        self.loss_fn = loss_fn
        self.names, self.parameters = differentiable_parameters(model, params, exclude)
        self.shapes = tuple(parameter.shape for parameter in self.parameters)
        self.sizes = tuple(parameter.numel() for parameter in self.parameters)
        self.dim = sum(self.sizes)
        self.dtype = self.parameters[0].dtype
        self.device = self.parameters[0].device
        self.batches = as_batches(batches)
        self.keep_graphs = keep_graphs
        self.probe_chunk_size = int(probe_chunk_size)
        self.progress = progress
        self.n_examples: int | None = None  # known after the first pass
        self.n_products = 0  # Hessian-vector products of the full-data operator so far
        self._kept: list[tuple[tuple[torch.Tensor | None, ...], int]] | None = None

    # -- the per-batch graph -------------------------------------------------------------------

    def _gradient_with_graph(self, batch) -> tuple[tuple[torch.Tensor | None, ...], int]:
        inputs, targets = move_batch(batch, self.device, self.dtype)
        with BatchNormAsAffine(), PiecewiseLinearAsMasked():
            loss = self.loss_fn(self.model(inputs), targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise InputError("loss_fn(outputs, targets) must return the mean loss as a scalar tensor "
                             "(reduction='mean'), got "
                             f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}.")
        gradient = torch.autograd.grad(loss.reshape(()), self.parameters, create_graph=True, allow_unused=True)
        return gradient, len(inputs)

    def _gradients(self) -> Iterator[tuple[tuple[torch.Tensor | None, ...], int]]:
        """Each batch's gradient with its graph and the batch size; kept between passes when asked."""
        if self._kept is not None:
            yield from self._kept
            return
        kept: list | None = [] if self.keep_graphs is not False else None
        batches = self.batches
        if self.progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc="Hessian pass", leave=False)
        seen = 0
        for batch in batches:
            gradient, size = self._gradient_with_graph(batch)
            seen += 1
            if kept is not None:
                kept.append((gradient, size))
                if self.keep_graphs is None and seen > 1:
                    kept = None  # several batches: keeping every graph is the caller's call, not ours
            yield gradient, size
        if seen == 0:
            raise InputError("batches is empty; pass at least one (inputs, targets) pair.")
        if kept is not None:
            self._kept = kept

    def _batch_product(self, gradient: tuple[torch.Tensor | None, ...], block: torch.Tensor) -> torch.Tensor:
        """``H_b V`` for a block ``V`` of shape ``(k, D)``: one backward pass of ``g_b · v`` per probe,
        or per chunk of ``probe_chunk_size`` probes vmapped together."""
        live = [index for index, part in enumerate(gradient) if part is not None and part.requires_grad]
        if not live:  # the loss is at most linear in θ
            return torch.zeros_like(block)
        outputs = [gradient[index] for index in live]
        products = []
        for chunk in block.split(self.probe_chunk_size):
            pieces = chunk.split(self.sizes, dim=1)
            count = chunk.shape[0]
            if count == 1:
                directions = [pieces[index].reshape(self.shapes[index]) for index in live]
                parts = torch.autograd.grad(outputs, self.parameters, directions,
                                            retain_graph=True, allow_unused=True)
                parts = [None if part is None else part.unsqueeze(0) for part in parts]
            else:
                directions = [pieces[index].reshape(count, *self.shapes[index]) for index in live]
                parts = torch.autograd.grad(outputs, self.parameters, directions, retain_graph=True,
                                            allow_unused=True, is_grads_batched=True)
            products.append(torch.cat([
                chunk.new_zeros(count, size) if part is None else part.reshape(count, size)
                for part, size in zip(parts, self.sizes)], dim=1))
        return torch.cat(products)

    # -- passes over the data ------------------------------------------------------------------

    def accumulate(self, probe_blocks: Callable[[], Iterable[torch.Tensor]],
                   reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """One pass over the data: for each block ``V`` that ``probe_blocks()`` yields (called again,
        and yielding the same blocks, for every batch), ``Σ_b (n_b/N) reduce(V, H_b V)``.
        ``reduce`` must be linear in its second argument (so that summing over batches commutes)."""
        totals: list[torch.Tensor] | None = None
        n_examples = n_products = 0
        for gradient, size in self._gradients():
            results = []
            n_products = 0
            for block in probe_blocks():
                if block.dim() != 2 or block.shape[1] != self.dim:
                    raise InputError(f"probe blocks must have shape (k, {self.dim}), got {tuple(block.shape)}.")
                results.append(reduce(block, self._batch_product(gradient, block)) * size)
                n_products += block.shape[0]
            if totals is None:
                totals = results
            else:
                totals = [total + result for total, result in zip(totals, results)]
            n_examples += size
        self.n_examples = n_examples
        self.n_products += n_products
        return [total / n_examples for total in totals]

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        """``H V`` for ``V`` of shape ``(k, D)`` (rows are vectors), in one pass over the data."""
        return self.accumulate(lambda: [block], lambda vectors, products: products)[0]

    def quadratic_forms(self, probe_blocks: Callable[[], Iterable[torch.Tensor]]) -> torch.Tensor:
        """``v_i · (H v_i)`` split by parameter tensor, for every probe row ``v_i`` of the blocks,
        shape ``(n_probes, n_tensors)`` in float64, in one pass; the products ``H v_i`` are reduced
        as soon as they are made, so memory is one block, not all probes."""
        def per_tensor(vectors, products):
            return torch.stack([(v * p).sum(dim=1) for v, p in
                                zip(vectors.split(self.sizes, dim=1), products.split(self.sizes, dim=1))],
                               dim=1).to(torch.float64)
        return torch.cat(self.accumulate(probe_blocks, per_tensor))


def default_chunks(count: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` cutting ``range(count)`` into pieces of at most ``chunk``."""
    return [(start, min(start + chunk, count)) for start in range(0, count, max(1, chunk))]

