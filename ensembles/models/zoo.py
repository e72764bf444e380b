"""The model zoo, and strict loading of saved weights into a model.

:func:`build` makes a network by name (:data:`MODEL_NAMES`); :func:`load_weights` loads a state
dict into it, refusing anything that does not fit and saying which keys are wrong. Normalization
of the inputs belongs to the data pipeline for the zoo's models; a model that expects its own input
size or normalization carries it inside itself (:mod:`ensembles.models.inputs`).

Architectures, each with the parameter names of the public checkpoints it must load unchanged:

- ``resnet18`` — the CIFAR ResNet-18 of SharpBalance (Lu et al., NeurIPS 2024) and of the
  sharpness study of Andriushchenko et al. (ICML 2023): 3×3 stride-1 stem without bias, BN, ReLU,
  no max-pool; BasicBlocks [2, 2, 2, 2] of widths k, 2k, 4k, 8k (k = ``width``, 64 by default,
  the width knob of the paper's Fig. 5); 1×1 conv + BN shortcuts where the shape changes; 4×4
  average pool; linear head. Names ``conv1, bn1, layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2,
  shortcut.0,shortcut.1}, linear``. 11,173,962 parameters for k = 64 and 10 classes.
- ``resnet18_tin`` — the ResNet-18 of SharpBalance's TinyImageNet runs (their
  ``models/resnet_imgnet.py``, itself taken from SynFlow's ``tinyimagenet_resnet.py``): see
  :class:`TinyImageNetResNet18`.
- ``wrn40_2`` — WideResNet-40-2 (Zagoruyko & Komodakis, BMVC 2016) with the naming of the public
  CIFAR WRN code (xternalz' WideResNet-pytorch, used by Hendrycks' AugMix and by SharpBalance's
  ``models/wideResnet.py``): see :class:`WideResNet`.
- ``small_cnn`` — three conv + BN layers, quick on a CPU (tests, the quickstart).
- ``mlp`` — a fully connected ReLU network on the flattened input.

All models use functional (not in-place) activations so that ``torch.func`` transforms
(``functional_call``, ``vmap``, ``grad``, ``jvp``) apply to them unchanged.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ensembles.models.arguments import check_arguments, keyword_parameters
from ensembles.models.checkpoints import without_data_parallel_prefix
from landscape._checks import positive_int
from landscape.errors import InputError

__all__ = [
    "MODEL_NAMES",
    "build",
    "check_model",
    "load_weights",
    "parameter_count",
    "CifarResNet18",
    "TinyImageNetResNet18",
    "WideResNet",
    "SmallCNN",
    "MLP",
]


def _global_average_pool(features: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial map, ``(B, C, H, W) -> (B, C)``.

    Pooled with a kernel the size of the map, so at CIFAR's 32×32 input (a 4×4 map) this is
    exactly the released code's ``F.avg_pool2d(out, 4)``, bit for bit, while other input sizes
    still work.
    """
    return F.avg_pool2d(features, kernel_size=tuple(features.shape[-2:])).flatten(1)


# --------------------------------------------------------------------------------------------
# CIFAR ResNet-18
# --------------------------------------------------------------------------------------------


class _CifarBasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))``; the shortcut is the identity, or
    a strided 1×1 conv + BN where the block changes resolution or width (He et al. 2016, option B)."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        # An empty Sequential is the identity and adds no keys, as in the released checkpoints.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _cifar_stage(in_channels: int, channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        _CifarBasicBlock(in_channels, channels, stride),
        _CifarBasicBlock(channels, channels, 1),
    )


