"""The report reads like a results section (reports.site): a method comparison leads with its question,
the summary with t intervals and the trade-off beside its β; a zoo leads with its rank correlations;
one imported run gets no trade-off; every column of the page's tables has one decimal count; the
runs table shows only the settings that differ; what was not measured is one collapsed list at the end."""
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ensembles.runs import run_folder
from reports.correlation import MIN_RANKED
from reports.site import CORRELATION_TITLE, write_report

import results_fixtures as fixtures

#: The quickstart's ensembles: (method, rho, members' mean sharpness, DER, EIR).
METHODS = (("sgd", None, 0.155, 0.9024, 0.16), ("sam", 0.02, 0.127, 0.7803, 0.14), ("sam", 0.05, 0.122, 0.9000, 0.17),
           ("sam", 0.1, 0.101, 0.7397, 0.15), ("sharpbalance", 0.05, 0.113, 1.1270, 0.21))


def _evaluated(path, *, accuracy, sharpness, der, eir, members=3):
    """Clean and corrupted rows (two corruptions at severities 1 and 3) and sharpness rows."""
    diverse = members > 1  # a one-member run stores no diversity
    rows = fixtures.evaluation_rows([accuracy - 0.01 * i for i in range(members)],
                                    {"accuracy": accuracy + 0.01, **({"der": der * 0.8, "eir": eir / 2} if diverse else {})})
    for corruption in ("fog", "contrast"):
        for severity in (1, 3):
            drop = 0.05 * severity
            rows += fixtures.evaluation_rows([accuracy - drop - 0.01 * i for i in range(members)],
                                             {"accuracy": accuracy - drop + 0.02, **({"der": der, "eir": eir}
                                                                                    if diverse else {})},
                                             corruption=corruption, severity=severity)
    rows += fixtures.sharpness_rows([sharpness * (1 + 0.01 * i) for i in range(members)], rho=0.1)
    run_folder.append_results(path, rows)
    return path


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """Five 3-member ensembles shaped like the quickstart's (15 members: a comparison, not a zoo)."""
    root = tmp_path_factory.mktemp("comparison")
    paths = []
    for i, (method, rho, sharpness, der, eir) in enumerate(METHODS):
        path = fixtures.make_run(root / "runs" / f"{method}-{rho}", method=method, rho=rho, lr=0.05)
        paths.append(_evaluated(path, accuracy=0.95 - 0.004 * i, sharpness=sharpness, der=der, eir=eir))
    report = write_report(paths, root / "report", sharpness="sharpness/worst/l2/adaptive@0.1", formats=("png",))
    return paths, report


def _keys(report) -> list[str]:
    return [section.key for section in report.page.sections]


def _section(report, key):
    return next(section for section in report.page.sections if section.key == key)


def test_a_method_comparison_leads_with_its_question_summary_and_tradeoff(comparison):
    _, report = comparison
    assert report.page.title == "How do sharpness and diversity trade off across SAM, SGD and SharpBalance?"
    assert report.page.lede.startswith("5 runs (ensembles of 3 members) of mlp on cifar10, grouped by method: "
                                       "sam (3), sgd (1), sharpbalance (1)")
    # 15 members, but only the method and its own radius vary: no rank correlations, asked for by nobody
    assert _keys(report) == ["summary", "tradeoff", "paired", "corruptions", "quantities", "runs"]
    assert not (report.directory / "tables" / "correlation.csv").exists()
    tradeoff = _section(report, "tradeoff").blocks[0]
    assert [figure.name for figure in tradeoff.figures] == ["tradeoff-eir"]
    assert tradeoff.tables[0].links[0].href == "tables/tradeoff-beta.csv" and not tradeoff.wide
    assert "sam: β = " in tradeoff.text and "n = 3 < 5: too few ensembles" in tradeoff.text
    index = report.index.read_text()
    places = [index.index(f'id="{key}"') for key in _keys(report)] + [index.index('id="not-measured"')]
    assert places == sorted(places)
    assert index.index("<details>") > places[-2]  # not measured: collapsed, after the runs
    assert all(note in report.notes for note in report.page.not_measured)
    assert any("figure barriers skipped" in note for note in report.page.not_measured)
    assert not any("sharpdiv " in note for note in report.page.notes)  # commands to run are in the list only


