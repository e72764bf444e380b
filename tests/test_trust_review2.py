"""Regression tests: merged report views, any model by name, and the sharpness ascents."""
from __future__ import annotations

import math
import warnings

import pytest

import results_fixtures as fixtures
from ensembles.runs import run_folder
from reports.collect import collect, run_table
from reports.tables import corruption_table


def test_corruption_means_over_severities_never_cover_a_subset_of_them(tmp_path):
    """A run that evaluated fog at severity 1 only has no mean over fog's severities 1-3: its
    severity-1 value alone would pass for one (and lift the group's mean) without a word."""
    full, partial = fixtures.make_run(tmp_path / "full", method="sgd"), fixtures.make_run(tmp_path / "partial", method="sgd")
    for severity in (1, 2, 3):
        accuracy = 0.9 - 0.1 * severity
        run_folder.append_results(full, fixtures.evaluation_rows([accuracy] * 3, {"accuracy": accuracy},
                                                                 corruption="fog", severity=severity))
    run_folder.append_results(partial, fixtures.evaluation_rows([0.8] * 3, {"accuracy": 0.8},
                                                                corruption="fog", severity=1))
    runs = run_table([full, partial])
    numbers, text, _ = corruption_table(collect([full, partial], runs), runs, group_by="method")
    fog = numbers.set_index(["corruption", "severity"]).loc["fog"]
    assert fog.loc["1", "count"] == 2 and fog.loc["1", "mean"] == pytest.approx(80.0)
    assert fog.loc["mean", "count"] == 1 and fog.loc["mean", "mean"] == pytest.approx(70.0)
    assert text.reset_index().set_index("corruption").loc["fog", "mean"].endswith("[n=1]")
    assert math.isnan(fog.loc["mean", "std"])


