"""The checks every layer shares (landscape.checks): one parameter-selection rule in every module,
one spelling of norms, the integer and float checks and their one-line refusal everywhere, the
mode context managers, and no copy of a check outside its home."""

import ast
import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ensembles.data import corruptions
from ensembles.models import zoo
from ensembles.studies import evaluation
from ensembles.training import trainer
from landscape import fisher, hessian, robustness, sharpness
from landscape.checks import (evaluation_mode, finite_float, frozen_parameters, model_dtype_device, norm_name,
                              positive_int, select_parameters)
from landscape.errors import InputError
from landscape.hvp import LossHessian
from landscape.theory import QuadraticSetting
from reports.correlation import rank_correlations
from tiny_networks import tiny_batches, tiny_model


def same(first, second):
    """Equal tensors, floats (NaN equal to NaN) or dataclass fields."""
    if isinstance(first, torch.Tensor):
        return torch.equal(first, second) or bool(torch.allclose(first, second, equal_nan=True, rtol=0, atol=0))
    if isinstance(first, float):
        return first == second or (first != first and second != second)
    return first == second


def test_norms_have_one_spelling_in_any_case():
    model, batches = tiny_model(), tiny_batches()
    lower = sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, "linf", n_iters=2)
    upper = sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, "Linf", n_iters=2)
    assert same(lower.per_batch, upper.per_batch) and upper.norm == "linf"
    assert upper.metric == "sharpness/worst/linf/adaptive"
    robustness.check_radius("L2", 0.5, 3)
    robustness.check_radius("linf", 0.1)
    with pytest.raises(InputError, match="norm"):
        norm_name("l1")


# -- one parameter-selection rule ------------------------------------------------------------------

SELECTIONS = [
    (None, None),
    ("*.weight", None),
    (["2.weight", "0.bias"], None),          # exact names are globs matching themselves
    (r"(0|2)\.bias", None),                  # a regular expression on the whole name
    (None, "0.*"),
    ("*", ["*.bias"]),
]


def squared_gradient_norms(model, names, inputs, targets):
    named = dict(model.named_parameters())
    norms = []
    for x, y in zip(inputs, targets):
        loss = F.cross_entropy(model(x[None]), y[None])
        gradients = torch.autograd.grad(loss, [named[name] for name in names])
        norms.append(sum(gradient.pow(2).sum() for gradient in gradients))
    return torch.stack(norms).detach()


@pytest.mark.parametrize("params, exclude", SELECTIONS)
def test_every_module_selects_the_same_parameters(params, exclude):
    model, batches = tiny_model(), tiny_batches(count=1)
    expected = list(select_parameters(model, params, exclude))
    count = sum(dict(model.named_parameters())[name].numel() for name in expected)

    assert list(LossHessian(model, F.cross_entropy, batches, params=params, exclude=exclude).names) == expected
    pairs = hessian.hessian_eigenvalues(model, F.cross_entropy, batches, params=params, exclude=exclude, k=1,
                                        n_iters=count)
    assert list(pairs.parameter_names) == expected
    trace = hessian.hessian_trace(model, F.cross_entropy, batches, params=params, exclude=exclude, n_probes=1)
    assert trace.dimension == count
    worst = sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, params=params, exclude=exclude,
                                           n_iters=1)
    assert worst.n_perturbed == count
    inputs, targets = batches[0]
    torch.testing.assert_close(
        fisher.per_sample_fisher_trace(model, F.cross_entropy, batches, params=params, exclude=exclude),
        squared_gradient_norms(model, expected, inputs, targets))


@pytest.mark.parametrize("measure", [
    lambda model, b, p: hessian.hessian_trace(model, F.cross_entropy, b, params=p, n_probes=1),
    lambda model, b, p: fisher.per_sample_fisher_trace(model, F.cross_entropy, b, params=p),
    lambda model, b, p: sharpness.worst_case_sharpness(model, F.cross_entropy, b, 0.1, params=p, n_iters=1),
    lambda model, b, p: LossHessian(model, F.cross_entropy, b, params=p),
])
def test_a_pattern_matching_nothing_is_the_same_error_everywhere(measure):
    with pytest.raises(InputError, match="unknown parameter: params pattern 'head.*' matches no trainable"):
        measure(tiny_model(), tiny_batches(), "head.*")


