"""Models: the networks ensembles are made of.

- :mod:`ensembles.models.zoo`: building a network by name, strict loading of saved weights.
- :mod:`ensembles.models.checkpoints`: reading a checkpoint file into a state dict, safely.
- :mod:`ensembles.models.permutation_specs`: the permutation groups of a model, for alignment.
- :mod:`ensembles.models.pruning`: global magnitude pruning for sparse members.

Imports nothing on its own (some CLI paths must not import torch).
"""
