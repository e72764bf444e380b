"""The Hessian of a model's loss: trace, top eigenvalues and spectral density.

``H = Σ_b (n_b/N) ∇²_θ L_b(θ)`` is the Hessian of the full-data mean loss with respect to the chosen
parameters θ (dimension ``D``), built from an iterable of ``(inputs, targets)`` batches with the same
probes for every batch; the model is in eval mode while it is measured and gets its own mode back
afterwards. Products ``Hv`` come from :class:`landscape.hvp.LossHessian` (reverse over reverse on a
retained graph; see that module for the measured choice). Small results (estimates, eigenvalues,
densities) are float64 tensors on the CPU; eigenvectors stay in the model's dtype and on its device.

Trace (:func:`hessian_trace`)
    Hutchinson (1989): for Rademacher probes ``v`` (independent ±1 entries) ``E[vᵀHv] = tr H``; the
    estimate is the mean of ``n_probes`` samples ``vᵢᵀHvᵢ`` with standard error ``s/√n``. The probe
    budget is fixed: no early stop on a tolerance (PyHessian's stop can fire after a handful of
    probes; its users needed thousands for a stable CIFAR-10 trace).

    Hutch++ (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: optimal stochastic trace estimation") with
    the same budget of ``m = n_probes`` products: sketch ``S`` (``m//3`` Rademacher columns),
    ``Q = orth(HS)``, residual probes ``G`` (the remaining ``m − 2·(m//3)`` Rademacher columns),

        tr H ≈ tr(QᵀHQ) + (1/|G|) Σ_g gᵀ(I − QQᵀ) H (I − QQᵀ) g.

    Given ``Q`` the second term is a Hutchinson estimate of ``tr((I−QQᵀ)H(I−QQᵀ)) = tr H − tr(QᵀHQ)``,
    so ``E[estimate | Q] = tr H`` for every sketch: the variance is entirely the residual's, and the
    sample standard error of the residual terms is an honest (unbiased-variance) standard error. The
    reported ``samples`` are ``tr(QᵀHQ) + gᵀ(I−QQᵀ)H(I−QQᵀ)g``, one per residual probe. Two passes over
    the data and ``O(m·D)`` memory. When ``H`` is close to low rank (the top of a network's spectrum
    carries most of the trace) its error falls as ``1/m`` instead of ``1/√m``.

    Per layer: with ``P_l`` the coordinate projector onto parameter tensor ``l``, both estimators
    stay unbiased for ``tr(P_l H) = Σ_{i∈l} H_ii`` when every dot product is restricted to the
    tensor's coordinates, so the per-tensor traces come from the same products and sum to the total.

Top eigenvalues (:func:`hessian_eigenvalues`)
    Lanczos (1950) with full reorthogonalization (classical Gram–Schmidt, twice) from a Gaussian
    start: after ``j`` steps ``HV_j = V_j T_j + β_j v_{j+1} e_jᵀ``, the Ritz values ``θ_i`` of the
    tridiagonal ``T_j`` approximate the extreme eigenvalues, and the Ritz pair's residual
    ``‖H y_i − θ_i y_i‖ = β_j |s_{j,i}|`` bounds the error ``|θ_i − λ|``. It stops when the ``k``
    wanted residuals are at most ``tol · max_i |θ_i|``. The ``k`` **algebraically largest**
    eigenvalues are returned, largest first. (PyHessian's power iteration converges to the
    eigenvalue of largest *magnitude*; the two agree when the top positive eigenvalue dominates
    the most negative one, the usual case near a minimum.) On a breakdown (``β_j ≈ 0``: the Krylov
    space is invariant) Lanczos restarts with a random vector orthogonal to the basis, so in small
    problems, where the Krylov space closes, repeated eigenvalues are found with their multiplicity;
    a single Krylov space holds one copy of each, so in large ones a repeated top eigenvalue shows once.

Spectral density (:func:`hessian_spectral_density`)
    Stochastic Lanczos quadrature (Lin, Saad & Yang 2016, "Approximating spectral densities of large
    matrices"; Ghorbani, Krishnan & Xiao 2019, "An investigation into neural net optimization via
    Hessian eigenvalue density"): for a unit start ``u`` (a normalized Rademacher vector), ``m``
    Lanczos steps give the Gauss quadrature ``uᵀf(H)u ≈ Σ_i w_i f(θ_i)`` with nodes ``θ_i`` (Ritz
    values) and weights ``w_i = (first component of the i-th eigenvector of T_m)²``, exact for
    polynomials of degree ``< 2m``. Since ``E[uᵀf(H)u] = (1/D) Σ_λ f(λ)``, the Gaussian-smoothed density

        φ_σ(t) = (1/n_runs) Σ_runs Σ_i w_i · exp(−(t − θ_i)² / 2σ²) / (σ√(2π))

    estimates the spectral density ``(1/D) Σ_λ δ(t − λ)`` convolved with ``N(0, σ²)``: it integrates
    to 1, its mean is ``uᵀHu ≈ tr H / D`` and its second moment ``uᵀH²u + σ² ≈ tr H²/D + σ²``.
    The runs share each pass over the data (their Lanczos steps are one block product).

Example (a quadratic loss, whose Hessian is known exactly)::

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> from landscape.hessian import hessian_trace, hessian_eigenvalues
    >>> X = torch.randn(32, 5, dtype=torch.float64); y = torch.randn(32, dtype=torch.float64)
    >>> model = torch.nn.Linear(5, 1, bias=False).double()
    >>> mse = lambda out, target: ((out.squeeze(1) - target) ** 2).mean()
    >>> exact = 2 * X.T @ X / 32                                   # ∇²(1/n)‖Xw − y‖²
    >>> estimate = hessian_trace(model, mse, [(X, y)], n_probes=200)
    >>> abs(estimate.value - exact.trace().item()) < 4 * estimate.stderr
    True
    >>> top = hessian_eigenvalues(model, mse, [(X, y)], k=2).eigenvalues
    >>> torch.allclose(top, torch.linalg.eigvalsh(exact).flip(0)[:2])
    True
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from landscape.errors import InputError
from landscape._checks import (Patterns, evaluation_mode, finite_float, legacy_positionals, positive_int,
                               require_model)
from landscape.hvp import LossHessian, default_chunks, rademacher_rows, seed_from

__all__ = [
    "Eigenpairs",
    "Estimate",
    "SpectralDensity",
    "hessian_eigenvalues",
    "hessian_spectral_density",
    "hessian_trace",
    "lanczos",
]

TRACE_METHODS = ("hutchinson", "hutch++")


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate: ``value`` = mean of the i.i.d. ``samples`` (float64, CPU), ``stderr`` =
    their standard deviation / √n (NaN for one sample), with the settings that produced it:
    ``method``, ``n_probes`` (Hessian-vector products spent), ``n_examples`` (data points behind the
    Hessian), ``dimension`` (number of parameters). ``per_layer`` maps parameter names to their own
    estimates (only when asked for); those values sum to ``value``."""
    value: float
    stderr: float
    samples: torch.Tensor
    method: str
    n_probes: int
    n_examples: int
    dimension: int
    per_layer: Mapping[str, Estimate] | None = None

    @property
    def n_samples(self) -> int:
        """Deprecated name of :attr:`n_examples` (data points, not Monte Carlo draws)."""
        warnings.warn("Estimate.n_samples is deprecated; use Estimate.n_examples.", DeprecationWarning, stacklevel=2)
        return self.n_examples


