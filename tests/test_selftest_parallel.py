"""``gradparity selftest --jobs N`` and ``run_corpus(jobs=N)``: the corpus's bugs in a pool of
spawned worker processes, with the serial run's output, in the corpus's order, a crashed bug
as a line of its own, and bad ``--jobs`` values refused in one line."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pool_tasks
import pytest

from gradparity.cli.main import main
from gradparity.core.errors import InputError
from gradparity.corpus import parallel, selftest

# A layer bug, a function bug without torch and a layer bug through autodiff: each runs in a
# tenth of a second once warm (a training bug's first run costs seconds in every worker).
FEW_BUGS = ["bias_not_summed", "fn:bias_not_summed+numeric", "relu_mask_ignored+autodiff"]


def _selftest(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["selftest", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_jobs_2_prints_the_serial_json_and_text(capsys):
    bugs = [arg for name in FEW_BUGS for arg in ("--bug", name)]
    serial = _selftest(capsys, *bugs, "--format", "json")
    pooled = _selftest(capsys, *bugs, "--format", "json", "--jobs", "2")
    assert serial == pooled
    assert serial[0] == 0
    entries = json.loads(pooled[1])["bugs"]
    assert [b["name"] for b in entries] == FEW_BUGS
    # The text is the table of the same results: the pooled ones give the serial text (one
    # pool only: each worker's start, importing torch, costs seconds).
    _, text, _ = _selftest(capsys, *bugs)
    assert text == selftest.format_table([selftest.BugResult(**b) for b in entries]) + "\n"


def test_results_come_in_the_given_order_from_other_processes_on_one_thread():
    names = ["slow", "fast", "quick"]
    results = parallel.run_tasks(pool_tasks.report_where, names, seed=7, jobs=2)
    assert [r[:2] for r in results] == [("slow", 7), ("fast", 7), ("quick", 7)]
    assert all(r[2] != os.getpid() for r in results)  # ran in workers, not here
    assert {r[3] for r in results} == {"1"}  # each worker computes on one thread


def test_one_job_runs_here_and_leaves_the_thread_settings_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    (result,) = parallel.run_tasks(pool_tasks.report_where, ["fast"], seed=0, jobs=4)
    assert result == ("fast", 0, os.getpid(), None)


def test_a_worker_that_dies_is_a_crash_for_its_task_alone():
    names = ["a", "die", "b", "c", "d"]
    results = parallel.run_tasks(pool_tasks.dies_on_die, names, seed=0, jobs=2)
    assert results[:1] + results[2:] == ["a", "b", "c", "d"]
    crash = results[1]
    assert isinstance(crash, parallel.Crash)
    assert "worker process died" in crash.reason


def test_a_task_that_raises_in_a_worker_is_a_crash_with_its_traceback():
    results = parallel.run_tasks(pool_tasks.raises_on_bad, ["ok", "bad"], seed=0, jobs=2)
    assert results[0] == "ok"
    crash = results[1]
    assert isinstance(crash, parallel.Crash)
    assert crash.reason == "raised ValueError: no such layer 'fc9'"
    assert "raises_on_bad" in crash.details  # the worker's frame, for the traceback file


def _boom(seed: int) -> selftest.BugResult:
    raise RuntimeError("the injected bug's model could not be built")


def test_a_bug_that_cannot_run_is_a_line_of_the_whole_table_and_exit_2(capsys, monkeypatch):
    real = selftest.corpus_runners()
    runners = {"bias_not_summed": real["bias_not_summed"], "boom": ("layer", _boom)}
    monkeypatch.setattr(selftest, "corpus_runners", lambda: runners)
    code, out, err = _selftest(capsys, "--bug", "boom", "--bug", "bias_not_summed")
    assert code == 2
    rows = out.splitlines()
    assert re.match(r"boom .* NOT RUN: raised RuntimeError: the injected bug's model", rows[1])
    assert rows[2].startswith("bias_not_summed ")
    assert "2 bugs: 1 localized (50%)" in out
    (line,) = err.strip().splitlines()
    assert "1 bug(s) could not be run (boom)" in line
    path = Path(re.search(r"the traceback is in (\S+?);", line).group(1))
    try:
        assert "_boom" in path.read_text() and "--bug boom" in path.read_text()
    finally:
        path.unlink()
    code, out, _ = _selftest(capsys, "--bug", "boom", "--format", "json")
    (entry,) = json.loads(out)["bugs"]
    assert entry["error"].startswith("raised RuntimeError") and "error_details" not in entry
    assert (entry["found"], entry["localized"], entry["corpus"]) == ([], False, "layer")


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "", "Auto", "2x"])
def test_bad_jobs_values_are_one_line_and_exit_2(capsys, value):
    with pytest.raises(SystemExit) as info:
        main(["selftest", "--bug", "bias_not_summed", "--jobs", value])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert "argument --jobs: jobs must be a whole number >= 0 or 'auto'" in line


@pytest.mark.parametrize(("value", "workers"), [("auto", os.cpu_count()), ("0", os.cpu_count()),
                                                ("1", 1), ("3", 3)])  # fmt: skip
def test_jobs_values(value, workers):
    assert parallel.parse_jobs(value) == workers


@pytest.mark.parametrize("jobs", [-2, True, 1.0, "many", None])
def test_run_corpus_refuses_bad_jobs_before_running_anything(jobs):
    with pytest.raises(InputError, match="jobs must be a whole number"):
        selftest.run_corpus(["bias_not_summed"], jobs=jobs)
