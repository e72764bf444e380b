"""A tiny float64 network and batches for it: small enough for exact references, shared by the
tests of the measurements' argument checks (landscape/checks.py and its callers)."""
import torch
from torch import nn


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def tiny_batches(count=2, size=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, generator=generator, dtype=torch.float64),
             torch.randint(0, 2, (size,), generator=generator)) for _ in range(count)]
