"""Models: the networks ensembles are made of.

- :mod:`ensembles.models.zoo`: building a network by name, strict loading of saved weights.
- :mod:`ensembles.models.checkpoints`: importing the checkpoints people already have.
- :mod:`ensembles.models.pruning`: global magnitude pruning for sparse members.

Imports nothing on its own (some CLI paths must not import torch).
"""
