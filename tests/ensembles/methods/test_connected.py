"""The connectivity constraint L(θ) + λ·L((1-α)θ_anchor + αθ): the interpolated point, its gradient
(to θ only, scaled by α), and BatchNorm on the batch's statistics with its running ones untouched."""
import copy

import pytest
import torch
import torch.nn.functional as F

from ensembles.methods.connected import constrained_loss, interpolated_loss, interpolated_parameters


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))


def _anchor(seed):
    return {name: parameter.detach().clone() for name, parameter in _model(seed).named_parameters()}


def _at(model, parameters):
    """A copy of ``model`` holding ``parameters`` (its own buffers)."""
    point = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in point.named_parameters():
            parameter.copy_(parameters[name])
    return point


def test_the_interpolated_point_runs_from_the_anchor_to_the_member():
    model, anchor = _model(0), _anchor(1)
    own = dict(model.named_parameters())
    for name, value in interpolated_parameters(model, anchor, 0.0).items():
        assert torch.equal(value, anchor[name])
    for name, value in interpolated_parameters(model, anchor, 1.0).items():
        assert torch.equal(value, own[name])
    for name, value in interpolated_parameters(model, anchor, 0.25).items():
        assert torch.allclose(value, 0.75 * anchor[name] + 0.25 * own[name], atol=1e-7)


def test_the_loss_and_its_gradient_are_those_of_the_interpolated_model_scaled_by_alpha():
    model, anchor = _model(0), _anchor(1)
    inputs, targets = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    alpha = 0.3
    loss = interpolated_loss(model, anchor, inputs, targets, alpha)
    gradients = torch.autograd.grad(loss, list(model.parameters()))
    point = _at(model, {k: v.detach() for k, v in interpolated_parameters(model, anchor, alpha).items()})
    expected = F.cross_entropy(point(inputs), targets)  # train mode: the batch's statistics
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    expected.backward()
    for got, parameter in zip(gradients, point.parameters()):
        assert torch.allclose(got, alpha * parameter.grad, atol=1e-6)  # dθ(α)/dθ = α


def test_the_interpolated_pass_leaves_the_running_statistics_alone():
    model, anchor = _model(0), _anchor(1)
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    interpolated_loss(model, anchor, torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,)), 0.5).backward()
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert model.training and model[1].track_running_stats  # the model is handed back as it came
    model(torch.randn(8, 3, 8, 8))  # the member's own pass still updates them
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])


def test_the_constrained_loss_adds_lambda_times_the_interpolated_loss():
    model, anchor = _model(0), _anchor(1)
    inputs, targets = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    with torch.no_grad():
        outputs = model(inputs)
        got = constrained_loss(outputs, targets, model, anchor, inputs, strength=2.0, alpha=0.4)
        expected = F.cross_entropy(outputs, targets) + 2.0 * interpolated_loss(model, anchor, inputs, targets, 0.4)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
