"""Model arguments mean what they say: ``--model-arg`` reads ``True``/``False``/``None`` and JSON,
and a value of another type than the builder declares (annotation, else default) is refused,
wherever it comes from (the command line, run.json, a sweep file)."""
import sys

import pytest
import torch

import cli
from ensembles.models import zoo
from landscape.errors import InputError
from tiny_runs import SMALL_BUDGETS, copy_run, files_under, invoke, one_error_line, train_tiny


def test_python_literals_are_values_not_text():
    model_args, _ = cli.model_settings(("zero_init_residual=False", "a=True", "b=None", "c=0.5", "d=[2, 3]",
                                        "e=true", "f=batch"), None, None, None)
    assert model_args == {"zero_init_residual": False, "a": True, "b": None, "c": 0.5, "d": [2, 3], "e": True,
                          "f": "batch"}
    assert cli.parse_assignments(("reference_compatible=False",)) == {"reference_compatible": False}


def test_false_builds_the_network_false_describes():
    """torchvision's ResNet zero-initialises the last BN of every block when zero_init_residual is
    truthy: the text "False" did that while run.json seemed to say the opposite."""
    model_args, _ = cli.model_settings(("zero_init_residual=False",), None, None, None)
    torch.manual_seed(0)
    network = zoo.build("torchvision:resnet18", 10, **model_args)
    assert torch.equal(network.layer1[0].bn2.weight, torch.ones(64))
    zeroed = zoo.build("torchvision:resnet18", 10, zero_init_residual=True)
    assert torch.equal(zeroed.layer1[0].bn2.weight, torch.zeros(64))


def test_a_value_of_another_type_than_declared_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    line = one_error_line(invoke("train", "--data", "digits", "--model", "torchvision:resnet18",
                                 "--model-arg", "zero_init_residual=notjson", "--epochs", 1, "--seeds", 1,
                                 "--train-samples", 16, "--batch-size", 8, "--device", "cpu", "--out", out))
    assert "zero_init_residual='notjson' is text" in line and "zero_init_residual: bool" in line
    assert not out.exists()


def test_run_json_holding_text_for_a_flag_is_refused_by_name(tmp_path):
    trained = train_tiny(tmp_path / "trained")
    run = copy_run(trained, tmp_path / "shared", model="torchvision:resnet18",
                   model_args={"zero_init_residual": "False"})
    before = files_under(run)
    line = one_error_line(invoke("evaluate", run, *SMALL_BUDGETS["evaluate"], "--device", "cpu"))
    assert "run.json" in line and "zero_init_residual='False' is text" in line
    assert files_under(run) == before


def test_the_default_declares_the_type_where_there_is_no_annotation(tmp_path, monkeypatch):
    (tmp_path / "typed_factories.py").write_text(
        "from torch import nn\n"
        "def make(num_classes, hidden=8, bias=True, scale: float = 1.0):\n"
        "    return nn.Linear(hidden, num_classes, bias=bias)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "typed_factories", raising=False)
    assert zoo.build("typed_factories:make", 3, trust_model_code=True, hidden=4, bias=False, scale=2).bias is None
    with pytest.raises(InputError, match=r"bias='False' is text, but the builder declares bias: bool"):
        zoo.build("typed_factories:make", 3, trust_model_code=True, bias="False")
    with pytest.raises(InputError, match=r"hidden='4' is text, but the builder declares hidden: a number"):
        zoo.build("typed_factories:make", 3, trust_model_code=True, hidden="4")


def test_declared_types_are_read_from_annotations_of_every_form():
    from ensembles.models.arguments import check_arguments, keyword_parameters

    def builder(num_classes: int, *, flag: bool = False, sizes: tuple[int, ...] = (1,), rate: float | None = None,
                kind: str = "a", layers: list[int] | None = None):
        ...

    parameters = keyword_parameters(builder)
    check_arguments("b", parameters, {"flag": True, "sizes": [2, 3], "rate": 1, "kind": "b", "layers": None})
    for bad in ({"flag": 1}, {"sizes": [2, "3"]}, {"rate": "0.1"}, {"kind": 3}, {"layers": [1.5]}):
        with pytest.raises(InputError, match="but the builder declares"):
            check_arguments("b", parameters, bad)


def test_a_sweep_file_with_text_for_a_flag_is_refused_by_plan_and_run(tmp_path):
    file = tmp_path / "s.toml"
    file.write_text('[base]\ndataset = "digits"\nmodel = "torchvision:resnet18"\nepochs = 1\nseeds = [1]\n'
                    '[base.model_args]\nzero_init_residual = "False"\n')
    for command in (("sweep", "plan", file), ("sweep", "run", file, "--out", tmp_path / "root", "--device", "cpu")):
        line = one_error_line(invoke(*command))
        assert f"{file}: job sgd-s1: model 'torchvision:resnet18': zero_init_residual='False' is text" in line
    assert not (tmp_path / "root").exists()
