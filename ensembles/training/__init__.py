"""Training: turning settings into a trained ensemble in a run folder.

- :mod:`ensembles.training.settings`: the training settings, each declared once.
- :mod:`ensembles.training.trainer`: deep ensembles (SGD), SAM, ASAM and SharpBalance, resumable; spawned,
  constrained and distilled members (single-basin ensembles).
- :mod:`ensembles.training.single_basin`: what those record and check: the spawn parent, the anchor, the teacher.

Imports nothing on its own (some CLI paths must not import torch).
"""
