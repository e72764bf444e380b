"""Issue 16 item 5: the theory simulation lives in ensembles/studies, the report only reads its table;
the quickstart summary's β fit lives in reports; the augmentation draws from the member's generator."""
import ast
from pathlib import Path

import pandas as pd
import pytest

from landscape.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


# --- theory: the study computes, the report draws -------------------------------------------------

def test_reports_theory_does_not_simulate():
    assert "landscape.theory" not in _imported_modules(ROOT / "reports" / "theory.py")


def test_the_figure_is_drawn_from_the_stored_table_without_simulating(tmp_path, monkeypatch):
    import matplotlib

    from ensembles.studies import theory as study
    from reports.theory import draw_theory_figure, write_theory_figure

    stored = study.write_theory_table("2", tmp_path, quick=True, seed=1)
    assert stored == tmp_path / "theory-figure-2.csv"

    def refuse(*args, **kwargs):
        raise AssertionError("the report simulated")

    monkeypatch.setattr(study, "simulate_tradeoff", refuse)
    monkeypatch.setattr(study, "draw_problems", refuse)
    png, svg = write_theory_figure(stored)
    assert png == tmp_path / "theory-figure-2.png" and png.stat().st_size > 0
    monkeypatch.undo()
    # the same SVG as drawing the freshly computed table: nothing is lost in the stored CSV
    direct = tmp_path / "direct.svg"
    with matplotlib.rc_context({"svg.hashsalt": "sharpdiv-theory"}):
        draw_theory_figure(study.theory_table("2", quick=True, seed=1)).savefig(direct, metadata={"Date": None})
    assert direct.read_bytes() == svg.read_bytes()


def test_a_table_that_is_not_a_theory_table_is_refused(tmp_path):
    from reports.theory import diversity_at_matched_sharpness, write_theory_figure

    with pytest.raises(InputError, match="is not a theory table"):
        write_theory_figure(tmp_path / "missing.csv")
    other = tmp_path / "other.csv"
    pd.DataFrame({"a": [1]}).to_csv(other, index=False)
    with pytest.raises(InputError, match="missing figure"):
        diversity_at_matched_sharpness(other)
    assert not (tmp_path / "other.png").exists()


def test_the_study_refuses_a_file_as_output_folder(tmp_path):
    from ensembles.studies.theory import write_theory_table

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        write_theory_table("2", blocker, quick=True)


# --- the quickstart summary is a report; cli.py only prints it ---------------------------------------

def test_cli_fits_nothing():
    source = (ROOT / "cli.py").read_text()
    assert "fits_by_group" not in source and "fit_beta" not in source and "tradeoff_points" not in source


def test_quickstart_summary_from_run_folders(tmp_path):
    from results_fixtures import STUDY_LAWS, write_study

    from reports.tables import quickstart_summary

    lines = quickstart_summary(write_study(tmp_path))
    # sam: members' mean sharpness 0.25·2^r over r = 0, 1, 2; DER = 0.5·s^0.6 on every corrupted slice
    sam_sharpness = [0.25 * 2 ** r for r in range(3)]
    sam_der = sum(0.5 * s ** 0.6 for s in sam_sharpness) / 3
    assert lines[0] == (f"         sam: ensemble accuracy 94.5% clean, 82.0% corrupted; DER (corrupted) {sam_der:.3g}; "
                        f"sharpness {sum(sam_sharpness) / 3:.3g} (3 ensembles)")
    assert [line.split(":")[0].strip() for line in lines[:3]] == ["sam", "sgd", "sharpbalance"]
    expected = "; ".join(f"{method} {beta:.2f} [{beta:.2f}, {beta:.2f}]"
                         for method, (scale, beta) in STUDY_LAWS.items())
    assert lines[3] == "β, slope of log DER on log sharpness: " + expected


def test_quickstart_summary_says_when_beta_cannot_be_fitted(tmp_path):
    from results_fixtures import write_study

    from reports.tables import quickstart_summary

    paths = [path for path in write_study(tmp_path) if path.name.endswith(("-0", "-1"))]  # 2 ensembles per method
    lines = quickstart_summary(paths)
    assert lines[-1] == "β, slope of log DER on log sharpness: not fitted (a group needs 3 ensembles)"
    assert all("(2 ensembles)" in line for line in lines[:-1])
