"""Shared test settings: one thread per test process, so results are reproducible bit for bit
and the suite does not fight itself for the machine's two cores."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
