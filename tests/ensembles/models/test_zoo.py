"""Tests for ensembles.models.zoo: architectures against hand-derived names and parameter counts,
forward semantics against functional re-derivations, strict weight loading that names the
architecture a checkpoint looks like, and the input defaults of library models."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ensembles.models import zoo
from ensembles.models.zoo import MODEL_NAMES, build, load_weights, parameter_count
from landscape.errors import InputError
from tiny_runs import invoke

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn(prefix):
    return [f"{prefix}.{key}" for key in BN_KEYS]


def input_for(name, batch=2, dtype=torch.float32):
    side = 64 if name == "resnet18_tin" else 32
    return torch.randn(batch, 3, side, side, dtype=dtype)


# ------------------------------------------------------------------ every model, basic contract


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_and_backward(name, num_classes):
    torch.manual_seed(0)
    model = build(name, num_classes)
    logits = model(input_for(name))
    assert logits.shape == (2, num_classes)
    logits.logsumexp(1).sum().backward()
    for key, parameter in model.named_parameters():
        assert parameter.grad is not None, key
        assert torch.isfinite(parameter.grad).all(), key


# The whole zoo at small sizes (wrn40_2 has no width option; it runs at 16×16 instead).
TINY_ZOO = {"resnet18": ({"width": 4}, 32), "resnet18_tin": ({"width": 4}, 16), "wrn40_2": ({}, 16),
            "small_cnn": ({"width": 4}, 32), "mlp": ({"input_size": 3 * 8 * 8, "hidden": (16, 16)}, 8)}


def test_the_float64_zoo_covers_every_model():
    assert set(TINY_ZOO) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_works_in_float64(name, monkeypatch):
    """float64 end to end: the same function as in float32, float64 output and finite float64
    gradients, and float64 precision throughout: a central difference of the loss at a step of
    1e-5 matches the gradient to 1e-6 only if no layer rounds to float32 on the way (that would
    leave an error of ~1e-7 / 1e-5 = 1e-2).

    The difference is taken with ReLU made smooth (softplus; every other layer as built). A ReLU
    network's loss has kinks, and whether one lies within ±1e-5 of the point along the direction
    depends on the last bits of the weights, i.e. on the CPU: for wrn40_2 and small_cnn about one
    direction in four has one, and it leaves an error up to the jump of the slope (~1e-3). Smooth,
    what is left is truncation and float64 rounding: at most 5e-8 (relative) over 40 directions for
    every model, with AVX-512 kernels and with generic ones, 20 times below the tolerance, while
    float32 rounding in any layer stays four orders above it."""
    options, side = TINY_ZOO[name]
    torch.manual_seed(0)
    single = build(name, 10, **options).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the normalization is exercised
        for module in single.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.8, 1.2)
                module.bias.uniform_(-0.5, 0.5)
    double = copy.deepcopy(single).double()
    x, y = torch.randn(3, 3, side, side, dtype=torch.float64), torch.tensor([1, 4, 7])

    logits = double(x)
    assert logits.dtype == torch.float64
    with torch.no_grad():
        reference = single(x.float())
    assert reference.dtype == torch.float32
    scale = reference.abs().max().item()
    torch.testing.assert_close(logits.detach(), reference.double(), rtol=1e-4, atol=1e-5 * max(scale, 1.0))

    F.cross_entropy(logits, y).backward()
    parameters, buffers = dict(double.named_parameters()), dict(double.named_buffers())
    for key, parameter in parameters.items():
        assert parameter.dtype == torch.float64, key
        assert parameter.grad is not None and parameter.grad.dtype == torch.float64, key
        assert torch.isfinite(parameter.grad).all(), key

    softplus = F.softplus  # nn.ReLU calls F.relu too
    monkeypatch.setattr(F, "relu", lambda input, inplace=False: softplus(input))
    double.zero_grad()
    F.cross_entropy(double(x), y).backward()
    generator = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(p.shape, generator=generator, dtype=torch.float64) for k, p in parameters.items()}
    norm = torch.sqrt(sum((d ** 2).sum() for d in direction.values()))
    slope = sum((parameters[k].grad * d).sum() for k, d in direction.items()) / norm
    step = 1e-5

    def loss_at(sign):
        moved = {k: p.detach() + sign * step * direction[k] / norm for k, p in parameters.items()}
        with torch.no_grad():
            return F.cross_entropy(functional_call(double, {**moved, **buffers}, (x,)), y)

    difference = (loss_at(1) - loss_at(-1)) / (2 * step)
    assert difference.dtype == torch.float64
    torch.testing.assert_close(difference, slope, rtol=1e-6, atol=0)


def test_per_sample_gradients_with_torch_func_match_a_loop():
    # Models must stay torch.func-friendly (no in-place ops on traced tensors).
    torch.manual_seed(0)
    model = build("small_cnn", 10, width=4).double().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x, y = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 4, 7])

    def loss(p, xi, yi):
        out = functional_call(model, {**p, **buffers}, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for key, parameter in model.named_parameters():
            torch.testing.assert_close(batched[key][i], parameter.grad)


# ------------------------------------------------------------------ build's argument checking


def test_unknown_name_lists_the_models():
    with pytest.raises(InputError) as error:
        build("vgg16", 10)
    for name in MODEL_NAMES:
        assert name in str(error.value)


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(InputError) as error:
        build("mlp", 10, width=8)
    message = str(error.value)
    assert "'width'" in message and "input_size" in message and "hidden" in message
    with pytest.raises(InputError, match="dropout"):
        build("wrn40_2", 10, width=3)


@pytest.mark.parametrize(
    "name, options",
    [("resnet18", {"width": 0}), ("resnet18", {"width": 2.5}), ("small_cnn", {"width": True}),
     ("mlp", {"hidden": "256"}), ("mlp", {"hidden": (8, -1)}), ("mlp", {"input_size": 0}),
     ("wrn40_2", {"dropout": 1.0})],
)
def test_bad_option_values_are_input_errors(name, options):
    with pytest.raises(InputError):
        build(name, 10, **options)


@pytest.mark.parametrize("num_classes", [0, -3, 1.5])
def test_bad_num_classes_is_an_input_error(num_classes):
    with pytest.raises(InputError, match="num_classes"):
        build("small_cnn", num_classes)


# ------------------------------------------------------------------ CIFAR ResNet-18


def cifar_resnet18_keys():
    """The CIFAR ResNet-18 of SharpBalance and Andriushchenko et al.: stem conv1/bn1; layer1..layer4 of two BasicBlocks
    (conv1, bn1, conv2, bn2, shortcut.0 = 1×1 conv, shortcut.1 = BN where the shape changes,
    i.e. in the first block of layers 2-4); linear head."""
    keys = ["conv1.weight", *bn("bn1")]
    for layer in (1, 2, 3, 4):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            keys += [f"{p}.conv1.weight", *bn(f"{p}.bn1"), f"{p}.conv2.weight", *bn(f"{p}.bn2")]
            if layer > 1 and block == 0:
                keys += [f"{p}.shortcut.0.weight", *bn(f"{p}.shortcut.1")]
    return keys + ["linear.weight", "linear.bias"]


def test_resnet18_names_are_those_of_the_released_checkpoints():
    keys = list(build("resnet18", 10).state_dict())
    spelled_out = [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var",
        "layer1.0.bn1.num_batches_tracked",
        "layer1.0.conv2.weight",
        "layer1.0.bn2.weight", "layer1.0.bn2.bias", "layer1.0.bn2.running_mean", "layer1.0.bn2.running_var",
        "layer1.0.bn2.num_batches_tracked",
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.weight", "layer2.0.shortcut.1.bias", "layer2.0.shortcut.1.running_mean",
        "layer2.0.shortcut.1.running_var", "layer2.0.shortcut.1.num_batches_tracked",
        "linear.weight", "linear.bias",
    ]
    assert set(spelled_out) <= set(keys)
    assert not any(k.startswith("layer1.0.shortcut") or k.startswith("layer2.1.shortcut") for k in keys)
    # 6 (stem) + 8 blocks × 12 + 3 shortcuts × 6 + 2 (head)
    assert len(keys) == 6 + 8 * 12 + 3 * 6 + 2 == 122
    assert sorted(keys) == sorted(cifar_resnet18_keys())


def cifar_resnet18_parameters(k, classes):
    """Count by hand: 3×3 convs c_in·c_out·9, BN 2c, 1×1 shortcut c_in·c_out + BN, linear."""
    total = 27 * k + 2 * k
    for c_in, c in ((k, k), (k, 2 * k), (2 * k, 4 * k), (4 * k, 8 * k)):
        total += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c  # first block
        if c_in != c or c != k:
            total += c_in * c + 2 * c  # its projection shortcut
        total += 2 * (9 * c * c + 2 * c)  # second block
    return total + 8 * k * classes + classes


def test_resnet18_parameter_count():
    assert cifar_resnet18_parameters(64, 10) == 11_173_962  # the published count
    assert parameter_count(build("resnet18", 10)) == 11_173_962
    assert parameter_count(build("resnet18", 100)) == cifar_resnet18_parameters(64, 100)


@pytest.mark.parametrize("width", [16, 8])
def test_resnet18_width_scales_the_stages(width):
    model = build("resnet18", 10, width=width)
    assert parameter_count(model) == cifar_resnet18_parameters(width, 10)
    assert model.conv1.weight.shape == (width, 3, 3, 3)
    assert model.layer4[1].conv2.weight.shape == (8 * width, 8 * width, 3, 3)
    assert model.linear.weight.shape == (10, 8 * width)


def test_resnet18_pools_exactly_like_the_release_at_32x32():
    torch.manual_seed(0)
    model = build("resnet18", 10, width=8).eval()
    x = torch.randn(3, 3, 32, 32)
    out = F.relu(model.bn1(model.conv1(x)))
    out = model.layer4(model.layer3(model.layer2(model.layer1(out))))
    release = model.linear(F.avg_pool2d(out, 4).flatten(1))
    assert torch.equal(model(x), release)  # bit for bit
    assert model(torch.randn(2, 3, 48, 40)).shape == (2, 10)  # other sizes pool globally


def test_resnet18_block_is_the_basic_block():
    torch.manual_seed(0)
    model = build("resnet18", 10, width=4).eval()
    block = model.layer2[0]
    x = torch.randn(2, 4, 8, 8)
    main = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    shortcut = block.shortcut[1](block.shortcut[0](x))
    torch.testing.assert_close(block(x), F.relu(main + shortcut), rtol=0, atol=0)
    identity_block = model.layer2[1]
    y = torch.randn(2, 8, 4, 4)
    main = identity_block.bn2(identity_block.conv2(F.relu(identity_block.bn1(identity_block.conv1(y)))))
    torch.testing.assert_close(identity_block(y), F.relu(main + y), rtol=0, atol=0)


# ------------------------------------------------------------------ TinyImageNet ResNet-18
# Source: github.com/haiquanlu/SharpBalance, models/resnet_imgnet.py (used by utils.create_model for
# --data tiny_imgnet), built from SynFlow's masked layers (ganguli-lab/Synaptic-Flow, Layers/layers.py):
# stem conv1 = Sequential(conv, BN, ReLU); stages conv2_x..conv5_x; block = residual_function
# Sequential(conv, BN, ReLU, conv, BN) + shortcut (Identity2d with a (C,1,1) weight, or Sequential(conv, BN));
# head fc. Every masked layer also stores weight_mask (and bias_mask) buffers.


def tiny_imagenet_keys(with_masks=False):
    def conv(p):
        return [f"{p}.weight"] + ([f"{p}.weight_mask"] if with_masks else [])

    def norm(p):
        return bn(p) + ([f"{p}.weight_mask", f"{p}.bias_mask"] if with_masks else [])

    keys = conv("conv1.0") + norm("conv1.1")
    for stage in (2, 3, 4, 5):
        for block in (0, 1):
            p = f"conv{stage}_x.{block}"
            keys += conv(f"{p}.residual_function.0") + norm(f"{p}.residual_function.1")
            keys += conv(f"{p}.residual_function.3") + norm(f"{p}.residual_function.4")
            if stage > 2 and block == 0:
                keys += conv(f"{p}.shortcut.0") + norm(f"{p}.shortcut.1")
            else:
                keys += conv(f"{p}.shortcut")  # Identity2d: weight (C, 1, 1)
    keys += ["fc.weight", "fc.bias"] + (["fc.weight_mask", "fc.bias_mask"] if with_masks else [])
    return keys


def test_resnet18_tin_names_follow_the_sharpbalance_release():
    keys = list(build("resnet18_tin", 200).state_dict())
    spelled_out = [
        "conv1.0.weight", "conv1.1.weight", "conv1.1.bias", "conv1.1.running_mean", "conv1.1.running_var",
        "conv1.1.num_batches_tracked",
        "conv2_x.0.residual_function.0.weight", "conv2_x.0.residual_function.1.weight",
        "conv2_x.0.residual_function.3.weight", "conv2_x.0.residual_function.4.running_var",
        "conv2_x.0.shortcut.weight",
        "conv3_x.0.shortcut.0.weight", "conv3_x.0.shortcut.1.weight", "conv3_x.0.shortcut.1.num_batches_tracked",
        "conv3_x.1.shortcut.weight",
        "fc.weight", "fc.bias",
    ]
    assert set(spelled_out) <= set(keys)
    # 6 (stem) + 8 blocks × 12 + 5 scale shortcuts × 1 + 3 projection shortcuts × 6 + 2 (head)
    assert len(keys) == 6 + 8 * 12 + 5 + 3 * 6 + 2 == 127
    assert sorted(keys) == sorted(tiny_imagenet_keys())


def test_resnet18_tin_parameter_count_and_shapes():
    model = build("resnet18_tin", 200)
    # the CIFAR count plus the learned identity scales of 5 blocks: 64 + 64 + 128 + 256 + 512
    assert parameter_count(model) == cifar_resnet18_parameters(64, 200) + 1024 == 11_272_456
    assert model.state_dict()["conv5_x.1.shortcut.weight"].shape == (512, 1, 1)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 200)


def test_resnet18_tin_identity_shortcut_is_a_learned_scale():
    torch.manual_seed(0)
    model = build("resnet18_tin", 10, width=4).eval()
    block = model.conv3_x[1]
    with torch.no_grad():
        block.shortcut.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 6, 6)
    expected = F.relu(block.residual_function(x) + x * block.shortcut.weight.view(1, 8, 1, 1))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


def test_release_style_tin_checkpoint_with_masks_loads_and_computes_the_masked_function():
    torch.manual_seed(0)
    source = build("resnet18_tin", 10, width=4).double().eval()
    with torch.no_grad():  # give BN non-trivial statistics so the check is not vacuous
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    state = source.state_dict()
    generator = torch.Generator().manual_seed(1)
    release = {}
    for key in tiny_imagenet_keys(with_masks=True):
        if key.endswith("_mask"):
            # pruning masks in {0, 1}; SharpBalance's are all ones, zeros make the check sharper
            release[key] = (torch.rand(state[key[: -len("_mask")]].shape, generator=generator) > 0.3).double()
        else:
            release[key] = state[key]
    # The masked layer computes with mask ⊙ weight (SynFlow's forward): the reference function.
    masked = {k: v * release[k + "_mask"] if k + "_mask" in release else v for k, v in state.items()}
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    reference = functional_call(source, masked, (x,))

    target = build("resnet18_tin", 10, width=4).double().eval()
    load_weights(target, release)
    torch.testing.assert_close(target(x), reference, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ WideResNet-40-2


def wide_resnet_parameters(depth, k, classes):
    """Zagoruyko & Komodakis: n = (depth−4)/6 pre-activation blocks per group, widths 16k, 32k, 64k."""
    n = (depth - 4) // 6
    total = 27 * 16
    c_in = 16
    for c in (16 * k, 32 * k, 64 * k):
        for i in range(n):
            cin = c_in if i == 0 else c
            total += 2 * cin + 9 * cin * c + 2 * c + 9 * c * c  # bn1, conv1, bn2, conv2
            if cin != c:
                total += cin * c  # 1×1 convShortcut, no BN
        c_in = c
    return total + 2 * 64 * k + 64 * k * classes + classes  # final BN and fc


def test_wrn40_2_parameter_count():
    assert parameter_count(build("wrn40_2", 10)) == wide_resnet_parameters(40, 2, 10)
    assert wide_resnet_parameters(40, 2, 10) == 2_243_546  # "2.2M" in the WRN paper's table
    assert parameter_count(build("wrn40_2", 100)) == wide_resnet_parameters(40, 2, 100)


def test_wrn40_2_names_follow_the_public_cifar_wrn_code():
    keys = list(build("wrn40_2", 10).state_dict())
    for key in ["conv1.weight", *bn("block1.layer.0.bn1"), "block1.layer.0.conv1.weight", *bn("block1.layer.0.bn2"),
                "block1.layer.0.conv2.weight", "block1.layer.0.convShortcut.weight",
                "block3.layer.5.conv2.weight", *bn("bn1"), "fc.weight", "fc.bias"]:
        assert key in keys
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert "block1.layer.6.conv1.weight" not in keys
    # conv1 + 18 blocks × 12 + 3 convShortcuts + final BN 5 + fc 2
    assert len(keys) == 1 + 18 * 12 + 3 + 5 + 2


def test_wide_block_shortcut_takes_the_preactivated_input():
    torch.manual_seed(0)
    model = build("wrn40_2", 10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 2)
                module.bias.uniform_(-1, 1)

    def norm(module, t):
        return F.batch_norm(t, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0, 1e-5)

    block = model.block2.layer[0]  # 32 → 64 channels, stride 2
    x = torch.randn(2, 32, 8, 8)
    a = F.relu(norm(block.bn1, x))
    main = F.conv2d(F.relu(norm(block.bn2, F.conv2d(a, block.conv1.weight, stride=2, padding=1))), block.conv2.weight, padding=1)
    torch.testing.assert_close(block(x), main + F.conv2d(a, block.convShortcut.weight, stride=2))
    same = model.block2.layer[1]
    y = torch.randn(2, 64, 4, 4)
    main = F.conv2d(F.relu(norm(same.bn2, F.conv2d(F.relu(norm(same.bn1, y)), same.conv1.weight, padding=1))),
                    same.conv2.weight, padding=1)
    torch.testing.assert_close(same(y), main + y)


def test_wrn_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = build("wrn40_2", 10, dropout=0.3)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


# ------------------------------------------------------------------ small models


def small_cnn_parameters(w, classes):
    return (27 * w + 2 * w) + (9 * w * 2 * w + 4 * w) + (9 * 2 * w * 4 * w + 8 * w) + 4 * w * classes + classes


@pytest.mark.parametrize("width", [8, 16, 32])
def test_small_cnn_size(width):
    assert parameter_count(build("small_cnn", 10, width=width)) == small_cnn_parameters(width, 10)
    assert 20_000 <= parameter_count(build("small_cnn", 10)) <= 100_000


def test_mlp_without_hidden_layers_is_a_linear_map_of_the_flattened_input():
    torch.manual_seed(0)
    model = build("mlp", 4, input_size=2 * 3 * 3, hidden=())
    x = torch.randn(5, 2, 3, 3)
    layer = model.layers[0]
    torch.testing.assert_close(model(x), x.reshape(5, 18) @ layer.weight.T + layer.bias)


def test_mlp_hidden_layers():
    torch.manual_seed(0)
    model = build("mlp", 3, input_size=6, hidden=[5, 7])
    assert parameter_count(model) == (6 * 5 + 5) + (5 * 7 + 7) + (7 * 3 + 3)
    x = torch.randn(4, 6)
    first, second, head = model.layers
    expected = head(F.relu(second(F.relu(first(x)))))
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    with pytest.raises(InputError, match="input_size=12"):
        model(torch.randn(4, 3, 2, 2))


def test_parameter_count_trainable_only():
    model = build("mlp", 3, input_size=6, hidden=(5,))
    model.layers[0].weight.requires_grad_(False)
    assert parameter_count(model) == 6 * 5 + 5 + 5 * 3 + 3
    assert parameter_count(model, trainable_only=True) == 5 + 5 * 3 + 3


# ------------------------------------------------------------------ load_weights


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_round_trip(name):
    torch.manual_seed(0)
    source = build(name, 10, **({"width": 4} if name in ("resnet18", "resnet18_tin", "small_cnn") else {})).eval()
    torch.manual_seed(1)
    target = build(name, 10, **({"width": 4} if name in ("resnet18", "resnet18_tin", "small_cnn") else {})).eval()
    assert load_weights(target, source.state_dict()) is target
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    x = input_for(name)
    assert torch.equal(target(x), source(x))


def test_errors_name_missing_unexpected_and_misshaped_keys_and_change_nothing():
    torch.manual_seed(0)
    model = build("resnet18", 10, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = build("resnet18", 100, width=4).state_dict()
    del state["layer3.1.conv2.weight"]
    state["extra.weight"] = torch.zeros(2, 3)
    with pytest.raises(InputError) as error:
        load_weights(model, state)
    message = str(error.value)
    assert "missing: layer3.1.conv2.weight (16, 16, 3, 3)" in message
    assert "unexpected: extra.weight (2, 3)" in message
    assert "linear.weight (100, 32) in the weights vs (10, 32) in the model" in message
    assert "--num-classes" in message and "--width" in message
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_errors_list_at_most_five_keys_of_a_kind_and_count_them():
    model = build("resnet18", 10, width=4)
    with pytest.raises(InputError) as error:
        load_weights(model, build("resnet18", 10, width=8).state_dict())
    message = str(error.value)
    # 122 keys less the 20 BatchNorm counters and linear.bias (10 classes in both)
    assert "101 with another shape" in message
    assert message.count(" in the weights vs ") == 5


def test_error_names_the_architecture_the_weights_look_like():
    with pytest.raises(InputError, match="'wrn40_2'"):
        load_weights(build("resnet18", 10, width=4), build("wrn40_2", 10).state_dict())


def test_dataparallel_prefix_and_missing_batch_counters_are_accepted():
    torch.manual_seed(0)
    source = build("small_cnn", 10, width=4)
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = load_weights(build("small_cnn", 10, width=4), state)
    assert torch.equal(target.conv2.weight, source.conv2.weight)


def test_floating_weights_are_copied_into_the_models_dtype():
    torch.manual_seed(0)
    single = build("small_cnn", 10, width=4)
    double = load_weights(build("small_cnn", 10, width=4).double(), single.state_dict())
    assert double.conv1.weight.dtype == torch.float64
    assert torch.equal(double.conv1.weight, single.conv1.weight.double())
    back = load_weights(build("small_cnn", 10, width=4), double.state_dict())
    assert back.conv1.weight.dtype == torch.float32
    assert torch.equal(back.conv1.weight, single.conv1.weight)


def test_integer_buffers_must_stay_integers():
    state = build("small_cnn", 10, width=4).state_dict()
    state["bn1.num_batches_tracked"] = state["bn1.num_batches_tracked"].float()
    with pytest.raises(InputError, match="bn1.num_batches_tracked torch.float32 vs torch.int64"):
        load_weights(build("small_cnn", 10, width=4), state)


def test_a_whole_checkpoint_or_non_tensors_are_refused_with_the_fix():
    model = build("mlp", 3, input_size=6, hidden=())
    with pytest.raises(InputError, match=r"checkpoint\['state_dict'\]"):
        load_weights(model, {"epoch": 3, "state_dict": model.state_dict(), "best_acc": 0.5})
    with pytest.raises(InputError, match="'layers.0.bias'"):
        load_weights(model, {"layers.0.weight": torch.zeros(3, 6), "layers.0.bias": [0.0, 0.0, 0.0]})
    with pytest.raises(InputError, match="mapping"):
        load_weights(model, [torch.zeros(3, 6)])


def test_timm_defaults_come_from_its_data_config():
    pytest.importorskip("timm")
    model = zoo.build("timm:test_vit", 10)
    assert zoo.resolve_input("timm:test_vit", model) == {"size": [160, 160], "mean": [0.5] * 3, "std": [0.5] * 3}
    assert zoo.resolve_input("torchvision:resnet18", zoo.build("torchvision:resnet18", 10)) is None
    with pytest.raises(InputError, match="give both --mean and --std"):
        zoo.resolve_input("timm:test_vit", model, mean=[0.1, 0.1, 0.1])


# ----------------------------------------------------------------------------------------------
# library models: their input defaults, and weights that do not fit


def test_mismatch_names_the_keys_and_the_architecture_the_file_looks_like(tmp_path):
    file = tmp_path / "r34.pt"
    torch.save(zoo.build("torchvision:resnet34", 10).state_dict(), file)
    result = invoke("import", "--model", "torchvision:resnet18", "--num-classes", 10, "--data", "digits",
                    tmp_path / "run", file)
    assert result.exit_code == 2
    assert "unexpected: layer1.2.conv1.weight (64, 64, 3, 3)" in result.output
    assert "look like torchvision:resnet34" in result.output
    with pytest.raises(InputError, match=r"look like a torchvision or timm ResNet|look like torchvision:resnet18"):
        zoo.load_weights(zoo.build("resnet18", 10), zoo.build("torchvision:resnet18", 10).state_dict())
