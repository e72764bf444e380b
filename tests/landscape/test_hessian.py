"""Hessian trace, eigenvalues and spectral density against the exact dense Hessian of tiny networks
(torch.func.hessian of the loss as a function of the flattened parameters), closed forms, and
PyHessian 0.1."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape import hessian
from landscape.errors import InputError
from landscape.hessian import hessian_eigenvalues, hessian_spectral_density, hessian_trace

from dense_hessians import exact_hessian
from tiny_networks import tiny_batches, tiny_model

DTYPE = torch.float64


def tiny_mlp(seed: int = 0) -> nn.Module:
    """4 → 8 → 3 with tanh: 67 parameters, a Hessian with eigenvalues of both signs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DTYPE)


def data(n: int = 40, seed: int = 1, features: int = 4, classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, features, dtype=DTYPE, generator=generator)
    targets = torch.randint(0, classes, (n,), generator=generator)
    return inputs, targets


def block_slices(model: nn.Module):
    offset, slices = 0, {}
    for name, parameter in model.named_parameters():
        slices[name] = slice(offset, offset + parameter.numel())
        offset += parameter.numel()
    return slices


def quadratic_form_std(matrix: torch.Tensor) -> float:
    """Standard deviation of uᵀAu/D for a Rademacher u (‖u‖² = D): Var(uᵀAu) = 2 Σ_{i≠j} A_ij²."""
    off_diagonal = matrix - torch.diag(torch.diag(matrix))
    return math.sqrt(2 * (off_diagonal ** 2).sum().item()) / matrix.shape[0]


@pytest.fixture(scope="module")
def problem():
    model = tiny_mlp()
    inputs, targets = data()
    hessian = exact_hessian(model, F.cross_entropy, inputs, targets)
    return model, inputs, targets, hessian


# -- trace ---------------------------------------------------------------------------------------

def test_hutchinson_trace_is_within_four_standard_errors_of_the_exact_trace(problem):
    model, inputs, targets, hessian = problem
    estimate = hessian_trace(model, F.cross_entropy, [(inputs, targets)], n_probes=300,
                             generator=torch.Generator().manual_seed(0))
    assert estimate.n_probes == 300 and estimate.samples.shape == (300,)
    assert estimate.n_examples == 40 and estimate.dimension == 67
    assert estimate.stderr > 0
    assert estimate.value == pytest.approx(estimate.samples.mean().item())
    assert abs(estimate.value - hessian.trace().item()) < 4 * estimate.stderr


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # L(w) = (1/N) Σ_n ‖x_n ⊙ w − t_n‖² has Hessian diag(2 · mean_n x_n²); vᵀHv = tr H for every ±1 probe
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, dtype=DTYPE))

        def forward(self, inputs):
            return inputs * self.weight

    inputs = torch.randn(10, 6, dtype=DTYPE)
    targets = torch.randn(10, 6, dtype=DTYPE)
    squared_error = lambda outputs, target: ((outputs - target) ** 2).sum(dim=1).mean()
    estimate = hessian_trace(Scale(), squared_error, (inputs, targets), n_probes=5)
    exact = 2 * (inputs ** 2).mean(dim=0).sum().item()
    assert torch.allclose(estimate.samples, torch.full((5,), exact, dtype=DTYPE), rtol=1e-12)
    assert estimate.stderr == pytest.approx(0.0, abs=1e-12)


def test_hutch_plus_plus_is_exact_once_the_sketch_spans_the_space(problem):
    model, inputs, targets, hessian = problem
    estimate = hessian_trace(model, F.cross_entropy, [(inputs, targets)], n_probes=3 * 67,
                             method="hutch++", generator=torch.Generator().manual_seed(1))
    assert estimate.value == pytest.approx(hessian.trace().item(), rel=1e-10)
    assert estimate.stderr == pytest.approx(0.0, abs=1e-10)


