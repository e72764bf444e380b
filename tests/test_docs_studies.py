"""Every study page under docs/studies/ embeds the report's tables as `sharpdiv report` writes them
now from the page's committed fixture of stored rows, and has its figures beside it
(reports/study_pages.py; docs/studies/refresh.py re-embeds them)."""
from __future__ import annotations

from pathlib import Path

import pytest

from reports.study_pages import check_copies, check_page, read_page

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "studies").glob("*.md"))


def test_there_are_study_pages():
    assert PAGES, "docs/studies/ holds no study page"


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_embedded_tables_are_what_the_report_writes_from_the_fixture(page):
    parsed = read_page(page, ROOT)
    assert parsed.tables, f"{page.name} embeds no table of its report"
    differences = check_page(page, ROOT)
    assert not differences, "; ".join(map(str, differences)) + " (run python docs/studies/refresh.py " \
        f"{page.relative_to(ROOT)})"


def test_the_readme_copies_the_study_pages_tables_as_they_are():
    differences = check_copies(ROOT / "README.md", ROOT / "docs" / "studies")
    assert not differences, "; ".join(map(str, differences)) + " (run python docs/studies/refresh.py docs/studies/*.md)"


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_the_fixture_holds_no_weights(page):
    fixture = read_page(page, ROOT).fixture
    assert not [path for path in fixture.rglob("*") if path.suffix in (".safetensors", ".pt", ".pth")]


def test_the_sharpbalance_sweep_fits_each_beta_over_twelve_ensembles_and_measures_what_its_report_reads():
    from collections import Counter

    from ensembles.studies.sweep import read_sweep
    from reports.collect import SharpnessSpec

    sweep = read_sweep(ROOT / "examples" / "digits-sharpbalance.toml")
    counts = Counter(job.settings.method for job in sweep.jobs)
    assert counts == {"sgd": 3, "sam": 12, "sharpbalance": 12}
    radii = {job.settings.rho for job in sweep.jobs if job.settings.method == "sam"}
    assert len(radii) >= 4 and {job.settings.rho for job in sweep.jobs if job.settings.method == "sharpbalance"} == radii
    assert len({job.settings.seeds for job in sweep.jobs}) == 3
    spec = SharpnessSpec.parse(sweep.report["sharpness"])
    sharpness = [m.options for m in sweep.measurements if m.command == "sharpness"]
    assert any(spec.rho in options["rhos"] and options.get("kind", "worst") == "worst" for options in sharpness)
    evaluate = next(m.options for m in sweep.measurements if m.command == "evaluate")
    assert evaluate["corruptions"] == "all" and list(evaluate["severities"]) == [1, 2, 3, 4, 5]
