"""Runs: one ensemble on disk and everything stored next to it.

- :mod:`ensembles.runs.run_folder`: the run folder, its members and its results table.
- :mod:`ensembles.runs.files`: atomic writes, file digests, what makes a folder a run folder.
- :mod:`ensembles.runs.logit_cache`: each member's logits per dataset slice, computed once.
- :mod:`ensembles.runs.checkpoint_import`: a run folder made from the checkpoints people already have.

Imports nothing on its own (some CLI paths must not import torch).
"""