def test_hutch_plus_plus_is_within_four_standard_errors_of_the_exact_trace(problem):
    model, inputs, targets, hessian = problem
    estimate = hessian_trace(model, F.cross_entropy, [(inputs, targets)], n_probes=60,
                             method="hutch++", generator=torch.Generator().manual_seed(2))
    assert estimate.samples.shape == (60 - 2 * 20,) and estimate.n_probes == 60
    assert 0 < estimate.stderr < math.inf
    assert abs(estimate.value - hessian.trace().item()) < 4 * estimate.stderr


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_per_layer_traces_match_the_diagonal_blocks_and_sum_to_the_total(problem, method):
    model, inputs, targets, hessian = problem
    estimate = hessian_trace(model, F.cross_entropy, [(inputs, targets)], n_probes=150, method=method,
                             per_layer=True, generator=torch.Generator().manual_seed(3))
    assert list(estimate.per_layer) == [name for name, _ in model.named_parameters()]
    assert sum(layer.value for layer in estimate.per_layer.values()) == pytest.approx(estimate.value, rel=1e-12)
    for name, part in block_slices(model).items():
        block_trace = hessian[part, part].trace().item()
        layer = estimate.per_layer[name]
        assert abs(layer.value - block_trace) < 4 * layer.stderr + 1e-12, name


def test_several_batches_give_the_hessian_of_the_full_data_loss(problem):
    model, inputs, targets, hessian = problem
    batches = [(inputs[:7], targets[:7]), (inputs[7:20], targets[7:20]), (inputs[20:], targets[20:])]
    # the sketch spans the whole space, so the estimate is exact: it checks the n_b/N weighting
    estimate = hessian_trace(model, F.cross_entropy, iter(batches), n_probes=3 * 67, method="hutch++",
                             generator=torch.Generator().manual_seed(4))
    assert estimate.n_examples == 40
    assert estimate.value == pytest.approx(hessian.trace().item(), rel=1e-10)


def test_every_batch_sees_the_same_probes(problem):
    # with one probe per batch, H would be probed by Σ_b (n_b/N) v_bᵀH_b v_b: different samples
    model, inputs, targets, _ = problem
    batches = [(inputs[:15], targets[:15]), (inputs[15:], targets[15:])]
    split = hessian_trace(model, F.cross_entropy, batches, n_probes=10, generator=torch.Generator().manual_seed(5))
    whole = hessian_trace(model, F.cross_entropy, [(inputs, targets)], n_probes=10,
                          generator=torch.Generator().manual_seed(5))
    assert torch.allclose(split.samples, whole.samples, rtol=1e-10, atol=1e-12)


def test_probe_chunks_do_not_change_the_probes_or_the_products(problem):
    model, inputs, targets, _ = problem
    results = [hessian_trace(model, F.cross_entropy, [(inputs, targets)], n_probes=9, probe_chunk_size=chunk,
                             generator=torch.Generator().manual_seed(6)).samples for chunk in (1, 4, 9)]
    assert torch.allclose(results[0], results[1], rtol=1e-10) and torch.allclose(results[0], results[2], rtol=1e-10)
    again = hessian_trace(model, F.cross_entropy, [(inputs, targets)], n_probes=9,
                          generator=torch.Generator().manual_seed(6)).samples
    assert torch.equal(results[0], again)


def test_a_subset_of_parameters_gives_its_block_of_the_hessian(problem):
    model, inputs, targets, _ = problem
    names = ["2.weight", "0.bias"]
    block = exact_hessian(model, F.cross_entropy, inputs, targets, names=names)
    estimate = hessian_trace(model, F.cross_entropy, [(inputs, targets)], n_probes=3 * block.shape[0],
                             method="hutch++", params=names)
    assert estimate.dimension == 24 + 8
    assert estimate.value == pytest.approx(block.trace().item(), rel=1e-10)
    top = hessian_eigenvalues(model, F.cross_entropy, [(inputs, targets)], k=2, params=names,
                              generator=torch.Generator().manual_seed(7))
    assert np.allclose(top.eigenvalues.numpy(), np.linalg.eigvalsh(block.numpy())[::-1][:2], rtol=1e-8)


