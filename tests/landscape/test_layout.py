"""Evaluation in channels-last layout on a CPU: which networks are converted, that they compute the
same function, and that the measurements convert their own copies only."""
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ensembles.data.datasets import ImageDataset
from ensembles.models.zoo import build
from ensembles.runs import logit_cache
from landscape import connectivity
from landscape.layout import evaluation_layout_

CHANNELS_LAST = torch.channels_last


def _small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build("small_cnn", 10, width=4).eval()


def _channels_last(network: nn.Module) -> bool:
    weights = [module.weight for module in network.modules() if isinstance(module, nn.Conv2d)]
    return bool(weights) and all(w.is_contiguous(memory_format=CHANNELS_LAST) and not w.is_contiguous()
                                 for w in weights)


def test_a_cpu_convolutional_network_is_converted_and_computes_the_same_function():
    network = _small_cnn(0)
    images = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        before = network(images)
        assert evaluation_layout_(network, "cpu") is network
        after = network(images)
    assert _channels_last(network)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_networks_without_convolutions_and_other_devices_are_left_alone():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    evaluation_layout_(mlp, "cpu")
    assert all(parameter.is_contiguous() for parameter in mlp.parameters())
    network = _small_cnn(0)
    evaluation_layout_(network, "cuda")  # a GPU chooses its own kernels: nothing to do here
    assert not _channels_last(network)
    assert all(module.weight.is_contiguous() for module in network.modules() if isinstance(module, nn.Conv2d))


class _Recording(nn.Module):
    """A small CNN that records the layout of its first convolution's weight at every forward."""

    def __init__(self, seed: int):
        super().__init__()
        self.inner = _small_cnn(seed)
        self.layouts: list[bool] = []

    def forward(self, inputs):
        self.layouts.append(self.inner.conv1.weight.is_contiguous(memory_format=CHANNELS_LAST)
                            and not self.inner.conv1.weight.is_contiguous())
        return self.inner(inputs)


def test_connectivity_evaluates_its_own_copy_in_channels_last_and_leaves_the_models_alone(monkeypatch):
    first, second = _Recording(1), _Recording(2)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator))]
    bn_batches = [torch.randn(32, 3, 16, 16, generator=generator)]
    reference = {name: tensor.clone() for name, tensor in first.state_dict().items()}
    copies = []
    original = copy.deepcopy

    def keep(model, *args):  # the network the path is evaluated on is a deep copy of the first model
        made = original(model, *args)
        if isinstance(made, _Recording):
            copies.append(made)
        return made

    monkeypatch.setattr(connectivity.copy, "deepcopy", keep)
    path = connectivity.interpolate(first, second, F.cross_entropy, batches, alphas=3, bn_batches=bn_batches)
    monkeypatch.undo()
    assert copies and copies[0].layouts and all(copies[0].layouts)
    # the models were only read: their own forward never ran, their layout and weights are as they were
    assert first.layouts == [] and second.layouts == []
    assert not _channels_last(first.inner) and not _channels_last(second.inner)
    assert all(torch.equal(first.state_dict()[name], tensor) for name, tensor in reference.items())
    # and the numbers are those of the default layout, to float rounding
    monkeypatch.setattr(connectivity, "evaluation_layout_", lambda network, device: network)
    plain = connectivity.interpolate(first, second, F.cross_entropy, batches, alphas=3, bn_batches=bn_batches)
    torch.testing.assert_close(plain.loss, path.loss)
    torch.testing.assert_close(plain.accuracy, path.accuracy)


def test_member_logits_on_a_cpu_come_from_channels_last_members_and_match_the_default_layout():
    generator = np.random.default_rng(0)
    dataset = ImageDataset(generator.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8),
                           generator.integers(0, 10, 20), name="random", split="test", num_classes=10,
                           mean=(0.5,) * 3, std=(0.25,) * 3)
    members = [_Recording(seed) for seed in (1, 2)]
    plain = [copy.deepcopy(member.inner) for member in members]
    logits = logit_cache.compute_member_logits(members, dataset, batch_size=8)
    assert all(member.layouts and all(member.layouts) for member in members)
    with torch.no_grad():
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        expected = torch.stack([network(images) for network in plain])
    assert not any(_channels_last(network) for network in plain)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_the_layout_keeps_every_stored_value():
    network = _small_cnn(3)
    state = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    evaluation_layout_(network, "cpu")
    assert all(torch.equal(network.state_dict()[name], tensor) for name, tensor in state.items())
