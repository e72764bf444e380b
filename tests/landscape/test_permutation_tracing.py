"""Permutation groups traced from any model's graph (landscape.permutation_tracing).

torchvision's ResNet-18 and timm's ViT-Tiny: a randomly permuted copy computes the same function
and weight and activation matching find the original again exactly; the traced groups of the zoo's
models are exactly the hand-written ones; reshapes into heads, channel × spatial flattens, grouped
convolutions and concatenations keep their groups in place; an operation that cannot be placed
is refused naming its module."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ensembles.models import permutation_specs, zoo
from landscape.alignment import activation_matching, apply_permutation, check_preserves_function, weight_matching
from landscape.connectivity import recompute_batchnorm_statistics
from landscape.errors import InputError
from landscape.permutation_tracing import traced_permutation_spec

from permuted_models import TINY, assert_same_weights, randomized, shuffle

timm = pytest.importorskip("timm")  # the test extra installs it


def images(seed, count=16, size=32):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def jittered(model, seed=0):
    """``model`` in float64 and eval mode with every floating tensor moved a little, so that no
    per-unit tensor (a fresh BatchNorm's ones and zeros, a LayerNorm's) is constant across units."""
    generator = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.mul_(1 + 0.1 * torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype))
                tensor.add_(0.01 * torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype))
    return model


def partition(spec):
    return {frozenset(pairs) for pairs in spec.axes.values()}


def assert_recovered(model, spec, data, seed):
    """A permuted copy moves every group, computes the same function, and is found again exactly
    by weight matching and by activation matching."""
    shuffled = apply_permutation(model, shuffle(spec, seed), spec).eval()
    x = data[0]
    assert torch.allclose(shuffled(x), model(x), atol=1e-9, rtol=0)
    for group, pairs in spec.axes.items():
        key, axis = pairs[0]
        assert not torch.equal(shuffled.state_dict()[key], model.state_dict()[key]), group
    assert_same_weights(weight_matching(model, shuffled, spec), model, 1e-9)
    assert_same_weights(activation_matching(model, shuffled, spec, data), model, 1e-9)


# ------------------------------------------------------------------------ the zoo: traced = by hand


@pytest.mark.parametrize("name", sorted(TINY))
def test_traced_groups_of_the_zoo_models_are_the_hand_written_ones(name):
    model = randomized(name)
    hand = permutation_specs.zoo_permutation_spec(model)
    traced = traced_permutation_spec(model, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert partition(traced) == partition(hand)
    assert sorted(traced.sizes.values()) == sorted(hand.sizes.values())
    assert set(traced.fixed) == set(hand.fixed)
    check_preserves_function(model, traced, torch.randn(4, 3, 8, 8, dtype=torch.float64))


# ------------------------------------------------------------------------------ torchvision, timm


def test_torchvision_resnet18_permuted_copy_is_found_again():
    torch.manual_seed(0)
    model = jittered(torchvision.models.resnet18(num_classes=5))
    data = [images(1)]
    model = recompute_batchnorm_statistics(model, data).eval()  # no unit dead on the data
    spec = traced_permutation_spec(model, data[0][:2])
    # one group per residual stream (4) and per block's inner layer (8), as in the zoo's ResNet-18
    assert len(spec.sizes) == 12 and spec.fixed == ("fc.bias",)
    stream = dict(spec.axes["conv1"])
    for key in ("bn1.running_var", "layer1.0.conv1.weight", "layer1.1.bn2.bias", "layer2.0.downsample.0.weight"):
        assert key in stream
    assert spec.probes["layer1.0.conv1"] == (("layer1.0.conv2", "input", 1),)
    assert_recovered(model, spec, data, seed=3)


@pytest.fixture(scope="module")
def vit_tiny():
    torch.manual_seed(0)
    return jittered(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32))


def test_timm_vit_tiny_groups_follow_the_residual_stream_and_keep_the_heads_in_place(vit_tiny):
    spec = traced_permutation_spec(vit_tiny, images(0, 2))
    depth = len(vit_tiny.blocks)
    assert len(spec.sizes) == 1 + depth  # the residual stream, and each block's MLP hidden units
    stream = spec.axes["patch_embed.proj"]
    # the class token and positional embedding are added to the stream: they move with it
    for pair in (("cls_token", 2), ("pos_embed", 2), ("patch_embed.proj.weight", 0), ("norm.weight", 0),
                 ("head.weight", 1)):
        assert pair in stream
    for block in range(depth):
        for pair in (("norm1.weight", 0), ("norm2.bias", 0), ("attn.qkv.weight", 1), ("attn.proj.weight", 0),
                     ("attn.proj.bias", 0), ("mlp.fc1.weight", 1), ("mlp.fc2.weight", 0)):
            assert (f"blocks.{block}.{pair[0]}", pair[1]) in stream
        assert spec.axes[f"blocks.{block}.mlp.fc1"] == ((f"blocks.{block}.mlp.fc1.weight", 0),
                                                         (f"blocks.{block}.mlp.fc1.bias", 0),
                                                         (f"blocks.{block}.mlp.fc2.weight", 1))
        # q, k, v are reshaped into heads and merged back before proj: those units stay in place
        assert f"blocks.{block}.attn.qkv.bias" in spec.fixed
        grouped = {pair for pairs in spec.axes.values() for pair in pairs}
        assert (f"blocks.{block}.attn.qkv.weight", 0) not in grouped
        assert (f"blocks.{block}.attn.proj.weight", 1) not in grouped
    assert set(spec.fixed) == {f"blocks.{b}.attn.qkv.bias" for b in range(depth)} | {"head.bias"}


def test_timm_vit_tiny_permuted_copy_is_found_again(vit_tiny):
    data = [images(2, 32)]
    assert_recovered(vit_tiny, traced_permutation_spec(vit_tiny, data[0][:2]), data, seed=4)


def test_a_models_own_input_stage_changes_no_group():
    """Resizing and normalization inside the model (run.json model_input) act on the input, which
    is never permuted: the groups are those of the bare network, and they hold on larger images."""
    bare = zoo.build("timm:test_vit", 5, img_size=32).double()
    staged = zoo.build("timm:test_vit", 5, img_size=32,
                       model_input={"size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}).double()
    staged.load_state_dict(bare.state_dict())
    spec = traced_permutation_spec(staged, images(0, 2, size=40))
    assert spec == traced_permutation_spec(bare, images(0, 2))
    check_preserves_function(staged, spec, images(1, 4, size=40))


def test_modules_that_load_by_version_are_permuted_too():
    """torchvision's MNASNet reads its state dict's version on loading: a permuted copy keeps it."""
    torch.manual_seed(0)
    model = jittered(torchvision.models.mnasnet0_5(num_classes=3))
    x = images(0, 2, size=32)
    spec = traced_permutation_spec(model, x)
    check_preserves_function(model, spec, x)
    assert torch.allclose(apply_permutation(model, shuffle(spec, 1), spec)(x), model(x), atol=1e-9, rtol=0)


# -------------------------------------------------------------------------- where groups stay put


class ConvThenLinear(nn.Module):
    """conv → flatten(C × H × W) → linear: the linear's columns mix channels and positions."""

    def __init__(self, pooled: bool):
        super().__init__()
        self.pooled = pooled
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(4 if pooled else 4 * 4 * 4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        out = F.relu(self.conv(x))
        out = F.adaptive_avg_pool2d(out, 1) if self.pooled else out
        return self.head(F.relu(self.linear(out.flatten(1))))


def test_a_channel_times_space_flatten_keeps_the_channels_in_place():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    flat = traced_permutation_spec(ConvThenLinear(pooled=False).double(), x)
    assert list(flat.sizes) == ["linear"] and "conv.bias" in flat.fixed
    pooled = traced_permutation_spec(ConvThenLinear(pooled=True).double(), x)  # 1 × 1 positions: a plain reshape
    assert dict(pooled.axes)["conv"] == (("conv.weight", 0), ("conv.bias", 0), ("linear.weight", 1))
    check_preserves_function(ConvThenLinear(pooled=False).double(), flat, x)


class Branches(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.stem = nn.Conv2d(3, 4, 1)
        self.left = nn.Conv2d(4, 4, 3, padding=1, groups={"grouped": 2, "depthwise": 4}.get(kind, 1))
        self.right = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8 if kind == "concat" else 4, 2)

    def forward(self, x):
        out = self.stem(x)
        joined = (torch.cat([self.left(out), self.right(out)], 1) if self.kind == "concat"
                  else self.left(out) + self.right(out))
        return self.head(joined.mean((2, 3)))


@pytest.mark.parametrize("kind, groups", [
    ("depthwise", {"stem": 4}),  # channel i reads channel i: stem's units carry through, and right adds to them
    ("grouped", {}),  # two groups of channels: stem's units may not cross them; left's, added to right's, stay
    ("concat", {"stem": 4}),  # channels joined by concatenation stay in place
])
def test_grouped_convolutions_and_concatenations(kind, groups):
    model = Branches(kind).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    spec = traced_permutation_spec(model, x)
    assert dict(spec.sizes) == groups
    if kind == "depthwise":
        assert ("left.weight", 0) in spec.axes["stem"] and ("right.weight", 0) in spec.axes["stem"]
    check_preserves_function(model, spec, x)


def test_an_axis_a_rule_does_not_place_stays_in_place(monkeypatch):
    """The safety net under every rule: a rule that forgets an input axis (here relu made to place
    nothing) must not leave that axis free to move under an output that does not."""
    from landscape import permutation_tracing

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    assert dict(traced_permutation_spec(model, x).sizes) == {"0": 4, "2": 5}
    monkeypatch.setitem(permutation_tracing._RULES, "relu", lambda tracer, node, args: None)
    spec = traced_permutation_spec(model, x)
    assert dict(spec.sizes) == {} and set(spec.fixed) == {key for key in model.state_dict()}
    check_preserves_function(model, spec, x)


class Tied(nn.Module):
    """One weight under two names (as a language model ties its embedding and output layer)."""

    def __init__(self):
        super().__init__()
        self.first, self.second, self.head = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.third = nn.Linear(4, 4)
        self.third.weight = self.second.weight

    def forward(self, x):
        return self.head(torch.relu(self.third(torch.relu(self.second(torch.relu(self.first(x)))))))


def test_a_weight_shared_under_two_names_moves_as_one():
    model = jittered(Tied())
    x = torch.randn(8, 3, dtype=torch.float64)
    spec = traced_permutation_spec(model, x)
    grouped = {pair for pairs in spec.axes.values() for pair in pairs}
    assert {("second.weight", 0), ("third.weight", 0), ("second.weight", 1), ("third.weight", 1)} <= grouped
    check_preserves_function(model, spec, x)
    assert_recovered(model, spec, [x], seed=1)


# -------------------------------------------------------------------------------------- refusals


class Cumulative(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=1)


class WithCumsum(nn.Module):
    def __init__(self, on_input: bool):
        super().__init__()
        self.on_input = on_input
        self.first, self.odd, self.last = nn.Linear(3, 4), Cumulative(), nn.Linear(4, 2)

    def forward(self, x):
        if self.on_input:
            return self.last(torch.relu(self.first(self.odd(x))))
        return self.last(self.odd(torch.relu(self.first(x))))


def test_an_operation_it_cannot_place_is_refused_naming_its_module():
    with pytest.raises(InputError, match=r"cannot place aten\.cumsum\.default in module 'odd' \(Cumulative\) "
                                         r"of WithCumsum"):
        traced_permutation_spec(WithCumsum(on_input=False), torch.randn(2, 3))
    # on the input, before any layer, nothing it touches could move: no reason to refuse
    spec = traced_permutation_spec(WithCumsum(on_input=True), torch.randn(2, 3))
    assert dict(spec.sizes) == {"first": 4}


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x) if x.sum() > 0 else -self.linear(x)


def test_a_model_it_cannot_trace_is_refused_in_one_line():
    with pytest.raises(InputError, match=r"^cannot trace DataDependent to derive its permutation groups \(.*\); "
                                         r"refusing to align it$"):
        traced_permutation_spec(DataDependent(), torch.randn(2, 3))
