"""Methods: the paper's training algorithms, side by side.

- :mod:`ensembles.methods.sam`: sharpness-aware minimization (SAM) and adaptive SAM (ASAM).
- :mod:`ensembles.methods.sharpbalance`: SharpBalance's set selection and mixed training step.
- :mod:`ensembles.methods.connected`: constrained training, members kept connected to an anchor.
- :mod:`ensembles.methods.distillation`: Hinton et al.'s distillation loss.

Imports nothing on its own (some CLI paths must not import torch).
"""