class CifarResNet18(nn.Module):
    """ResNet-18 for 32×32 images, as trained by SharpBalance and Andriushchenko et al.

    Stem ``relu(bn1(conv1 x))`` with a 3×3 stride-1 conv and no max-pool; four stages of two
    BasicBlocks with widths k, 2k, 4k, 8k and strides 1, 2, 2, 2; global average pool (the 4×4
    map at 32×32 input); ``linear`` head. PyTorch's default initialization, as in the releases.
    """

    def __init__(self, num_classes: int, *, width: int = 64):
        super().__init__()
        positive_int("num_classes", num_classes)
        k = positive_int("width", width)
        self.conv1 = nn.Conv2d(3, k, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(k)
        self.layer1 = _cifar_stage(k, k, 1)
        self.layer2 = _cifar_stage(k, 2 * k, 2)
        self.layer3 = _cifar_stage(2 * k, 4 * k, 2)
        self.layer4 = _cifar_stage(4 * k, 8 * k, 2)
        self.linear = nn.Linear(8 * k, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(_global_average_pool(out))


# --------------------------------------------------------------------------------------------
# TinyImageNet ResNet-18 (SharpBalance's release)
# --------------------------------------------------------------------------------------------


class ChannelScale(nn.Module):
    """Learned per-channel scale ``x · w`` with ``w`` of shape ``(C, 1, 1)``, initialized to one.

    SharpBalance's TinyImageNet ResNet uses this (SynFlow's ``Identity2d``) as the "identity"
    shortcut, so its checkpoints hold a trained ``shortcut.weight`` in every block that keeps its
    shape; it is a real parameter (trained, weight-decayed, perturbed by sharpness measures).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class _TinyImageNetBasicBlock(nn.Module):
    """``relu(residual_function(x) + shortcut(x))`` with ``residual_function`` =
    conv3×3(stride) → BN → ReLU → conv3×3 → BN (Sequential indices 0, 1, 2, 3, 4), and
    ``shortcut`` a :class:`ChannelScale` or, where the shape changes, 1×1 conv(stride) → BN."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        else:
            self.shortcut = ChannelScale(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual_function(x) + self.shortcut(x))


def _tiny_imagenet_stage(in_channels: int, channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        _TinyImageNetBasicBlock(in_channels, channels, stride),
        _TinyImageNetBasicBlock(channels, channels, 1),
    )


class TinyImageNetResNet18(nn.Module):
    """The ResNet-18 of SharpBalance's TinyImageNet checkpoints (64×64 input, 200 classes).

    Read from the SharpBalance release (github.com/haiquanlu/SharpBalance,
    ``models/resnet_imgnet.py``, chosen by ``utils.create_model`` when ``--data tiny_imgnet``),
    which is SynFlow's ``Models/tinyimagenet_resnet.py`` (Tanaka et al. 2020). Differences from
    :class:`CifarResNet18`, all kept so its checkpoints load unchanged:

    - Stem ``conv1`` is ``Sequential(conv3×3 stride 1, BN, ReLU)`` — as on CIFAR no max-pool and
      no stride, so a 64×64 image reaches the last stage as an 8×8 map (four times the CIFAR
      model's compute), then adaptive average pooling to 1×1.
    - Stages are named ``conv2_x .. conv5_x``; a block's main path is the Sequential
      ``residual_function`` (indices 0, 1, 3, 4 carry weights) and the head is ``fc``.
    - The identity shortcut is a learned per-channel scale (:class:`ChannelScale`,
      ``shortcut.weight`` of shape ``(C, 1, 1)``): 1,024 more parameters than a plain identity.
    - Convolutions start from Kaiming-normal (fan-out, ReLU) weights.
    - The release builds the model with SynFlow's masked layers, so its checkpoints also hold
      all-ones ``weight_mask``/``bias_mask`` buffers beside every conv, BN, linear and scale;
      :func:`load_weights` folds them into the weights (the layer's effective weight is
      ``mask · weight``) instead of carrying dead buffers here.
    - The release passes ``--width`` into an ignored argument: its TinyImageNet model is always
      width 64. ``width`` here defaults to 64 and scales stages k, 2k, 4k, 8k as for CIFAR.
    """

    def __init__(self, num_classes: int, *, width: int = 64):
        super().__init__()
        positive_int("num_classes", num_classes)
        k = positive_int("width", width)
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, k, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(k), nn.ReLU()
        )
        self.conv2_x = _tiny_imagenet_stage(k, k, 1)
        self.conv3_x = _tiny_imagenet_stage(k, 2 * k, 2)
        self.conv4_x = _tiny_imagenet_stage(2 * k, 4 * k, 2)
        self.conv5_x = _tiny_imagenet_stage(4 * k, 8 * k, 2)
        self.fc = nn.Linear(8 * k, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.conv5_x(self.conv4_x(self.conv3_x(self.conv2_x(out))))
        return self.fc(_global_average_pool(out))


# --------------------------------------------------------------------------------------------
# WideResNet
# --------------------------------------------------------------------------------------------


class _WideBasicBlock(nn.Module):
    """Pre-activation block: ``a = relu(bn1 x)``;
    ``out = conv2(dropout(relu(bn2(conv1 a)))) + (x if the shape is kept else convShortcut(a))``.

    The projection shortcut takes the pre-activated ``a``, the identity the raw ``x``: that is
    how the public CIFAR WRN code computes it, and its checkpoints were trained that way.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.keeps_shape = in_channels == channels and stride == 1
        # camelCase because the public checkpoints spell it so.
        self.convShortcut = (
            None if self.keeps_shape
            else nn.Conv2d(in_channels, channels, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(activated)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.keeps_shape else self.convShortcut(activated))


class _WideGroup(nn.Module):
    """``n`` blocks of one width; the first one changes width and stride (``block{g}.layer``)."""

    def __init__(self, blocks: int, in_channels: int, channels: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(*[
            _WideBasicBlock(in_channels if i == 0 else channels, channels, stride if i == 0 else 1, dropout)
            for i in range(blocks)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-d-k (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016) for 32×32 images.

    ``n = (d − 4) / 6`` pre-activation blocks in each of three groups of widths 16k, 32k, 64k
    (strides 1, 2, 2) after a 3×3 conv to 16 channels; then BN, ReLU, global average pool (8×8 at
    32×32 input) and a linear head. Dropout ``p`` between a block's two convs (0 by default).
    Parameter names follow the public CIFAR WRN code (xternalz/WideResNet-pytorch, as used by
    Hendrycks et al.'s AugMix and robustness code and by SharpBalance):
    ``conv1, block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc``.
    Initialization as there: convs N(0, 2/(k²·out_channels)), BN (1, 0), linear bias 0.
    WRN-40-2 with 10 classes has 2,243,546 parameters.
    """

    def __init__(self, num_classes: int, *, depth: int = 40, widen_factor: int = 2, dropout: float = 0.0):
        super().__init__()
        positive_int("num_classes", num_classes)
        positive_int("widen_factor", widen_factor)
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise InputError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout!r}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _WideGroup(blocks, widths[0], widths[1], 1, float(dropout))
        self.block2 = _WideGroup(blocks, widths[1], widths[2], 2, float(dropout))
        self.block3 = _WideGroup(blocks, widths[2], widths[3], 2, float(dropout))
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(_global_average_pool(out))


# --------------------------------------------------------------------------------------------
# Small models for the CPU
# --------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Three 3×3 conv → BN → ReLU layers of widths w, 2w, 4w (2×2 max-pool after the first two),
    global average pool, linear head. About 95k parameters at the default w = 32 with 10
    classes, 24k at w = 16; any input of at least 4×4 pixels with 3 channels."""

    def __init__(self, num_classes: int, *, width: int = 32):
        super().__init__()
        positive_int("num_classes", num_classes)
        w = positive_int("width", width)
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * w)
        self.linear = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        out = F.max_pool2d(F.relu(self.bn2(self.conv2(out))), 2)
        out = F.relu(self.bn3(self.conv3(out)))
        return self.linear(_global_average_pool(out))


class MLP(nn.Module):
    """``x ↦ W_L relu(… relu(W_1 flatten(x) + b_1) …) + b_L`` with hidden widths ``hidden``.

    ``hidden=()`` gives a linear (softmax-regression) model, handy for closed-form checks.
    Parameters are named ``layers.{i}.weight/bias``, ``i`` counting the linear maps.
    """

    def __init__(self, num_classes: int, *, input_size: int = 3 * 32 * 32, hidden: Sequence[int] = (256,)):
        super().__init__()
        positive_int("num_classes", num_classes)
        positive_int("input_size", input_size)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise InputError(f"hidden must be a sequence of layer widths such as (256,) or (512, 256), got {hidden!r}")
        for size in hidden:
            positive_int("every hidden width", size)
        self.input_size = input_size
        sizes = (input_size, *hidden, num_classes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.flatten(1)
        if out.shape[1] != self.input_size:
            raise InputError(
                f"MLP expects {self.input_size} input features per sample but got {out.shape[1]} "
                f"(input shape {tuple(x.shape)}); build it with input_size={out.shape[1]}"
            )
        for layer in self.layers[:-1]:
            out = F.relu(layer(out))
        return self.layers[-1](out)


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


def _wrn40_2(num_classes: int, *, dropout: float = 0.0) -> WideResNet:
    return WideResNet(num_classes, depth=40, widen_factor=2, dropout=dropout)


_ARCHITECTURES = {
    "resnet18": CifarResNet18,
    "resnet18_tin": TinyImageNetResNet18,
    "wrn40_2": _wrn40_2,
    "small_cnn": SmallCNN,
    "mlp": MLP,
}

MODEL_NAMES: tuple[str, ...] = tuple(_ARCHITECTURES)

# Keys that together only each architecture's checkpoints hold, to name the likely model in errors
# (the zoo's, then the layouts of torchvision's and timm's own families; first match wins).
_SIGNATURE_KEYS = {
    "resnet18": ("layer1.0.conv1.weight", "linear.weight"),
    "resnet18_tin": ("conv2_x.0.residual_function.0.weight",),
    "wrn40_2": ("block1.layer.0.conv1.weight",),
    "small_cnn": ("conv3.weight", "bn3.weight", "linear.weight"),
    "mlp": ("layers.0.weight",),
    "a torchvision or timm ResNet (torchvision:resnet18/50, timm:resnet18 ...)": ("layer1.0.conv1.weight", "fc.weight"),
    "torchvision:vit_* (a torchvision ViT)": ("encoder.layers.encoder_layer_0.ln_1.weight",),
    "timm:vit_* (a timm ViT)": ("blocks.0.attn.qkv.weight", "cls_token"),
    "torchvision:convnext_* (a torchvision ConvNeXt)": ("features.1.0.block.0.weight",),
    "timm:convnext_* (a timm ConvNeXt)": ("stages.0.blocks.0.conv_dw.weight",),
    "torchvision:efficientnet_* or mobilenet_v2": ("features.0.0.weight", "classifier.1.weight"),
}


def _zoo_parameters(name: str) -> dict:
    """Keyword options of an architecture (the parameters after ``*``), annotations evaluated."""
    return keyword_parameters(_ARCHITECTURES[name], keyword_only=True)


def build(name: str, num_classes: int, *, model_input: Mapping | None = None,
          trust_model_code: bool | None = None, **options) -> nn.Module:
    """A freshly initialized model ``name`` with ``num_classes`` outputs; never downloads weights.

    ``name`` is one of :data:`MODEL_NAMES`, or ``torchvision:<builder>`` (a
    ``torchvision.models`` classification builder, built with ``weights=None``), ``timm:<name>``
    (a ``timm.create_model`` name, ``pretrained=False``; needs ``pip install 'sharpdiv[timm]'``) or
    ``package.module:callable`` (a factory or class importable from the current folder or
    ``PYTHONPATH``, called as ``callable(num_classes=num_classes, **options)``). The last runs
    Python code, so it is built only when trusted: ``trust_model_code=True``, or (None) the
    environment variable ``SHARPDIV_TRUST_MODEL_CODE=1`` (see :mod:`ensembles.models.external`).

    Zoo options: resnet18, resnet18_tin ``width=64``; wrn40_2 ``dropout=0.0``; small_cnn
    ``width=32``; mlp ``input_size=3072, hidden=(256,)``; the other routes take the keyword
    arguments of the network their builder makes. Every option must be a named parameter, of the
    type it declares (:func:`ensembles.models.arguments.check_arguments`). ``model_input`` (see
    :func:`resolve_input`) adds the model's own input resizing and normalization
    (:func:`attach_input`). The model is float32 on the CPU; move it with ``.to``. An unknown
    name or option raises :class:`InputError` saying what is allowed.
    """
    if ":" in name:
        from ensembles.models import external

        model = external.build_external(name, num_classes, options, trust_model_code=trust_model_code)
    else:
        _check_zoo(name, options)
        model = _ARCHITECTURES[name](num_classes, **options)
    return attach_input(model, model_input) if model_input else model


def check_model(name: str, options: Mapping | None = None, *, trust_model_code: bool | None = None) -> None:
    """An :class:`InputError` unless :func:`build` would accept ``name`` and ``options`` (a known
    name, trusted code, named options of the declared types); builds nothing, so a command can
    refuse a model before it writes anything."""
    options = dict(options or {})
    if ":" in name:
        from ensembles.models import external

        external.check_external(name, options, trust_model_code=trust_model_code)
    else:
        _check_zoo(name, options)


def _check_zoo(name: str, options: Mapping) -> None:
    if name not in _ARCHITECTURES:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}, or "
                         "torchvision:<name>, timm:<name> or module.path:callable")
    check_arguments(name, _zoo_parameters(name), options)


def resolve_input(name: str, model: nn.Module, size=None, mean=None, std=None) -> dict | None:
    """The run.json ``model_input`` of model ``name`` (built as ``model``): explicit size, mean
    and std, else what its library records (timm's data config), else None (zoo behaviour)."""
    from ensembles.models import external, inputs

    default = external.default_input(name, model) if ":" in name else None
    return inputs.resolve_input(size, mean, std, default=default)


def attach_input(model: nn.Module, model_input: Mapping) -> nn.Module:
    """See :func:`ensembles.models.inputs.attach_input`."""
    from ensembles.models import inputs

    return inputs.attach_input(model, model_input)


def parameter_count(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------
# Loading weights
# --------------------------------------------------------------------------------------------

_SHOWN = 5  # keys listed per kind of mismatch


def _fold_masks(state: dict, model_keys: set) -> dict:
    """Fold SynFlow-style pruning masks into their weights: ``w ← mask · w``, drop ``*_mask``.

    Only masks the model has no place for are folded, and only where the masked tensor is
    present; the layer's output is unchanged because its effective weight is ``mask · w``.
    """
    for key in [k for k in state if k.endswith("_mask") and k not in model_keys]:
        target = key[: -len("_mask")]
        if target in state and state[target].shape == state[key].shape:
            state[target] = state[target] * state.pop(key).to(state[target].dtype)
    return state


_RESNET_DEPTHS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
                  ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101",
                  ((3, 8, 36, 3), True): "resnet152"}


def _likely_architecture(keys) -> str | None:
    keys = set(keys)
    for name, signature in _SIGNATURE_KEYS.items():
        if keys.issuperset(signature):
            return _resnet_depth(keys) or name if signature[-1] == "fc.weight" else name
    return None


def _resnet_depth(keys: set) -> str | None:
    """``torchvision:resnet50`` for the blocks per stage of a torchvision/timm ResNet's keys."""
    blocks = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{stage}.")}) for stage in range(1, 5))
    name = _RESNET_DEPTHS.get((blocks, "layer1.0.conv3.weight" in keys))
    return f"torchvision:{name} (or timm:{name})" if name else None


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, tensor.shape)) + ")"


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly, or raise :class:`InputError` and change nothing.

    Every key of ``model.state_dict()`` must be present with the same shape and no other key may
    be; the error names up to five missing, unexpected and mis-shaped keys, with shapes, and the
    likely fix. Accepted on the way, since they do not change the function the weights compute:

    - a ``module.`` prefix on every key (``nn.DataParallel`` checkpoints) is removed;
    - SynFlow-style ``*_mask`` buffers (SharpBalance's TinyImageNet checkpoints) are folded into
      their weights, see :class:`TinyImageNetResNet18`;
    - a missing BatchNorm ``num_batches_tracked`` (checkpoints from PyTorch < 0.4.1) keeps the
      model's own counter.

    Dtypes: a floating-point tensor of any precision is copied into the model's own dtype (so a
    float32 checkpoint loads into a float64 model for precise curvature work, and back); integer
    and boolean buffers must match in kind. Values are copied onto the model's device.
    Returns ``model``.
    """
    if not isinstance(state_dict, Mapping):
        raise InputError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    state = dict(state_dict)
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        raise InputError("this is a whole checkpoint, not a state dict: pass checkpoint['state_dict'] instead")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise InputError(
            f"state dict entries must be tensors; not a tensor: {', '.join(map(repr, not_tensors[:_SHOWN]))}"
        )

    expected = model.state_dict()
    state = without_data_parallel_prefix(state, model_keys=expected)
    state = _fold_masks(state, set(expected))

    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    wrong_kind = [
        k for k in expected
        if k in state and k not in misshaped
        and (state[k].is_floating_point(), state[k].is_complex(), state[k].dtype == torch.bool)
        != (expected[k].is_floating_point(), expected[k].is_complex(), expected[k].dtype == torch.bool)
    ]
    if missing or unexpected or misshaped or wrong_kind:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: " + ", ".join(f"{k} {_shape(expected[k])}" for k in missing[:_SHOWN]))
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: " + ", ".join(f"{k} {_shape(state[k])}" for k in unexpected[:_SHOWN]))
        if misshaped:
            problems.append(f"{len(misshaped)} with another shape: " + ", ".join(
                f"{k} {_shape(state[k])} in the weights vs {_shape(expected[k])} in the model" for k in misshaped[:_SHOWN]))
        if wrong_kind:
            problems.append(f"{len(wrong_kind)} of another kind of dtype: " + ", ".join(
                f"{k} {state[k].dtype} vs {expected[k].dtype}" for k in wrong_kind[:_SHOWN]))
        guess = _likely_architecture(state)
        hint = (f"; the weights look like {guess if ' ' in guess else 'model ' + repr(guess)}"
                if guess and guess != _likely_architecture(expected) else "")
        raise InputError(
            f"weights do not fit {type(model).__name__}: " + "; ".join(problems)
            + f"{hint}. Check --model, --model-arg, --width and --num-classes against the run that saved them"
        )
    model.load_state_dict(state, strict=True)
    return model
