"""Sparse members for the sparsity axis of SharpBalance's Fig. 5(b): global magnitude pruning.

Given a target sparsity ``s``, the ``⌊s · P⌋`` weights of smallest magnitude among all ``P``
prunable weights (the weight tensors of convolutions and linear layers; biases and BatchNorm
parameters stay dense) are removed across the whole network at once, ties going to the lower
position; a boolean mask per tensor keeps the rest. Pruning happens at initialization
(``prune_epoch=0``) or after a warm-up of ``W`` dense epochs, and the masks hold for the rest of
training: the pruned weights' gradients are zeroed by a hook on every backward pass (so neither
SAM's ascent ε̂ nor momentum nor weight decay moves them), and the masks are re-applied after every
optimizer step as a guard.

How this relates to the paper's code: SharpBalance's release (github.com/haiquanlu/SharpBalance)
contains no pruning routine. Its TinyImageNet ResNet-18 is built from SynFlow's masked layers
(Tanaka et al. 2020), whose ``weight_mask`` buffers are all ones in its checkpoints, and its
``--bench`` flag is only passed through to the WideResNet constructor. SynFlow's library, where
those layers come from, offers global magnitude pruning ("Mag": score ``|θ|``, one global
threshold), which is what we implement, with the warm-up as an option because pruning a network at
initialization by magnitude keeps only the random initialization's largest weights.
"""
from __future__ import annotations

import torch
from torch import nn

from landscape.errors import InputError

__all__ = ["prunable_parameters", "global_magnitude_masks", "apply_masks", "mask_gradients", "measured_sparsity"]

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight tensors of convolutions and linear layers, by parameter name."""
    found = {}
    for module_name, module in model.named_modules():
        if isinstance(module, _PRUNABLE) and module.weight is not None:
            found[f"{module_name}.weight" if module_name else "weight"] = module.weight
    return found


def global_magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks (True = kept) removing the ``⌊sparsity · P⌋`` smallest ``|θ|`` over all
    prunable weights at once."""
    if not 0 <= sparsity < 1:
        raise InputError(f"sparsity is the fraction of weights removed, in [0, 1), got {sparsity!r}")
    parameters = prunable_parameters(model)
    if not parameters:
        raise InputError(f"{type(model).__name__} has no convolution or linear weights to prune")
    magnitudes = torch.cat([p.detach().abs().flatten() for p in parameters.values()])
    removed = int(sparsity * magnitudes.numel())
    keep = torch.ones(magnitudes.numel(), dtype=torch.bool, device=magnitudes.device)
    keep[torch.argsort(magnitudes, stable=True)[:removed]] = False
    masks, start = {}, 0
    for name, parameter in parameters.items():
        masks[name] = keep[start:start + parameter.numel()].view_as(parameter).clone()
        start += parameter.numel()
    return masks


def _named(model: nn.Module, masks: dict[str, torch.Tensor]):
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in parameters or parameters[name].shape != mask.shape:
            raise InputError(f"pruning mask {name!r} does not fit the model; the masks belong to another architecture")
        yield parameters[name], mask.to(parameters[name].device)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """``θ ← θ ⊙ mask`` for every masked tensor."""
    for parameter, mask in _named(model, masks):
        parameter.mul_(mask)


def mask_gradients(model: nn.Module, masks: dict[str, torch.Tensor]) -> list:
    """Hooks zeroing the pruned entries of every gradient; returns the handles (``.remove()``)."""
    handles = []
    for parameter, mask in _named(model, masks):
        handles.append(parameter.register_hook(lambda gradient, mask=mask: gradient * mask))
    return handles


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries among the prunable weights."""
    parameters = list(prunable_parameters(model).values())
    zeros = sum(int((p == 0).sum()) for p in parameters)
    return zeros / max(sum(p.numel() for p in parameters), 1)
