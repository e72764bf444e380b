"""Study pages: the refresh embeds the report's own tables, makes a weight-free fixture from a
sweep's runs whose report has the same tables, and the check finds any table that is not what the
report writes now."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import results_fixtures as fixtures
from ensembles.models.zoo import build
from ensembles.runs import run_folder
from ensembles.studies.sweep import read_sweep
from landscape.errors import InputError
from reports.site import write_report
from reports.study_pages import check_page, read_page, refresh_page

SWEEP = """
name = "study"
[base]
dataset = "cifar10"
model = "mlp"
[grid]
method = ["sgd", "sam"]
rho = [0.05, 0.1]
seeds = [[13, 17, 27], [113, 117, 127]]
[report]
group_by = "method"
sharpness = "sharpness/worst/l2/adaptive@0.5"
"""

PAGE = """<!-- study
sweep: examples/study.toml
keep: {keep}
scopes: ensemble, member
splits: train, test
figures: tradeoff-eir
-->
# A study

Numbers below are embedded by the refresh.

<!-- table: tables/tradeoff-beta.md -->
<!-- end table -->

<!-- table: tables/paired-comparisons.md -->
<!-- end table -->
"""
KEEP = "accuracy, eir, der, sharpness/worst/l2/adaptive"


def _make_study(base: Path):
    """A repository with a sweep file and a study page, and the sweep's root with finished runs."""
    repo, root = base / "repo", base / "sweep-root"
    (repo / "examples").mkdir(parents=True)
    (repo / "examples" / "study.toml").write_text(SWEEP)
    (repo / "docs" / "studies").mkdir(parents=True)
    page = repo / "docs" / "studies" / "study.md"
    page.write_text(PAGE.format(keep=KEEP))
    for number, job in enumerate(read_sweep(repo / "examples" / "study.toml").jobs):
        settings = job.settings
        run = fixtures.make_run(root / job.name, method=settings.method, seeds=settings.seeds,
                                rho=None if settings.method == "sgd" else settings.rho)
        for index in range(3):
            torch.manual_seed(10 * number + index)
            run_folder.save_member(run, index, build("mlp", 10, input_size=4, hidden=[2]))
        scale = 1 + number / 10
        rows = fixtures.sharpness_rows([0.1 * scale, 0.2 * scale, 0.3 * scale])
        for corruption, severity in [(None, None), ("fog", 1), ("fog", 3)]:
            accuracy = 0.9 - 0.05 * (severity or 0) + 0.003 * number
            rows += fixtures.evaluation_rows([accuracy - 0.02] * 3, {"accuracy": accuracy, "eir": 0.1 * scale,
                                                                     "der": 0.5 * scale ** 0.4, "nll": 0.3},
                                             corruption=corruption, severity=severity,
                                             sub_ensembles={2: {"accuracy": accuracy - 0.01}})
        validation = fixtures.evaluation_rows([0.5] * 3, {"accuracy": 0.6})
        rows += [{**row, "split": "val"} for row in validation]
        run_folder.append_results(run, rows)
    return repo, page, root


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The study, and a copy of it after one refresh from the sweep's root (reports take seconds each)."""
    base = tmp_path_factory.mktemp("study")
    repo, page, root = _make_study(base / "before")
    before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
    shutil.copytree(base / "before", base / "refreshed")
    refreshed = base / "refreshed" / "repo"
    done = refresh_page(refreshed / "docs" / "studies" / "study.md", base / "refreshed" / "sweep-root", root=refreshed)
    return base, done, before


@pytest.fixture
def study(made, tmp_path):
    """A fresh copy of the study before the refresh."""
    shutil.copytree(made[0] / "before", tmp_path / "study")
    return tmp_path / "study" / "repo", tmp_path / "study" / "repo" / "docs" / "studies" / "study.md", \
        tmp_path / "study" / "sweep-root"


@pytest.fixture
def refreshed(made, tmp_path):
    """A fresh copy of the study after the refresh."""
    shutil.copytree(made[0] / "refreshed", tmp_path / "study")
    return tmp_path / "study" / "repo", tmp_path / "study" / "repo" / "docs" / "studies" / "study.md", \
        tmp_path / "study" / "sweep-root"


def test_refresh_embeds_the_reports_tables_from_a_weight_free_fixture_that_checks_clean(made, refreshed):
    repo, page, root = refreshed
    done = made[1]
    parsed = read_page(page, repo)
    runs = sorted(parsed.fixture.iterdir())
    assert [run.name for run in runs] == sorted(job.name for job in read_sweep(parsed.sweep).jobs)
    assert not list(parsed.fixture.rglob("member-*")) and not list(parsed.fixture.rglob("logits"))
    kept = pd.concat([run_folder.read_results(run, current_only=True) for run in runs])
    assert set(kept["metric"]) == {"accuracy", "eir", "der", "sharpness/worst/l2/adaptive"}  # not nll
    assert set(kept["scope"]) == {"ensemble", "member-0", "member-1", "member-2"}  # not ensemble@2
    assert set(kept["split"]) == {"train", "test"}  # not val
    originals = pd.concat([run_folder.read_results(run, current_only=True) for run in sorted(root.iterdir())])
    assert len(originals) > len(kept)
    assert parsed.figure_file("tradeoff-eir").read_bytes().startswith(b"\x89PNG")
    assert any(line.startswith("fixture: 6 runs") for line in done)
    assert check_page(page, repo) == []
    # the embedded tables are those of the report over the sweep's own runs (with their weights)
    direct = write_report(sorted(root.iterdir()), repo / "direct", formats=(), group_by="method",
                          sharpness="sharpness/worst/l2/adaptive@0.5")
    text = page.read_text()
    for table in ("tables/tradeoff-beta.md", "tables/paired-comparisons.md"):
        assert (direct.directory / table).read_text().strip() in text
    assert "sharpbalance" not in text and "sam − sgd" in text


