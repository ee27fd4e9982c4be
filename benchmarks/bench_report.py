"""Section 5 of ``make bench``: writing the report of a 1000-layer run.

The report ``report_speed.py`` builds (500 Linear/Tanh blocks, ``dy @ W`` for ``dy @ W.T``
ten blocks from the output: a root cause and about 3000 inherited rows), saved once to warm
up (matplotlib and the templates imported), then timed: ``report.save(dir)`` (target under
1 s), and ``report.to_json()`` and ``report.to_markdown()`` alone as information.
"""

from __future__ import annotations

import tempfile

import numpy as np
from bench_common import Figure, Section, interleaved_medians
from report_speed import build

from gradparity.pipelines.layers import compare
from gradparity.reference import mirror

SAVE_TARGET_S = 1.0


def save_once(report: object) -> None:
    """``report.save`` into a fresh temporary folder (removed afterwards)."""
    with tempfile.TemporaryDirectory() as out:
        report.save(out)  # type: ignore[attr-defined]


def run(repeats: int, quick: bool) -> Section:
    """Section 5's figures: seconds against a 1 s budget (a ratio of seconds to 1 s)."""
    blocks = 3 if quick else 500
    model = build(blocks)
    rng = np.random.default_rng(1)
    x, target = rng.standard_normal((16, 8)), rng.integers(0, 8, size=16)
    report = compare(model, mirror(model), x, target, name=f"{2 * blocks}-layer")
    medians = interleaved_medians(
        {
            "save": lambda: save_once(report),
            "to_json": report.to_json,
            "to_markdown": report.to_markdown,
        },
        repeats,
    )
    name = f"{2 * blocks} layers, {len(report.rows)} rows, {len(report.root_causes)} root cause(s)"
    figures = [
        Figure(
            f"report.save, {name}",
            "save s",
            medians["save"],
            "budget s",
            SAVE_TARGET_S,
            SAVE_TARGET_S,
            repeats,
        ),
    ]
    for step in ("to_json", "to_markdown"):
        figures.append(
            Figure(
                f"report.{step}, {name}",
                f"{step} s",
                medians[step],
                "budget s",
                SAVE_TARGET_S,
                None,
                repeats,
                note="information",
            )
        )
    notes = [
        "after one warm save (imports done); the ratio is seconds over the 1 s budget.",
    ]
    return Section("report", "report writing", figures, notes=notes)
