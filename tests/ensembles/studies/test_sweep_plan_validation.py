"""``sweep plan`` refuses what ``sweep run`` would: every measurement option is checked when the
file is read, by the rule the measurement applies, and the message names the file's own key and
line (not a command-line flag); ``sweep run`` creates nothing before its data and models are found."""
import pytest

from ensembles.studies.sweep import parse_sweep, read_sweep
from landscape.errors import InputError
from tiny_runs import invoke, one_error_line

HEAD = '[base]\ndataset = "digits"\nmodel = "small_cnn"\nepochs = 1\nseeds = [1]\ntrain_samples = 16\n' \
       '[grid]\nmethod = ["sgd"]\n'


@pytest.mark.parametrize("table, body, expected", [
    ("[[measure.sharpness]]", "n_batches = 0", "[measure.sharpness] n_batches (line 10) must be an integer >= 1, got 0"),
    ("[[measure.sharpness]]", "rho = [0.5, -1]", "[measure.sharpness] rho (line 10) must be finite and > 0"),
    ("[[measure.sharpness]]", 'seed = "13"', "[measure.sharpness] seed (line 10) must be an integer, got '13'"),
    ("[[measure.sharpness]]", 'exclude = 3', "[measure.sharpness] exclude (line 10) must be a parameter-name pattern"),
    ("[[measure.sharpness]]", 'kind = "average"\nascent = "reference"',
     "[measure.sharpness] (line 9): ascent reference applies to the worst case only; drop it or use kind worst"),
    ("[measure.hessian]", "n_probes = 0", "[measure.hessian] n_probes (line 10) must be an integer >= 1, got 0"),
    ("[measure.hessian]", 'method = "hutch++"\nn_probes = 2', "[measure.hessian] (line 9): n_probes must be an "
                                                             "integer >= 3"),
    ("[measure.hessian]", "trace = 1", "[measure.hessian] trace (line 10) must be true or false, or none, got 1"),
    ("[measure.fisher]", 'split = "holdout"', "[measure.fisher] split (line 10) must be one of train, val, test"),
    ("[measure.evaluate]", "severities = [0, 3]", "[measure.evaluate] severities (line 10) must be a list of "
                                                  "integers in 1..5, each a corruption severity, got [0, 3]"),
    ("[measure.evaluate]", "corruptions = 3", "[measure.evaluate] corruptions (line 10) must be a list of "
                                              "corruption names"),
    ("[measure.evaluate]", 'splits = "train,holdout"', "[measure.evaluate] splits (line 10) must be a list of "
                                                      "clean splits"),
    ("[measure.evaluate]", "n_bins = 0", "[measure.evaluate] n_bins (line 10) must be an integer >= 1, got 0"),
    ("[measure.connectivity]", "alphas = 1", "[measure.connectivity] alphas (line 10) must be an integer >= 2"),
    ("[measure.connectivity]", 'align = "permute"', "[measure.connectivity] (line 9): align permute: use none"),
])
def test_a_measurement_option_is_refused_when_the_file_is_read(table, body, expected):
    with pytest.raises(InputError) as refused:
        parse_sweep(f"{HEAD}{table}\n{body}\n", source="s.toml")
    message = str(refused.value)
    assert message.startswith("s.toml: ") and expected in message
    assert "--" not in message  # the sweep file's keys, not the command line's flags


def test_sweep_plan_says_it_in_one_line_and_run_creates_nothing(tmp_path):
    file = tmp_path / "bad.toml"
    file.write_text(f"{HEAD}[[measure.sharpness]]\nn_batches = 0\n")
    line = one_error_line(invoke("sweep", "plan", file))
    assert f"{file}: [measure.sharpness] n_batches (line 10)" in line
    one_error_line(invoke("sweep", "run", file, "--out", tmp_path / "root", "--device", "cpu"))
    assert not (tmp_path / "root").exists()


def test_good_options_still_read_as_the_measurement_takes_them(tmp_path):
    file = tmp_path / "good.toml"
    file.write_text(f'{HEAD}[[measure.sharpness]]\nrho = [0.25, 0.5]\nn_batches = 2\nexclude = "*bn*"\n'
                    '[measure.evaluate]\nseverities = [1, 3]\ncorruptions = ["fog"]\n'
                    '[measure.connectivity]\nalign = "weight,none"\n')
    measures = {measure.command: dict(measure.options) for measure in read_sweep(file).measurements}
    assert measures["sharpness"] == {"rhos": (0.25, 0.5), "n_batches": 2, "exclude": "*bn*"}
    assert measures["evaluate"] == {"severities": (1, 3), "corruptions": ("fog",)}


def test_a_sweep_whose_dataset_is_missing_creates_no_root_folder(tmp_path):
    file = tmp_path / "cifar.toml"
    file.write_text('[base]\ndataset = "cifar10"\nmodel = "small_cnn"\nepochs = 1\nseeds = [1]\n'
                    '[grid]\nmethod = ["sgd"]\n')
    line = one_error_line(invoke("sweep", "run", file, "--out", tmp_path / "root", "--data-path",
                                 tmp_path / "nowhere", "--device", "cpu"))
    assert "CIFAR-10 not found" in line
    assert not (tmp_path / "root").exists()


def test_a_sweep_whose_evaluation_needs_missing_corrupted_data_creates_nothing(tmp_path):
    file = tmp_path / "corrupted.toml"
    file.write_text(f'{HEAD}[measure.evaluate]\ncorruptions = ["fog"]\n')
    line = one_error_line(invoke("sweep", "run", file, "--out", tmp_path / "root", "--data-path", tmp_path / "data",
                                 "--device", "cpu"))
    assert "fog" in line and "sharpdiv corrupt" in line
    assert not (tmp_path / "root").exists()