def test_frozen_parameters_are_not_selected_by_any_pattern():
    model = tiny_model()
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in select_parameters(model, "*")
    with pytest.raises(InputError, match="matches no trainable"):
        select_parameters(model, "0.weight")


# -- the checks themselves ---------------------------------------------------------------------------

def test_positive_int():
    assert positive_int("n", 3) == 3 and positive_int("n", 0, minimum=0) == 0
    assert positive_int("n", None, optional=True) is None
    for bad in (0, -1, 2.5, True, "3", None, float("nan")):
        with pytest.raises(InputError, match="n must be an integer >= 1"):
            positive_int("n", bad)


def test_finite_float():
    assert finite_float("rho", 0) == 0.0 and finite_float("rho", 0.5, minimum=0) == 0.5
    for bad, options in ((float("nan"), {}), (float("inf"), {}), (True, {}), ("1", {}), (-0.1, {"minimum": 0}),
                         (0.0, {"minimum": 0, "exclusive": True}), (None, {})):
        with pytest.raises(InputError, match="rho must be a finite number"):
            finite_float("rho", bad, **options)


def test_mode_context_managers_restore_every_flag_even_on_error():
    model = tiny_model()
    model[0].eval()
    model[2].weight.requires_grad_(False)
    with pytest.raises(RuntimeError):
        with evaluation_mode(model), frozen_parameters(model):
            assert not any(m.training for m in model.modules())
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError
    assert [m.training for m in model.modules()] == [True, False, True, True]
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True]


def test_model_dtype_device():
    assert model_dtype_device(tiny_model()) == (torch.float64, torch.device("cpu"))
    assert model_dtype_device(nn.ReLU()) == (torch.get_default_dtype(), torch.device("cpu"))
    with pytest.raises(InputError, match="no floating-point parameters to perturb"):
        model_dtype_device(nn.ReLU(), purpose="to perturb")


ROOT = Path(__file__).resolve().parents[2]


def test_an_integer_is_an_integral_type_and_whole_floats_are_refused():
    assert positive_int("n", np.int64(3)) == 3 and type(positive_int("n", np.int64(3))) is int
    for bad in (3.0, np.float64(2.0), 2.5, True, "3"):
        with pytest.raises(InputError, match="n must be an integer >= 1"):
            positive_int("n", bad)


_TINY = trainer.TrainingSettings(dataset="digits", model="small_cnn", width=4, method="sharpbalance", seeds=(3, 5),
                                 rho=0.1, k=0.3, td=1, reselect_every=1, epochs=3, lr=0.05, batch_size=32,
                                 train_samples=96, score_chunk_size=32)


@pytest.mark.parametrize("call, name", [
    (lambda: zoo.build("small_cnn", 10, width=0), "width"),
    (lambda: zoo.build("mlp", 0), "num_classes"),
    (lambda: evaluation.evaluate_runs([], combine="probs", n_bins=0, batch_size=8), "n_bins"),
    (lambda: evaluation.evaluate_runs([], combine="probs", n_bins=15, batch_size=2.0), "batch_size"),
    (lambda: corruptions.make_corrupted_split(np.zeros((1, 32, 32, 3), np.uint8), [0], ["fog"], chunk_size=0),
     "chunk_size"),
    (lambda: corruptions.make_corrupted_split(np.zeros((1, 32, 32, 3), np.uint8), [0], ["fog"], seed=-1), "seed"),
    (lambda: dataclasses.replace(_TINY, epochs=2.0), "epochs"),
    (lambda: dataclasses.replace(_TINY, td=0), "td"),
    (lambda: QuadraticSetting(train_samples=2.0), "QuadraticSetting.train_samples"),
    (lambda: QuadraticSetting(ascent_steps=-1), "QuadraticSetting.ascent_steps"),
    (lambda: rank_correlations(pd.DataFrame({"m": [1, 2, 3], "e": [1, 3, 2]}), ["m"], ["e"], n_bootstrap=-1),
     "n_bootstrap"),
])
def test_every_integer_option_gets_the_same_one_line_refusal(call, name):
    with pytest.raises(InputError, match=rf"^{re.escape(name)}.* must be an integer >= [01], got "):
        call()