def test_check_names_a_table_that_is_not_what_the_report_writes(refreshed):
    repo, page, root = refreshed
    text = page.read_text()
    marker = "<!-- table: tables/tradeoff-beta.md -->"
    start = text.index(marker) + len(marker)
    row = next(line for line in text[start:].splitlines() if line.startswith("| sam |"))
    page.write_text(text.replace(row, row.replace("| sam |", "| sam | 9.999 |", 1)))
    differences = check_page(page, repo)
    assert [difference.table for difference in differences] == ["tables/tradeoff-beta.md"]
    refresh_page(page, root=repo)  # without a sweep root: the tables are embedded again from the fixture
    assert page.read_text() == text  # (the refresh itself fails unless the page then checks clean)


def test_a_missing_figure_or_an_unknown_table_is_found(refreshed):
    repo, page, root = refreshed
    read_page(page, repo).figure_file("tradeoff-eir").unlink()  # a figure the report draws is made by the refresh
    page.write_text(page.read_text() + "\n<!-- table: tables/no-such-table.md -->\n<!-- end table -->\n")
    found = {difference.table for difference in check_page(page, repo)}
    assert found == {"tradeoff-eir.png", "tables/no-such-table.md"}


def test_a_figure_the_report_does_not_draw_is_refused(refreshed):
    repo, page, root = refreshed
    page.write_text(page.read_text().replace("figures: tradeoff-eir", "figures: tradeoff-eir, hessian-density"))
    with pytest.raises(InputError, match="draws no hessian-density figure"):
        refresh_page(page, root=repo)


def test_a_fixture_without_rows_a_table_reads_is_refused_naming_the_table(study):
    repo, page, root = study
    page.write_text(PAGE.format(keep="accuracy, eir, sharpness/worst/l2/adaptive"))  # der left out: β needs it
    with pytest.raises(InputError, match=r"tables/tradeoff-beta.md.*keep"):
        refresh_page(page, root, root=repo)
    assert not read_page(page, repo).fixture.exists()  # nothing written


def test_sweep_runs_are_not_touched_and_a_page_without_fixture_says_how_to_make_it(made, study):
    repo, page, root = study
    with pytest.raises(InputError, match="refresh.py"):
        check_page(page, repo)
    base, _, before = made
    after = {path.relative_to(base / "refreshed"): path.read_bytes()
             for path in (base / "refreshed" / "sweep-root").rglob("*") if path.is_file()}
    assert after == {path.relative_to(base / "before"): content for path, content in before.items()}


def test_a_page_without_a_study_block_or_with_an_unknown_key_is_refused(tmp_path):
    page = tmp_path / "docs" / "studies" / "x.md"
    page.parent.mkdir(parents=True)
    page.write_text("# no block\n")
    with pytest.raises(InputError, match="no study block"):
        read_page(page, tmp_path)
    page.write_text("<!-- study\nsweep: a.toml\nkeep: accuracy\ncolour: red\n-->\n")
    with pytest.raises(InputError, match="colour"):
        read_page(page, tmp_path)


def test_a_page_embeds_only_the_reports_tables(tmp_path):
    page = tmp_path / "docs" / "studies" / "x.md"
    page.parent.mkdir(parents=True)
    page.write_text("<!-- study\nsweep: a.toml\nkeep: accuracy\n-->\n<!-- table: ../../../etc/passwd -->\n<!-- end table -->\n")
    with pytest.raises(InputError, match="tables/<name>.md"):
        read_page(page, tmp_path)


def test_a_readme_copy_of_a_pages_table_is_checked_and_refreshed_from_the_page(tmp_path):
    from reports.study_pages import check_copies, refresh_copies

    pages = tmp_path / "studies"
    pages.mkdir()
    (pages / "zoo.md").write_text("<!-- table: tables/correlation.md -->\n| a |\n|---|\n| 1 |\n<!-- end table -->\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table: zoo:tables/correlation.md -->\n| a |\n|---|\n| 2 |\n<!-- end table -->\nend\n")
    (difference,) = check_copies(readme, pages)
    assert difference.table == "zoo:tables/correlation.md"
    refresh_copies(readme, pages)
    assert readme.read_text() == "intro\n<!-- table: zoo:tables/correlation.md -->\n| a |\n|---|\n| 1 |\n<!-- end table -->\nend\n"
    assert check_copies(readme, pages) == []
    readme.write_text("<!-- table: zoo:tables/nothing.md -->\n<!-- end table -->\n")
    with pytest.raises(InputError, match="does not embed"):
        check_copies(readme, pages)
