"""The Hessian-vector products of landscape.hvp: eval-mode batch norm as an affine map and ReLU/max
pooling with constant masks give the same function, gradients and exact Hessian."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.hvp import BatchNormAsAffine, LossHessian, PiecewiseLinearAsMasked

from dense_hessians import exact_hessian


DTYPE = torch.float64


@pytest.mark.parametrize("layer, shape", [(nn.BatchNorm1d(3), (5, 3)), (nn.BatchNorm2d(3), (5, 3, 4, 4)),
                                          (nn.BatchNorm2d(3, affine=False), (5, 3, 2, 2))])
def test_eval_batch_norm_as_an_affine_map_is_the_same_function_with_the_same_gradients(layer, shape):
    torch.manual_seed(22)
    layer = layer.to(DTYPE)
    layer.running_mean.copy_(torch.randn(3))
    layer.running_var.copy_(torch.rand(3) + 0.2)
    if layer.affine:
        layer.weight.data.copy_(torch.randn(3))
        layer.bias.data.copy_(torch.randn(3))
    inputs = torch.randn(*shape, dtype=DTYPE, requires_grad=True)
    direction = torch.randn(*shape, dtype=DTYPE)
    layer.eval()
    reference = layer(inputs)
    with BatchNormAsAffine():
        rewritten = layer(inputs)
    assert torch.allclose(rewritten, reference, rtol=1e-12, atol=1e-12)
    wrt = [inputs, *layer.parameters()]
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(
        torch.autograd.grad((reference * direction).sum(), wrt), torch.autograd.grad((rewritten * direction).sum(), wrt)))
    layer.train()  # training-mode batch norm normalizes by the batch: left to PyTorch
    with BatchNormAsAffine():
        trained = layer(inputs)
    assert torch.allclose(trained.mean(dim=[0] + list(range(2, len(shape)))), layer.bias if layer.affine
                          else torch.zeros(3, dtype=DTYPE), atol=1e-10)


class PoolingNet(nn.Module):
    """ReLU (module, in-place module, function, method) and max pooling with stride, padding,
    dilation, ceil_mode and returned indices: every call the mask rewrite intercepts."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True, return_indices=True)
        self.conv2 = nn.Conv2d(3, 4, 2)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out, _ = self.pool(self.relu(self.conv(x)))
        out = F.max_pool2d(torch.relu(self.conv2(out)), 2, stride=1, dilation=1)
        return self.head(F.relu(out).relu().flatten(1))


def test_relu_and_max_pool_with_constant_masks_keep_values_gradients_and_the_exact_hessian():
    torch.manual_seed(23)
    model = PoolingNet().to(DTYPE).eval()
    generator = torch.Generator().manual_seed(24)
    inputs = torch.randn(6, 2, 6, 6, dtype=DTYPE, generator=generator)
    targets = torch.randint(0, 3, (6,), generator=generator)
    parameters = list(model.parameters())
    reference = F.cross_entropy(model(inputs), targets)
    with PiecewiseLinearAsMasked():
        rewritten = F.cross_entropy(model(inputs), targets)
        pooled, indices = F.max_pool2d(inputs.requires_grad_(), 3, 2, 1, return_indices=True)
    assert torch.equal(pooled, F.max_pool2d(inputs, 3, 2, 1)) and indices.dtype == torch.int64
    assert rewritten.item() == reference.item()
    for a, b in zip(torch.autograd.grad(reference, parameters), torch.autograd.grad(rewritten, parameters)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # LossHessian builds its graph with the rewrite; the dense Hessian (torch.func) without it
    dense = exact_hessian(model, F.cross_entropy, inputs.detach(), targets)
    operator = LossHessian(model, F.cross_entropy, [(inputs.detach(), targets)])
    identity = torch.eye(operator.dim, dtype=DTYPE)
    torch.testing.assert_close(operator.matmat(identity), dense, rtol=1e-9, atol=1e-11)
    assert dense.abs().max() > 1e-3  # the check is not vacuous