def test_each_corruption_figure_sits_beside_the_table_of_its_numbers(comparison):
    _, report = comparison
    blocks = _section(report, "corruptions").blocks
    pairs = [([figure.name for figure in block.figures], [table.links[0].href for table in block.tables])
             for block in blocks]
    assert pairs == [(["severity"], ["tables/severity-ensemble.csv", "tables/severity-members.csv"]),
                     (["corruptions-accuracy"], ["tables/corruptions-accuracy.csv"]),
                     (["corruptions-der"], ["tables/corruptions-der.csv"])]


def test_the_headline_holds_each_groups_mean_and_t_interval(comparison):
    _, report = comparison
    headline = pd.read_csv(report.directory / "tables" / "headline.csv")
    per_run = pd.read_csv(report.directory / "tables" / "summary-runs.csv")
    assert set(headline["quantity"]) >= {"member accuracy ID (%)", "ensemble accuracy OOD (%)", "DER OOD", "EIR OOD",
                                         "sharpness sharpness/worst/l2/adaptive@0.1"}
    sam = per_run[per_run["group"] == "sam"]["DER OOD"].to_numpy()
    half = stats.t.ppf(0.975, 2) * sam.std(ddof=1) / np.sqrt(3)
    row = headline[(headline["method"] == "sam") & (headline["quantity"] == "DER OOD")].iloc[0]
    assert (row["mean"], row["ci_low"], row["ci_high"], row["n"]) == pytest.approx(
        (sam.mean(), sam.mean() - half, sam.mean() + half, 3))
    sgd = headline[(headline["method"] == "sgd") & (headline["quantity"] == "DER OOD")].iloc[0]
    assert np.isnan(sgd["ci_low"]) and sgd["n"] == 1  # one run: no interval
    table = _section(report, "summary").blocks[0].tables[0]
    cells = {row[0]: row for row in table.rows}
    column = table.header.index("DER OOD")
    # one decimal count down the column: 4 significant digits of its largest value (sharpbalance's 1.127)
    assert cells["sam"][column] == (f"{sam.mean():.3f}", f"[{sam.mean() - half:.3f}, {sam.mean() + half:.3f}]")
    assert cells["sgd"][column] == ("0.902", "")


def _decimals(cell) -> int | None:
    text = cell[0] if isinstance(cell, tuple) else cell
    number = re.match(r"[+−-]?\d+(?:\.(\d+))?", text)
    return None if number is None else len(number.group(1) or "")


@pytest.mark.parametrize("key", ["summary", "quantities", "corruptions"])
def test_every_number_column_of_the_page_has_one_decimal_count(comparison, key):
    _, report = comparison
    tables = [table for block in _section(report, key).blocks for table in block.tables]
    assert tables
    for table in tables:
        for column, name in enumerate(table.header[1:], start=1):
            counts = {_decimals(row[column]) for row in table.rows} - {None}
            assert len(counts) <= 1, (table.title, name, [row[column] for row in table.rows])


def test_the_table_files_keep_their_format(comparison):
    """The study pages embed the Markdown files: they keep 4 significant digits per number."""
    _, report = comparison
    der = (report.directory / "tables" / "corruptions-der.md").read_text()
    assert "| sgd | fog | 0.9024 | 0.9024 | 0.9024 |" in der and "| sharpbalance | fog | 1.127 | 1.127 | 1.127 |" in der
    summary = (report.directory / "tables" / "summary.md").read_text()
    assert "| 0.9024 |" in summary and "| 1.127 |" in summary


