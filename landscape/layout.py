"""The memory layout a network's evaluation forward passes run in.

On a CPU, PyTorch's kernels for 2-D convolution and max pooling run faster on channels-last
tensors (N, H, W, C in memory) than on the default (N, C, H, W) for the convolutional networks of
this project: an eval-mode forward pass of the small CNN took 0.47-0.66 of the time, a CIFAR
ResNet-18's 0.76-0.85 of it (``benchmarks/bench_layout.py``). The layout is how the numbers lie in
memory, not which numbers they are: a network computes the same function in either, and its
outputs agree to float rounding (the sums run in another order; a prediction exactly on the edge
between two classes can fall the other way).

Only copies a measurement owns are converted (a caller's model is never touched), and only for
evaluation: training keeps the default layout, so trained weights stay bit-identical to those of
earlier versions.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["evaluation_layout_"]


def evaluation_layout_(network: nn.Module, device: torch.device | str) -> nn.Module:
    """``network`` with its 4-D parameters and buffers in channels-last layout (in place) when it
    runs on a CPU and has a 2-D convolution; unchanged otherwise (GPUs choose their own kernels, and
    a network without convolutions gains nothing). Returns ``network``."""
    if torch.device(device).type == "cpu" and any(isinstance(module, nn.Conv2d) for module in network.modules()):
        network.to(memory_format=torch.channels_last)
    return network
