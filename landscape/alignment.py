"""Permutation alignment of two networks of one architecture (weight and activation matching).

**Permutation symmetry.** Permuting the hidden units of a layer — the rows of its weight and bias,
every per-unit tensor tied to them (BatchNorm's weight, bias, running mean and running variance,
a per-channel scale) and the matching columns of the layers that read them — leaves the function
unchanged. In a residual network every layer that writes into one residual stream is added to the
others, so all of them (and every reader of the stream) share one permutation: permutation
*groups* follow the residual stream, not single layers. A network's weights ``θ`` and a
permutation ``π = (P_g)_g`` (one per group) give ``π(θ)``, computing the same function.

**Weight matching** (Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo
Permutation Symmetries", ICLR 2023, Alg. 1) looks for ``π`` maximizing
``Σ_l ⟨W_l^A, P_l W_l^B P_{l−1}^T⟩`` (the sum running over every parameter tensor, each
permuted along every axis that belongs to a group). It is a sum of linear assignment problems
coupled through shared tensors, solved by coordinate descent: visit the groups in random order;
for group ``g`` fix all other permutations and solve
``P_g = argmax_P ⟨P, C_g⟩`` with ``C_g[i, j] = Σ_{(W, axis) ∈ g} ⟨W^A_{axis = i}, W̃^B_{axis = j}⟩``
(``W̃^B`` is ``W^B`` with its *other* axes already permuted) by
``scipy.optimize.linear_sum_assignment(C_g, maximize=True)``; stop after a sweep in which no group
improved the objective, or after ``n_iters`` sweeps.

**Activation matching** (same paper, §3.1) runs both networks on data and, per group, matches
units by the cross-correlation ``C_g[i, j] = corr(a^A_i, a^B_j)`` of their activations (summed
over the points of a residual stream where the group's units are read), one assignment each.

Aligned members are how a loss barrier separates basins from permutations (Entezari, Sedghi,
Saukh & Neyshabur, "The Role of Permutation Invariance in Linear Mode Connectivity of Neural
Networks", ICLR 2022): measure the barrier between ``θ_A`` and ``π(θ_B)``.

Groups are derived by walking the known module structure of every zoo model (``mlp``,
``small_cnn``, ``resnet18``, ``resnet18_tin`` with its learned per-channel identity shortcut,
``wrn40_2``); any other model is refused with an :class:`InputError` naming the module, never
aligned wrongly. Models are compared and returned as copies; the given ones are never modified.

Example (a randomly permuted copy is found again exactly)::

    >>> import torch
    >>> from ensembles.models import zoo
    >>> _ = torch.manual_seed(0)
    >>> model = zoo.build("mlp", 3, input_size=4, hidden=(8, 8)).double()
    >>> spec = permutation_spec(model)
    >>> sorted(spec.sizes.items())
    [('layers.0', 8), ('layers.1', 8)]
    >>> shuffled = apply_permutation(model, random_permutation(spec, seed=1))
    >>> x = torch.randn(5, 4, dtype=torch.float64)
    >>> bool(torch.allclose(shuffled(x), model(x), atol=1e-12))
    True
    >>> aligned = weight_matching(model, shuffled)
    >>> all(torch.equal(a, b) for a, b in zip(aligned.state_dict().values(), model.state_dict().values()))
    True
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from landscape._checks import evaluation_mode, model_dtype_device, positive_int, require_model
from landscape.errors import InputError, NonFiniteError

__all__ = [
    "PermutationSpec",
    "WeightMatching",
    "activation_matching",
    "apply_permutation",
    "match_activations",
    "match_weights",
    "permutation_spec",
    "random_permutation",
    "weight_matching",
]

Permutation = dict[str, Tensor]


# ------------------------------------------------------------------------------------ the groups


@dataclass
class PermutationSpec:
    """The permutation groups of one architecture.

    ``axes[g]`` lists the ``(state-dict key, axis)`` pairs permuted by group ``g`` (parameters and
    buffers alike); ``sizes[g]`` is the number of units; ``probes[g]`` lists where the group's
    units can be read as activations, ``(module name, "input" | "output")``, channels on dim 1.
    """

    axes: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    probes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def add(self, group: str, *pairs: tuple[str, int]) -> None:
        self.axes.setdefault(group, []).extend(pairs)

    def probe(self, group: str, module: str, where: str) -> None:
        self.probes.setdefault(group, []).append((module, where))

    def by_key(self) -> dict[str, dict[int, str]]:
        """``key -> {axis: group}``: which group permutes each axis of each tensor."""
        table: dict[str, dict[int, str]] = {}
        for group, pairs in self.axes.items():
            for key, axis in pairs:
                table.setdefault(key, {})[axis] = group
        return table


def _batchnorm(prefix: str) -> list[tuple[str, int]]:
    return [(f"{prefix}.{name}", 0) for name in ("weight", "bias", "running_mean", "running_var")]


def _out(prefix: str, bias: bool = False) -> list[tuple[str, int]]:
    return [(f"{prefix}.weight", 0)] + ([(f"{prefix}.bias", 0)] if bias else [])


def _mlp(model, spec: PermutationSpec) -> None:
    for i in range(len(model.layers) - 1):
        group = f"layers.{i}"
        spec.add(group, *_out(f"layers.{i}", bias=True), (f"layers.{i + 1}.weight", 1))
        spec.probe(group, f"layers.{i + 1}", "input")


def _small_cnn(model, spec: PermutationSpec) -> None:
    readers = {"conv1": "conv2", "conv2": "conv3", "conv3": "linear"}
    for conv, reader in readers.items():
        spec.add(conv, *_out(conv), *_batchnorm("bn" + conv[-1]), (f"{reader}.weight", 1))
        spec.probe(conv, reader, "input")


def _cifar_resnet18(model, spec: PermutationSpec) -> None:
    stream = "stream.stem"
    spec.add(stream, *_out("conv1"), *_batchnorm("bn1"))
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{index}"
            spec.add(stream, (f"{name}.conv1.weight", 1))
            spec.probe(stream, name, "input")
            inner = f"{name}.conv1"
            spec.add(inner, *_out(f"{name}.conv1"), *_batchnorm(f"{name}.bn1"), (f"{name}.conv2.weight", 1))
            spec.probe(inner, f"{name}.conv2", "input")
            if len(block.shortcut):  # a 1×1 conv + BN projection starts a new stream
                spec.add(stream, (f"{name}.shortcut.0.weight", 1))
                stream = f"stream.{name}"
                spec.add(stream, *_out(f"{name}.shortcut.0"), *_batchnorm(f"{name}.shortcut.1"))
            spec.add(stream, *_out(f"{name}.conv2"), *_batchnorm(f"{name}.bn2"))
            spec.probe(stream, name, "output")
    spec.add(stream, ("linear.weight", 1))


def _tiny_imagenet_resnet18(model, spec: PermutationSpec) -> None:
    from ensembles.models.zoo import ChannelScale

    stream = "stream.stem"
    spec.add(stream, *_out("conv1.0"), *_batchnorm("conv1.1"))
    spec.probe(stream, "conv1", "output")
    for stage in ("conv2_x", "conv3_x", "conv4_x", "conv5_x"):
        for index, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{index}"
            main = f"{name}.residual_function"
            spec.add(stream, (f"{main}.0.weight", 1))
            inner = f"{main}.0"
            spec.add(inner, *_out(f"{main}.0"), *_batchnorm(f"{main}.1"), (f"{main}.3.weight", 1))
            spec.probe(inner, f"{main}.3", "input")
            if isinstance(block.shortcut, ChannelScale):  # x · w per channel: w follows the stream
                spec.add(stream, (f"{name}.shortcut.weight", 0))
            else:
                spec.add(stream, (f"{name}.shortcut.0.weight", 1))
                stream = f"stream.{name}"
                spec.add(stream, *_out(f"{name}.shortcut.0"), *_batchnorm(f"{name}.shortcut.1"))
            spec.add(stream, *_out(f"{main}.3"), *_batchnorm(f"{main}.4"))
            spec.probe(stream, name, "output")
    spec.add(stream, ("fc.weight", 1))


def _wide_resnet(model, spec: PermutationSpec) -> None:
    stream = "stream.stem"
    spec.add(stream, *_out("conv1"))
    spec.probe(stream, "conv1", "output")
    for group_index in (1, 2, 3):
        for index, block in enumerate(getattr(model, f"block{group_index}").layer):
            name = f"block{group_index}.layer.{index}"
            # pre-activation: bn1 normalizes the incoming stream, conv1 (and a projection) read it
            spec.add(stream, *_batchnorm(f"{name}.bn1"), (f"{name}.conv1.weight", 1))
            inner = f"{name}.conv1"
            spec.add(inner, *_out(f"{name}.conv1"), *_batchnorm(f"{name}.bn2"), (f"{name}.conv2.weight", 1))
            spec.probe(inner, f"{name}.conv2", "input")
            if not block.keeps_shape:
                spec.add(stream, (f"{name}.convShortcut.weight", 1))
                stream = f"stream.{name}"
                spec.add(stream, *_out(f"{name}.convShortcut"))
            spec.add(stream, *_out(f"{name}.conv2"))
            spec.probe(stream, name, "output")
    spec.add(stream, *_batchnorm("bn1"), ("fc.weight", 1))


def _walkers() -> dict[type, object]:
    from ensembles.models import zoo

    return {zoo.MLP: _mlp, zoo.SmallCNN: _small_cnn, zoo.CifarResNet18: _cifar_resnet18,
            zoo.TinyImageNetResNet18: _tiny_imagenet_resnet18, zoo.WideResNet: _wide_resnet}


_KNOWN_LEAVES = (nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Sequential, nn.ModuleList)


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation groups of ``model``, derived from its architecture.

    Known: the zoo's :class:`~ensembles.models.zoo.MLP`, ``SmallCNN``, ``CifarResNet18``,
    ``TinyImageNetResNet18`` and ``WideResNet`` (exactly those classes, not subclasses, whose
    ``forward`` could differ). Anything else raises :class:`InputError` naming the module; a
    derived spec is also checked to permute every per-unit tensor it touches consistently.
    """
    require_model(model)
    walker = _walkers().get(type(model))
    if walker is None:
        raise InputError(f"cannot derive permutation groups for module {type(model).__name__!r}: alignment knows "
                         "only the zoo models (mlp, small_cnn, resnet18, resnet18_tin, wrn40_2); align a zoo model "
                         "or leave --align none.")
    from ensembles.models.zoo import ChannelScale

    for name, module in model.named_modules():
        if name and not isinstance(module, (*_KNOWN_LEAVES, ChannelScale)) and type(module).__module__ != "ensembles.models.zoo":
            raise InputError(f"cannot derive permutation groups: module {name!r} of type {type(module).__name__} "
                             f"inside {type(model).__name__} is not part of the zoo architecture; refusing to align.")
    spec = PermutationSpec()
    walker(model, spec)
    _check_spec(model, spec)
    return spec


