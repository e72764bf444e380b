"""Each training setting is declared once (ensembles.training.settings) and four views are derived
from the declaration: the options of `sharpdiv train`, the sweep's axes with their rules and
folder-name spelling, the validation of TrainingSettings, and the refusal of a setting the method
does not use. A field added in a subclass shows up in all four without another edit."""
import dataclasses
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from ensembles.studies import sweep
from ensembles.training import trainer
from ensembles.training.settings import METHODS, Setting, TrainingSettings, declared, setting
from landscape.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class WithTemperature(TrainingSettings):
    """The settings plus one new hyper-parameter, declared in one place."""

    temperature: float | None = setting(None, kind="number", low=0, low_open=True, methods=("sharpbalance",),
                                        when_unset=1.0, short="T", help="Distillation temperature.")


def _settings(**given):
    return WithTemperature(**{"dataset": "digits", "model": "small_cnn", "epochs": 4, **given})


# -- 1. the command line ----------------------------------------------------------------------------


@pytest.fixture
def trained(monkeypatch):
    """The settings `sharpdiv train` would train, instead of training."""
    seen = []
    monkeypatch.setattr(trainer, "train", lambda out, settings, **options: seen.append(settings) or [])
    return seen


def test_a_new_field_is_an_option_of_the_train_command(trained, tmp_path):
    command = cli.train_command_for(WithTemperature)
    arguments = ["--data", "digits", "--model", "small_cnn", "--epochs", "4", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(command, arguments + ["--method", "sharpbalance", "--temperature", "2.5"])
    assert result.exit_code == 0, result.output
    assert type(trained[-1]) is WithTemperature and trained[-1].temperature == 2.5
    result = CliRunner().invoke(command, arguments + ["--method", "sharpbalance"])
    assert result.exit_code == 0 and trained[-1].temperature == 1.0  # the method's default
    helped = CliRunner().invoke(command, ["--help"], terminal_width=200).output
    assert "--temperature FLOAT RANGE" in helped
    assert "Distillation temperature (sharpbalance only). [default: 1.0] [x>0]" in " ".join(helped.split())


def test_the_new_option_takes_its_range_and_its_method_from_the_declaration(trained, tmp_path):
    command = cli.train_command_for(WithTemperature)
    arguments = ["--data", "digits", "--model", "small_cnn", "--epochs", "4", "--out", str(tmp_path / "run")]
    below = CliRunner().invoke(command, arguments + ["--method", "sharpbalance", "--temperature", "0"])
    assert below.exit_code == 2 and "Invalid value for '--temperature': 0.0 is not in the range x>0" in below.output
    ignored = CliRunner().invoke(command, arguments + ["--method", "sam", "--temperature", "2"])
    assert isinstance(ignored.exception, InputError)  # `sharpdiv` prints it as one line, exit status 2
    assert str(ignored.exception) == ("--temperature 2.0 has no effect with --method sam (SharpBalance only); "
                                      "drop it or use --method sharpbalance")
    assert not trained and not (tmp_path / "run").exists()


def _check_parent(value):
    if not str(value).startswith("runs/"):
        raise InputError(f"parent {value!r} is not under runs/; give a run folder there")


@dataclass(frozen=True)
class WithParent(TrainingSettings):
    parent: str | None = setting(None, kind="name", check=_check_parent, optional=True, wanted_text="a run folder",
                                 short="from-", help="Start every member from this run's weights.")


def test_a_new_name_setting_is_an_option_checked_by_its_owner(trained, tmp_path):
    command = cli.train_command_for(WithParent)
    arguments = ["--data", "digits", "--model", "small_cnn", "--epochs", "4", "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(command, arguments + ["--parent", "runs/a"]).exit_code == 0
    assert trained[-1].parent == "runs/a"
    assert CliRunner().invoke(command, arguments).exit_code == 0 and trained[-1].parent is None
    refused = CliRunner().invoke(command, arguments + ["--parent", "elsewhere"])
    assert str(refused.exception) == "parent 'elsewhere' is not under runs/; give a run folder there"


def test_every_option_of_sharpdiv_train_for_a_setting_is_its_declaration():
    options = {param.name: param for param in cli.main.commands["train"].params}
    for name, declaration in declared(TrainingSettings).items():
        if not declaration.command_line:  # --data, --model ...: options shared with other commands
            continue
        option = options[name]
        assert option.opts == [declaration.flag, *declaration.aliases]
        if declaration.kind in ("integer", "number"):
            assert (option.type.min, option.type.max, option.type.min_open, option.type.max_open) == (
                declaration.low, declaration.high, declaration.low_open, declaration.high_open), name
        if declaration.kind == "choice" and not callable(declaration.choices):
            assert tuple(option.type.choices) == declaration.choices, name


def test_parsing_the_train_options_never_loads_torch():
    # Choices owned by torch modules (augmentations, ASAM scales) are checked with the settings, so
    # --threads still configures OpenMP before torch loads, whatever the order of the options.
    program = ("import sys\nfrom click.testing import CliRunner\nimport cli\n"
               "result = CliRunner().invoke(cli.main, ['train', '--augmentation', 'crop', '--asam-scale', 'all', "
               "'--method', 'asam', '--threads', '1', '--resume', 'somewhere'])\n"
               "assert result.exit_code == 2 and '--augmentation' in result.output, result.output\n"
               "assert 'torch' not in sys.modules\nprint('ok')\n")
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert completed.stdout.strip() == "ok", completed.stderr


def test_a_choice_owned_by_a_torch_module_is_refused_in_one_line_naming_it(tmp_path):
    result = CliRunner().invoke(cli.main, ["train", "--data", "digits", "--model", "small_cnn", "--augmentation",
                                           "flip", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.strip() == "sharpdiv: error: unknown augmentation 'flip'; choose one of none, crop, crop-flip"
    assert not (tmp_path / "run").exists()


# -- 2. the sweep -----------------------------------------------------------------------------------

TEMPERATURE_SWEEP = """
[base]
dataset = "digits"
model = "small_cnn"
epochs = 4
[grid]
method = ["sam", "sharpbalance"]
temperature = [0.5, 2.0]
"""


def test_a_new_field_is_a_sweep_axis_with_its_rule_and_its_short_name():
    assert "temperature" in sweep.axis_names(WithTemperature) and "temperature" not in sweep.AXES
    plan = sweep.parse_sweep(TEMPERATURE_SWEEP, source="t.toml", settings_class=WithTemperature)
    # SAM does not use it: its two grid points are one job, and its folder name does not mention it
    assert [job.name for job in plan.jobs] == ["sam-s13.17.27", "sharpbalance-T0.5-s13.17.27",
                                               "sharpbalance-T2-s13.17.27"]
    assert [job.settings.temperature for job in plan.jobs] == [None, 0.5, 2.0]
    assert sweep.plan_table(plan)["temperature"].tolist() == ["-", "0.5", "2"]
    with pytest.raises(InputError, match=r"^t\.toml: \[grid\] temperature \(line 8\): -1 is not a valid temperature; "
                                         r"it must be a finite number > 0$"):
        sweep.parse_sweep(TEMPERATURE_SWEEP.replace("[0.5, 2.0]", "[-1]"), source="t.toml",
                          settings_class=WithTemperature)
    with pytest.raises(InputError, match="unknown axis 'temperature'"):
        sweep.parse_sweep(TEMPERATURE_SWEEP, source="t.toml")  # not a setting of the plain TrainingSettings


def test_which_methods_use_a_setting_is_read_from_its_declaration():
    assert sweep.applies("temperature", "sharpbalance", WithTemperature)
    assert not sweep.applies("temperature", "sam", WithTemperature)
    for name, declaration in declared().items():
        assert [sweep.applies(name, method) for method in METHODS] == [method in declaration.methods
                                                                       for method in METHODS]


# -- 3. the validation ------------------------------------------------------------------------------


def test_a_new_field_is_validated_by_its_rule_and_gets_its_methods_default():
    assert _settings(method="sharpbalance").temperature == 1.0
    assert _settings(method="sharpbalance", temperature=3).temperature == 3
    assert _settings(method="sam").temperature is None
    for bad in (0, -1.0, math.inf, math.nan, "2", True):
        with pytest.raises(InputError, match=r"^temperature must be a finite number > 0, got "):
            _settings(method="sharpbalance", temperature=bad)
    assert _settings(method="sharpbalance", temperature=2.0).run_fields()["temperature"] == 2.0  # run.json has it


def _bad_value(declaration: Setting):
    """A value the declaration refuses, chosen from the rule alone."""
    if declaration.kind == "integer":
        return declaration.low - 1
    if declaration.kind == "number":
        return declaration.high + 1 if declaration.high is not None else declaration.low - 1
    return {"choice": "nonsense", "switch": "yes", "seeds": [-1], "table": "x=1", "name": "../x", "path": ""}[declaration.kind]


@pytest.mark.parametrize("name", sweep.AXES)
def test_the_sweep_and_the_settings_refuse_the_same_values(name):
    declaration = declared()[name]
    bad = _bad_value(declaration)
    method = declaration.methods[-1]
    with pytest.raises(InputError, match=f"{name}"):
        TrainingSettings(**{"dataset": "digits", "model": "small_cnn", "method": method, "epochs": 4, name: bad})
    text = '[base]\ndataset = "digits"\nmodel = "small_cnn"\n' if name not in ("dataset", "model") else (
        '[base]\ndataset = "digits"\n' if name == "model" else '[base]\nmodel = "small_cnn"\n')
    with pytest.raises(InputError, match=re.escape(f"is not a valid {name}; it must be {declaration.wanted}")):
        sweep.parse_sweep(text + f"[grid]\n{name} = [{json.dumps(bad)}]\n", source="bad.toml")


def test_every_field_must_be_declared():
    @dataclass(frozen=True)
    class Undeclared(TrainingSettings):
        temperature: float = 1.0

    with pytest.raises(TypeError, match=r"Undeclared\.temperature is not declared; make it with setting\(\.\.\.\)"):
        Undeclared(dataset="digits", model="small_cnn")


def test_settings_keep_one_spelling():
    import numpy as np

    settings = TrainingSettings(dataset="digits", model="small_cnn", seeds=[np.int64(3), 4], epochs=np.int64(6),
                                model_args={}, data_path=Path("/data"))
    assert settings.seeds == (3, 4) and type(settings.epochs) is int and settings.model_args is None
    assert settings.data_path == "/data"
    assert json.dumps(dataclasses.asdict(settings))  # train/settings.json can hold it
    with pytest.raises(InputError, match=r"^seed 1\.5 is not an integer; give one whole number per member"):
        TrainingSettings(dataset="digits", model="small_cnn", seeds=(1.5, 2))  # never rounded to 1


# -- 4. the method check ----------------------------------------------------------------------------


def test_a_new_field_given_to_a_method_that_does_not_use_it_is_refused():
    with pytest.raises(InputError) as error:
        _settings(method="sam", temperature=2.0)
    assert str(error.value) == ("--temperature 2.0 has no effect with --method sam (SharpBalance only); drop it or "
                                "use --method sharpbalance")
    with pytest.raises(InputError, match=r"^--k 0\.3 --td 2 --temperature 2\.0 have no effect with --method asam "
                                         r"\(SharpBalance only\); drop them or use --method sharpbalance$"):
        _settings(method="asam", k=0.3, td=2, temperature=2.0)


# -- resuming: a setting added later reads as its declared default in an older train/settings.json


def test_a_settings_record_from_before_a_new_field_is_still_this_run(tmp_path):
    settings = _settings(method="sharpbalance", seeds=(1, 2))
    old = {name: value for name, value in trainer._settings_record(settings).items() if name != "temperature"}
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "member-0.pt").write_bytes(b"state")
    (tmp_path / "train" / "settings.json").write_text(json.dumps(old))
    trainer._require_own_training_state(tmp_path, settings, recorded=True)  # temperature 1.0 is the default
    with pytest.raises(InputError, match=r"temperature 3\.0 here, 1\.0 there"):
        trainer._require_own_training_state(tmp_path, _settings(method="sharpbalance", seeds=(1, 2), temperature=3.0),
                                            recorded=True)
