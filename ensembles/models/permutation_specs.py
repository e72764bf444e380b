"""The permutation groups of the models ensembles are made of, as :class:`~landscape.alignment.PermutationSpec` data.

Alignment (:mod:`landscape.alignment`) takes the groups as an argument and knows no architecture,
as Git Re-Basin's weight matching takes a permutation spec built next to each model (Ainsworth,
Hayase & Srinivasa, ICLR 2023, §3). The zoo's models have theirs written here by hand, each
group named after the residual stream or the layer whose units it permutes; any other model
(``torchvision:``, ``timm:``, ``module:callable``, or a zoo model someone changed) has its groups
derived from its graph by :func:`landscape.permutation_tracing.traced_permutation_spec`.
:func:`permutation_spec` picks the right one and, given inputs, proves it on them
(:func:`landscape.alignment.check_preserves_function`).

Example::

    >>> from ensembles.models import zoo
    >>> spec = zoo_permutation_spec(zoo.build("mlp", 3, input_size=4, hidden=(8, 8)))
    >>> sorted(spec.sizes.items()), spec.fixed
    ([('layers.0', 8), ('layers.1', 8)], ('layers.2.bias',))
"""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from ensembles.models import zoo
from landscape.alignment import PermutationSpec, check_preserves_function
from landscape.errors import InputError
from landscape.permutation_tracing import traced_permutation_spec

__all__ = ["permutation_spec", "spec_digest", "zoo_permutation_spec"]


class _Groups:
    """Groups collected while walking a model: ``add`` axes, ``probe`` places (units on dim 1)."""

    def __init__(self):
        self.axes: dict[str, list[tuple[str, int]]] = {}
        self.probes: dict[str, list[tuple[str, str, int]]] = {}

    def add(self, group: str, *pairs: tuple[str, int]) -> None:
        self.axes.setdefault(group, []).extend(pairs)

    def probe(self, group: str, module: str, where: str) -> None:
        self.probes.setdefault(group, []).append((module, where, 1))


def _batchnorm(prefix: str) -> list[tuple[str, int]]:
    return [(f"{prefix}.{name}", 0) for name in ("weight", "bias", "running_mean", "running_var")]


def _out(prefix: str, bias: bool = False) -> list[tuple[str, int]]:
    return [(f"{prefix}.weight", 0)] + ([(f"{prefix}.bias", 0)] if bias else [])


def _mlp(model: zoo.MLP, groups: _Groups) -> list[str]:
    last = len(model.layers) - 1
    for i in range(last):
        group = f"layers.{i}"
        groups.add(group, *_out(f"layers.{i}", bias=True), (f"layers.{i + 1}.weight", 1))
        groups.probe(group, f"layers.{i + 1}", "input")
    return [f"layers.{last}.bias"] + ([f"layers.{last}.weight"] if last == 0 else [])


def _small_cnn(model: zoo.SmallCNN, groups: _Groups) -> list[str]:
    readers = {"conv1": "conv2", "conv2": "conv3", "conv3": "linear"}
    for conv, reader in readers.items():
        groups.add(conv, *_out(conv), *_batchnorm("bn" + conv[-1]), (f"{reader}.weight", 1))
        groups.probe(conv, reader, "input")
    return ["linear.bias"]


def _cifar_resnet18(model: zoo.CifarResNet18, groups: _Groups) -> list[str]:
    stream = "stream.stem"
    groups.add(stream, *_out("conv1"), *_batchnorm("bn1"))
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{index}"
            groups.add(stream, (f"{name}.conv1.weight", 1))
            groups.probe(stream, name, "input")
            inner = f"{name}.conv1"
            groups.add(inner, *_out(f"{name}.conv1"), *_batchnorm(f"{name}.bn1"), (f"{name}.conv2.weight", 1))
            groups.probe(inner, f"{name}.conv2", "input")
            if len(block.shortcut):  # a 1×1 conv + BN projection starts a new stream
                groups.add(stream, (f"{name}.shortcut.0.weight", 1))
                stream = f"stream.{name}"
                groups.add(stream, *_out(f"{name}.shortcut.0"), *_batchnorm(f"{name}.shortcut.1"))
            groups.add(stream, *_out(f"{name}.conv2"), *_batchnorm(f"{name}.bn2"))
            groups.probe(stream, name, "output")
    groups.add(stream, ("linear.weight", 1))
    return ["linear.bias"]


