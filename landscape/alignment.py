"""Permutation alignment of two networks of one architecture (weight and activation matching).

**Permutation symmetry.** Permuting the hidden units of a layer — the rows of its weight and bias,
every per-unit tensor tied to them (BatchNorm's weight, bias, running mean and running variance,
a per-channel scale) and the matching columns of the layers that read them — leaves the function
unchanged. In a residual network every layer that writes into one residual stream is added to the
others, so all of them (and every reader of the stream) share one permutation: permutation
*groups* follow the residual stream, not single layers. A network's weights ``θ`` and a
permutation ``π = (P_g)_g`` (one per group) give ``π(θ)``, computing the same function.

**The groups are data.** Which axes of which tensors move together is a
:class:`PermutationSpec`, passed into every function here, as Git Re-Basin passes its
``PermutationSpec`` into weight matching (Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging
Models modulo Permutation Symmetries", ICLR 2023, §3; their code builds one spec per architecture):
this module knows no architecture. A spec is written by hand beside a model, or derived from the
model's graph (:mod:`landscape.permutation_tracing`); :meth:`PermutationSpec.from_axes` checks a
hand-written one against its model, and :func:`check_preserves_function` proves any spec on data.

**Weight matching** (Ainsworth et al. 2023, §3.2, Alg. 1) looks for ``π`` maximizing
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
over the spec's probes: the points where the group's units can be read), one assignment each.

Aligned members are how a loss barrier separates basins from permutations (Entezari, Sedghi,
Saukh & Neyshabur, "The Role of Permutation Invariance in Linear Mode Connectivity of Neural
Networks", ICLR 2022): measure the barrier between ``θ_A`` and ``π(θ_B)``. Models are compared
and returned as copies; the given ones are never modified.

Example (a hand-written spec; a randomly permuted copy is found again exactly)::

    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    >>> spec = PermutationSpec.from_axes(model, {"hidden": [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)]},
    ...                                  probes={"hidden": [("2", "input", 1)]}, fixed=["2.bias"])
    >>> spec.sizes
    {'hidden': 8}
    >>> shuffled = apply_permutation(model, random_permutation(spec, seed=1), spec)
    >>> x = torch.randn(5, 4, dtype=torch.float64)
    >>> bool(torch.allclose(shuffled(x), model(x), atol=1e-12))
    True
    >>> aligned = weight_matching(model, shuffled, spec)
    >>> all(torch.equal(a, b) for a, b in zip(aligned.state_dict().values(), model.state_dict().values()))
    True
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
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
    "check_preserves_function",
    "check_spec",
    "match_activations",
    "match_weights",
    "random_permutation",
    "weight_matching",
]

Permutation = dict[str, Tensor]
PROBE_PLACES = ("input", "output")


# ------------------------------------------------------------------------------------ the groups


@dataclass(frozen=True)
class PermutationSpec:
    """The permutation groups of one network, as plain data.

    ``axes[g]`` lists the ``(state-dict key, axis)`` pairs permuted by group ``g`` (parameters and
    persistent buffers alike) and ``sizes[g]`` its number of units. ``probes[g]`` lists where the
    group's units can be read as activations for :func:`match_activations`:
    ``(module name, "input" | "output", dim)``, the units lying along ``dim`` of that module's
    first input or its output. ``fixed`` names the floating tensors of the state dict that no
    group permutes (the head's bias, the first layer's input side): listing them makes a spec that
    forgot a per-unit tensor an error instead of a silently wrong function.
    """

    axes: Mapping[str, tuple[tuple[str, int], ...]]
    sizes: Mapping[str, int]
    probes: Mapping[str, tuple[tuple[str, str, int], ...]] = field(default_factory=dict)
    fixed: tuple[str, ...] = ()

    @classmethod
    def from_axes(cls, model: nn.Module, axes: Mapping[str, Sequence[tuple[str, int]]],
                  probes: Mapping[str, Sequence[tuple[str, str, int]]] | None = None,
                  fixed: Iterable[str] = ()) -> PermutationSpec:
        """A spec for ``model`` from its groups' axes (sizes read from the model), checked against
        the model: see :func:`check_spec`."""
        state = model.state_dict()
        sizes = {}
        for group, pairs in axes.items():
            found = {state[key].shape[axis] for key, axis in pairs if key in state and -1 < axis < state[key].dim()}
            sizes[group] = found.pop() if len(found) == 1 else -1  # -1: check_spec names the problem
        spec = cls(axes={group: tuple((str(key), int(axis)) for key, axis in pairs) for group, pairs in axes.items()},
                   sizes=sizes,
                   probes={group: tuple((str(m), str(w), int(d)) for m, w, d in places)
                           for group, places in (probes or {}).items()},
                   fixed=tuple(fixed))
        check_spec(spec, model)
        return spec

    def by_key(self) -> dict[str, dict[int, str]]:
        """``key -> {axis: group}``: which group permutes each axis of each tensor."""
        table: dict[str, dict[int, str]] = {}
        for group, pairs in self.axes.items():
            for key, axis in pairs:
                table.setdefault(key, {})[axis] = group
        return table


def check_spec(spec: PermutationSpec, model: nn.Module) -> None:
    """Raise :class:`InputError` unless ``spec`` fits ``model``: every named tensor exists, each axis
    has its group's size and belongs to one group only, every floating tensor of the state dict is
    in a group or in ``spec.fixed`` (so no per-unit tensor is left behind), and every probe names a
    module of the model."""
    require_model(model)
    name = type(model).__name__
    state = model.state_dict()
    if set(spec.axes) != set(spec.sizes):
        raise InputError(f"permutation spec for {name}: groups {sorted(set(spec.axes) ^ set(spec.sizes))} "
                         "have axes but no size, or a size but no axes")
    owner: dict[tuple[str, int], str] = {}
    for group, pairs in spec.axes.items():
        for key, axis in pairs:
            if key not in state:
                raise InputError(f"permutation spec for {name}: group {group!r} names {key!r}, which the model "
                                 "does not have")
            if not -1 < axis < state[key].dim() or state[key].shape[axis] != spec.sizes[group]:
                raise InputError(f"permutation spec for {name}: axis {axis} of {key!r} (shape "
                                 f"{tuple(state[key].shape)}) does not have group {group!r}'s size {spec.sizes[group]}")
            if owner.setdefault((key, axis), group) != group:
                raise InputError(f"permutation spec for {name}: axis {axis} of {key!r} is in groups "
                                 f"{owner[key, axis]!r} and {group!r}; an axis moves with one group")
    grouped = {key for key, _ in owner}
    for key in spec.fixed:
        if key not in state or key in grouped:
            raise InputError(f"permutation spec for {name}: fixed tensor {key!r} "
                             + ("does not exist" if key not in state else "is also in a group"))
    left = [key for key, tensor in state.items()
            if tensor.is_floating_point() and key not in grouped and key not in spec.fixed]
    if left:
        raise InputError(f"permutation spec for {name}: tensor {left[0]!r} is in no group and not declared fixed"
                         + (f" ({len(left) - 1} more)" if len(left) > 1 else "") + "; refusing to align")
    modules = dict(model.named_modules())
    for group, places in spec.probes.items():
        if group not in spec.sizes:
            raise InputError(f"permutation spec for {name}: probes for unknown group {group!r}")
        for module, where, _dim in places:
            if module not in modules or where not in PROBE_PLACES:
                raise InputError(f"permutation spec for {name}: probe ({module!r}, {where!r}) of group {group!r} "
                                 f"is not a module's {' or '.join(PROBE_PLACES)}")


# --------------------------------------------------------------------------- applying a permutation


def random_permutation(spec: PermutationSpec, seed: int = 0) -> Permutation:
    """One uniformly random permutation per group (``torch.randperm`` from ``seed``)."""
    generator = torch.Generator().manual_seed(int(seed))
    return {group: torch.randperm(size, generator=generator) for group, size in spec.sizes.items()}


def _with_metadata(values: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> OrderedDict:
    """``values`` as a state dict carrying ``state``'s per-module versions (``_metadata``), which
    modules with versioned loading (torchvision's MNASNet) read back."""
    out = OrderedDict(values)
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata
    return out


def _permuted_state(state: Mapping[str, Tensor], spec: PermutationSpec, permutation: Permutation,
                    skip: str | None = None) -> dict[str, Tensor]:
    """``state`` with axis ``a`` of every grouped tensor indexed by its group's permutation
    (``new[i] = old[p[i]]``), except the axes of group ``skip``."""
    out = _with_metadata(state, state)
    for key, axes in spec.by_key().items():
        if key not in out:
            continue
        tensor = out[key]
        for axis, group in axes.items():
            if group != skip:
                tensor = tensor.index_select(axis, permutation[group].to(tensor.device))
        out[key] = tensor
    return out


def apply_permutation(model: nn.Module, permutation: Permutation, spec: PermutationSpec) -> nn.Module:
    """A copy of ``model`` whose units in group ``g`` are reordered by ``permutation[g]`` (unit
    ``i`` of the copy is unit ``permutation[g][i]`` of ``model``); it computes the same function."""
    check_spec(spec, model)
    for group, size in spec.sizes.items():
        p = permutation.get(group)
        if p is None or sorted(p.tolist()) != list(range(size)):
            raise InputError(f"permutation for group {group!r} must be a permutation of range({size})")
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(_permuted_state(model.state_dict(), spec, permutation))
    return permuted


def check_preserves_function(model: nn.Module, spec: PermutationSpec, inputs: Tensor, *, seed: int = 0) -> None:
    """Raise :class:`InputError` unless a random permutation of every group leaves the outputs of
    ``model`` on ``inputs`` unchanged: the proof, on data, that ``spec`` describes symmetries of the
    network. Checked on a float64 copy in eval mode whose floating tensors are jittered (each
    entry by a relative 5%, zeros by ±0.01), so that a tensor the spec permutes wrongly cannot hide
    behind equal entries (a fresh BatchNorm's ones and zeros)."""
    check_spec(spec, model)
    generator = torch.Generator().manual_seed(int(seed))
    probe = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad(), evaluation_mode(probe):
        state = probe.state_dict()
        jittered = _with_metadata({}, state)
        for key, tensor in state.items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.device)
                spread = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.device)
                tensor = tensor * (1 + 0.05 * noise) + 0.01 * spread * (tensor == 0)
            jittered[key] = tensor
        device = model_dtype_device(probe)[1]
        inputs = inputs.to(device, torch.float64) if inputs.is_floating_point() else inputs.to(device)
        probe.load_state_dict(jittered)
        expected = probe(inputs)
        probe.load_state_dict(_permuted_state(jittered, spec, random_permutation(spec, seed)))
        found = probe(inputs)
    if not (isinstance(expected, Tensor) and isinstance(found, Tensor)):
        raise InputError(f"{type(model).__name__} does not return one tensor; cannot check its permutation groups")
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    error = float((found - expected).abs().max()) if expected.numel() else 0.0
    if not np.isfinite(scale) or not error <= 1e-7 * (1.0 + scale):
        raise InputError(f"the permutation groups of {type(model).__name__} do not preserve its function (outputs "
                         f"moved by {error:.3g} of {scale:.3g}); refusing to align with them")


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


