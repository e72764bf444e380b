"""Linear mode connectivity, loss barriers and two-dimensional slices of the loss surface.

All measurements evaluate one network architecture at points ``θ`` of its weight space that are
affine combinations of a few *anchor* weight vectors. With ``L(θ)`` the sample-weighted mean loss
over every batch of ``batches`` (``loss_fn(outputs, targets)`` returns the batch mean, so batch
``b`` of ``n_b`` samples counts ``n_b`` times) and ``acc(θ)`` the fraction of samples whose
``argmax`` output equals the integer target:

- **Linear path** (Frankle et al. 2020, "Linear mode connectivity and the lottery ticket
  hypothesis"): ``θ(α) = (1 − α) θ_a + α θ_b``; :func:`interpolate` returns ``L(θ(α))`` and
  ``acc(θ(α))`` on a grid of ``α``.
- **Loss barrier** (Entezari et al. 2022, "The role of permutation invariance in linear mode
  connectivity of neural networks"):
  ``B(θ_a, θ_b) = max_{α ∈ [0, 1]} L(θ(α)) − [(1 − α) L(θ_a) + α L(θ_b)]``, the largest excess of
  the path over the chord between its ends, with the ``α*`` where it peaks (:func:`loss_barrier`,
  :func:`barrier_matrix`). The endpoints give 0, so ``B ≥ 0`` up to rounding, and ``B = 0`` when
  ``L`` is convex along the path; members of one basin have ``B ≈ 0``.
- **Plane through three members** (Garipov et al. 2018, "Loss surfaces, mode connectivity, and fast
  ensembling of DNNs"): orthonormal ``u = (w₂ − w₁)/‖w₂ − w₁‖`` and
  ``v = (w₃ − w₁ − ⟨w₃ − w₁, u⟩ u)/‖w₃ − w₁ − ⟨w₃ − w₁, u⟩ u‖``; the point at coordinates ``(x, y)``
  is ``w₁ + x u + y v``, so the members sit at ``(0, 0)``, ``(‖w₂ − w₁‖, 0)`` and
  ``(⟨w₃ − w₁, u⟩, ‖w₃ − w₁ − ⟨w₃ − w₁, u⟩ u‖)`` (:func:`plane`; Lion et al. 2024, "How good is a
  single basin?", Fig. 4, draws ensembles this way).
- **Pair connectivity q** (our reconstruction of the per-pair connectivity ``q_pair`` that Lion et
  al. 2024, Figs. 2–3, average into an ensemble's ``q̄``; their exact formula could not be recovered
  from the text available to us, so this is a stated stand-in, not their definition): with the chord
  ``c(α) = (1 − α) acc(θ_a) + α acc(θ_b)``, ``q = min_α min(1, acc(θ(α)) / c(α))`` over the path's
  ``α``, the worst fraction of the straight line between the endpoints' accuracies that the path
  keeps; and the loss form ``q_loss = min_α min(1, [(1 − α) L(θ_a) + α L(θ_b)] / L(θ(α)))``
  (:func:`pair_connectivity`). Both lie in ``[0, 1]``, are 1 when no point of the path is worse than
  the chord (identical members, one basin) and fall towards chance / endpoint accuracy when the path
  crosses a barrier.
- **Random slice** (Li et al. 2018, "Visualizing the loss landscape of neural nets"):
  ``θ + x d₁ + y d₂`` with Gaussian directions whose every filter is rescaled to the norm of the
  corresponding filter of ``θ`` (:func:`random_directions`, :func:`random_directions_slice`).

``w`` are the trainable parameters (``named_parameters``: weights, biases and BatchNorm affine
parameters). BatchNorm running statistics are buffers, not weights, and are handled in one of
four ways, recorded as ``bn_mode`` on every result:

- ``"reset"`` — a ``bn_batches`` was given: every evaluated network gets running statistics
  recomputed from that data (:func:`recompute_batchnorm_statistics`), the practice of Frankle et
  al. 2020 and Garipov et al. 2018 and the remedy for the "variance collapse" of interpolated
  networks (Jordan et al. 2023, "REPAIR"). One pass over ``bn_batches`` per point: the slow mode.
- ``"interpolated"`` — no ``bn_batches``: the running statistics are combined with the same
  coefficients as the weights (integer buffers such as ``num_batches_tracked`` are taken from the
  first member). Cheap, but the interpolated statistics are not the statistics of the
  interpolated network, which typically inflates barriers (Jordan et al. 2023).
- ``"fixed"`` — random slices without ``bn_batches``: the member's own statistics at every point, as
  Li et al. 2018 do.
- ``"none"`` — the network has no BatchNorm layer with running statistics.

Points without a statistics pass are evaluated ``chunk_size`` at a time. One point (the default)
is loaded into a private copy of the network and run with plain forward passes. Larger chunks run
one batched forward, ``torch.func.vmap`` over ``torch.func.functional_call`` on the stacked weights
of the chunk: memory grows as ``chunk_size`` copies of the weights plus ``chunk_size`` times the
activations of one batch. Batching pays where per-call overhead dominates (fully connected nets,
small models on a GPU); on a CPU, vmap turns convolutions into grouped convolutions that run about
half as fast, so keep ``chunk_size=1`` for CNNs there. The data is read once per chunk, so
``batches`` (and ``bn_batches``) must be re-iterable (a ``DataLoader`` or a list of batches, not a
generator). With ``chunk_size > 1``, ``loss_fn`` is called under ``vmap`` and must therefore be
built from torch operations (``F.cross_entropy`` is). Everything runs in eval mode, in the dtype
and on the device of the first model, without gradients; floating inputs are cast to the model's
dtype. The given models are never modified: evaluation works on a copy.
Results are small tensors on the CPU: coordinates in float64, losses and accuracies in the model's
dtype. Accuracy is NaN when the outputs are not ``(N, C)`` class scores for integer targets.

Calling convention: ``f(model_a, model_b, loss_fn, batches, *, ...)`` (members first, then the loss,
then the data); the older order ``(model_a, model_b, loader, loss_fn)`` and the keywords ``loader``
and ``bn_loader`` still work for one release, with a ``DeprecationWarning``.

Example (least squares, whose loss at a point of the path is known exactly, and convex in the
weights, so the barrier is 0)::

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> X = torch.randn(20, 3, dtype=torch.float64); y = torch.randn(20, dtype=torch.float64)
    >>> a, b = torch.nn.Linear(3, 1).double(), torch.nn.Linear(3, 1).double()
    >>> mse = lambda out, target: ((out.squeeze(1) - target) ** 2).mean()
    >>> path = interpolate(a, b, mse, [(X, y)], alphas=3)
    >>> w, c = (a.weight + b.weight) / 2, (a.bias + b.bias) / 2
    >>> bool(torch.isclose(path.loss[1], ((X @ w.T + c).squeeze(1) - y).pow(2).mean()))
    True
    >>> abs(loss_barrier(a, b, mse, [(X, y)]).value) < 1e-12
    True
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from landscape._checks import (_deprecated_alias, batch_pair, check_loss_and_batches_order, finite_float, legacy_positionals,
                               model_dtype_device, positive_int, require_model)
from landscape.errors import InputError

__all__ = [
    "Barrier",
    "BarrierMatrix",
    "Interpolation",
    "PairConnectivity",
    "Plane",
    "PlaneBasis",
    "barrier_matrix",
    "evenly_spaced_alphas",
    "interpolate",
    "interpolated_model",
    "loss_barrier",
    "pair_connectivity",
    "plane",
    "random_directions",
    "random_directions_slice",
    "recompute_batchnorm_statistics",
]

LossFunction = Callable[[Tensor, Tensor], Tensor]
Batches = Iterable


# ----------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Interpolation:
    """Loss and accuracy along ``θ(α) = (1 − α) θ_a + α θ_b``.

    ``alphas`` ``(K,)`` float64; ``loss`` and ``accuracy`` ``(K,)`` in the model's dtype;
    ``bn_mode`` is ``"reset"``, ``"interpolated"`` or ``"none"`` (see the module docstring).
    """

    alphas: Tensor
    loss: Tensor
    accuracy: Tensor
    bn_mode: str


@dataclass(frozen=True)
class Barrier:
    """``value = max_α L(θ(α)) − [(1 − α) L(θ_a) + α L(θ_b)]`` over ``interpolation.alphas``,
    reached at ``alpha``."""

    value: float
    alpha: float
    interpolation: Interpolation


@dataclass(frozen=True)
class PairConnectivity:
    """How much of the chord between two members' accuracies (``q``) and losses (``q_loss``) the
    linear path between them keeps at its worst point, reached at ``alpha`` and ``loss_alpha``
    (see :func:`pair_connectivity`); NaN where the path holds a non-finite value."""

    q: float
    alpha: float
    q_loss: float
    loss_alpha: float


@dataclass(frozen=True)
class BarrierMatrix:
    """Loss barriers between every pair of ``M`` members.

    ``value`` ``(M, M)`` float64, symmetric with a zero diagonal; ``alpha[i, j]`` is where the
    barrier of the path from member ``i`` to member ``j`` peaks, so ``alpha[j, i] = 1 − alpha[i, j]``
    (NaN on the diagonal); ``interpolations[(i, j)]`` (``i < j``) is the path from ``i`` to ``j``.
    """

    value: Tensor
    alpha: Tensor
    interpolations: dict[tuple[int, int], Interpolation]


@dataclass(frozen=True)
class PlaneBasis:
    """How a plane's directions were made.

    ``method`` is ``"garipov2018"`` (through three members) or ``"li2018"`` (random directions);
    ``u_norm``, ``v_norm`` are the Euclidean norms of the two directions in weight space and
    ``cosine`` the cosine of the angle between them (1, 1, 0 up to rounding for ``"garipov2018"``;
    for ``"li2018"`` with filter normalization each norm is that of the weight matrices and filters
    of the member, ``‖θ‖`` without biases and BatchNorm parameters). ``parameter_count`` counts
    the weights the plane moves; ``seed`` and ``filter_normalized`` are set for ``"li2018"``.
    """

    method: str
    u_norm: float
    v_norm: float
    cosine: float
    parameter_count: int
    seed: int | None = None
    filter_normalized: bool | None = None


@dataclass(frozen=True)
class Plane:
    """Loss and accuracy on a grid of a two-dimensional slice of weight space.

    ``loss[i, j]`` and ``accuracy[i, j]`` are measured at ``origin + u[i] · û + v[j] · v̂`` (``ij``
    indexing: transpose for ``matplotlib.contourf(u, v, ·)``). ``member_coordinates`` ``(P, 2)``
    places the members in those coordinates (three for :func:`plane`, the origin for
    :func:`random_directions_slice`), and ``member_loss``, ``member_accuracy`` ``(P,)`` are measured
    exactly there. Coordinates are float64, measurements in the model's dtype.
    """

    u: Tensor
    v: Tensor
    loss: Tensor
    accuracy: Tensor
    member_coordinates: Tensor
    basis_info: PlaneBasis
    member_loss: Tensor
    member_accuracy: Tensor
    bn_mode: str


# -------------------------------------------------------------------------------------- public API


@_deprecated_alias(loader="batches", bn_loader="bn_batches")
@legacy_positionals("alphas", "bn_batches", "chunk_size")
def interpolate(model_a: nn.Module, model_b: nn.Module, loss_fn: LossFunction, batches: Batches, *,
                alphas: int | Sequence[float] | Tensor = 21, bn_batches: Batches | None = None,
                chunk_size: int = 1) -> Interpolation:
    """Loss and accuracy of ``θ(α) = (1 − α) θ_a + α θ_b`` for each ``α`` (Frankle et al. 2020).

    ``alphas``: a count of evenly spaced values on ``[0, 1]`` (both ends included) or the values
    themselves (values outside ``[0, 1]`` extrapolate the line). With BatchNorm and a ``bn_batches``
    every point gets recomputed running statistics (``bn_mode="reset"``), otherwise the buffers are
    interpolated like the weights (``"interpolated"``). ``chunk_size`` points share one batched
    forward pass (see the module docstring for when that pays; ignored in ``"reset"`` mode, where
    each point needs its own statistics pass).
    """
    require_model(model_a, "model_a"), require_model(model_b, "model_b")
    loss_fn, batches = check_loss_and_batches_order("interpolate", loss_fn, batches)
    coefficients = _alpha_grid(alphas)
    anchors = _anchors([model_a, model_b])
    weights = torch.stack([1.0 - coefficients, coefficients], dim=1)
    loss, accuracy, bn_mode = _evaluate_combinations(
        model_a, anchors, weights, batches, loss_fn, bn_batches, chunk_size, buffers="combined")
    return Interpolation(alphas=coefficients, loss=loss, accuracy=accuracy, bn_mode=bn_mode)


@_deprecated_alias(loader="batches", bn_loader="bn_batches")
@legacy_positionals("alphas", "bn_batches", "chunk_size")
def loss_barrier(model_a: nn.Module, model_b: nn.Module, loss_fn: LossFunction, batches: Batches, *,
                 alphas: int | Sequence[float] | Tensor = 21, bn_batches: Batches | None = None,
                 chunk_size: int = 1) -> Barrier:
    """Loss barrier ``max_α L(θ(α)) − [(1 − α) L(θ_a) + α L(θ_b)]`` (Entezari et al. 2022).

    The maximum is over the ``alphas`` grid on ``[0, 1]``; 0 and 1 are added when missing, since the
    chord needs the endpoint losses. In ``"reset"`` mode the endpoints get recomputed statistics
    too, so the chord and the path are measured alike. See :func:`interpolate` for the arguments.
    """
    require_model(model_a, "model_a"), require_model(model_b, "model_b")
    loss_fn, batches = check_loss_and_batches_order("loss_barrier", loss_fn, batches)
    coefficients = _alpha_grid(alphas)
    if (coefficients < 0).any() or (coefficients > 1).any():
        raise InputError(f"alphas for a loss barrier must lie in [0, 1], got values from "
                         f"{float(coefficients.min())} to {float(coefficients.max())}; "
                         "use interpolate() to look beyond the endpoints.")
    coefficients = torch.unique(torch.cat([coefficients, coefficients.new_tensor([0.0, 1.0])]))
    path = interpolate(model_a, model_b, loss_fn, batches, alphas=coefficients, bn_batches=bn_batches,
                       chunk_size=chunk_size)
    return _barrier_along(path)


def pair_connectivity(path: Interpolation) -> PairConnectivity:
    """The connectivity ``q`` of the linear path between two members, from its accuracies and losses.

    Our reconstruction of Lion et al. 2024's per-pair connectivity ``q_pair`` ("How good is a single
    basin?", AISTATS; Fig. 2 approximates it "through lines" of the linear path, Fig. 3 plots its mean
    ``q̄`` over pairs against accuracy). Their exact formula could not be recovered from the text
    available to us; this one is well defined, 1 for members of one basin and low across a barrier,
    and is ours. On the path's grid of ``α`` (which must hold 0 and 1):

    - ``q = min_α min(1, acc(θ(α)) / [(1 − α) acc(θ_a) + α acc(θ_b)])``: the worst fraction of the
      chord between the endpoints' accuracies that the path keeps (``alpha``: where);
    - ``q_loss = min_α min(1, [(1 − α) L(θ_a) + α L(θ_b)] / L(θ(α)))``: the same with the loss, whose
      excess over its chord is the barrier of Entezari et al. 2022 (``loss_alpha``: where).

    A point no worse than the chord counts 1, so ``0 ≤ q ≤ 1`` without a division by zero (an endpoint
    of accuracy 0 makes the chord 0 there, and no accuracy is worse); the endpoints themselves count
    1, so ``q = 1`` exactly when no point of the path is worse than the chord, e.g. between identical
    members. Between a trained network and a permuted copy of it the path passes near chance accuracy,
    so ``q`` is about chance / the network's accuracy. The chord's ends are the path's own endpoint
    values, so BatchNorm statistics count as the path handled them (``bn_mode``: recomputed at every
    point, endpoints included, or interpolated). Computed in float64; NaN when a value of the path is
    not finite (accuracy is NaN for outputs that are not class scores). Losses must be non-negative
    (cross-entropy, squared error).

    >>> import torch
    >>> path = Interpolation(alphas=torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64),
    ...                      loss=torch.tensor([0.2, 0.5, 0.4], dtype=torch.float64),
    ...                      accuracy=torch.tensor([0.9, 0.6, 0.8], dtype=torch.float64), bn_mode="none")
    >>> result = pair_connectivity(path)  # the chords are 0.85 and 0.3 at α = 0.5
    >>> round(result.q, 6), result.alpha, round(result.q_loss, 6), result.loss_alpha
    (0.705882, 0.5, 0.6, 0.5)
    """
    if not isinstance(path, Interpolation):
        raise InputError(f"pair_connectivity needs an Interpolation (the result of interpolate), got "
                         f"{type(path).__name__}.")
    alphas = torch.as_tensor(path.alphas).detach().cpu().to(torch.float64)
    loss = torch.as_tensor(path.loss).detach().cpu().to(torch.float64)
    accuracy = torch.as_tensor(path.accuracy).detach().cpu().to(torch.float64)
    if not (alphas.dim() == 1 and alphas.shape == loss.shape == accuracy.shape):
        raise InputError(f"the path's alphas, loss and accuracy must be 1-d and of one length, got shapes "
                         f"{tuple(alphas.shape)}, {tuple(loss.shape)} and {tuple(accuracy.shape)}.")
    if not ((alphas == 0.0).any() and (alphas == 1.0).any()) or (alphas < 0).any() or (alphas > 1).any():
        raise InputError("the path's alphas must lie in [0, 1] and include both ends, 0 and 1, whose values "
                         "make the chord; measure it with loss_barrier or interpolate(alphas=count).")
    if (loss < 0).any():
        raise InputError(f"q_loss needs non-negative losses, got {float(loss.min())}; use a loss such as "
                         "cross-entropy or squared error.")
    q, alpha = _kept_fraction(alphas, accuracy, higher_is_better=True)
    q_loss, loss_alpha = _kept_fraction(alphas, loss, higher_is_better=False)
    return PairConnectivity(q=q, alpha=alpha, q_loss=q_loss, loss_alpha=loss_alpha)


def _kept_fraction(alphas: Tensor, values: Tensor, higher_is_better: bool) -> tuple[float, float]:
    """``min_α min(1, path/chord)`` (accuracy) or ``min_α min(1, chord/path)`` (loss), and the first
    ``α`` where it is reached; NaNs when a value is not finite."""
    if not torch.isfinite(values).all():
        return math.nan, math.nan
    chord = (1.0 - alphas) * values[alphas == 0.0][0] + alphas * values[alphas == 1.0][0]
    better, worse = (values, chord) if higher_is_better else (chord, values)
    # where the path is worse than the chord, worse > better >= 0: the division is by a positive number
    below = better < worse
    kept = torch.where(below, better / torch.where(below, worse, torch.ones_like(worse)), torch.ones_like(worse))
    index = int(torch.argmin(kept))
    return float(kept[index]), float(alphas[index])


@_deprecated_alias(loader="batches", bn_loader="bn_batches")
@legacy_positionals("alphas", "bn_batches", "chunk_size")
def barrier_matrix(members: Sequence[nn.Module], loss_fn: LossFunction, batches: Batches, *,
                   alphas: int | Sequence[float] | Tensor = 21, bn_batches: Batches | None = None,
                   chunk_size: int = 1) -> BarrierMatrix:
    """Loss barrier between every pair of members (one path per unordered pair).

    ``value[i, j] = value[j, i]`` is the barrier of the path between members ``i`` and ``j``,
    measured once from ``i`` to ``j`` (``i < j``); see :func:`loss_barrier`.
    """
    for index, member in enumerate(members):
        require_model(member, f"members[{index}]")
    loss_fn, batches = check_loss_and_batches_order("barrier_matrix", loss_fn, batches)
    members = list(members)
    if len(members) < 2:
        raise InputError(f"barrier_matrix needs at least two members, got {len(members)}; "
                         "pass the ensemble's models as a list.")
    _anchors(members)  # one clear error for the first mismatched member, before any work
    count = len(members)
    value = torch.zeros(count, count, dtype=torch.float64)
    alpha = torch.full((count, count), math.nan, dtype=torch.float64)
    interpolations = {}
    for i in range(count):
        for j in range(i + 1, count):
            barrier = loss_barrier(members[i], members[j], loss_fn, batches, alphas=alphas,
                                   bn_batches=bn_batches, chunk_size=chunk_size)
            value[i, j] = value[j, i] = barrier.value
            alpha[i, j], alpha[j, i] = barrier.alpha, 1.0 - barrier.alpha
            interpolations[(i, j)] = barrier.interpolation
    return BarrierMatrix(value=value, alpha=alpha, interpolations=interpolations)


@_deprecated_alias(loader="batches", bn_loader="bn_batches")
@legacy_positionals("grid", "margin", "bn_batches", "chunk_size")
def plane(models: Sequence[nn.Module], loss_fn: LossFunction, batches: Batches, *,
          grid: int | tuple[int, int] = 21, margin: float = 0.2, bn_batches: Batches | None = None,
          chunk_size: int = 1) -> Plane:
    """Loss and accuracy on the plane through three members (Garipov et al. 2018).

    With ``w₁, w₂, w₃`` the members' parameters, ``u = (w₂ − w₁)/‖w₂ − w₁‖`` and ``v`` the
    normalized part of ``w₃ − w₁`` orthogonal to ``u``; the point ``(x, y)`` is ``w₁ + x u + y v``.
    The grid (``grid`` points per axis, or ``(points along u, points along v)``) spans the members'
    coordinates plus ``margin`` times their extent on every side. Buffers follow the weights: a
    point ``w₁ + a(w₂ − w₁) + b(w₃ − w₁)`` gets the same affine combination of the members'
    buffers (``"interpolated"``), or recomputed statistics with a ``bn_batches`` (``"reset"``).
    """
    for index, model in enumerate(models):
        require_model(model, f"models[{index}]")
    loss_fn, batches = check_loss_and_batches_order("plane", loss_fn, batches)
    models = list(models)
    if len(models) != 3:
        raise InputError(f"a plane is spanned by exactly three members, got {len(models)}; "
                         "pass three models (e.g. members[:3]).")
    margin = finite_float("margin (a fraction of the members' extent)", margin, minimum=0)
    columns, rows = _grid_shape(grid)
    anchors = _anchors(models)
    names = [name for name, _ in models[0].named_parameters()]
    first, second, third = ({name: anchor[name] for name in names} for anchor in anchors)

    # Geometry in float64. With d = ‖w₂ − w₁‖, p = ⟨w₃ − w₁, u⟩ and h the height of w₃ over the
    # line, w₁ + x u + y v = w₁ + a (w₂ − w₁) + b (w₃ − w₁) where y = b h and x = a d + b p.
    to_second = _difference(second, first)
    to_third = _difference(third, first)
    distance = math.sqrt(_inner(to_second, to_second))
    if distance == 0.0:
        raise InputError("the first two members have identical parameters, so they span no "
                         "direction; pass three distinct members.")
    projection = _inner(to_third, to_second) / distance
    orthogonal = {name: to_third[name].double() - projection / distance * to_second[name].double()
                  for name in names}
    height = math.sqrt(_inner(orthogonal, orthogonal))
    if height <= 1e-12 * max(distance, math.sqrt(_inner(to_third, to_third))):
        raise InputError("the three members are collinear in weight space, so they span no plane; "
                         "pass three members that are not on one line.")
    cosine = _inner(to_second, orthogonal) / (distance * height)
    del to_second, to_third, orthogonal

    member_coordinates = torch.tensor([[0.0, 0.0], [distance, 0.0], [projection, height]],
                                      dtype=torch.float64)
    low, high = member_coordinates.min(dim=0).values, member_coordinates.max(dim=0).values
    extent = high - low
    u = torch.linspace(float(low[0] - margin * extent[0]), float(high[0] + margin * extent[0]),
                       columns, dtype=torch.float64)
    v = torch.linspace(float(low[1] - margin * extent[1]), float(high[1] + margin * extent[1]),
                       rows, dtype=torch.float64)
    coordinates = torch.cat([torch.cartesian_prod(u, v), member_coordinates])
    along_third = coordinates[:, 1] / height
    along_second = (coordinates[:, 0] - along_third * projection) / distance
    weights = torch.stack([1.0 - along_second - along_third, along_second, along_third], dim=1)

    loss, accuracy, bn_mode = _evaluate_combinations(
        models[0], anchors, weights, batches, loss_fn, bn_batches, chunk_size, buffers="combined")
    grid_points = columns * rows
    basis = PlaneBasis(method="garipov2018", u_norm=1.0, v_norm=1.0, cosine=cosine,
                       parameter_count=sum(tensor.numel() for tensor in first.values()))
    return Plane(u=u, v=v, loss=loss[:grid_points].reshape(columns, rows),
                 accuracy=accuracy[:grid_points].reshape(columns, rows),
                 member_coordinates=member_coordinates, basis_info=basis,
                 member_loss=loss[grid_points:], member_accuracy=accuracy[grid_points:],
                 bn_mode=bn_mode)


def random_directions(model: nn.Module, count: int = 2, seed: int = 0,
                      filter_normalized: bool = True) -> list[dict[str, Tensor]]:
    """``count`` random directions in the parameter space of ``model`` (Li et al. 2018, §4).

    Each weight tensor with two or more dimensions gets Gaussian entries; with
    ``filter_normalized`` every filter (slice along the first dimension: an output channel of a
    convolution, a row of a linear layer) is rescaled to the Euclidean norm of the same filter of
    the model, ``d_{i,j} ← d_{i,j} · ‖θ_{i,j}‖ / ‖d_{i,j}‖``, so the slice moves every filter in
    proportion to its scale, which removes the scale invariance that makes unnormalized slices
    incomparable between networks. Biases and BatchNorm parameters (one-dimensional tensors) get a
    zero direction, the common choice of Li et al.'s code: they stay at the member's values.
    Drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in the model's dtype, so the
    directions do not depend on the device.
    """
    require_model(model)
    count = positive_int("count", count)
    model_dtype_device(model, purpose="to move along")
    generator = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(count):
        direction = {}
        for name, parameter in model.named_parameters():
            weight = parameter.detach()
            if weight.dim() <= 1:
                direction[name] = torch.zeros_like(weight)
                continue
            gaussian = torch.randn(weight.shape, generator=generator, dtype=weight.dtype)
            gaussian = gaussian.to(weight.device)
            if filter_normalized:
                filters = gaussian.flatten(1)
                scale = weight.flatten(1).norm(dim=1, keepdim=True) / filters.norm(dim=1, keepdim=True)
                gaussian = (filters * scale).view_as(weight)
            direction[name] = gaussian
        directions.append(direction)
    return directions


@_deprecated_alias(loader="batches", bn_loader="bn_batches")
@legacy_positionals("grid", "span", "seed", "filter_normalized", "bn_batches", "chunk_size")
def random_directions_slice(model: nn.Module, loss_fn: LossFunction, batches: Batches, *,
                            grid: int | tuple[int, int] = 21, span: float = 1.0, seed: int = 0,
                            filter_normalized: bool = True, bn_batches: Batches | None = None,
                            chunk_size: int = 1) -> Plane:
    """Loss and accuracy on ``θ + x d₁ + y d₂`` for ``x, y ∈ [−span, span]`` (Li et al. 2018).

    ``d₁, d₂ = random_directions(model, 2, seed, filter_normalized)``: filter-normalized Gaussian
    directions, zero on biases and BatchNorm parameters. The member sits at ``(0, 0)`` (on the grid
    when the number of points is odd; always measured as ``member_loss``). BatchNorm statistics stay
    the member's own (``"fixed"``) unless a ``bn_batches`` is given (``"reset"``).
    """
    require_model(model)
    loss_fn, batches = check_loss_and_batches_order("random_directions_slice", loss_fn, batches)
    span = finite_float("span", span, minimum=0, exclusive=True)
    columns, rows = _grid_shape(grid)
    (member,) = _anchors([model])
    first, second = random_directions(model, 2, seed, filter_normalized)
    zero_buffers = {name: torch.zeros_like(member[name]) for name in member if name not in first}
    anchors = [member, {**first, **zero_buffers}, {**second, **zero_buffers}]

    u = torch.linspace(-span, span, columns, dtype=torch.float64)
    v = torch.linspace(-span, span, rows, dtype=torch.float64)
    member_coordinates = torch.zeros(1, 2, dtype=torch.float64)
    coordinates = torch.cat([torch.cartesian_prod(u, v), member_coordinates])
    weights = torch.cat([torch.ones(len(coordinates), 1, dtype=torch.float64), coordinates], dim=1)

    loss, accuracy, bn_mode = _evaluate_combinations(
        model, anchors, weights, batches, loss_fn, bn_batches, chunk_size, buffers="fixed")
    grid_points = columns * rows
    u_norm, v_norm = math.sqrt(_inner(first, first)), math.sqrt(_inner(second, second))
    basis = PlaneBasis(method="li2018", u_norm=u_norm, v_norm=v_norm,
                       cosine=_inner(first, second) / (u_norm * v_norm) if u_norm * v_norm else math.nan,
                       parameter_count=sum(d.numel() for d in first.values() if d.dim() > 1),
                       seed=seed, filter_normalized=filter_normalized)
    return Plane(u=u, v=v, loss=loss[:grid_points].reshape(columns, rows),
                 accuracy=accuracy[:grid_points].reshape(columns, rows),
                 member_coordinates=member_coordinates, basis_info=basis,
                 member_loss=loss[grid_points:], member_accuracy=accuracy[grid_points:],
                 bn_mode=bn_mode)


@_deprecated_alias(bn_loader="bn_batches")
def interpolated_model(model_a: nn.Module, model_b: nn.Module, alpha: float,
                       bn_batches: Batches | None = None) -> nn.Module:
    """A new network (eval mode) with weights ``(1 − α) θ_a + α θ_b``, for measurements beyond loss.

    Buffers are interpolated too (integer ones copied from ``model_a``); with a ``bn_batches`` the
    BatchNorm statistics are then recomputed (:func:`recompute_batchnorm_statistics`). This is the
    network :func:`interpolate` measures at ``alpha``.
    """
    require_model(model_a, "model_a"), require_model(model_b, "model_b")
    alpha = finite_float("alpha", alpha)
    anchors = _anchors([model_a, model_b])
    point = _combine(anchors, torch.tensor([[1.0 - alpha, alpha]], dtype=torch.float64))
    network = copy.deepcopy(model_a).eval()
    _load(network, {name: tensor[0] for name, tensor in point.items()})
    if bn_batches is not None and _batchnorm_layers(network):
        _require_reiterable(bn_batches, "bn_batches")
        _recompute_batchnorm_statistics_(network, bn_batches)
    return network


@_deprecated_alias(bn_loader="bn_batches")
def recompute_batchnorm_statistics(model: nn.Module, bn_batches: Batches) -> nn.Module:
    """A copy of ``model`` (eval mode) whose BatchNorm running statistics are those of ``bn_batches``.

    One pass without gradients with every BatchNorm layer in train mode (other layers, e.g.
    dropout, stay in eval mode), so each layer normalizes with batch statistics as in training and
    the layers after it see what they saw in training. Each layer's running mean and running
    variance become the per-channel mean and unbiased variance of its inputs over *all* samples of
    the pass, ``μ = (1/n) Σ x`` and ``σ² = (1/(n − 1)) Σ (x − μ)²`` (merged across batches exactly
    with Chan et al.'s pairwise update, in float64). This is exact where ``momentum=None`` (the
    cumulative average of ``torch.optim.swa_utils.update_bn``) is not: that averages per-batch
    variances and so drops the spread between batch means, and it weighs batches equally whatever
    their size. ``bn_batches`` yields ``(inputs, targets)`` pairs or bare inputs.
    """
    require_model(model)
    _require_reiterable(bn_batches, "bn_batches")
    model_dtype_device(model, purpose="to measure")
    network = copy.deepcopy(model)
    _recompute_batchnorm_statistics_(network, bn_batches)
    return network


# --------------------------------------------------------------------------------------- internals


def _evaluate_combinations(model: nn.Module, anchors: list[dict[str, Tensor]], weights: Tensor,
                           batches: Batches, loss_fn: LossFunction, bn_batches: Batches | None,
                           chunk_size: int, buffers: str) -> tuple[Tensor, Tensor, str]:
    """Mean loss and accuracy at the points ``Σ_j weights[k, j] · anchors[j]``, ``k < K``.

    ``anchors`` hold every parameter and floating buffer; ``buffers="combined"`` combines the
    buffers like the weights, ``"fixed"`` keeps the first anchor's. Returns ``(loss (K,),
    accuracy (K,), bn_mode)`` on the CPU.
    """
    if not callable(loss_fn):
        raise InputError(f"loss_fn must be callable as loss_fn(outputs, targets), got {loss_fn!r}.")
    positive_int("chunk_size (points per batched forward pass)", chunk_size)
    _require_reiterable(batches, "batches")
    dtype, device = model_dtype_device(model, purpose="to measure")
    network = copy.deepcopy(model).eval()
    batchnorm_layers = _batchnorm_layers(network)
    has_batchnorm = bool(batchnorm_layers)
    weights = weights.to(device=device, dtype=dtype)
    parameter_names = [name for name, _ in network.named_parameters()]

    if has_batchnorm and bn_batches is not None:
        _require_reiterable(bn_batches, "bn_batches")
        losses, accuracies = [], []
        for point in weights:
            state = _combine([{name: anchor[name] for name in parameter_names} for anchor in anchors],
                             point[None])
            _load(network, {name: tensor[0] for name, tensor in state.items()})
            _recompute_batchnorm_statistics_(network, bn_batches)
            loss, accuracy = _mean_loss_and_accuracy(lambda inputs: network(inputs)[None], batches,
                                                     loss_fn, dtype, device)
            losses.append(loss)
            accuracies.append(accuracy)
        return torch.cat(losses), torch.cat(accuracies), "reset"

    varying = set(parameter_names) if buffers == "fixed" else set(anchors[0])
    # Integer buffers (num_batches_tracked) and fixed ones are shared by every point of a chunk.
    constants = {name: tensor.detach() for name, tensor in network.named_buffers() if name not in varying}
    constants.update({name: anchors[0][name] for name in anchors[0] if name not in varying})
    varying_anchors = [{name: anchor[name] for name in anchor if name in varying} for anchor in anchors]

    def evaluate_point(point: dict[str, Tensor], inputs: Tensor) -> Tensor:
        return functional_call(network, (point, constants), (inputs,))

    # Beyond the members (negative weights) a combined variance can drop below zero; BatchNorm
    # would then take the square root of a negative number.
    variances = {f"{prefix}.running_var" if prefix else "running_var"
                 for prefix, module in network.named_modules() if module in batchnorm_layers}
    losses, accuracies = [], []
    for chunk in weights.split(chunk_size):
        stacked = _combine(varying_anchors, chunk)
        for name in variances & stacked.keys():
            stacked[name] = stacked[name].clamp_min(0.0)
        if len(chunk) == 1:
            # A lone point goes into our copy: a plain forward has no vmap or functional_call
            # overhead, and plain convolutions beat vmap's grouped ones on a CPU.
            _load(network, {name: tensor[0] for name, tensor in stacked.items()})
            forward = lambda inputs: network(inputs)[None]  # noqa: E731
        else:
            forward = lambda inputs: vmap(evaluate_point, in_dims=(0, None))(stacked, inputs)  # noqa: E731
        loss, accuracy = _mean_loss_and_accuracy(forward, batches, loss_fn, dtype, device)
        losses.append(loss)
        accuracies.append(accuracy)
        del stacked
    mode = ("fixed" if buffers == "fixed" else "interpolated") if has_batchnorm else "none"
    return torch.cat(losses), torch.cat(accuracies), mode


def _mean_loss_and_accuracy(forward: Callable[[Tensor], Tensor], batches: Batches,
                            loss_fn: LossFunction, dtype: torch.dtype,
                            device: torch.device) -> tuple[Tensor, Tensor]:
    """Sample-weighted mean of ``loss_fn`` and fraction of correct ``argmax`` over all batches,
    for the ``K`` networks whose stacked outputs ``(K, n, ...)`` ``forward`` returns."""
    total_loss = total_correct = None
    samples = 0
    classifies = True
    with torch.no_grad():
        for batch in batches:
            inputs, targets = batch_pair(batch, "batches")
            inputs, targets = _to_model(inputs, dtype, device), targets.to(device)
            outputs = forward(inputs)
            if outputs.shape[0] == 1:  # vmap would route loss_fn through slow decompositions
                losses = loss_fn(outputs[0], targets)[None]
            else:
                losses = vmap(loss_fn, in_dims=(0, None))(outputs, targets)
            if losses.shape != outputs.shape[:1]:
                raise InputError(f"loss_fn returned shape {tuple(losses.shape[1:])} per network but "
                                 "must return the batch's mean loss, a scalar; use reduction='mean'.")
            count = targets.shape[0]
            classifies = classifies and outputs.dim() == 3 and targets.dim() == 1 \
                and not targets.is_floating_point() and outputs.shape[1] == count
            correct = ((outputs.argmax(dim=-1) == targets).sum(dim=-1) if classifies
                       else torch.zeros(outputs.shape[0], device=device, dtype=torch.long))
            losses = losses.to(_accumulator_dtype(device)) * count
            total_loss = losses if total_loss is None else total_loss + losses
            total_correct = correct if total_correct is None else total_correct + correct
            samples += count
    if samples == 0:
        raise InputError("batches yielded no samples; pass a batches with at least one "
                         "(inputs, targets) batch.")
    loss = (total_loss / samples).to(dtype).cpu()
    accuracy = (total_correct.cpu().to(torch.float64) / samples).to(dtype)
    return loss, accuracy if classifies else torch.full_like(accuracy, math.nan)


def _recompute_batchnorm_statistics_(network: nn.Module, bn_batches: Batches) -> None:
    """Set every BatchNorm layer's running statistics of ``network`` (in place) to the exact mean
    and unbiased variance of its inputs over one train-mode pass over ``bn_batches``."""
    layers = _batchnorm_layers(network)
    if not layers:
        return
    dtype, device = model_dtype_device(network, purpose="to measure")
    accumulator = _accumulator_dtype(device)
    moments = {}

    def record(layer: nn.Module, arguments: tuple) -> None:
        # Chan et al.'s merge of (count, mean, sum of squared deviations) keeps the sum exact-ish.
        inputs = arguments[0].detach()
        reduce = [0, *range(2, inputs.dim())]
        count = inputs.numel() // inputs.shape[1]
        batch_mean = inputs.mean(dim=reduce, keepdim=True)
        squares = (inputs - batch_mean).square().sum(dim=reduce).to(accumulator)
        mean = batch_mean.reshape(-1).to(accumulator)
        if layer not in moments:
            moments[layer] = (count, mean, squares)
            return
        seen, seen_mean, seen_squares = moments[layer]
        total = seen + count
        delta = mean - seen_mean
        moments[layer] = (total, seen_mean + delta * (count / total),
                          seen_squares + squares + delta.square() * (seen * count / total))

    network.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    batches = 0
    try:
        with torch.no_grad():
            for batch in bn_batches:
                inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
                network(_to_model(inputs, dtype, device))
                batches += 1
    finally:
        for hook in hooks:
            hook.remove()
        network.eval()
    if batches == 0:
        raise InputError("bn_batches yielded no batches; pass data to recompute the BatchNorm "
                         "statistics from, or bn_batches=None to interpolate them.")
    with torch.no_grad():
        for layer in layers:
            count, mean, squares = moments[layer]
            if count < 2:
                raise InputError("bn_batches gave BatchNorm a single value per channel; the variance "
                                 "needs at least two samples.")
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(squares / (count - 1))
            layer.num_batches_tracked.fill_(batches)


def _anchors(models: Sequence[nn.Module]) -> list[dict[str, Tensor]]:
    """Every member's parameters and floating buffers, by name, on the first member's device;
    raise :class:`InputError` unless all members share names, shapes and dtypes."""
    for index, model in enumerate(models):
        require_model(model, f"members[{index}]")
    _, device = model_dtype_device(models[0], purpose="to measure")

    def tensors(model: nn.Module) -> dict[str, Tensor]:
        return {**dict(model.named_parameters()), **dict(model.named_buffers())}

    reference = tensors(models[0])
    for index, model in enumerate(models[1:], start=1):
        other = tensors(model)
        missing, extra = sorted(reference.keys() - other.keys()), sorted(other.keys() - reference.keys())
        if missing or extra:
            raise InputError(f"member {index} does not share the architecture of member 0: "
                             f"missing {missing[:5]}, unexpected {extra[:5]}; members must be the same "
                             "network (strip a DataParallel 'module.' prefix when loading).")
        for name, tensor in reference.items():
            if other[name].shape != tensor.shape or other[name].dtype != tensor.dtype:
                raise InputError(f"member {index} does not share the architecture of member 0: "
                                 f"'{name}' is {tuple(other[name].shape)} {other[name].dtype} there but "
                                 f"{tuple(tensor.shape)} {tensor.dtype} in member 0; build every member "
                                 "with the same width and dtype.")
    return [{name: tensor.detach().to(device)
             for name, tensor in tensors(model).items() if tensor.is_floating_point()}
            for model in models]


def _combine(anchors: list[dict[str, Tensor]], weights: Tensor) -> dict[str, Tensor]:
    """``Σ_j weights[:, j] · anchors[j]`` for every name, stacked: ``(chunk, *shape)``.

    Summing weighted anchors (not ``θ_a + α(θ_b − θ_a)``) makes a weight row ``(1, 0, …)`` give an
    anchor back exactly, so endpoints and members reproduce their own losses bit for bit.
    """
    combined = {}
    for name in anchors[0]:
        anchor_weights = weights.to(device=anchors[0][name].device, dtype=anchors[0][name].dtype)
        shape = (-1,) + (1,) * anchors[0][name].dim()
        total = anchor_weights[:, 0].reshape(shape) * anchors[0][name]
        for j in range(1, len(anchors)):
            total = total + anchor_weights[:, j].reshape(shape) * anchors[j][name]
        combined[name] = total
    return combined


def _barrier_along(path: Interpolation) -> Barrier:
    """``max_α L(α) − [(1 − α) L(0) + α L(1)]`` over a path whose alphas include 0 and 1."""
    alphas, loss = path.alphas, path.loss.to(torch.float64)
    chord = (1.0 - alphas) * loss[alphas == 0.0][0] + alphas * loss[alphas == 1.0][0]
    excess = loss - chord
    peak = int(torch.argmax(excess))
    return Barrier(value=float(excess[peak]), alpha=float(alphas[peak]), interpolation=path)


def evenly_spaced_alphas(count: int) -> Tensor:
    """``α_i = i / (count − 1)`` for ``i = 0 … count − 1``, float64: each the double nearest the
    fraction (Python's division rounds correctly), hence the same on every machine, and a grid shares
    its points exactly with a finer one (``i/(n − 1) = 2i/(2n − 2)``). ``torch.linspace`` is not:
    its last bits depend on the CPU's vector kernels (of 21 points, the 0.55 of the AVX2 kernel is an
    ulp below that of the generic one).

    >>> evenly_spaced_alphas(21)[11].item(), evenly_spaced_alphas(41)[22].item()
    (0.55, 0.55)
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise InputError(f"alphas={count!r} points cannot cover [0, 1]; pass a count of at least 2.")
    return torch.tensor([i / (count - 1) for i in range(count)], dtype=torch.float64)


