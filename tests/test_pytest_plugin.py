"""The pytest plugin, run as users run it: a subprocess pytest that loads the entry point."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradparity.testing.pytest_plugin import report_dir_name

pytest_plugins = ["pytester"]

TESTS = textwrap.dedent(
    """
    import pytest
    from gradparity.corpus import layer_bugs as bugs
    from gradparity.ours import mlp
    from gradparity.reference import mirror, mirror_loss


    def test_correct(parity, rng_x):
        model = mlp((5, 4, 3))
        assert parity.check(model, mirror(model), rng_x).ok


    def test_bias(parity):
        model, loss, x, target = bugs.base_network(0, fc2=bugs.BiasNotSummed)
        parity.check(model, mirror(model), x, target,
                     ours_loss=loss, reference_loss=mirror_loss(loss))


    @pytest.fixture
    def rng_x():
        import numpy as np
        return np.random.default_rng(0).standard_normal((6, 5))
    """
)
FAILING = "test_models.py::test_bias"


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)  # load entry points
    pytester.makepyfile(test_models=TESTS)
    return pytester


def _check_outcome(result: pytest.RunResult, reports: Path) -> None:
    """One pass, one fail; failure text starts with the root cause; summary; report files."""
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.lines
    header = next(i for i, line in enumerate(out) if line.strip("_ ") == "test_bias")
    body = [line for line in out[header + 1 :] if not line.startswith("[gw")]  # xdist's worker
    assert body[0].startswith("gradparity: fc2.b:")
    assert "sum it over the batch axis" in body[0]
    summary = out.index(next(line for line in out if "= gradparity =" in line))
    assert out[summary + 1] == f"{FAILING} -> fc2.b [not_reduced]"
    saved = reports / report_dir_name(FAILING) / "report.json"
    assert json.loads(saved.read_text())["root_causes"][0]["layer"] == "fc2"
    assert [p.name for p in reports.iterdir()] == [report_dir_name(FAILING)]


def test_fixture_fails_with_the_root_cause_first_and_summarises(suite: pytest.Pytester):
    result = suite.runpytest_subprocess("--parity-report", "reports", "-p", "no:cacheprovider")
    _check_outcome(result, suite.path / "reports")
    result.stdout.fnmatch_lines(["Shapes: ours (8, 3), reference (3,)", "(parity.check at *)"])


def test_summary_and_reports_under_xdist(suite: pytest.Pytester):
    pytest.importorskip("xdist")
    result = suite.runpytest_subprocess("-n", "2", "--parity-report", "reports")
    _check_outcome(result, suite.path / "reports")


def test_check_function_fails_with_the_parameter_first(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile(
        test_fn=textwrap.dedent(
            """
            from gradparity.corpus.function_bugs import FUNCTION_BUGS, function_setup


            def test_correct(parity):
                assert parity.check_function(**function_setup(None)).ok


            def test_transposed_without_reference(parity):
                parity.check_function(**function_setup(FUNCTION_BUGS[0], numeric=True))
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "gradparity: backprop.W2: gradient of W2 is the transpose*",
            "(parity.check_function at test_fn.py:*)",
            "test_fn.py::test_transposed_without_reference -> backprop.W2 [transposed]",
        ]
    )


def test_option_is_documented_in_help(suite: pytest.Pytester):
    # In process: a fresh pytest config loads the installed entry points all the same.
    result = suite.runpytest("--help")
    result.stdout.fnmatch_lines(["*--parity-report=DIR*"])


def test_loading_the_plugin_does_not_import_torch():
    code = "import sys, gradparity.testing.pytest_plugin; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_report_dir_names_are_safe_unique_and_bounded():
    name = report_dir_name("tests/t.py::test_a[x/y-1 2]")
    assert re.fullmatch(r"tests_t\.py__test_a_x_y-1_2_-[0-9a-f]{10}", name)
    ids = ["t.py::test[a/b]", "t.py::test[a_b]", "t.py::test[a b]", "t.py::test[a:b]", "a_b"]
    names = [report_dir_name(i) for i in ids]
    assert len(set(names)) == len(ids), names
    assert report_dir_name("a_b") == "a_b"  # nothing replaced: the id itself
    assert not report_dir_name("..").startswith(".")
    long_a, long_b = "t.py::test[" + "a" * 300 + "]", "t.py::test[" + "a" * 299 + "b]"
    assert len(report_dir_name(long_a)) == 150
    assert report_dir_name(long_a) != report_dir_name(long_b)


def test_an_empty_report_folder_is_a_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--parity-report=")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--parity-report needs a folder name*"])
