"""Measure both sides of the float64 tolerance: round-off on correct code, error of real bugs.

Prints, as multiples of the allowed error at each tensor's worst element:
- the largest NumPy-vs-torch difference over correct models (must stay far below 1),
- the smallest difference any known-bug corpus entry makes at its root cause (far above 1),
- the same two for the central-difference referee (``compare_function(reference=None)``) on
  the one-function network of ``gradparity.corpus.function_bugs``.

The noise floors of ``metrics.tensor_diff`` (errors below a thousandth of the allowed error,
a tenth against central differences, are recorded as 0, so reports are the same on any machine)
are switched off here: this measures the round-off they hide, and prints how far below the
floors it stays.

Run: .venv/bin/python benchmarks/tolerance.py [--seeds N]
"""

from __future__ import annotations

import argparse

import numpy as np

from gradparity.cli.zoo import build
from gradparity.core import tolerance
from gradparity.corpus.function_bugs import FUNCTION_BUGS, function_setup
from gradparity.corpus.layer_bugs import BUGS, UNMUTATED
from gradparity.corpus.selftest import compare_setup
from gradparity.evidence import function_numeric
from gradparity.pipelines.function import compare_function
from gradparity.pipelines.layers import compare
from gradparity.reference import mirror, mirror_loss


def _ratio(row) -> float | None:
    if row.allowed_at_worst is None or row.ours_at_worst is None:
        return None
    return abs(row.ours_at_worst - row.ref_at_worst) / row.allowed_at_worst


def _ratios(rows) -> list[float]:
    """The error / allowed error of every row that has values."""
    return [r for r in map(_ratio, rows) if r is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    args = parser.parse_args()
    floors = dict(tolerance.NOISE_FLOORS)
    tolerance.NOISE_FLOORS.update(dict.fromkeys(floors, 0.0))
    floor = floors["float64"]

    clean, tensors = 0.0, 0
    setups = list(UNMUTATED.values())
    for builder in setups:
        for seed in range(args.seeds):
            model, loss, x, target = builder(seed)
            ratios = _ratios(compare_setup(model, loss, x, target, seed=seed).rows)
            clean, tensors = max(clean, *ratios), tensors + len(ratios)
    for seed in range(3):
        s = build("mlp", seed)
        ratios = _ratios(compare(s.ours, s.reference, s.x, s.target, seed=seed).rows)
        clean, tensors = max(clean, *ratios), tensors + len(ratios)
    print(
        f"correct code: largest error = {clean:.3g} x allowed "
        f"({tensors} tensors, {len(setups)} small models x {args.seeds} seeds + 784-300-10 MLP)"
    )
    print(f"noise floor:  {floor:g} x allowed, {floor / clean:.3g} times that largest round-off")
    _float32(setups, args.seeds, floors["float32"])

    smallest, which = np.inf, ""
    for bug in BUGS:
        model, loss, x, target = bug.build(0)
        report = compare_setup(model, loss, x, target)
        for row in report.rows:
            here = (row.layer, row.quantity) == (bug.layer, bug.quantity)
            if row.mode == "isolate" and here and row.diverged:
                ratio = _ratio(row)
                if ratio is not None and ratio < smallest:
                    smallest, which = ratio, bug.name
    print(
        f"known bugs:   smallest error = {smallest:.3g} x allowed ({which}; "
        f"{len(BUGS)} bugs; shape-changing and in-place bugs have no value error to measure)"
    )

    _numeric_referee(args.seeds)


def _float32(setups: list, seeds: int, floor: float) -> None:
    """The same correct models in float32, against float32's own noise ``floor``."""
    clean, tensors = 0.0, 0
    for builder in setups:
        for seed in range(seeds):
            model, loss, x, target = builder(seed)
            report = compare(
                model,
                mirror(model),
                x,
                target,
                ours_loss=loss,
                reference_loss=mirror_loss(loss),
                dtype="float32",
                seed=seed,
            )
            ratios = _ratios(report.rows)
            clean, tensors = max(clean, *ratios), tensors + len(ratios)
    print(
        f"float32, correct code: largest error = {clean:.3g} x allowed ({tensors} tensors); "
        f"noise floor {floor:g} x allowed, {floor / clean:.3g} times that"
    )


def _numeric_referee(seeds: int) -> None:
    floor, function_numeric.NUMERIC_NOISE_FLOOR = function_numeric.NUMERIC_NOISE_FLOOR, 0.0
    clean, tensors = 0.0, 0
    for seed in range(seeds):
        report = compare_function(**function_setup(None, seed, numeric=True), seed=seed)
        ratios = _ratios(report.rows)
        clean, tensors = max(clean, *ratios), tensors + len(ratios)
    print(
        f"central differences, correct code: largest error = {clean:.3g} x allowed "
        f"({tensors} gradients, {seeds} seeds); noise floor {floor:g} x allowed, "
        f"{floor / clean:.3g} times that"
    )
    smallest, which = np.inf, ""
    for bug in FUNCTION_BUGS:
        report = compare_function(**function_setup(bug, 0, numeric=True))
        at_bug = [r for r in report.rows if r.quantity == f"grad:{bug.numeric_param}"]
        for ratio in _ratios(at_bug):
            if ratio < smallest:
                smallest, which = ratio, bug.name
    print(
        f"central differences, known bugs: smallest error = {smallest:.3g} x allowed ({which}; "
        f"{len(FUNCTION_BUGS)} bugs; shape-changing ones have no value error to measure)"
    )


if __name__ == "__main__":
    main()
