"""Measure float32 ``compare`` on every zoo model against its torch mirror, and the whole
corpus in float32 (issue 15, item 3's targets for the zoo).

Prints, per model of ``gradparity.corpus.float32_models.ZOO`` (the models of ``gradparity
train --model`` at the digits' sizes, batch 4; bn-cnn in training mode, its dropout's mask
pinned, and in eval mode) and input scale 1e-3, 1 and 1e3, how many seeds raise any finding
(must be 0) and the largest error of any row as a multiple of its budget (must stay below
1); then, over every bug of ``gradparity.corpus.all_bugs.ALL_BUGS`` in float32, how many are
localized with their label and the smallest such multiple at a bug's root cause (far above 1).
The measuring is ``float32_budget.py``'s.

Run: .venv/bin/python benchmarks/float32_zoo.py [--seeds N] [--models NAME ...]
(200 seeds of every model: about 15 minutes on one core)
"""

from __future__ import annotations

import argparse

from float32_budget import corpus, correct_models, measure_every_error

from gradparity.corpus.all_bugs import ALL_BUGS
from gradparity.corpus.float32_models import ZOO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--models", nargs="+", choices=list(ZOO), default=list(ZOO))
    args = parser.parse_args()
    measure_every_error()
    correct_models({name: ZOO[name] for name in args.models}, args.seeds)
    corpus(ALL_BUGS, "whole corpus")


if __name__ == "__main__":
    main()
