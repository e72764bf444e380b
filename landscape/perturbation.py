"""The perturbation set of sharpness: the ρ-ball ``{ε : ‖T⁻¹ε‖_p ≤ ρ}`` in weight space.

Andriushchenko et al. (ICML 2023, eq. 1–2; SharpBalance eq. 3, 9) measure sharpness over
perturbations ``ε`` of the weights ``θ`` that lie in a ball of radius ρ in a *scaled* norm:
``T = diag(|θ|)`` for adaptive sharpness (Kwon et al. 2021), ``T = I`` for standard sharpness,
and ``p ∈ {2, ∞}``. For the adaptive ℓ2 ball this is the ellipsoid ``Σ_i ε_i² / (ρ|θ_i|)² ≤ 1``,
for the adaptive ℓ∞ ball the box ``|ε_i| ≤ ρ|θ_i|``.

A weight that is exactly 0 has ``T_ii = 0``: its semi-axis is 0, so the coordinate cannot move.
Every operation below keeps such coordinates at exactly 0 and never divides by them (the
reference code's scaled norm turns NaN there and its projection is then silently skipped).

A perturbation is a dict ``{parameter name: tensor of shape (B, *parameter.shape)}``: ``B``
independent perturbations (one per batch in m-sharpness), all handled at once. Norms and
projections act on each of the ``B`` perturbations as one vector over all parameters.

Two projections are offered, because two geometries are in use:

- :meth:`PerturbationBall.project` — the projection in the ball's own (scaled) metric
  ``‖T⁻¹·‖₂``: rescale ``ε ← ε · min(1, ρ/‖T⁻¹ε‖)`` (ℓ2) or clamp to ``±ρT`` (ℓ∞). With
  :meth:`PerturbationBall.ascent_step` (steepest ascent in the same metric, ``T²g/‖Tg‖₂``)
  this is projected gradient ascent on ``u = T⁻¹ε`` over the plain ball ``‖u‖ ≤ ρ``, whose fixed
  points are exactly the KKT points of ``max gᵀε s.t. ‖T⁻¹ε‖ ≤ ρ``.
- :meth:`PerturbationBall.project_euclidean` — the Euclidean projection
  ``argmin_{d in ball} ‖d − x‖₂``, what the reference code approximates for the adaptive ℓ2
  ellipsoid by an uncapped bisection. Here it is solved exactly (see
  :func:`project_onto_ellipsoid`). It equals :meth:`project` except for the adaptive ℓ2 ball.

Example (one perturbation of norm 5 projected onto the unit balls; the ℓ2 projection rescales it,
the ℓ∞ one clamps it)::

    >>> import torch
    >>> point = {"w": torch.tensor([[3.0, 4.0]], dtype=torch.float64)}   # a batch of one
    >>> torch.allclose(PerturbationBall(rho=1.0, norm="l2").project(point)["w"], point["w"] / 5)
    True
    >>> PerturbationBall(rho=1.0, norm="linf").project(point)["w"].tolist()
    [[1.0, 1.0]]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from landscape.checks import finite_float, norm_name

Perturbation = dict[str, torch.Tensor]


def per_batch(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View ``(B,)`` values so that they broadcast against a ``(B, *shape)`` tensor."""
    return values.reshape(values.shape + (1,) * (like.dim() - 1))


def batched_where(condition: torch.Tensor, chosen: Perturbation, other: Perturbation) -> Perturbation:
    """Per batch ``b``: ``chosen`` where ``condition[b]``, else ``other`` (no copy when all agree)."""
    if bool(condition.all()):
        return chosen
    if not bool(condition.any()):
        return other
    return {name: torch.where(per_batch(condition, value), value, other[name]) for name, value in chosen.items()}


def _safe_divide(value: torch.Tensor, divisor: torch.Tensor, movable: torch.Tensor) -> torch.Tensor:
    """``value / divisor`` where ``movable`` (there ``divisor > 0``), 0 elsewhere; never divides by 0."""
    return torch.where(movable, value / torch.where(movable, divisor, 1.0), 0.0)


def squared_norm(perturbation: Perturbation, reference: torch.Tensor) -> torch.Tensor:
    """``Σ_i x_i²`` over all parameters, per batch: shape ``(B,)``."""
    total = torch.zeros(reference.shape[0], dtype=reference.dtype, device=reference.device)
    for value in perturbation.values():
        total = total + torch.linalg.vector_norm(value.flatten(1), dim=1).pow(2)
    return total


