"""The theory figure and its comparison (reports.theory): drawn from the stored table without
simulating, the matched-sharpness comparison by hand, and Figure 2's legend."""
import ast
from pathlib import Path

import pandas as pd
import pytest

from ensembles.studies.theory import theory_table
from landscape.errors import InputError
from reports.theory import diversity_at_matched_sharpness


# --- reports and command ------------------------------------------------------------------------

def _table(points):
    rows = []
    for method, sharpness, diversity in points:
        for quantity, value in (("sharpness", sharpness), ("diversity", diversity)):
            rows.append({"panel": "p", "along": "rho", "method": method, "iterations": 1, "eta_paper": 0.1,
                         "rho_paper": sharpness, "source": "simulation", "quantity": quantity, "value": value,
                         "standard_error": 0.0})
    return pd.DataFrame(rows)


def test_matched_sharpness_comparison_hand_worked():
    # SAM frontier through (1, 1) and (3, 2): at sharpness 2 SAM reaches 1.5; the point (2, 0.5) is dominated
    sam = [("sam", 1.0, 1.0), ("sam", 3.0, 2.0), ("sam", 2.5, 0.5)]
    finding = diversity_at_matched_sharpness(_table(sam + [("sharpbalance", 2.0, 1.8), ("sharpbalance", 5.0, 9.0)]))
    assert (finding.verdict, finding.matched_points, finding.sharpbalance_higher) == ("higher", 1, 1)
    assert finding.median_diversity_ratio == pytest.approx(1.8 / 1.5)
    assert diversity_at_matched_sharpness(_table(sam + [("sharpbalance", 2.0, 1.2)])).verdict == "lower"
    assert diversity_at_matched_sharpness(_table(sam + [("sharpbalance", 4.0, 1.2)])).verdict == "no overlap"
    assert diversity_at_matched_sharpness(_table(sam)).verdict == "not comparable"


def _line(figure, label):
    """The one line of ``figure`` with this legend label."""
    lines = [line for axis in figure.axes for line in axis.get_lines() if line.get_label() == label]
    assert len(lines) == 1, label
    return lines[0]


def test_figure_2_legend_names_the_bounds_as_bounds_on_the_sharpness():
    from reports.theory import draw_theory_figure

    table = theory_table("2", quick=True)
    figure = draw_theory_figure(table)
    upper, lower = "SAM: Theorem 1, sharpness upper bound", "SAM: Theorem 1, sharpness lower bound"
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [upper, lower, "SAM: simulation"]
    # each label sits on the line it names: x is that bound of Theorem 1, y the predicted diversity
    theory = table[table["source"] == "theory"].pivot_table(index="rho_paper", columns="quantity", values="value")
    for label, quantity in ((upper, "sharpness_upper"), (lower, "sharpness_lower")):
        line = _line(figure, label)
        assert list(line.get_xdata()) == pytest.approx(list(theory[quantity]))
        assert list(line.get_ydata()) == pytest.approx(list(theory["diversity"]))
    assert (_line(figure, lower).get_xdata() <= _line(figure, upper).get_xdata()).all()


ROOT = Path(__file__).resolve().parents[2]


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
