"""The report object: verdict, root causes, the table, and writing them to a folder."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from gradparity.core import escape, losses
from gradparity.core.address import place
from gradparity.core.finding import Finding
from gradparity.core.rounding import SIGNIFICANT_DIGITS, json_value, round_row
from gradparity.core.row import Row
from gradparity.core.status import Status
from gradparity.core.tolerance import Tolerance
from gradparity.report import gc_freeze, markdown, saved, terminal
from gradparity.report.folder import REPORT_FILES, write_folder
from gradparity.report.html import fragment, render

TABLE_COLUMNS = [
    "mode",
    "layer",
    "type",
    "quantity",
    "shape_ours",
    "shape_ref",
    "max_abs",
    "max_rel",
    "cosine",
    "mismatch_frac",
    "worst_index",
    "ours_at_worst",
    "ref_at_worst",
    "allowed_at_worst",
    "status",
    "diagnosis",
    "conversion",
    "step",
]
_CSV_COLUMNS = [*TABLE_COLUMNS, "message"]  # table.csv's columns, in order
MAX_HEATMAPS = 20
# A plot a report may show: file name, how to draw it (None: the data is missing), caption.
Wanted = tuple[str, Callable[[], bytes] | None, str]


def safe_name(text: str, limit: int = 80) -> str:
    """A file-name-safe version of a layer or quantity name: [A-Za-z0-9_.-] only."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return cleaned[:limit] or "unnamed"


def _row_json(row: dict) -> str:
    text = json.dumps(row)
    if "NaN" in text or "Infinity" in text:  # rare: redo with non-finite floats as strings
        text = json.dumps(json_value(row), allow_nan=False)
    return text


