"""report.save: every file, atomic and only inside the folder; the HTML parses and leads with
the root cause; the terminal rendering; large reports stay readable."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gradparity.core.address import place
from gradparity.core.errors import InputError
from gradparity.core.row import Row
from gradparity.core.tolerance import tolerance_for
from gradparity.corpus import layer_bugs as bugs
from gradparity.corpus.selftest import compare_setup
from gradparity.report import tables
from gradparity.report.html import layer_tables
from gradparity.report.report import Report, safe_name
from gradparity.report.terminal import render, use_colour


class _Page(HTMLParser):
    """Collects what a browser would need: tags, ids, image sources, text in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ids: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self.cell_styles: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in ("meta", "img", "br", "link"):
            self.stack.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("link", "script") or "href" in attrs:
            self.links.append(attrs.get("href") or attrs.get("src") or tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> in {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


@pytest.fixture(scope="module")
def buggy(tmp_path_factory) -> tuple[Report, Path]:
    report = compare_setup(*bugs.softmax_network(0, softmax=bugs.SoftmaxDiagonalOnly))
    out = tmp_path_factory.mktemp("report")
    report.save(out)
    return report, out


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == ["html"] or page.stack == [], page.stack
    return page


def test_save_writes_every_file(buggy):
    _, out = buggy
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "report.html", "table.csv", "plots"} <= names
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert "error_chart.png" in pngs
    assert any(n.startswith("root_cause_01_softmax_grad_input") for n in pngs)
    assert any(n.startswith("jacobian_01_softmax") for n in pngs)
    for png in (out / "plots").iterdir():
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "report.json").read_text())["ok"] is False
    assert "plots/error_chart.png" in (out / "report.md").read_text()
    assert not list(out.rglob("*.tmp"))


def test_html_is_self_contained_and_well_formed(buggy):
    _, out = buggy
    page = _parse(out / "report.html")
    assert page.links == []  # no stylesheet, script or link to fetch
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert len(page.images) == len(list((out / "plots").iterdir()))


def test_html_leads_with_the_root_cause_and_its_fix(buggy):
    report, out = buggy
    page = _parse(out / "report.html")
    assert page.ids[:2] == ["root-causes", "first-divergence"]
    assert page.ids.index("layers") < page.ids.index("plots") < page.ids.index("run-details")
    first_text = " ".join(page.text[:12])
    assert "Divergence: 1 root cause(s): fix softmax grad_input first" in first_text
    assert "softmax grad_input" in first_text and "Fix:" in first_text
    html = (out / "report.html").read_text()
    assert "#f8d0d0" in html  # root-cause row coloured by the Styler
    assert report.meta["torch"] in html and "layout" in html


def test_ok_report_collapses_nothing_it_needs(tmp_path):
    report = compare_setup(*bugs.base_network(0))
    report.save(tmp_path)
    page = _parse(tmp_path / "report.html")
    assert "root-causes" not in page.ids
    assert any(t.startswith("Parity OK") for t in page.text)
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["error_chart.png"]


def test_save_refuses_a_folder_with_other_files_and_a_file_as_folder(tmp_path):
    mine = tmp_path / "keep.txt"
    mine.write_text("mine")
    report = compare_setup(*bugs.base_network(0))
    with pytest.raises(InputError, match=r"holds files that are not a report's \(keep.txt\)"):
        report.save(tmp_path)
    assert mine.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(InputError, match="is a file, not a folder"):
        report.save(mine)
    assert mine.read_text() == "mine"


def test_layer_names_are_sanitised_for_file_names():
    assert safe_name("../../etc/passwd grad:W") == "etc_passwd_grad_W"
    assert safe_name("a/b\\c:d*e") == "a_b_c_d_e"
    assert safe_name("...") == "unnamed"
    assert len(safe_name("x" * 500)) == 80


def _rows(n_layers: int) -> list[Row]:
    rows = []
    for i in range(n_layers):
        status = "root_cause" if i == 7 else ("inherited" if i > 7 else "ok")
        rows.append(
            Row(
                "chain",
                f"layer{i}",
                "Linear",
                "output",
                [4, 4],
                [4, 4],
                max_abs=0.1,
                max_rel=0.1,
                cosine=0.9,
                mismatch_frac=0.5,
                worst_index=[0, 0],
                ours_at_worst=1.0,
                ref_at_worst=0.9,
                allowed_at_worst=1e-7,
                status=status,
                diagnosis=None if status == "ok" else "unexplained",
            )
        )
    return rows


def test_thousands_of_layers_stay_readable(tmp_path):
    report = Report(
        dtype="float64",
        tolerance={"rtol": 1e-7, "atol": 1e-12, "dtype": "float64"},
        rows=_rows(3000),
        root_causes=[],
        meta={"model": "big"},
    )
    report.save(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "more problem rows in table.csv" in html
    assert "7 ok rows" in html
    first_problem = html.index("layer7<")
    assert first_problem < html.index("layer8<") < html.index("layer0<")
    assert len((tmp_path / "table.csv").read_text().splitlines()) == 3001
    assert "more problem rows (see table.csv)" in (tmp_path / "report.md").read_text()


def test_terminal_table_and_colour(buggy, monkeypatch):
    report, _ = buggy
    plain = render(report, colour=False)
    lines = plain.splitlines()
    assert lines[0].endswith("Divergence: 1 root cause(s)")
    assert lines[1].startswith("  loss: ours ")  # the loss each side ran, under the verdict
    assert "softmax grad_input  root_cause" in lines[3]
    assert lines[-2].startswith("1. [missing_cross_terms] softmax grad_input:")
    assert lines[-1].startswith("   at gradparity/corpus/layer_bugs.py:")  # where to read
    assert "\033[" not in plain
    assert "\033[31;1m" in render(report, colour=True)

    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())


