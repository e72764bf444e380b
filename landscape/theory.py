"""The sharpness-diversity trade-off on a quadratic model: Theorems 1 and 2 of SharpBalance, in
closed form and by simulation (Lu et al., NeurIPS 2024, §3 and App. C).

Setting. Training data ``A ∈ R^{n_tr×d_in}`` and test data ``T ∈ R^{n_te×d_in}`` have entries
``N(0, 1/d_in)``; a teacher ``θ*`` labels them, ``y = Aθ*``; the objective is
``f(θ; A) = ½ (θ − θ*)ᵀ AᵀA (θ − θ*)``, so ``∇f(θ) = W(θ − θ*)`` with ``W = AᵀA``. Initialisations
have ``E θ0 = 0`` and ``E θ0θ0ᵀ = σ²I``. The analysed SAM step drops the gradient normalisation:

    θ_{k+1} = θ_k − η ∇f(θ_k + ρ ∇f(θ_k)),   so   θ_k − θ* = B^k (θ0 − θ*),   B = I − ηW − ηρW².

- Diversity (eq. 1): ``D = E_T[Var_{θ0}(Tθ_k)]``, the variance over initialisations of a test output,
  averaged over test points and data sets.
- Sharpness: ``κ_k = E_A[max_{‖ε‖₂≤ρ0} f(E_{θ0}[θ_k] + ε; A) − f(E_{θ0}[θ_k]; A)]``, the largest rise of
  the training objective within ``ρ0`` of the *mean* trained weight.
- Narayana numbers ``N_{m,l} = (1/l) C(m−1, l−1) C(m, l−1)`` give the Wishart moments (eq. 6, the
  ``O(1 + 1/d_in)`` factor taken as 1): ``E[W^m] = Σ_{l=1}^{m} N_{m,l} (n_tr/d_in)^l · I``.
- Proposition 1: ``E[B^i W^j] = φ(i, j) I`` with
  ``φ(i, j) = Σ_{k1+k2+k3=i} i!/(k1! k2! k3!) (−η)^{k2+k3} ρ^{k3} E[W^m]``, ``m = k2 + 2k3 + j``
  (the ``m = 0`` term is the paper's ``1[j = 0]``).
- Theorem 1 (SAM): ``D = φ(2k, 0) σ²`` and, with ``c = n_tr/d_in``,
  ``(ρ0²/2)(√c − 1)² + ρ0 √φ(2k,2) ‖θ*‖ − G ≤ κ_k ≤ (ρ0²/2)(√c + 1)² + ρ0 √φ(2k,2) ‖θ*‖``.
- Theorem 2 (SharpBalance's idealisation: each model trains on one of ``S`` row blocks
  ``A_s ∈ R^{(n_tr/S)×d_in}``, ``r = n_tr/(S d_in)``, ``φ′`` = ``φ`` with ``c`` replaced by ``r``):
  ``D = φ′(2k,0)σ² + ((S−1)/(d_in S))(φ′(2k,0) − φ′(k,0)²)‖θ*‖²`` and
  ``κ_k ≤ (ρ0²/2)(√c + 1)² + (ρ0/S)√C ‖θ*‖`` with the paper's ``C`` (see :func:`theorem_2`).

The combinatorial sums alternate in sign and cancel by many orders of magnitude, so they are done
in exact rational arithmetic (``fractions.Fraction``); floats are read as the decimal they print as
(``0.1`` is 1/10). Where the paper's printed formulas are ambiguous or wrong, docs/theory.md records
what is done here and why (notably the Jensen-gap term ``G``, see :func:`theorem_1`).

The simulation draws every data set, test set, teacher and initialisation at once as batched
tensors (float64 by default), trains all models together with batched matrix products and finds
the sharpness by projected gradient ascent (step 0.01, 50 steps, App. C.3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from numbers import Real
from typing import Literal

import torch

from landscape.checks import positive_int
from landscape.errors import InputError

__all__ = [
    "QuadraticProblems",
    "QuadraticSetting",
    "SimulatedTradeoff",
    "TheoremPrediction",
    "draw_problems",
    "narayana",
    "phi",
    "sam_train",
    "simulate_tradeoff",
    "theorem_1",
    "theorem_2",
    "wishart_moment",
    "worst_case_fluctuation",
]


# --------------------------------------------------------------------------------------------
# The analytic side (exact arithmetic)
# --------------------------------------------------------------------------------------------

def _exact(value, name: str) -> Fraction:
    """A number as an exact rational; a float is read as the shortest decimal that prints it."""
    if isinstance(value, (int, Fraction)) and not isinstance(value, bool):
        return Fraction(value)
    if isinstance(value, Real) and math.isfinite(float(value)):
        return Fraction(repr(float(value)))
    raise InputError(f"{name} must be a finite number, got {value!r}")


def narayana(m: int, l: int) -> int:
    """Narayana number ``N_{m,l} = (1/l) C(m−1, l−1) C(m, l−1)`` for ``1 ≤ l ≤ m`` (0 otherwise).

    It counts the Dyck paths of length ``2m`` with ``l`` peaks; the row sums are the Catalan numbers.
    """
    if m < 1 or l < 1 or l > m:
        return 0
    return math.comb(m - 1, l - 1) * math.comb(m, l - 1) // l


@lru_cache(maxsize=None)
def _wishart_moment(m: int, ratio: Fraction) -> Fraction:
    if m == 0:
        return Fraction(1)
    return sum((narayana(m, l) * ratio**l for l in range(1, m + 1)), Fraction(0))


def wishart_moment(m: int, ratio) -> Fraction:
    """The scalar ``E[(AᵀA)^m] / I = Σ_{l=1}^{m} N_{m,l} ratio^l`` (paper eq. 6, ``ratio = n_tr/d_in``).

    These are the moments of the Marchenko-Pastur law; the finite-``d_in`` factor ``O(1 + 1/d_in)``
    of the paper is taken as 1. ``m = 0`` gives 1 (``E[I] = I``).
    """
    m = positive_int("the moment order m", m, minimum=0)
    return _wishart_moment(m, _exact(ratio, "ratio"))


@lru_cache(maxsize=None)
def _wishart_numerator(m: int, u: int, v: int) -> int:
    """``v^m E[W^m] = Σ_l N_{m,l} u^l v^{m−l}`` for ``ratio = u/v``: an integer."""
    if m == 0:
        return 1
    return sum(narayana(m, l) * u**l * v ** (m - l) for l in range(1, m + 1))


@lru_cache(maxsize=None)
def _phi(i: int, j: int, eta: Fraction, rho: Fraction, ratio: Fraction) -> Fraction:
    # Each term (−η)^{k2+k3} ρ^{k3} E[W^m] is summed as an integer over the common denominator
    # b^i q^i v^{2i+j} (η = a/b, ρ = p/q, ratio = u/v): exact like Fractions, without a gcd per term.
    a, b = eta.numerator, eta.denominator
    p, q = rho.numerator, rho.denominator
    u, v = ratio.numerator, ratio.denominator
    top = 2 * i + j
    total = 0
    for k2 in range(i + 1):
        for k3 in range(i - k2 + 1):
            k1 = i - k2 - k3
            multinomial = math.factorial(i) // (math.factorial(k1) * math.factorial(k2) * math.factorial(k3))
            m = k2 + 2 * k3 + j
            total += (multinomial * (-a) ** (k2 + k3) * b**k1 * p**k3 * q ** (i - k3)
                      * _wishart_numerator(m, u, v) * v ** (top - m))
    return Fraction(total, b**i * q**i * v**top)


def phi(i: int, j: int, *, eta, rho, ratio) -> Fraction:
    """Proposition 1: the scalar ``φ(i, j)`` with ``E_A[B^i (AᵀA)^j] = φ(i, j) I``, exactly.

    ``B = I − ηW − ηρW²`` and ``W = AᵀA``; by the multinomial theorem
    ``φ(i, j) = Σ_{k1+k2+k3=i} i!/(k1! k2! k3!) (−η)^{k2+k3} ρ^{k3} E[W^{k2+2k3+j}]``
    with the Wishart moments of :func:`wishart_moment` at ``ratio`` (``n_tr/d_in`` for Theorem 1,
    ``r = n_tr/(S d_in)`` for Theorem 2's ``φ′``).
    """
    i, j = positive_int("phi: i", i, minimum=0), positive_int("phi: j", j, minimum=0)
    return _phi(i, j, _exact(eta, "eta"), _exact(rho, "rho"), _exact(ratio, "ratio"))


@dataclass(frozen=True)
class QuadraticSetting:
    """The random quadratic problem of App. C.3 and how sharpness is measured on it.

    ``partitions`` is the ``S`` of Theorem 2 (SharpBalance's idealisation); plain SAM ignores it.
    ``init_std`` (σ), ``teacher_norm`` (‖θ*‖) and ``sharpness_radius`` (ρ0) are not given in the
    paper; ``ascent_step`` and ``ascent_steps`` are (0.01 and 50).
    """

    train_samples: int = 3000
    test_samples: int = 1000
    input_dim: int = 150
    datasets: int = 50
    initializations: int = 50
    partitions: int = 10
    init_std: float = 1.0
    teacher_norm: float = 1.0
    sharpness_radius: float = 0.05
    ascent_step: float = 0.01
    ascent_steps: int = 50

    def __post_init__(self):
        for name in ("train_samples", "test_samples", "input_dim", "datasets", "initializations", "partitions"):
            positive_int(f"QuadraticSetting.{name}", getattr(self, name))
        positive_int("QuadraticSetting.ascent_steps", self.ascent_steps, minimum=0)
        for name in ("init_std", "teacher_norm", "sharpness_radius", "ascent_step"):
            value = getattr(self, name)
            if not isinstance(value, Real) or not math.isfinite(value) or value < 0:
                raise InputError(f"QuadraticSetting.{name} must be a finite non-negative number, got {value!r}")
        if self.train_samples % self.partitions:
            raise InputError(f"train_samples={self.train_samples} is not divisible into partitions={self.partitions} "
                             "equal row blocks; choose train_samples as a multiple of partitions")
        if self.initializations % self.partitions or self.initializations // self.partitions < 2:
            raise InputError(f"initializations={self.initializations} must be a multiple of partitions={self.partitions} "
                             "with at least two models per block (the diversity estimate needs them); "
                             f"use e.g. initializations={2 * self.partitions}")
        if self.datasets < 2:
            raise InputError("QuadraticSetting.datasets must be at least 2 (the standard error needs two)")

    @property
    def ratio(self) -> Fraction:
        """``c = n_tr / d_in``, exactly."""
        return Fraction(self.train_samples, self.input_dim)


@dataclass(frozen=True)
class TheoremPrediction:
    """What a theorem predicts: diversity and bounds on the sharpness (``None`` = no such bound)."""

    diversity: float
    sharpness_lower: float | None
    sharpness_upper: float


def _check_training(iterations, eta, rho) -> tuple[Fraction, Fraction]:
    positive_int("iterations", iterations, minimum=0)
    eta, rho = _exact(eta, "eta"), _exact(rho, "rho")
    if eta < 0 or rho < 0:
        raise InputError(f"eta and rho must be non-negative, got eta={float(eta)}, rho={float(rho)}")
    return eta, rho


def theorem_1(setting: QuadraticSetting, *, iterations: int, eta, rho,
              jensen_gap: Literal["derived", "printed"] = "derived") -> TheoremPrediction:
    """Theorem 1 (SAM on all of ``A``): diversity and the two sharpness bounds.

    ``D(θ_k) = φ(2k, 0) σ²`` and, with ``c = n_tr/d_in``, ``λ±= (√c ± 1)²`` (Gordon's bounds on the
    extreme eigenvalues of ``AᵀA``) and ``E‖B^k W θ*‖² = φ(2k, 2)‖θ*‖²``:

        (ρ0²/2) λ− + ρ0 √φ(2k,2) ‖θ*‖ − G  ≤  κ_k  ≤  (ρ0²/2) λ+ + ρ0 √φ(2k,2) ‖θ*‖.

    ``G`` bounds the Jensen gap ``√E Z − E√Z ≤ Var Z / (2 (E Z)^{3/2})`` of ``Z = ‖B^k W θ*‖²`` with
    ``Var Z ≤ (φ(4k,4) − φ(2k,2)²)‖θ*‖⁴`` (Cauchy-Schwarz). ``jensen_gap="derived"`` (default) carries
    that through: ``G = ρ0 (φ(4k,4) − φ(2k,2)²) ‖θ*‖ / (2 φ(2k,2)^{3/2})``. ``"printed"`` uses the
    paper's ``G = (φ(4k,4) − φ(2k,2)²) / (2 φ(2k,2)^{3/2} ‖θ*‖)``, which drops the factor ρ0 and
    writes ``Var Z`` with ``‖θ*‖²`` (docs/theory.md). The lower bound needs ``n_tr ≥ d_in`` (below
    that ``λmin(AᵀA) = 0``); for fewer samples it is ``None``.
    """
    eta, rho = _check_training(iterations, eta, rho)
    k, c = iterations, setting.ratio

    def phi_k(i, j):
        return _phi(i, j, eta, rho, c)

    radius, norm = setting.sharpness_radius, setting.teacher_norm
    diversity = float(phi_k(2 * k, 0)) * setting.init_std**2
    phi_2k_2, phi_4k_4 = phi_k(2 * k, 2), phi_k(4 * k, 4)
    linear = radius * math.sqrt(float(phi_2k_2)) * norm
    variance_factor = float(phi_4k_4 - phi_2k_2**2)
    if jensen_gap == "derived":
        gap = radius * variance_factor * norm / (2 * float(phi_2k_2) ** 1.5)
    elif jensen_gap == "printed":
        gap = variance_factor / (2 * float(phi_2k_2) ** 1.5 * norm)
    else:
        raise InputError(f"jensen_gap must be 'derived' or 'printed', got {jensen_gap!r}")
    root_c = math.sqrt(c)
    lower = radius**2 / 2 * (root_c - 1) ** 2 + linear - gap if c >= 1 else None
    upper = radius**2 / 2 * (root_c + 1) ** 2 + linear
    return TheoremPrediction(diversity=diversity, sharpness_lower=lower, sharpness_upper=upper)


def theorem_2(setting: QuadraticSetting, *, iterations: int, eta, rho) -> TheoremPrediction:
    """Theorem 2 (each model trains with SAM on one of ``S`` row blocks of ``A``): diversity and the
    sharpness upper bound; the theorem gives no lower bound.

    With ``r = n_tr/(S d_in)`` and ``φ′(i, j) = φ(i, j)`` at ratio ``r``:

        D = φ′(2k,0) σ² + ((S−1)/(d_in S)) (φ′(2k,0) − φ′(k,0)²) ‖θ*‖²,
        κ_k ≤ (ρ0²/2)(√(n_tr/d_in) + 1)² + (ρ0/S) √C ‖θ*‖,

        C = S φ′(2k,2) + 2rS(S−1) φ′(2k,1) + 2S(S−1) φ′(k,2)φ′(k,0) + r(1+r)S(S−1) φ′(2k,0)
            + 2S(S−1) φ′(k,1)² + (3/2) r(1+r) S(S−1)(S−2) φ′(k,0)² + (3/2) r² S(S−1)(S−2) φ′(2k,0)
            + 3r S(S−1)(S−2) φ′(k,0)φ′(k,1) + r² S(S−1)(S−2)(S−3) φ′(k,0)²,

    as printed (C is the paper's count of ``E[Σ_j W_j Σ_s B_s^k Σ_s′ B_s′^k Σ_l W_l]``; for S = 1 it is
    Theorem 1's ``φ(2k, 2)``). Exact rational arithmetic until the square root.
    """
    eta, rho = _check_training(iterations, eta, rho)
    k, S = iterations, setting.partitions
    r = Fraction(setting.train_samples, S * setting.input_dim)

    def phi_prime(i, j):
        return _phi(i, j, eta, rho, r)

    norm = setting.teacher_norm
    diversity = (float(phi_prime(2 * k, 0)) * setting.init_std**2
                 + float(Fraction(S - 1, setting.input_dim * S) * (phi_prime(2 * k, 0) - phi_prime(k, 0) ** 2)) * norm**2)
    pairs, triples, quadruples = S * (S - 1), S * (S - 1) * (S - 2), S * (S - 1) * (S - 2) * (S - 3)
    C = (S * phi_prime(2 * k, 2)
         + 2 * r * pairs * phi_prime(2 * k, 1)
         + 2 * pairs * phi_prime(k, 2) * phi_prime(k, 0)
         + r * (1 + r) * pairs * phi_prime(2 * k, 0)
         + 2 * pairs * phi_prime(k, 1) ** 2
         + Fraction(3, 2) * r * (1 + r) * triples * phi_prime(k, 0) ** 2
         + Fraction(3, 2) * r**2 * triples * phi_prime(2 * k, 0)
         + 3 * r * triples * phi_prime(k, 0) * phi_prime(k, 1)
         + r**2 * quadruples * phi_prime(k, 0) ** 2)
    radius = setting.sharpness_radius
    upper = radius**2 / 2 * (math.sqrt(setting.ratio) + 1) ** 2 + radius / S * math.sqrt(float(C)) * norm
    return TheoremPrediction(diversity=diversity, sharpness_lower=None, sharpness_upper=upper)


# --------------------------------------------------------------------------------------------
# The simulation (batched tensors)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuadraticProblems:
    """A batch of random problems: per data set the block Hessians ``W_s = A_sᵀA_s``
    ``(datasets, S, d_in, d_in)`` (their sum is ``W = AᵀA``), the test inputs ``T``
    ``(datasets, n_te, d_in)``, the teacher ``θ*`` ``(datasets, d_in)`` and the initialisations
    ``θ0`` ``(datasets, d_in, n_init)``."""

    setting: QuadraticSetting
    block_hessians: torch.Tensor
    test_inputs: torch.Tensor
    teacher: torch.Tensor
    initializations: torch.Tensor

    @property
    def hessian(self) -> torch.Tensor:
        """``W = AᵀA = Σ_s A_sᵀA_s``, ``(datasets, d_in, d_in)``."""
        return self.block_hessians.sum(dim=1)


def draw_problems(setting: QuadraticSetting, *, seed: int | torch.Generator = 0,
                  dtype: torch.dtype = torch.float64, device=None, chunk_size: int = 10) -> QuadraticProblems:
    """Draw ``setting.datasets`` independent problems: ``A``, ``T`` with entries ``N(0, 1/d_in)``, a
    teacher uniform on the sphere of radius ``teacher_norm`` and ``n_init`` initialisations
    ``N(0, σ² I)``.

    ``A`` is cut into ``S`` consecutive row blocks; its rows are exchangeable, so this is a uniformly
    random partition. Only ``chunk_size`` data matrices ``A`` are held at a time (they are reduced to
    ``A_sᵀA_s`` at once); the draws depend on ``seed`` and ``chunk_size``.
    """
    positive_int("chunk_size", chunk_size)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(seed, torch.Generator):
        generator = seed
    else:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    n_tr, d, S = setting.train_samples, setting.input_dim, setting.partitions
    scale = 1 / math.sqrt(d)

    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype, device=device)

    block_hessians, test_inputs, teachers, initializations = [], [], [], []
    for start in range(0, setting.datasets, chunk_size):
        count = min(chunk_size, setting.datasets - start)
        blocks = (normal(count, n_tr, d) * scale).view(count, S, n_tr // S, d)
        block_hessians.append(blocks.transpose(-1, -2) @ blocks)
        test_inputs.append(normal(count, setting.test_samples, d) * scale)
        direction = normal(count, d)
        teachers.append(setting.teacher_norm * direction / direction.norm(dim=-1, keepdim=True))
        initializations.append(setting.init_std * normal(count, d, setting.initializations))
    return QuadraticProblems(setting, torch.cat(block_hessians), torch.cat(test_inputs),
                             torch.cat(teachers), torch.cat(initializations))


def sam_train(weights: torch.Tensor, hessian: torch.Tensor, teacher: torch.Tensor, *,
              eta: float, rho: float, iterations: int) -> torch.Tensor:
    """``iterations`` steps of ``θ ← θ − η ∇f(θ + ρ ∇f(θ))`` on ``f(θ) = ½(θ−θ*)ᵀW(θ−θ*)``.

    ``weights`` ``(..., d, m)`` holds ``m`` models as columns, ``hessian`` ``(..., d, d)`` and
    ``teacher`` ``(..., d, 1)`` broadcast against it. The gradient normalisation of practical SAM is
    left out, as in the paper's analysis.
    """
    def gradient(theta):
        return hessian @ (theta - teacher)

    for _ in range(iterations):
        weights = weights - eta * gradient(weights + rho * gradient(weights))
    return weights


def worst_case_fluctuation(hessian: torch.Tensor, weights: torch.Tensor, teacher: torch.Tensor, *,
                           radius: float, step: float = 0.01, steps: int = 50) -> torch.Tensor:
    """``max_{‖ε‖₂≤ρ0} f(θ + ε) − f(θ) = ½ εᵀWε + εᵀW(θ − θ*)`` by projected gradient ascent.

    ``hessian`` ``(..., d, d)``, ``weights`` and ``teacher`` ``(..., d)``; returns ``(...)``. Each step
    is ``ε ← Π(ε + step · W(θ + ε − θ*))`` with ``Π`` the projection on the ball (App. C.3: step 0.01,
    50 steps). The ascent starts on the sphere in the direction of the gradient at ``ε = 0`` (the
    paper does not say; from 0 a small gradient needs many steps to reach the sphere). The objective
    is convex, so every projected step can only raise it.
    """
    offset = (weights - teacher).unsqueeze(-1)
    slope = hessian @ offset

    def fluctuation(epsilon):
        return (0.5 * epsilon.transpose(-1, -2) @ hessian @ epsilon + epsilon.transpose(-1, -2) @ slope)[..., 0, 0]

    def project(epsilon):
        return epsilon * (radius / epsilon.norm(dim=-2, keepdim=True).clamp_min(radius))

    length = slope.norm(dim=-2, keepdim=True)
    fallback = torch.zeros_like(slope)
    fallback[..., 0, :] = 1  # any direction will do when the mean weight is exactly stationary
    epsilon = radius * torch.where(length > 0, slope / length.clamp_min(torch.finfo(slope.dtype).tiny), fallback)
    for _ in range(steps):
        epsilon = project(epsilon + step * (hessian @ epsilon + slope))
    return fluctuation(epsilon)


def _mixture_output_variance(outputs: torch.Tensor) -> torch.Tensor:
    """Unbiased ``(1/n_te) Σ_t Var_{θ0,s}[f(t)]`` from ``m ≥ 2`` models per block.

    ``outputs`` ``(..., S, n_te, m)``: model ``i`` of block ``s`` in ``[..., s, :, i]``. The target is the
    variance under the uniform mixture over blocks, ``v̄ + Var_s(μ_s)``. For ``n = Sm`` pooled models
    ``E[(1/n)Σ(x − x̄)²] = v̄ + Var_s(μ_s) − v̄/n``, so the within-block unbiased variance ``/n`` is added
    back; for ``S = 1`` this is the usual ``1/(n−1)`` estimate.
    """
    S, n_te, m = outputs.shape[-3:]
    pooled = outputs.transpose(-3, -2).reshape(*outputs.shape[:-3], n_te, S * m)
    total = pooled.var(dim=-1, correction=0)
    within = outputs.var(dim=-1, correction=1).mean(dim=-2)
    return (total + within / (S * m)).mean(dim=-1)


@dataclass(frozen=True)
class SimulatedTradeoff:
    """Simulated diversity and sharpness: means over data sets, their standard errors, and the
    per-data-set values ``(datasets,)``."""

    diversity: float
    diversity_standard_error: float
    sharpness: float
    sharpness_standard_error: float
    diversity_per_dataset: torch.Tensor
    sharpness_per_dataset: torch.Tensor


def simulate_tradeoff(problems: QuadraticProblems, *, iterations: int, eta: float, rho: float,
                      method: Literal["sam", "sharpbalance"] = "sam") -> SimulatedTradeoff:
    """Train every model of every problem for ``iterations`` SAM steps and measure the trade-off.

    ``method="sam"``: all ``n_init`` models train on ``W = AᵀA`` (Theorem 1). ``"sharpbalance"``:
    the models are split into ``S`` equal groups and group ``s`` trains on ``W_s = A_sᵀA_s``
    (Theorem 2). Diversity is the unbiased variance of the test outputs ``Tθ_k`` over the models
    (eq. 1), averaged over test points; sharpness is :func:`worst_case_fluctuation` of the full-data
    objective at the mean trained weight ``E_{θ0,s}[θ_k]``. That mean is taken exactly: SAM on a
    quadratic is affine in ``θ0``, so ``E_{θ0}[θ_k]`` is the model trained from ``E θ0 = 0``, which is
    trained alongside (an empirical mean over 50 initialisations would add ``σ² d_in / 50`` to
    ``‖θ* − θ̄0‖²`` and bias the sharpness upward).
    """
    _check_training(iterations, eta, rho)
    setting = problems.setting
    if method == "sam":
        groups, hessians = 1, problems.hessian.unsqueeze(1)
    elif method == "sharpbalance":
        groups, hessians = setting.partitions, problems.block_hessians
    else:
        raise InputError(f"method must be 'sam' or 'sharpbalance', got {method!r}")
    count, d, n_init = problems.initializations.shape
    per_group = n_init // groups
    # model i trains on block i // per_group; the extra last column starts at E θ0 = 0
    weights = problems.initializations.view(count, d, groups, per_group).permute(0, 2, 1, 3)
    weights = torch.cat([weights, weights.new_zeros(count, groups, d, 1)], dim=-1)
    teacher = problems.teacher[:, None, :, None]
    trained = sam_train(weights, hessians, teacher, eta=float(eta), rho=float(rho), iterations=iterations)

    outputs = problems.test_inputs.unsqueeze(1) @ trained[..., :per_group]
    diversity = _mixture_output_variance(outputs)
    mean_weights = trained[..., per_group].mean(dim=1)
    sharpness = worst_case_fluctuation(problems.hessian, mean_weights, problems.teacher,
                                       radius=setting.sharpness_radius, step=setting.ascent_step,
                                       steps=setting.ascent_steps)

    def standard_error(values):
        return float(values.std(correction=1) / math.sqrt(values.numel()))

    return SimulatedTradeoff(diversity=float(diversity.mean()), diversity_standard_error=standard_error(diversity),
                             sharpness=float(sharpness.mean()), sharpness_standard_error=standard_error(sharpness),
                             diversity_per_dataset=diversity, sharpness_per_dataset=sharpness)