# -- eigenvalues ------------------------------------------------------------------------------------

def test_top_eigenvalues_and_vectors_match_a_dense_eigendecomposition(problem):
    model, inputs, targets, hessian = problem
    result = hessian_eigenvalues(model, F.cross_entropy, [(inputs, targets)], k=4,
                                 generator=torch.Generator().manual_seed(8))
    values, vectors = np.linalg.eigh(hessian.numpy())
    expected = values[::-1][:4]
    assert result.eigenvalues.dtype == torch.float64 and result.eigenvalues.shape == (4,)
    assert result.eigenvalues[0].item() == pytest.approx(expected[0], rel=1e-3)
    assert np.allclose(result.eigenvalues.numpy(), expected, rtol=1e-8)
    overlaps = np.abs(np.sum(result.eigenvectors.numpy() * vectors[:, ::-1][:, :4].T, axis=1))
    assert np.allclose(overlaps, 1.0, atol=1e-6)
    assert bool((result.residual_norms <= 1e-6 * abs(values).max()).all())
    assert result.n_products <= 67


def test_repeated_eigenvalues_are_found_with_their_multiplicity():
    # Hessian diag(2 · mean_n x_n²) with the top value 8 three times: a single Krylov space holds it once
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(6, dtype=DTYPE))

        def forward(self, inputs):
            return inputs * self.weight

    scales = torch.tensor([2.0, 2.0, 2.0, 1.0, 0.5, 1.5], dtype=DTYPE)
    inputs = scales.expand(4, 6).clone()
    squared_error = lambda outputs, target: ((outputs - target) ** 2).sum(dim=1).mean()
    result = hessian_eigenvalues(Scale(), squared_error, (inputs, torch.zeros(4, 6, dtype=DTYPE)), k=4,
                                 generator=torch.Generator().manual_seed(9))
    assert np.allclose(result.eigenvalues.numpy(), [8.0, 8.0, 8.0, 4.5], rtol=1e-10)


def test_eigenvalues_over_several_batches_with_and_without_kept_graphs(problem):
    model, inputs, targets, hessian = problem
    expected = np.linalg.eigvalsh(hessian.numpy())[::-1][:3]
    batches = [(inputs[:11], targets[:11]), (inputs[11:], targets[11:])]
    for keep_graphs in (False, True):
        result = hessian_eigenvalues(model, F.cross_entropy, (batch for batch in batches), k=3,
                                     keep_graphs=keep_graphs, generator=torch.Generator().manual_seed(10))
        assert np.allclose(result.eigenvalues.numpy(), expected, rtol=1e-8), keep_graphs


def test_too_few_iterations_warn_and_still_return_ritz_values(problem):
    model, inputs, targets, hessian = problem
    with pytest.warns(RuntimeWarning, match="raise n_iters"):
        result = hessian_eigenvalues(model, F.cross_entropy, [(inputs, targets)], k=1, n_iters=3,
                                     generator=torch.Generator().manual_seed(11))
    top = np.linalg.eigvalsh(hessian.numpy())[-1]
    # a Ritz value never exceeds the top eigenvalue and the residual bounds its distance to the spectrum
    assert result.eigenvalues[0].item() <= top + 1e-12
    assert result.residual_norms[0].item() > 0


def test_a_float32_model_is_measured_in_float32(problem):
    model, inputs, targets, hessian = problem
    single = tiny_mlp().float()
    result = hessian_eigenvalues(single, F.cross_entropy, [(inputs.float(), targets)], k=1, tol=1e-5,
                                 generator=torch.Generator().manual_seed(12))
    assert result.eigenvectors.dtype == torch.float32
    assert result.eigenvalues[0].item() == pytest.approx(np.linalg.eigvalsh(hessian.numpy())[-1], rel=1e-4)
    estimate = hessian_trace(single, F.cross_entropy, [(inputs, targets)], n_probes=3 * 67, method="hutch++")
    assert estimate.value == pytest.approx(hessian.trace().item(), rel=1e-4)


