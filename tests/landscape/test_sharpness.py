"""Sharpness checked against closed forms, brute force, scipy, and a plain per-batch loop.

References used: for a loss that is exactly quadratic and stationary at θ (least squares at
an exact fit, ``H = 2XᵀX/m``) the worst case over the scaled ℓ2 ball is ``ρ²/2 · λmax(THT)`` (the
trust-region problem at a stationary point), the ℓ2 average ``ρ²/2 · Σ H_ii T_ii²``, the ℓ∞
average ``ρ²/6 · Σ H_ii T_ii²``, and for diagonal ``H`` the ℓ∞ worst case is the corner
``ρ²/2 · Σ H_ii T_ii²``. For a loss linear in θ, ``L = cᵀθ``, the worst case is the dual norm:
``ρ‖Tc‖₂`` (ℓ2), ``ρ Σ|c_i| T_ii`` (ℓ∞).
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import landscape.sharpness
from ensembles.models import zoo
from landscape import sharpness
from landscape.errors import InputError, NonFiniteError
from landscape.sharpness import (SharpnessResult, apgd_checkpoints, average_case_sharpness, select_parameters,
                                 worst_case_sharpness)
from tiny_networks import tiny_batches, tiny_model

DOUBLE = torch.float64
ROUNDING = 1e-9  # relative slack for "never above the true maximum"


def squared_error(outputs, targets):
    return (outputs.squeeze(-1) - targets).pow(2).mean()


def mean_output(outputs, targets):
    return outputs.mean()


def linear_model(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    model = nn.Linear(weight.shape[-1], 1, bias=bias is not None).to(DOUBLE)
    with torch.no_grad():
        model.weight.copy_(weight.reshape(1, -1))
        if bias is not None:
            model.bias.copy_(bias.reshape(1))
    return model


def exact_fit_batches(n_batches=3, m=8, d=5, seed=0):
    """Least squares with noiseless targets: every batch is exactly fitted, so stationary."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(d, generator=generator, dtype=DOUBLE)
    scales = torch.linspace(0.4, 2.0, d, dtype=DOUBLE)
    batches = []
    for _ in range(n_batches):
        inputs = torch.randn(m, d, generator=generator, dtype=DOUBLE) * scales
        batches.append((inputs, inputs @ weight))
    return linear_model(weight), weight, batches


def hessian(inputs):
    return 2 * inputs.T @ inputs / inputs.shape[0]


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).flatten(1))


def tiny_cnn_and_batches(n_batches=3, m=4, seed=0):
    torch.manual_seed(seed)
    model = TinyCNN().to(DOUBLE)
    generator = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(m, 2, 4, 4, generator=generator, dtype=DOUBLE),
                torch.randint(0, 3, (m,), generator=generator)) for _ in range(n_batches)]
    with torch.no_grad():  # non-trivial running statistics and BN affine parameters
        model.bn.running_mean.uniform_(-0.5, 0.5, generator=generator)
        model.bn.running_var.uniform_(0.5, 2.0, generator=generator)
        model.bn.weight.uniform_(0.5, 1.5, generator=generator)
        model.bn.bias.uniform_(-0.3, 0.3, generator=generator)
    return model, batches


# ------------------------------------------------------------------------------------------------
# Closed forms
# ------------------------------------------------------------------------------------------------

