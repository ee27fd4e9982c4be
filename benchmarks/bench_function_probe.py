"""What ``gp.compare_function`` costs over running both sides once (issue 16, item 1).

A course-style MLP 784-300-10 (ReLU, softmax cross-entropy, batch mean) at batch 128:
``grads(x, t)`` runs the forward with caches and the backward by hand and returns a dict of
gradients of the dict ``params``; its torch twin holds the same numbers. The same is timed
with one seeded bug (the bias gradient of the first layer not summed over the batch).

For float32 and float64, each figure the median of REPEATS runs after one warm-up, with
``torch.set_num_threads(2)`` and NumPy's BLAS held to 2 threads:

- bare: ``grads(x, t)`` alone, the twin's torch forward+backward alone, and the baseline,
  their sum (for "autodiff" the same baseline: ``grads`` plus the twin's fwd+bwd);
- ``gp.compare_function`` against the twin and against ``"autodiff"`` (``loss_fn=``), with
  and without the bug, as a ratio over the baseline (targets: 1.2x clean, 1.7x one bug).

``--threads N`` changes the thread count (on a machine other work loads, torch's 2-thread pool
can stall for tens of ms per small op: 1 thread shows the harness's own cost more steadily).
``--cpu-time`` times by the process's CPU time instead of the wall clock (with 1 thread, far
steadier than wall time on a shared machine).
``--profile`` prints cProfile's top entries (cumulative time) of one clean run against the
twin and one against autodiff, float64.

Run: .venv/bin/python benchmarks/bench_function_probe.py [--threads N] [--cpu-time] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

import gradparity as gp

REPEATS = 7
CLOCK = time.perf_counter  # or time.process_time (--cpu-time)
THREADS = 2
BATCH, D_IN, HIDDEN, CLASSES = 128, 784, 300, 10
TARGET_CLEAN, TARGET_BUG = 1.2, 1.7


def median_seconds(call: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median time (``CLOCK``) of ``call`` over ``repeats`` runs, after one warm-up run."""
    call()
    times = []
    for _ in range(repeats):
        start = CLOCK()
        call()
        times.append(CLOCK() - start)
    return statistics.median(times)


def make_params(dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """W1 (784, 300), b1 (300,), W2 (300, 10), b2 (10,): course layout (in, out)."""
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.standard_normal((D_IN, HIDDEN)) * 0.05).astype(dtype),
        "b1": (rng.standard_normal(HIDDEN) * 0.1).astype(dtype),
        "W2": (rng.standard_normal((HIDDEN, CLASSES)) * 0.05).astype(dtype),
        "b2": (rng.standard_normal(CLASSES) * 0.1).astype(dtype),
    }


def forward(params: dict, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Logits (N, 10) and the caches the backward reads."""
    h_pre = x @ params["W1"] + params["b1"]
    h = np.maximum(h_pre, 0)
    return h @ params["W2"] + params["b2"], {"x": x, "h_pre": h_pre, "h": h}


def loss_of(params: dict, x: np.ndarray, t: np.ndarray) -> float:
    """Softmax cross-entropy, batch mean (the loss_fn for "autodiff")."""
    logits, _ = forward(params, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(t)), t].mean()


def make_grads(params: dict, bug: bool) -> Callable:
    """grads(x, t) -> {name: gradient}; with ``bug`` db1 keeps the batch axis (N, 300)."""

    def grads(x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        logits, cache = forward(params, x)
        shifted = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(shifted)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(t)), t] -= 1
        d_logits = p / len(t)
        d_h = d_logits @ params["W2"].T
        d_pre = d_h * (cache["h_pre"] > 0)
        return {
            "W1": cache["x"].T @ d_pre,
            "b1": d_pre if bug else d_pre.sum(axis=0),
            "W2": cache["h"].T @ d_logits,
            "b2": d_logits.sum(axis=0),
        }

    return grads


def twin_of(params: dict, dtype: str) -> nn.Module:
    """The torch twin holding the same numbers (Linear keeps (out, in): W.T)."""
    model = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))
    model = model.to(torch.float32 if dtype == "float32" else torch.float64)
    with torch.no_grad():
        for layer, (w, b) in zip((model[0], model[2]), (("W1", "b1"), ("W2", "b2"))):
            layer.weight.copy_(torch.from_numpy(params[w].T.copy()))
            layer.bias.copy_(torch.from_numpy(params[b].copy()))
    return model


def torch_step(model: nn.Module, x: np.ndarray, t: np.ndarray) -> Callable[[], None]:
    """One bare forward+backward of the twin (the tensors made once, outside the timing)."""
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xt), tt).backward()

    return step


def setup(dtype: str) -> tuple[dict, nn.Module, np.ndarray, np.ndarray]:
    """(params, twin, x (128, 784), labels (128,))."""
    rng = np.random.default_rng(1)
    params = make_params(dtype)
    x = rng.standard_normal((BATCH, D_IN)).astype(dtype)
    t = rng.integers(0, CLASSES, BATCH)
    return params, twin_of(params, dtype), x, t


def compare_calls(dtype: str, bug: bool) -> dict[str, Callable[[], object]]:
    """The two compare_function calls timed: against the twin and against autodiff."""
    params, model, x, t = setup(dtype)
    grads = make_grads(params, bug)
    return {
        "twin": lambda: gp.compare_function(grads, params, model, x, t, dtype=dtype),
        "autodiff": lambda: gp.compare_function(
            grads, params, "autodiff", x, t, dtype=dtype, loss_fn=loss_of
        ),
    }


def measure(dtype: str) -> None:
    """Print the bare times and each compare_function's ratio over them."""
    params, model, x, t = setup(dtype)
    grads = make_grads(params, bug=False)
    t_grads = median_seconds(lambda: grads(x, t))
    t_torch = median_seconds(torch_step(model, x, t))
    base = t_grads + t_torch
    print(f"\n{dtype}: grads {t_grads * 1e3:.2f} ms, torch fwd+bwd {t_torch * 1e3:.2f} ms, "
          f"baseline {base * 1e3:.2f} ms")  # fmt: skip
    for bug in (False, True):
        for reference, call in compare_calls(dtype, bug).items():
            report = call()
            seconds = median_seconds(call)
            target = TARGET_BUG if bug else TARGET_CLEAN
            print(
                f"  {reference:8s} {'one bug' if bug else 'clean':7s} "
                f"{seconds * 1e3:8.2f} ms  {seconds / base:6.2f}x (target {target}x)  "
                f"ok={report.ok} root causes={[(f.layer, f.diagnosis) for f in report.root_causes]}"
            )


def profile(top: int = 25) -> None:
    """cProfile's top entries (cumulative) of one clean float64 run per reference."""
    for reference, call in compare_calls("float64", bug=False).items():
        call()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(3):
            call()
        profiler.disable()
        print(f"\n=== profile: clean float64 against {reference} (3 runs) ===")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch and BLAS threads")
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        clock = "CPU" if args.cpu_time else "wall"
        threads = f"threads: torch {torch.get_num_threads()}, BLAS {args.threads}"
        print(f"{threads}; median of {REPEATS}, {clock} time")
        if args.profile:
            profile()
            return
        for dtype in ("float32", "float64"):
            measure(dtype)


if __name__ == "__main__":
    main()
