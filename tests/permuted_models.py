"""Tiny zoo models with distinct batch-norm and channel-scale tensors, random permutations of their
units, and a weight comparison, for the alignment and permutation-group tests. Test modules import it
by name (``from permuted_models import randomized``): tests/conftest.py puts tests/ on the path."""
import torch
from torch import nn

from ensembles.models import zoo

TINY = {
    "mlp": lambda: zoo.build("mlp", 3, input_size=3 * 8 * 8, hidden=(7, 6)),
    "small_cnn": lambda: zoo.build("small_cnn", 3, width=3),
    "resnet18": lambda: zoo.build("resnet18", 3, width=3),
    "resnet18_tin": lambda: zoo.build("resnet18_tin", 3, width=3),
    "wrn40_2": lambda: zoo.WideResNet(3, depth=16, widen_factor=1),  # the wrn40_2 class, fewer blocks
}


def randomized(name, seed=0):
    """A tiny zoo model whose batch-norm and channel-scale tensors are not all equal, so that a
    permutation that forgot them would show."""
    torch.manual_seed(seed)
    model = TINY[name]().double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, zoo.ChannelScale):
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


def shuffle(spec, seed):
    """A random permutation that moves units in every group (never the identity)."""
    generator = torch.Generator().manual_seed(seed)
    permutation = {}
    for group, size in spec.sizes.items():
        p = torch.randperm(size, generator=generator)
        permutation[group] = p.roll(1) if torch.equal(p, torch.arange(size)) else p
    return permutation


def assert_same_weights(a, b, tol):
    for key, value in a.state_dict().items():
        assert torch.allclose(value.double(), b.state_dict()[key].double(), atol=tol, rtol=0), key