def test_checkpoints_for_twenty_iterations_match_the_reference_schedule():
    assert apgd_checkpoints(20) == [5, 9, 12, 15, 16, 18, 19, 20]


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_l2_on_exactly_fitted_least_squares_is_the_top_eigenvalue(adaptive):
    model, weight, batches = exact_fit_batches()
    rho = 0.5
    scale = torch.diag(weight.abs()) if adaptive else torch.eye(weight.numel(), dtype=DOUBLE)
    expected = torch.tensor([rho ** 2 / 2 * torch.linalg.eigvalsh(scale @ hessian(x) @ scale)[-1] for x, _ in batches])
    result = worst_case_sharpness(model, squared_error, batches, rho, norm="l2", adaptive=adaptive,
                                  init="random", generator=torch.Generator().manual_seed(0))
    # one perturbation per batch: each batch reaches its own maximum
    assert (result.per_batch <= expected * (1 + ROUNDING)).all()
    assert (result.per_batch >= 0.98 * expected).all()
    assert result.value == pytest.approx(expected.mean().item(), rel=0.02)
    assert result.stderr == pytest.approx((expected.std() / math.sqrt(3)).item(), rel=0.1)
    assert math.isnan(result.error_increase)  # regression targets: no 0-1 error


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_linf_on_a_diagonal_quadratic_is_the_corner(adaptive):
    # inputs diag(a), m = d: L(w) = (1/d) Σ a_i² (w_i − w*_i)², i.e. H = diag(2a²/d)
    d, rho = 6, 0.05
    a = torch.linspace(0.5, 3.0, d, dtype=DOUBLE)
    weight = torch.tensor([0.7, -1.3, 0.2, 2.0, -0.4, 1.1], dtype=DOUBLE)
    inputs = torch.diag(a)
    model = linear_model(weight)
    radius = rho * (weight.abs() if adaptive else torch.ones(d, dtype=DOUBLE))
    expected = 0.5 * ((2 * a ** 2 / d) * radius ** 2).sum().item()
    result = worst_case_sharpness(model, squared_error, [(inputs, inputs @ weight)], rho, norm="linf",
                                  adaptive=adaptive, init="random", generator=torch.Generator().manual_seed(1))
    assert result.value <= expected * (1 + ROUNDING)
    assert result.value >= 0.999 * expected


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_of_a_linear_loss_is_the_dual_norm_from_a_zero_start(norm, adaptive):
    # L(w, b) = mean(Xw + b) = cᵀw + b with c = mean of the rows of X; two weights are exactly 0
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(10, 7, generator=generator, dtype=DOUBLE)
    weight = torch.randn(7, generator=generator, dtype=DOUBLE)
    weight[[1, 4]] = 0.0
    bias = torch.tensor(0.3, dtype=DOUBLE)
    model = linear_model(weight, bias)
    rho = 0.1
    c = torch.cat([inputs.mean(0), torch.ones(1, dtype=DOUBLE)])
    scale = torch.cat([weight, bias.reshape(1)]).abs() if adaptive else torch.ones(8, dtype=DOUBLE)
    expected = rho * ((c * scale).norm() if norm == "l2" else (c.abs() * scale).sum()).item()
    result = worst_case_sharpness(model, mean_output, [(inputs, torch.zeros(10, dtype=DOUBLE))], rho,
                                  norm=norm, adaptive=adaptive)
    assert result.value == pytest.approx(expected, rel=1e-10)
    reference = worst_case_sharpness(model, mean_output, [(inputs, torch.zeros(10, dtype=DOUBLE))], rho,
                                     norm=norm, adaptive=adaptive, reference_ascent=True)
    assert 0 < reference.value <= expected * (1 + ROUNDING)


def test_reference_ascent_falls_short_on_the_adaptive_ellipsoid_and_ours_does_not():
    # the reference steps along T g/‖g‖ and projects Euclidean-wise: its fixed points are not
    # the maxima of the adaptive l2 problem (for a linear loss the maximizer is ρ T²c/‖Tc‖)
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(6, 5, generator=generator, dtype=DOUBLE)
    weight = torch.tensor([0.05, 1.0, -2.0, 0.3, -0.8], dtype=DOUBLE)
    model = linear_model(weight)
    rho = 0.2
    expected = rho * (inputs.mean(0) * weight.abs()).norm().item()
    batch = [(inputs, torch.zeros(6, dtype=DOUBLE))]
    ours = worst_case_sharpness(model, mean_output, batch, rho, norm="l2", adaptive=True)
    reference = worst_case_sharpness(model, mean_output, batch, rho, norm="l2", adaptive=True, reference_ascent=True)
    assert ours.value == pytest.approx(expected, rel=1e-10)
    assert reference.value < 0.99 * expected


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_average_case_on_exactly_fitted_least_squares_matches_the_trace_formula(norm, adaptive):
    model, weight, batches = exact_fit_batches(n_batches=1, m=12, d=5, seed=2)
    inputs = batches[0][0]
    rho, n_samples = 0.3, 3000
    scale = torch.diag(weight.abs()) if adaptive else torch.eye(5, dtype=DOUBLE)
    # the increase is exactly zᵀAz with A = ρ²/2 · T H T and z ~ N(0, I) or U[-1, 1]
    a = rho ** 2 / 2 * scale @ hessian(inputs) @ scale
    if norm == "l2":
        mean, variance = a.trace(), 2 * (a ** 2).sum()
    else:
        off_diagonal = (a ** 2).sum() - (a.diagonal() ** 2).sum()
        mean, variance = a.trace() / 3, (a.diagonal() ** 2).sum() * (1 / 5 - 1 / 9) + 2 * off_diagonal / 9
    result = average_case_sharpness(model, squared_error, batches, rho, norm=norm, adaptive=adaptive,
                                    n_draws=n_samples, chunk_size=1000, generator=torch.Generator().manual_seed(0))
    assert abs(result.value - mean.item()) <= 4 * math.sqrt(variance.item() / n_samples)
    assert result.n_draws == n_samples and result.kind == "average"


