"""Measure float32 ``compare`` against a torch twin, judged by the reference's own rounding.

Prints, per correct float32 model of ``gradparity.corpus.float32_models`` and input scale,
how many seeds raise any finding (must be 0) and the largest error of any row as a multiple
of the error its budget allowed (must stay below 1; the report's noise floor, which records
errors under a tenth of it as 0, is switched off here); then, over the layer corpus in float32,
how many bugs are localized with their label and the smallest such multiple at a bug's root
cause (far above 1).

Run: .venv/bin/python benchmarks/float32_budget.py [--seeds N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gradparity.core import tolerance
from gradparity.corpus.float32_models import MODELS, SCALES, as_float32
from gradparity.corpus.layer_bugs import BUGS
from gradparity.pipelines.layers import compare
from gradparity.reference import mirror, mirror_loss


def compare32(model, loss, x, target, seed: int = 0):
    return compare(
        model, mirror(model), x, target, ours_loss=loss, reference_loss=mirror_loss(loss),
        dtype="float32", seed=seed,
    )  # fmt: skip


def worst_ratio(report) -> float:
    """The largest error / allowed error over the report's rows."""
    ratios = [r.error_ratio() for r in report.rows]
    return max((float(r) for r in ratios if r is not None), default=0.0)


def correct_models(models: dict, seeds: int) -> None:
    """Per model of ``models`` (name -> build(seed, scale)) and scale of SCALES: how many of
    ``seeds`` seeds raise any finding, and the worst error / budget ratio over them."""
    print(f"correct float32 models, {seeds} seeds per model and scale:")
    for name, build in models.items():
        for scale in SCALES:
            start, flagged, worst = time.perf_counter(), 0, 0.0
            for seed in range(seeds):
                report = compare32(*build(seed, scale), seed=seed)
                flagged += (
                    not report.ok
                    or bool(report.root_causes)
                    or any(r.status != "ok" for r in report.rows)
                )
                worst = max(worst, worst_ratio(report))
            took = time.perf_counter() - start
            print(
                f"  {name:12s} x*{scale:<6g} flagged {flagged}/{seeds}, worst error "
                f"{worst:.3g} of its budget ({took:.1f} s)"
            )


def float32_values(a: np.ndarray) -> np.ndarray:
    """``a`` cast to float32 when it holds floats; indices (an embedding's x, class targets)
    kept."""
    a = np.asarray(a)
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


def corpus(bugs: list, label: str = "layer corpus") -> None:
    """Over ``bugs`` in float32: how many are localized with their label (alone), and the
    smallest error / budget ratio at a bug's root cause."""
    found, margins = 0, []
    for bug in bugs:
        model, loss, x, target = bug.build(0)
        report = compare32(as_float32(model), loss, float32_values(x), float32_values(target))
        hits = [f for f in report.root_causes if (f.layer, f.quantity) == (bug.layer, bug.quantity)]
        alone = all(f.layer == bug.layer for f in report.root_causes)
        found += bool(hits) and alone and any(f.diagnosis == bug.diagnosis for f in hits)
        row = next(
            (r for r in report.rows
             if (r.mode, r.layer, r.quantity) == ("isolate", bug.layer, bug.quantity)),
            None,
        )  # fmt: skip
        ratio = row.error_ratio() if row is not None else None
        if ratio and np.isfinite(ratio):  # 0: not a value (an input mutated in place)
            margins.append((float(ratio), bug.name))
    smallest = min(margins)
    print(
        f"{label} in float32: {found}/{len(bugs)} localized and labelled; smallest "
        f"error at a root cause {smallest[0]:.3g} times its budget ({smallest[1]})"
    )


def measure_every_error() -> None:
    """One torch thread (small models: threads only contend), and no noise floor: errors
    below a tenth of the allowed error are recorded as 0 in reports, and are measured here."""
    torch.set_num_threads(1)
    tolerance.NOISE_FLOORS["float32"] = 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    args = parser.parse_args()
    measure_every_error()
    correct_models(MODELS, args.seeds)
    corpus(BUGS)


if __name__ == "__main__":
    main()
