"""Sweeps and reports: sweep files cannot write outside --out, reports never replace a user's
files, never pool runs on different data, and one bad results part neither breaks a run nor goes
unnamed."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import cli
import results_fixtures as fixtures
from ensembles.runs import run_folder
from ensembles.studies import sweep
from ensembles.runs.files import MARKER_FILE as MARKER, mark_folder, require_writable_folder
from ensembles.training.trainer import TrainingSettings
from landscape.errors import InputError
from reports.collect import collect, comparable_grouping, run_table
from reports.site import write_report
from reports.tables import severity_table

# A sweep small enough to train in a second, should anything reach training.
TINY_BASE = """
[base]
dataset = "digits"
model = "small_cnn"
width = 4
seeds = [13]
epochs = 1
batch_size = 64
train_samples = 64
"""


def _one_line_error(result):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ----------------------------------------------------------------------------------------------
# 7. a sweep file cannot write outside --out; 11. string values in sweep axes


@pytest.mark.parametrize("axis, value", [
    ("prune_epoch", '"../../../ESCAPED"'), ("width", '"../x"'), ("epochs", '"2"'), ("rho", '"0.1"'),
    ("lr", '"fast"'), ("batch_size", "true"), ("rho", "inf"), ("rho", "-0.1"), ("weight_decay", "nan"),
    ("method", '"../sgd"'), ("model", '"../../resnet18"'), ("schedule", '"linear"'), ("keep", '"weird"'),
    ("sparsity", "1.5"), ("train_samples", "0"), ("prune_epoch", "-1"), ("reference_compatible", '"yes"'),
    ("seeds", '["13"]'), ("seeds", "[-1]"), ("seeds", "[9223372036854775808]"),
])
def test_plan_refuses_each_value_of_the_wrong_type_naming_axis_and_value(axis, value):
    base = '[base]\ndataset = "digits"\n' + ('model = "small_cnn"\n' if axis != "model" else 'epochs = 2\n')
    text = base + f"[grid]\n{axis} = [{value}]\n"
    with pytest.raises(InputError) as caught:
        sweep.parse_sweep(text, source="bad.toml")
    message = str(caught.value)
    shown = value.replace('"', "'")  # strings are quoted, so "2" is told apart from 2
    assert message.startswith(f"bad.toml: [grid] {axis} (line 5): {shown} is not a valid {axis}; it must be ")
    assert "\n" not in message


def test_base_settings_are_checked_like_axes():
    with pytest.raises(InputError, match=r"\[base\] width \(line 4\): '\.\./x' is not a valid width"):
        sweep.parse_sweep('[base]\ndataset = "digits"\nmodel = "small_cnn"\nwidth = "../x"\n', source="bad.toml")


def test_sweep_plan_and_run_refuse_a_path_in_an_axis_and_write_nothing(tmp_path):
    file = tmp_path / "escape.toml"
    file.write_text(TINY_BASE + '[grid]\nprune_epoch = ["../../../ESCAPED", 0]\n')
    out = tmp_path / "a" / "b" / "out"
    planned = CliRunner().invoke(cli.main, ["sweep", "plan", str(file)])
    line = _one_line_error(planned)
    assert "prune_epoch" in line and "'../../../ESCAPED'" in line and "integer >= 0" in line
    ran = CliRunner().invoke(cli.main, ["sweep", "run", str(file), "--out", str(out), "--device", "cpu"])
    assert _one_line_error(ran) == line  # plan refuses exactly what run refuses
    assert not list(tmp_path.rglob("*ESCAPED*")) and not (tmp_path / "a").exists()


def _tiny_job(name):
    settings = TrainingSettings(dataset="digits", model="small_cnn", width=4, seeds=(13,), epochs=1, batch_size=64,
                                train_samples=64)
    return sweep.Job(name=name, settings=settings)


def test_a_job_whose_folder_resolves_outside_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    for name in ("../escaped", "linked", "..", "a/b"):
        with pytest.raises(InputError, match="would lie outside the sweep root"):
            sweep.run_job(_tiny_job(name), root)
    plan = sweep.Sweep(name="s", base={}, grid={}, jobs=(_tiny_job("../escaped"),), measurements=(), report={})
    with pytest.raises(InputError, match="would lie outside the sweep root"):
        sweep.run_sweep(plan, root / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "root"]
    assert not any(outside.iterdir()) and [p.name for p in root.iterdir()] == ["linked"]


def test_folder_names_are_built_from_validated_values_only():
    text = TINY_BASE.replace('dataset = "digits"\n', "") + \
        '[grid]\ndataset = ["digits", "folder:../../x y"]\nlr = [0.1, 1e-05]\n'
    names = [job.name for job in sweep.parse_sweep(text).jobs]
    assert names == ["sgd-digits-lr0.1-s13", "sgd-digits-lr1e-05-s13", "sgd-folder_x_y-lr0.1-s13",
                     "sgd-folder_x_y-lr1e-05-s13"]
    for name in names:
        assert "/" not in name and ".." not in name


# ----------------------------------------------------------------------------------------------
# 8. report --out never replaces a user's files


def _measured_run(path, *, dataset="cifar10", num_classes=10, method="sam", accuracy=0.8):
    run_folder.create_run(path, dataset=dataset, num_classes=num_classes, model="mlp",
                    model_args={"input_size": 4, "hidden": [2]}, method=method, seeds=[13, 17, 27])
    run_folder.append_results(path, fixtures.evaluation_rows([accuracy] * 3, {"accuracy": accuracy + 0.05}))
    return Path(path)


def test_report_refuses_a_folder_holding_a_users_files_unless_forced(tmp_path):
    run = _measured_run(tmp_path / "run")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my thesis notes\n")
    (out / "index.html").write_text("<p>my homepage</p>\n")
    refused = CliRunner().invoke(cli.main, ["report", str(run), "--out", str(out)])
    line = _one_line_error(refused)
    assert str(out) in line and "--force" in line and "README.md" in line
    assert (out / "README.md").read_text() == "my thesis notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "index.html"]  # nothing written
    forced = CliRunner().invoke(cli.main, ["report", str(run), "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / "README.md").read_text().startswith("# sharpdiv report") and (out / MARKER).is_file()
    again = CliRunner().invoke(cli.main, ["report", str(run), "--out", str(out)])  # now sharpdiv's own folder
    assert again.exit_code == 0, again.output


def test_report_writes_into_new_empty_and_earlier_report_folders(tmp_path):
    run = _measured_run(tmp_path / "run")
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new", empty):
        write_report([run], out, formats=("png",))
        assert (out / MARKER).is_file() and (out / "index.html").is_file()
    (empty / MARKER).unlink()  # a report written before folders were marked is still sharpdiv's
    write_report([run], empty, formats=("png",))


def test_sweep_run_refuses_a_users_report_folder_before_training(tmp_path):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY_BASE + '[grid]\nmethod = ["sgd"]\n')
    out = tmp_path / "root"
    (out / "report").mkdir(parents=True)
    (out / "report" / "README.md").write_text("mine\n")
    result = CliRunner().invoke(cli.main, ["sweep", "run", str(file), "--out", str(out), "--device", "cpu"])
    line = _one_line_error(result)
    assert str(out / "report") in line and "--force" in line
    assert sorted(p.name for p in out.rglob("*")) == ["README.md", "report"]  # nothing trained


def test_require_own_folder_and_its_marker(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"train --out .*user already holds files not made by sharpdiv \(notes\.txt\)"):
        require_writable_folder(user, False, "train --out")
    assert require_writable_folder(user, True, "train --out") == user
    mark_folder(user, "test")
    assert require_writable_folder(user, False, "train --out") == user
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        require_writable_folder(tmp_path / "file", True, "report --out")


# ----------------------------------------------------------------------------------------------
# 10. runs on different data are never pooled


def test_report_splits_groups_that_mix_datasets(tmp_path):
    paths = [_measured_run(tmp_path / "c10-a", accuracy=0.9), _measured_run(tmp_path / "c10-b", accuracy=0.8),
             _measured_run(tmp_path / "c100", dataset="cifar100", num_classes=100, accuracy=0.4)]
    out = tmp_path / "report"
    result = CliRunner().invoke(cli.main, ["report", *map(str, paths), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "the runs span 2 datasets (cifar10, cifar100): each method group is split by dataset" in result.stderr
    summary = pd.read_csv(out / "tables" / "summary.csv")
    column = summary.columns[0]
    assert column == "method, dataset"
    member = summary[summary["quantity"] == "member accuracy ID (%)"].set_index(column)["mean"]
    # By hand: cifar10 runs 90 % and 80 % -> 85 %; cifar100 alone 40 %; never (90 + 80 + 40) / 3.
    assert member.to_dict() == pytest.approx({"sam (cifar10)": 85.0, "sam (cifar100)": 40.0})


def test_severity_differences_compare_only_groups_on_the_baselines_data(tmp_path):
    paths = [_measured_run(tmp_path / "sgd", method="sgd", accuracy=0.8), _measured_run(tmp_path / "sam", accuracy=0.9),
             _measured_run(tmp_path / "c100", dataset="cifar100", num_classes=100, accuracy=0.4)]
    table, group_by, _ = comparable_grouping(run_table(paths), "method")
    severity = severity_table(collect(paths, table), table, group_by=group_by)
    assert severity.baseline == "sgd (cifar10)"  # sgd is still the default baseline
    assert severity.title.endswith("(for groups on the same data only)")
    difference = severity.difference["ID"]
    # By hand: ensemble accuracy is member accuracy + 5 points: sam 95 − sgd 85 = +10 on cifar10;
    # cifar100's 45 % is not compared with cifar10's 85 %.
    assert difference["sam (cifar10)"] == pytest.approx(10.0)
    assert pd.isna(difference["sam (cifar100)"])


def test_one_dataset_keeps_plain_groups_and_class_counts_split_a_dataset(tmp_path):
    paths = [_measured_run(tmp_path / "a"), _measured_run(tmp_path / "b", method="sgd")]
    report = write_report(paths, tmp_path / "plain", formats=("png",))
    assert not any("span" in note for note in report.notes)
    assert pd.read_csv(tmp_path / "plain" / "tables" / "summary.csv").columns[0] == "method"
    odd = _measured_run(tmp_path / "c", num_classes=5, accuracy=0.3)  # same dataset name, other classes
    report = write_report([*paths, odd], tmp_path / "split", formats=("png",))
    assert any("2 class counts (10, 5)" in note for note in report.notes)
    groups = set(pd.read_csv(tmp_path / "split" / "tables" / "summary.csv")["method, num_classes"])
    assert groups == {"sam (10 classes)", "sgd (10 classes)", "sam (5 classes)"}


# ----------------------------------------------------------------------------------------------
# 11. a bad results part is named and skipped; report on a non-run path


def _bad_parts(run):
    results = run / run_folder.RESULTS_DIR
    corrupt = results / "part-00000000T000000000000-corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    foreign = results / "part-00000000T000000000001-foreign.parquet"
    pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}).to_parquet(foreign)
    return corrupt, foreign


def test_a_corrupt_or_foreign_results_part_is_named_once_and_the_others_read(tmp_path, capsys):
    run = _measured_run(tmp_path / "run")
    good = run_folder.read_results(run)
    corrupt, foreign = _bad_parts(run)
    table = run_folder.read_results(run)
    pd.testing.assert_frame_equal(table, good)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert str(corrupt) in lines[0] and "not a readable parquet file" in lines[0] and "delete it" in lines[0]
    assert str(foreign) in lines[1] and "lacks the columns scope, metric, value" in lines[1]
    run_folder.read_results(run)
    assert capsys.readouterr().err == ""  # named once per file, not at every read


def test_report_with_a_bad_part_warns_and_reports_the_rest(tmp_path):
    run = _measured_run(tmp_path / "run")
    corrupt, foreign = _bad_parts(run)
    result = CliRunner().invoke(cli.main, ["report", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert str(corrupt.name) in result.stderr and "Traceback" not in result.output
    summary = pd.read_csv(tmp_path / "out" / "tables" / "summary.csv")
    assert summary.set_index("quantity").loc["member accuracy ID (%)", "mean"] == pytest.approx(80.0)


@pytest.mark.parametrize("make", ["missing", "plain folder", "file"])
def test_report_on_a_path_that_is_not_a_run_folder_is_one_line(tmp_path, make):
    path = tmp_path / "thing"
    if make == "plain folder":
        path.mkdir()
    elif make == "file":
        path.write_text("x")
    result = CliRunner().invoke(cli.main, ["report", str(path), "--out", str(tmp_path / "out")])
    assert str(path) in _one_line_error(result)
    assert not (tmp_path / "out").exists()