# ------------------------------------------------------------------------------------------------
# Zero weights in adaptive mode
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("reference_ascent", [False, True])
@pytest.mark.parametrize("init", ["zero", "random"])
def test_weights_equal_to_zero_cannot_move(norm, reference_ascent, init):
    # the loss depends only on coordinates whose weight is exactly 0: the adaptive ball is {0} there
    inputs = torch.zeros(4, 5, dtype=DOUBLE)
    inputs[:, [0, 2]] = torch.tensor([1.0, -2.0], dtype=DOUBLE)
    weight = torch.tensor([0.0, 1.0, 0.0, -0.5, 2.0], dtype=DOUBLE)
    model = linear_model(weight)
    batch = [(inputs, torch.zeros(4, dtype=DOUBLE))]
    result = worst_case_sharpness(model, mean_output, batch, 0.5, norm=norm, adaptive=True, init=init,
                                  n_restarts=2, reference_ascent=reference_ascent,
                                  generator=torch.Generator().manual_seed(0))
    assert result.value == 0.0 and torch.isfinite(result.per_batch).all()
    average = average_case_sharpness(model, mean_output, batch, 0.5, norm=norm, n_draws=10,
                                     generator=torch.Generator().manual_seed(0))
    assert average.value == 0.0


# ------------------------------------------------------------------------------------------------
# The vectorized computation equals a plain loop over batches
# ------------------------------------------------------------------------------------------------

CHECKPOINTS_20 = [5, 9, 12, 15, 16, 18, 19, 20]  # from the APGD paper's formula, worked by hand