@dataclass(frozen=True)
class Eigenpairs:
    """The ``k`` algebraically largest eigenvalues of the Hessian, largest first (float64, CPU), their
    unit eigenvectors as rows ``(k, D)`` (model dtype and device; coordinates in the order of
    ``parameter_names``), the Ritz residuals ``‖Hy − θy‖`` (bounds on each eigenvalue's error) and
    the number of full-data Hessian-vector products spent."""
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residual_norms: torch.Tensor
    parameter_names: tuple[str, ...]
    n_products: int


@dataclass(frozen=True)
class SpectralDensity:
    """A Gaussian-smoothed Hessian eigenvalue density ``density`` on ``grid`` (both ``(G,)``), from the
    quadrature ``nodes`` and ``weights`` (both ``(n_runs, m)``) of stochastic Lanczos quadrature and
    the smoothing width ``sigma``. Everything float64 on the CPU."""
    grid: torch.Tensor
    density: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float


# -- trace ---------------------------------------------------------------------------------------

def _estimate(samples: torch.Tensor, **settings) -> Estimate:
    count = samples.shape[0]
    value = samples.mean().item()
    stderr = (samples.std(correction=1) / math.sqrt(count)).item() if count > 1 else math.nan
    return Estimate(value=value, stderr=stderr, samples=samples, **settings)


