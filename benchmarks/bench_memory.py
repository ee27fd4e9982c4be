"""Section 3 of ``make bench``: peak memory of ``gp.compare`` against the bare run of both
sides, each in its own fresh process.

A child is forked from a ``multiprocessing`` fork server that has only imported numpy, torch
and the harness: it starts as a new interpreter would after its imports, without paying
seconds for them each time (a forked process starts with its parent's resident pages, and its
peak RSS grows from there; transient peaks during the imports are not counted). It notes its
RSS (the idle figure), builds the float64 model its spec describes, runs the bare
forward+backward of both sides, one ``gp.compare``, or both in turn (the scaling section's
cheaper form: the peak after the bare run, then after the compare), and reports its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). The model: a float64 ReLU MLP of more than
50 M parameters at batch 32; ``streaming=True`` is measured once ``gp.compare`` takes it,
beside the default.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import traceback
from itertools import pairwise
from multiprocessing.connection import Connection

import numpy as np
import torch
from bench_common import Figure, Section, ours_step, torch_step
from bench_overhead import deep_mlp32
from bench_speed import Workload, mlp32

import gradparity as gp

STREAMING_TARGET = 1.5
MLP_SIZES = (1024, 4096, 4096, 4096, 4096, 1024)  # 58.7 M parameters
QUICK_SIZES = (64, 128, 10)
BATCH = 32
# What the fork server imports before any child is forked: this module and, through it,
# numpy, torch, the bench helpers and the harness's compare.
PRELOAD = ["bench_memory", "gradparity.pipelines.layers"]
MEMORY_REPEATS = 3  # a peak RSS varies by a few MB between identical runs, not by its size


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parameter_count(sizes: tuple[int, ...]) -> int:
    """Weights and biases of an MLP with these layer sizes."""
    return sum(n_in * n_out + n_out for n_in, n_out in pairwise(sizes))


def build_child_model(spec: dict) -> Workload:
    """The float64 workload SPEC names: ``{"mlp": sizes}`` or ``{"deep": [blocks, width]}``,
    with ``"batch"`` (both build their torch twin in float64 from the start)."""
    if "mlp" in spec:
        return mlp32(tuple(spec["mlp"]), spec["batch"], dtype=np.float64)
    blocks, width = spec["deep"]
    return deep_mlp32(blocks, width, spec["batch"], dtype=np.float64)


def child_measure(kind: str, spec: dict) -> dict[str, int]:
    """One measurement in this (fresh) process, RSS figures in bytes: idle (after imports),
    peak, and for a bare run "bare" (the peak before any compare). ``kind``: "bare",
    "compare", "compare_streaming" or "bare_then_compare"."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    peaks = {"idle": peak_rss_bytes()}
    work = build_child_model(spec)
    if kind in ("bare", "bare_then_compare"):
        ours_step(work.model, work.x, work.target)()
        torch_step(work.twin, work.x, work.target)()  # type: ignore[arg-type]
        peaks["bare"] = peak_rss_bytes()
    if kind != "bare":
        options = {"streaming": True} if kind == "compare_streaming" else {}
        gp.compare(work.model, work.twin, work.x, work.target, **options)
    return {**peaks, "peak": peak_rss_bytes()}


def child_entry(kind: str, spec: dict, sender: Connection) -> None:
    """The child process: its figures, or the traceback, sent back to the parent."""
    try:
        sender.send(child_measure(kind, spec))
    except Exception:  # the parent raises it with the child's traceback
        sender.send({"error": traceback.format_exc()})


def measure_in_child(kind: str, spec: dict) -> dict[str, int]:
    """One fresh child running ``kind`` on the model ``spec``: {"idle", "peak"} bytes (and
    "bare" when it ran the bare step)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=child_entry, args=(kind, spec, sender))
    child.start()
    sender.close()  # the child holds the only sending end: a crash ends recv with EOFError
    try:
        result = receiver.recv()
    except EOFError:
        result = {"error": f"exit code {child.join() or child.exitcode}"}
    child.join()
    if "error" in result:
        raise RuntimeError(f"memory child {kind} {spec} failed: {result['error']}")
    return result


def median_peaks(kind: str, spec: dict, repeats: int) -> tuple[float, float]:
    """Median (idle, peak) bytes over ``repeats`` fresh children."""
    runs = [measure_in_child(kind, spec) for _ in range(repeats)]
    return (
        statistics.median(run["idle"] for run in runs),
        statistics.median(run["peak"] for run in runs),
    )


def memory_figure(name: str, mode: str, peak: float, bare: float, repeats: int) -> Figure:
    """compare's peak RSS over the bare run's; the target holds in streaming mode."""
    target = STREAMING_TARGET if mode.startswith("streaming") else None
    return Figure(
        f"{name}, batch {BATCH}, {mode}",
        "compare peak RSS",
        peak,
        "bare both sides peak RSS",
        bare,
        target,
        repeats,
        unit="bytes",
    )


def run(repeats: int, quick: bool, streaming: bool) -> Section:
    """Section 3's figures: compare's peak over the bare run's, default and streaming."""
    sizes = QUICK_SIZES if quick else MLP_SIZES
    spec = {"mlp": list(sizes), "batch": BATCH}
    repeats = min(repeats, MEMORY_REPEATS)
    name = f"{'-'.join(map(str, sizes))} MLP float64 ({parameter_count(sizes) / 1e6:.1f} M params)"
    idle, bare = median_peaks("bare", spec, repeats)
    figures = [memory_figure(name, "default", median_peaks("compare", spec, 1)[1], bare, 1)]
    if streaming:
        peak = median_peaks("compare_streaming", spec, repeats)[1]
        figures.append(memory_figure(name, "streaming=True", peak, bare, repeats))
    notes = [
        f"each peak is the median of {repeats} fresh processes, forked from a server that only "
        "imported (ru_maxrss at the end of the child, imports included, nothing subtracted); "
        "the default mode's compare runs once "
        "(it is the slow one, and the figure without a target).",
        f"idle RSS of a child after importing numpy, torch and gradparity: {idle / 2**20:.0f} MiB "
        "(information; a new interpreter's peak is higher by what its imports briefly held).",
    ]
    if not streaming:
        notes.append("the installed `gp.compare` has no `streaming` yet: the default only.")
    return Section("memory", "memory", figures, notes=notes, extra={"idle_rss_bytes": idle})
