"""The perturbation balls of landscape.perturbation: projections onto the l2 ball, the l∞ box and the
adaptive ellipsoid (against scipy and the KKT conditions), ascent steps and random points."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.optimize import minimize

from landscape.perturbation import PerturbationBall, project_onto_ellipsoid


DOUBLE = torch.float64


def test_zero_semi_axes_are_fixed_by_the_projections():
    semi_axes = {"w": torch.tensor([0.0, 1.0, 2.0, 0.0], dtype=DOUBLE)}
    points = {"w": torch.tensor([[3.0, 4.0, 0.0, -1.0], [5.0, 0.1, 0.1, 0.0]], dtype=DOUBLE)}
    projected = project_onto_ellipsoid(points, semi_axes)["w"]
    assert torch.isfinite(projected).all()
    assert (projected[:, [0, 3]] == 0).all()
    # the movable coordinates are projected as a problem of their own
    alone = project_onto_ellipsoid({"w": points["w"][:, 1:3]}, {"w": semi_axes["w"][1:3]})["w"]
    torch.testing.assert_close(projected[:, 1:3], alone, rtol=0, atol=1e-14)
    ball = PerturbationBall(rho=0.5, norm="l2", scale=semi_axes)
    rescaled = ball.project(points)["w"]
    assert (rescaled[:, [0, 3]] == 0).all() and torch.isfinite(rescaled).all()


# ------------------------------------------------------------------------------------------------
# Projections
# ------------------------------------------------------------------------------------------------

def scipy_projection(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    constraint = {"type": "ineq", "fun": lambda d: 1 - ((d / s) ** 2).sum(), "jac": lambda d: -2 * d / s ** 2}
    found = minimize(lambda d: 0.5 * ((d - x) ** 2).sum(), np.zeros_like(x), jac=lambda d: d - x,
                     constraints=[constraint], method="SLSQP", options={"ftol": 1e-15, "maxiter": 500})
    return found.x


def test_ellipsoid_projection_matches_scipy_and_satisfies_kkt():
    generator = torch.Generator().manual_seed(0)
    s = torch.rand(6, generator=generator, dtype=DOUBLE) * 2 + 0.05
    x = torch.randn(5, 6, generator=generator, dtype=DOUBLE) * 3
    x[0] = 0.2 * s / math.sqrt(6)  # inside
    d = project_onto_ellipsoid({"w": x}, {"w": s})["w"]
    for row in range(5):
        np.testing.assert_allclose(d[row].numpy(), scipy_projection(x[row].numpy(), s.numpy()), atol=1e-6)
    for row in range(1, 5):
        assert ((d[row] / s) ** 2).sum().item() == pytest.approx(1.0, abs=1e-12)
        # KKT: x − d = μ · d / s² with one μ ≥ 0 for every coordinate
        normal = d[row] / s ** 2
        mu = ((x[row] - d[row]) @ normal / (normal @ normal)).item()
        assert mu > 0
        torch.testing.assert_close(x[row] - d[row], mu * normal, rtol=1e-10, atol=1e-12)
    assert torch.equal(d[0], x[0])


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=-6, max_value=1),
       st.floats(min_value=0.01, max_value=100))
def test_ellipsoid_projection_is_feasible_idempotent_and_nearest(seed, smallest_exponent, spread):
    generator = torch.Generator().manual_seed(seed)
    s = torch.logspace(smallest_exponent, 1, 8, dtype=DOUBLE)[torch.randperm(8, generator=generator)]
    x = torch.randn(3, 8, generator=generator, dtype=DOUBLE) * spread * s
    d = project_onto_ellipsoid({"w": x}, {"w": s})["w"]
    assert (((d / s) ** 2).sum(1) <= 1 + 1e-12).all()
    assert torch.equal(project_onto_ellipsoid({"w": d}, {"w": s})["w"], d)
    # nearest: no feasible point among many random ones (on the boundary and inside) is closer
    candidates = torch.randn(2000, 8, generator=generator, dtype=DOUBLE)
    candidates = candidates / candidates.norm(dim=1, keepdim=True) * s
    candidates = candidates * torch.rand(2000, 1, generator=generator, dtype=DOUBLE).sqrt().clamp_min(0.9)
    for row in range(3):
        assert (x[row] - d[row]).norm() <= (x[row] - candidates).norm(dim=1).min() * (1 + 1e-12)


def test_points_inside_the_ball_are_unchanged_by_every_projection():
    scale = {"a": torch.tensor([0.5, 2.0], dtype=DOUBLE), "b": torch.tensor([[1.0, 3.0]], dtype=DOUBLE)}
    inside = {"a": torch.tensor([[0.01, -0.1]], dtype=DOUBLE), "b": torch.tensor([[[0.02, 0.2]]], dtype=DOUBLE)}
    for norm in ("l2", "linf"):
        for ball in (PerturbationBall(0.3, norm, scale), PerturbationBall(0.3, norm, None)):
            for projected in (ball.project(inside), ball.project_euclidean(inside)):
                for name in inside:
                    assert torch.equal(projected[name], inside[name])


def test_ascent_step_maximizes_a_linear_function_over_the_ball_of_its_size():
    generator = torch.Generator().manual_seed(4)
    scale = {"a": torch.rand(4, generator=generator, dtype=DOUBLE),
             "b": torch.rand(2, 3, generator=generator, dtype=DOUBLE)}
    gradient = {name: torch.randn(2, *value.shape, generator=generator, dtype=DOUBLE) for name, value in scale.items()}
    flat_g = torch.cat([gradient["a"], gradient["b"].flatten(1)], 1)
    flat_t = torch.cat([scale["a"], scale["b"].flatten()])
    for norm, dual in (("l2", (flat_g * flat_t).norm(dim=1)), ("linf", (flat_g.abs() * flat_t).sum(1))):
        ball = PerturbationBall(1.0, norm, scale)
        size = torch.tensor([1.0, 0.3], dtype=DOUBLE)
        step = ball.ascent_step(gradient, size)
        flat_step = torch.cat([step["a"], step["b"].flatten(1)], 1)
        torch.testing.assert_close((flat_g * flat_step).sum(1), dual * size)
        torch.testing.assert_close(ball.size(step), size)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_random_points_lie_in_the_ball(norm):
    scale = {"w": torch.tensor([0.0, 0.5, 2.0, 1e-3], dtype=DOUBLE)}
    ball = PerturbationBall(0.7, norm, scale)
    points = ball.random_point(500, scale, torch.Generator().manual_seed(0))
    assert (ball.size(points) <= 0.7).all() and (points["w"][:, 0] == 0).all()
    assert ball.size(points).max() > 0.5  # spread out, not stuck at the centre
