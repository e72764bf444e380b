"""Concrete ensembles, in sub-packages (no module needs an import alias):

- :mod:`ensembles.data`: datasets on disk and their batches, common corruptions.
- :mod:`ensembles.models`: the model zoo, reading checkpoints, pruning.
- :mod:`ensembles.methods`: the training algorithms, SAM/ASAM and SharpBalance.
- :mod:`ensembles.training`: the trainer that builds an ensemble into a run folder.
- :mod:`ensembles.runs`: run folders, their results table, the logit cache, atomic files.
- :mod:`ensembles.studies`: measurements, evaluation, sweeps and the quickstart.

The sub-packages import nothing on their own, so a command that needs no torch stays light.
"""
