"""The job identity that tells grid points apart (model_input included, resolved as train() records it)."""
import pytest

from ensembles.studies import sweep
from landscape.errors import InputError

BASE = '[base]\ndataset = "digits"\nmodel = "small_cnn"\nepochs = 4\n'


def _error(text: str) -> str:
    with pytest.raises(InputError) as caught:
        sweep.parse_sweep(text, source="bad.toml")
    message = str(caught.value)
    assert "\n" not in message
    return message


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
