"""The whole report (reports.site, `sharpdiv report`): index.html links every file it wrote, its
tables hold the study's numbers, the command runs end to end and names the command for what a run
lacks, report folders never replace a user's files, a bad results part is named, paths that are
not run folders are skipped, and barriers before and after alignment sit next to DER and EIR."""

from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from ensembles.runs import run_folder
from ensembles.runs.files import MARKER_FILE as MARKER
from reports.site import write_report

import results_fixtures as fixtures
from measured_runs import CONNECTIVITY, barrier_rows, make_seeded_run
from tiny_runs import invoke, one_error_line


# ----------------------------------------------------------------------------------------------
# the nine-run study's report: index.html and its tables


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attributes):  # files, not the page's #section anchors nor its empty data: icon
        self.targets += [value for name, value in attributes
                         if name in ("href", "src") and not value.startswith(("#", "data:"))]


def test_index_links_every_written_file_and_nothing_else(study_report):
    _, _, report = study_report
    parser = Links()
    parser.feed(report.index.read_text(encoding="utf-8"))
    linked = {(report.directory / target).resolve() for target in parser.targets}
    assert all(path.is_file() for path in linked), sorted(p for p in linked if not p.is_file())
    # The folder's .sharpdiv marker (ensembles.folders) is bookkeeping, not part of the report.
    written = {path.resolve() for path in report.directory.rglob("*") if path.is_file()} - {
        report.index.resolve(), (report.directory / ".sharpdiv").resolve()}
    assert written == linked
    names = {path.name for path in written}
    assert {"summary.csv", "summary.md", "summary.tex", "severity-ensemble.tex", "tradeoff-beta.csv",
            "runs.csv", "README.md", "tradeoff-eir.png", "plane-sam-0.png"} <= names
    readme = report.readme.read_text(encoding="utf-8")
    assert all(path.relative_to(report.directory).as_posix() in readme for path in written - {report.readme.resolve()})


def test_report_tables_hold_the_study_numbers(study_report):
    paths, empty, report = study_report
    beta = pd.read_csv(report.directory / "tables" / "tradeoff-beta.csv").set_index("method")
    for method, (_, exponent) in fixtures.STUDY_LAWS.items():
        assert beta.loc[method, "beta"] == pytest.approx(exponent)
        assert beta.loc[method, "n"] == 3
    summary = pd.read_csv(report.directory / "tables" / "summary.csv")
    sam = summary[(summary["method"] == "sam") & (summary["quantity"] == "member accuracy ID (%)")].iloc[0]
    # sam members 0.91, 0.90, 0.89 on clean data in every run; the unmeasured sam run has no value
    assert sam["mean"] == pytest.approx(90.0) and sam["count"] == 3
    latex = (report.directory / "tables" / "severity-ensemble.tex").read_text()
    assert "\\begin{tabular}" in latex and "$\\pm$" in latex and "\\toprule" in latex
    assert any(f"run {empty} has no evaluation: run `sharpdiv evaluate {empty}`" == note for note in report.notes)


# ----------------------------------------------------------------------------------------------
# the command