@dataclass(frozen=True, eq=False)
class PerturbationBall:
    """The set ``{ε : ‖T⁻¹ε‖_p ≤ ρ}``; ``scale`` holds ``T`` per parameter (``|θ|``), ``None`` for ``I``.

    The per-parameter tensors ``T⁻¹``, ``T²`` and ``±ρT`` are computed once; every operation on a
    perturbation is a few fused passes over it (they run on ``B`` copies of the weights).
    """

    rho: float
    norm: str
    scale: dict[str, torch.Tensor] | None = None

    def __post_init__(self):
        object.__setattr__(self, "norm", norm_name(self.norm))
        object.__setattr__(self, "rho", finite_float("rho", self.rho, minimum=0))
        if self.scale is None:
            return
        movable = {name: t > 0 for name, t in self.scale.items()}
        # 1/|θ| for movable weights; a weight so tiny that 1/|θ| overflows counts as immobile (its
        # steps, of size ∝ |θ|, vanish anyway)
        inverse = {name: torch.nan_to_num(_safe_divide(torch.ones_like(t), t, movable[name]), posinf=0.0)
                   for name, t in self.scale.items()}
        derived = dict(_inverse_scale=inverse, _squared_scale={name: t * t for name, t in self.scale.items()},
                       _upper={name: self.rho * t for name, t in self.scale.items()},
                       _lower={name: -self.rho * t for name, t in self.scale.items()},
                       _movable=movable if any(not bool(m.all()) for m in movable.values()) else None)
        for key, value in derived.items():
            object.__setattr__(self, key, value)

    @classmethod
    def around(cls, center: dict[str, torch.Tensor], rho: float, norm: str, adaptive: bool) -> "PerturbationBall":
        """The ball of adaptive (``T = diag(|θ|)``) or standard (``T = I``) sharpness around ``θ = center``."""
        scale = {name: value.detach().abs() for name, value in center.items()} if adaptive else None
        return cls(rho=float(rho), norm=norm, scale=scale)

    # -- the scaled coordinates u = T⁻¹ε ------------------------------------------------------

    def stretch(self, scaled: Perturbation) -> Perturbation:
        """``ε = T u``: from scaled coordinates back to weights (coordinates with ``T_ii = 0`` become 0)."""
        if self.scale is None:
            return scaled
        return {name: value * self.scale[name] for name, value in scaled.items()}

    def scaled(self, perturbation: Perturbation) -> Perturbation:
        """``u = T⁻¹ε``, with ``u_i = 0`` where ``T_ii = 0`` (such coordinates never move)."""
        if self.scale is None:
            return perturbation
        return {name: value * self._inverse_scale[name] for name, value in perturbation.items()}

    def size(self, perturbation: Perturbation) -> torch.Tensor:
        """``‖T⁻¹ε‖_p`` per batch, shape ``(B,)``."""
        scaled = self.scaled(perturbation)
        reference = next(iter(perturbation.values()))
        if self.norm == "l2":
            return squared_norm(scaled, reference).sqrt()
        size = torch.zeros(reference.shape[0], dtype=reference.dtype, device=reference.device)
        for value in scaled.values():
            size = torch.maximum(size, torch.linalg.vector_norm(value.flatten(1), ord=math.inf, dim=1))
        return size

    # -- projections -----------------------------------------------------------------------

    def project(self, perturbation: Perturbation) -> Perturbation:
        """Projection onto the ball in its own metric ``‖T⁻¹·‖``: rescale (ℓ2) or clamp to ``±ρT`` (ℓ∞).

        Points inside are returned unchanged; coordinates with ``T_ii = 0`` become 0.
        """
        if not perturbation:
            return perturbation
        if self.norm == "linf":
            if self.scale is None:
                return {name: value.clamp(-self.rho, self.rho) for name, value in perturbation.items()}
            return {name: torch.clamp(value, self._lower[name], self._upper[name])
                    for name, value in perturbation.items()}
        size = self.size(perturbation)
        outside = size > self.rho
        if not bool(outside.any()) and (self.scale is None or self._movable is None):
            return perturbation
        factor = torch.where(outside, self.rho / size.clamp_min(torch.finfo(size.dtype).tiny), 1.0)
        projected = {name: value * per_batch(factor, value) for name, value in perturbation.items()}
        if self.scale is not None and self._movable is not None:
            projected = {name: value.masked_fill_(~self._movable[name], 0.0) for name, value in projected.items()}
        return projected

    def project_euclidean(self, perturbation: Perturbation, max_iterations: int = 100) -> Perturbation:
        """Euclidean projection ``argmin_{d in ball} ‖d − x‖₂``; exact (see :func:`project_onto_ellipsoid`)."""
        if not perturbation or self.norm == "linf" or self.scale is None:
            return self.project(perturbation)  # box clamp and sphere rescale are Euclidean projections
        semi_axes = {name: self.rho * scale for name, scale in self.scale.items()}
        return project_onto_ellipsoid(perturbation, semi_axes, max_iterations=max_iterations)

    # -- steps and random points -----------------------------------------------------------

    def ascent_step(self, gradient: Perturbation, step_size: torch.Tensor) -> Perturbation:
        """The steepest-ascent step of size ``η`` (per batch) in the ball's norm.

        ℓ2: ``η T²g / ‖Tg‖₂`` (maximizes ``gᵀs`` subject to ‖T⁻¹s‖₂ ≤ η; ASAM's direction);
        ℓ∞: ``η T·sign(g)`` (maximizes ``gᵀs`` subject to ‖T⁻¹s‖∞ ≤ η). A zero gradient gives a
        zero step.
        """
        if self.norm == "linf":
            if self.scale is None:
                return {name: value.sign().mul_(per_batch(step_size, value)) for name, value in gradient.items()}
            return {name: value.sign().mul_(self.scale[name]).mul_(per_batch(step_size, value))
                    for name, value in gradient.items()}
        reference = next(iter(gradient.values()))
        if self.scale is None:
            step = gradient
            length = squared_norm(gradient, reference).sqrt()
        else:
            step = {name: value * self._squared_scale[name] for name, value in gradient.items()}
            # ‖Tg‖² = Σ g·(T²g): batched dot products, without forming Tg
            length = sum(torch.bmm(value.flatten(1).unsqueeze(1), step[name].flatten(1).unsqueeze(2)).flatten()
                         for name, value in gradient.items())
            length = length.clamp_min(0).sqrt()
        factor = step_size / length.clamp_min(torch.finfo(reference.dtype).tiny)
        if self.scale is None:
            return {name: value * per_batch(factor, value) for name, value in step.items()}
        return {name: value.mul_(per_batch(factor, value)) for name, value in step.items()}

    def random_point(self, batch_size: int, like: dict[str, torch.Tensor],
                     generator: torch.Generator | None = None) -> Perturbation:
        """``batch_size`` points drawn uniformly from the ball (movable coordinates only).

        ℓ∞: ``ε = ρ T (2U − 1)``, U uniform on [0, 1]. ℓ2: ``ε = T u`` with u uniform in the
        ρ-ball of the movable coordinates: a Gaussian direction times ``ρ V^{1/d}``, V uniform.
        """
        if not like:
            return {}
        reference = next(iter(like.values()))
        options = dict(dtype=reference.dtype, device=reference.device)
        if self.norm == "linf":
            return self.stretch({
                name: self.rho * (2 * torch.rand((batch_size, *value.shape), generator=generator, **options) - 1)
                for name, value in like.items()})
        direction = {}
        dimension = 0
        for name, value in like.items():
            draw = torch.randn((batch_size, *value.shape), generator=generator, **options)
            if self.scale is not None:
                movable = self.scale[name] > 0
                draw = torch.where(movable, draw, 0.0)
                dimension += int(movable.sum())
            else:
                dimension += value.numel()
            direction[name] = draw
        first = next(iter(direction.values()))
        length = squared_norm(direction, first).sqrt().clamp_min(torch.finfo(reference.dtype).tiny)
        radius = self.rho * torch.rand(batch_size, generator=generator, **options).pow(1.0 / max(dimension, 1))
        return self.project(self.stretch({name: value * per_batch(radius / length, value)
                                          for name, value in direction.items()}))