def test_a_sweep_never_reuses_a_folder_trained_with_another_input_stage(tmp_path):
    """A sweep that asks for small_cnn as the zoo has it (the data pipeline normalises) must not
    count a folder whose members normalise [0, 1] inputs themselves (--mean/--std) as its own:
    the keys the sweep left out are not 'anything goes', they resolve to the library's default."""
    from click.testing import CliRunner

    import cli
    from ensembles.studies import sweep
    from ensembles.training.trainer import TrainingSettings
    from landscape.errors import InputError

    run = tmp_path / "run"
    result = CliRunner().invoke(cli.main, [str(a) for a in (
        "train", "--data", "digits", "--model", "small_cnn", "--width", 4, "--mean", "0.5,0.5,0.5",
        "--std", "0.25,0.25,0.25", "--out", run, "--epochs", 1, "--seeds", 1, "--train-samples", 16,
        "--batch-size", 8, "--device", "cpu")])
    assert result.exit_code == 0, result.output
    asked = dict(dataset="digits", model="small_cnn", width=4, method="sgd", seeds=(1,), epochs=1,
                 train_samples=16, batch_size=8)
    same = TrainingSettings(**asked, model_input={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert sweep._training_state(run, same) == "done"
    with pytest.raises(InputError, match="model_input"):
        sweep._training_state(run, TrainingSettings(**asked))


def test_reports_read_an_asam_run_from_before_asam_scale_as_scaling_every_parameter(tmp_path):
    """An ASAM run recorded before the setting existed scaled all parameters: grouped by
    asam_scale it belongs with "all", never in an "(unset)" group beside the official rule's runs."""
    old = fixtures.make_run(tmp_path / "old", method="asam", rho=0.5)
    new = fixtures.make_run(tmp_path / "new", method="asam", rho=0.5, asam_scale="weights")
    sgd = fixtures.make_run(tmp_path / "sgd", method="sgd")
    scales = run_table([old, new, sgd]).set_index("run_label")["run.asam_scale"]
    assert scales["old"] == "all" and scales["new"] == "weights"
    assert scales.isna()["sgd"] or scales["sgd"] in ("", "None")


def test_a_library_model_is_rebuilt_with_a_warning_when_its_library_version_changed(tmp_path):
    """The builder's defaults are part of the module and run.json's model_args hold only what was
    given: a later command rebuilding torchvision:resnet18 under another torchvision says so."""
    from importlib.metadata import version

    path = tmp_path / "run"
    run_folder.create_run(path, dataset="digits", num_classes=10, model="torchvision:resnet18", seeds=[1])
    config = run_folder.read_config(path)
    assert config["versions"]["torchvision"] == version("torchvision")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_folder.build_member_model(config)  # same version: silent
    config["versions"]["torchvision"] = "0.0.1"
    with pytest.warns(UserWarning, match="torchvision 0.0.1"):
        run_folder.build_member_model(config)
    zoo_config = {**config, "model": "mlp", "model_args": {"input_size": 4, "hidden": [2]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_folder.build_member_model(zoo_config)  # the zoo's models are sharpdiv's own


def test_a_runs_sharpness_is_one_measurements_never_a_mean_over_the_splits_it_was_measured_on(tmp_path):
    """Sharpness measured on the training split and, later, on the test split are two numbers of
    two data sets: the report reads the newest, never their mean, and says when the runs of one
    group were measured on different splits."""
    from reports.collect import SharpnessSpec, mixed_settings, sharpness_per_run

    spec = SharpnessSpec.parse(fixtures.SHARPNESS_METRIC + "@0.5")
    both, test_only = fixtures.make_run(tmp_path / "both", method="sgd"), fixtures.make_run(tmp_path / "test", method="sgd")
    run_folder.append_results(both, fixtures.sharpness_rows([1.0, 1.0, 1.0]))
    on_test = [{**row, "split": "test"} for row in fixtures.sharpness_rows([3.0, 3.0, 3.0])]
    run_folder.append_results(both, on_test)
    run_folder.append_results(test_only, fixtures.sharpness_rows([2.0, 2.0, 2.0]))
    runs = run_table([both, test_only])
    results = collect([both, test_only], runs)
    values = sharpness_per_run(results, spec)
    assert values[str(both)] == pytest.approx(3.0) and values[str(test_only)] == pytest.approx(2.0)
    notes = mixed_settings(results, runs.set_index("path")["run.method"], spec)
    assert len(notes) == 1 and "split" in notes[0] and "train vs test" in notes[0].replace("test vs train", "train vs test")


def test_a_run_evaluated_on_fewer_corruptions_than_the_others_gets_a_note(tmp_path):
    """Its OOD mean is over a subset of the slices the others average, so it is another quantity:
    the report says so instead of comparing the two silently."""
    from reports.collect import partial_corruptions

    full, partial = fixtures.make_run(tmp_path / "full", method="sgd"), fixtures.make_run(tmp_path / "partial", method="sam")
    for corruption in ("fog", "contrast"):
        run_folder.append_results(full, fixtures.evaluation_rows([0.5] * 3, {"accuracy": 0.5},
                                                                 corruption=corruption, severity=1))
    run_folder.append_results(partial, fixtures.evaluation_rows([0.5] * 3, {"accuracy": 0.5},
                                                                corruption="fog", severity=1))
    runs = run_table([full, partial])
    notes = partial_corruptions(collect([full, partial], runs), runs)
    assert len(notes) == 1 and "partial" in notes[0] and "1 of the 2" in notes[0]
    runs = run_table([full])
    assert partial_corruptions(collect([full], runs), runs) == []


def test_runs_measured_alike_get_no_budget_note_although_they_hold_member_and_mean_rows(tmp_path):
    """The ensemble-mean row (aggregate=mean) beside the member rows is one measurement, not two
    budgets: a group whose runs used the same settings gets no 'different settings' note."""
    from reports.collect import SharpnessSpec, mixed_settings

    spec = SharpnessSpec.parse(fixtures.SHARPNESS_METRIC + "@0.5")
    paths = [fixtures.make_run(tmp_path / f"sam-{i}", method="sam") for i in range(2)]
    for path in paths:
        run_folder.append_results(path, fixtures.sharpness_rows([1.0, 2.0, 3.0], with_mean_row=True))
    runs = run_table(paths)
    assert mixed_settings(collect(paths, runs), runs.set_index("path")["run.method"], spec) == []
