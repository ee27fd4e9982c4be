"""Report.from_json: a saved report restored without re-running, and saved again byte for byte;
files that are not a gradparity report refused in one line; Tolerance on the report."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from textbook_setup import HIDDEN_DERIVATIVE, setup

import gradparity as gp
from gradparity.core.errors import InputError
from gradparity.core.finding import Finding
from gradparity.core.row import PIPELINE_FIELDS, Row
from gradparity.core.tolerance import Tolerance, tolerance_for
from gradparity.corpus import layer_bugs as bugs
from gradparity.corpus import selftest
from gradparity.corpus.selftest import compare_setup
from gradparity.corpus.training_bugs import TRAINING_BUGS
from gradparity.reference import mirror
from gradparity.report import saved
from gradparity.report.merge import merge_reports
from gradparity.report.report import Report, TrainingReport


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _saved_twice(report: Report, tmp: Path) -> tuple[Report, Path, Path]:
    first = report.save(tmp / "first")
    restored = Report.from_json(first)
    return restored, first, restored.save(tmp / "second")


@pytest.fixture(scope="module")
def buggy() -> Report:
    return compare_setup(*bugs.softmax_network(0, softmax=bugs.SoftmaxDiagonalOnly))


@pytest.fixture(scope="module")
def training() -> TrainingReport:
    bug = next(b for b in TRAINING_BUGS if b.name == "no_zero_grad")
    model, ours_opt, ref_opt = bug.build(0)
    return gp.compare_training(
        model,
        mirror(model),
        selftest.training_batches(0, n=4),
        ours_optimizer=ours_opt,
        reference_optimizer=ref_opt,
        validation=(np.random.default_rng(0).standard_normal((6, 5)), np.arange(6) % 3),
        eval_every=2,
    )


def test_round_trip_is_byte_identical_with_heatmaps_and_jacobians(buggy, tmp_path):
    _, first, second = _saved_twice(buggy, tmp_path)
    files = _tree(first)
    assert {"report.json", "table.csv", "report.md", "report.html"} <= files.keys()
    assert any(name.startswith("plots/jacobian_01_") for name in files)
    assert _tree(second) == files


def test_restored_report_holds_what_was_saved(buggy, tmp_path):
    restored = Report.from_json(buggy.save(tmp_path / "r") / "report.json")  # the file works too
    assert type(restored) is Report
    assert restored.ok is buggy.ok is False
    assert restored.verdict() == buggy.verdict()
    assert restored.dtype == buggy.dtype
    assert restored.tolerance.as_dict() == buggy.tolerance.as_dict()
    assert [type(f) for f in restored.root_causes] == [Finding]
    assert restored.to_dict() == buggy.to_dict()
    assert restored.first_divergence == buggy.first_divergence
    assert restored.notes == buggy.notes and restored.conversions == buggy.conversions
    assert restored.meta == json.loads(json.dumps(buggy.meta))
    assert len(restored.rows) == len(buggy.rows) and all(isinstance(r, Row) for r in restored.rows)


def test_an_ok_report_and_non_finite_statistics_round_trip(tmp_path):
    row = Row("chain", "fc", "Linear", "output", [2], [2], max_abs=float("inf"))
    row.max_rel, row.status, row.diagnosis = float("nan"), "diverged", "nonfinite"
    odd = Report(dtype="float64", tolerance=tolerance_for("float64"), rows=[row], root_causes=[])
    restored, first, second = _saved_twice(odd, tmp_path / "odd")
    assert _tree(second) == _tree(first)
    assert np.isinf(restored.rows[0].max_abs) and np.isnan(restored.rows[0].max_rel)
    parity = compare_setup(*bugs.base_network(0))
    restored, first, second = _saved_twice(parity, tmp_path / "ok")
    assert restored.ok and _tree(second) == _tree(first)


def test_a_merged_report_keeps_its_parts_in_their_folders(buggy, tmp_path):
    twin = compare_setup(*bugs.base_network(0), name=buggy.meta["model"])  # same folder name
    merged = merge_reports([buggy, twin, compare_setup(*bugs.base_network(1), name="plots")])
    restored, first, second = _saved_twice(merged, tmp_path)
    assert json.loads((first / "report.json").read_text())["parts"] == [
        buggy.meta["model"],
        buggy.meta["model"] + "_",
        "plots_",
    ]
    assert [p.meta["model"] for p in restored.parts] == [p.meta["model"] for p in merged.parts]
    assert _tree(second) == _tree(first)


def test_a_training_report_keeps_its_history(training, tmp_path):
    restored, first, second = _saved_twice(training, tmp_path)
    assert isinstance(restored, TrainingReport)
    assert restored.first_divergent_step == training.first_divergent_step == 2
    assert list(restored.history["step"]) == [1, 2, 3, 4]
    assert restored.verdict() == training.verdict()
    assert {"plots/training_curves.png", "plots/error_growth.png"} <= _tree(second).keys()
    assert _tree(second) == _tree(first)


def test_a_function_report_keeps_its_unmapped_taps(tmp_path):
    tap_map = {"delta[0]": "grad:4", "delta[1]": "grad:2"}
    report = gp.compare_function(**setup(HIDDEN_DERIVATIVE, tap_map=tap_map))
    restored, first, second = _saved_twice(report, tmp_path)
    assert restored.unmapped_taps == report.unmapped_taps
    assert _tree(second) == _tree(first)


def test_plots_missing_from_the_folder_are_left_out(buggy, tmp_path):
    folder = buggy.save(tmp_path / "r")
    for png in (folder / "plots").glob("root_cause_*"):
        png.unlink()
    restored = Report.from_json(folder)
    names = [name for name, _, _ in restored.plots()]
    assert "error_chart.png" in names and not any(n.startswith("root_cause") for n in names)
    assert "root_cause_01" not in restored.to_markdown(names)


def _hostile(tmp_path: Path, name: str) -> Path:
    """A folder whose report.json is hostile in the way ``name`` says."""
    folder = tmp_path / name
    folder.mkdir()
    good = {"ok": True, "dtype": "float64", "tolerance": tolerance_for("float64").as_dict()}
    good |= {"rows": [], "root_causes": []}
    content = {
        "invalid_json": "{not json",
        "a_list": "[1, 2]",
        "another_schema": json.dumps({"name": "x", "version": 3}),
        "bad_status": json.dumps(good | {"rows": [_row(status="fine")]}),
        "unknown_field": json.dumps(good | {"rows": [_row(colour="red")]}),
        "text_statistic": json.dumps(good | {"rows": [_row(max_abs="big")]}),
        "finding_without_layer": json.dumps(good | {"ok": False, "root_causes": [{}]}),
        "bad_tolerance": json.dumps(good | {"tolerance": {"rtol": 1}}),
        "false_verdict": json.dumps(good | {"rows": [_row(status="diverged")]}),
        "part_outside": json.dumps(good | {"parts": ["../elsewhere"]}),
        "model_not_text": json.dumps(good | {"meta": {"model": 5}}),
        "history_of_text": json.dumps(good | {"history": [{"step": 1, "loss_ours": "low"}]}),
        "divergence_nowhere": json.dumps(good | {"first_divergence": {"forward": {"layer": 1}}}),
        "deep": "[" * 100_000 + "]" * 100_000,
    }.get(name)
    if name == "not_utf8":
        (folder / "report.json").write_bytes(b"\xff\xfe{}")
    elif name == "folder_named_report_json":
        (folder / "report.json").mkdir()
    elif name == "not_a_png":
        (folder / "report.json").write_text(json.dumps(good))
        (folder / "plots").mkdir()
        (folder / "plots" / "error_chart.png").write_text("<script>")
    elif content is not None:
        (folder / "report.json").write_text(content)
    return folder


def _row(**changes) -> dict:
    row = {"mode": "chain", "layer": "fc", "type": "Linear", "quantity": "output"}
    return row | {"shape_ours": [2], "shape_ref": [2], "status": "ok"} | changes


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("missing", "does not exist"),
        ("folder_named_report_json", "is a folder, not a report.json file"),
        ("invalid_json", "invalid JSON"),
        ("deep", "invalid JSON"),
        ("not_utf8", "not UTF-8"),
        ("a_list", "lacks 'ok'"),
        ("another_schema", "lacks 'ok', 'dtype', 'tolerance', 'rows', 'root_causes'"),
        ("bad_status", "rows[0]: status: must be one of"),
        ("unknown_field", "rows[0]: unknown fields ['colour']"),
        ("text_statistic", "rows[0]: max_abs: expected a number"),
        ("finding_without_layer", "root_causes[0]: missing"),
        ("bad_tolerance", "tolerance: missing 'atol'"),
        ("false_verdict", "it says ok is True"),
        ("part_outside", "'../elsewhere' is not a part folder"),
        ("not_a_png", "is not a PNG image"),
        ("model_not_text", "meta.model: expected text"),
        ("history_of_text", "history[0]: loss_ours: expected a number"),
        ("divergence_nowhere", "first_divergence.forward: expected a layer and a quantity"),
    ],
)
def test_what_is_not_a_saved_report_is_refused_in_one_line(tmp_path, name, needle):
    folder = _hostile(tmp_path, name) if name != "missing" else tmp_path / "nothing"
    with pytest.raises(InputError) as caught:
        Report.from_json(folder)
    message = str(caught.value)
    assert needle in message and "\n" not in message
    assert str(folder) in message


def test_a_file_that_is_not_a_report_is_refused(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt is not a gradparity report\.json"):
        Report.from_json(notes)


def test_the_readers_cover_every_field_of_a_row_and_a_finding():
    # detail and the pipeline's typed facts are not saved (Row.as_record)
    row_fields = {f.name for f in fields(Row)} - {"detail", *PIPELINE_FIELDS}
    assert set(saved._ROW_FIELDS) == row_fields
    assert set(saved._FINDING_FIELDS) == {f.name for f in fields(Finding)}


def test_tolerance_is_stored_as_such_and_written_as_before(buggy):
    assert isinstance(buggy.tolerance, Tolerance)
    written = json.loads(buggy.to_json())["tolerance"]
    assert written == {"rtol": 1e-7, "atol": 1e-12, "dtype": "float64", "noise_floor": 1e-3}
    assert saved.tolerance(written).as_dict() == written
    as_dict = Report("float64", tolerance_for("float64").as_dict(), [], [])  # older callers
    assert isinstance(as_dict.tolerance, Tolerance)
    assert as_dict.tolerance.as_dict() == written


@pytest.mark.parametrize("example", ["example", "train-example"])
def test_the_committed_example_reports_render_again_byte_for_byte(example):
    folder = Path(__file__).resolve().parents[1] / "reports" / example
    files = Report.from_json(folder).files()
    as_bytes = {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}
    assert as_bytes == _tree(folder)
