"""Section 4 of ``make bench``: ``gp.compare``'s time and peak memory against depth and width.

Depth: 8, 16, ..., 1024 layers of Linear(64, 64) + Tanh blocks at batch 32; width: 64, 128,
..., 2048 at 8 layers. Times (compare and the bare run of both sides) are interleaved medians
in this process; memory is one fresh child per size that runs the bare step, notes its peak,
then runs ``compare`` (so compare's peak includes the bare run's, which compare repeats
anyway). A least-squares line of compare's time against depth gives R^2 and
time(1024) / time(512) (linear growth: about 2). The plot: ``scaling.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from bench_common import (
    Figure,
    Section,
    both_sides_figure,
    interleaved_medians,
    ours_step,
    torch_step,
)
from bench_memory import measure_in_child
from bench_overhead import compare_call, deep_mlp32

matplotlib.use("Agg")  # files only, on machines without a display
import matplotlib.pyplot as plt

BATCH = 32
DEPTH_WIDTH = 64
WIDTH_DEPTH = 8
LARGE_LAYERS = 512  # at and above: fewer repeats, to keep the section near 4 minutes
LARGE_WIDTH = 1024
LARGE_REPEATS = 3


def depths(quick: bool) -> list[int]:
    """8, 16, ..., 1024 layers (8 and 16 with ``quick``)."""
    return [8, 16] if quick else [8 * 2**k for k in range(8)]


def widths(quick: bool) -> list[int]:
    """64, 128, ..., 2048 units (16 and 32 with ``quick``)."""
    return [16, 32] if quick else [64 * 2**k for k in range(6)]


def measure_point(layers: int, width: int, repeats: int) -> dict:
    """Times (compare, bare both sides) and peaks (bare, compare) of one size."""
    work = deep_mlp32(layers // 2, width, BATCH, dtype=np.float64)
    medians = interleaved_medians(
        {
            "compare": compare_call(work),
            "ours": ours_step(work.model, work.x, work.target),
            "torch": torch_step(work.twin, work.x, work.target),  # type: ignore[arg-type]
        },
        repeats,
    )
    memory = measure_in_child("bare_then_compare", {"deep": [layers // 2, width], "batch": BATCH})
    return {
        "layers": layers,
        "width": width,
        "repeats": repeats,
        "compare_s": medians["compare"],
        "bare_s": medians["ours"] + medians["torch"],
        "bare_peak_bytes": memory["bare"],
        "compare_peak_bytes": memory["peak"],
    }


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least squares y = slope x + intercept and its R^2."""
    slope, intercept = np.polyfit(x, y, 1)
    predicted = slope * np.asarray(x) + intercept
    residual = float(np.sum((np.asarray(y) - predicted) ** 2))
    total = float(np.sum((np.asarray(y) - np.mean(y)) ** 2))
    return {
        "slope_s_per_layer": float(slope),
        "intercept_s": float(intercept),
        "r2": 1.0 - residual / total if total else 1.0,
    }


def plot(depth_rows: list[dict], width_rows: list[dict], path: Path) -> None:
    """Time (top) and peak RSS (bottom) against depth (left) and width (right)."""
    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    for column, (rows, key, label) in enumerate(
        ((depth_rows, "layers", "depth (layers)"), (width_rows, "width", "width (units)"))
    ):
        sizes = [row[key] for row in rows]
        for kind in ("compare", "bare"):
            axes[0, column].plot(sizes, [row[f"{kind}_s"] for row in rows], "o-", label=kind)
            peaks = [row[f"{kind}_peak_bytes"] / 2**20 for row in rows]
            axes[1, column].plot(sizes, peaks, "o-", label=kind)
        for row_axes, ylabel in (
            (axes[0, column], "median seconds"),
            (axes[1, column], "peak RSS MiB"),
        ):
            row_axes.set_xscale("log", base=2)
            row_axes.set_xlabel(label)
            row_axes.set_ylabel(ylabel)
            row_axes.legend()
    for time_axes in axes[0]:  # log-log: linear growth is a slope of 1
        time_axes.set_yscale("log")
    figure.suptitle(
        "gp.compare (float64) against the bare forward+backward of both sides "
        "(times log-log: linear growth is a slope of 1)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def point_repeats(row_size: int, large: int, repeats: int) -> int:
    """``repeats``, or at most LARGE_REPEATS for the sizes at or above ``large``."""
    return min(repeats, LARGE_REPEATS) if row_size >= large else repeats


def run(repeats: int, quick: bool, out: Path) -> Section:
    """Section 4: the two series, their figures, the fit, and the plot in ``out``."""
    depth_rows = [
        measure_point(n, DEPTH_WIDTH, point_repeats(n, LARGE_LAYERS, repeats))
        for n in depths(quick)
    ]
    width_rows = [
        measure_point(WIDTH_DEPTH, w, point_repeats(w, LARGE_WIDTH, repeats)) for w in widths(quick)
    ]
    figures: list[Figure] = []
    for series, rows in (("depth", depth_rows), ("width", width_rows)):
        for row in rows:
            name = f"{series}: {row['layers']} layers, width {row['width']}"
            figures.append(
                both_sides_figure(name, row["compare_s"], [row["bare_s"]], None, row["repeats"])
            )
    fit = linear_fit(
        [row["layers"] for row in depth_rows], [row["compare_s"] for row in depth_rows]
    )
    growth = depth_rows[-1]["compare_s"] / depth_rows[-2]["compare_s"]
    plot(depth_rows, width_rows, out / "scaling.png")
    notes = [
        f"time of compare against depth: {fit['slope_s_per_layer'] * 1e3:.2f} ms per layer, "
        f"R^2 = {fit['r2']:.4f}; time({depth_rows[-1]['layers']}) / "
        f"time({depth_rows[-2]['layers']}) = {growth:.2f} (linear growth: about 2).",
        f"sizes from {LARGE_LAYERS} layers and {LARGE_WIDTH} units take the median of at most "
        f"{LARGE_REPEATS} repeats (the table's repeats column).",
        "peak RSS per size: one fresh child runs the bare step (its peak), then compare (the "
        "peak after it); the plot is scaling.png.",
    ]
    extra = {
        "depth": depth_rows,
        "width": width_rows,
        "depth_fit": fit,
        "growth_last_doubling": growth,
    }
    section = Section("scaling", "scaling", figures, notes=notes, extra=extra)
    section.markdown_extra = memory_table(depth_rows + width_rows)
    return section


def memory_table(rows: list[dict]) -> str:
    """The peak RSS of each size as a Markdown table (MiB)."""
    lines = [
        "| layers | width | bare peak RSS MiB | compare peak RSS MiB | ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        bare, peak = row["bare_peak_bytes"], row["compare_peak_bytes"]
        lines.append(
            f"| {row['layers']} | {row['width']} | {bare / 2**20:.0f} | {peak / 2**20:.0f} "
            f"| {peak / bare:.2f} |"
        )
    return "\n".join(lines)
