"""Mutation testing of the core (``make mutants``): how many small wrong changes the tests catch.

mutmut (3.x, configured in ``[tool.mutmut]`` of pyproject.toml) makes every small change it
can to the functions of the tolerance, metrics, diagnosis, location and layout modules and runs
the tests that reach each changed function; a mutant is killed when one of them fails.

mutmut finds the code to mutate by path and the tests import it by module name, so the two must
agree. Here they do not: ``reference/`` is installed as ``gradparity.reference`` (setuptools
package-dir), and mutmut would mutate ``reference/layout.py`` under the name
``reference.layout`` while the tests import ``gradparity.reference.layout`` from the unmutated
tree. So this script stages a copy at ``build/mutants/`` in the installed layout
(``gradparity/``, ``gradparity/ours/``, ``gradparity/reference/``, ``tests/``,
``pyproject.toml``), runs mutmut there, and checks that the tests really import the mutated copy
before trusting any figure.

Prints mutants killed / total per module and overall, and exits 1 when the kill rate is under
``--threshold`` percent (``make mutants`` uses 90). Outside CI: about 1800 mutants take 5 to 10
minutes with 2 workers on a 2-core machine (``--budget-minutes`` stops the run, default 45;
what was not reached counts as not killed). Runs niced, one thread per worker.

Run: .venv/bin/python benchmarks/mutants.py [--max-children 2] [--budget-minutes 45]
     [--threshold 90] [--keep]   (--keep reuses build/mutants/ and its results)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "mutants"
# Where each top-level source folder sits in the installed (and staged) layout.
LAYOUT = {
    "gradparity": "gradparity",
    "ours": "gradparity/ours",
    "reference": "gradparity/reference",
}
# Statuses that count as caught: the mutant made a test fail, or run forever.
CAUGHT = ("killed", "timeout")


def stage(keep: bool) -> None:
    """Copy the tree into STAGE in the installed layout (fresh unless ``keep``)."""
    if STAGE.exists() and not keep:
        shutil.rmtree(STAGE)
    if STAGE.exists():
        return
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, target in LAYOUT.items():
        shutil.copytree(ROOT / source, STAGE / target, ignore=ignore)
    shutil.copytree(ROOT / "tests", STAGE / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", STAGE / "pyproject.toml")


def modules() -> list[str]:
    """The staged paths mutmut mutated (``only_mutate`` in pyproject.toml): it keeps the results
    of each in a ``.meta`` file beside the mutated copy."""
    found = (STAGE / "mutants").rglob("*.py.meta")
    return sorted(str(p.relative_to(STAGE / "mutants"))[: -len(".meta")] for p in found)


def check_imports(folder: str) -> None:
    """Code run with ``folder`` (of STAGE) first on sys.path, as mutmut runs the tests, must
    import the copy there, not the editable install's originals."""
    probe = (
        f"import sys; sys.path.insert(0, {folder!r}); "
        "import gradparity.reference.layout as l, gradparity.core.tolerance as t; "
        "print(l.__file__); print(t.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=STAGE, capture_output=True, text=True, check=True
    ).stdout.split()
    expected = (STAGE / folder / "gradparity").resolve()
    wrong = [f for f in out if not Path(f).resolve().is_relative_to(expected)]
    if wrong:
        sys.exit(f"mutants: the tests would import {wrong}, not the copy in {expected}")


def run_mutmut(max_children: int, budget_s: float) -> bool:
    """mutmut run in STAGE, niced; False when it was stopped at the time budget."""
    env = dict(os.environ)
    # One thread per worker: mutmut forks its workers from a process that has run torch, and a
    # forked thread pool can deadlock; on a shared 2-core machine more threads only contend.
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    mutmut = Path(sys.executable).parent / "mutmut"
    command = ["nice", "-n", "10", str(mutmut), "run", "--max-children", str(max_children)]
    process = subprocess.Popen(command, cwd=STAGE, env=env, start_new_session=True)
    try:
        process.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        return False
    if process.returncode != 0:
        sys.exit(f"mutants: mutmut run failed (exit {process.returncode})")
    return True


def tally() -> dict[str, Counter]:
    """Per staged module: a Counter of mutmut's statuses (killed, timeout, survived, no tests,
    not checked, ...) under mutmut's own names for its exit codes, plus the total."""
    from mutmut.__main__ import status_by_exit_code

    result = {}
    for path in modules():
        meta = STAGE / "mutants" / (path + ".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        count: Counter = Counter(total=len(codes))
        count.update(status_by_exit_code.get(code, f"exit {code}") for code in codes.values())
        result[path] = count
    return result


def report(counts: dict[str, Counter], threshold: float) -> bool:
    """Print the table; True when the overall kill rate (timeouts count as killed) is reached."""
    width = max(map(len, counts))
    total = Counter()
    print(f"\n{'module':<{width}}  killed / total   rate  survived  no tests  other")
    for path, c in [*counts.items(), ("all", None)]:
        if c is None:
            c = total
        else:
            total.update(c)
        caught = sum(c[status] for status in CAUGHT)
        other = c["total"] - caught - c["survived"] - c["no tests"]
        rate = 100 * caught / c["total"] if c["total"] else 0.0
        print(
            f"{path:<{width}}  {caught:6d} / {c['total']:<5d} {rate:5.1f}%  {c['survived']:8d}"
            f"  {c['no tests']:8d}  {other:5d}"
        )
    rate = 100 * sum(total[status] for status in CAUGHT) / max(total["total"], 1)
    return rate >= threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--budget-minutes", type=float, default=45.0)
    parser.add_argument("--threshold", type=float, default=90.0)
    parser.add_argument("--keep", action="store_true", help="reuse build/mutants/ and results")
    args = parser.parse_args()

    start = time.monotonic()
    stage(args.keep)
    check_imports(".")
    finished = run_mutmut(args.max_children, args.budget_minutes * 60)
    check_imports("mutants")
    counts = tally()
    reached = report(counts, args.threshold)
    minutes = (time.monotonic() - start) / 60
    print(f"\nwall time {minutes:.1f} min, {args.max_children} workers", end="")
    print("" if finished else f"; stopped at the {args.budget_minutes:g}-minute budget")
    print("survivors: cd build/mutants && ../../.venv/bin/mutmut results (show NAME for a diff)")
    if not reached:
        print(f"kill rate under {args.threshold:g}%")
        sys.exit(1)


if __name__ == "__main__":
    main()
