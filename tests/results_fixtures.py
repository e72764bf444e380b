"""Run folders whose results tables hold made-up but documented numbers, for testing reports.

Rows follow docs/results-table.md. The members are never trained: run folders are created with
``run_folder.create_run`` and their members stay 'pending', which ``run_folder.append_results`` accepts (the
weights digest of a missing member file is stable, so the rows are current).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ensembles.runs import run_folder

CORRUPTIONS = ("fog", "contrast")
SEVERITIES = (1, 2, 3, 4, 5)
SHARPNESS_METRIC = "sharpness/worst/l2/adaptive"


def make_run(path, *, method="sam", rho=None, model_args=None, seeds=(13, 17, 27), **settings) -> Path:
    """An empty run folder (run.json only) of a 3-member mlp ensemble on cifar10."""
    extra = {} if rho is None else {"rho": rho}
    run_folder.create_run(path, dataset="cifar10", num_classes=10, model="mlp",
                    model_args=model_args or {"input_size": 4, "hidden": [2]},
                    method=method, seeds=list(seeds), **extra, **settings)
    return Path(path)


def append_as_before_grid_indices(path, rows, **options):
    """``append_results`` as it was before location columns: ``eigenvalue``, ``u`` and ``v`` are
    settings and part of the key, as in tables written then."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_folder, "LOCATION_COLUMNS", ())
        return run_folder.append_results(path, rows, **options)


def slice_columns(corruption=None, severity=None) -> dict:
    return {"dataset": "cifar10", "split": "test", "corruption": corruption, "severity": severity}


def evaluation_rows(member_accuracy, ensemble: dict, *, corruption=None, severity=None,
                    combine="probs", sub_ensembles: dict | None = None) -> list[dict]:
    """Rows ``sharpdiv evaluate`` writes for one slice: member accuracies, the ensemble's metrics
    (``ensemble`` maps metric -> value) and ``ensemble@<k>`` rows (``sub_ensembles`` maps k -> metrics)."""
    where = slice_columns(corruption, severity)
    rows = [{"scope": f"member-{i}", "metric": "accuracy", "value": value, **where}
            for i, value in enumerate(member_accuracy)]
    rows += [{"scope": "ensemble", "metric": metric, "value": value, "combine": combine, **where}
             for metric, value in ensemble.items()]
    for k, metrics in (sub_ensembles or {}).items():
        rows += [{"scope": f"ensemble@{k}", "metric": metric, "value": value, "combine": combine, **where}
                 for metric, value in metrics.items()]
    return rows


def sharpness_rows(member_values, *, rho=0.5, with_mean_row=True, metric=SHARPNESS_METRIC) -> list[dict]:
    """Per-member sharpness rows and (optionally) the ensemble-mean row, as `sharpdiv sharpness` writes."""
    settings = {"dataset": "cifar10", "split": "train", "rho": rho, "m": 5, "n_batches": 100, "seed": 13}
    rows = [{"scope": f"member-{i}", "metric": metric, "value": value, "stderr": 0.01, **settings}
            for i, value in enumerate(member_values)]
    if with_mean_row:
        rows.append({"scope": "ensemble", "metric": metric, "aggregate": "mean",
                     "value": sum(member_values) / len(member_values), **settings})
    return rows


def reliability_rows(confidence, accuracy, count, *, combine="probs", corruption=None, severity=None) -> list[dict]:
    where = {**slice_columns(corruption, severity), "n_bins": len(count), "combine": combine}
    rows = []
    for metric, values in (("reliability/confidence", confidence), ("reliability/accuracy", accuracy),
                           ("reliability/count", count)):
        rows += [{"scope": "ensemble", "metric": metric, "value": value, "bin": b, **where}
                 for b, value in enumerate(values)]
    return rows


