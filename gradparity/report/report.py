"""The report object: verdict, root causes, the table, and writing them to a folder."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gradparity.comparison.diff import DISPLAY_COLUMNS, STATUS_RANK, Row
from gradparity.core import escape
from gradparity.core.rounding import SIGNIFICANT_DIGITS, json_value, round_row
from gradparity.locate.layers import Finding, place
from gradparity.report.folder import REPORT_FILES, write_folder
from gradparity.report.html import render

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
MAX_HEATMAPS = 20
MAX_MD_PROBLEM_ROWS = 200


def safe_name(text: str, limit: int = 80) -> str:
    """A file-name-safe version of a layer or quantity name: [A-Za-z0-9_.-] only."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return cleaned[:limit] or "unnamed"


_ROW_FLOATS = (
    "max_abs",
    "max_rel",
    "cosine",
    "mismatch_frac",
    "ours_at_worst",
    "ref_at_worst",
    "allowed_at_worst",
)


def _row_json(row: dict) -> str:
    text = json.dumps(row)
    if "NaN" in text or "Infinity" in text:  # rare: redo with non-finite floats as strings
        text = json.dumps(json_value(row), allow_nan=False)
    return text


def _num(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return escape.markdown(value)


@dataclass
class Report:
    """Result of a comparison. ``ok`` is True when nothing diverged and nothing was found."""

    dtype: str
    tolerance: dict
    rows: list[Row]
    root_causes: list[Finding]
    warnings: list[Finding] = field(default_factory=list)
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

    @property
    def ok(self) -> bool:
        return not self.root_causes and not any(r.diverged for r in self.rows)

    @property
    def table(self) -> pd.DataFrame:
        """One row per (mode, layer, quantity), in run order."""
        return pd.DataFrame([r.as_dict() for r in self.rows], columns=[*TABLE_COLUMNS, "message"])

    def _json_rows(self) -> list[dict]:
        """Rows as report.json and table.csv write them: statistics rounded, no detail."""
        rows = []
        for r in self.rows:
            d = round_row(r.as_dict(), _ROW_FLOATS)
            d.pop("detail")
            rows.append(d)
        return rows

    def _head(self) -> dict:
        head = json_value(
            {
                "ok": self.ok,
                "dtype": self.dtype,
                "tolerance": None,
                "precision": {"significant_digits": SIGNIFICANT_DIGITS},
                "root_causes": [f.as_dict() for f in self.root_causes],
                "warnings": [f.as_dict() for f in self.warnings],
                "first_divergence": self.first_divergence,
                "conversions": self.conversions,
                "notes": self.notes,
                "meta": self.meta,
                **({"unmapped_taps": self.unmapped_taps} if self.unmapped_taps else {}),
            }
        )
        head["tolerance"] = json_value(self.tolerance, rounded=False)  # the options, as given
        return head

    def to_dict(self) -> dict:
        """The report.json content (design schema). Derived statistics are rounded to
        ``SIGNIFICANT_DIGITS`` significant digits, so it is the same on any machine."""
        return {**self._head(), "rows": [json_value(r) for r in self._json_rows()]}

    def to_json(self) -> str:
        """``to_dict`` as strict JSON: indented, with one row per line (readable in a diff,
        and fast: rows go through the C encoder)."""
        head = json.dumps(self._head(), indent=2, allow_nan=False)
        rows = ",\n    ".join(_row_json(r) for r in self._json_rows())
        body = f"[\n    {rows}\n  ]" if rows else "[]"
        return f'{head[:-2]},\n  "rows": {body}\n}}\n'

    def scope(self) -> str:
        """What was compared, in words: "4 layers", or "6 parameter gradients, 3 taps"."""
        params = sum(r.type == "parameter" for r in self.rows)
        if not params:
            return f"{len({r.layer for r in self.rows})} layers"
        taps = sum(r.type == "tap" for r in self.rows)
        return f"{params} parameter gradients" + (f", {taps} taps" if taps else "")

    def verdict(self) -> str:
        """One line: parity, or how many root causes (training reports add the step)."""
        if self.ok:
            return f"Parity OK: {self.scope()}, {len(self.rows)} tensors within tolerance"
        return f"Divergence: {len(self.root_causes)} root cause(s)"

    def summary(self) -> str:
        """A few lines for a terminal: verdict, then each root cause's message (control
        characters in names shown as codes)."""
        name = self.meta.get("model", "model")
        if self.ok:
            return escape.terminal(
                f"{name}: parity OK ({self.scope()}, {len(self.rows)} tensors, "
                f"{self.dtype}, rtol {self.tolerance['rtol']:g})"
            )
        lines = [f"{name}: {len(self.root_causes)} root cause(s)"]
        lines += [f"  - [{f.diagnosis}] {f.message}" for f in self.root_causes]
        lines += [f"  ! {w.message}" for w in self.warnings]
        return "\n".join(map(escape.terminal, lines))

    def to_markdown(self, plot_files: list[str] | None = None) -> str:
        """report.md: verdict and root causes first, then the tables (problems first), the
        plots (``plot_files``, names under plots/) and the run details. Every text a user
        controls is escaped (``escape.markdown``)."""
        md = escape.markdown
        out = [f"# gradparity report: {md(self.meta.get('model', 'model'))}", ""]
        out.append(f"**{md(self.verdict())}**")
        out.append("")
        if self.root_causes:
            out += ["## Root causes", ""]
            out += [
                f"{i}. `{f.diagnosis}` {md(f.message)}" for i, f in enumerate(self.root_causes, 1)
            ]
            out.append("")
        if self.warnings:
            out += ["## Warnings", ""]
            out += [f"- `{w.diagnosis}` {md(w.message)}" for w in self.warnings]
            out.append("")
        first = {k: v for k, v in self.first_divergence.items() if v}
        if first:
            out += ["## First divergence in the chain run", ""]
            out += [f"- {k}: {md(place(v['layer'], v['quantity']))}" for k, v in first.items()]
            out.append("")
        for mode in dict.fromkeys(["isolate", "chain", *(r.mode for r in self.rows)]):
            rows = [r for r in self.rows if r.mode == mode]
            if rows:
                out += [f"## {md(mode)} rows", "", *self._md_table(rows), ""]
        if plot_files:  # file names are safe_name()s: [A-Za-z0-9_.-] only
            out += ["## Plots", ""] + [f"![{md(f)}](plots/{f})" for f in plot_files] + [""]
        out += [
            "## Run details",
            "",
            f"- dtype: {md(self.dtype)}",
            f"- tolerance: {md(json.dumps(json_value(self.tolerance, rounded=False)))}",
        ]
        out += [f"- {md(k)}: {md(v)}" for k, v in self.meta.items()]
        out += [f"- layout: {md(c)}" for c in self.conversions]
        out += [f"- note: {md(n)}" for n in self.notes]
        return "\n".join(out) + "\n"

    @staticmethod
    def _md_table(rows: list[Row], max_ok: int = 30) -> list[str]:
        cols = [c for c in DISPLAY_COLUMNS if c not in ("mode", "type")]
        ordered = sorted(rows, key=lambda r: STATUS_RANK[r.status])
        ok_rows = [r for r in ordered if r.status == "ok"]
        problems = [r for r in ordered if r.status != "ok"]
        shown = problems[:MAX_MD_PROBLEM_ROWS] + ok_rows[:max_ok]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in shown:
            d = r.as_dict()
            lines.append("| " + " | ".join(_num(d[c]) for c in cols) + " |")
        if len(problems) > MAX_MD_PROBLEM_ROWS:
            lines.append(
                f"\n... and {len(problems) - MAX_MD_PROBLEM_ROWS} more problem rows (see table.csv)"
            )
        if len(ok_rows) > max_ok:
            lines.append(f"\n... and {len(ok_rows) - max_ok} more ok rows (see table.csv)")
        return lines

    def plots(self) -> list[tuple[str, bytes, str]]:
        """(file name, PNG bytes, caption): the error chart, then heatmaps of each root cause
        (ours, reference, difference) and of its Jacobian probe where one ran."""
        from gradparity.report import plots  # matplotlib loads only when a report is plotted

        name = self.meta.get("model", "model")
        files = [
            (
                "error_chart.png",
                plots.error_chart(self.rows, title=f"{name}: error per layer"),
                "Error relative to the tolerance, per layer: where it starts and how it spreads",
            )
        ]
        for i, f in enumerate(self.root_causes[:MAX_HEATMAPS], 1):
            arrays = self.arrays.get((f.layer, f.quantity), {})
            where = place(f.layer, f.quantity)
            if "ours" in arrays:
                files.append(
                    (
                        f"root_cause_{i:02d}_{safe_name(where)}.png",
                        plots.heatmaps(
                            f"{where} [{f.diagnosis}]", arrays["ours"], arrays["reference"]
                        ),
                        f"Root cause {i}, {where}: ours, reference and their difference",
                    )
                )
            if "jacobian_ours" in arrays:
                files.append(
                    (
                        f"jacobian_{i:02d}_{safe_name(where)}.png",
                        plots.jacobian_heatmaps(
                            f"{f.layer}: Jacobian of sample 0",
                            arrays["jacobian_ours"],
                            arrays["jacobian_reference"],
                        ),
                        f"Root cause {i}, {where}: Jacobian probe (d output_i / d input_j)",
                    )
                )
        return files

    def to_csv(self) -> str:
        """table.csv: every field of every row, statistics rounded as in report.json, and
        text cells a spreadsheet would run as formulas neutralised (``escape.csv_cell``)."""
        frame = pd.DataFrame(self._json_rows(), columns=[*TABLE_COLUMNS, "message"])
        for col in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[col]):
                frame[col] = frame[col].map(escape.csv_cell)
        return frame.to_csv(index=False)

    def files(self) -> dict[str, str | bytes]:
        """Every file of the report folder, by path relative to it: report.json, report.md,
        report.html, table.csv, plots/*.png, and a merged report's parts in subfolders."""
        plots = self.plots()
        files: dict[str, str | bytes] = {f"plots/{name}": png for name, png, _ in plots}
        files["report.json"] = self.to_json()
        files["report.md"] = self.to_markdown([p[0] for p in plots])
        files["table.csv"] = self.to_csv()
        files["report.html"] = render(self, plots)
        taken = set(files)
        for part in self.parts:
            folder = safe_name(part.meta.get("model", "model"))
            while f"{folder}/report.json" in taken or folder in ("plots", *REPORT_FILES):
                folder += "_"
            for name, data in part.files().items():
                files[f"{folder}/{name}"] = data
                taken.add(f"{folder}/{name}")
        return files

    def save(self, directory: str | os.PathLike) -> Path:
        """Write report.json, report.md, report.html, table.csv and plots/*.png into
        ``directory``, whole or not at all.

        The folder is built beside ``directory`` and swapped in with one rename
        (``gradparity.report.folder``): a reader never sees files from two runs, and a failed or
        killed save leaves the previous report as it was. ``directory`` must be new, empty,
        or an earlier report folder; one holding other files is refused (InputError).
        """
        return write_folder(directory, self.files())


def merge_reports(reports: list[Report]) -> Report:
    """One report over several models: layer names become "model/layer"."""
    rows: list[Row] = []
    roots: list[Finding] = []
    warnings: list[Finding] = []
    for rep in reports:
        prefix = f"{rep.meta.get('model', 'model')}/"
        for r in rep.rows:
            rows.append(Row(**{**r.as_dict(), "layer": prefix + r.layer}))
        for bucket, found in ((roots, rep.root_causes), (warnings, rep.warnings)):
            bucket += [Finding(**{**f.as_dict(), "layer": prefix + f.layer}) for f in found]
    arrays = {
        (f"{rep.meta.get('model', 'model')}/{layer}", quantity): values
        for rep in reports
        for (layer, quantity), values in rep.arrays.items()
    }
    first = reports[0]
    return Report(
        parts=list(reports),
        arrays=arrays,
        dtype=first.dtype,
        tolerance=first.tolerance,
        rows=rows,
        root_causes=roots,
        warnings=warnings,
        conversions=[c for rep in reports for c in rep.conversions],
        notes=[n for rep in reports for n in rep.notes],
        meta={
            "model": "+".join(r.meta.get("model", "model") for r in reports),
            **{k: v for k, v in first.meta.items() if k != "model"},
        },
    )
