"""Reading a saved report back: report.json checked field by field, and the folder around it.

Each reader refuses what a save could not have written with one ``InputError`` line naming the
file and what is wrong, so a hostile or foreign file never reaches a renderer.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradparity.core.errors import InputError
from gradparity.core.finding import RELATIONS, Finding
from gradparity.core.row import Row
from gradparity.core.status import STATUS_RANK
from gradparity.core.tolerance import Tolerance

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What report.json holds for a float that is not finite (``rounding.json_value``).
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# A merged report's part folder: a ``safe_name`` with "_" added against clashes, no leading dot.
_PART_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class Refused(ValueError):
    """What is wrong with one field; ``read`` turns it into an InputError naming the file."""


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise Refused(f"expected text, got {type(value).__name__}")
    return value


def _maybe(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(f"expected a whole number, got {value!r:.40}")
    return value


def _whole_numbers(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise Refused(f"expected a list of whole numbers, got {type(value).__name__}")
    return [_whole(v) for v in value]


def _number(value: Any) -> float | int:
    """A statistic: a number, or the text report.json writes for a non-finite one. Integers
    stay integers, so the value is written back as it was read."""
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(f"expected a number, got {value!r:.40}")
    return value


def _status(value: Any) -> str:
    if value not in STATUS_RANK:
        raise Refused(f"must be one of {', '.join(STATUS_RANK)}, got {value!r:.40}")
    return value


def _object(value: Any) -> dict:
    if not isinstance(value, dict):
        raise Refused(f"expected an object, got {type(value).__name__}")
    return value


# A row's floats: report.json and table.csv round them (``rounding.SIGNIFICANT_DIGITS``).
STATISTICS = (
    "max_abs",
    "max_rel",
    "cosine",
    "mismatch_frac",
    "ours_at_worst",
    "ref_at_worst",
    "allowed_at_worst",
)
_ROW_FIELDS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(("mode", "layer", "type", "quantity", "message", "fix", "conversion"), _text),
    **dict.fromkeys(("shape_ours", "shape_ref", "worst_index"), _maybe(_whole_numbers)),
    **dict.fromkeys(STATISTICS, _maybe(_number)),
    "status": _status,
    "diagnosis": _maybe(_text),
    "step": _maybe(_whole),
}


def _source(value: Any) -> dict:
    """A finding's source entry: {"file": text, "first_line": n, "last_line": m}, n <= m."""
    value = _object(value)
    if set(value) != {"file", "first_line", "last_line"}:
        raise Refused(f"expected file, first_line and last_line, got {sorted(value)}")
    file, first, last = (
        _text(value["file"]),
        _whole(value["first_line"]),
        _whole(value["last_line"]),
    )
    if not file or "\x00" in file or not 1 <= first <= last:
        raise Refused("not a file and a range of lines")
    return {"file": file, "first_line": first, "last_line": last}


def _relation(value: Any) -> str:
    if value not in RELATIONS:
        raise Refused(f"must be one of {', '.join(RELATIONS)}, got {value!r:.40}")
    return value


_QUANTITY_FIELDS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(("layer", "quantity", "diagnosis"), _text),
    "relation": _relation,
    **dict.fromkeys(("max_abs", "max_rel", "mismatch_frac"), _maybe(_number)),
}


def _quantities(value: Any) -> list[dict]:
    """A finding's listed quantities (``core.finding.quantity_entry``)."""
    return _each(
        value, "quantities", lambda item: _record(item, _QUANTITY_FIELDS, set(_QUANTITY_FIELDS))
    )


_FINDING_FIELDS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(("layer", "quantity", "diagnosis", "message", "mode", "problem", "fix"), _text),
    "detail": _object,
    "step": _maybe(_whole),
    "source": _maybe(_source),
    "quantities": _quantities,
}
# The keys the design fixes (report.json schema); the others have defaults.
_ROW_REQUIRED = {"mode", "layer", "type", "quantity", "shape_ours", "shape_ref", "status"}
_FINDING_REQUIRED = {"layer", "quantity", "diagnosis", "detail", "message"}


def _record(item: Any, checks: dict[str, Callable[[Any], Any]], required: set[str]) -> dict:
    """The checked fields of one row or finding."""
    item = _object(item)
    missing = sorted(required - item.keys())
    unknown = sorted(item.keys() - checks.keys())
    if missing or unknown:
        raise Refused(f"missing {missing}" if missing else f"unknown fields {unknown}")
    fields_ = {}
    for key, value in item.items():
        try:
            fields_[key] = checks[key](value)
        except Refused as exc:
            raise Refused(f"{key}: {exc}") from None
    return fields_


