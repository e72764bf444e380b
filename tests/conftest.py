"""Shared test settings: one thread per test process, so results are reproducible bit for bit
and the suite does not fight itself for the machine's two cores.

Layout: test files may sit in subfolders that mirror the source tree (``tests/ensembles/training/``,
``tests/reports/``). The subfolders hold no ``__init__.py``: a package ``tests/ensembles`` would be
imported as ``ensembles`` and shadow the real one. So every test file name is unique across tests/,
and the helpers beside this file import by name from anywhere below it (``from disk_layouts import
...``), because pytest puts this file's folder on ``sys.path``."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
