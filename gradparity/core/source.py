"""Where in the user's source a finding points: ``{"file", "first_line", "last_line"}``.

Paths are relative to the current directory when the file is inside it (reports stay the same
on every machine that runs from the repository root); code without source (built-ins, C
extensions, lambdas typed in a REPL) has no source entry, never an error.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
import tokenize
from pathlib import Path
from typing import Any

MAX_SOURCE_BYTES = 4_000_000  # larger files are not read for a report's source lines


def shown_path(file: str) -> str:
    """``file`` relative to the current directory when inside it, else as given; "/" as the
    separator either way."""
    try:
        path = Path(file).resolve()
        relative = path.relative_to(Path.cwd().resolve())
    except (OSError, ValueError):
        return Path(file).as_posix()
    return relative.as_posix()


def source_span(file: str, first_line: int, last_line: int | None = None) -> dict:
    """The source entry for lines ``first_line``..``last_line`` of ``file``."""
    last = first_line if last_line is None else max(first_line, last_line)
    return {"file": shown_path(file), "first_line": first_line, "last_line": last}


def source_of(code: Any) -> dict | None:
    """The file and lines of a function or method, or None when it has no readable source."""
    code = inspect.unwrap(getattr(code, "__func__", code))
    try:
        file = inspect.getsourcefile(code)
        lines, first = inspect.getsourcelines(code)
    except (TypeError, OSError, IndexError, SyntaxError, tokenize.TokenError):
        return None
    if not file or not lines or not os.path.isfile(file):
        return None
    return source_span(file, max(first, 1), max(first, 1) + len(lines) - 1)


def _gradient_names(param: str) -> set[str]:
    """The names code gives the gradient of ``param``: W1, dW1, d_W1, grad_W1, W1_grad, gW1."""
    return {param, f"d{param}", f"d_{param}", f"grad_{param}", f"{param}_grad", f"g{param}"}


def _writes(target: ast.expr, names: set[str]) -> bool:
    """Whether an assignment target writes one of ``names``: a variable (dW1 = ...), an
    attribute (self.dW1 = ...), a string key (grads["dW1"] = ...), or an element of a tuple."""
    if isinstance(target, ast.Tuple | ast.List):
        return any(_writes(t, names) for t in target.elts)
    if isinstance(target, ast.Name):
        return target.id in names
    if isinstance(target, ast.Attribute):
        return target.attr in names
    if isinstance(target, ast.Subscript):
        key = target.slice
        return isinstance(key, ast.Constant) and key.value in names
    return False


def assignment_of(code: Any, param: str) -> dict | None:
    """The statement of ``code`` (a function) that last assigns the gradient of ``param``
    (``grads["dW1"] = ...``, ``dW1 = ...``, ``self.dW1 += ...``), or None when none is found or
    the code has no readable source."""
    whole = source_of(code)
    if whole is None:
        return None
    try:
        lines, first = inspect.getsourcelines(inspect.unwrap(getattr(code, "__func__", code)))
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (TypeError, OSError, SyntaxError, ValueError, tokenize.TokenError):
        return None
    names = _gradient_names(param)
    found: ast.stmt | None = None
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        if any(_writes(t, names) for t in targets) and (
            found is None or node.lineno > found.lineno
        ):
            found = node
    if found is None:
        return None
    offset = max(first, 1) - 1
    end = found.end_lineno or found.lineno
    return {**whole, "first_line": offset + found.lineno, "last_line": offset + end}


def where(source: dict | None) -> str:
    """``file:line`` (the first line; "(lines first-last)" after it for a span), or "" without
    a source entry."""
    if not source:
        return ""
    first, last = source["first_line"], source["last_line"]
    return f"{source['file']}:{first}" + (f" (lines {first}-{last})" if last != first else "")


def source_text(source: dict | None, limit: int = 12) -> list[tuple[int, str]]:
    """The lines a source entry names, read now, as (line number, text), at most ``limit``
    (the first ones); empty when the file cannot be read."""
    if not source or not str(source["file"]).endswith(".py"):  # Python source only
        return []
    first, last = source["first_line"], source["last_line"]
    try:
        path = Path(source["file"])
        if not path.is_file() or path.stat().st_size > MAX_SOURCE_BYTES:
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return []
    last = min(last, first + limit - 1, len(lines))
    return [(n, lines[n - 1].rstrip()) for n in range(first, last + 1)]
