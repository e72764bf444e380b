"""Data: image datasets as users have them on disk, and their corruptions.

- :mod:`ensembles.data.datasets`: loading datasets, fixed train/val/test splits, fast batches.
- :mod:`ensembles.data.corruptions`: common corruptions at five severities (CIFAR-10-C style).

Imports nothing on its own (some CLI paths must not import torch).
"""
