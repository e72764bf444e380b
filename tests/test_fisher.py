"""Per-sample Fisher trace against a plain loop over samples with ordinary autograd, and against
the closed form of a linear model."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.errors import InputError
from landscape.fisher import per_sample_fisher_trace

DTYPE = torch.float64


def looped_fisher_trace(model: nn.Module, loss_fn, inputs, targets, names=None) -> torch.Tensor:
    """‖∇θ ℓ(x_j, y_j)‖² one sample at a time with torch.autograd.grad, in eval mode."""
    model.eval()
    named = dict(model.named_parameters())
    parameters = [named[name] for name in (names or named)]
    traces = []
    for j in range(len(inputs)):
        loss = loss_fn(model(inputs[j:j + 1]), targets[j:j + 1])
        gradient = torch.autograd.grad(loss, parameters)
        traces.append(sum((part ** 2).sum() for part in gradient))
    return torch.stack(traces).detach()


def small_cnn_with_batch_norm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 3 * 3, 5)).to(DTYPE)
    batch_norm = model[1]
    batch_norm.running_mean.copy_(torch.randn(4))
    batch_norm.running_var.copy_(torch.rand(4) + 0.5)
    batch_norm.weight.data.copy_(torch.randn(4))
    return model


def images(n: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 6, 6, dtype=DTYPE, generator=generator), torch.randint(0, 5, (n,), generator=generator)


def test_equals_a_loop_over_samples_with_batch_norm_in_eval_mode():
    model = small_cnn_with_batch_norm()
    inputs, targets = images(13)
    model.train()
    running_mean = model[1].running_mean.clone()
    traces = per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), chunk_size=5)
    assert model.training and model[1].training  # mode restored
    expected = looped_fisher_trace(model, F.cross_entropy, inputs, targets)
    assert traces.shape == (13,) and traces.dtype == DTYPE
    assert torch.allclose(traces, expected, rtol=1e-10, atol=0)
    # the reference ran in eval mode; in train mode BatchNorm would use the sample's own statistics
    # and update its running statistics, which must be untouched
    assert torch.equal(model[1].running_mean, running_mean) and model[1].num_batches_tracked.item() == 0


def test_batches_are_concatenated_in_order_and_chunking_does_not_matter():
    model = small_cnn_with_batch_norm(seed=2)
    inputs, targets = images(20, seed=3)
    whole = per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), chunk_size=None)
    batches = (pair for pair in [(inputs[:7], targets[:7]), (inputs[7:8], targets[7:8]), (inputs[8:], targets[8:])])
    split = per_sample_fisher_trace(model, F.cross_entropy, batches, chunk_size=3)
    assert torch.allclose(whole, split, rtol=1e-12, atol=0)
    assert torch.allclose(whole, looped_fisher_trace(model, F.cross_entropy, inputs, targets), rtol=1e-10, atol=0)


def test_closed_form_of_a_linear_least_squares_model():
    # ℓ_j(w, b) = (wᵀx_j + b − y_j)²: ∇ = 2 r_j (x_j, 1), so ‖∇‖² = 4 r_j² (‖x_j‖² + 1)
    torch.manual_seed(4)
    model = nn.Linear(5, 1).to(DTYPE)
    inputs = torch.randn(9, 5, dtype=DTYPE)
    targets = torch.randn(9, dtype=DTYPE)
    squared_error = lambda outputs, target: ((outputs.squeeze(1) - target) ** 2).mean()
    residual = (inputs @ model.weight.detach()[0] + model.bias.detach() - targets)
    expected = 4 * residual ** 2 * ((inputs ** 2).sum(dim=1) + 1)
    assert torch.allclose(per_sample_fisher_trace(model, squared_error, (inputs, targets)), expected, rtol=1e-12)
    only_bias = per_sample_fisher_trace(model, squared_error, (inputs, targets), params=["bias"])
    assert torch.allclose(only_bias, 4 * residual ** 2, rtol=1e-12)


def test_float32_model_stays_in_float32():
    model = small_cnn_with_batch_norm(seed=5).float()
    inputs, targets = images(6, seed=6)
    traces = per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets))  # float64 inputs are cast
    assert traces.dtype == torch.float32
    expected = looped_fisher_trace(model.double(), F.cross_entropy, inputs, targets)
    assert torch.allclose(traces.double(), expected, rtol=1e-4)


def test_bad_input_raises_input_error():
    model = small_cnn_with_batch_norm()
    inputs, targets = images(4)
    with pytest.raises(InputError, match="chunk_size"):
        per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), chunk_size=0)
    with pytest.raises(InputError, match="no samples"):
        per_sample_fisher_trace(model, F.cross_entropy, [])
    with pytest.raises(InputError, match="targets"):
        per_sample_fisher_trace(model, F.cross_entropy, [(inputs, targets[:3])])
    with pytest.raises(InputError, match="unknown parameter"):
        per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), params=["head.weight"])
