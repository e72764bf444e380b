"""The hyper-parameter axes of a zoo trained to a criterion: ``epochs`` is then the cap, not how long a
model trained, so it is no axis of ψ (Jiang et al., ICLR 2020, stop every model at one training
cross-entropy); the stopping epoch is an outcome; a zoo mixing fixed-length runs with runs to a
criterion keeps ``epochs`` as an axis among the fixed-length ones only."""
import pandas as pd

from ensembles.runs import run_folder
from reports.collect import collect, run_table
from reports.correlation import correlation_axes, rank_correlations, zoo_points
from results_fixtures import make_run, slice_columns


def _run(path, *, lr, epochs, criterion, stop, accuracy, sharpness):
    settings = {"until_train_loss": 0.01} if criterion else {}
    path = make_run(path, method="sgd", seeds=(13,), lr=lr, epochs=epochs, keep="last", **settings)
    member = {"index": 0, "seed": 13, "status": "done", "kept": "last", "epoch": stop}
    if criterion:
        member.update(stop_epoch=stop, reached_criterion=stop < epochs)
    run_folder.update_config(path, members=[member])
    run_folder.append_results(path, [
        {"scope": "member-0", "metric": "accuracy", "value": accuracy, **slice_columns()},
        {"scope": "member-0", "metric": "sharpness/worst/l2/adaptive", "value": sharpness, "dataset": "cifar10",
         "split": "train", "rho": 0.5, "m": 128, "n_batches": 4, "seed": 13}])
    return path


def test_the_cap_of_runs_to_a_criterion_is_no_axis(tmp_path):
    """Six runs to train loss 0.01 over two learning rates, with caps that differ (as a sweep may give the
    slow settings a longer one) and vary apart from lr: only lr is an axis, and ψ is lr's alone."""
    caps = (100, 400, 400, 100, 100, 400)
    paths = [_run(tmp_path / f"run-{i}", lr=lr, epochs=cap, criterion=True, stop=20 + 7 * i, accuracy=0.95 - 0.01 * i,
                  sharpness=1.0 + i)
             for i, (lr, cap) in enumerate(zip((0.1, 0.1, 0.1, 0.02, 0.02, 0.02), caps))]
    runs = run_table(paths)
    assert runs["run.epochs"].nunique() == 2 and runs["run.stop_epoch"].nunique() == 6
    assert correlation_axes(runs) == ("lr",)
    zoo = zoo_points(collect(paths, runs), runs)
    assert zoo.axes == ("lr",) and "epochs" not in zoo.points
    table = rank_correlations(zoo.points, zoo.measures, ["test_error"], zoo.axes, n_bootstrap=0)
    assert [column for column in table.columns if column.startswith("psi/")] == ["psi/lr"]


def test_a_cap_twinned_with_a_setting_does_not_name_the_axis(tmp_path):
    """Caps that change with the learning rate (400 epochs at lr 0.02, 100 at 0.1) would be lr's twin,
    and, coming first in run.json, would have named the axis ``epochs``."""
    paths = [_run(tmp_path / f"run-{i}", lr=lr, epochs=400 if lr == 0.02 else 100, criterion=True, stop=30 + i,
                  accuracy=0.9, sharpness=1.0 + i)
             for i, lr in enumerate((0.1, 0.1, 0.1, 0.02, 0.02, 0.02))]
    assert correlation_axes(run_table(paths)) == ("lr",)


def test_fixed_length_runs_beside_runs_to_a_criterion_keep_their_epochs_axis(tmp_path):
    """Fixed-length runs of 4 and 12 epochs differ in how long they trained: ``epochs`` is an axis among
    them, while the runs to a criterion (caps 100 and 400) share one value of it, whatever their cap."""
    specs = [(4, False), (12, False), (4, False), (100, True), (400, True), (100, True)]
    paths = [_run(tmp_path / f"run-{i}", lr=0.1, epochs=epochs, criterion=criterion, stop=min(epochs, 30 + i),
                  accuracy=0.9 - 0.01 * i, sharpness=1.0 + i)
             for i, (epochs, criterion) in enumerate(specs)]
    runs = run_table(paths)
    axes = correlation_axes(runs)
    assert "epochs" in axes
    points = zoo_points(collect(paths, runs), runs).points.set_index("path")
    values = points.loc[[str(path) for path in paths], "epochs"].tolist()
    assert values[:3] == [4, 12, 4]
    assert len(set(map(str, values[3:]))) == 1 and str(values[3]) not in ("100", "400")
    assert pd.Series(values).astype(str).nunique() == 3
