"""Sweep files with several grids ([[grid]]: the union of their jobs), and the job identity that
tells grid points apart (model_input included, resolved as train() records it)."""
import pytest

from ensembles.studies import sweep
from landscape.errors import InputError

BASE = '[base]\ndataset = "digits"\nmodel = "small_cnn"\nepochs = 4\n'

SEVERAL = BASE + """
[[grid]]                 # deep ensembles
seeds = [[13, 17, 27], [113, 117, 127]]
[[grid]]                 # SAM at two radii, one seed set
method = ["sam"]
width = [8]
rho = [0.05, 0.2]
seeds = [[13, 17, 27]]
[[grid]]                 # rho before width here; the names keep one order
method = ["sam"]
rho = [0.1]
width = [16]
[[grid]]                 # SGD ignores rho: the first grid's second job again, merged
method = ["sgd"]
rho = [0.1]
seeds = [[113, 117, 127]]
"""


def test_several_grids_are_the_union_of_their_jobs_in_file_order():
    plan = sweep.parse_sweep(SEVERAL, source="several.toml")
    # Written out by hand: each job names the axes of its own grid, in the order the file first gives them.
    assert [job.name for job in plan.jobs] == [
        "sgd-s13.17.27", "sgd-s113.117.127",
        "sam-w8-rho0.05-s13.17.27", "sam-w8-rho0.2-s13.17.27",
        "sam-w16-rho0.1-s13.17.27"]
    assert [(job.settings.method, job.settings.rho, job.settings.width, job.settings.seeds) for job in plan.jobs] == [
        ("sgd", 0.0, None, (13, 17, 27)), ("sgd", 0.0, None, (113, 117, 127)),
        ("sam", 0.05, 8, (13, 17, 27)), ("sam", 0.2, 8, (13, 17, 27)), ("sam", 0.1, 16, (13, 17, 27))]
    assert plan.grid == {"seeds": ((13, 17, 27), (113, 117, 127)), "method": ("sam", "sgd"), "width": (8, 16),
                         "rho": (0.05, 0.2, 0.1)}
    assert [list(grid) for grid in plan.grids] == [["seeds"], ["method", "width", "rho", "seeds"],
                                                  ["method", "rho", "width"], ["method", "rho", "seeds"]]
    table = sweep.plan_table(plan).set_index("run")
    assert list(table.columns) == ["seeds", "method", "width", "rho", "members", "epochs"]
    assert table.loc["sgd-s13.17.27", "width"] == "None" and table.loc["sgd-s13.17.27", "rho"] == "-"
    assert plan.waves == (plan.jobs,)  # nothing reads another run: one wave
    assert sweep.plan_notes(plan) == []


def test_a_grid_table_and_one_grid_of_an_array_give_the_same_jobs():
    grid = "method = [\"sgd\", \"sam\"]\nrho = [0.05, 0.2]\nwidth = [8, 16]\n"
    one = sweep.parse_sweep(BASE + "[grid]\n" + grid)
    array = sweep.parse_sweep(BASE + "[[grid]]\n" + grid)
    assert [job.name for job in array.jobs] == [job.name for job in one.jobs]
    assert [job.settings for job in array.jobs] == [job.settings for job in one.jobs]
    assert one.grids == (one.grid,)


