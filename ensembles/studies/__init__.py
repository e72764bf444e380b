"""Studies: orchestration that measures, evaluates and sweeps run folders.

- :mod:`ensembles.studies.measurements`: sharpness, Hessian, Fisher and connectivity per member, as rows.
- :mod:`ensembles.studies.evaluation`: cached logits -> accuracy, calibration, diversity rows.
- :mod:`ensembles.studies.sweep`: grids of ensembles, trained then measured, here or on SLURM.
- :mod:`ensembles.studies.slurm`: a sweep's SLURM tasks: their requests, time limits, and following them to their end.
- :mod:`ensembles.studies.quickstart`: a small complete SharpBalance study on digits, on a CPU.
- :mod:`ensembles.studies.theory`: Theorems 1 and 2 against simulation, as the long table the figures draw.

Imports nothing on its own (some CLI paths must not import torch).
"""
