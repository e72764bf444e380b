"""Methods: the paper's training algorithms, side by side.

- :mod:`ensembles.methods.sam`: sharpness-aware minimization (SAM) and adaptive SAM (ASAM).
- :mod:`ensembles.methods.sharpbalance`: SharpBalance's set selection and mixed training step.

Imports nothing on its own (some CLI paths must not import torch).
"""