def loop_worst_case(model, loss_fn, batches, rho, norm, adaptive, reference=False, momentum=0.75):
    """Straightforward APGD, one batch after another, ordinary autograd, 20 iterations."""
    n_iters = 20
    model.eval()
    center = {name: p.detach().clone() for name, p in model.named_parameters()}
    scale = {name: (v.abs() if adaptive else torch.ones_like(v)) for name, v in center.items()}

    def flat(delta):
        return torch.cat([v.flatten() for v in delta.values()])

    def evaluate(delta, x, y):
        leaves = {name: v.clone().requires_grad_(True) for name, v in delta.items()}
        outputs = functional_call(model, {name: center[name] + leaves[name] for name in leaves}, (x,))
        loss = loss_fn(outputs, y)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        error = (outputs.argmax(1) != y).to(DOUBLE).mean().item()
        return loss.item(), error, dict(zip(leaves, grads))

    def scaled_size(delta):
        return flat({n: v / scale[n] for n, v in delta.items()}).norm()

    def project(delta):
        if norm == "linf":
            return {n: torch.clamp(v, -rho * scale[n], rho * scale[n]) for n, v in delta.items()}
        size = scaled_size(delta)
        return {n: v * rho / size for n, v in delta.items()} if size > rho else delta

    def project_euclidean_by_bisection(delta):
        if norm == "linf" or not adaptive or scaled_size(delta) <= rho:
            return project(delta)
        x, axes = flat(delta), rho * flat(scale)
        def outside(mu):
            return ((x * axes / (axes ** 2 + mu)) ** 2).sum() > 1
        low, high = 0.0, 1.0
        while outside(high):
            high *= 2
        for _ in range(64):  # to float64 resolution
            middle = (low + high) / 2
            low, high = (middle, high) if outside(middle) else (low, middle)
        projected, start = {}, 0
        for n, v in delta.items():
            a = axes[start:start + v.numel()].reshape(v.shape)
            projected[n] = v * a ** 2 / (a ** 2 + high)
            start += v.numel()
        return projected

    def direction(g):
        if norm == "linf":
            return {n: scale[n] * v.sign() for n, v in g.items()}
        if reference:
            length = flat(g).norm() + 1e-12
            return {n: scale[n] * v / length for n, v in g.items()}
        length = flat({n: scale[n] * v for n, v in g.items()}).norm()
        return {n: scale[n] ** 2 * v / length for n, v in g.items()}

    increases, error_increases = [], []
    for x, y in batches:
        delta = {n: torch.zeros_like(v) for n, v in center.items()}
        previous = delta
        clean, clean_error, g = evaluate(delta, x, y)
        best, best_error, best_delta, best_previous, best_g = clean, clean_error, delta, previous, g
        step, improvements, halved_last, best_at_checkpoint, last_checkpoint = 2 * rho, 0, False, best, 0
        for i in range(n_iters):
            if reference:
                z = project_euclidean_by_bisection({n: delta[n] + step * s for n, s in direction(g).items()})
                new = {n: momentum * z[n] + (1 - momentum) * previous[n] for n in z}
            else:
                z = project({n: delta[n] + step * s for n, s in direction(g).items()})
                new = z if i == 0 else project({n: delta[n] + momentum * (z[n] - delta[n])
                                                + (1 - momentum) * (delta[n] - previous[n]) for n in z})
            previous, delta = delta, new
            loss, error, g = evaluate(delta, x, y)
            if loss > best:
                best, best_error, best_delta, best_previous, best_g = loss, error, delta, previous, g
                improvements += 1
            if i in CHECKPOINTS_20 and i < n_iters - 1:
                halve = improvements < 0.75 * (i - last_checkpoint) or (not halved_last and best == best_at_checkpoint)
                halved_last, best_at_checkpoint, last_checkpoint, improvements = halve, best, i, 0
                if halve:
                    step /= 2
                    g = best_g
                    if not reference:
                        delta, previous = best_delta, best_previous
        increases.append(best - clean)
        error_increases.append(best_error - clean_error)
    return torch.tensor(increases, dtype=DOUBLE), torch.tensor(error_increases, dtype=DOUBLE)


@pytest.mark.parametrize("norm,adaptive,rho,reference", [
    ("l2", True, 0.5, False), ("linf", False, 0.02, False), ("l2", True, 0.5, True), ("l2", False, 0.3, True),
])
def test_vectorized_worst_case_equals_a_plain_loop_over_batches_with_batchnorm(norm, adaptive, rho, reference):
    model, batches = tiny_cnn_and_batches()
    model.train()
    expected, expected_error = loop_worst_case(model, F.cross_entropy, batches, rho, norm, adaptive, reference)
    model.train()
    for chunk_size in (None, 2):
        result = worst_case_sharpness(model, F.cross_entropy, batches, rho, norm=norm, adaptive=adaptive,
                                      reference_ascent=reference, chunk_size=chunk_size)
        torch.testing.assert_close(result.per_batch, expected, rtol=1e-9, atol=1e-12)
        assert result.error_increase == pytest.approx(expected_error.mean().item(), abs=1e-12)
    assert (expected > 0).all()