def test_the_runs_table_shows_the_settings_that_differ_and_the_rest_once(comparison):
    paths, report = comparison
    settings = _section(report, "runs").blocks[0]
    assert settings.tables[0].header == ("run", "method", "rho")  # sgd's rho is unset: it differs too
    assert "dataset cifar10" in settings.text and "lr 0.05" in settings.text and "seeds 13,17,27" in settings.text
    full = pd.read_csv(report.directory / "tables" / "runs.csv")
    assert len(full) == len(paths) and {"run.dataset", "run.lr", "run.method"} <= set(full.columns)
    provenance = _section(report, "runs").blocks[1]
    assert provenance.tables[0].header[:2] == ("run", "path") and "created" in provenance.tables[0].header
    digests = pd.read_csv(report.directory / "tables" / "provenance.csv").set_index("run")["weights digest"]
    assert digests.notna().all()


# ----------------------------------------------------------------------------------------------
# a zoo, and one imported run


def _zoo(root, n_runs=MIN_RANKED):
    """One-member runs varying the learning rate and weight decay (a zoo of Jiang et al.'s kind)."""
    paths = []
    for i in range(n_runs):
        lr, weight_decay = (0.1, 0.05, 0.02, 0.01)[i % 4], (0.0, 5e-4)[i // 4 % 2]
        path = fixtures.make_run(root / f"lr{lr}-wd{weight_decay}", method="sgd", seeds=(13 + i,), lr=lr,
                                 weight_decay=weight_decay)
        paths.append(_evaluated(path, accuracy=0.9 - 0.01 * i, sharpness=0.1 + 0.02 * i, der=0.5, eir=0.1,
                                members=1))
    return paths


def test_a_zoo_leads_with_the_rank_correlations_of_its_members(tmp_path):
    paths = _zoo(tmp_path / "runs")
    report = write_report(paths, tmp_path / "report", sharpness="sharpness/worst/l2/adaptive@0.1",
                          formats=("png",), group_by="lr")
    assert report.page.title == CORRELATION_TITLE and _keys(report)[0] == "correlation"
    blocks = _section(report, "correlation").blocks
    assert "strongest rank correlation" in blocks[0].text and blocks[0].figures
    tables = [table for block in blocks for table in block.tables]
    # the per-member τ/ψ table (one-member runs: no per-ensemble one), then how each measure moves
    # with each setting alone
    assert len(tables) == 2 and "one point per member" in tables[0].title
    assert tables[1].title.startswith("How each measure and target moves with each setting alone")
    assert "tradeoff" not in _keys(report)  # one-member runs have no diversity, and nothing asks for one
    assert not any("der" in note or "trade-off" in note for note in report.page.notes + report.page.not_measured)
    assert _section(report, "correlation").title != report.page.title  # the question once, as the page's title


def test_fewer_models_than_a_zoo_needs_get_no_correlation_section_unasked(tmp_path):
    paths = _zoo(tmp_path / "runs", n_runs=MIN_RANKED - 1)
    report = write_report(paths, tmp_path / "report", formats=("png",), group_by="lr")
    assert "correlation" not in _keys(report) and not any("correlation" in note for note in report.notes)
    asked = write_report(paths, tmp_path / "asked", formats=("png",), group_by="lr", correlate_with="test_error")
    assert _keys(asked)[0] == "correlation"


def test_one_imported_run_gets_its_numbers_without_a_trade_off(tmp_path):
    path = fixtures.make_run(tmp_path / "sam-0.2", method="sam", rho=0.2)
    _evaluated(path, accuracy=0.93, sharpness=0.2, der=0.7, eir=0.1)
    report = write_report([path], tmp_path / "report", sharpness="sharpness/worst/l2/adaptive@0.1", formats=("png",))
    assert report.page.title == "Accuracy, diversity and sharpness of sam-0.2"
    assert report.page.lede == "1 run (an ensemble of 3 members) of mlp on cifar10."
    assert _keys(report) == ["summary", "corruptions", "quantities", "runs"]
    assert not any("trade-off" in note for note in report.page.notes)  # one ensemble never has one
    assert not (report.directory / "tables" / "tradeoff-beta.csv").exists()
    settings = _section(report, "runs").blocks[0]
    assert settings.tables[0].header == ("run",) and "method sam" in settings.text
