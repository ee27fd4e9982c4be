"""Report figures as PNG bytes: the per-layer error chart and ours/reference heatmaps.

Only matplotlib's object API is used (``Figure`` + Agg canvas, never pyplot), so rendering
holds no global state, needs no display and can run from several threads at once.
"""

from __future__ import annotations

import functools
import math
from io import BytesIO

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from gradparity.core import escape
from gradparity.core.address import GRADIENT_KINDS, Kind, kind_of, place
from gradparity.core.row import Row
from gradparity.core.status import Status

FLOOR = 1e-12  # exact matches (ratio 0) are drawn here: a log axis has no 0
MAX_TICK_LABELS = 60  # more layers than this and only 1 in k is labelled...
THINNED_LABELS = 40  # ...leaving about this many: each label costs milliseconds to draw
MAX_ROOT_LABELS = 10  # root-cause layers always labelled (in red), the first this many
DPI = 100
MAX_RINGED = 50  # non-finite cells of a heatmap circled individually, up to this many
MAX_CHANNELS = 8  # channels of an (N, C, H, W) heatmap drawn (those that differ most): each row
# of three panels costs about 0.3 s to draw
# Titles are set at the top edge (y=1.0), where matplotlib's automatic placement leaves them
# too (nothing of these axes sits above them); that placement measures every y tick label at
# each draw, a quarter of a heatmap's time. Not over a million rows or more, whose "1e6"
# multiplier sits above the axes and may lift the title.
TITLE_Y = 1.0
MAX_FIXED_TITLE_ROWS = 10**6
# (mode, direction, legend label, marker, colour)
_SERIES = (
    ("chain", "forward", "chain forward", "o", "tab:blue"),
    ("chain", "backward", "chain backward", "^", "tab:orange"),
    ("isolate", "forward", "isolate forward", "s", "tab:green"),
    ("isolate", "backward", "isolate backward", "v", "tab:purple"),
    ("numeric", "backward", "vs central differences", "D", "tab:brown"),
)
_VALUES_CMAP = matplotlib.colormaps["viridis"].with_extremes(bad="magenta")
_DIFF_CMAP = matplotlib.colormaps["RdBu_r"].with_extremes(bad="magenta")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = BytesIO()
    # No "Software" stamp, so the same figure gives the same bytes across matplotlib versions.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


@functools.lru_cache(maxsize=1024)  # a chart asks once per row, of a few distinct names
def _direction(quantity: str) -> str | None:
    kind = kind_of(quantity)
    if kind in (Kind.OUTPUT, Kind.LOSS):
        return "forward"
    if kind in GRADIENT_KINDS:
        return "backward"
    return None  # training quantities (param:, state:) have no place on a per-layer chart


def column(row: Row) -> str:
    """The chart column of a row: its layer; a function's parameter gets its own column."""
    return place(row.layer, row.quantity) if row.type == "parameter" else row.layer


def layer_order(rows: list[Row]) -> list[str]:
    """Columns in forward order: chain outputs first, then isolate outputs, then columns with
    gradients only (a function's gradient taps and parameters, listed in backward order, so
    reversed here); the loss last."""
    seen = dict.fromkeys(column(r) for r in rows if r.mode == "chain" and r.quantity == "output")
    seen.update(dict.fromkeys(column(r) for r in rows if r.quantity == "output"))
    groups: dict[str, list[str]] = {}  # by row type: gradient taps, then parameters
    for r in rows:
        if column(r) not in seen:
            groups.setdefault(r.type, []).append(column(r))
    for names in groups.values():
        seen.update(dict.fromkeys(reversed(list(dict.fromkeys(names)))))
    return [n for n in seen if n != "loss"] + (["loss"] if "loss" in seen else [])