def test_summary_shows_the_terminal_table_and_root_causes_without_colour(buggy):
    report, _ = buggy
    lines = report.summary().splitlines()
    assert lines[0] == f"{report.meta['model']}: 1 root cause(s)"  # the first line as before
    assert lines[1:] == render(report, colour=False).splitlines()[1:]
    assert "\033[" not in report.summary()
    table = [line.split() for line in lines[2:] if line.startswith("  ")]
    diverged = [r for r in report.rows if r.diverged][: tables.TERMINAL_ROWS]
    assert len(diverged) > 1
    for row in diverged:
        cells = [row.mode, *place(row.layer, row.quantity).split(), str(row.status)]
        assert cells in [t[: len(cells)] for t in table], row
    assert lines[-2].startswith("1. [missing_cross_terms] softmax grad_input:")
    assert lines[-1].startswith("   at gradparity/corpus/layer_bugs.py:")


def test_ok_summary_is_the_verdict_and_the_losses(tmp_path):
    report = compare_setup(*bugs.base_network(0))
    lines = report.summary().splitlines()
    assert report.ok and "parity OK" in lines[0]
    assert lines[1:] == [f"  {line}" for line in report.loss_lines()] and len(lines) == 2
    assert render(report) == report.summary()


def test_notebook_html_shows_root_causes_table_and_plots(buggy):
    report, out = buggy
    html = report._repr_html_()
    page = _Page()
    page.feed(html)
    page.close()
    assert page.stack == []  # one balanced element, no page of its own
    assert "<html" not in html and "<body" not in html and "<!DOCTYPE" not in html
    assert page.links == []
    assert page.ids[:2] == ["root-causes", "first-divergence"]
    assert "layers" in page.ids and "plots" in page.ids
    assert report.root_causes[0].fix in " ".join(page.text)
    assert len(page.images) == len(list((out / "plots").iterdir()))
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    # the style touches nothing of the notebook outside the report's element
    style = html[html.index("<style>") + 7 : html.index("</style>")]
    selectors = [rule.split("{")[0] for rule in style.split("}") if rule.strip()]
    assert all(
        all(s.strip().startswith(".gradparity-report") for s in sel.split(",")) for sel in selectors
    )
    assert html == report._repr_html_()  # deterministic


def test_non_finite_values_stay_strict_json(tmp_path):
    row = Row(
        "chain",
        "fc",
        "Linear",
        "output",
        [2],
        [2],
        max_abs=float("inf"),
        max_rel=float("nan"),
        status="diverged",
        diagnosis="nonfinite",
    )
    report = Report(dtype="float64", tolerance=tolerance_for("float64"), rows=[row], root_causes=[])
    loaded = json.loads(report.to_json())
    assert loaded == report.to_dict()
    assert loaded["rows"][0]["max_abs"] == "inf" and loaded["rows"][0]["max_rel"] == "nan"


def test_one_table_renderer_pads_columns_and_pipes_markdown():
    header, cells = ("a", "long name"), [("wide cell", "x"), ("b", "")]
    assert tables.fixed_width(header, cells) == ["a          long name", "wide cell  x", "b"]
    assert tables.markdown(header, cells) == [
        "| a | long name |",
        "|---|---|",
        "| wide cell | x |",
        "| b |  |",
    ]
    assert tables.first([1, 2, 3], 2) == ([1, 2], 1) and tables.first([1], 5) == ([1], 0)
    # Three digits of the value report.json stores (six), not of the value in memory.
    assert tables.number(0.00123499999) == "0.00123" and tables.number(1.2345e-12) == "1.23e-12"
    assert tables.number(0.0012349996) == f"{0.001235:.3g}"


def test_every_text_table_takes_its_row_limit_from_the_one_place(monkeypatch):
    report = Report(
        dtype="float64", tolerance=tolerance_for("float64"), rows=_rows(40), root_causes=[]
    )
    problems = sum(r.status != "ok" for r in report.rows)
    monkeypatch.setattr(tables, "TERMINAL_ROWS", 3)
    shown = render(report).splitlines()
    assert shown[-1] == f"  ... {problems - 3} more problem rows in the report"
    assert len([line for line in shown if "layer" in line]) == 3
    monkeypatch.setattr(tables, "MARKDOWN_PROBLEM_ROWS", 4)
    monkeypatch.setattr(tables, "MARKDOWN_OK_ROWS", 2)
    md = report.to_markdown()
    assert f"... and {problems - 4} more problem rows (see table.csv)" in md
    assert f"... and {40 - problems - 2} more ok rows (see table.csv)" in md
    monkeypatch.setattr(tables, "HTML_PROBLEM_ROWS", 5)
    html = layer_tables(report.rows)
    assert f"... {problems - 5} more problem rows in table.csv" in html
