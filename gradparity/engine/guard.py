"""Evidence steps never end a run: an error inside one becomes a note, not a traceback.

Evidence only sharpens what the compare step already found, so a probe that cannot run on some
layer (a define-by-run framework's graph node, a layer too odd for a Jacobian) costs that
evidence and nothing else: the error is named on the row the step was examining and in the
report's notes, and the step goes on with its next row.
"""

from __future__ import annotations

import re

from gradparity.core.errors import describe_error
from gradparity.core.plan import Context, Evidence
from gradparity.core.row import Row


def step_name(step: Evidence) -> str:
    """A step's name for a reader: ``jacobian_probe`` -> "jacobian probe", ``StaleProbe`` ->
    "stale probe"."""
    raw = getattr(step, "__name__", None) or type(step).__name__
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", raw).replace("_", " ")
    return words.strip().lower()


def _note_failure(ctx: Context, name: str, exc: Exception, row: Row | None) -> None:
    error = describe_error(exc)
    where = f" on {row.layer} {row.quantity} ({row.mode} run)" if row is not None else ""
    ctx.notes.append(f"the {name} raised {error}{where}; the report is built without that evidence")
    if row is not None:
        row.detail.setdefault("probe_errors", []).append({"probe": name, "error": error})


def gather(step: Evidence, ctx: Context) -> None:
    """Run one evidence step on ``ctx``. An exception is noted on the row the step was
    examining (``Context.each_probed``) and in the notes; the step then runs again past that
    row, so the rows after it still get their evidence. An error outside any row ends the
    step there."""
    ctx.probed = set()
    while True:
        ctx.probing = None
        try:
            step(ctx)
            return
        except Exception as exc:  # any error of a probe: the report must still be built
            row = ctx.probing
            _note_failure(ctx, step_name(step), exc, row)
            if row is None or id(row) in ctx.probed:
                return
            ctx.probed.add(id(row))
        finally:
            ctx.probing = None