@legacy_positionals("n_probes", "method", "per_layer", "generator", "progress", "params", "probe_chunk_size")
def hessian_trace(model: torch.nn.Module, loss_fn: Callable, batches, *, params: Patterns = None,
                  exclude: Patterns = None, n_probes: int = 100, method: str = "hutchinson",
                  per_layer: bool = False, generator: torch.Generator | None = None, progress: bool = False,
                  probe_chunk_size: int = 1) -> Estimate:
    """Estimate ``tr H`` of the full-data loss with exactly ``n_probes`` Hessian-vector products.

    ``method="hutchinson"`` (Rademacher probes, one pass over the data with every probe going through
    each batch's graph) or ``"hutch++"`` (Meyer et al. 2021; two passes, ``n_probes ≥ 3``); see the
    module docstring for both and for the meaning of ``stderr``. ``per_layer=True`` adds
    ``per_layer``: one estimate per parameter tensor, ``tr`` of its diagonal block. ``params`` and ``exclude``
    (name globs, :func:`landscape._checks.select_parameters`) restrict θ; ``probe_chunk_size`` probes share one vmapped backward pass (memory
    grows with it); ``generator`` makes the probes reproducible.
    """
    require_model(model)
    n_probes = positive_int("n_probes", n_probes, minimum=3 if method == "hutch++" else 1)
    if method not in TRACE_METHODS:
        raise InputError(f"method must be one of {TRACE_METHODS}, got {method!r}.")
    seed = seed_from(generator)
    with evaluation_mode(model):
        hessian = LossHessian(model, loss_fn, batches, params=params, exclude=exclude, keep_graphs=None,
                              probe_chunk_size=probe_chunk_size, progress=progress)
        rows = lambda start, stop: rademacher_rows(seed, start, stop, hessian.dim, hessian.dtype, hessian.device)
        chunk = hessian.probe_chunk_size
        if method == "hutchinson":
            samples = hessian.quadratic_forms(  # (n_probes, n_tensors)
                lambda: (rows(start, stop) for start, stop in default_chunks(n_probes, chunk)))
        else:
            sketch_size = n_probes // 3
            sketch = hessian.matmat(rows(0, sketch_size))  # H S, rows are vectors
            basis = torch.linalg.qr(sketch.T).Q.T  # orthonormal rows spanning range(HS)
            residual = rows(sketch_size, n_probes - sketch_size)
            residual = residual - (residual @ basis.T) @ basis
            forms = hessian.quadratic_forms(lambda: [basis, residual])
            samples = forms[:basis.shape[0]].sum(dim=0) + forms[basis.shape[0]:]
    settings = dict(method=method, n_probes=hessian.n_products, n_examples=hessian.n_examples, dimension=hessian.dim)
    layers = None
    if per_layer:
        layers = {name: _estimate(samples[:, index].contiguous(), **settings)
                  for index, name in enumerate(hessian.names)}
    return _estimate(samples.sum(dim=1), per_layer=layers, **settings)


# -- Lanczos ---------------------------------------------------------------------------------------

