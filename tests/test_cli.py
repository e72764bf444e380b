"""CLI conventions every command shares (cli.py): lists and ranges, device and thread choice (set
before torch loads), one-line errors and library notes, and the promise that CI installs as the
README says."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cli
from ensembles.cpus import usable_cpus
from ensembles.runs import run_folder
from landscape.errors import InputError

from tiny_runs import one_error_line

ROOT = Path(__file__).resolve().parents[1]


def _listed_commands(arguments) -> set[str]:
    """The command names click's help for ``arguments`` lists under "Commands:"."""
    result = CliRunner().invoke(cli.main, [*arguments, "--help"])
    assert result.exit_code == 0, result.output
    listing = result.output.split("\nCommands:\n", 1)[1]
    return {line.split()[0] for line in listing.splitlines() if line.startswith("  ") and not line.startswith("   ")}


def _readme_command_table() -> dict[str, set[str]]:
    """README's "## Commands" table as {command: its subcommands}, e.g. sweep: {plan, run, status, report}."""
    section = (ROOT / "README.md").read_text().split("\n## Commands\n", 1)[1]
    rows = re.findall(r"^\| `sharpdiv ([^`]*)` \|", section.split("\n## ", 1)[0], flags=re.M)
    assert rows, "README.md has no command table under ## Commands"
    table = {}
    for row in rows:
        name, _, rest = row.partition(" ")
        words = rest.split()
        # "sweep plan\|run\|status\|report FILE": an escaped-bar list of subcommands
        table[name] = set(words[0].replace("\\|", "|").split("|")) if words and "\\|" in words[0] else set()
    return table


def test_help_lists_the_commands_of_the_readme_table():
    table = _readme_command_table()
    listed = _listed_commands([])
    assert listed - set(table) == set(), "commands missing from README's table"
    assert set(table) - listed == set(), "README's table names commands sharpdiv --help does not list"
    for name, subcommands in table.items():
        if subcommands or isinstance(cli.main.commands[name], click.Group):
            assert _listed_commands([name]) == subcommands, name


