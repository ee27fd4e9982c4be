"""``make bench``: every speed and memory figure of issue 16, measured in one run.

Sections: 1 ours vs torch (float32 forward+backward), 2 harness overhead (compare and
compare_function over the bare run of both sides), 3 peak memory (fresh subprocesses),
4 scaling against depth and width (with a plot), 5 report writing for 1000 layers. Writes
results.json, results.md and scaling.png into --out (default: this folder) and rewrites the
README's Performance section between its markers (without --out, or with --readme).

Threads are fixed before numpy and torch load (OMP/OPENBLAS/MKL_NUM_THREADS and
torch.set_num_threads, --threads, default 1: with 2 threads on a 2-core machine the two
libraries' worker threads spin against each other when their calls take turns, and the same
torch step measured 15 to 88 ms from run to run); every figure is a median of --repeats runs
after warm-up, both sides of a ratio measured in this run, interleaved.

Run: .venv/bin/python benchmarks/bench.py [--quick] [--threads T] [--repeats N] [--out DIR]
     [--readme [PATH]] [--sections speed overhead memory scaling report]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# numpy-free: the README is checked before the thread counts are set and torch loads
from bench_output import SECTIONS, MarkerError, check_markers, machine, write_all

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --repeats defaults to 5, or 2 with --quick."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for NumPy and torch")
    parser.add_argument("--repeats", type=int, help="timed runs per figure (default 7; quick 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 repeats (tests)")
    parser.add_argument("--out", type=Path, help="folder for the results (default: benchmarks/)")
    parser.add_argument(
        "--readme",
        type=Path,
        nargs="?",
        const=README,
        help="rewrite the README's Performance section also with --out (or the README at PATH)",
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    arguments = parser.parse_args(argv)
    if arguments.repeats is None:
        arguments.repeats = 2 if arguments.quick else 7
    if arguments.repeats < 1 or arguments.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    return arguments


def fix_threads(threads: int) -> None:
    """Set the BLAS/OpenMP thread counts; must run before numpy or torch is imported."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def run_sections(arguments: argparse.Namespace, out: Path) -> list:
    """Each chosen section in order, its progress on stderr."""
    import bench_memory
    import bench_overhead
    import bench_report
    import bench_scaling
    import bench_speed
    from bench_common import compare_accepts

    repeats, quick = arguments.repeats, arguments.quick
    runners = {
        "speed": lambda: bench_speed.run(repeats, quick),
        "overhead": lambda: bench_overhead.run(repeats, quick),
        "memory": lambda: bench_memory.run(repeats, quick, compare_accepts("streaming")),
        "scaling": lambda: bench_scaling.run(repeats, quick, out),
        "report": lambda: bench_report.run(repeats, quick),
    }
    sections = []
    for key in arguments.sections:
        start = time.perf_counter()
        sections.append(runners[key]())
        print(f"bench: {key} done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return sections


def main(argv: list[str] | None = None) -> int:
    """Measure, write the results, and rewrite the README when asked; 2 on a README without
    its markers (checked before measuring)."""
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    out = arguments.out or HERE
    readme = arguments.readme or (README if arguments.out is None else None)
    try:
        if readme is not None:
            check_markers(readme)
    except (MarkerError, OSError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    fix_threads(arguments.threads)
    import torch  # only now: the thread variables above must be set first

    torch.set_num_threads(arguments.threads)
    out.mkdir(parents=True, exist_ok=True)
    machine_info = machine(arguments.threads, THREAD_VARIABLES)
    print(f"bench: {machine_info['cpu']}, threads {machine_info['threads']}", file=sys.stderr)
    start = time.perf_counter()
    sections = run_sections(arguments, out)
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["benchmarks/bench.py", *argv]) if argv else "make bench",
        "wall_s": time.perf_counter() - start,
        "repeats": arguments.repeats,
        "quick": arguments.quick,
    }
    write_all(out, machine_info, sections, meta, readme)
    print(f"bench: wrote {out / 'results.json'} and {out / 'results.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