# -- spectral density -------------------------------------------------------------------------------

def test_spectral_density_moments_match_the_exact_hessian(problem):
    model, inputs, targets, hessian = problem
    dimension, runs = hessian.shape[0], 12
    density = hessian_spectral_density(model, F.cross_entropy, [(inputs, targets)], n_iters=20, n_runs=runs,
                                       generator=torch.Generator().manual_seed(13))
    grid, values, sigma = density.grid, density.density, density.sigma
    assert density.nodes.shape == density.weights.shape == (runs, 20)
    assert torch.allclose(density.weights.sum(dim=1), torch.ones(runs, dtype=DTYPE), atol=1e-12)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    assert density.nodes.min() >= eigenvalues[0] - 1e-10 and density.nodes.max() <= eigenvalues[-1] + 1e-10
    assert torch.trapezoid(values, grid).item() == pytest.approx(1.0, abs=1e-6)
    first = torch.trapezoid(grid * values, grid).item()
    second = torch.trapezoid(grid ** 2 * values, grid).item() - sigma ** 2
    # each run's quadrature is exact for degree < 40, so the moments are uᵀHu/D and uᵀH²u/D averaged
    # over the runs; they scatter around tr H/D and tr H²/D with the closed-form standard deviation
    assert abs(first - hessian.trace().item() / dimension) < 4 * quadratic_form_std(hessian) / math.sqrt(runs)
    square = hessian @ hessian
    assert abs(second - square.trace().item() / dimension) < 4 * quadratic_form_std(square) / math.sqrt(runs)


def test_full_lanczos_puts_the_nodes_on_the_eigenvalues(problem):
    model, inputs, targets, hessian = problem
    density = hessian_spectral_density(model, F.cross_entropy, [(inputs, targets)], n_iters=200, n_runs=1,
                                       grid=torch.linspace(-1, 1, 5), sigma=0.1,
                                       generator=torch.Generator().manual_seed(14))
    eigenvalues = torch.linalg.eigvalsh(hessian)
    assert density.nodes.shape == (1, 67)  # capped at the dimension
    assert density.nodes[0, -1].item() == pytest.approx(eigenvalues[-1].item(), rel=1e-8)
    assert density.nodes[0, 0].item() == pytest.approx(eigenvalues[0].item(), rel=1e-8)
    assert density.grid.shape == density.density.shape == (5,)


# -- eval mode, inputs --------------------------------------------------------------------------------

def test_measured_in_eval_mode_and_the_mode_is_restored():
    torch.manual_seed(15)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)).to(DTYPE)
    model[1].running_mean.copy_(torch.randn(6))
    model[1].running_var.copy_(torch.rand(6) + 0.5)
    inputs, targets = data(n=16, seed=16)
    model.eval()
    hessian = exact_hessian(model, F.cross_entropy, inputs, targets)
    model.train()
    model[3].eval()  # a submodule's own mode must come back too
    running_mean = model[1].running_mean.clone()
    dimension = hessian.shape[0]
    estimate = hessian_trace(model, F.cross_entropy, [(inputs, targets)], n_probes=3 * dimension, method="hutch++")
    top = hessian_eigenvalues(model, F.cross_entropy, [(inputs, targets)], k=1)
    assert estimate.value == pytest.approx(hessian.trace().item(), rel=1e-10)
    assert top.eigenvalues[0].item() == pytest.approx(torch.linalg.eigvalsh(hessian)[-1].item(), rel=1e-8)
    assert model.training and model[1].training and not model[3].training
    assert torch.equal(model[1].running_mean, running_mean)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_bad_input_raises_input_error(problem):
    model, inputs, targets, _ = problem
    batch = [(inputs, targets)]
    with pytest.raises(InputError, match="method"):
        hessian_trace(model, F.cross_entropy, batch, method="girard")
    with pytest.raises(InputError, match="n_probes"):
        hessian_trace(model, F.cross_entropy, batch, n_probes=0)
    with pytest.raises(InputError, match="n_probes"):
        hessian_trace(model, F.cross_entropy, batch, n_probes=2, method="hutch++")
    with pytest.raises(InputError, match="unknown parameter"):
        hessian_trace(model, F.cross_entropy, batch, params=["head.weight"])
    with pytest.raises(InputError, match="empty"):
        hessian_trace(model, F.cross_entropy, [], n_probes=2)
    with pytest.raises(InputError, match="scalar"):
        hessian_trace(model, lambda out, y: F.cross_entropy(out, y, reduction="none"), batch, n_probes=2)
    with pytest.raises(InputError, match="at most 67"):
        hessian_eigenvalues(model, F.cross_entropy, batch, k=68)
    with pytest.raises(InputError, match="pair"):
        hessian_eigenvalues(model, F.cross_entropy, [inputs], k=1)
    assert model.training  # restored after the errors too