def lanczos(matmat: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, n_steps: int,
            seed: int = 0, converged: Callable[[torch.Tensor, torch.Tensor], bool] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``b`` independent Lanczos processes with full reorthogonalization, side by side.

    ``matmat`` maps a block ``(b, D)`` of vectors (rows) to ``H`` applied to each; ``start`` is
    ``(b, D)``. Returns ``alphas (b, m)`` and ``betas (b, m)`` (float64, CPU; ``T`` has diagonal
    ``alphas`` and off-diagonal ``betas[:, :m−1]``, and ``betas[:, m−1]`` is the norm of the last
    residual) and the orthonormal basis ``(b, m, D)``, where ``m ≤ min(n_steps, D)`` is the number
    of steps done; ``converged(alphas, betas)`` is asked after each step and ends the run when true.
    A process whose ``β`` vanishes (an invariant Krylov space) restarts from a random vector
    orthogonal to its basis, with a zero coupling in ``T``.
    """
    runs, dim = start.shape
    n_steps = min(n_steps, dim)
    basis = start.new_zeros(runs, n_steps, dim)
    alphas = torch.zeros(runs, n_steps, dtype=torch.float64)
    betas = torch.zeros(runs, n_steps, dtype=torch.float64)
    # a β below this fraction of ‖T‖ is rounding noise left after reorthogonalization
    breakdown = torch.finfo(start.dtype).eps ** 0.5
    restarts = torch.Generator(device=start.device).manual_seed(seed)

    def orthogonalize(vectors: torch.Tensor, count: int) -> torch.Tensor:
        for _ in range(2):  # Gram–Schmidt twice is enough (Giraud et al. 2005)
            previous = basis[:, :count]
            vectors = vectors - torch.einsum("bj,bjd->bd", torch.einsum("bjd,bd->bj", previous, vectors), previous)
        return vectors

    vector = start / start.norm(dim=1, keepdim=True)
    steps = 0
    for step in range(n_steps):
        basis[:, step] = vector
        product = matmat(vector)
        alpha = (product * vector).sum(dim=1)
        residual = orthogonalize(product - alpha[:, None] * vector, step + 1)
        beta = residual.norm(dim=1)
        alphas[:, step], betas[:, step] = alpha.double().cpu(), beta.double().cpu()
        steps = step + 1
        if steps == n_steps:
            break
        scale = torch.maximum(alphas[:, :steps].abs().amax(dim=1), betas[:, :steps].amax(dim=1))
        broken = (betas[:, step] <= breakdown * scale).tolist()
        for run in [index for index, flag in enumerate(broken) if flag]:
            fresh = torch.randn(dim, generator=restarts, dtype=start.dtype, device=start.device)
            residual[run] = orthogonalize_one(fresh, basis[run, :steps])
            beta[run] = 1.0
            betas[run, step] = 0.0
        # a closed Krylov space has exact Ritz values but may hide further copies of them: go on
        if not any(broken) and converged is not None and converged(alphas[:, :steps], betas[:, :steps]):
            break
        vector = residual / beta[:, None]
    return alphas[:, :steps], betas[:, :steps], basis[:, :steps]


def orthogonalize_one(vector: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``vector`` made orthogonal to the rows of ``basis`` (twice) and normalized."""
    for _ in range(2):
        vector = vector - (basis @ vector) @ basis
    return vector / vector.norm()


def tridiagonal(alphas: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """The symmetric tridiagonal ``T`` of one Lanczos run: diagonal ``alphas (m,)``, off-diagonal
    ``betas[:m−1]``."""
    off = betas[:-1]
    return torch.diag(alphas) + torch.diag(off, 1) + torch.diag(off, -1)


@legacy_positionals("k", "n_iters", "tol", "generator", "params", "keep_graphs")
def hessian_eigenvalues(model: torch.nn.Module, loss_fn: Callable, batches, *, params: Patterns = None,
                        exclude: Patterns = None, k: int = 1, n_iters: int = 100, tol: float = 1e-6,
                        generator: torch.Generator | None = None, keep_graphs: bool | None = None) -> Eigenpairs:
    """The ``k`` algebraically largest eigenvalues of ``H`` (largest first) and their eigenvectors, by
    Lanczos with full reorthogonalization (module docstring).

    Stops once every wanted Ritz residual ``‖Hy − θy‖ ≤ tol · max|θ|`` (so each eigenvalue is within
    that much, and usually far closer), or after ``n_iters`` products (memory: ``n_iters`` vectors
    of size ``D``), with a ``RuntimeWarning`` if not converged. ``keep_graphs=True`` keeps every
    batch's graph between products (fast, memory for all batches at once); by default only a
    single batch's graph is kept.
    """
    require_model(model)
    k = positive_int("k", k)
    n_iters = positive_int("n_iters", n_iters)
    tol = finite_float("tol", tol, minimum=0, exclusive=True)
    seed = seed_from(generator)
    with evaluation_mode(model):
        hessian = LossHessian(model, loss_fn, batches, params=params, exclude=exclude, keep_graphs=keep_graphs)
        if k > hessian.dim:
            raise InputError(f"k={k} eigenvalues asked of a {hessian.dim}-dimensional Hessian; ask for at most {hessian.dim}.")
        if n_iters < k:
            raise InputError(f"n_iters={n_iters} is below k={k}; Lanczos needs at least k steps (use n_iters ≥ 2k + 20).")
        start = torch.randn(1, hessian.dim, dtype=hessian.dtype, device=hessian.device,
                            generator=torch.Generator(device=hessian.device).manual_seed(seed))

        def converged(alphas: torch.Tensor, betas: torch.Tensor) -> bool:
            if alphas.shape[1] < k:
                return False
            values, vectors = torch.linalg.eigh(tridiagonal(alphas[0], betas[0]))
            residuals = betas[0, -1].abs() * vectors[-1, -k:].abs()
            return bool((residuals <= tol * values.abs().max()).all())

        alphas, betas, basis = lanczos(hessian.matmat, start, n_iters, seed=seed + 1, converged=converged)
    values, vectors = torch.linalg.eigh(tridiagonal(alphas[0], betas[0]))
    order = torch.arange(values.shape[0] - 1, values.shape[0] - 1 - k, -1)
    eigenvalues = values[order]
    residuals = betas[0, -1].abs() * vectors[-1, order].abs()
    ritz = vectors[:, order].T.to(dtype=hessian.dtype, device=hessian.device) @ basis[0]
    ritz = ritz / ritz.norm(dim=1, keepdim=True)
    if not bool((residuals <= tol * values.abs().max()).all()) and basis.shape[1] < hessian.dim:
        warnings.warn(f"Lanczos did not reach tol={tol} within n_iters={n_iters} "
                      f"(largest relative residual {(residuals / values.abs().max()).max().item():.2e}); "
                      "raise n_iters.", RuntimeWarning, stacklevel=3)  # past legacy_positionals
    return Eigenpairs(eigenvalues=eigenvalues, eigenvectors=ritz, residual_norms=residuals,
                      parameter_names=hessian.names, n_products=hessian.n_products)


# -- spectral density ------------------------------------------------------------------------------

def gaussian_smoothing(grid: torch.Tensor, nodes: torch.Tensor, weights: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(1/R) Σ_r Σ_i w_ri · N(t; θ_ri, σ²)`` on every grid point ``t``, for nodes/weights ``(R, m)``."""
    standardized = (grid[:, None, None] - nodes[None]) / sigma
    kernel = torch.exp(-0.5 * standardized ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (kernel * weights[None]).sum(dim=2).mean(dim=1)


@legacy_positionals("n_iters", "n_runs", "grid", "sigma", "generator", "params", "keep_graphs")
def hessian_spectral_density(model: torch.nn.Module, loss_fn: Callable, batches, *, params: Patterns = None,
                             exclude: Patterns = None, n_iters: int = 100, n_runs: int = 1,
                             grid: int | torch.Tensor = 1000, sigma: float | None = None,
                             generator: torch.Generator | None = None,
                             keep_graphs: bool | None = None) -> SpectralDensity:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature, Gaussian-smoothed (module
    docstring): ``n_runs`` Rademacher starts, ``n_iters`` Lanczos steps each (capped at ``D``).

    ``sigma`` defaults to 1% of the span of the nodes (Ghorbani et al. smooth with a width small
    against the spectrum); ``grid`` is a 1-D tensor of points or a number of points spread evenly
    over ``[min node − 5σ, max node + 5σ]``, so that the density integrates to 1 over it.
    ``keep_graphs`` as in :func:`hessian_eigenvalues`.
    """
    require_model(model)
    n_iters = positive_int("n_iters", n_iters)
    n_runs = positive_int("n_runs", n_runs)
    if sigma is not None:
        sigma = finite_float("sigma", sigma, minimum=0, exclusive=True)
    seed = seed_from(generator)
    with evaluation_mode(model):
        hessian = LossHessian(model, loss_fn, batches, params=params, exclude=exclude, keep_graphs=keep_graphs)
        start = rademacher_rows(seed, 0, n_runs, hessian.dim, hessian.dtype, hessian.device)
        alphas, betas, _ = lanczos(hessian.matmat, start, n_iters, seed=seed + n_runs)
    nodes, weights = [], []
    for run in range(n_runs):
        values, vectors = torch.linalg.eigh(tridiagonal(alphas[run], betas[run]))
        nodes.append(values)
        weights.append(vectors[0] ** 2)
    nodes, weights = torch.stack(nodes), torch.stack(weights)
    span = (nodes.max() - nodes.min()).item()
    if sigma is None:
        sigma = 0.01 * span if span > 0 else 0.01 * max(nodes.abs().max().item(), 1.0)
    if isinstance(grid, int) and not isinstance(grid, bool):
        points = positive_int("grid", grid, minimum=2)
        grid = torch.linspace(nodes.min().item() - 5 * sigma, nodes.max().item() + 5 * sigma, points,
                              dtype=torch.float64)
    else:
        grid = torch.as_tensor(grid, dtype=torch.float64).cpu()
        if grid.dim() != 1 or grid.numel() < 2:
            raise InputError(f"grid must be a number of points or a 1-D tensor of points, got shape {tuple(grid.shape)}.")
    return SpectralDensity(grid=grid, density=gaussian_smoothing(grid, nodes, weights, sigma),
                           nodes=nodes, weights=weights, sigma=float(sigma))