def test_report_command_end_to_end_names_missing_measurements(tmp_path):
    measured = []
    for r, sharpness in enumerate((0.2, 0.4, 0.8)):
        path = fixtures.make_run(tmp_path / f"sam-{r}", method="sam", rho=0.05 * (r + 1))
        rows = fixtures.evaluation_rows([0.8, 0.8, 0.8], {"accuracy": 0.85, "der": 0.3 * sharpness ** 0.5, "eir": 0.2})
        run_folder.append_results(path, rows + fixtures.sharpness_rows([sharpness] * 3))
        measured.append(path)
    unsharp = fixtures.make_run(tmp_path / "no-sharpness", method="sgd")
    run_folder.append_results(unsharp, fixtures.evaluation_rows([0.7, 0.7, 0.7], {"accuracy": 0.75, "der": 0.5}))
    out = tmp_path / "report"
    result = CliRunner().invoke(cli.main, ["report", *map(str, measured), str(unsharp), "--out", str(out),
                                           "--diversity-on", "test", "--sharpness", "sharpness/worst/l2/adaptive@0.5"])
    assert result.exit_code == 0, result.output
    assert f"open {out / 'index.html'}" in result.stdout
    assert f"run {unsharp} has no sharpness/worst/l2/adaptive@0.5: run `sharpdiv sharpness {unsharp} --rho 0.5`" \
        in result.stderr
    assert f"run {unsharp} has no corrupted-data evaluation: run `sharpdiv evaluate {unsharp} --corruptions all`" \
        in result.stderr
    for name in ("tradeoff-eir.png", "tradeoff-eir.svg", "methods.svg"):
        assert (out / "figures" / name).stat().st_size > 1000
    assert "<svg" in (out / "figures" / "tradeoff-eir.svg").read_text()
    beta = pd.read_csv(out / "tables" / "tradeoff-beta.csv").set_index("method")
    assert beta.loc["sam", "beta"] == pytest.approx(0.5)
    assert np.isnan(beta.loc["sgd", "beta"]) and "no run has both" in beta.loc["sgd", "note"]
    assert "sharpdiv sharpness" in (out / "index.html").read_text()


@pytest.mark.parametrize("options, message", [
    (["--group-by", "depth"], "no run has the field 'depth'"),
    (["--baseline", "adam"], "--baseline 'adam' is not a method"),
    (["--sharpness", "sharpness/worst/l2/adaptive"], "names no radius"),
    (["--sharpness", "sharpness/worst/l3/adaptive@0.5"], "the metric is sharpness/"),
    (["--sharpness", "bogus"], "expected sharpness/<worst|average>/<l2|linf>/<adaptive|standard>@RHO"),
    (["--sharpness", "bogus@0.5"], "expected sharpness/<worst|average>/<l2|linf>/<adaptive|standard>@RHO"),
    (["--sharpness", "hessian/eigenvalue"], "expected sharpness/<worst|average>/<l2|linf>/<adaptive|standard>@RHO"),
    (["--sharpness", "hessian/trace@0.5"], "hessian/trace takes no radius"),
    (["--sharpness", "sharpness/worst/l2/adaptive@-1"], "the radius must be a positive number"),
])
def test_report_command_bad_input_exits_2_with_one_line(tmp_path, options, message):
    path = fixtures.make_run(tmp_path / "run")
    run_folder.append_results(path, fixtures.evaluation_rows([0.5, 0.6, 0.7], {"accuracy": 0.7}))
    result = CliRunner().invoke(cli.main, ["report", str(path), "--out", str(tmp_path / "out"), *options])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before anything is written


# ----------------------------------------------------------------------------------------------
# report --out never replaces a user's files