def test_default_chunks_bound_the_weights_in_flight_without_changing_the_result(monkeypatch):
    import landscape.sharpness as sharpness

    model, batches = tiny_cnn_and_batches(n_batches=3)
    all_at_once = worst_case_sharpness(model, F.cross_entropy, batches, 0.3, n_iters=6)
    n_weights = sum(p.numel() for p in model.parameters())
    seen = []
    original = sharpness._ascend
    monkeypatch.setattr(sharpness, "_ascend", lambda loss, ball, inputs, *rest: seen.append(inputs.shape[0])
                        or original(loss, ball, inputs, *rest))
    monkeypatch.setattr(sharpness, "_WEIGHTS_IN_FLIGHT", 2 * n_weights + 1)
    chunked = worst_case_sharpness(model, F.cross_entropy, batches, 0.3, n_iters=6)
    assert seen == [2, 1]
    torch.testing.assert_close(chunked.per_batch, all_at_once.per_batch, rtol=1e-9, atol=1e-12)
    # four batches of which three would fit: two equal chunks, not 3 + 1
    model, batches = tiny_cnn_and_batches(n_batches=4)
    seen.clear()
    monkeypatch.setattr(sharpness, "_WEIGHTS_IN_FLIGHT", 3 * n_weights + 1)
    worst_case_sharpness(model, F.cross_entropy, batches, 0.3, n_iters=2)
    assert seen == [2, 2]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_vectorized_average_case_equals_a_plain_loop_over_draws(norm):
    model, batches = tiny_cnn_and_batches(n_batches=3)
    rho, n_samples = 0.4, 4
    result = average_case_sharpness(model, F.cross_entropy, batches, rho, norm=norm, n_draws=n_samples,
                                    generator=torch.Generator().manual_seed(7))
    # replay the documented draw order: chunk = B evaluations, evaluation j is draw j // B of batch j % B
    model.eval()
    generator = torch.Generator().manual_seed(7)
    center = {name: p.detach() for name, p in model.named_parameters()}
    sums = torch.zeros(3, dtype=DOUBLE)
    with torch.no_grad():
        for _ in range(n_samples):
            draw = torch.randn if norm == "l2" else torch.rand
            draws = {name: draw((3, *v.shape), generator=generator, dtype=DOUBLE) for name, v in center.items()}
            for b, (x, y) in enumerate(batches):
                weights = {name: v + rho * v.abs() * (draws[name][b] if norm == "l2" else 2 * draws[name][b] - 1)
                           for name, v in center.items()}
                sums[b] += F.cross_entropy(functional_call(model, weights, (x,)), y)
        clean = torch.stack([F.cross_entropy(model(x), y) for x, y in batches])
    torch.testing.assert_close(result.per_batch, sums / n_samples - clean, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Restarts, random starts, selection, bookkeeping
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("init", ["zero", "random"])
def test_more_restarts_never_lower_the_result(init):
    model, batches = tiny_cnn_and_batches(n_batches=2)
    results = [worst_case_sharpness(model, F.cross_entropy, batches, 0.3, n_iters=8, init=init, n_restarts=restarts,
                                    generator=torch.Generator().manual_seed(11)) for restarts in (1, 3)]
    assert torch.isfinite(results[1].per_batch).all()
    assert (results[1].per_batch >= results[0].per_batch).all()
    assert results[0].value > 0


def test_excluding_every_parameter_gives_exactly_zero():
    model, batches = tiny_cnn_and_batches(n_batches=2)
    worst = worst_case_sharpness(model, F.cross_entropy, batches, 0.5, exclude="*")
    average = average_case_sharpness(model, F.cross_entropy, batches, 0.5, exclude=["conv.*", r"(bn|head)\..*"])
    for result in (worst, average):
        assert result.value == 0.0 and torch.equal(result.per_batch, torch.zeros(2, dtype=DOUBLE))
        assert result.n_perturbed == 0 and result.error_increase == 0.0


def test_include_perturbs_only_the_named_parameters():
    # linear loss cᵀw + b: perturbing only the weight gives ρ‖T c‖ over the weight block alone
    generator = torch.Generator().manual_seed(8)
    inputs = torch.randn(5, 4, generator=generator, dtype=DOUBLE)
    weight = torch.randn(4, generator=generator, dtype=DOUBLE)
    model = linear_model(weight, torch.tensor(2.0, dtype=DOUBLE))
    batch = [(inputs, torch.zeros(5, dtype=DOUBLE))]
    result = worst_case_sharpness(model, mean_output, batch, 0.1, params="weight")
    assert result.value == pytest.approx(0.1 * (inputs.mean(0) * weight.abs()).norm().item(), rel=1e-10)
    assert result.n_perturbed == 4
    only_bias = worst_case_sharpness(model, mean_output, batch, 0.1, exclude=r"w.*t")
    assert only_bias.value == pytest.approx(0.1 * 2.0, rel=1e-10)


def test_selection_by_glob_and_regex_and_typos():
    model, _ = tiny_cnn_and_batches()
    assert list(select_parameters(model, params="*.weight")) == ["conv.weight", "bn.weight", "head.weight"]
    assert list(select_parameters(model, params=r"(conv|head)\.bias")) == ["conv.bias", "head.bias"]
    assert list(select_parameters(model, exclude=["bn.*", "head.*"])) == ["conv.weight", "conv.bias"]
    with pytest.raises(InputError, match="matches no trainable parameter"):
        select_parameters(model, params="layer1.*")


def test_model_mode_parameters_and_buffers_are_left_as_they_were():
    model, batches = tiny_cnn_and_batches(n_batches=2)
    model.train()
    model.head.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    worst_case_sharpness(model, F.cross_entropy, batches, 0.5, n_iters=3, init="random",
                         generator=torch.Generator().manual_seed(0))
    average_case_sharpness(model, F.cross_entropy, batches, 0.5, n_draws=2)
    assert model.training and model.conv.training and model.bn.training and not model.head.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_clean_loss_uses_eval_mode_and_logit_normalization():
    model, batches = tiny_cnn_and_batches(n_batches=2)
    model.train()
    result = worst_case_sharpness(model, F.cross_entropy, batches, 0.1, n_iters=2, logit_normalization=True)
    model.eval()
    with torch.no_grad():
        expected = []
        for x, y in batches:
            logits = model(x)
            centred = logits - logits.mean(1, keepdim=True)
            expected.append(F.cross_entropy(centred / centred.norm(dim=1, keepdim=True), y))
    assert result.clean_loss == pytest.approx(torch.stack(expected).mean().item(), rel=1e-12)
    assert result.logit_normalization


def test_result_records_its_settings_and_works_in_float32():
    model, batches = tiny_cnn_and_batches(n_batches=3, m=4)
    model = model.float()
    batches = [(x.float(), y) for x, y in batches]
    result = worst_case_sharpness(model, F.cross_entropy, batches, 0.05, norm="linf", adaptive=False, n_iters=4)
    assert isinstance(result, SharpnessResult) and result.per_batch.dtype == torch.float32
    assert math.isfinite(result.value) and result.value >= 0
    settings_row = result.settings()
    assert settings_row["m"] == 4 and settings_row["n_batches"] == 3 and settings_row["rho"] == 0.05
    assert settings_row["norm"] == "linf" and settings_row["adaptive"] is False and settings_row["n_iters"] == 4
    assert "value" not in settings_row and "n_samples" not in settings_row
    assert result.metric == "sharpness/worst/linf/standard"
    assert result.worst_loss == result.perturbed_loss


def test_bad_input_is_reported_clearly():
    model, batches = tiny_cnn_and_batches(n_batches=2)
    uneven = batches + [(batches[0][0][:2], batches[0][1][:2])]
    with pytest.raises(InputError, match="drop_last"):
        worst_case_sharpness(model, F.cross_entropy, uneven, 0.1)
    with pytest.raises(InputError, match="mean loss"):
        worst_case_sharpness(model, lambda o, y: F.cross_entropy(o, y, reduction="none"), batches, 0.1)
    with pytest.raises(InputError, match="norm"):
        average_case_sharpness(model, F.cross_entropy, batches, 0.1, norm="l1")
    with pytest.raises(InputError, match="rho"):
        worst_case_sharpness(model, F.cross_entropy, batches, -1.0)
    with pytest.raises(InputError, match="no batches"):
        worst_case_sharpness(model, F.cross_entropy, [], 0.1)


# -- one calling convention: members, loss, data by position; every setting by keyword ------------

def test_sharpness_takes_its_settings_by_keyword_and_records_them():
    model, batches = tiny_model(), tiny_batches()
    with pytest.raises(TypeError, match="positional"):
        sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, "l2", True, 2, 1)
    with pytest.raises(TypeError, match="include"):
        sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, include="2.*", n_iters=3)
    worst = sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, params="2.*", n_iters=3)
    assert worst.params == ("2.*",) and worst.n_perturbed == 10  # 2.weight (2×4) and 2.bias (2)
    average = sharpness.average_case_sharpness(model, F.cross_entropy, batches, 0.1, n_draws=5,
                                               generator=torch.Generator().manual_seed(3))
    assert average.n_draws == 5


