"""Measure the margin of the minor tier: how small minor differences are against the
tensor's scale, and how far above them the known bugs stay.

Prints max|ours - reference| / max|reference| (the measure ``evidence.minor`` judges, limit
``MINOR_LIMIT``):
- the largest among minor examples: a book-style loss with -log(y + 1e-7), batch norm with
  variance epsilon 2e-5 against torch's 1e-5, softmax probabilities clipped to [1e-5, 1 - 1e-5],
- the smallest among the root causes of the layer and function corpora (torch reference),
- their ratio: how many times above the largest minor the smallest bug sits.

Run: .venv/bin/python benchmarks/minor_margin.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from gradparity.core.tolerance import tolerance_for
from gradparity.corpus.function_bugs import FUNCTION_BUGS, function_setup
from gradparity.corpus.layer_bugs import BUGS
from gradparity.corpus.selftest import compare_setup
from gradparity.evidence.minor import MINOR_LIMIT, scale_relative
from gradparity.pipelines.function import compare_function
from gradparity.pipelines.layers import compare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the book-style network
from book_style import TwoLayerNet, batch, torch_twin


def _book(net: TwoLayerNet, batchnorm: bool) -> float:
    """The largest scale-relative error of the report's minor rows (the example is minor)."""
    x, t = batch()
    report = compare(
        list(net.layers.items()),
        torch_twin(batchnorm),
        x,
        t,
        ours_loss=net.lastLayer,
        reference_loss=F.cross_entropy,
    )
    assert report.ok and report.minor, "a minor example is no longer minor"
    return max(f.detail["minor"]["scale_relative"] for f in report.minor)


def _clip() -> float:
    """Softmax probabilities of random logits, clipped on ours' side only."""
    logits = np.random.default_rng(0).standard_normal((64, 10)) * 6
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ours = np.clip(p, 1e-5, 1 - 1e-5)
    return float(np.abs(ours - p).max() / np.abs(p).max())


def _smallest_bug() -> tuple[float, str]:
    """The smallest scale-relative error of any corpus root cause with a value error (an
    in-place or shape bug has none to measure)."""
    tol = tolerance_for("float64")
    smallest, which = np.inf, ""
    for bug in BUGS:
        report = compare_setup(*bug.build(0))
        for f in report.root_causes:
            for row in report.rows:
                if row.mode == "isolate" and (row.layer, row.quantity) == (f.layer, f.quantity):
                    rel = scale_relative(row, tol)
                    if rel and rel < smallest:
                        smallest, which = rel, bug.name
    for fbug in FUNCTION_BUGS:
        report = compare_function(**function_setup(fbug, 0))
        for row in report.rows:
            rel = scale_relative(row, report.tolerance) if row.diverged else None
            if rel and rel < smallest:
                smallest, which = rel, f"fn:{fbug.name}"
    return smallest, which


def main() -> None:
    minor = {
        "loss -log(y + 1e-7)": _book(TwoLayerNet(loss_eps=1e-7), batchnorm=False),
        "batch norm eps 2e-5 vs 1e-5": _book(TwoLayerNet(batchnorm_eps=2e-5, loss_eps=0), True),
        "clip to [1e-5, 1 - 1e-5]": _clip(),
    }
    for name, rel in minor.items():
        print(f"minor example  {name:<28} {rel:.3g} of the tensor's scale")
    largest = max(minor.values())
    smallest, which = _smallest_bug()
    print(f"largest minor:      {largest:.3g} (limit MINOR_LIMIT = {MINOR_LIMIT:g})")
    print(f"smallest corpus bug: {smallest:.3g} ({which})")
    print(f"margin: the smallest bug is {smallest / largest:.3g} times the largest minor")


if __name__ == "__main__":
    main()