def test_report_refuses_a_folder_holding_a_users_files_unless_forced(tmp_path):
    run = fixtures.measured_run(tmp_path / "run")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my thesis notes\n")
    (out / "index.html").write_text("<p>my homepage</p>\n")
    refused = CliRunner().invoke(cli.main, ["report", str(run), "--out", str(out)])
    line = one_error_line(refused)
    assert str(out) in line and "--force" in line and "README.md" in line
    assert (out / "README.md").read_text() == "my thesis notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "index.html"]  # nothing written
    forced = CliRunner().invoke(cli.main, ["report", str(run), "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / "README.md").read_text().startswith("# sharpdiv report") and (out / MARKER).is_file()
    again = CliRunner().invoke(cli.main, ["report", str(run), "--out", str(out)])  # now sharpdiv's own folder
    assert again.exit_code == 0, again.output


def test_report_writes_into_new_empty_and_earlier_report_folders(tmp_path):
    run = fixtures.measured_run(tmp_path / "run")
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new", empty):
        write_report([run], out, formats=("png",))
        assert (out / MARKER).is_file() and (out / "index.html").is_file()
    (empty / MARKER).unlink()  # a report written before folders were marked is still sharpdiv's
    write_report([run], empty, formats=("png",))


# ----------------------------------------------------------------------------------------------
# a bad results part, and paths that are not run folders


def test_report_with_a_bad_part_warns_and_reports_the_rest(tmp_path):
    run = fixtures.measured_run(tmp_path / "run")
    corrupt, foreign = fixtures.bad_results_parts(run)
    result = CliRunner().invoke(cli.main, ["report", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert str(corrupt.name) in result.stderr and "Traceback" not in result.output
    summary = pd.read_csv(tmp_path / "out" / "tables" / "summary.csv")
    assert summary.set_index("quantity").loc["member accuracy ID (%)", "mean"] == pytest.approx(80.0)


def test_report_of_a_glob_skips_entries_that_are_not_runs(tmp_path):
    root = tmp_path / "runs"
    paths = fixtures.write_two_methods(root)
    (root / "sweep-log.jsonl").write_text("{}\n")
    (root / "notes").mkdir()
    entries = sorted(str(entry) for entry in root.iterdir())  # what the shell makes of runs/*
    result = CliRunner().invoke(cli.main, ["report", *entries, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "sharpdiv: note: skipped" in result.stderr and "sweep-log.jsonl" in result.stderr
    assert len(pd.read_csv(tmp_path / "out" / "tables" / "runs.csv")) == len(paths)
    only_files = CliRunner().invoke(cli.main, ["report", str(root / "sweep-log.jsonl"), str(root / "notes"),
                                               "--out", str(tmp_path / "none")])
    assert only_files.exit_code == 2 and "none of the 2 paths" in only_files.stderr
    assert "Traceback" not in only_files.output


def test_report_shows_barriers_before_and_after_alignment_next_to_der_and_eir(tmp_path):
    import results_fixtures as fixtures
    from reports.site import write_report

    paths = [make_seeded_run(tmp_path / f"run-{seed}", n_members=2, seed=10 * seed) for seed in (1, 2)]
    eirs = {}
    for seed, path in zip((1, 2), paths):
        result = invoke("connectivity", path, *CONNECTIVITY, "--align", "weight,none")
        assert result.exit_code == 0, result.output + repr(result.exception)
        eirs[path.name] = 0.1 * seed
        run_folder.append_results(path, fixtures.evaluation_rows(
            [0.5, 0.6, 0.7], {"accuracy": 0.7, "der": 0.3 * seed, "eir": eirs[path.name]}))
    result = invoke("report", *paths, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output + repr(result.exception)

    table = (tmp_path / "report" / "tables" / "connectivity.csv")
    numbers = __import__("pandas").read_csv(table).set_index("run")
    for path in paths:
        rows = barrier_rows(path)
        for kind, column in (("none", "mean barrier, no alignment"), ("weight", "mean barrier, weight alignment")):
            assert numbers.loc[path.name, column] == pytest.approx(rows[rows["alignment"] == kind]["value"].mean())
        assert numbers.loc[path.name, "EIR ID"] == pytest.approx(eirs[path.name])
        assert numbers.loc[path.name, "DER ID"] == pytest.approx(0.3 if path.name.endswith("1") else 0.6)
    assert (tmp_path / "report" / "figures" / "barrier-eir.png").is_file()
    assert "connectivity" in (tmp_path / "report" / "README.md").read_text()

    report = write_report(paths, tmp_path / "again")
    scatter = report.rendered["barrier-eir"].figures[0].axes[0]
    points = {(round(float(x), 9), round(float(y), 9)) for collection in scatter.collections
              for x, y in collection.get_offsets()}
    expected = {(round(float(numbers.loc[p.name, c]), 9), round(eirs[p.name], 9)) for p in paths
                for c in ("mean barrier, no alignment", "mean barrier, weight alignment")}
    assert points == expected
    heatmaps = [ax for ax in report.rendered["barriers"].figures[0].axes if ax.get_xlabel() == "Member"]
    assert len(heatmaps) == 2 and "weight matching" in heatmaps[1].get_title()
    loss_ax = report.rendered["interpolation"].figures[0].axes[0]
    labels = {line.get_label() for line in loss_ax.get_lines()}
    assert labels == {"members 0–1", "members 0–1, weight-aligned"}
