"""Reports of runs trained to a criterion: every collected row carries the run's criterion settings
and, for its own scope, ``run.stop_epoch`` and ``run.reached_criterion``; the report states how many
models reached the criterion (a note, and in the correlation section), and the correlation figure
marks those that did not. Run folders without a criterion read exactly as before."""
import html
import json
from pathlib import Path

import pandas as pd
import pytest

from ensembles.runs import run_folder
from reports.collect import collect, criterion_counts, run_table
from reports.correlation import _missed_criterion, zoo_points
from reports.site import write_report
from results_fixtures import make_run, slice_columns

CRITERION = {"until_train_loss": 0.01, "until_train_accuracy": None, "epochs": 100, "keep": "last"}


def _stopped(path: Path, stops) -> None:
    """Record in run.json that the members stopped at ``stops`` = [(epoch, reached), ...], as the trainer does."""
    members = [{"index": i, "seed": 13 + i, "status": "done", "kept": "last", "epoch": epoch, "stop_epoch": epoch,
                "reached_criterion": reached} for i, (epoch, reached) in enumerate(stops)]
    run_folder.update_config(path, members=members)


def _rows(n_members: int, accuracy: float, sharpness: float) -> list[dict]:
    rows = []
    for member in range(n_members):
        rows += [{"scope": f"member-{member}", "metric": "accuracy", "value": accuracy - 0.01 * member,
                  **slice_columns()},
                 {"scope": f"member-{member}", "metric": "sharpness/worst/l2/adaptive", "value": sharpness + member,
                  "dataset": "cifar10", "split": "train", "rho": 0.5, "m": 128, "n_batches": 4, "seed": 13}]
    rows.append({"scope": "ensemble", "metric": "accuracy", "value": accuracy, "combine": "probs", **slice_columns()})
    return rows


def _criterion_run(path, stops, accuracy=0.9, sharpness=1.0, lr=0.1) -> Path:
    path = make_run(path, method="sgd", seeds=tuple(range(13, 13 + len(stops))), lr=lr, **CRITERION)
    _stopped(path, stops)
    run_folder.append_results(path, _rows(len(stops), accuracy, sharpness))
    return path


def _old_run(path, accuracy=0.8, lr=0.1) -> Path:
    """A run.json from before the criterion: no until_* fields, members without stop_epoch."""
    path = make_run(path, method="sgd", seeds=(13, 17), lr=lr, epochs=100)
    config = run_folder.read_config(path)
    run_folder.update_config(path, members=[{**m, "status": "done", "epoch": 100} for m in config["members"]])
    assert "until_train_loss" not in run_folder.read_config(path)
    run_folder.append_results(path, _rows(2, accuracy, 2.0))
    return path


def test_each_row_carries_the_criterion_and_its_scopes_stop_epoch(tmp_path):
    run = _criterion_run(tmp_path / "run", [(12, True), (100, False)])
    rows = collect([run])
    assert (rows["run.until_train_loss"] == 0.01).all() and rows["run.until_train_accuracy"].isna().all()
    by_scope = rows.groupby("scope")[["run.stop_epoch", "run.reached_criterion"]].first()
    assert by_scope.loc["member-0"].tolist() == [12, True]
    assert by_scope.loc["member-1"].tolist() == [100, False]
    assert by_scope.loc["ensemble"].tolist() == [100, False]  # the largest stop epoch; not every member reached it
    runs = run_table([run])
    assert runs.loc[0, ["run.n_reached", "run.n_stopped", "run.stop_epoch"]].tolist() == [1, 2, 100]
    assert criterion_counts(runs) == ["1 of 2 models reached train loss <= 0.01 within 100 epochs (the others stopped "
                                      "at the cap; marked in the runs table by run.n_reached and in the correlation "
                                      "figure by hollow markers)"]


def test_an_old_run_folder_reads_as_before_alone_and_beside_a_criterion_run(tmp_path):
    old = _old_run(tmp_path / "old")
    alone = collect([old])
    assert not {"run.stop_epoch", "run.reached_criterion", "run.n_reached", "run.n_stopped",
                "run.until_train_loss"} & set(alone.columns)
    assert sorted(alone["value"]) == sorted(row["value"] for row in _rows(2, 0.8, 2.0))
    assert criterion_counts(run_table([old])) == []
    new = _criterion_run(tmp_path / "new", [(12, True), (30, True)])
    both = collect([old, new])
    of_old = both[both["path"] == str(old)]
    assert of_old["run.stop_epoch"].isna().all() and of_old["run.reached_criterion"].isna().all()
    assert len(of_old) == len(alone)
    assert criterion_counts(run_table([old, new])) == ["2 of 2 models reached train loss <= 0.01 within 100 epochs"]


def test_counts_are_per_criterion_and_cap(tmp_path):
    first = _criterion_run(tmp_path / "a", [(12, True), (100, False)])
    second = make_run(tmp_path / "b", method="sgd", seeds=(13,), **{**CRITERION, "until_train_accuracy": 1.0,
                                                                   "epochs": 50})
    _stopped(second, [(50, False)])
    assert criterion_counts(run_table([first, second])) == [
        "1 of 2 models reached train loss <= 0.01 within 100 epochs (the others stopped at the cap; marked in the "
        "runs table by run.n_reached and in the correlation figure by hollow markers)",
        "0 of 1 models reached train loss <= 0.01 and train accuracy >= 1 within 50 epochs (the others stopped at "
        "the cap; marked in the runs table by run.n_reached and in the correlation figure by hollow markers)"]


def test_the_report_states_how_many_models_reached_the_criterion_and_marks_the_others(tmp_path):
    reached = [True, True, False, True, False, True]
    paths = [_criterion_run(tmp_path / "runs" / f"run-{i}", [(10 + i if ok else 100, ok)], accuracy=0.9 - 0.02 * i,
                            sharpness=1.0 + i, lr=lr)
             for i, (ok, lr) in enumerate(zip(reached, (0.1, 0.05, 0.02, 0.1, 0.05, 0.02)))]
    line = ("4 of 6 models reached train loss <= 0.01 within 100 epochs (the others stopped at the cap; marked in "
            "the runs table by run.n_reached and in the correlation figure by hollow markers)")
    # six models are too few for the section to appear unasked (reports.correlation.MIN_RANKED): asked here
    report = write_report(paths, tmp_path / "report", formats=("png",), correlate_with="test_error")
    assert line in report.notes
    readme = report.readme.read_text()
    assert "**Does sharpness predict generalization?**" in readme  # the report's question, its first section:
    section = readme[readme.index("## Rank correlations of each measure with each target"):]
    section = section[:section.index("\n## ", 1)]
    assert "strongest rank correlation" in section and line + "." in section
    assert html.escape(line) in (tmp_path / "report" / "index.html").read_text()
    runs = run_table(paths)
    points = zoo_points(collect(paths, runs), runs).points.set_index("path")
    assert points["reached_criterion"].tolist() == reached
    assert _missed_criterion(points.reset_index()).tolist() == [not ok for ok in reached]
    table = pd.read_csv(tmp_path / "report" / "tables" / "runs.csv")
    assert table["run.n_reached"].tolist() == [int(ok) for ok in reached]
    assert "stop_epoch" not in json.dumps(list(zoo_points(collect(paths, runs), runs).axes))  # an outcome, not an axis


def test_points_of_runs_without_a_criterion_miss_nothing():
    points = pd.DataFrame({"reached_criterion": [None, True, False, float("nan")]})
    assert _missed_criterion(points).tolist() == [False, False, True, False]
    assert _missed_criterion(pd.DataFrame({"x": [1.0]})).tolist() == [False]
