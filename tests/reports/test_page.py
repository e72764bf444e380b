"""The report's page (reports.page): tables and figures as the page shows them, the templates that
render them (escaped HTML, code spans in notes, a README that starts as sharpdiv's), and setup.cfg
shipping the templates in a non-editable install."""
import configparser
import fnmatch
from pathlib import Path

import pandas as pd
from PIL import Image

from reports import page as pages

ROOT = Path(__file__).resolve().parents[2]


def test_every_template_is_package_data_in_setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    patterns = parser["options.package_data"]["reports"].split()
    templates = sorted(path.relative_to(ROOT / "reports").as_posix()
                       for path in (ROOT / "reports" / "templates").iterdir() if path.is_file())
    assert templates, "reports/templates/ holds no template"
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in templates), (templates, patterns)


def test_a_table_has_its_index_first_and_knows_its_word_columns(tmp_path):
    text = pd.DataFrame({"corruption": ["fog", "snow"], "1": ["9.50 ± 0.10", "—"], "ci": [("97.25", "[96.51, 97.99]"),
                                                                                         ("−0.01", "")]},
                        index=pd.Index(["sam", "sgd"], name="method"))
    (tmp_path / "t.csv").write_text("x\n")
    table = pages.table(text, "A title", [tmp_path / "t.csv"], tmp_path)
    assert table.header == ("method", "corruption", "1", "ci")
    assert table.rows[0] == ("sam", "fog", "9.50 ± 0.10", ("97.25", "[96.51, 97.99]"))
    assert table.text_columns == (True, True, False, False)
    assert table.links == (pages.Link("t.csv", "CSV"),)
    plain = pages.table(text.reset_index(), "no index", [], tmp_path, index=False)
    assert plain.header[0] == "method" and len(plain.header) == 4


def _png(path: Path, size) -> Path:
    Image.new("RGB", size, "white").save(path)
    return path


def test_a_figure_is_shown_at_half_its_pixels_and_links_its_svg(tmp_path):
    png = _png(tmp_path / "tradeoff-eir.png", (991, 770))
    svg = tmp_path / "tradeoff-eir.svg"
    svg.write_text("<svg/>")
    figure = pages.figure([png, svg], tmp_path, "caption")
    assert (figure.width, figure.height) == (496, 385) and not figure.wide
    assert figure.image == "tradeoff-eir.png" and figure.target == "tradeoff-eir.svg"
    assert [link.kind for link in figure.links] == ["PNG", "SVG"]
    alone = pages.figure([_png(tmp_path / "corruptions.png", (1457, 434))], tmp_path)
    assert alone.target == "corruptions.png" and alone.wide and alone.name == "corruptions"
    assert pages.Block(figures=(figure,), tables=()).wide  # nothing to sit beside
    table = pages.Table("t", ("a",), (("1",),))
    assert not pages.Block(figures=(figure,), tables=(table,)).wide
    assert pages.Block(figures=(figure, alone), tables=(table,)).wide
    assert pages.Block(figures=(figure, alone)).figure_width == 728
    svg_only = pages.figure([svg], tmp_path)  # sharpdiv report with formats=("svg",)
    assert (svg_only.image, svg_only.target, svg_only.width) == ("tradeoff-eir.svg", "tradeoff-eir.svg", 0)


def test_the_page_escapes_what_runs_name_and_shows_commands_as_code():
    table = pages.Table("<b>title</b>", ("run", "value"), (("<script>x</script>", ("1.00", "[0.5, 1.5]")),))
    page = pages.Page(title="Q & <A>", lede="runs", facts=(("written", "now"),),
                      sections=(pages.Section("summary", "Summary", (pages.Block(tables=(table,)),)),),
                      notes=("mixed <settings>",), not_measured=("run r has no evaluation: run `sharpdiv evaluate r<1>`",))
    index, readme = pages.render(page)
    assert "<script>x" not in index and "&lt;script&gt;x&lt;/script&gt;" in index
    assert "Q &amp; &lt;A&gt;" in index and '<span class="detail">[0.5, 1.5]</span>' in index
    assert "<code>sharpdiv evaluate r&lt;1&gt;</code>" in index and "mixed &lt;settings&gt;" in index
    # what was not measured is one collapsed list at the end, after the sections and the notes
    assert index.index('id="summary"') < index.index('id="notes"') < index.index("<details>")
    assert "<details open" not in index
    assert readme.startswith("# sharpdiv report\n")  # what reports.site recognises as its own README
    assert "**Q & <A>**" in readme and "- run r has no evaluation: run `sharpdiv evaluate r<1>`" in readme