def _worst_per_point(rows: list[Row]) -> dict[tuple[str, str, str], list]:
    """(mode, direction, layer) -> [worst ratio, has a row with no value, is a root cause].

    A row without a value (shape mismatch, raised) outranks any number for its point."""
    points: dict[tuple[str, str, str], list] = {}
    for r in rows:
        direction = _direction(r.quantity)
        if direction is None:
            continue
        ratio = r.error_ratio()
        if ratio is None and r.status == Status.OK:
            continue
        p = points.setdefault((r.mode, direction, column(r)), [0.0, False, False])
        if ratio is None:
            p[1] = True
        else:
            p[0] = max(p[0], ratio)
        p[2] = p[2] or r.status == Status.ROOT_CAUSE
    return points


def error_chart(rows: list[Row], title: str = "") -> bytes:
    """Per-layer error relative to the tolerance, log scale, forward and backward.

    rows: report rows in report order. One point per (mode, forward/backward, layer): the
    largest error / allowed error among that layer's quantities (backward: grad_input and
    every grad:<param>). Root causes get a red ring and a red layer label. PNG bytes.
    """
    order = layer_order(rows)
    x_of = {name: i for i, name in enumerate(order)}
    points = _worst_per_point(rows)
    finite = [p[0] for p in points.values() if math.isfinite(p[0])]
    top = 10.0 ** math.ceil(math.log10(max([1.0, *finite]) * 100))  # headroom above the data
    roots = [r for r in rows if r.status == Status.ROOT_CAUSE and _direction(r.quantity)]
    root_xs = set(list(dict.fromkeys(x_of[column(r)] for r in roots))[:MAX_ROOT_LABELS])
    step, ticks = _ticks(len(order), root_xs)
    labels = [escape.plot_text(_short(order[t], 28)) for t in ticks]

    # Margins fixed in inches instead of a layout engine: a layout pass measures every text
    # again, which doubles the time of a chart with a thousand layers.
    rotate = len(ticks) > 8 or any(len(name) > 10 for name in labels)
    bottom = 0.5 + (0.05 * max(map(len, labels), default=0) + 0.1 if rotate else 0.2)
    plot_w, plot_h, left, right, top_m = min(max(5.0, 0.22 * len(ticks)), 14.0), 4.2, 0.9, 2.8, 0.5
    width, height = left + plot_w + right, bottom + plot_h + top_m
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, plot_w / width, plot_h / height))

    ax.set_yscale("log")
    ax.axhspan(1.0, top * 5, color="tab:red", alpha=0.06, lw=0)
    ax.axhline(1.0, color="black", ls="--", lw=1.2, label="tolerance")
    root_label = ""
    if roots:
        places = dict.fromkeys(place(r.layer, r.quantity) for r in roots)
        more = f" (+{len(places) - 1} more)" if len(places) > 1 else ""
        first = escape.plot_text(_short(next(iter(places)), 22))
        root_label = f"root cause{more}\nfirst: {first}"
    novalue_any = _draw_series(ax, points, x_of, top, root_label)
    handles, legend_labels = ax.get_legend_handles_labels()
    if novalue_any:
        handles.append(Line2D([], [], ls="none", marker="x", color="black", ms=9, mew=2))
        legend_labels.append("no value (shape/raised)")
    ax.legend(
        handles, legend_labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small"
    )
    note = f"exact or below {FLOOR:g}:\ndrawn at {FLOOR:g}\nno value or infinite:\ndrawn at the top"
    ax.text(1.02, 0, note, transform=ax.transAxes, va="bottom", fontsize="small", color="dimgray")

    ax.set_ylim(FLOOR / 10, top * 5)
    ax.yaxis.set_major_formatter(FuncFormatter(_decade))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.grid(axis="y", alpha=0.3)
    ax.set_xlim(-0.6, max(len(order), 1) - 0.4)
    ax.set_xticks(ticks, labels)
    if rotate:
        ax.tick_params(axis="x", labelrotation=55, labelsize="small")
    for t, tick in zip(ticks, ax.get_xticklabels()):
        if rotate:
            tick.set_horizontalalignment("right")
            tick.set_rotation_mode("anchor")
        if t in root_xs:
            tick.set_color("red")
            tick.set_fontweight("bold")
    thinned = f", 1 in {step} labelled" if step > 1 else ""
    ax.set_xlabel(f"layer (forward order){thinned}")
    ax.set_ylabel("error / allowed error (log)")
    ax.set_title(escape.plot_text(title) or "error relative to the tolerance, per layer", y=TITLE_Y)
    if not order:
        ax.text(0.5, 0.5, "no rows to plot", transform=ax.transAxes, ha="center")
    return _png(fig)


