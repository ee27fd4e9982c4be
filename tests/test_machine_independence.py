"""Report files do not depend on the machine: the same check under another thread count (and
so other BLAS blockings) writes identical report.json, table.csv and report.md; identical runs
write byte-identical report.html; the committed examples are what the README's commands write
here, compared number by number within the rounding the files promise, not as text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from report_compare import TEXT_FILES, assert_same_json, assert_same_report_folder, assert_same_text

from gradparity.cli.main import main
from gradparity.core.rounding import round_sig
from gradparity.corpus import layer_bugs as bugs
from gradparity.corpus.selftest import compare_setup

ROOT = Path(__file__).resolve().parents[1]


def test_rounding_keeps_the_stated_digits():
    assert round_sig(1.0000000000000002) == 1.0
    assert round_sig(0.9999999999999998) == 1.0
    assert round_sig(-0.21879166393254573) == -0.218792
    assert round_sig(4.0000099999999996e-07) == 4.00001e-07
    assert round_sig(123456789.0) == 123457000.0


def test_number_comparison_catches_a_real_difference():
    with pytest.raises(AssertionError):
        assert_same_json({"max_abs": 0.375}, {"max_abs": 0.376})
    with pytest.raises(AssertionError):
        assert_same_text("max 0.375 at (0, 1)", "max 0.375 at (0, 2)", "md")
    assert_same_json({"cosine": 1.0, "numpy": "2.4"}, {"cosine": 1.0000001, "numpy": "9.9"})


def test_committed_example_is_what_the_readme_command_writes(tmp_path):
    example = ROOT / "reports" / "example"
    argv = ["check", "--model", "assignment", "--bug", "loss_times_softmax_prime"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    readme = (ROOT / "README.md").read_text()
    assert " ".join(["gradparity", *argv, "--out", "reports/example"]) in readme
    assert_same_report_folder(tmp_path, example)


# Kernels another x86 CPU would pick: OpenBLAS's (NumPy) for Sandy Bridge, torch's generic
# vector code and MKL's SSE4.2 path. Each changes the last bits of the models' gradients here
# (measured: other hashes of the raw arrays); elsewhere the variables are ignored.
OTHER_CPU = {
    "OPENBLAS_CORETYPE": "SandyBridge",
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
}


# Run in a fresh process: both built-in models with a bug injected (CLI), and a one-function
# network with a bug against central differences, whose own error moves with the round-off.
_RUN = """
import sys
from pathlib import Path
from gradparity.cli.main import main
from gradparity.corpus.function_bugs import FUNCTION_BUGS, function_setup
from gradparity.pipelines.function import compare_function

out = Path(sys.argv[1])
assert main(["check", "--bug", "weight_grad_scaled", "--out", str(out / "check")]) == 1
bug = next(b for b in FUNCTION_BUGS if b.name == "bias_not_summed")
compare_function(**function_setup(bug, 0, numeric=True)).save(out / "numeric")

# What moved underneath: a hash of the raw gradients of the built-in MLP and its torch twin.
import hashlib, torch
from gradparity.cli import zoo
s = zoo.build("mlp", 0)
x = torch.tensor(s.x, requires_grad=True)
torch.nn.functional.cross_entropy(s.reference.double()(x), torch.tensor(s.target)).backward()
print(hashlib.sha1(x.grad.numpy().tobytes()).hexdigest())
"""


def _check(out: Path, threads: int, extra: dict[str, str] | None = None) -> str:
    """Run ``_RUN`` into ``out`` under ``threads`` threads and ``extra`` variables; the hash
    of the raw gradients it printed."""
    env = {**os.environ, **(extra or {})}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    argv = [sys.executable, "-c", _RUN, str(out)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def test_thread_count_and_kernels_do_not_change_the_report_files(tmp_path):
    """Under 1 and 2 threads and under another CPU's kernels, every report file but the HTML
    (which embeds PNGs drawn from unrounded values) is byte-identical, a merged report's parts
    included; two processes with the same kernels also write the same report.html."""
    runs = {"one": (1, None), "two": (2, None), "other_cpu": (2, OTHER_CPU)}
    raw = {name: _check(tmp_path / name, *run) for name, run in runs.items()}
    if raw["other_cpu"] == raw["one"]:
        pytest.skip("this machine's BLAS ignores the kernel variables: nothing moved to test")
    first = tmp_path / "one"
    folders = sorted(p.parent.relative_to(first) for p in first.rglob("report.json"))
    assert len(folders) == 4  # the merged report, one per model, the numeric check
    for name in ("two", "other_cpu"):
        for folder in folders:
            for file in TEXT_FILES:
                ours, theirs = first / folder / file, tmp_path / name / folder / file
                assert ours.read_bytes() == theirs.read_bytes(), (name, folder / file)
    for folder in folders:  # and two processes on the same kernels write the same page
        html = (first / folder / "report.html").read_bytes()
        assert html == (tmp_path / "two" / folder / "report.html").read_bytes(), folder


def test_identical_runs_write_identical_html():
    runs = [
        compare_setup(*bugs.softmax_network(0, softmax=bugs.SoftmaxDiagonalOnly)) for _ in range(2)
    ]
    first, second = (r.files() for r in runs)
    assert first.keys() == second.keys()
    assert first["report.html"] == second["report.html"]
    assert all(first[k] == second[k] for k in first)


def test_round_off_in_a_diagnosis_is_written_as_zero():
    """An exact factor leaves a residual of round-off (1e-17 here, 1e-16 on another CPU):
    written as 0, like errors below the noise floor; a real leftover is kept."""
    from gradparity.comparison.diagnose.values import diagnose
    from gradparity.core.tolerance import tolerance_for

    ref = np.random.default_rng(0).normal(size=(4, 3)) / 3
    tol = tolerance_for("float64")
    sum_of_parts = ref * 0.1 + ref * 0.2  # 0.3 * ref but for round-off (raw residual 1.4e-16)
    assert diagnose(sum_of_parts, ref, tol, quantity="grad:W").detail["residual"] == 0.0
    ours = 0.3 * ref
    ours[0, 0] += 1e-8
    assert diagnose(ours, ref, tol, quantity="grad:W").detail["residual"] > 0.0