def _tiny_imagenet_resnet18(model: zoo.TinyImageNetResNet18, groups: _Groups) -> list[str]:
    stream = "stream.stem"
    groups.add(stream, *_out("conv1.0"), *_batchnorm("conv1.1"))
    groups.probe(stream, "conv1", "output")
    for stage in ("conv2_x", "conv3_x", "conv4_x", "conv5_x"):
        for index, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{index}"
            main = f"{name}.residual_function"
            groups.add(stream, (f"{main}.0.weight", 1))
            inner = f"{main}.0"
            groups.add(inner, *_out(f"{main}.0"), *_batchnorm(f"{main}.1"), (f"{main}.3.weight", 1))
            groups.probe(inner, f"{main}.3", "input")
            if isinstance(block.shortcut, zoo.ChannelScale):  # x · w per channel: w follows the stream
                groups.add(stream, (f"{name}.shortcut.weight", 0))
            else:
                groups.add(stream, (f"{name}.shortcut.0.weight", 1))
                stream = f"stream.{name}"
                groups.add(stream, *_out(f"{name}.shortcut.0"), *_batchnorm(f"{name}.shortcut.1"))
            groups.add(stream, *_out(f"{main}.3"), *_batchnorm(f"{main}.4"))
            groups.probe(stream, name, "output")
    groups.add(stream, ("fc.weight", 1))
    return ["fc.bias"]


def _wide_resnet(model: zoo.WideResNet, groups: _Groups) -> list[str]:
    stream = "stream.stem"
    groups.add(stream, *_out("conv1"))
    groups.probe(stream, "conv1", "output")
    for group_index in (1, 2, 3):
        for index, block in enumerate(getattr(model, f"block{group_index}").layer):
            name = f"block{group_index}.layer.{index}"
            # pre-activation: bn1 normalizes the incoming stream, conv1 (and a projection) read it
            groups.add(stream, *_batchnorm(f"{name}.bn1"), (f"{name}.conv1.weight", 1))
            inner = f"{name}.conv1"
            groups.add(inner, *_out(f"{name}.conv1"), *_batchnorm(f"{name}.bn2"), (f"{name}.conv2.weight", 1))
            groups.probe(inner, f"{name}.conv2", "input")
            if not block.keeps_shape:
                groups.add(stream, (f"{name}.convShortcut.weight", 1))
                stream = f"stream.{name}"
                groups.add(stream, *_out(f"{name}.convShortcut"))
            groups.add(stream, *_out(f"{name}.conv2"))
            groups.probe(stream, name, "output")
    groups.add(stream, *_batchnorm("bn1"), ("fc.weight", 1))
    return ["fc.bias"]


_WALKERS = {zoo.MLP: _mlp, zoo.SmallCNN: _small_cnn, zoo.CifarResNet18: _cifar_resnet18,
            zoo.TinyImageNetResNet18: _tiny_imagenet_resnet18, zoo.WideResNet: _wide_resnet}
# The module kinds the zoo's forward passes are written for; anything else was put in by hand.
_ZOO_PARTS = (nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Sequential, nn.ModuleList, zoo.ChannelScale)


def zoo_permutation_spec(model: nn.Module) -> PermutationSpec | None:
    """The hand-written groups of a zoo model (exactly :class:`~ensembles.models.zoo.MLP`,
    ``SmallCNN``, ``CifarResNet18``, ``TinyImageNetResNet18`` or ``WideResNet``, built of the zoo's
    own parts), checked against it; None for any other model, subclasses and changed zoo models
    included (their ``forward`` or parts may differ from what the walk assumes)."""
    walker = _WALKERS.get(type(model))
    if walker is None or any(name and not isinstance(module, _ZOO_PARTS) and type(module).__module__ != zoo.__name__
                             for name, module in model.named_modules()):
        return None
    groups = _Groups()
    fixed = walker(model, groups)
    return PermutationSpec.from_axes(model, groups.axes, groups.probes, fixed)


def permutation_spec(model: nn.Module, inputs: torch.Tensor | None = None) -> PermutationSpec:
    """The permutation groups of ``model``: the zoo's hand-written ones, else traced from its graph
    on ``inputs`` (a batch it accepts; needed for any model outside the zoo). With ``inputs`` the
    groups are also proven on them: a random permutation must leave the outputs unchanged. A model
    whose groups cannot be found is refused with an :class:`InputError` naming the part at fault."""
    spec = zoo_permutation_spec(model)
    if spec is None:
        if inputs is None:
            raise InputError(f"{type(model).__name__} is not one of the zoo's models, so its permutation groups are "
                             "traced from its graph, which needs a batch of inputs")
        spec = traced_permutation_spec(model, inputs)
    if inputs is not None:
        check_preserves_function(model, spec, inputs)
    return spec


def spec_digest(spec: PermutationSpec) -> str:
    """A short digest of a spec's groups, probes and fixed tensors: stored with aligned rows of a
    traced spec, so that a change of the groups makes those rows stale."""
    data = {"axes": {g: [list(pair) for pair in pairs] for g, pairs in spec.axes.items()},
            "sizes": dict(spec.sizes), "probes": {g: [list(p) for p in places] for g, places in spec.probes.items()},
            "fixed": list(spec.fixed)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
