"""Central differences show their progress on a terminal: one line on stderr rewritten in
place, throttled, cleared at the end; nothing when stderr is no terminal (a pipe, pytest's
capture) or when GRADPARITY_PROGRESS=0."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from textbook_setup import setup

import gradparity as gp
from gradparity.evidence import progress as progress_module
from gradparity.evidence.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """Seconds that advance by ``tick`` at every reading."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def screen(written: str) -> str:
    """What a terminal line shows after ``written``: each carriage return goes back to the
    line's start, and later characters overwrite earlier ones."""
    line: list[str] = []
    cursor = 0
    for char in written:
        if char == "\r":
            cursor = 0
            continue
        if cursor < len(line):
            line[cursor] = char
        else:
            line.append(char)
        cursor += 1
    return "".join(line)


def test_lines_are_rewritten_in_place_throttled_and_cleared(monkeypatch):
    monkeypatch.delenv("GRADPARITY_PROGRESS", raising=False)
    terminal = FakeTerminal()
    with Progress(stream=terminal, clock=Clock(0.01)) as progress:
        for done in range(1, 101):  # one second of updates, one every 0.01 s
            progress.update("W1", done, 100)
        shown = screen(terminal.getvalue())
        assert shown.startswith("central differences: W1 ") and shown.endswith(" s")
        assert "/100 entries, " in shown
    writes = terminal.getvalue().count("\r")
    assert 5 <= writes <= 12  # about ten a second, and the clearing one
    assert "\n" not in terminal.getvalue()
    assert screen(terminal.getvalue()).strip() == ""


def test_a_shorter_line_leaves_nothing_of_the_longer_one(monkeypatch):
    monkeypatch.delenv("GRADPARITY_PROGRESS", raising=False)
    terminal = FakeTerminal()
    progress = Progress(stream=terminal, clock=Clock(1.0))
    progress.update("a_long_parameter_name", 1000, 1000)
    progress.update("b", 1, 2)
    assert screen(terminal.getvalue()) == screen("\r" + terminal.getvalue().split("\r")[-1])
    assert screen(terminal.getvalue()).rstrip().startswith("central differences: b 1/2 entries")
    progress.clear()
    assert screen(terminal.getvalue()).strip() == ""


def test_counting_reports_one_entry_per_two_calls(monkeypatch):
    monkeypatch.delenv("GRADPARITY_PROGRESS", raising=False)
    terminal = FakeTerminal()
    progress = Progress(stream=terminal, clock=Clock(1.0))
    counted = progress.counting("W", lambda step: float(np.sum(step)), 3)
    values = [counted(np.full(2, s)) for s in (1.0, -1.0, 2.0, -2.0)]
    assert values == [2.0, -2.0, 4.0, -4.0]  # the values pass through unchanged
    assert screen(terminal.getvalue()).startswith("central differences: W 2/3 entries")


def test_nothing_is_written_to_a_stream_that_is_no_terminal(monkeypatch):
    monkeypatch.delenv("GRADPARITY_PROGRESS", raising=False)
    pipe = io.StringIO()
    with Progress(stream=pipe, clock=Clock(1.0)) as progress:
        progress.update("W1", 1, 2)
    assert pipe.getvalue() == ""


def test_gradparity_progress_0_silences_it(monkeypatch):
    monkeypatch.setenv("GRADPARITY_PROGRESS", "0")
    terminal = FakeTerminal()
    with Progress(stream=terminal, clock=Clock(1.0)) as progress:
        progress.update("W1", 1, 2)
    assert terminal.getvalue() == ""


def test_compare_function_without_reference_shows_progress_on_a_terminal(monkeypatch):
    monkeypatch.delenv("GRADPARITY_PROGRESS", raising=False)
    monkeypatch.setattr(progress_module, "INTERVAL", 0.0)  # every update, for the test
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    report = gp.compare_function(**setup(numeric=True))
    monkeypatch.undo()
    assert report.ok
    written = terminal.getvalue()
    for name in ("w[0]", "b[2]"):  # the textbook network's first and last parameters
        assert f"central differences: {name} " in written
    assert "entries, " in written and "\n" not in written
    assert screen(written).strip() == ""  # cleared at the end


def test_compare_function_writes_nothing_into_a_capture(capsys):
    report = gp.compare_function(**setup(numeric=True))
    assert report.ok
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("value", ["1", ""])
def test_other_values_of_the_variable_keep_it_on(monkeypatch, value):
    monkeypatch.setenv("GRADPARITY_PROGRESS", value)
    assert progress_module.wanted(FakeTerminal())