def _check_spec(model: nn.Module, spec: PermutationSpec) -> None:
    """Every named tensor exists, every axis of a group has the group's size, and every floating
    tensor of the model but the head's is in some group (so no per-unit tensor is left behind)."""
    state = model.state_dict()
    for group, pairs in spec.axes.items():
        sizes = set()
        for key, axis in pairs:
            if key not in state:
                raise InputError(f"cannot derive permutation groups for {type(model).__name__}: no tensor {key!r}")
            sizes.add(state[key].shape[axis])
        if len(sizes) != 1:
            raise InputError(f"cannot derive permutation groups for {type(model).__name__}: group {group!r} "
                             f"spans axes of different sizes {sorted(sizes)}")
        spec.sizes[group] = sizes.pop()
    covered = spec.by_key()
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        if key not in covered and not _is_boundary(key, model):
            raise InputError(f"cannot derive permutation groups for {type(model).__name__}: tensor {key!r} "
                             "belongs to no group; refusing to align.")


def _is_boundary(key: str, model: nn.Module) -> bool:
    """The head (class outputs are never permuted; a linear MLP has no hidden unit at all) is the
    only module whose tensors may lie outside every group."""
    head = {"MLP": f"layers.{len(getattr(model, 'layers', [])) - 1}", "SmallCNN": "linear",
            "CifarResNet18": "linear", "TinyImageNetResNet18": "fc", "WideResNet": "fc"}[type(model).__name__]
    return key in (f"{head}.weight", f"{head}.bias")


