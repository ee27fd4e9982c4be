"""Report folders compared as the files promise: numbers within the stated rounding, text
exactly, software versions ignored. Used by the tests that check committed examples."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

from gradparity.core.rounding import SIGNIFICANT_DIGITS

# Two figures rounded to SIGNIFICANT_DIGITS digits differ by at most one unit in the last digit
# when the values behind them straddle a rounding boundary.
REL = 2 * 10.0 ** (1 - SIGNIFICANT_DIGITS)
# Versions of the software that wrote a file are not a result.
_VERSION_KEYS = {"gradparity", "numpy", "torch"}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
TEXT_FILES = ("report.json", "table.csv", "report.md")


def _close(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=REL, abs_tol=0.0)


def assert_same_json(ours, theirs, where: str = "") -> None:
    """Equal JSON values, numbers within REL, version strings ignored."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            if key not in _VERSION_KEYS:
                assert_same_json(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list) and isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_json(a, b, f"{where}[{i}]")
    elif isinstance(ours, (int, float)) and not isinstance(ours, bool):
        assert isinstance(theirs, (int, float)) and _close(ours, theirs), (where, ours, theirs)
    else:
        assert ours == theirs, (where, ours, theirs)


def assert_same_text(ours: str, theirs: str, where: str) -> None:
    """Equal text once numbers are taken out; the numbers equal within REL. Lines naming a
    software version are skipped."""
    lines_a = [line for line in ours.splitlines() if not _names_a_version(line)]
    lines_b = [line for line in theirs.splitlines() if not _names_a_version(line)]
    assert len(lines_a) == len(lines_b), where
    for a, b in zip(lines_a, lines_b):
        assert _NUMBER.sub("#", a) == _NUMBER.sub("#", b), (where, a, b)
        numbers = zip(_NUMBER.findall(a), _NUMBER.findall(b))
        assert all(_close(float(x), float(y)) for x, y in numbers), (where, a, b)


def _names_a_version(line: str) -> bool:
    return any(re.match(rf"- {k}: ", line) or f'"{k}": ' in line for k in _VERSION_KEYS)


def assert_same_csv(ours: str, theirs: str, where: str) -> None:
    rows_a = list(csv.reader(io.StringIO(ours)))
    rows_b = list(csv.reader(io.StringIO(theirs)))
    assert len(rows_a) == len(rows_b), where
    for a, b in zip(rows_a, rows_b):
        assert_same_text("\n".join(a), "\n".join(b), where)


def assert_same_report_folder(ours: Path, theirs: Path) -> None:
    for name in TEXT_FILES:
        a, b = (ours / name).read_text(), (theirs / name).read_text()
        if name == "report.json":
            assert_same_json(json.loads(a), json.loads(b), name)
        elif name == "table.csv":
            assert_same_csv(a, b, name)
        else:
            assert_same_text(a, b, name)
    assert sorted(p.name for p in (ours / "plots").iterdir()) == sorted(
        p.name for p in (theirs / "plots").iterdir()
    )
