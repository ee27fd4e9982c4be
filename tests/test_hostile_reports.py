"""Names a user controls (model, layer, class and parameter names) reach every report file as
inert text: no markup in report.html or report.md, no formula in table.csv, no mathtext in a
plot, no escape sequence in the terminal, no file outside the report folder."""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import gradparity as gp
from gradparity.ours import Sigmoid
from gradparity.report.merge import merge_reports
from gradparity.report.terminal import render

SCRIPT = "<script>alert(1)</script>"
IMAGE = '<img src=x onerror="alert(2)">'
FORMULA = '=HYPERLINK("http://evil.example","click")'
COMMAND = "@SUM(1+1)*cmd|' /C calc'!A0"
MATHTEXT = r"$\frac{1}{$"
MARKDOWN = "a|b [x](javascript:alert(3)) **y** `z` ~~w~~ \\"
TERMINAL = "\x1b[2J\x1b[31mred\r\x07"
CR_FORMULA = "w\r=1+1"  # a carriage return the CSV writer would not quote, then a formula
PATHLIKE = "../../escaped"
NAMES = [SCRIPT, IMAGE, FORMULA, COMMAND, MATHTEXT, MARKDOWN, TERMINAL]

_ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "span", "section",
    "article", "strong", "details", "summary", "pre", "div", "table", "thead", "tbody", "tr",
    "th", "td", "ul", "li", "figure", "img", "figcaption", "dl", "dt", "dd",
}  # fmt: skip


class Dense:
    """A user's layer whose parameter keys are hostile; its weight gradient is doubled (a bug),
    so the report has a root cause, heatmaps and messages naming the keys."""

    def __init__(self, w: np.ndarray, b: np.ndarray, w_key: str, b_key: str, bug: bool) -> None:
        self.w_key, self.b_key, self.bug = w_key, b_key, bug
        self.params = {w_key: w, b_key: b}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return x @ self.params[self.w_key] + self.params[self.b_key]

    def backward(self, g: np.ndarray) -> np.ndarray:
        scale = 2.0 if self.bug else 1.0
        self.grads = {self.w_key: scale * self.x.T @ g, self.b_key: g.sum(axis=0)}
        return g @ self.params[self.w_key].T


def _hostile_compare(
    bug: bool, model_name: str, names: tuple[str, str, str] = (FORMULA, COMMAND, TERMINAL)
) -> gp.Report:
    rng = np.random.default_rng(0)
    hostile_class = type(SCRIPT, (Dense,), {})
    first = hostile_class(rng.normal(size=(4, 3)), rng.normal(size=3), MATHTEXT, MARKDOWN, bug)
    second = Dense(rng.normal(size=(3, 2)), rng.normal(size=2), IMAGE, CR_FORMULA, False)
    layers = [(names[0], first), (names[1], Sigmoid()), (names[2], second)]
    reference = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 2)
    ).double()
    layer_map = dict(zip(names, ("0", "1", "2")))
    x, target = rng.normal(size=(5, 4)), np.array([0, 1, 1, 0, 1])
    return gp.compare(layers, reference, x, target, layer_map=layer_map, name=model_name)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[gp.Report, Path]:
    diverging = _hostile_compare(True, SCRIPT + FORMULA)
    passing = _hostile_compare(False, PATHLIKE)
    merged = merge_reports([diverging, passing])
    root = tmp_path_factory.mktemp("hostile")
    out = merged.save(root / "out")
    assert sorted(p.name for p in root.iterdir()) == ["out"]  # nothing written beside it
    return merged, out


def _report_folders(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.rglob("report.json"))


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def test_the_run_really_carries_the_names(saved):
    report, out = saved
    assert not report.ok
    places = {(f.layer, f.quantity) for f in report.root_causes}
    assert (f"{SCRIPT + FORMULA}/{FORMULA}", f"grad:{MATHTEXT}") in places
    assert len(_report_folders(out)) == 3  # the merged report and its two parts


def test_html_has_no_markup_from_names(saved):
    _, out = saved
    for folder in _report_folders(out):
        page = _Tags()
        page.feed((folder / "report.html").read_text(encoding="utf-8"))
        assert {tag for tag, _ in page.tags} <= _ALLOWED_TAGS, folder
        for tag, attrs in page.tags:
            assert not [name for name, _ in attrs if name.startswith("on")], (tag, attrs)
        text = "".join(page.text)
        assert SCRIPT in text and IMAGE in text and FORMULA in text


def test_markdown_shows_names_as_text(saved):
    _, out = saved
    for folder in _report_folders(out):
        md = (folder / "report.md").read_text(encoding="utf-8")
        assert "<" not in md and ">" not in md.replace("&gt;", "")
        assert not re.search(r"(?<!\\)\]\(javascript", md)
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", md)
        for table in re.findall(r"(?:^\|.*\n)+", md, flags=re.M):
            lines = table.splitlines()
            widths = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
            assert len(widths) == 1, f"a name broke a table row in {folder}: {lines}"


def test_csv_cells_never_start_a_formula(saved):
    _, out = saved
    for folder in _report_folders(out):
        text = (folder / "table.csv").read_text(encoding="utf-8")
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert {len(row) for row in rows} == {len(rows[0])}, "a name split a row"
        cells = [c for row in rows for c in row]
        for cell in cells:
            if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
                float(cell)  # only a negative number may start with "-"
        if folder != out:  # a part: its layer names start the cells
            assert "'" + FORMULA in cells and "'" + COMMAND in cells


def test_json_keeps_names_exactly(saved):
    report, out = saved
    loaded = json.loads((out / "report.json").read_text(encoding="utf-8"))
    layers = {row["layer"] for row in loaded["rows"]}
    assert {row.layer for row in report.rows} == layers
    assert f"{SCRIPT + FORMULA}/{TERMINAL}" in layers and f"{PATHLIKE}/{FORMULA}" in layers


def test_plots_with_mathtext_names_are_drawn(saved):
    _, out = saved
    pngs = list(out.rglob("*.png"))
    assert any(p.name.startswith("root_cause_") for p in pngs)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_terminal_shows_control_characters_as_codes(saved):
    report, _ = saved
    text = render(report, colour=False)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text)
    assert "\\x1b[2J" in render(merge_reports([_hostile_compare(True, TERMINAL)]), colour=False)


def test_failure_messages_and_summaries_show_control_characters_as_codes():
    from gradparity.testing.assertion import failure_message

    forged = TERMINAL + "\nFORGED LINE"
    report = _hostile_compare(True, forged, names=(forged, COMMAND, SCRIPT))
    for text in (failure_message(report), report.summary(), render(report, colour=False)):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text)
        assert not any(line.startswith("FORGED LINE") for line in text.splitlines())
        assert "\\x1b[2J" in text and "\\x0aFORGED LINE" in text


def test_notebook_html_escapes_names_and_shows_the_root_cause():
    report = _hostile_compare(True, SCRIPT + FORMULA)
    html = report._repr_html_()
    page = _Tags()
    page.feed(html)
    assert {tag for tag, _ in page.tags} <= _ALLOWED_TAGS
    for tag, attrs in page.tags:
        assert not [name for name, _ in attrs if name.startswith("on")], (tag, attrs)
    text = "".join(page.text)
    assert SCRIPT in text and FORMULA in text and MATHTEXT in text
    assert "<script>" not in html and SCRIPT not in html
    finding = report.root_causes[0]
    assert finding.diagnosis in text and (finding.problem or finding.message) in text