# -- the reference code's ascent, everywhere a sharpness is measured, never mixed with APGD's

# APGD's step-size checkpoints (Croce & Hein, ICML 2020, §3.2) for 20 iterations, as Andriushchenko et al.'s code uses them
_CHECKPOINTS_20 = (5, 9, 12, 15, 16, 18, 19, 20)


def _ellipsoid_projection(delta, t, rho):
    """Euclidean projection onto {d: ‖d/t‖₂ ≤ ρ}: d = x t²/(t² + λ), λ ≥ 0 found by bisection."""
    def scaled_norm2(lam):
        return sum(((d * s / (s * s + lam)) ** 2).sum() for d, s in zip(delta, t)).item()
    if scaled_norm2(0.0) <= rho ** 2:
        return delta
    low, high = 0.0, 1.0
    while scaled_norm2(high) > rho ** 2:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if scaled_norm2(middle) > rho ** 2 else (low, middle)
    return [d * s * s / (s * s + high) for d, s in zip(delta, t)]


def _reference_worst_case(model, inputs, targets, rho, norm, adaptive, n_iters=20, alpha=0.75):
    """The ascent of Andriushchenko et al.'s (ICML 2023) code for one batch, as it reads: start at 0, step 2ρ;
    step η·T·g/‖g‖₂ (raw gradient norm) or η·T·sign(g); project (clamp, rescale, or the ellipsoid);
    δ ← α z + (1 − α) δ_prev; at the checkpoints halve η when < 0.75 of the steps since the last one
    improved, or when it was not halved last time and the best did not improve, and then take the
    next gradient at the best point (δ itself stays). Returns best loss − clean loss."""
    names = [name for name, _ in model.named_parameters()]
    theta = [p.detach() for _, p in model.named_parameters()]
    t = [p.abs() if adaptive else torch.ones_like(p) for p in theta]

    def loss_and_gradient(delta):
        leaves = [d.clone().requires_grad_() for d in delta]
        outputs = torch.func.functional_call(model, {n: p + d for n, p, d in zip(names, theta, leaves)}, (inputs,))
        loss = torch.nn.functional.cross_entropy(outputs, targets)
        return loss.item(), torch.autograd.grad(loss, leaves)

    def project(delta):
        if norm == "linf":
            return [d.clamp(-rho * s, rho * s) for d, s in zip(delta, t)]
        if adaptive:
            return _ellipsoid_projection(delta, t, rho)
        length = math.sqrt(sum((d ** 2).sum().item() for d in delta))
        return delta if length <= rho else [d * rho / length for d in delta]

    delta = previous = [torch.zeros_like(p) for p in theta]
    clean, gradient = loss_and_gradient(delta)
    best, best_gradient, step = clean, gradient, 2 * rho
    improvements, halved_last, best_at_checkpoint, last_checkpoint = 0, False, clean, 0
    for k in range(n_iters):
        if norm == "linf":
            moved = [d + step * g.sign() * s for d, g, s in zip(delta, gradient, t)]
        else:
            length = math.sqrt(sum((g ** 2).sum().item() for g in gradient)) + 1e-12
            moved = [d + step * s * g / length for d, g, s in zip(delta, gradient, t)]
        z = project(moved)
        previous, delta = delta, [alpha * zi + (1 - alpha) * p for zi, p in zip(z, previous)]
        loss, gradient = loss_and_gradient(delta)
        if loss > best:
            best, best_gradient, improvements = loss, gradient, improvements + 1
        if k in _CHECKPOINTS_20 and k < n_iters - 1:
            halve = improvements < 0.75 * (k - last_checkpoint) or (not halved_last and best == best_at_checkpoint)
            halved_last, best_at_checkpoint, last_checkpoint, improvements = halve, best, k, 0
            if halve:
                step, gradient = step / 2, best_gradient
    return best - clean


