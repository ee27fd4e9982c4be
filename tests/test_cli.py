"""The command line: defaults, built-in models, user factories, exit codes, bad input."""

import json
import textwrap
from pathlib import Path

import pytest

from gradparity.cli.main import main


def test_no_arguments_checks_both_defaults_and_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "assignment: parity OK" in out and "mlp: parity OK" in out
    report = json.loads((tmp_path / "reports/latest/report.json").read_text())
    assert report["ok"] is True
    assert {"ok", "dtype", "tolerance", "root_causes", "rows"} <= set(report)
    layers = {r["layer"] for r in report["rows"]}
    assert "assignment/fc1" in layers and "mlp/fc2" in layers
    for name in ("report.md", "table.csv", "assignment/report.json", "mlp/report.json"):
        assert (tmp_path / "reports/latest" / name).is_file()


def test_report_json_is_deterministic(tmp_path):
    for run in ("a", "b"):
        assert main(["check", "--model", "assignment", "--out", str(tmp_path / run)]) == 0
    assert (tmp_path / "a/report.json").read_bytes() == (tmp_path / "b/report.json").read_bytes()


def test_json_format_prints_the_report(capsys, tmp_path):
    assert main(["check", "--model", "assignment", "--format", "json", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "report.json").read_text())


def _write_factories(tmp_path, bug: bool) -> tuple[str, str]:
    (tmp_path / "mine.py").write_text(
        textwrap.dedent(f"""
        import numpy as np
        from gradparity.ours import Linear, Sequential, Sigmoid, SoftmaxCrossEntropy

        class Loss(SoftmaxCrossEntropy):
            def backward(self):
                return {"-" if bug else ""}super().backward()

        def build():
            rng = np.random.default_rng(3)
            model = Sequential(("fc1", Linear(4, 5, rng=rng)), ("act", Sigmoid()),
                               ("fc2", Linear(5, 3, rng=rng)))
            return {{"model": model, "loss": Loss()}}
    """)
    )
    (tmp_path / "ref.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            return nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()
    """)
    )
    return f"{tmp_path / 'mine.py'}:build", f"{tmp_path / 'ref.py'}:build"


def test_user_factories_parity_and_divergence(tmp_path, capsys):
    ours, ref = _write_factories(tmp_path, bug=False)
    assert main(["check", "--ours", ours, "--reference", ref, "--out", str(tmp_path / "ok")]) == 0
    ours, ref = _write_factories(tmp_path, bug=True)
    code = main(["check", "--ours", ours, "--reference", ref, "--out", str(tmp_path / "bad")])
    assert code == 1
    out = capsys.readouterr().out
    assert "[sign_flipped] loss grad_input" in out
    assert json.loads((tmp_path / "bad/report.json").read_text())["ok"] is False


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["check", "--model", "nope"], "unknown model 'nope'"),
        (["check", "--ours", "x.py:build"], "--ours and --reference go together"),
        (["check", "--ours", "missing.py:f", "--reference", "missing.py:f"], "no such file"),
        (["check", "--ours", "nocolon", "--reference", "nocolon"], "MODULE:FACTORY"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_bad_option_value_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", "--dtype", "float16"])
    assert exc.value.code == 2


def test_report_folder_with_other_files_is_refused_and_kept(tmp_path, capsys):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    assert main(["check", "--model", "assignment", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds files that are not a report's (notes.txt)" in err and len(err.splitlines()) == 1
    assert keep.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.gradparity-*"))


def test_check_with_an_injected_bug_names_it(tmp_path, capsys):
    argv = ["check", "--model", "assignment", "--bug", "loss_grad_sign", "--out", str(tmp_path)]
    assert main(argv) == 1
    assert "[sign_flipped] loss grad_input" in capsys.readouterr().out
    assert main(["check", "--model", "assignment", "--bug", "softmax_diagonal_only"]) == 2
    assert "needs a Softmax layer named 'softmax'" in capsys.readouterr().err


def _function_factory(tmp_path) -> str:
    (tmp_path / "fn_setup.py").write_text(
        textwrap.dedent("""
        from gradparity.corpus.function_bugs import FUNCTION_BUGS, function_setup

        def correct():
            return function_setup(None)

        def transposed():
            return function_setup(FUNCTION_BUGS[0])

        def no_reference():
            return function_setup(FUNCTION_BUGS[0], numeric=True)

        def not_a_dict():
            return [1, 2]

        def stray_argument():
            return {**function_setup(None), "layer_map": {}}

        def single_precision():
            return {**function_setup(None), "dtype": "float32"}
        """)
    )
    return str(tmp_path / "fn_setup.py")


def test_check_function_parity_and_divergence(tmp_path, capsys):
    spec = _function_factory(tmp_path)
    assert main(["check", "--function", f"{spec}:correct", "--out", str(tmp_path / "ok")]) == 0
    assert "fn_setup:correct: parity OK (6 parameter gradients, 8 taps" in capsys.readouterr().out
    for factory in ("transposed", "no_reference"):
        out_dir = tmp_path / factory
        assert main(["check", "--function", f"{spec}:{factory}", "--out", str(out_dir)]) == 1
        assert "[transposed] backprop.W2: gradient of W2 is the transpose" in (
            capsys.readouterr().out
        )
        saved = json.loads((out_dir / "report.json").read_text())
        assert saved["root_causes"][0]["quantity"] == "grad:W2"
        assert saved["meta"]["model"] == f"fn_setup:{factory}"


@pytest.mark.parametrize(
    ("factory", "extra", "needle"),
    [
        ("not_a_dict", [], "must return a dict of compare_function arguments"),
        ("stray_argument", [], "an argument compare_function does not take"),
        ("correct", ["--model", "assignment"], "--function checks a gradient function alone"),
    ],
)
def test_check_function_bad_factories_exit_2(tmp_path, capsys, factory, extra, needle):
    spec = _function_factory(tmp_path)
    assert (
        main(["check", "--function", f"{spec}:{factory}", *extra, "--out", str(tmp_path / "out")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_help_is_quick_it_imports_neither_torch_nor_pandas():
    import subprocess
    import sys

    code = (
        "import sys; from gradparity.cli.main import build_parser; build_parser(); "
        "print('torch' in sys.modules, 'pandas' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["False", "False"]


def test_check_function_keeps_the_factorys_dtype_unless_the_command_line_gives_one(tmp_path):
    spec = f"{_function_factory(tmp_path)}:single_precision"
    for extra, expected in (([], "float32"), (["--dtype", "float64"], "float64")):
        out = tmp_path / expected
        assert main(["check", "--function", spec, *extra, "--out", str(out)]) == 0
        assert json.loads((out / "report.json").read_text())["dtype"] == expected


@pytest.mark.parametrize("code", [0, 1])
def test_code_that_calls_sys_exit_cannot_forge_the_exit_status(tmp_path, capsys, code):
    (tmp_path / "exits.py").write_text(f"import sys\nsys.exit({code})\n")
    argv = ["check", "--ours", f"{tmp_path / 'exits.py'}:build", "--reference", "x.py:y"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"called sys.exit({code})" in err and len(err.splitlines()) == 1


def test_a_reader_closing_the_pipe_keeps_the_verdict(tmp_path):
    import subprocess
    import sys

    gradparity = Path(sys.executable).with_name("gradparity")
    argv = [str(gradparity), "check", "--model", "assignment", "--out", str(tmp_path / "out")]
    for bug, verdict in ((None, 0), ("loss_grad_sign", 1)):
        extra = ["--bug", bug] if bug else []
        run = subprocess.Popen([*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        run.stdout.close()  # like `| head -c0`: nobody reads the verdict's text
        assert run.wait(timeout=120) == verdict
        assert run.stderr.read() == b""


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("bug", "verdict"), [(None, 0), ("loss_grad_sign", 1)])
def test_report_re_renders_a_saved_report_with_its_verdict(tmp_path, capsys, bug, verdict):
    saved = tmp_path / "saved"
    extra = ["--bug", bug] if bug else []
    assert main(["check", "--model", "assignment", *extra, "--out", str(saved)]) == verdict
    written = _files(saved)
    (saved / "report.md").unlink()
    (saved / "report.html").write_text("stale")
    capsys.readouterr()
    assert main(["report", str(saved)]) == verdict  # in place
    assert _files(saved) == written
    out = capsys.readouterr().out
    assert ("parity OK" in out) == (verdict == 0) and f"report: {saved / 'report.md'}" in out
    copy = tmp_path / "copy"
    assert main(["report", str(saved / "report.json"), "--out", str(copy)]) == verdict
    assert _files(copy) == written


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.write_text("x"), "not a gradparity report.json: invalid JSON"),
        (lambda d: (d.mkdir(), (d / "report.json").mkdir()), "is a folder, not a report.json"),
        (lambda d: (d.mkdir(), (d / "report.json").write_text("{")), "invalid JSON"),
        (lambda d: (d.mkdir(), (d / "report.json").write_text('{"a": 1}')), "lacks 'ok'"),
    ],
    ids=["missing", "a_file", "report_json_is_a_folder", "invalid_json", "another_schema"],
)
def test_report_of_a_bad_dir_exits_2_with_one_line(tmp_path, capsys, make, needle):
    target = tmp_path / "dir"
    make(target)
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("gradparity: error:")


def test_report_into_a_folder_with_other_files_is_refused(tmp_path, capsys):
    assert main(["check", "--model", "assignment", "--out", str(tmp_path / "saved")]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    argv = ["report", str(tmp_path / "saved"), "--out", str(tmp_path / "mine")]
    assert main(argv) == 2
    assert "keep.txt" in capsys.readouterr().err
    assert (tmp_path / "mine" / "keep.txt").read_text() == "mine"