@dataclass
class Report:
    """Result of a comparison. ``ok`` is True when nothing diverged and nothing was found
    but ``minor`` findings (differences small against the tensor's scale and consistent with a
    small constant, or with no effect on the gradients), which count only when ``strict``.

    ``tolerance`` is the ``Tolerance`` the run compared with (a dict as report.json stores it
    is accepted too, and turned into one).
    """

    dtype: str
    tolerance: Tolerance
    rows: list[Row]
    root_causes: list[Finding]
    warnings: list[Finding] = field(default_factory=list)
    # Listed after root causes; they make ``ok`` False only when ``strict``.
    minor: list[Finding] = field(default_factory=list)
    strict: bool = False
    first_divergence: dict = field(default_factory=dict)
    conversions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    # compare_function: taps recorded but not in tap_map, as {"name", "shape"}
    unmapped_taps: list[dict] = field(default_factory=list)
    # (layer, quantity) of each root cause -> {"ours", "reference"[, "jacobian_ours",
    # "jacobian_reference"]}: the values behind the plots; not part of report.json.
    arrays: dict = field(default_factory=dict, repr=False)
    # A merged report's own reports, saved whole in subfolders named after their models.
    parts: list[Report] = field(default_factory=list, repr=False)
    # A report read back by ``from_json``: the PNGs of its folder's plots/ by file name (None
    # for a report from a run, which draws every plot itself).
    saved_plots: dict[str, bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.tolerance, dict):
            self.tolerance = Tolerance(**self.tolerance)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Report:
        """The report saved at ``path`` (a report.json file or a report folder), restored
        without running anything: verdict, rows, root causes, notes, meta, a merged report's
        parts (from its subfolders) and a training report's history.

        report.json holds no arrays and rounds its statistics, which cannot draw the plots
        again as they were (heatmaps need the arrays; the error chart, ours minus reference
        at full precision), so the plots are the PNGs of the folder's plots/, kept as they
        are; one missing there is left out. Saving the restored report writes the same bytes
        as the save it was read from. Raises InputError, one line naming the file, for
        anything that is not a gradparity report.
        """
        head, file = saved.read(path)
        kind = TrainingReport if "history" in head else Report
        try:
            report = kind(
                **kind._saved_fields(head),
                parts=[Report.from_json(p) for p in saved.part_folders(head, file.parent)],
                saved_plots=saved.plots(file.parent),
            )
        except saved.Refused as exc:
            raise saved.refusal(file, exc) from None
        if report.ok is not head["ok"]:
            raise saved.refusal(
                file, saved.Refused(f"it says ok is {head['ok']!r}, but its rows say otherwise")
            )
        return report

    @classmethod
    def _saved_fields(cls, head: dict) -> dict[str, Any]:
        """Constructor arguments from report.json's content (checked field by field)."""
        return {
            "dtype": saved.text(head["dtype"], "dtype"),
            "tolerance": saved.tolerance(head["tolerance"]),
            "rows": saved.rows(head["rows"]),
            "root_causes": saved.findings(head["root_causes"], "root_causes"),
            "warnings": saved.findings(head.get("warnings", []), "warnings"),
            "minor": saved.findings(head.get("minor", []), "minor"),
            "strict": saved.flag(head.get("strict", False), "strict"),
            "first_divergence": saved.first_divergence(head.get("first_divergence", {})),
            "conversions": saved.texts(head.get("conversions", []), "conversions"),
            "notes": saved.texts(head.get("notes", []), "notes"),
            "meta": saved.meta(head.get("meta", {})),
            "unmapped_taps": saved.objects(head.get("unmapped_taps", []), "unmapped_taps"),
        }

    @property
    def ok(self) -> bool:
        if self.root_causes or (self.strict and self.minor):
            return False
        # With no root cause, inherited rows follow a minor finding (the only thing left).
        settled = (Status.MINOR, Status.INHERITED) if self.minor else (Status.MINOR,)
        return not any(r.diverged and r.status not in settled for r in self.rows)

    @property
    def table(self) -> pd.DataFrame:
        """One row per (mode, layer, quantity), in run order."""
        return pd.DataFrame([r.as_dict() for r in self.rows], columns=[*TABLE_COLUMNS, "message"])

    def _json_rows(self) -> list[dict]:
        """Rows as report.json and table.csv write them: statistics rounded, no detail."""
        return [round_row(r.as_record(), saved.STATISTICS) for r in self.rows]

    def _head(self) -> dict:
        head = json_value(
            {
                "ok": self.ok,
                "dtype": self.dtype,
                "tolerance": None,
                "precision": {"significant_digits": SIGNIFICANT_DIGITS},
                "root_causes": [f.as_dict() for f in self.root_causes],
                "minor": [f.as_dict() for f in self.minor],
                "strict": self.strict,
                "warnings": [f.as_dict() for f in self.warnings],
                "first_divergence": self.first_divergence,
                "conversions": self.conversions,
                "notes": self.notes,
                "meta": self.meta,
                **({"unmapped_taps": self.unmapped_taps} if self.unmapped_taps else {}),
                **({"parts": self._part_folders()} if self.parts else {}),
            }
        )
        # The options, as given (not rounded).
        head["tolerance"] = json_value(self.tolerance.as_dict(), rounded=False)
        return head

    def to_dict(self) -> dict:
        """The report.json content (design schema). Derived statistics are rounded to
        ``SIGNIFICANT_DIGITS`` significant digits, so it is the same on any machine."""
        return {**self._head(), "rows": [json_value(r) for r in self._json_rows()]}

    def to_json(self) -> str:
        """``to_dict`` as strict JSON: indented, with one row per line (readable in a diff,
        and fast: rows go through the C encoder)."""
        return self._json_text(self._json_rows())

    def _json_text(self, records: list[dict]) -> str:
        """report.json of ``records`` (``_json_rows``, which ``files`` computes once)."""
        head = json.dumps(self._head(), indent=2, allow_nan=False)
        rows = ",\n    ".join(_row_json(r) for r in records)
        body = f"[\n    {rows}\n  ]" if rows else "[]"
        return f'{head[:-2]},\n  "rows": {body}\n}}\n'

    def scope(self) -> str:
        """What was compared, in words: "4 layers", or "6 parameter gradients, 3 taps"."""
        params = sum(r.type == "parameter" for r in self.rows)
        if not params:
            return f"{len({r.layer for r in self.rows})} layers"
        taps = sum(r.type == "tap" for r in self.rows)
        return f"{params} parameter gradients" + (f", {taps} taps" if taps else "")

    def tolerance_words(self) -> str:
        """How the rows were judged, in words: "rtol 1e-07", or for float32 judged by measured
        rounding "measured budgets" (``report.tolerance`` is then only the fixed
        tolerance the evidence steps use, not what any row was held to)."""
        if any(r.detail.get("float32_budget") for r in self.rows):
            return "measured budgets"
        return f"rtol {self.tolerance.rtol:g}"

    def minor_words(self) -> str:
        """ ", with 1 minor difference" (the count), or "" for a report without any."""
        count = len(self.minor)
        if not count:
            return ""
        return f", with {count} minor difference{'s' if count > 1 else ''}"

    def verdict(self) -> str:
        """One line: parity, or how many root causes (training reports add the step); minor
        differences are counted in either (under strict they alone make a divergence)."""
        if self.ok:
            if self.minor:
                return f"Parity{self.minor_words()}: {self.scope()}, {len(self.rows)} tensors"
            return f"Parity OK: {self.scope()}, {len(self.rows)} tensors within tolerance"
        if not self.root_causes:
            return f"Divergence under strict{self.minor_words()}"
        return f"Divergence: {len(self.root_causes)} root cause(s){self.minor_words()}"

    def loss_lines(self) -> list[str]:
        """The loss each side ran, and, when ours' was gradparity's default, that the user's
        own loss was not checked (one line each; none for a report that names no loss)."""
        loss, unchecked = losses.loss_line(self.meta), losses.unchecked_notice(self.meta)
        return ([loss] if loss else []) + ([f"! {unchecked}"] if unchecked else [])

    def summary(self) -> str:
        """Lines for a terminal, as ``gradparity check`` prints them but never coloured: the
        verdict, the loss each side ran (and whether the user's own loss went unchecked), then
        for a divergence the compact table of the problem rows and each root cause's message
        (``gradparity.report.terminal``); control characters in names are shown as codes."""
        name = self.meta.get("model", "model")
        lines = [f"  {line}" for line in self.loss_lines()]
        if self.ok and not self.minor:
            head = (
                f"{name}: parity OK ({self.scope()}, {len(self.rows)} tensors, "
                f"{self.dtype}, {self.tolerance_words()})"
            )
            return "\n".join(map(escape.terminal, [head, *lines]))
        if self.ok:
            first = f"{name}: parity{self.minor_words()} ({self.dtype}, "
            first += f"{self.tolerance_words()})"
        else:
            first = f"{name}: {len(self.root_causes)} root cause(s){self.minor_words()}"
            first += " (strict)" if self.strict and self.minor else ""
        return "\n".join(
            [*map(escape.terminal, [first, *lines]), *terminal.problem_lines(self, colour=False)]
        )

    def _repr_html_(self) -> str:
        """The report in a Jupyter notebook: verdict, root causes, the table and the plots
        inline, as report.html shows them (escaped, self-contained, its style scoped to the
        report's own element)."""
        return fragment(self, self.plots())

    def to_markdown(self, plot_files: list[str] | None = None) -> str:
        """report.md: verdict and root causes first, then the tables (problems first), the
        plots (``plot_files``, names under plots/) and the run details
        (``gradparity.report.markdown``)."""
        return markdown.render(self, plot_files)

    def _kept_or_drawn(self, wanted: list[Wanted]) -> list[tuple[str, bytes, str]]:
        """(file name, PNG bytes, caption) of each wanted plot (file name, how to draw it or
        None when this report lacks the data, caption). A report read back by
        ``from_json`` keeps the PNGs its folder held, since report.json's rounded statistics
        cannot draw them again as they were; a plot missing there is left out."""
        if self.saved_plots is not None:
            kept = [(f, self.saved_plots.get(f), caption) for f, _, caption in wanted]
            return [(f, png, caption) for f, png, caption in kept if png is not None]
        return [(f, draw(), caption) for f, draw, caption in wanted if draw is not None]

    def plots(self) -> list[tuple[str, bytes, str]]:
        """(file name, PNG bytes, caption): the error chart, then heatmaps of each root cause
        (ours, reference, difference) and of its Jacobian probe where one ran."""
        from gradparity.report import plots  # matplotlib loads only when a report is plotted

        name = self.meta.get("model", "model")
        wanted: list[Wanted] = [
            (
                "error_chart.png",
                partial(plots.error_chart, self.rows, title=f"{name}: error per layer"),
                "Error relative to the tolerance, per layer: where it starts and how it spreads",
            )
        ]
        for i, f in enumerate(self.root_causes[:MAX_HEATMAPS], 1):
            arrays = self.arrays.get((f.layer, f.quantity), {})
            where = place(f.layer, f.quantity)
            heatmaps = jacobian = None
            if "ours" in arrays:
                heatmaps = partial(
                    plots.heatmaps, f"{where} [{f.diagnosis}]", arrays["ours"], arrays["reference"]
                )
            if "jacobian_ours" in arrays:
                title = f"{f.layer}: Jacobian of sample 0"
                jacobian = partial(
                    plots.jacobian_heatmaps,
                    title,
                    arrays["jacobian_ours"],
                    arrays["jacobian_reference"],
                )
            wanted += [
                (
                    f"root_cause_{i:02d}_{safe_name(where)}.png",
                    heatmaps,
                    f"Root cause {i}, {where}: ours, reference and their difference",
                ),
                (
                    f"jacobian_{i:02d}_{safe_name(where)}.png",
                    jacobian,
                    f"Root cause {i}, {where}: Jacobian probe (d output_i / d input_j)",
                ),
            ]
        return self._kept_or_drawn(wanted)

    def to_csv(self) -> str:
        """table.csv: every field of every row, statistics rounded as in report.json, and
        text cells a spreadsheet would run as formulas neutralised (``escape.csv_cell``)."""
        return _csv_text(self._json_rows())

    def files(self) -> dict[str, str | bytes]:
        """Every file of the report folder, by path relative to it: report.json, report.md,
        report.html, table.csv, plots/*.png, and a merged report's parts in subfolders."""
        with gc_freeze.frozen():
            return self._drawn_files()

    def _drawn_files(self) -> dict[str, str | bytes]:
        plots = self.plots()
        records = self._json_rows()  # rounded once for report.json and table.csv
        files: dict[str, str | bytes] = {f"plots/{name}": png for name, png, _ in plots}
        files["report.json"] = self._json_text(records)
        files["report.md"] = self.to_markdown([p[0] for p in plots])
        files["table.csv"] = _csv_text(records)
        files["report.html"] = render(self, plots)
        for folder, part in zip(self._part_folders(), self.parts):
            for name, data in part.files().items():
                files[f"{folder}/{name}"] = data
        return files

    def _part_folders(self) -> list[str]:
        """The subfolder of each part of a merged report: its model's name, with "_" added
        while that is taken (by an earlier part or by the report's own files)."""
        taken, folders = {"plots", *REPORT_FILES}, []
        for part in self.parts:
            folder = safe_name(part.meta.get("model", "model"))
            while folder in taken:
                folder += "_"
            taken.add(folder)
            folders.append(folder)
        return folders

    def save(self, directory: str | os.PathLike) -> Path:
        """Write report.json, report.md, report.html, table.csv and plots/*.png into
        ``directory``, whole or not at all.

        The folder is built beside ``directory`` and swapped in with one rename
        (``gradparity.report.folder``): a reader never sees files from two runs, and a failed or
        killed save leaves the previous report as it was. ``directory`` must be new, empty,
        or an earlier report folder; one holding other files is refused (InputError).
        """
        return write_folder(directory, self.files())


