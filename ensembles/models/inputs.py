"""The input a model expects, as part of the model: resizing and normalization of ``[0, 1]`` images.

A model built for 224×224 ImageNet-normalised input (a timm or torchvision network) gets the
resizing and the normalization inside itself, so every command feeds it the same ``[0, 1]``
pixels: AutoAttack's ε stays in pixel space and no command can normalise twice or forget to.
Run folders record it in run.json as ``model_input = {"size": [H, W] | None, "mean": [...] |
None, "std": [...] | None}``; when it holds a mean, the data pipeline leaves its images
unnormalized (:func:`normalizes`), otherwise the data pipeline normalises with the dataset's
statistics as for the zoo's models.

The stage runs as a forward pre-hook of the model, not as an outer wrapper: the model keeps its
own parameter names and state-dict keys, so checkpoints of the unwrapped model load unchanged,
files saved from it load into the unwrapped model, and ``params``/``exclude`` patterns name the
library's own parameters. ``torch.func.functional_call`` runs the hook too. The stage is kept as
a plain attribute, not a child module: an ``nn.Sequential`` runs every child in turn and would
run it again on the outputs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from landscape.errors import InputError

STAGE = "sharpdiv_input"  # the attribute holding the stage


class ModelInput(nn.Module):
    """``x ↦ (resize(x) − mean) / std`` for images ``(N, C, H, W)`` in ``[0, 1]``.

    ``size`` ``(H, W)`` resizes bilinearly only when the input has another size; ``mean``/``std``
    (one value per channel) normalise when given, in the input's dtype and on its device. They
    are not part of the state dict (run.json records them).
    """

    def __init__(self, size: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        self.size = None if size is None else tuple(int(v) for v in size)
        self.normalizes = mean is not None
        if self.normalizes:
            self.mean = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
            self.std = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.size is not None and inputs.dim() == 4 and tuple(inputs.shape[-2:]) != self.size:
            inputs = F.interpolate(inputs, size=self.size, mode="bilinear", align_corners=False)
        if self.normalizes:
            inputs = (inputs - self.mean.to(inputs)) / self.std.to(inputs)
        return inputs

    def extra_repr(self) -> str:
        return f"size={self.size}, mean={self.mean.flatten().tolist() if self.normalizes else None}"


def _apply_stage(module: nn.Module, args: tuple):
    return (getattr(module, STAGE)(args[0]), *args[1:])


def attach_input(model: nn.Module, model_input: Mapping) -> nn.Module:
    """``model`` with the stage of ``model_input`` (a :func:`resolve_input` record) run before it."""
    if hasattr(model, STAGE):
        raise InputError(f"{type(model).__name__} already has an input stage")
    stage = ModelInput(model_input.get("size"), model_input.get("mean"), model_input.get("std"))
    model.__dict__[STAGE] = stage  # an attribute, not a child module (see the module's docstring)
    model.register_forward_pre_hook(_apply_stage)
    return model


def normalizes(model_input: Mapping | None) -> bool:
    """Whether a model with this record normalises its inputs itself (then the data must not)."""
    return bool(model_input) and model_input.get("mean") is not None


def resolve_input(size=None, mean=None, std=None, default: Mapping | None = None) -> dict | None:
    """The run.json record of a model's input: explicit values, else the library's ``default``
    (:func:`ensembles.models.external.default_input`); None when nothing is set.

    ``size`` is one int (square) or ``(H, W)``; ``mean``/``std`` one positive-std value per channel,
    both or neither. A bad value raises :class:`InputError`.
    """
    default = dict(default or {})
    size = default.get("size") if size is None else size
    if (mean is None) != (std is None):
        raise InputError("give both --mean and --std (the model's input normalization), or neither")
    if mean is None:
        mean, std = default.get("mean"), default.get("std")
    if size is not None:
        size = [int(size), int(size)] if isinstance(size, (int, float)) and not isinstance(size, bool) else list(size)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
            raise InputError(f"input size must be one positive integer or two (height, width), got {size!r}")
    if mean is not None:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != len(std) or not mean:
            raise InputError(f"--mean and --std need one value per channel each, got {len(mean)} and {len(std)}")
        if not all(map(math.isfinite, mean + std)) or min(std) <= 0:
            raise InputError(f"--mean must be finite and --std finite and positive, got mean {mean}, std {std}")
    if size is None and mean is None:
        return None
    return {"size": size, "mean": mean, "std": std}