# --------------------------------------------------------------------------- applying a permutation


def random_permutation(spec: PermutationSpec, seed: int = 0) -> Permutation:
    """One uniformly random permutation per group (``torch.randperm`` from ``seed``)."""
    generator = torch.Generator().manual_seed(int(seed))
    return {group: torch.randperm(size, generator=generator) for group, size in spec.sizes.items()}


def _permuted_state(state: Mapping[str, Tensor], spec: PermutationSpec, permutation: Permutation,
                    skip: str | None = None) -> dict[str, Tensor]:
    """``state`` with axis ``a`` of every grouped tensor indexed by its group's permutation
    (``new[i] = old[p[i]]``), except the axes of group ``skip``."""
    out = dict(state)
    for key, axes in spec.by_key().items():
        tensor = out[key]
        for axis, group in axes.items():
            if group != skip:
                tensor = tensor.index_select(axis, permutation[group].to(tensor.device))
        out[key] = tensor
    return out


def apply_permutation(model: nn.Module, permutation: Permutation, spec: PermutationSpec | None = None) -> nn.Module:
    """A copy of ``model`` whose units in group ``g`` are reordered by ``permutation[g]`` (unit
    ``i`` of the copy is unit ``permutation[g][i]`` of ``model``); it computes the same function."""
    spec = permutation_spec(model) if spec is None else spec
    for group, size in spec.sizes.items():
        p = permutation.get(group)
        if p is None or sorted(p.tolist()) != list(range(size)):
            raise InputError(f"permutation for group {group!r} must be a permutation of range({size})")
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(_permuted_state(model.state_dict(), spec, permutation))
    return permuted