def _ticks(n: int, root_xs: set[int]) -> tuple[int, list[int]]:
    """(step, labelled positions): every ``step``-th layer plus the root-cause layers, whose
    neighbours closer than half a step give way so that labels do not overlap."""
    step = 1 if n <= MAX_TICK_LABELS else math.ceil(n / THINNED_LABELS)
    kept = [t for t in range(0, n, step) if all(abs(t - x) >= step / 2 for x in root_xs)]
    return step, sorted({*kept, *root_xs})


def _short(name: str, limit: int) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _decade(value: float, _pos: int) -> str:
    """Plain-text log tick label ("1e-12", "0.01", "100"): mathtext labels draw slowly."""
    exponent = round(math.log10(value))
    return f"{value:g}" if -2 <= exponent <= 2 else f"1e{exponent}"


def _draw_series(ax, points: dict, x_of: dict[str, int], top: float, root_label: str) -> bool:
    """The four series and the root-cause rings; True when some point has no value."""
    many = len(x_of) > MAX_TICK_LABELS
    # Side by side within a layer, so equal chain and isolate values do not hide each other.
    offsets = [0.0] * len(_SERIES) if many else np.linspace(-0.15, 0.15, len(_SERIES))
    novalue_any = False
    rings: list[tuple[float, float]] = []
    for (mode, direction, label, marker, colour), dx in zip(_SERIES, offsets):
        pts = sorted((x_of[k[2]] + dx, *v) for k, v in points.items() if k[:2] == (mode, direction))
        if not pts:
            continue
        xs, ratios, novalue, is_root = (np.array(col) for col in zip(*pts))
        ys = np.where(novalue, top, np.clip(ratios, FLOOR, top))
        style = {"ls": "-", "lw": 0.8} if mode == "chain" else {"ls": "none", "mfc": "none"}
        ax.plot(
            xs[~novalue],
            ys[~novalue],
            marker=marker,
            color=colour,
            ms=3 if many else 6,
            label=label,
            **style,
        )
        if novalue.any():
            novalue_any = True
            ax.plot(xs[novalue], ys[novalue], "x", color=colour, ms=9, mew=2)
        rings += zip(xs[is_root], ys[is_root])
    if rings:
        rx, ry = zip(*rings)
        ax.scatter(
            rx, ry, s=200, facecolors="none", edgecolors="red", lw=2, zorder=5, label=root_label
        )
    return novalue_any