def test_python_dash_m_cli_works():
    done = subprocess.run([sys.executable, "-m", "cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "sharpdiv" in done.stdout


@pytest.mark.parametrize("text, item_type, ranges, expected", [
    ("13,17,27", int, False, [13, 17, 27]),
    ("0.1, 0.2", float, False, [0.1, 0.2]),
    ("1-5", int, True, [1, 2, 3, 4, 5]),
    ("1-3,5", int, True, [1, 2, 3, 5]),
    ("fog,contrast", str, False, ["fog", "contrast"]),
])
def test_comma_lists_and_ranges(text, item_type, ranges, expected):
    assert cli.CommaList(item_type, ranges=ranges).convert(text, None, None) == expected


@pytest.mark.parametrize("text", ["5-1", "a,b", ","])
def test_bad_lists_fail_cleanly(text):
    with pytest.raises(click.BadParameter):
        cli.CommaList(int, ranges=True).convert(text, None, None)


def test_set_assignments_parse_json_values():
    assert cli.parse_assignments(["rho=0.2", "method=sam", "seeds=13,17,27", "width=[1,2]"]) == {
        "rho": 0.2, "method": "sam", "seeds": [13, 17, 27], "width": [1, 2]}
    with pytest.raises(InputError, match="key=value"):
        cli.parse_assignments(["rho"])


def test_device_resolution_without_cuda(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.resolve_device("auto") == torch.device("cpu")
    assert cli.resolve_device("cpu") == torch.device("cpu")
    for asked in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match="no CUDA device is available here; use --device cpu"):
            cli.resolve_device(asked)
    with pytest.raises(InputError, match="unknown device"):
        cli.resolve_device("tpu:7")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.main, ["train", "--data", "digits", "--model", "small_cnn", "--epochs", "1",
                                           "--out", str(out), "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        "sharpdiv: error: --device cuda: no CUDA device is available here; use --device cpu"]
    assert not out.exists()


def test_device_resolution_with_cuda(monkeypatch):
    """Only the returned device is checked: no GPU is touched."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.resolve_device("auto") == torch.device("cuda")
    assert cli.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert cli.resolve_device("cpu") == torch.device("cpu")


def test_input_errors_exit_2_without_traceback(tmp_path):
    result = CliRunner().invoke(cli.main, ["import", "--model", "small_cnn", "--num-classes", "10",
                                           "--data", "cifar10", str(tmp_path / "out"), str(tmp_path / "missing.pt")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    test_block = next(block for block in blocks if "pytest" in block)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for line in test_block.strip().splitlines():
        assert line.strip() in ci_lines, f"README line missing from .ci/run: {line}"
    readme_lines = [line.strip() for line in test_block.strip().splitlines()]
    start = ci_lines.index(readme_lines[0])
    assert ci_lines[start:start + len(readme_lines)] == readme_lines  # the same block, in the same order
    assert ci_lines[start + len(readme_lines):] in ([], [""])  # and nothing run after it
    # the suite runs twice, the second time on another float path (tests/test_float_paths.py)
    assert [line for line in readme_lines if line.endswith("pytest")] == \
        ["pytest", "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 pytest"]
    assert any("sharpdiv quickstart" in block or "sharpdiv --help" in block for block in blocks)


@pytest.mark.parametrize("arguments, expected", [
    (["train", "--seeds", "a,b"], "'a' is not a valid int"),
    (["evaluate"], "Missing argument"),
    (["nosuchcommand"], "No such command"),
])
def test_usage_errors_are_one_line_with_exit_2(arguments, expected):
    result = CliRunner().invoke(cli.main, arguments)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sharpdiv: error:") and expected in lines[0]


def test_help_and_version_still_exit_0():
    assert CliRunner().invoke(cli.main, ["--version"]).exit_code == 0
    assert CliRunner().invoke(cli.main, ["train", "--help"]).exit_code == 0


def test_a_missing_or_foreign_run_folder_is_refused_before_torch_is_imported(tmp_path):
    # the check runs when click parses the arguments: no command waits seconds for torch to say so
    (tmp_path / "not-a-run").mkdir()
    program = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "import cli\n"
        "for command in ('evaluate', 'robustness', 'sharpness', 'hessian', 'fisher', 'connectivity'):\n"
        f"    for folder, expected in (({str(tmp_path / 'missing')!r}, 'does not exist'),\n"
        f"                             ({str(tmp_path / 'not-a-run')!r}, 'is not a run folder (no run.json)')):\n"
        "        result = CliRunner().invoke(cli.main, [command, folder])\n"
        "        assert result.exit_code == 2, (command, result.output)\n"
        "        lines = result.output.strip().splitlines()\n"
        "        assert len(lines) == 1 and lines[0].startswith('sharpdiv: error:') and expected in lines[0], lines\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n")
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and completed.stdout.strip() == "ok", completed.stderr


# -- every command sets OpenMP's wait policy and thread count before torch is imported

_SPY = textwrap.dedent("""
    import json, os, sys
    seen = {}

    class Spy:  # records the environment at the moment torch is first imported
        def find_spec(self, name, path=None, target=None):
            if name == "torch" and not seen:
                seen.update(policy=os.environ.get("OMP_WAIT_POLICY"), threads=os.environ.get("OMP_NUM_THREADS"))
            return None

    sys.meta_path.insert(0, Spy())
    from cli import main
    try:
        main(sys.argv[1:], standalone_mode=False)
    except SystemExit:
        pass
    import torch
    print(json.dumps({**seen, "torch_threads": torch.get_num_threads()}))
""")


# Imports torch, then refuses the settings (exit 2): fast, and nothing is written.
_TRAIN = ["train", "--data", "digits", "--model", "small_cnn", "--method", "sam", "--asam-scale", "all",
          "--out", "unused"]


def _spy(arguments, tmp_path, **environment):
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OMP_", "MKL_"))}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), **environment)
    result = subprocess.run([sys.executable, "-c", _SPY, *arguments], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_commands_set_a_passive_wait_policy_and_threads_before_torch_loads(tmp_path):
    seen = _spy(_TRAIN, tmp_path)
    assert seen["policy"] == "PASSIVE"
    assert seen["threads"] == str(usable_cpus()) and seen["torch_threads"] == usable_cpus()
    assert not (tmp_path / "unused").exists()


def test_threads_flag_reaches_openmp_before_torch_loads(tmp_path):
    seen = _spy([*_TRAIN, "--threads", "1"], tmp_path, OMP_NUM_THREADS="2")
    assert seen == {"policy": "PASSIVE", "threads": "1", "torch_threads": 1}


def test_the_users_openmp_settings_are_kept(tmp_path):
    seen = _spy(_TRAIN, tmp_path, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert seen == {"policy": "ACTIVE", "threads": "1", "torch_threads": 1}


@pytest.mark.parametrize("make", ["missing", "plain folder", "file"])
def test_report_on_a_path_that_is_not_a_run_folder_is_one_line(tmp_path, make):
    path = tmp_path / "thing"
    if make == "plain folder":
        path.mkdir()
    elif make == "file":
        path.write_text("x")
    result = CliRunner().invoke(cli.main, ["report", str(path), "--out", str(tmp_path / "out")])
    assert str(path) in one_error_line(result)
    assert not (tmp_path / "out").exists()


# --- the quickstart summary is a report; cli.py only prints it ---------------------------------------

def test_cli_fits_nothing():
    source = (ROOT / "cli.py").read_text()
    assert "fits_by_group" not in source and "fit_beta" not in source and "tradeoff_points" not in source


def test_a_library_warning_reads_as_a_note_not_as_an_error(tmp_path):
    from ensembles.models.zoo import build

    run = tmp_path / "run"
    model_args = {"input_size": 3 * 32 * 32, "hidden": [4]}
    run_folder.create_run(run, dataset="digits", num_classes=10, model="mlp", model_args=model_args, seeds=[0])
    run_folder.save_member(run, 0, build("mlp", 10, **model_args))
    # 3 Lanczos steps cannot reach the tolerance: the eigenvalue is stored, with a remark
    result = CliRunner().invoke(cli.main, ["hessian", str(run), "--eigenvalues", "1", "--lanczos-steps", "3",
                                           "--n-examples", "8", "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "sharpdiv: note: Lanczos did not reach" in result.stderr
    assert "RuntimeWarning" not in result.stderr and ".py:" not in result.stderr


def test_model_arg_values_parse_as_json():
    assert cli.model_settings(("a=1", "b=[2, 3]", "c=text", "d=0.5"), None, None, None) == (
        {"a": 1, "b": [2, 3], "c": "text", "d": 0.5}, None)
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        cli.model_settings(("novalue",), None, None, None)
