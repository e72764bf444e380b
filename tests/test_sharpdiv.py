"""The notebook facade (sharpdiv.py): it re-exports the real functions, imports no torch until
asked, runs the command line as ``python -m sharpdiv``, and the README's Python snippet runs."""
import functools
import math
import re
import subprocess
import sys
from pathlib import Path

import torch
import torchvision

from ensembles.data import datasets
from ensembles.runs import run_folder
from landscape.sharpness import worst_case_sharpness

README = Path(__file__).resolve().parents[1] / "README.md"


def test_sharpdiv_reexports_the_real_functions():
    """Every exported name is the very object of the module that defines it, and the entry points a
    notebook starts from are among them."""
    import importlib

    import sharpdiv

    for name in sharpdiv.__all__:
        module, attribute = sharpdiv._EXPORTS[name]
        assert getattr(sharpdiv, name) is getattr(importlib.import_module(module), attribute or name), name
    assert sharpdiv.worst_case_sharpness is worst_case_sharpness
    assert sharpdiv.read_results is run_folder.read_results
    for name in ("average_case_sharpness", "hessian_trace", "hessian_eigenvalues", "hessian_spectral_density",
                 "per_sample_fisher_trace", "disagreement_error_ratio", "expected_calibration_error",
                 "ensemble_improvement_rate", "loss_barrier", "train", "evaluate", "report"):
        assert name in sharpdiv.__all__ and callable(getattr(sharpdiv, name))


def test_import_sharpdiv_does_not_import_torch_and_python_m_runs_the_cli():
    check = subprocess.run([sys.executable, "-c", "import sys, sharpdiv; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert check.stdout.strip() == "False"
    result = subprocess.run([sys.executable, "-m", "sharpdiv", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "Usage: sharpdiv" in result.stdout


def test_readme_from_python_snippet_runs(monkeypatch):
    section = README.read_text().split("## From Python", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) < 15
    assert "n_batches=100" in code
    images = datasets.load_dataset("digits", split="train")
    dataset = torch.utils.data.TensorDataset(images.batch(range(20)), images.targets[:20])
    code = code.replace("n_batches=100", "n_batches=2")  # a CPU-sized budget; the rest runs as written
    # a tiny torchvision ResNet (one block per stage) stands in for resnet18 to keep the test quick
    monkeypatch.setattr(torchvision.models, "resnet18", functools.partial(
        torchvision.models.resnet.ResNet, torchvision.models.resnet.BasicBlock, [1, 1, 1, 1]))
    namespace = {"dataset": dataset}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].n_batches == 2 and math.isfinite(namespace["result"].value)