@dataclass
class TrainingReport(Report):
    """A Report over steps: ``history`` has one row per step, ``first_divergent_step`` is the
    first step where anything diverged (None when none). Rows are kept for step 1, the first
    divergent step and the last step."""

    history: pd.DataFrame | None = None
    first_divergent_step: int | None = None

    @classmethod
    def _saved_fields(cls, head: dict) -> dict[str, Any]:
        step = head.get("first_divergent_step")
        return {
            **super()._saved_fields(head),
            "history": pd.DataFrame(saved.history(head["history"])),
            "first_divergent_step": None if step is None else saved.whole(step, "step"),
        }

    def verdict(self) -> str:
        steps = 0 if self.history is None else len(self.history)
        if self.ok:
            text = f"Parity OK over {steps} steps"
            if self.history is not None and "val_acc_ours" in self.history:
                last = self.history.dropna(subset=["val_acc_ours"]).iloc[-1]
                text += (
                    f"; validation accuracy ours {last.val_acc_ours:.3f}, reference "
                    f"{last.val_acc_ref:.3f}"
                )
            return text
        return (
            f"Divergence at step {self.first_divergent_step} of {steps}: "
            f"{len(self.root_causes)} root cause(s)"
        )

    def _stored_history(self) -> list[dict]:
        """``history`` as report.json stores it: rounded as rows are, non-finite as null."""
        records = [] if self.history is None else self.history.to_dict(orient="records")
        return [json_value(_finite_or_none(h)) for h in records]

    def _head(self) -> dict:
        return {
            **super()._head(),
            "first_divergent_step": self.first_divergent_step,
            "history": self._stored_history(),
        }

    def plots(self) -> list[tuple[str, bytes, str]]:
        """The training curves and the error growth, then ``Report.plots``."""
        from gradparity.report import training_plots as plots

        name = self.meta.get("model", "model")
        history = self.history if self.history is not None and len(self.history) > 0 else None
        wanted: list[Wanted] = [
            (
                "training_curves.png",
                partial(plots.training_curves, history, name) if history is not None else None,
                "Loss and validation accuracy per step, ours and reference",
            ),
            (
                "error_growth.png",
                partial(plots.error_growth, history, name) if history is not None else None,
                "Largest error per quantity kind and step, relative to the tolerance",
            ),
        ]
        return self._kept_or_drawn(wanted) + super().plots()