def _each(items: Any, what: str, make: Callable[[Any], Any]) -> list:
    if not isinstance(items, list):
        raise Refused(f"{what} must be a list, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(make(item))
        except Refused as exc:
            raise Refused(f"{what}[{i}]: {exc}") from None
    return out


def _named(what: str, check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except Refused as exc:
        raise Refused(f"{what}: {exc}") from None


def text(value: Any, what: str) -> str:
    """A string field of report.json (``what`` names it in a refusal)."""
    return _named(what, _text, value)


def whole(value: Any, what: str) -> int:
    """A whole-number field of report.json, such as a step."""
    return _named(what, _whole, value)


def an_object(value: Any, what: str) -> dict:
    """A JSON object field of report.json, such as ``meta``."""
    return _named(what, _object, value)


def objects(value: Any, what: str) -> list[dict]:
    """A list of JSON objects, such as ``unmapped_taps`` or a training report's history."""
    return _each(value, what, _object)


def rows(items: Any) -> list[Row]:
    """The table rows of report.json (statistics as stored: rounded; no ``detail``)."""
    return _each(items, "rows", lambda item: Row(**_record(item, _ROW_FIELDS, _ROW_REQUIRED)))


def findings(items: Any, what: str) -> list[Finding]:
    """Root causes, minor findings or warnings of report.json."""

    def finding(item: Any) -> Finding:
        return Finding(**_record(item, _FINDING_FIELDS, _FINDING_REQUIRED))

    return _each(items, what, finding)


def flag(value: Any, what: str) -> bool:
    """A true/false field of report.json (``strict``)."""
    if not isinstance(value, bool):
        raise Refused(f"{what}: expected true or false, got {value!r:.40}")
    return value


def tolerance(value: Any) -> Tolerance:
    """The tolerance as report.json stores it (``Tolerance.as_dict``)."""
    value = _object(value)
    try:
        rtol, atol = _number(value["rtol"]), _number(value["atol"])
        return Tolerance(
            rtol=float(rtol),
            atol=float(atol),
            dtype=_text(value["dtype"]),
            noise_floor=_maybe(_number)(value.get("noise_floor")),
        )
    except KeyError as exc:
        raise Refused(f"tolerance: missing {exc.args[0]!r}") from None
    except Refused as exc:
        raise Refused(f"tolerance: {exc}") from None


def first_divergence(value: Any) -> dict:
    """{kind: {"layer", "quantity"} or None}: where the chain run first diverged."""
    for kind, where in _object(value).items():
        texts_at = isinstance(where, dict) and all(
            isinstance(where.get(key), str) for key in ("layer", "quantity")
        )
        if where is not None and not texts_at:
            raise Refused(f"first_divergence.{kind}: expected a layer and a quantity")
    return value


def meta(value: Any) -> dict:
    """The run details; the model's name, when there, is text (folders are named after it)."""
    value = an_object(value, "meta")
    if "model" in value:
        text(value["model"], "meta.model")
    return value


def history(value: Any) -> list[dict]:
    """A training report's history: one object of numbers (or null) per step."""

    def step(record: Any) -> dict:
        for key, number in _object(record).items():
            _named(key, _maybe(_number), number)
        return record

    return _each(value, "history", step)


def texts(value: Any, what: str) -> list[str]:
    """A list of strings (conversions, notes, part folders)."""
    return _each(value, what, _text)


def read(path: str | os.PathLike) -> tuple[dict, Path]:
    """report.json as a dict, and the file's path. ``path``: the file or its folder.

    Raises InputError (one line naming the file) when there is no readable JSON object with
    a report's keys there.
    """
    given = Path(path)
    try:
        file = given / "report.json" if given.is_dir() else given
        head = json.loads(file.read_text(encoding="utf-8"))
    except IsADirectoryError:
        raise InputError(f"{file} is a folder, not a report.json file") from None
    except FileNotFoundError:
        raise InputError(f"no saved report at {given}: {file} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read {given}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise InputError(f"{file} is not a gradparity report.json: not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        if not isinstance(exc, json.JSONDecodeError | RecursionError):  # a NUL in the path
            raise InputError(f"{given!r} is not a usable path: {exc}") from None
        raise InputError(f"{file} is not a gradparity report.json: invalid JSON ({exc})") from None
    missing = ["ok", "dtype", "tolerance", "rows", "root_causes"]
    if isinstance(head, dict):
        missing = [key for key in missing if key not in head]
    if missing:
        raise InputError(
            f"{file} is not a gradparity report.json: it lacks {', '.join(map(repr, missing))}"
        )
    return head, file


def refusal(file: Path, problem: Refused) -> InputError:
    """The one-line error for a report.json field that a save could not have written."""
    return InputError(f"{file} is not a gradparity report.json: {problem}")


def plots(folder: Path) -> dict[str, bytes]:
    """The PNG files of ``folder``/plots by name (regular files only, links not followed).

    Raises InputError for a .png file there that is not a PNG image.
    """
    found: dict[str, bytes] = {}
    plots_dir = folder / "plots"
    if plots_dir.is_symlink() or not plots_dir.is_dir():
        return found
    for path in sorted(plots_dir.iterdir()):
        if path.suffix != ".png" or path.is_symlink() or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if not data.startswith(PNG_SIGNATURE):
            raise InputError(f"{path} is not a PNG image; remove it or save the report again")
        found[path.name] = data
    return found


def part_folders(head: dict, folder: Path) -> list[Path]:
    """The folders of a merged report's parts, in the order the merged report lists them
    (older merged reports do not list them: their report subfolders, sorted by name)."""
    if "parts" not in head:
        return sorted(
            p
            for p in folder.iterdir()
            if p.name != "plots" and not p.is_symlink() and (p / "report.json").is_file()
        )
    names = texts(head["parts"], "parts")
    for name in names:
        if not _PART_FOLDER.fullmatch(name) or (folder / name).is_symlink():
            raise Refused(f"parts: {name!r} is not a part folder of the report")
    return [folder / name for name in names]
