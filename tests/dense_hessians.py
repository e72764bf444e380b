"""The dense Hessian of a tiny network's loss by torch.func.hessian, the reference of the Hessian
tests. Test modules import it by name (``from dense_hessians import exact_hessian``): tests/conftest.py
puts tests/ on the path."""
import torch
from torch import nn
from torch.func import functional_call


def exact_hessian(model: nn.Module, loss_fn, inputs, targets, names=None) -> torch.Tensor:
    """Dense Hessian of ``loss_fn(model(inputs), targets)`` in the flattened (named) parameters,
    in the model's current mode."""
    named = dict(model.named_parameters())
    names = list(names or named)
    shapes = [named[name].shape for name in names]
    flat = torch.cat([named[name].detach().reshape(-1) for name in names])

    def loss_of(theta):
        pieces, offset = {}, 0
        for name, shape in zip(names, shapes):
            pieces[name] = theta[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return loss_fn(functional_call(model, pieces, (inputs,)), targets)

    return torch.func.hessian(loss_of)(flat).detach()