# ---------------------------------------------------------------------------------- weight matching


@dataclass(frozen=True)
class WeightMatching:
    """The permutation found by :func:`match_weights`, the sweeps it took (``iterations``),
    whether the last sweep improved no group (``converged``) and the final objective
    ``Σ ⟨W^A, π(W^B)⟩`` over the parameters."""

    permutation: Permutation
    iterations: int
    converged: bool
    objective: float


def _checked_pair(reference: nn.Module, model: nn.Module) -> PermutationSpec:
    require_model(reference, "reference"), require_model(model, "model")
    spec = permutation_spec(reference)
    other = permutation_spec(model)
    if other.axes != spec.axes or other.sizes != spec.sizes:
        raise InputError(f"cannot align {type(model).__name__} to {type(reference).__name__}: the two models "
                         "have different architectures or widths.")
    for which, net in (("reference", reference), ("model", model)):
        for key, tensor in net.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NonFiniteError(f"the {which} has non-finite values in {key!r}; cannot align it.")
    return spec


def match_weights(reference: nn.Module, model: nn.Module, *, n_iters: int = 100, seed: int = 0) -> WeightMatching:
    """Git Re-Basin weight matching (see the module docstring): the permutation of ``model``'s
    units that maximizes its inner product with ``reference``'s parameters, by coordinate descent
    over the groups in an order shuffled by ``seed`` each sweep, at most ``n_iters`` sweeps."""
    n_iters = positive_int("n_iters", n_iters)
    spec = _checked_pair(reference, model)
    parameter_keys = {name for name, _ in reference.named_parameters()}
    # Parameters only (BN running statistics follow but do not vote), in float64 on the CPU.
    wa = {k: v.detach().to("cpu", torch.float64) for k, v in reference.state_dict().items() if k in parameter_keys}
    wb = {k: v.detach().to("cpu", torch.float64) for k, v in model.state_dict().items() if k in parameter_keys}
    param_spec = PermutationSpec(axes={g: [(k, a) for k, a in pairs if k in parameter_keys]
                                       for g, pairs in spec.axes.items()}, sizes=spec.sizes)
    permutation = {group: torch.arange(size) for group, size in spec.sizes.items()}
    groups = list(spec.sizes)
    rng = np.random.default_rng(seed)
    converged, iterations = False, 0
    for iterations in range(1, n_iters + 1):
        improved = False
        for index in rng.permutation(len(groups)):
            group = groups[index]
            cost = _weight_cost(wa, wb, param_spec, permutation, group)
            rows, cols = linear_sum_assignment(cost, maximize=True)
            old = cost[np.arange(len(cols)), permutation[group].numpy()].sum()
            new = cost[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                permutation[group] = torch.as_tensor(cols, dtype=torch.long)
                improved = True
        if not improved:
            converged = True
            break
    final = _permuted_state(wb, param_spec, permutation)
    objective = float(sum((wa[k] * final[k]).sum() for k in wa))
    return WeightMatching(permutation, iterations, converged, objective)


def _weight_cost(wa: dict[str, Tensor], wb: dict[str, Tensor], spec: PermutationSpec,
                 permutation: Permutation, group: str) -> np.ndarray:
    """``C[i, j] = Σ_{(W, axis) ∈ group} ⟨W^A_{axis=i}, W̃^B_{axis=j}⟩``, with ``W̃^B`` permuted on its
    other axes."""
    size = spec.sizes[group]
    cost = torch.zeros(size, size, dtype=torch.float64)
    table = spec.by_key()
    for key, axis in spec.axes[group]:
        b = wb[key]
        for other_axis, other in table[key].items():
            if other != group:
                b = b.index_select(other_axis, permutation[other])
        a = wa[key].movedim(axis, 0).reshape(size, -1)
        cost += a @ b.movedim(axis, 0).reshape(size, -1).T
    return cost.numpy()


def weight_matching(reference: nn.Module, model: nn.Module, *, n_iters: int = 100, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with its hidden units permuted to match ``reference`` by weight matching
    (:func:`match_weights`); it computes the same function as ``model``."""
    return apply_permutation(model, match_weights(reference, model, n_iters=n_iters, seed=seed).permutation)


# ------------------------------------------------------------------------------ activation matching


def match_activations(reference: nn.Module, model: nn.Module, batches: Iterable) -> Permutation:
    """Per group, the assignment of ``model``'s units to ``reference``'s maximizing the summed
    Pearson correlation ``corr(a^A_i, a^B_j)`` of their activations over ``batches`` (both models
    in eval mode, every spatial position a sample), summed over the group's probes (every point
    where the group's units are read). ``batches`` yields ``(inputs, ...)`` tuples or inputs."""
    spec = _checked_pair(reference, model)
    dtype, device = model_dtype_device(reference)
    moments: dict[tuple[str, str], list] = {}
    seen = 0
    with torch.no_grad(), evaluation_mode(reference), evaluation_mode(model):
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(inputs, Tensor):
                raise InputError("activation matching needs batches of tensors or (inputs, targets) tuples")
            inputs = inputs.to(device, dtype) if inputs.is_floating_point() else inputs.to(device)
            acts_a, acts_b = _probe(reference, spec, inputs), _probe(model, spec, inputs)
            for probe, a in acts_a.items():
                b = acts_b[probe]
                if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                    raise NonFiniteError(f"non-finite activations at {probe[0]!r}; cannot match activations.")
                terms = (a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0), a.T @ b, a.shape[0])
                moments[probe] = terms if probe not in moments else [x + y for x, y in zip(moments[probe], terms)]
            seen += 1
    if not seen:
        raise InputError("activation matching needs at least one batch of data")
    permutation = {}
    for group, size in spec.sizes.items():
        correlation = torch.zeros(size, size, dtype=torch.float64)
        for probe in spec.probes[group]:
            correlation += _correlation(*moments[probe])
        _, cols = linear_sum_assignment(correlation.numpy(), maximize=True)
        permutation[group] = torch.as_tensor(cols, dtype=torch.long)
    return permutation


def _probe(model: nn.Module, spec: PermutationSpec, inputs: Tensor) -> dict[tuple[str, str], Tensor]:
    """Activations at every probe as ``(samples, units)`` float64 (channels last, positions as samples)."""
    modules = dict(model.named_modules())
    wanted = {probe for probes in spec.probes.values() for probe in probes}
    found: dict[tuple[str, str], Tensor] = {}

    def keep(name: str, where: str, value: Tensor) -> None:
        found[name, where] = value.detach().movedim(1, -1).reshape(-1, value.shape[1]).to("cpu", torch.float64)

    handles = []
    for name, where in wanted:
        if where == "input":
            handles.append(modules[name].register_forward_pre_hook(
                lambda _m, args, name=name: keep(name, "input", args[0])))
        else:
            handles.append(modules[name].register_forward_hook(
                lambda _m, _args, out, name=name: keep(name, "output", out)))
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _correlation(sum_a, sum_b, sq_a, sq_b, cross, count) -> Tensor:
    """Pearson correlation matrix from sums; units that never vary get a tiny spread (correlation 0)."""
    mean_a, mean_b = sum_a / count, sum_b / count
    covariance = cross / count - mean_a[:, None] * mean_b[None, :]
    std_a = (sq_a / count - mean_a ** 2).clamp_min(0).sqrt() + 1e-12
    std_b = (sq_b / count - mean_b ** 2).clamp_min(0).sqrt() + 1e-12
    return covariance / (std_a[:, None] * std_b[None, :])


def activation_matching(reference: nn.Module, model: nn.Module, batches: Iterable) -> nn.Module:
    """A copy of ``model`` with its hidden units permuted to match ``reference`` by the correlation
    of their activations on ``batches`` (:func:`match_activations`)."""
    return apply_permutation(model, match_activations(reference, model, batches))