def _checked_pair(reference: nn.Module, model: nn.Module, spec: PermutationSpec) -> None:
    """Both models fit ``spec`` and have the same tensors of the same shapes, all finite."""
    require_model(reference, "reference"), require_model(model, "model")
    if not isinstance(spec, PermutationSpec):
        raise InputError(f"expected a PermutationSpec describing the models' groups, got {type(spec).__name__}")
    a, b = reference.state_dict(), model.state_dict()
    if list(a) != list(b) or any(a[key].shape != b[key].shape for key in a):
        raise InputError(f"cannot align {type(model).__name__} to {type(reference).__name__}: the two models "
                         "have different architectures or widths.")
    check_spec(spec, reference)
    for which, state in (("reference", a), ("model", b)):
        for key, tensor in state.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NonFiniteError(f"the {which} has non-finite values in {key!r}; cannot align it.")


def match_weights(reference: nn.Module, model: nn.Module, spec: PermutationSpec, *, n_iters: int = 100,
                  seed: int = 0) -> WeightMatching:
    """Git Re-Basin weight matching (see the module docstring): the permutation of ``model``'s
    units, grouped by ``spec``, that maximizes its inner product with ``reference``'s parameters,
    by coordinate descent over the groups in an order shuffled by ``seed`` each sweep, at most
    ``n_iters`` sweeps."""
    n_iters = positive_int("n_iters", n_iters)
    _checked_pair(reference, model, spec)
    parameter_keys = {name for name, _ in reference.named_parameters()}
    # Parameters only (BN running statistics follow but do not vote), in float64 on the CPU.
    wa = {k: v.detach().to("cpu", torch.float64) for k, v in reference.state_dict().items() if k in parameter_keys}
    wb = {k: v.detach().to("cpu", torch.float64) for k, v in model.state_dict().items() if k in parameter_keys}
    param_spec = PermutationSpec(axes={g: tuple((k, a) for k, a in pairs if k in parameter_keys)
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


def weight_matching(reference: nn.Module, model: nn.Module, spec: PermutationSpec, *, n_iters: int = 100,
                    seed: int = 0) -> nn.Module:
    """A copy of ``model`` with its hidden units permuted to match ``reference`` by weight matching
    (:func:`match_weights`); it computes the same function as ``model``."""
    return apply_permutation(model, match_weights(reference, model, spec, n_iters=n_iters, seed=seed).permutation,
                             spec)


# ------------------------------------------------------------------------------ activation matching


def match_activations(reference: nn.Module, model: nn.Module, spec: PermutationSpec, batches: Iterable) -> Permutation:
    """Per group of ``spec``, the assignment of ``model``'s units to ``reference``'s maximizing the
    summed Pearson correlation ``corr(a^A_i, a^B_j)`` of their activations over ``batches`` (both
    models in eval mode, every position other than the units' own dim a sample), summed over the
    group's probes. ``batches`` yields ``(inputs, ...)`` tuples or inputs."""
    _checked_pair(reference, model, spec)
    unprobed = [group for group in spec.sizes if not spec.probes.get(group)]
    if unprobed:
        raise InputError(f"group {unprobed[0]!r} has no probe (no place its units can be read), so activation "
                         "matching cannot match it; use weight matching")
    dtype, device = model_dtype_device(reference)
    moments: dict[tuple[str, str, int], list] = {}
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


def _probe(model: nn.Module, spec: PermutationSpec, inputs: Tensor) -> dict[tuple[str, str, int], Tensor]:
    """Activations at every probe as ``(samples, units)`` float64 (units last, other positions as samples)."""
    modules = dict(model.named_modules())
    wanted = {probe for probes in spec.probes.values() for probe in probes}
    found: dict[tuple[str, str, int], Tensor] = {}

    def keep(probe: tuple[str, str, int], value: Tensor) -> None:
        dim = probe[2]
        found[probe] = value.detach().movedim(dim, -1).reshape(-1, value.shape[dim]).to("cpu", torch.float64)

    handles = []
    for probe in wanted:
        module = modules[probe[0]]
        if probe[1] == "input":
            handles.append(module.register_forward_pre_hook(lambda _m, args, probe=probe: keep(probe, args[0])))
        else:
            handles.append(module.register_forward_hook(lambda _m, _args, out, probe=probe: keep(probe, out)))
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(wanted - set(found))
    if missing:
        raise InputError(f"probe {missing[0][:2]} was never reached when {type(model).__name__} ran; "
                         "cannot match activations there")
    return found


def _correlation(sum_a, sum_b, sq_a, sq_b, cross, count) -> Tensor:
    """Pearson correlation matrix from sums; units that never vary get a tiny spread (correlation 0)."""
    mean_a, mean_b = sum_a / count, sum_b / count
    covariance = cross / count - mean_a[:, None] * mean_b[None, :]
    std_a = (sq_a / count - mean_a ** 2).clamp_min(0).sqrt() + 1e-12
    std_b = (sq_b / count - mean_b ** 2).clamp_min(0).sqrt() + 1e-12
    return covariance / (std_a[:, None] * std_b[None, :])


def activation_matching(reference: nn.Module, model: nn.Module, spec: PermutationSpec, batches: Iterable) -> nn.Module:
    """A copy of ``model`` with its hidden units permuted to match ``reference`` by the correlation
    of their activations on ``batches`` (:func:`match_activations`)."""
    return apply_permutation(model, match_activations(reference, model, spec, batches), spec)