@pytest.mark.parametrize("norm, adaptive", [("l2", True), ("l2", False), ("linf", True)])
def test_reference_ascent_equals_an_independent_reimplementation(norm, adaptive):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).double()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(5, 6, generator=generator, dtype=torch.float64),
                torch.randint(0, 3, (5,), generator=generator)) for _ in range(4)]
    rho = 0.5 if norm == "l2" else 0.05
    ours = worst_case_sharpness(model, torch.nn.functional.cross_entropy, batches, rho, norm, adaptive,
                                n_iters=20, reference_ascent=True)
    theirs = [_reference_worst_case(model, x, y, rho, norm, adaptive) for x, y in batches]
    assert ours.per_batch.tolist() == pytest.approx(theirs, abs=1e-4)
    assert min(theirs) > 0
    if norm == "l2" and adaptive:  # and the two ascents really differ here, so the test can tell them apart
        apgd = worst_case_sharpness(model, torch.nn.functional.cross_entropy, batches, rho, norm, adaptive, n_iters=20)
        assert (apgd.per_batch - torch.tensor(theirs, dtype=torch.float64)).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------
# sharpness at extreme radii, landscape level


def tiny_model_and_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    inputs = torch.randn(3, 4, 5)
    targets = torch.randint(0, 3, (3, 4))
    return model, list(zip(inputs, targets))