def project_onto_ellipsoid(points: Perturbation, semi_axes: dict[str, torch.Tensor],
                           max_iterations: int = 100) -> Perturbation:
    """Euclidean projection of each of the ``B`` points onto ``E = {d : Σ_i (d_i/s_i)² ≤ 1}``.

    Mathematics. For ``x`` outside ``E`` the KKT conditions of ``min ½‖d − x‖² s.t. Σ d_i²/s_i² ≤ 1``
    give ``d_i = x_i s_i² / (s_i² + μ)`` (i.e. ``x_i / (1 + μ/s_i²)``) with ``μ > 0`` the root of
    ``q(μ) = 1`` where ``q(μ)² = Σ_i u_i² s_i⁴/(s_i² + μ)²`` and ``u = x/s``. This is the
    trust-region secular equation; ``1/q`` is concave and increasing in ``μ`` (Moré & Sorensen,
    1983), so Newton's method on ``1/q(μ) = 1`` started at ``μ = 0`` increases monotonically to
    the root without overshooting. It is safeguarded by the bracket ``[0, ‖x⊙s‖₂]`` (``q ≤ 1`` at
    the right end) with bisection should rounding push an iterate out, stops when
    ``|q − 1| ≤ 8·eps`` of the dtype or after ``max_iterations`` (then at most the last rounding
    differs), and the result is rescaled by ``1/max(1, q)`` so that it is feasible to the last bit.

    Coordinates with ``s_i = 0`` are fixed at ``d_i = 0``; points inside ``E`` are returned
    unchanged (apart from those coordinates). ``semi_axes[name]`` has the parameter's shape,
    ``points[name]`` a leading batch dimension.
    """
    if not points:
        return points
    reference = next(iter(points.values()))
    dtype, device, batch = reference.dtype, reference.device, reference.shape[0]
    tolerance = 8 * torch.finfo(dtype).eps

    movable = {name: s > 0 for name, s in semi_axes.items()}
    squared_axes = {name: s.pow(2) for name, s in semi_axes.items()}
    scaled = {name: _safe_divide(x, semi_axes[name], movable[name]) for name, x in points.items()}

    def secular(mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(μ)`` and ``Σ_i u_i² s_i⁴/(s_i² + μ)³`` (so that ``dq/dμ = −that/q``)."""
        norm_squared = torch.zeros(batch, dtype=dtype, device=device)
        derivative = torch.zeros(batch, dtype=dtype, device=device)
        for name, u in scaled.items():
            a = squared_axes[name]
            denominator = a + per_batch(mu, u)
            term = (u * _safe_divide(a, denominator, movable[name])).pow(2)
            norm_squared = norm_squared + term.flatten(1).sum(1)
            derivative = derivative + _safe_divide(term, denominator, movable[name]).flatten(1).sum(1)
        return norm_squared.sqrt(), derivative

    mu = torch.zeros(batch, dtype=dtype, device=device)
    q, derivative = secular(mu)
    outside = q > 1
    upper = squared_norm({n: points[n] * semi_axes[n] for n in points}, reference).sqrt()
    lower = torch.zeros_like(mu)
    for _ in range(max_iterations):
        active = outside & ((q - 1).abs() > tolerance)
        if not bool(active.any()):
            break
        lower = torch.where(active & (q > 1), mu, lower)
        upper = torch.where(active & (q < 1), mu, upper)
        # Newton on 1/q(μ) = 1: μ ← μ + (q − 1)·q² / Σ u² s⁴/(s² + μ)³
        newton = mu + (q - 1) * q.pow(2) / derivative.clamp_min(torch.finfo(dtype).tiny)
        safe = (newton > lower) & (newton < upper)
        mu = torch.where(active, torch.where(safe, newton, (lower + upper) / 2), mu)
        q, derivative = secular(mu)

    projected = {}
    for name, x in points.items():
        a = squared_axes[name]
        denominator = a + per_batch(mu, x)
        projected[name] = _safe_divide(x * a, denominator, movable[name])
    # rounding can leave d an ulp outside E: shrink by that ulp so that it is feasible to the last bit
    size = squared_norm({name: _safe_divide(d, semi_axes[name], movable[name]) for name, d in projected.items()},
                        reference).sqrt()
    shrink = torch.where(size > 1, (1 - torch.finfo(dtype).eps) / size, 1.0)
    return {name: torch.where(per_batch(outside, x), projected[name] * per_batch(shrink, x),
                              torch.where(movable[name], x, 0.0))
            for name, x in points.items()}
