"""Theorems 1 and 2 of SharpBalance (landscape.theory): the combinatorics by hand, φ against Monte
Carlo over Gaussian matrices, and the simulation against the closed forms."""
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st

from ensembles.studies.theory import write_theory_table
from landscape.errors import InputError
from landscape.theory import (QuadraticSetting, _mixture_output_variance, draw_problems, narayana, phi, sam_train,
                              simulate_tradeoff, theorem_1, theorem_2, wishart_moment, worst_case_fluctuation)

DOUBLE = torch.float64


# --- combinatorics ---------------------------------------------------------------------------

def test_narayana_rows_by_hand_and_catalan_sums():
    assert [narayana(1, l) for l in range(1, 2)] == [1]
    assert [narayana(3, l) for l in range(1, 4)] == [1, 3, 1]
    assert [narayana(4, l) for l in range(1, 5)] == [1, 6, 6, 1]
    assert [narayana(5, l) for l in range(1, 6)] == [1, 10, 20, 10, 1]
    assert narayana(4, 0) == narayana(4, 5) == narayana(0, 0) == 0
    for m in range(1, 12):
        catalan = math.comb(2 * m, m) // (m + 1)
        assert sum(narayana(m, l) for l in range(1, m + 1)) == catalan


def test_wishart_moments_low_orders_by_hand():
    c = Fraction(7, 3)
    assert wishart_moment(0, c) == 1
    assert wishart_moment(1, c) == c
    # E[W²]: E[W_ii²] = n(2/d² ) + n²/d², E[W_ij²] = n/d²  ->  c² + c (+ c/d, the dropped O(1/d))
    assert wishart_moment(2, c) == c + c**2
    assert wishart_moment(3, c) == c + 3 * c**2 + c**3
    assert wishart_moment(4, c) == c + 6 * c**2 + 6 * c**3 + c**4


def test_phi_small_cases_by_hand():
    eta, rho, c = Fraction(1, 10), Fraction(1, 2), Fraction(2)
    m1, m2, m3, m4 = c, c + c**2, c + 3 * c**2 + c**3, c + 6 * c**2 + 6 * c**3 + c**4
    assert phi(0, 0, eta=eta, rho=rho, ratio=c) == 1
    assert phi(0, 3, eta=eta, rho=rho, ratio=c) == m3
    # B = 1 − ηw − ηρw²
    assert phi(1, 0, eta=eta, rho=rho, ratio=c) == 1 - eta * m1 - eta * rho * m2
    assert phi(1, 1, eta=eta, rho=rho, ratio=c) == m1 - eta * m2 - eta * rho * m3
    # B² = 1 − 2ηw + (η² − 2ηρ)w² + 2η²ρ w³ + η²ρ² w⁴
    assert phi(2, 0, eta=eta, rho=rho, ratio=c) == (1 - 2 * eta * m1 + (eta**2 - 2 * eta * rho) * m2
                                                    + 2 * eta**2 * rho * m3 + eta**2 * rho**2 * m4)
    # floats are read as the decimals they print as
    assert phi(1, 0, eta=0.1, rho=0.5, ratio=2) == phi(1, 0, eta=eta, rho=rho, ratio=c)


@settings(max_examples=25, deadline=None)
@given(i=st.integers(0, 6), j=st.integers(0, 3),
       eta=st.fractions(0, 1, max_denominator=20), rho=st.fractions(0, 2, max_denominator=20),
       ratio=st.fractions(Fraction(1, 4), 8, max_denominator=12))
def test_phi_is_the_moment_functional_of_the_expanded_polynomial(i, j, eta, rho, ratio):
    """Independent route: expand (1 − ηw − ηρw²)^i w^j by convolution, then E[w^m] term by term."""
    coefficients = [Fraction(1)]
    for _ in range(i):
        step = [Fraction(1), -eta, -eta * rho]
        product = [Fraction(0)] * (len(coefficients) + 2)
        for a, x in enumerate(coefficients):
            for b, y in enumerate(step):
                product[a + b] += x * y
        coefficients = product
    expected = sum(x * wishart_moment(m + j, ratio) for m, x in enumerate(coefficients))
    assert phi(i, j, eta=eta, rho=rho, ratio=ratio) == expected


