"""Time to write a report of a 1000-layer run, and the comparison's cost against torch.

A 500-block Linear/Tanh network (1000 layers) with ``dy @ W`` for ``dy @ W.T`` injected ten
blocks from the output, so the report has a root cause and about 3000 inherited rows. Prints:
- seconds for ``report.save`` (target: under 1 s once matplotlib is loaded), first in a fresh
  process (which includes importing matplotlib) and again once it is loaded, with the CPU
  seconds of the second (on a shared machine the wall time waits for other work),
- ``compare`` time as a multiple of one torch forward+backward of the same network,
  measured in the same run.

Run: .venv/bin/python benchmarks/report_speed.py [--blocks N]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from gradparity.corpus.layer_bugs import InputGradUsesW
from gradparity.ours import Linear, Sequential, Tanh
from gradparity.pipelines.layers import compare
from gradparity.reference import mirror


def build(blocks: int, width: int = 8) -> Sequential:
    rng = np.random.default_rng(0)
    layers = []
    for i in range(blocks):
        kind = InputGradUsesW if i == blocks - 10 else Linear
        layers += [(f"fc{i}", kind(width, width, rng=rng)), (f"act{i}", Tanh())]
    return Sequential(*layers)


def torch_step_seconds(model: torch.nn.Module, x: np.ndarray, target: np.ndarray) -> float:
    xt, tt = torch.as_tensor(x), torch.as_tensor(target)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(model(xt), tt).backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=500)
    args = parser.parse_args()
    model = build(args.blocks)
    reference = mirror(model)
    rng = np.random.default_rng(1)
    x, target = rng.standard_normal((16, 8)), rng.integers(0, 8, size=16)

    baseline = torch_step_seconds(reference, x, target)
    start = time.perf_counter()
    report = compare(model, reference, x, target, name=f"{2 * args.blocks}-layer")
    compare_s = time.perf_counter() - start
    save_s, save_cpu_s = [], []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as out:
            start, start_cpu = time.perf_counter(), time.process_time()
            report.save(out)
            save_s.append(time.perf_counter() - start)
            save_cpu_s.append(time.process_time() - start_cpu)
    problems = sum(r.status != "ok" for r in report.rows)
    print(
        f"{2 * args.blocks} layers, {len(report.rows)} rows ({problems} problem rows), "
        f"{len(report.root_causes)} root cause(s)"
    )
    print(
        f"report.save: {save_s[0]:.2f} s first (matplotlib import included), "
        f"{save_s[1]:.2f} s once loaded ({save_cpu_s[1]:.2f} s CPU)"
    )
    print(
        f"compare: {compare_s:.2f} s = {compare_s / baseline:.0f} x one torch "
        f"forward+backward ({baseline * 1e3:.1f} ms)"
    )


if __name__ == "__main__":
    main()
