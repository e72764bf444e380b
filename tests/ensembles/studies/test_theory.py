"""The theory study (ensembles.studies.theory): its table is long and complete, the command writes
the table and the figure, shows progress, and refuses a file as output folder."""
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from ensembles.studies.theory import theory_table
from landscape.errors import InputError


def test_theory_command_writes_the_figure_and_table(tmp_path):
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, ["theory", "--figure", "1b", "--out", str(tmp_path), "--quick", "--seed", "3"])
    assert result.exit_code == 0, result.output
    paths = [tmp_path / f"theory-figure-1b.{suffix}" for suffix in ("png", "svg", "csv")]
    for path in paths:
        assert path.exists() and path.stat().st_size > 0
        assert str(path) in result.output
    assert "SharpBalance's diversity" in result.output or "no SharpBalance point" in result.output
    table = pd.read_csv(paths[2])
    assert set(table["method"]) == {"sam", "sharpbalance"}
    assert set(table["source"]) == {"theory", "simulation"}
    assert table["value"].notna().all()


def test_theory_table_for_theorem_1_panels_is_long_and_complete():
    table = theory_table("10", quick=True)
    assert {"sharpness_lower", "sharpness_lower_printed", "sharpness_upper", "diversity", "sharpness"} == set(
        table["quantity"])
    assert set(table["method"]) == {"sam"}
    points = table.groupby(["panel", "iterations", "eta_paper", "rho_paper"]).size()
    assert (points == 6).all() and len(points) == 4 * 3  # 2 k × 2 η panels, 3 radii, 4 + 2 quantities
    assert table["value"].notna().all()


def test_the_study_refuses_a_file_as_output_folder(tmp_path):
    from ensembles.studies.theory import write_theory_table

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        write_theory_table("2", blocker, quick=True)


def test_theory_shows_progress(tmp_path):
    result = CliRunner().invoke(cli.main, ["theory", "--figure", "1b", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "figure 1b" in result.stderr and "point" in result.stderr