@pytest.mark.parametrize("i, j, rho", [(1, 0, 0.0), (2, 0, 0.0), (4, 0, 0.0), (6, 0, 0.0), (3, 2, 0.05)])
def test_phi_matches_monte_carlo_moments_of_gaussian_matrices(i, j, rho):
    """(1/d) E tr[B^i W^j] over Gaussian A; at ρ = 0 these are the moments of gradient descent's
    B = I − ηW. Tolerance: 4 standard errors plus the O(1/d_in) term the paper drops."""
    n, d, draws, eta = 120, 60, 200, 0.1
    generator = torch.Generator().manual_seed(11)
    A = torch.randn(draws, n, d, generator=generator, dtype=DOUBLE) / math.sqrt(d)
    eigenvalues = torch.linalg.eigvalsh(A.mT @ A)
    samples = ((1 - eta * eigenvalues - eta * rho * eigenvalues**2) ** i * eigenvalues**j).mean(dim=-1)
    estimate, error = float(samples.mean()), float(samples.std() / math.sqrt(draws))
    exact = float(phi(i, j, eta=eta, rho=rho, ratio=Fraction(n, d)))
    assert abs(estimate - exact) <= 4 * error + abs(exact) / d


# --- the simulation's parts --------------------------------------------------------------------

def test_sam_train_matches_the_unrolled_iteration():
    """Theorem 3: θ_k = θ* + B^k (θ0 − θ*), B = I − ηW − ηρW² (matrix power, no loop over steps)."""
    generator = torch.Generator().manual_seed(2)
    d, eta, rho, k = 7, 0.05, 0.3, 6
    A = torch.randn(3, 40, d, generator=generator, dtype=DOUBLE) / math.sqrt(d)
    W = A.mT @ A
    teacher = torch.randn(3, d, 1, generator=generator, dtype=DOUBLE)
    start = torch.randn(3, d, 4, generator=generator, dtype=DOUBLE)
    B = torch.eye(d, dtype=DOUBLE) - eta * W - eta * rho * W @ W
    expected = teacher + torch.linalg.matrix_power(B, k) @ (start - teacher)
    trained = sam_train(start, W, teacher, eta=eta, rho=rho, iterations=k)
    assert float((trained - expected).abs().max()) <= 1e-12 * float(expected.abs().max())


def _trust_region_maximum(W, slope, radius):
    """max ½εᵀWε + εᵀb over ‖ε‖ ≤ ρ0: ε = (μI − W)⁻¹ b with μ > λmax and ‖ε‖ = ρ0 (bisection on μ)."""
    eigenvalues, vectors = torch.linalg.eigh(W)
    beta = vectors.mT @ slope
    low, high = float(eigenvalues[-1]), float(eigenvalues[-1] + beta.norm() / radius + 1)
    for _ in range(200):
        middle = (low + high) / 2
        if float((beta / (middle - eigenvalues)).norm()) > radius:
            low = middle
        else:
            high = middle
    epsilon = beta / (high - eigenvalues)
    return float(0.5 * (eigenvalues * epsilon**2).sum() + (beta * epsilon).sum())


@pytest.mark.parametrize("offset_scale, radius, steps", [
    (1.0, 0.05, 50), (0.01, 0.05, 50), (0.1, 0.5, 50),
    # nearly stationary mean weight: the ascent turns towards the top eigenvector slowly (docs/theory.md)
    (1e-4, 0.05, 2000),
])
def test_projected_ascent_reaches_the_exact_worst_case(offset_scale, radius, steps):
    generator = torch.Generator().manual_seed(5)
    d = 30
    A = torch.randn(300, d, generator=generator, dtype=DOUBLE) / math.sqrt(d)
    W = A.T @ A
    teacher = torch.randn(d, generator=generator, dtype=DOUBLE)
    weights = teacher + offset_scale * torch.randn(d, generator=generator, dtype=DOUBLE)
    found = float(worst_case_fluctuation(W, weights, teacher, radius=radius, steps=steps))
    exact = _trust_region_maximum(W, W @ (weights - teacher), radius)
    assert found <= exact + 1e-12 * abs(exact)
    assert found >= exact * (1 - 2e-3)


def test_mixture_output_variance_is_unbiased_for_a_known_mixture():
    """Blocks s with means μ_s and variances v_s, m = 2 models each: target mean(v) + Var_s(μ) (1/S)."""
    generator = torch.Generator().manual_seed(9)
    S, m, replicates = 4, 2, 20000
    means = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=DOUBLE)
    stds = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=DOUBLE)
    outputs = means[:, None, None] + stds[:, None, None] * torch.randn(replicates, S, 1, m, generator=generator,
                                                                     dtype=DOUBLE)
    estimates = _mixture_output_variance(outputs)
    target = float((stds**2).mean() + means.var(correction=0))
    error = float(estimates.std() / math.sqrt(replicates))
    assert abs(float(estimates.mean()) - target) <= 4 * error
    # the naive pooled 1/(n−1) variance is biased here, by Var_s(μ)/(n−1) ≈ 0.2: the test can tell
    naive = outputs.transpose(-3, -2).reshape(replicates, 1, S * m).var(dim=-1, correction=1).mean()
    assert abs(float(naive) - target) > 4 * error


# --- simulation against the theorems --------------------------------------------------------

