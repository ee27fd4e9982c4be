"""The README's Python example runs as shown and reports parity."""

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_and_reports_parity():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    assert len([ln for ln in blocks[0].splitlines() if ln.strip()]) <= 12
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})
    assert "parity OK" in out.getvalue()


TESTS = README.parent / "tests"


def _block_after(heading: str, fence: str) -> list[str]:
    """Every code block of the README section under ``heading`` whose fence says ``fence``
    ("" for a plain block)."""
    text = README.read_text()
    section = text[text.index(heading) :]
    section = section[: section.index("\n## ", 1)]
    blocks, lang, lines = [], None, []
    for line in section.splitlines(keepends=True):
        if lang is None and line.startswith("```"):
            lang, lines = line[3:].strip(), []
        elif lang is not None and line.rstrip() == "```":
            if lang == fence:
                blocks.append("".join(lines))
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def test_readme_function_section_shows_the_textbook_backprop_verbatim():
    code = _block_after("## Backprop written as one function", "python")[0]
    assert code.startswith("    def backprop(self, x, y):")
    assert code in (TESTS / "textbook_network.py").read_text()


def test_readme_function_example_runs_and_prints_what_the_readme_shows(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    example = _block_after("## Backprop written as one function", "python")[1]
    shown = _block_after("## Backprop written as one function", "")[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), {})
    assert out.getvalue() == shown


def test_readme_function_command_output_is_what_the_command_prints(tmp_path, capsys):
    from gradparity.cli.main import main

    blocks = _block_after("## Backprop written as one function", "")
    command = _block_after("## Backprop written as one function", "sh")[0].split()
    assert command[:2] == [".venv/bin/gradparity", "check"]
    assert main([*command[1:], "--out", str(tmp_path)]) == 1
    printed = capsys.readouterr().out.replace(str(tmp_path), "reports/latest")
    assert printed in blocks


def test_readme_real_bug_output_is_what_its_command_prints(tmp_path, capsys):
    from gradparity.cli.main import main

    command = _block_after("## A real bug, found", "sh")[0].split()
    assert command[:2] == [".venv/bin/gradparity", "check"] and command[-2] == "--out"
    assert main([*command[1:-1], str(tmp_path)]) == 1
    printed = capsys.readouterr().out.replace(str(tmp_path), "reports/example")
    assert printed in _block_after("## A real bug, found", "")


def test_readme_framework_example_prints_what_the_readme_shows(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    example = _block_after("## Checking a framework's layers", "python")[0]  # then reset=
    (shown,) = _block_after("## Checking a framework's layers", "")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), {})
    number = r"-?\d+(?:\.\d+)?"
    printed = out.getvalue()
    assert re.split(number, printed) == re.split(number, shown)  # the words, numbers apart
    values = [float(v) for v in re.findall(number, printed)]
    assert values == pytest.approx([float(v) for v in re.findall(number, shown)], rel=1e-3)