@pytest.mark.parametrize("rho", [1e15, 1e19, 1e30, 1e300])  # logits ~ rho³ overflow float32 from 1e13
@pytest.mark.parametrize("kind", ["worst", "average"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_sharpness_at_a_radius_that_overflows_raises_never_returns_0_or_nan(rho, kind, norm):
    model, batches = tiny_model_and_batches()
    measure = landscape.sharpness.worst_case_sharpness if kind == "worst" else \
        landscape.sharpness.average_case_sharpness
    options = {"n_iters": 3} if kind == "worst" else {"n_draws": 2}
    with pytest.raises(InputError, match=re.escape(f"rho={rho:g}")) as error:
        measure(model, F.cross_entropy, batches, rho, norm, True, **options)
    assert "\n" not in str(error.value)
    assert "too large" in str(error.value) or ("overflows" in str(error.value)
                                               and isinstance(error.value, NonFiniteError))


@pytest.mark.parametrize("rho", [0.5, 1e9])
def test_sharpness_at_a_radius_that_does_not_overflow_is_measured(rho):
    model, batches = tiny_model_and_batches()
    result = landscape.sharpness.worst_case_sharpness(model, F.cross_entropy, batches, rho, n_iters=3)
    assert math.isfinite(result.value) and result.value > 0


def test_a_non_finite_clean_loss_is_refused_as_such():
    model, batches = tiny_model_and_batches()
    batches[1] = (torch.full_like(batches[1][0], math.nan), batches[1][1])
    for measure in (landscape.sharpness.worst_case_sharpness, landscape.sharpness.average_case_sharpness):
        with pytest.raises(NonFiniteError, match="the clean loss is nan on batch 1;.*check the weights and the data"):
            measure(model, F.cross_entropy, batches, 0.5)


# ----------------------------------------------------------------------------------------------
# m-sharpness on any iterable of batches


def test_streamed_batches_equal_stacked_ones():
    torch.manual_seed(0)
    model = zoo.build("small_cnn", 10, width=4)
    batches = [(torch.rand(3, 3, 8, 8), torch.randint(0, 10, (3,))) for _ in range(5)]
    stacked = worst_case_sharpness(model, F.cross_entropy, batches, rho=0.1, n_iters=3, chunk_size=2)
    # a one-pass generator, longer than needed, taken chunk by chunk
    streamed = worst_case_sharpness(model, F.cross_entropy, (b for b in batches + batches), rho=0.1, n_iters=3,
                                    n_batches=5, chunk_size=2)
    assert streamed.n_batches == 5
    assert streamed.value == stacked.value and torch.equal(streamed.per_batch, stacked.per_batch)
    # and all batches at once equal chunks of two up to float32 rounding
    at_once = worst_case_sharpness(model, F.cross_entropy, batches, rho=0.1, n_iters=3, chunk_size=5)
    assert at_once.value == pytest.approx(stacked.value, rel=1e-4)
    with pytest.raises(InputError, match="ran out after 5"):
        worst_case_sharpness(model, F.cross_entropy, iter(batches), rho=0.1, n_iters=1, n_batches=6)
