"""Training: turning settings into a trained ensemble in a run folder.

- :mod:`ensembles.training.trainer`: deep ensembles (SGD), SAM, ASAM and SharpBalance, resumable.

Imports nothing on its own (some CLI paths must not import torch).
"""