def _as_2d(a: np.ndarray) -> np.ndarray:
    """0-D -> (1, 1), 1-D -> (1, n), (d0, d1, ...) -> (d0, d1 * ...), as float64."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def _panel(ax, data: np.ndarray, shape: tuple, name: str, cmap, vmin: float, vmax: float, labels):
    """One heatmap of ``data`` (2-D, from an array of ``shape``); None for an empty array."""
    bad = ~np.isfinite(data)
    n_bad = int(np.count_nonzero(bad))
    if data.size == 1:
        about = f"{'scalar' if shape == () else shape} = {data.flat[0]:.6g}"
    else:
        shown = "" if data.shape == shape else f" shown {data.shape[0]} x {data.shape[1]}"
        about = f"{shape}{shown}" + (f", {n_bad} non-finite (magenta)" if n_bad else "")
    y = TITLE_Y if data.shape[0] < MAX_FIXED_TITLE_ROWS else None  # None: matplotlib places it
    ax.set_title(f"{escape.plot_text(name)}\n{about}", fontsize="medium", y=y)
    if data.size == 0:
        ax.text(0.5, 0.5, "empty", transform=ax.transAxes, ha="center", va="center")
        ax.set_axis_off()
        return None
    image = ax.imshow(
        np.ma.masked_invalid(data),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
    )
    if 0 < n_bad <= MAX_RINGED:  # a few bad cells in a large array are smaller than a pixel
        rows, cols = np.nonzero(bad)
        ax.plot(cols, rows, "o", ms=10, mfc="none", mec="magenta", mew=1.5)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    for axis in (ax.xaxis, ax.yaxis):
        _fix_ticks_in_view(axis, MaxNLocator(integer=True, min_n_ticks=1))
    return image


def _fix_ticks_in_view(axis, locator) -> None:
    """The ticks ``locator`` places inside ``axis``'s view, set as fixed ticks: matplotlib
    builds a tick object (lines and a label, the costliest part of drawing a heatmap) for
    every position a locator returns, also those outside the view that it never draws."""
    axis.set_major_locator(locator)
    low, high = sorted(axis.get_view_interval())
    axis.set_ticks([t for t in axis.get_majorticklocs() if low <= t <= high])


def _side_by_side(title: str, ours, reference, labels: tuple[str, str]) -> bytes:
    ours, reference = np.asarray(ours), np.asarray(reference)
    o, r = _as_2d(ours), _as_2d(reference)
    values = np.concatenate([o[np.isfinite(o)], r[np.isfinite(r)]])
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if lo == hi:  # a constant array still needs a non-empty colour range
        lo, hi = lo - 0.5, hi + 0.5

    # Fixed positions in inches instead of a layout engine, which measures every text several
    # times and made one figure take a second: ours | reference, colour bar | diff, colour bar.
    width, height = 15.6, 4.8
    fig = Figure(figsize=(width, height))

    def axes(left: float, w: float):
        return fig.add_axes((left / width, 0.65 / height, w / width, 3.25 / height))

    ax_o, ax_r, ax_d = axes(0.75, 3.7), axes(5.2, 3.7), axes(10.75, 3.7)
    fig.suptitle(escape.plot_text(title), y=0.98)
    _panel(ax_o, o, ours.shape, "ours", _VALUES_CMAP, lo, hi, labels)
    image = _panel(ax_r, r, reference.shape, "reference", _VALUES_CMAP, lo, hi, labels)
    if image is not None:
        fig.colorbar(image, cax=axes(9.05, 0.15), label="value (ours and reference)")
    if ours.shape != reference.shape:
        ax_d.set_axis_off()
        text = f"shapes differ: {ours.shape} vs {reference.shape}"
        ax_d.text(0.5, 0.5, text, transform=ax_d.transAxes, ha="center", va="center", size="large")
        return _png(fig)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = o - r
    finite = np.abs(diff[np.isfinite(diff)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    name = "ours - reference" + (", all 0" if finite.size and not finite.any() else "")
    image = _panel(ax_d, diff, ours.shape, name, _DIFF_CMAP, -lim, lim, labels)
    if image is not None:
        fig.colorbar(image, cax=axes(14.6, 0.15), label="difference")
    return _png(fig)


_HW = ("w", "h")  # axis labels of a channel's (H, W) image


def _worst_sample(diff: np.ndarray) -> int:
    """The sample (first axis) holding the largest |difference|; non-finite counts largest."""
    size = np.where(np.isfinite(diff), np.abs(diff), np.inf).reshape(diff.shape[0], -1)
    return int(np.argmax(size.max(axis=1)))


def _worst_channels(diff: np.ndarray) -> list[int]:
    """The channels of one sample (C, H, W) to draw: all of them, or when there are more
    than ``MAX_CHANNELS`` the ones with the largest |difference|, in channel order."""
    size = np.where(np.isfinite(diff), np.abs(diff), np.inf).reshape(diff.shape[0], -1)
    ranked = np.argsort(-size.max(axis=1), kind="stable")[:MAX_CHANNELS]
    return sorted(int(c) for c in ranked)


def channel_figure(title: str, ours: np.ndarray, reference: np.ndarray) -> Figure:
    """Image tensors (N, C, H, W) of the same shape drawn per channel: one row per channel
    of the sample with the largest difference, its (H, W) image for ours, reference and
    their difference. Ours and reference share one colour scale; the difference is centred
    at 0. More than ``MAX_CHANNELS`` channels: those with the largest difference."""
    o = np.asarray(ours, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = o - r
    n = _worst_sample(diff)
    channels = _worst_channels(diff[n])
    values = np.concatenate([o[n][np.isfinite(o[n])], r[n][np.isfinite(r[n])]])
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    finite = np.abs(diff[n][np.isfinite(diff[n])])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0

    # Fixed positions in inches, as in _side_by_side: a row of three panels per channel.
    pitch, top, bottom = 2.9, 0.9, 0.2
    width, height = 13.0, top + pitch * len(channels) + bottom
    fig = Figure(figsize=(width, height))

    def axes(left: float, w: float, row: int, h: float = 2.0):
        lower = height - top - pitch * row - 2.3
        return fig.add_axes((left / width, lower / height, w / width, h / height))

    shown = f"{len(channels)} of {o.shape[1]} channels (largest differences)"
    about = "" if len(channels) == o.shape[1] else f", {shown}"
    fig.suptitle(
        f"{escape.plot_text(title)}\n{o.shape}: sample {n} (largest difference){about}",
        y=1 - 0.1 / height,
        va="top",
    )
    hw = o.shape[2:]
    first: list = []  # the first row's images, which the colour bars describe
    for row, c in enumerate(channels):
        panels = (
            ("ours", o[n, c], _VALUES_CMAP, lo, hi, 0.8),
            ("reference", r[n, c], _VALUES_CMAP, lo, hi, 4.4),
            ("ours - reference", diff[n, c], _DIFF_CMAP, -lim, lim, 8.9),
        )
        drawn = [
            _panel(axes(left, 3.0, row), data, hw, f"{name}, channel {c}", cmap, vmin, vmax, _HW)
            for name, data, cmap, vmin, vmax, left in panels
        ]
        first = first or drawn
    last, span = len(channels) - 1, pitch * (len(channels) - 1) + 2.0
    if first[0] is not None:
        fig.colorbar(first[0], cax=axes(7.55, 0.15, last, span), label="value")
    if first[2] is not None:
        fig.colorbar(first[2], cax=axes(12.05, 0.15, last, span), label="difference")
    return fig


def heatmaps(title: str, ours: np.ndarray, reference: np.ndarray) -> bytes:
    """Ours, reference and their difference side by side.

    ours, reference: any shapes; 0-D is drawn (1, 1), 1-D (1, n), N-D (shape[0], rest),
    except image tensors (N, C, H, W) of the same shape, drawn per channel as (H, W) images
    (``channel_figure``). Both share one colour scale; the difference is centred at 0. When
    the shapes differ the difference panel says so. Non-finite values are masked (magenta).
    PNG bytes.
    """
    o, r = np.asarray(ours), np.asarray(reference)
    if o.ndim == 4 and o.shape == r.shape and o.size:
        return _png(channel_figure(title, o, r))
    return _side_by_side(title, ours, reference, ("column", "row"))


def jacobian_heatmaps(
    title: str, ours: np.ndarray, reference: np.ndarray, sample: int = 0
) -> bytes:
    """The per-sample Jacobians (batch, out, in) of one sample: ours, reference, difference.

    Entry (i, j) is d output_i / d input_j of example ``sample``. PNG bytes.
    """
    ours, reference = np.asarray(ours), np.asarray(reference)
    for name, jac in (("ours", ours), ("reference", reference)):
        if jac.ndim != 3:
            raise ValueError(f"{name} Jacobian must be (batch, out, in), got shape {jac.shape}")
        if not -jac.shape[0] <= sample < jac.shape[0]:
            raise ValueError(f"sample {sample} out of range for {name} batch of {jac.shape[0]}")
    return _side_by_side(title, ours[sample], reference[sample], ("input j", "output i"))