def connectivity_rows(n_members=3, alphas=(0.0, 0.25, 0.5, 0.75, 1.0)) -> list[dict]:
    """Interpolation curves with a bump of height 0.1·(i + j + 1) in the middle, and their barriers."""
    rows = []
    for i in range(n_members):
        for j in range(i + 1, n_members):
            height = 0.1 * (i + j + 1)
            for alpha in alphas:
                bump = height * 4 * alpha * (1 - alpha)
                rows.append({"scope": f"pair-{i}-{j}", "metric": "connectivity/loss", "value": 0.5 + bump,
                             "alpha": alpha, "bn_mode": "none", "dataset": "cifar10", "split": "test"})
                rows.append({"scope": f"pair-{i}-{j}", "metric": "connectivity/accuracy", "value": 0.9 - bump,
                             "alpha": alpha, "bn_mode": "none", "dataset": "cifar10", "split": "test"})
            rows.append({"scope": f"pair-{i}-{j}", "metric": "connectivity/barrier", "value": height,
                         "bn_mode": "none", "alphas": len(alphas), "dataset": "cifar10", "split": "test"})
            rows.append({"scope": f"pair-{i}-{j}", "metric": "connectivity/barrier_alpha", "value": 0.5,
                         "bn_mode": "none", "alphas": len(alphas), "dataset": "cifar10", "split": "test"})
    return rows


def plane_rows(grid=4, indexed=True) -> list[dict]:
    """A loss plane's rows as the connectivity command writes them (keyed by grid index, ``u``, ``v``
    as location columns); ``indexed=False``: as it wrote them before grid indices (keyed by ``u``, ``v``)."""
    rows = []
    for a in range(grid):
        for b in range(grid):
            u, v = a / (grid - 1), b / (grid - 1)
            place = {"u": u, "v": v, **({"u_index": a, "v_index": b} if indexed else {})}
            rows.append({"scope": "ensemble", "metric": "plane/loss", "value": 0.3 + (u - 0.5) ** 2 + v ** 2,
                         **place, "grid": grid, "dataset": "cifar10", "split": "test"})
            rows.append({"scope": "ensemble", "metric": "plane/accuracy", "value": 0.9 - v / 10,
                         **place, "grid": grid, "dataset": "cifar10", "split": "test"})
    return rows


#: The study's power laws: on every run of a method, DER = scale · sharpness ** beta exactly.
STUDY_LAWS = {"sgd": (0.5, 0.3), "sam": (0.5, 0.6), "sharpbalance": (0.6, 0.45)}
#: Accuracy offsets of each method's members and ensembles.
STUDY_OFFSETS = {"sgd": (0.0, 0.0), "sam": (0.01, 0.015), "sharpbalance": (0.012, 0.03)}