# -- PyHessian 0.1 ----------------------------------------------------------------------------------

def pyhessian_trace(model, inputs, targets, probes, dataloader=None):
    from pyhessian import hessian as PyHessian
    torch.manual_seed(17)
    if dataloader is None:
        computer = PyHessian(model, F.cross_entropy, data=(inputs, targets), cuda=False)
    else:
        computer = PyHessian(model, F.cross_entropy, dataloader=dataloader, cuda=False)
    samples = np.array(computer.trace(maxIter=probes, tol=-math.inf))  # tol=−inf: spend every probe
    model.zero_grad(set_to_none=True)
    return samples


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")  # PyHessian's own call
def test_trace_agrees_with_pyhessian_within_the_combined_statistical_error(problem):
    model, inputs, targets, hessian = problem
    theirs = pyhessian_trace(model, inputs, targets, probes=200)
    assert theirs.shape == (200,)
    ours = hessian_trace(model, F.cross_entropy, [(inputs, targets)], n_probes=200,
                         generator=torch.Generator().manual_seed(18))
    combined = math.hypot(ours.stderr, theirs.std(ddof=1) / math.sqrt(len(theirs)))
    assert abs(ours.value - theirs.mean()) < 4 * combined
    batches = [(inputs[:20], targets[:20]), (inputs[20:], targets[20:])]
    theirs = pyhessian_trace(model, inputs, targets, probes=100, dataloader=batches)
    ours = hessian_trace(model, F.cross_entropy, batches, n_probes=100, generator=torch.Generator().manual_seed(19))
    combined = math.hypot(ours.stderr, theirs.std(ddof=1) / math.sqrt(len(theirs)))
    assert abs(ours.value - theirs.mean()) < 4 * combined
    model.train()


def test_eigenvalues_agree_with_pyhessian_power_iteration(problem):
    from pyhessian import hessian as PyHessian
    model, inputs, targets, hessian = problem
    # the top three eigenvalues dominate the most negative one in magnitude, so power iteration
    # (largest |λ|) and Lanczos (largest λ) look for the same eigenvalues
    spectrum = np.linalg.eigvalsh(hessian.numpy())
    assert spectrum[-3] > abs(spectrum[0])
    torch.manual_seed(20)
    computer = PyHessian(model, F.cross_entropy, data=(inputs, targets), cuda=False)
    theirs, _ = computer.eigenvalues(maxIter=1000, tol=1e-12, top_n=3)
    model.zero_grad(set_to_none=True)
    model.train()
    ours = hessian_eigenvalues(model, F.cross_entropy, [(inputs, targets)], k=3,
                               generator=torch.Generator().manual_seed(21))
    assert np.allclose(ours.eigenvalues.numpy(), theirs, rtol=1e-5)


def test_hessian_takes_its_settings_by_keyword_and_records_them():
    model, batches = tiny_model(), tiny_batches()
    with pytest.raises(TypeError, match="positional"):
        hessian.hessian_trace(model, F.cross_entropy, batches, 6)
    trace = hessian.hessian_trace(model, F.cross_entropy, batches, n_probes=6, generator=torch.Generator().manual_seed(2))
    assert trace.n_examples == 8 and trace.n_probes == 6