def test_numpy_integers_are_integers_everywhere():
    # the zoo refused them (isinstance int) while the trainer accepted them
    model = zoo.build("small_cnn", np.int64(3), width=np.int64(2))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


# The shared checks and their one home: a copy elsewhere is found by what it must contain.
HOMES = {
    "integer refusal": "landscape/checks.py",      # a message "... must be a positive integer" / "an integer >="
    "DataParallel prefix": "ensembles/models/checkpoints.py",  # the string "module."
    "severities": "ensembles/data/datasets.py",   # an assignment to SEVERITIES
    "eval mode by hand": "landscape/checks.py",    # a variable was_training (evaluation_mode keeps the flags)
}
_INTEGER_REFUSAL = re.compile(r"must be (a (positive|non-negative) integer|an integer >=)")


def copies_of_shared_checks(root: Path) -> list[str]:
    """Each place in cli.py, landscape/, ensembles/ and reports/ that spells out one of the shared
    checks anywhere but in its home (HOMES)."""
    sources = [root / "cli.py", *sorted(path for package in ("landscape", "ensembles", "reports")
                                        for path in (root / package).rglob("*.py"))]
    found = []
    for path in sources:
        where = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)  # they may quote a refusal
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            kind = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if _INTEGER_REFUSAL.search(node.value):
                    kind = "integer refusal"
                elif node.value == "module.":
                    kind = "DataParallel prefix"
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {sub.id for target in targets for sub in ast.walk(target) if isinstance(sub, ast.Name)}
                if "SEVERITIES" in names:
                    kind = "severities"
                elif "was_training" in names:
                    kind = "eval mode by hand"
            if kind and where != HOMES[kind]:
                line = f"{where}:{node.lineno}: a copy of the {kind} check (use {HOMES[kind]})"
                found.append((where, node.lineno, line))
    return [line for _, _, line in sorted(found)]


def test_no_copy_of_a_shared_check_remains_outside_its_home():
    found = copies_of_shared_checks(ROOT)
    assert not found, "\n".join(found)


def test_every_kind_of_copy_is_found(tmp_path):
    (tmp_path / "landscape").mkdir()
    (tmp_path / "landscape" / "checks.py").write_text('SEVERITIES = (1,)\nERROR = "n must be an integer >= 1"\n')
    (tmp_path / "ensembles").mkdir()
    (tmp_path / "ensembles" / "quoted.py").write_text('"""Refuses 0: n must be an integer >= 1, got 0."""\n')
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "copy.py").write_text(
        'def f(n, key, model):\n'
        '    if n < 1:\n'
        '        raise ValueError(f"n must be a positive integer, got {n}")\n'
        '    was_training = model.training\n'
        '    return key.startswith("module.")\n')
    (tmp_path / "cli.py").write_text("SEVERITIES: tuple = (1, 2)\n")
    assert copies_of_shared_checks(tmp_path) == [
        "cli.py:1: a copy of the severities check (use ensembles/data/datasets.py)",
        "landscape/checks.py:1: a copy of the severities check (use ensembles/data/datasets.py)",
        "reports/copy.py:3: a copy of the integer refusal check (use landscape/checks.py)",
        "reports/copy.py:4: a copy of the eval mode by hand check (use landscape/checks.py)",
        "reports/copy.py:5: a copy of the DataParallel prefix check (use ensembles/models/checkpoints.py)",
    ]