def _alpha_grid(alphas: int | Sequence[float] | Tensor) -> Tensor:
    if isinstance(alphas, bool):
        raise InputError(f"alphas must be a count or a sequence of numbers, got {alphas!r}.")
    if isinstance(alphas, int):
        return evenly_spaced_alphas(alphas)
    try:
        grid = torch.as_tensor(alphas, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"alphas must be a count or a sequence of numbers: {error}") from None
    if grid.dim() != 1 or grid.numel() == 0 or not torch.isfinite(grid).all():
        raise InputError(f"alphas must be a non-empty one-dimensional sequence of finite numbers, "
                         f"got shape {tuple(grid.shape)}.")
    return grid


def _grid_shape(grid: int | tuple[int, int]) -> tuple[int, int]:
    counts = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if len(counts) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 2
                                   for c in counts):
        raise InputError(f"grid must be a count >= 2 per axis or a pair of such counts, got {grid!r}.")
    return counts


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums over many batches, except on Apple's MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _batchnorm_layers(network: nn.Module) -> list[_BatchNorm]:
    return [m for m in network.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _load(network: nn.Module, state: dict[str, Tensor]) -> None:
    tensors = {**dict(network.named_parameters()), **dict(network.named_buffers())}
    with torch.no_grad():
        for name, value in state.items():
            tensors[name].copy_(value)


def _difference(minuend: dict[str, Tensor], subtrahend: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: minuend[name] - subtrahend[name] for name in minuend}


def _inner(first: dict[str, Tensor], second: dict[str, Tensor]) -> float:
    """``⟨first, second⟩`` over all tensors, accumulated in float64."""
    return float(sum((first[name].double() * second[name].double()).sum() for name in first))


def _require_reiterable(batches: Batches, name: str) -> None:
    try:
        iterator = iter(batches)
    except TypeError:
        raise InputError(f"{name} must be an iterable of (inputs, targets) batches, got "
                         f"{type(batches).__name__}.") from None
    if iterator is batches:
        raise InputError(f"{name} is a one-shot iterator, but it is read once per group of points; "
                         "pass a DataLoader or a list of batches instead.")




def _to_model(inputs: object, dtype: torch.dtype, device: torch.device) -> object:
    if not isinstance(inputs, Tensor):
        return inputs
    return inputs.to(device=device, dtype=dtype if inputs.is_floating_point() else None)
