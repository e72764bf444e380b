"""SAM and ASAM against hand-computed updates on quadratics; ρ = 0 is SGD bit for bit; BatchNorm
statistics and the perturbed pass; gradient scaling and bfloat16 autocast on the CPU; which
parameters ASAM scales (official rule: weights only; or all)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ensembles.methods.sam import SAM, asam_scaled_parameters, frozen_batch_norm_statistics
from ensembles.methods.sharpbalance import training_step
from ensembles.models.zoo import build
from landscape.errors import InputError


def quadratic_problem(seed=0):
    """Two parameter tensors, loss ½ Σ_t θ_tᵀ A_t θ_t − b_tᵀ θ_t (gradient A_t θ_t − b_t)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(3,), (4,)]
    thetas = [nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64)) for s in shapes]
    matrices = []
    for (n,) in shapes:
        root = torch.randn(n, n, generator=generator, dtype=torch.float64)
        matrices.append(root @ root.T + torch.eye(n, dtype=torch.float64))
    vectors = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]

    def loss():
        return sum(0.5 * t @ A @ t - b @ t for t, A, b in zip(thetas, matrices, vectors))

    def gradient(points):
        return [A @ t - b for t, A, b in zip(points, matrices, vectors)]

    return thetas, loss, gradient


def sam_step(optimizer, thetas, loss):
    optimizer.zero_grad()
    loss().backward()
    optimizer.first_step(zero_grad=True)
    loss().backward()
    optimizer.second_step()


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_step_equals_hand_computed_update_on_a_quadratic(adaptive):
    thetas, loss, gradient = quadratic_problem()
    start = [t.detach().clone() for t in thetas]
    rho, lr, eta = 0.3, 0.1, 0.01
    optimizer = SAM(torch.optim.SGD(thetas, lr=lr), rho=rho, adaptive=adaptive, eta=eta)
    sam_step(optimizer, thetas, loss)

    g = gradient(start)
    scale = [t.abs() + eta for t in start] if adaptive else [torch.ones_like(t) for t in start]
    # ε = ρ T² g / ‖T g‖ with one norm over both tensors (T = I for SAM)
    norm = torch.cat([(s * gi) for s, gi in zip(scale, g)]).norm()
    epsilon = [rho * s * s * gi / norm for s, gi in zip(scale, g)]
    g_perturbed = gradient([t + e for t, e in zip(start, epsilon)])
    for theta, t0, gp in zip(thetas, start, g_perturbed):
        torch.testing.assert_close(theta.detach(), t0 - lr * gp, rtol=0, atol=1e-14)


def test_closure_step_equals_the_two_named_steps():
    thetas_a, loss_a, _ = quadratic_problem(1)
    thetas_b, loss_b, _ = quadratic_problem(1)
    a = SAM(torch.optim.SGD(thetas_a, lr=0.05, momentum=0.9), rho=0.2)
    b = SAM(torch.optim.SGD(thetas_b, lr=0.05, momentum=0.9), rho=0.2)
    for _ in range(3):
        sam_step(a, thetas_a, loss_a)

        def closure():
            value = loss_b()
            value.backward()
            return value

        b.step(closure)
    for x, y in zip(thetas_a, thetas_b):
        assert torch.equal(x, y)


def test_return_to_theta_is_exact():
    thetas, loss, _ = quadratic_problem(2)
    start = [t.detach().clone() for t in thetas]
    optimizer = SAM(torch.optim.SGD(thetas, lr=0.1), rho=0.7)
    loss().backward()
    optimizer.first_step()
    assert not torch.equal(thetas[0], start[0])
    optimizer.restore()
    assert all(torch.equal(t, s) for t, s in zip(thetas, start))


def random_batches(count, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(count)]


@pytest.mark.parametrize("adaptive", [False, True])
def test_rho_zero_is_sgd_bit_for_bit(adaptive):
    torch.manual_seed(0)
    reference = build("small_cnn", 10, width=4)
    ours = build("small_cnn", 10, width=4)
    ours.load_state_dict(reference.state_dict())
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sam = SAM(torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4), rho=0.0, adaptive=adaptive)
    for inputs, targets in random_batches(4):
        sgd.zero_grad()
        F.cross_entropy(reference(inputs), targets).backward()
        sgd.step()
        training_step(ours, sam, inputs, targets)
    for (name, a), b in zip(reference.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), name


def batch_norm_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("frozen", [True, False])
def test_batch_norm_statistics_and_the_perturbed_pass(frozen):
    torch.manual_seed(1)
    model = build("small_cnn", 10, width=4)
    inputs, targets = random_batches(1)[0]
    # Expected after the unperturbed pass alone: one forward in train mode at θ.
    alone = build("small_cnn", 10, width=4)
    alone.load_state_dict(model.state_dict())
    alone.train()
    alone(inputs)
    expected = batch_norm_buffers(alone)

    optimizer = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5)
    model.train()
    training_step(model, optimizer, inputs, targets, freeze_batch_norm=frozen)
    after = batch_norm_buffers(model)
    if frozen:
        for key in expected:
            assert torch.equal(after[key], expected[key]), key
    else:  # the released code's behaviour: the perturbed pass updates them too
        assert int(after["bn1.num_batches_tracked"]) == 2
        assert not torch.equal(after["bn1.running_mean"], expected["bn1.running_mean"])
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_frozen_statistics_still_normalize_by_the_batch():
    torch.manual_seed(2)
    layer = nn.BatchNorm1d(3).train()
    x = torch.randn(32, 3) * 5 + 2
    with frozen_batch_norm_statistics(layer):
        out = layer(x)
    reference = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + layer.eps)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.running_mean, torch.zeros(3)) and int(layer.num_batches_tracked) == 0