SMALL = QuadraticSetting(train_samples=600, test_samples=100, input_dim=60, datasets=24, initializations=20,
                         partitions=10, init_std=1.0, teacher_norm=1.0, sharpness_radius=0.05)


@pytest.fixture(scope="module")
def small_problems():
    return draw_problems(SMALL, seed=1)


def _units(value):
    """Paper units (objective divided by n_tr/d_in) to the theorem's."""
    return Fraction(repr(value)) / SMALL.ratio


@pytest.mark.parametrize("method, iterations, eta, rho", [
    ("sam", 0, 0.1, 0.5), ("sam", 4, 0.1, 0.5), ("sam", 8, 0.05, 0.3),
    ("sharpbalance", 4, 0.3, 0.5), ("sharpbalance", 12, 0.5, 0.3),
])
def test_simulated_diversity_matches_the_theorems(small_problems, method, iterations, eta, rho):
    """Within 4 standard errors plus the O(1/d_in) term the theorems drop."""
    eta, rho = _units(eta), _units(rho)
    theorem = theorem_1 if method == "sam" else theorem_2
    predicted = theorem(SMALL, iterations=iterations, eta=eta, rho=rho).diversity
    simulated = simulate_tradeoff(small_problems, iterations=iterations, eta=eta, rho=rho, method=method)
    assert abs(simulated.diversity - predicted) <= 4 * simulated.diversity_standard_error + predicted / SMALL.input_dim


@pytest.mark.parametrize("iterations, eta, rho", [(0, 0.1, 0.5), (2, 0.1, 0.5), (4, 0.05, 0.3), (8, 0.3, 0.5)])
def test_simulated_sharpness_lies_within_theorem_1_bounds(small_problems, iterations, eta, rho):
    eta, rho = _units(eta), _units(rho)
    bounds = theorem_1(SMALL, iterations=iterations, eta=eta, rho=rho)
    simulated = simulate_tradeoff(small_problems, iterations=iterations, eta=eta, rho=rho, method="sam")
    slack = 3 * simulated.sharpness_standard_error
    assert bounds.sharpness_lower - slack <= simulated.sharpness <= bounds.sharpness_upper + slack


def test_theorem_1_at_zero_iterations_by_hand():
    """k = 0: θ̄ = E θ0 = 0, φ(0, j) = E[W^j]; c = 10, ρ0 = 0.05, ‖θ*‖ = 1, σ = 1."""
    setting = QuadraticSetting(train_samples=300, input_dim=30, initializations=20)
    c, radius = 10, 0.05
    m2, m4 = c + c**2, c + 6 * c**2 + 6 * c**3 + c**4
    prediction = theorem_1(setting, iterations=0, eta=0.01, rho=0.01)
    assert prediction.diversity == pytest.approx(1.0)
    assert prediction.sharpness_upper == pytest.approx(radius**2 / 2 * (math.sqrt(c) + 1) ** 2 + radius * math.sqrt(m2))
    gap = radius * (m4 - m2**2) / (2 * m2**1.5)
    assert prediction.sharpness_lower == pytest.approx(radius**2 / 2 * (math.sqrt(c) - 1) ** 2 + radius * math.sqrt(m2) - gap)
    printed = theorem_1(setting, iterations=0, eta=0.01, rho=0.01, jensen_gap="printed")
    assert printed.sharpness_lower == pytest.approx(prediction.sharpness_lower + gap - gap / radius)


def test_theorem_1_has_no_lower_bound_with_fewer_samples_than_inputs():
    setting = QuadraticSetting(train_samples=20, input_dim=30, initializations=20, partitions=1)
    prediction = theorem_1(setting, iterations=2, eta=0.1, rho=0.1)
    assert prediction.sharpness_lower is None and prediction.sharpness_upper > 0


def test_theorem_2_with_one_block_is_theorem_1():
    setting = QuadraticSetting(train_samples=300, input_dim=30, initializations=20, partitions=1)
    one, two = (theorem(setting, iterations=5, eta=Fraction(1, 100), rho=Fraction(1, 20))
                for theorem in (theorem_1, theorem_2))
    assert two.diversity == pytest.approx(one.diversity, rel=1e-12)
    assert two.sharpness_upper == pytest.approx(one.sharpness_upper, rel=1e-12)
    assert two.sharpness_lower is None


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(InputError, match="multiple of partitions"):
        QuadraticSetting(train_samples=305, partitions=10)
    with pytest.raises(InputError, match="initializations"):
        QuadraticSetting(initializations=15, partitions=10)
    with pytest.raises(InputError, match="method"):
        simulate_tradeoff(draw_problems(QuadraticSetting(train_samples=20, test_samples=5, input_dim=4, datasets=2,
                                                         initializations=4, partitions=2)),
                          iterations=1, eta=0.1, rho=0.1, method="adam")
    with pytest.raises(InputError, match="unknown figure"):
        write_theory_table("3", "unused")
