"""The training criteria are sweep settings like any other (derived from their declaration): swept
in [grid] or fixed in [base], spelled ul<X>/ua<A> in folder names, shown by `sweep plan`, dropped from
SharpBalance's jobs (which train in lockstep), checked against their rule, and a finished run folder
is kept only for the criterion it was trained with."""
import pytest
from click.testing import CliRunner

from ensembles.studies import sweep
from landscape.errors import InputError

CRITERIA = """
[base]
dataset = "digits"
model = "small_cnn"
epochs = 50
schedule = "constant"
[grid]
method = ["sgd", "sharpbalance"]
until_train_loss = [0.01, 0.1]
until_train_accuracy = [1.0]
"""


def test_criteria_are_axes_spelled_in_folder_names_and_dropped_for_sharpbalance():
    assert {"until_train_loss", "until_train_accuracy"} <= set(sweep.AXES)
    plan = sweep.parse_sweep(CRITERIA, source="c.toml")
    assert [job.name for job in plan.jobs] == ["sgd-ul0.01-ua1-s13.17.27", "sgd-ul0.1-ua1-s13.17.27",
                                               "sharpbalance-s13.17.27"]
    assert [(job.settings.until_train_loss, job.settings.until_train_accuracy, job.settings.keep)
            for job in plan.jobs] == [(0.01, 1.0, "last"), (0.1, 1.0, "last"), (None, None, "best")]
    table = sweep.plan_table(plan)
    assert table["until_train_loss"].tolist() == ["0.01", "0.1", "-"]
    assert table["until_train_accuracy"].tolist() == ["1", "1", "-"]


def test_sweep_plan_shows_the_criteria(tmp_path):
    import cli

    file = tmp_path / "criteria.toml"
    file.write_text(CRITERIA)
    result = CliRunner().invoke(cli.main, ["sweep", "plan", str(file)])
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header == ["run", "method", "until_train_loss", "until_train_accuracy", "members", "epochs"]
    assert "sgd-ul0.01-ua1-s13.17.27" in result.stdout


def test_a_criterion_in_base_is_not_in_folder_names_and_keep_best_with_it_is_refused():
    text = CRITERIA.replace('schedule = "constant"', 'schedule = "constant"\nuntil_train_loss = 0.05').replace(
        "until_train_loss = [0.01, 0.1]\n", "").replace('method = ["sgd", "sharpbalance"]', 'method = ["sgd", "sam"]')
    plan = sweep.parse_sweep(text, source="c.toml")
    assert [job.name for job in plan.jobs] == ["sgd-ua1-s13.17.27", "sam-ua1-s13.17.27"]
    assert {job.settings.until_train_loss for job in plan.jobs} == {0.05}
    with pytest.raises(InputError, match=r"^c\.toml: grid point method=sgd, until_train_accuracy=1: keep best is "
                                         r"refused with a criterion \(train loss <= 0\.05 and train accuracy >= 1\)"):
        sweep.parse_sweep(text.replace('schedule = "constant"', 'schedule = "constant"\nkeep = "best"'),
                          source="c.toml")


def test_a_criterion_outside_its_range_is_refused_naming_the_line():
    with pytest.raises(InputError, match=r"^c\.toml: \[grid\] until_train_accuracy \(line 10\): 1\.5 is not a valid "
                                         r"until_train_accuracy; it must be a fraction in \(0, 1\]$"):
        sweep.parse_sweep(CRITERIA.replace("until_train_accuracy = [1.0]", "until_train_accuracy = [1.5]"),
                          source="c.toml")


def test_a_run_folder_trained_to_another_criterion_is_not_kept(tmp_path):
    from ensembles.runs.run_folder import create_run

    plan = sweep.parse_sweep(CRITERIA, source="c.toml")
    job = plan.jobs[0]
    other = sweep.parse_sweep(CRITERIA.replace("[0.01, 0.1]", "[0.02]"), source="c.toml").jobs[0].settings
    create_run(tmp_path / job.name, dataset="digits", num_classes=10, model="small_cnn", method="sgd",
               seeds=other.seeds, keep=other.keep, **other.run_fields())
    with pytest.raises(InputError, match=r"holds another ensemble than the sweep asks for \(until_train_loss 0\.02 "
                                         r"there vs 0\.01 here\)"):
        sweep._training_state(tmp_path / job.name, job.settings)