def test_gradient_scaler_on_cpu_gives_the_unscaled_step():
    torch.manual_seed(3)
    plain = build("small_cnn", 10, width=4)
    scaled = build("small_cnn", 10, width=4)
    scaled.load_state_dict(plain.state_dict())
    a = SAM(torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9), rho=0.2)
    b = SAM(torch.optim.SGD(scaled.parameters(), lr=0.1, momentum=0.9), rho=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    for inputs, targets in random_batches(2, seed=4):
        training_step(plain, a, inputs, targets)
        training_step(scaled, b, inputs, targets, scaler=scaler)
    for (name, x), y in zip(plain.state_dict().items(), scaled.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def test_bfloat16_autocast_on_cpu_is_close_to_float32():
    torch.manual_seed(5)
    full = build("small_cnn", 10, width=4)
    low = build("small_cnn", 10, width=4)
    low.load_state_dict(full.state_dict())
    start = torch.nn.utils.parameters_to_vector(full.parameters()).detach().clone()
    a = SAM(torch.optim.SGD(full.parameters(), lr=0.1), rho=0.2)
    b = SAM(torch.optim.SGD(low.parameters(), lr=0.1), rho=0.2)
    inputs, targets = random_batches(1, seed=6)[0]
    training_step(full, a, inputs, targets)
    training_step(low, b, inputs, targets, autocast_dtype=torch.bfloat16)
    step_full = torch.nn.utils.parameters_to_vector(full.parameters()).detach() - start
    step_low = torch.nn.utils.parameters_to_vector(low.parameters()).detach() - start
    assert all(p.dtype == torch.float32 for p in low.parameters())
    # bfloat16 keeps 8 bits of mantissa: the updates point the same way, within tens of percent
    assert torch.nn.functional.cosine_similarity(step_low, step_full, dim=0) > 0.95
    assert (step_low - step_full).norm() < 0.3 * step_full.norm()


def test_bad_arguments():
    with pytest.raises(InputError):
        SAM(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), rho=-1)
    with pytest.raises(InputError):
        SAM("sgd", rho=0.1)


# -- ASAM scales only the parameters named "weight" by default (official ASAM)

def _tiny_linear_step(rule):
    """One ASAM first step on f(x) = w·x + b, L = f², at w = (0.5, −1), b = 0.25, x = (1, 2)."""
    model = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0]]))
        model.bias.copy_(torch.tensor([0.25]))
    optimizer = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.1, adaptive=True, eta=0.01,
                    scaled=asam_scaled_parameters(model, rule))
    model(torch.tensor([[1.0, 2.0]], dtype=torch.float64)).pow(2).sum().backward()
    optimizer.first_step()
    return model.weight.detach().flatten() - torch.tensor([0.5, -1.0]), model.bias.detach() - 0.25


def test_official_asam_step_leaves_the_bias_unscaled():
    # f = 0.5 − 2 + 0.25 = −1.25, so g_w = 2f·x = (−2.5, −5), g_b = 2f = −2.5.
    # Weights: T_w = |w| + η = (0.51, 1.01); bias: T_b = 1.
    # N = ‖(T_w g_w, g_b)‖ = sqrt(1.275² + 5.05² + 2.5²); ε_w = ρ T_w² g_w / N, ε_b = ρ g_b / N.
    norm = math.sqrt(1.275 ** 2 + 5.05 ** 2 + 2.5 ** 2)
    epsilon_w, epsilon_b = _tiny_linear_step("weights")
    assert epsilon_w.tolist() == pytest.approx([0.1 * 0.51 ** 2 * -2.5 / norm, 0.1 * 1.01 ** 2 * -5 / norm], abs=1e-12)
    assert epsilon_b.item() == pytest.approx(0.1 * -2.5 / norm, abs=1e-12)


def test_all_parameter_asam_step_scales_the_bias_too():
    # As above with T_b = |b| + η = 0.26: N = sqrt(1.275² + 5.05² + 0.65²), ε_b = ρ T_b² g_b / N.
    norm = math.sqrt(1.275 ** 2 + 5.05 ** 2 + 0.65 ** 2)
    epsilon_w, epsilon_b = _tiny_linear_step("all")
    assert epsilon_w.tolist() == pytest.approx([0.1 * 0.51 ** 2 * -2.5 / norm, 0.1 * 1.01 ** 2 * -5 / norm], abs=1e-12)
    assert epsilon_b.item() == pytest.approx(0.1 * 0.26 ** 2 * -2.5 / norm, abs=1e-12)


def test_official_rule_scales_conv_and_batch_norm_weights_but_no_shift():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(2, 2))
    names = {id(p): name for name, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in asam_scaled_parameters(model)) == ["0.weight", "1.weight", "3.weight"]
    assert len(asam_scaled_parameters(model, "all")) == 6
    with pytest.raises(InputError, match="unknown ASAM scaling"):
        asam_scaled_parameters(model, "biases")