def write_study(root) -> list[Path]:
    """Nine complete runs (methods sgd, sam, sharpbalance; three each) with every row a report reads.

    Run r (0, 1, 2) of method m has members' mean sharpness s = base_m · 2**r and, on every slice,
    DER = scale_m · s**beta_m (``STUDY_LAWS``); accuracy falls by 4 points per severity. The first
    SAM run also has connectivity and plane rows; the sgd runs store no ensemble-mean sharpness row
    (members only).
    """
    root = Path(root)
    bases = {"sgd": 1.0, "sam": 0.25, "sharpbalance": 0.3}
    paths = []
    for method, base in bases.items():
        scale, beta = STUDY_LAWS[method]
        member_offset, ensemble_offset = STUDY_OFFSETS[method]
        for r in range(3):
            path = make_run(root / f"{method}-{r}", method=method, rho=None if method == "sgd" else 0.05 * (r + 1),
                            model_args={"input_size": 4, "hidden": [2], "width": 16 * (r + 1)})
            s = base * 2 ** r
            der = scale * s ** beta
            rows = sharpness_rows([0.9 * s, s, 1.1 * s], with_mean_row=method != "sgd")
            for corruption, severity in [(None, None)] + [(c, v) for c in CORRUPTIONS for v in SEVERITIES]:
                drop = 0.0 if severity is None else 0.04 * severity + (0.01 if corruption == "fog" else 0.0)
                member = [0.90 - drop - 0.01 * i + member_offset for i in range(3)]
                ensemble_accuracy = 0.92 - drop + 0.01 * r + ensemble_offset
                mean_error = 1 - sum(member) / 3
                ensemble = {"accuracy": ensemble_accuracy, "der": der, "variance/logits": 2 * der, "kl": der / 2,
                            "eir": (mean_error - (1 - ensemble_accuracy)) / mean_error, "ece": 0.02 + drop / 10,
                            "nll": 0.3 + drop, "mean_member_error": mean_error}
                sub = {2: {"accuracy": ensemble_accuracy - 0.005, "eir": ensemble["eir"] / 2}}
                rows += evaluation_rows(member, ensemble, corruption=corruption, severity=severity,
                                        sub_ensembles=sub)
            rows += reliability_rows([0.1, 0.3, 0.5, 0.7, 0.9], [0.2, 0.25, 0.5, 0.75, 0.85], [10, 20, 30, 40, 100])
            rows += reliability_rows([0.1, 0.3, 0.5, 0.7, 0.9], [0.1, 0.2, 0.3, 0.5, 0.6], [30, 30, 20, 10, 10],
                                     corruption="fog", severity=3)
            if method == "sam" and r == 0:
                rows += connectivity_rows() + plane_rows()
            run_folder.append_results(path, rows)
            paths.append(path)
    return paths


def measured_run(path, *, dataset="cifar10", num_classes=10, method="sam", accuracy=0.8):
    """A run folder with evaluation rows only: members at ``accuracy``, the ensemble 0.05 above."""
    run_folder.create_run(path, dataset=dataset, num_classes=num_classes, model="mlp",
                          model_args={"input_size": 4, "hidden": [2]}, method=method, seeds=[13, 17, 27])
    run_folder.append_results(path, evaluation_rows([accuracy] * 3, {"accuracy": accuracy + 0.05}))
    return Path(path)


def write_two_methods(root):
    """Three runs, sgd and sam at two radii, with evaluation rows."""
    paths = []
    for method, rho in (("sgd", None), ("sam", 0.05), ("sam", 0.1)):
        path = make_run(root / f"{method}-{rho}", method=method, rho=rho)
        run_folder.append_results(path, evaluation_rows([0.8, 0.82, 0.81], {"accuracy": 0.85, "der": 0.3}))
        paths.append(path)
    return paths


def density_row(index, eigenvalue, value=0.5):
    """A row of a Hessian spectral density at grid point ``index``, placed at ``eigenvalue``."""
    return {"scope": "member-0", "metric": "hessian/density", "value": value, "grid_index": index,
            "eigenvalue": eigenvalue, "grid": 5, "n_iters": 4, "dataset": "digits", "split": "train",
            "data": "0123456789abcdef"}


def clean_and_corrupted(path, *, members, ensemble, eir, der, corrupted, combine="probs"):
    """Clean test rows plus corrupted rows; ``corrupted`` maps (corruption, severity) to
    (member accuracies, ensemble accuracy)."""
    rows = evaluation_rows(members, {"accuracy": ensemble, "eir": eir, "der": der}, combine=combine)
    for (corruption, severity), (member_values, ensemble_value) in corrupted.items():
        rows += evaluation_rows(member_values, {"accuracy": ensemble_value, "der": der},
                                         corruption=corruption, severity=severity, combine=combine)
    run_folder.append_results(path, rows)


def bad_results_parts(run):
    """A corrupt and a foreign parquet part written into ``run``'s results table."""
    results = run / run_folder.RESULTS_DIR
    corrupt = results / "part-00000000T000000000000-corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    foreign = results / "part-00000000T000000000001-foreign.parquet"
    pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}).to_parquet(foreign)
    return corrupt, foreign
