"""What keeps writing a report cheap (benchmarks/report_speed.py times it; no timing here, a
shared CPU makes any limit flaky): rows rounded once per save, the process's objects left out
of the collections while the files are drawn, and plot titles placed without measuring tick
labels, drawn exactly where matplotlib's own placement puts them; heatmap ticks built only
where they are drawn; table.csv written by the csv module, byte for byte as pandas writes it."""

from __future__ import annotations

import gc
import math
from io import BytesIO

import matplotlib.axis
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.ticker import MaxNLocator

from gradparity.core import escape
from gradparity.corpus import layer_bugs as bugs
from gradparity.corpus.selftest import compare_setup
from gradparity.report import gc_freeze, plots
from gradparity.report.report import TABLE_COLUMNS, Report, _csv_text


@pytest.fixture(scope="module")
def buggy() -> Report:
    setup = next(b for b in bugs.BUGS if b.name == "bias_grad_sign")
    return compare_setup(*setup.build(0))


def test_rows_are_rounded_once_for_report_json_and_table_csv(buggy, monkeypatch):
    calls = []
    rounded = Report._json_rows
    monkeypatch.setattr(Report, "_json_rows", lambda self: calls.append(1) or rounded(self))
    files = buggy.files()
    assert len(calls) == 1
    assert files["report.json"] == buggy.to_json()
    assert files["table.csv"] == buggy.to_csv()


def test_plots_are_drawn_with_the_process_objects_frozen_and_given_back(buggy, monkeypatch):
    frozen = []
    png = plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: frozen.append(gc.get_freeze_count()) or png(fig))
    before = gc.get_freeze_count()
    buggy.files()
    assert frozen and all(frozen)
    assert gc.get_freeze_count() == before == 0


def test_a_callers_own_frozen_objects_stay_frozen():
    gc.freeze()
    try:
        held = gc.get_freeze_count()
        with gc_freeze.frozen():
            assert gc.get_freeze_count() == held
        assert gc.get_freeze_count() == held
    finally:
        gc.unfreeze()


def test_the_objects_are_given_back_when_drawing_raises(buggy, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no font")

    monkeypatch.setattr(plots, "error_chart", broken)
    with pytest.raises(RuntimeError, match="no font"):
        buggy.files()
    assert gc.get_freeze_count() == 0


@pytest.fixture
def measured(monkeypatch) -> list[int]:
    """Counts the tick-label measurements matplotlib's automatic title placement makes."""
    calls: list[int] = []
    measure = matplotlib.axis.Axis.get_tightbbox

    def counted(self, *args, **kwargs):
        calls.append(1)
        return measure(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axis.Axis, "get_tightbbox", counted)
    return calls


def test_titles_are_placed_without_measuring_tick_labels(buggy, measured):
    rng = np.random.default_rng(0)
    ours, reference = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5))
    plots.heatmaps("fc1 grad_input", ours, reference)
    plots.jacobian_heatmaps("fc1: Jacobian", ours, reference)
    plots.error_chart(buggy.rows, title="bias_grad_sign")
    assert measured == []


def test_a_million_rows_leave_the_title_to_matplotlib(measured):
    """Their "1e6" multiplier sits above the axes and may lift the title."""
    fig = Figure()
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.7))
    data = np.zeros((plots.MAX_FIXED_TITLE_ROWS, 1))
    plots._panel(ax, data, data.shape, "ours", "viridis", 0.0, 1.0, ("column", "row"))
    plots._png(fig)
    assert measured


def _pixels(png: bytes) -> np.ndarray:
    return imread(BytesIO(png), format="png")


def test_fixed_titles_draw_where_matplotlib_would_place_them():
    rng = np.random.default_rng(1)
    ours = rng.standard_normal((2, 3, 6, 5))
    fig = plots.channel_figure("conv1 grad_input", ours, ours + 0.5)
    fixed = _pixels(plots._png(fig))
    for ax in fig.axes:
        ax._autotitlepos = None  # matplotlib's own placement again (what set_title(y=None) keeps)
    assert np.array_equal(fixed, _pixels(plots._png(fig)))


def _panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images and ax.get_navigate()]


def test_heatmap_ticks_are_built_only_where_they_are_drawn(monkeypatch):
    """A 16 x 8 array: MaxNLocator returns 10 positions per axis, 8 of them in view; only
    those 8 get tick objects, and the picture is the one MaxNLocator's ticks draw."""
    figures: list[Figure] = []
    png = plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or png(fig))
    ours = np.random.default_rng(2).standard_normal((16, 8))
    fixed = _pixels(plots.heatmaps("fc1 grad_input", ours, ours + 0.5))
    panels = _panels(figures[0])
    assert len(panels) == 3
    for axis in (a for ax in panels for a in (ax.xaxis, ax.yaxis)):
        low, high = sorted(axis.get_view_interval())
        located = MaxNLocator(integer=True, min_n_ticks=1).tick_values(low, high)
        drawn = [t for t in located if low <= t <= high]
        assert len(axis.majorTicks) == len(drawn) < len(located)
        axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    assert np.array_equal(fixed, _pixels(plots._png(figures[0])))


def _pandas_csv(records: list[dict]) -> str:
    cells = [{k: escape.csv_cell(v) for k, v in r.items()} for r in records]
    return pd.DataFrame(cells, columns=[*TABLE_COLUMNS, "message"]).to_csv(index=False)


@pytest.fixture
def pandas_writes(monkeypatch) -> list[int]:
    calls: list[int] = []
    to_csv = pd.DataFrame.to_csv
    monkeypatch.setattr(
        pd.DataFrame, "to_csv", lambda self, *a, **k: calls.append(1) or to_csv(self, *a, **k)
    )
    return calls


def test_table_csv_is_written_without_pandas_as_pandas_writes_it(buggy, pandas_writes):
    records = buggy._json_rows()
    odd = dict(records[0], layer="=1+2", message='a,"b"\rc', max_abs=math.nan, cosine=math.inf)
    records = [*records, odd, dict(odd, worst_index=None, mismatch_frac=None)]
    expected = _pandas_csv(records)
    pandas_writes.clear()
    assert _csv_text(records) == expected
    assert buggy.to_csv() == _pandas_csv(buggy._json_rows())
    assert pandas_writes == [1]  # the reference above, none for the report's own


@pytest.mark.parametrize("other", [None, 2.5, "missing"])
def test_whole_numbers_pandas_prints_as_floats_are_left_to_pandas(buggy, pandas_writes, other):
    first = dict(buggy._json_rows()[0], step=1)
    second = {k: v for k, v in first.items() if k != "step"}
    if other != "missing":
        second["step"] = other
    expected = _pandas_csv([first, second])
    assert ",1.0," in expected  # the step 1, as pandas prints a column of floats
    assert _csv_text([first, second]) == expected
    assert len(pandas_writes) == 2