def _csv_text(records: list[dict]) -> str:
    """table.csv of ``records`` (``Report._json_rows``): every text cell through
    ``escape.csv_cell``. Names repeat on every row of a layer, so each distinct text is
    escaped once; other values (numbers, shapes, None) pass unchanged, as csv_cell leaves them.

    Written with the csv module, cell by cell as pandas' ``to_csv`` writes them (it uses the
    same writer), at a fraction of the cost; a column pandas would turn into floats (whole
    numbers mixed with missing values or floats: "3.0") is left to pandas."""
    escaped: dict[str, object] = {}
    table = []
    for record in records:
        row = [record.get(key) for key in _CSV_COLUMNS]
        for i, value in enumerate(row):
            if isinstance(value, str):
                if value not in escaped:
                    escaped[value] = escape.csv_cell(value)
                row[i] = escaped[value]
            elif value != value:  # NaN: an empty cell, as pandas writes a missing value
                row[i] = None
        table.append(row)
    if any(map(_printed_as_floats, zip(*table))):
        return pd.DataFrame(table, columns=_CSV_COLUMNS).to_csv(index=False)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    writer.writerows(table)  # None as an empty cell
    return out.getvalue()


def _printed_as_floats(column: tuple) -> bool:
    """Whether pandas stores this column as floats although it holds whole numbers: those
    mixed only with floats or missing values (bools and texts keep a column as objects)."""
    kinds = {type(v) for v in column}
    return int in kinds and len(kinds) > 1 and kinds <= {int, float, type(None)}


def _finite_or_none(record: dict) -> dict:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }
