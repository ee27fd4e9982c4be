"""Text a user controls (model, layer, parameter and class names, error messages), made inert
for each place a report puts it.

A layer named ``<script>alert(1)</script>`` must reach report.html and report.md as text, a
parameter named ``=HYPERLINK(...)`` must not become a formula when table.csv is opened in a
spreadsheet, a name with ``$`` must not switch a plot title into mathtext, and a name with
terminal control codes must not repaint the terminal.
"""

from __future__ import annotations

import html as _html
import re

# Characters with a meaning in CommonMark/GFM inline text: code, emphasis, strikethrough,
# links and images, table cells, escapes. ``<``, ``>`` and ``&`` become entities instead.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@")  # and tab and CR, which ``terminal`` replaces first
# C0 and C1 control characters, and the bidirectional overrides that make text display in
# another order than it is stored in ("Trojan Source").
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_HTML_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def html(text: object) -> str:
    """``text`` for HTML element content or a quoted attribute value; control characters and
    bidirectional overrides shown as codes (newlines and tabs kept, for ``<pre>`` blocks)."""
    return _html.escape(_HTML_CONTROL.sub(_code, str(text)), quote=True)


def markdown(text: object) -> str:
    """``text`` as literal Markdown inline text, on one line (safe in a table cell too);
    control characters are shown as codes, as in the terminal."""
    one_line = terminal(" ".join(str(text).split()))
    entities = one_line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", entities)


def csv_cell(value: object) -> object:
    """A table.csv cell: control characters shown as codes (a carriage return would end the
    row where the CSV writer does not quote it, and let the next cell start a formula), then
    strings a spreadsheet would run as a formula get a leading apostrophe (shown, not run);
    numbers and other values pass unchanged."""
    if not isinstance(value, str):
        return value
    value = terminal(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def plot_text(text: object) -> str:
    """``text`` for a matplotlib title or label: ``$`` is escaped so it is never mathtext, and
    control characters (which no font draws) are shown as codes."""
    return terminal(text).replace("$", r"\$")


def terminal(text: object) -> str:
    """One line of ``text`` with every control character (escape sequences, carriage returns,
    bells, and newlines, which would forge lines) shown as a ``\\x..`` code. Apply it to each
    line a program prints, not to text already joined with newlines."""
    return _CONTROL.sub(_code, str(text))


def _code(match: re.Match) -> str:
    point = ord(match.group())
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"