def _error(text: str) -> str:
    with pytest.raises(InputError) as caught:
        sweep.parse_sweep(text, source="bad.toml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_problem_in_one_of_several_grids_names_that_grid_and_its_line():
    two = BASE + "[[grid]]\nrho = [0.1]\n[[grid]]\nwidth = [8]\n"  # line 9 is the second grid's
    assert _error(two + "rhoo = [0.1]\n").startswith("bad.toml: [[grid]] #2 rhoo (line 9): unknown axis 'rhoo'")
    assert _error(two + "rho = [-1]\n").startswith("bad.toml: [[grid]] #2 rho (line 9): -1 is not a valid rho")
    assert _error(two + "rho = []\n").startswith("bad.toml: [[grid]] #2 rho (line 9) has no values")
    assert _error(two + "epochs = [2]\n").startswith(
        "bad.toml: [base] epochs (line 4) and bad.toml: [[grid]] #2 epochs (line 9) conflict")
    assert "not valid TOML" in _error(two + "width = [16]\n")  # a key twice in one grid: TOML's own error
    missing = '[base]\ndataset = "digits"\n[[grid]]\nmodel = ["mlp"]\n[[grid]]\nwidth = [8]\n'
    assert _error(missing) == "bad.toml: no 'model' in [[grid]] #2; set it in [base] (or sweep it in that grid)"
    assert _error("grid = []\n" + BASE).startswith("bad.toml: grid (line 1): an empty list of grids has no jobs")
    assert "not valid TOML" in _error(BASE + "[grid]\nwidth = [8]\n[[grid]]\nwidth = [16]\n")
    # a bad point names its values, whichever grid it is in
    assert _error(BASE + "[[grid]]\nwidth = [8]\n[[grid]]\nmethod = [\"sharpbalance\"]\ntd = [9]\n").startswith(
        "bad.toml: grid point method=sharpbalance, td=9: td = 9 >= epochs = 4")


# -- model_input is part of a job's identity ---------------------------------------------------------

MODEL_TABLES = """
[base]
dataset = "digits"
model = "mlp"
epochs = 3
[grid]
model_args = [{}, {depth = 2}]
model_input = [{size = 32}, {size = 28, mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25]}]
"""


def test_grid_points_that_differ_only_in_model_input_are_different_jobs():
    plan = sweep.parse_sweep(MODEL_TABLES)
    # 2 x 2 points, four ensembles: before, the two inputs of each model_args were one job (the first)
    assert [(job.settings.model_args, job.settings.model_input) for job in plan.jobs] == [
        (None, {"size": 32}), (None, {"size": 28, "mean": [0.5] * 3, "std": [0.25] * 3}),
        ({"depth": 2}, {"size": 32}), ({"depth": 2}, {"size": 28, "mean": [0.5] * 3, "std": [0.25] * 3})]
    assert [job.name for job in plan.jobs] == [
        "sgd-model_argsnone-model_input_size_32_-s13.17.27",
        "sgd-model_argsnone-model_input_size_28_mean_0.5_0.5_0.5_std_0.25_0.25_0.25_-s13.17.27",
        "sgd-model_args_depth_2_-model_input_size_32_-s13.17.27",
        "sgd-model_args_depth_2_-model_input_size_28_mean_0.5_0.5_0.5_std_0.25_0.25_0.25_-s13.17.27"]


def test_model_inputs_that_train_records_alike_are_one_job():
    # train() records size 32 as [32, 32]: the same ensemble, so one job (the first spelling's folder)
    plan = sweep.parse_sweep(BASE + "[grid]\nmodel_input = [{size = 32}, {size = [32, 32]}, {size = 28}]\n")
    assert [job.settings.model_input for job in plan.jobs] == [{"size": 32}, {"size": 28}]
    # a model_input train() would refuse is refused when the file is read, naming the point
    message = _error(BASE + "[grid]\nmodel_input = [{mean = [0.5]}]\n")
    assert message.startswith("bad.toml: grid point model_input={'mean': [0.5]}: give both --mean and --std")


def test_a_timm_models_own_input_is_filled_in_before_grid_points_are_compared():
    # timm records test_resnet's input as 160 x 160, mean and std 0.5: leaving it out is that input
    text = ('[base]\ndataset = "digits"\nmodel = "timm:test_resnet"\nepochs = 1\n[grid]\n'
            'model_input = [{}, {size = 160, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5]}, {size = 96}]\n')
    plan = sweep.parse_sweep(text)
    assert [job.settings.model_input for job in plan.jobs] == [None, {"size": 96}]
    assert sweep._input_identity(plan.jobs[1].settings, True) == (
        '{"mean": [0.5, 0.5, 0.5], "size": [96, 96], "std": [0.5, 0.5, 0.5]}')


def test_a_stored_run_of_one_model_input_is_not_kept_for_another(tmp_path):
    from ensembles.runs.run_folder import create_run
    from ensembles.runs.files import mark_folder

    plan = sweep.parse_sweep(MODEL_TABLES)
    first, second = plan.jobs[:2]
    folder = tmp_path / first.name
    mark_folder(folder, "run")
    create_run(folder, dataset="digits", num_classes=10, model="mlp", model_input={"size": [32, 32], "mean": None,
                                                                                    "std": None},
               seeds=first.settings.seeds, **first.settings.run_fields())
    assert sweep._training_state(folder, first.settings) == "partial"
    with pytest.raises(InputError, match="holds another ensemble than the sweep asks for .model_input"):
        sweep._training_state(folder, second.settings)
