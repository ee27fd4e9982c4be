"""The typed core: ``Address`` (every quantity form report.json uses, round trip), ``Status``,
``Row`` and ``Finding`` as plain data, and the diagnosis labels in one place."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gradparity.core.address import Address, Kind, kind_of, place, tap_target
from gradparity.core.finding import Finding, finding_from_row
from gradparity.core.labels import LABELS, UNEXPLAINED
from gradparity.core.row import PIPELINE_FIELDS, Row
from gradparity.core.status import STATUS_RANK, Status

# (quantity string, kind, name): every form a report names a compared tensor by.
QUANTITIES = [
    ("output", Kind.OUTPUT, None),
    ("grad_input", Kind.GRAD_INPUT, None),
    ("grad_output", Kind.GRAD_OUTPUT, None),
    ("loss", Kind.LOSS, None),
    ("call", Kind.CALL, None),
    ("grads", Kind.GRADS, None),
    ("grad:W", Kind.GRAD, "W"),
    ("grad:fc1.weight", Kind.GRAD, "fc1.weight"),
    ("param:b", Kind.PARAM, "b"),
    ("state:W.exp_avg", Kind.STATE, "W.exp_avg"),
    ("state:m.W", Kind.STATE, "m.W"),
]


# ------------------------------------------------------------------ Address


@pytest.mark.parametrize(("quantity", "kind", "name"), QUANTITIES)
def test_every_quantity_form_parses_to_its_fields_and_prints_back(quantity, kind, name):
    address = Address.parse(quantity, "fc1", call=2)
    assert (address.place, address.kind, address.name, address.call) == ("fc1", kind, name, 2)
    assert address.quantity == quantity
    assert Address(address.place, kind, name, address.call) == address  # a plain value
    assert kind_of(quantity) is kind


def test_a_name_after_the_colon_keeps_its_own_colons():
    assert Address.parse("grad:a:b").name == "a:b"
    assert Address.parse("grad:a:b").quantity == "grad:a:b"


@pytest.mark.parametrize("text", ["delta2", "", "grad", "Grad:W", "output:x", "grad_input:W"])
def test_a_string_that_is_no_quantity_is_refused(text):
    with pytest.raises(ValueError):
        Address.parse(text)
    assert kind_of(text) is None


def test_named_kinds_need_a_name_and_the_others_refuse_one():
    with pytest.raises(ValueError, match="needs a name"):
        Address("fc1", Kind.GRAD)
    with pytest.raises(ValueError, match="takes no name"):
        Address("fc1", Kind.OUTPUT, "W")


def test_address_is_frozen_and_hashable():
    a = Address.parse("grad:W", "fc1")
    with pytest.raises(AttributeError):
        a.name = "b"  # type: ignore[misc]
    assert {a: 1}[Address("fc1", Kind.GRAD, "W")] == 1


def test_gradients_are_the_backward_kinds():
    backward = {q for q, _, _ in QUANTITIES if Address.parse(q).is_gradient}
    assert backward == {"grad_input", "grad_output", "grad:W", "grad:fc1.weight"}


@pytest.mark.parametrize(
    ("quantity", "spoken"),
    [
        ("grad:b", "fc2.b"),
        ("param:b", "fc2.b update"),
        ("state:W.exp_avg", "fc2.W exp_avg"),
        ("output", "fc2 output"),
        ("grad_input", "fc2 grad_input"),
    ],
)
def test_place_names_a_quantity_as_a_person_does(quantity, spoken):
    assert place("fc2", quantity) == spoken
    assert Address.parse(quantity, "fc2").spoken() == spoken


def test_place_of_a_word_that_is_no_quantity_reads_layer_then_word():
    assert place("fc2", "weird") == "fc2 weird"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("fc1", ("output", "fc1")),
        ("grad:fc1", ("grad_output", "fc1")),
        ("grad:cell@2", ("grad_output", "cell@2")),
        ("grad_fc", ("output", "grad_fc")),
    ],
)
def test_tap_targets_name_an_output_or_a_gradient(target, expected):
    assert tap_target(target) == expected
    assert all(type(part) is str for part in tap_target(target))


# ------------------------------------------------------------------ Status


def test_status_values_are_the_report_words():
    assert [s.value for s in Status] == ["ok", "diverged", "root_cause", "inherited", "minor"]
    for status in Status:
        assert status == status.value and str(status) == status.value
        assert f"{status}" == status.value
        assert json.dumps(status) == f'"{status.value}"'
        assert STATUS_RANK[status.value] == STATUS_RANK[status]


def test_status_rank_puts_problems_first():
    order = sorted(Status, key=STATUS_RANK.__getitem__)
    assert order == [Status.ROOT_CAUSE, Status.DIVERGED, Status.INHERITED, Status.MINOR, Status.OK]


# ------------------------------------------------------------------ Row and Finding


def _row(**fields) -> Row:
    return Row("isolate", "fc1", "Linear", "grad:W", [2, 3], [2, 3], **fields)


def test_a_row_read_back_from_json_gets_a_status_member():
    row = _row(status="root_cause")
    assert row.status is Status.ROOT_CAUSE and row.diverged
    assert not _row().diverged
    with pytest.raises(ValueError):
        _row(status="broken")


def test_row_address_is_its_layer_and_quantity():
    assert _row().address == Address("fc1", Kind.GRAD, "W")


def test_row_copies_through_as_dict_and_records_leave_pipeline_fields_out():
    row = _row(status="diverged", referee="ours", module="fc1", module_index=0, broadcasts=True)
    assert Row(**row.as_dict()) == row
    record = row.as_record()
    assert "detail" not in record and not set(PIPELINE_FIELDS) & set(record)
    assert type(record["status"]) is str and record["status"] == "diverged"
    assert json.loads(json.dumps(record))["status"] == "diverged"


def test_finding_detail_shows_the_reference_names_and_statistics():
    row = _row(
        status="diverged",
        diagnosis="scaled",
        detail={"factor": 2.0},
        max_abs=0.5,
        mismatch_frac=1.0,
        module="net.fc1",
        module_index=1,
        reference_parameter="fc1.weight",
        referee="reference",
        message="values are 2 times the reference's",
        fix="drop the factor",
    )
    found = finding_from_row(row, "isolate")
    assert found.detail == {
        "factor": 2.0,
        "module": "net.fc1",
        "module_index": 1,
        "reference_parameter": "fc1.weight",
        "max_abs": 0.5,
        "mismatch_frac": 1.0,
    }
    assert found.message == "fc1.W: values are 2 times the reference's; drop the factor"
    assert (found.problem, found.fix, found.mode) == (row.message, row.fix, "isolate")
    assert row.detail == {"factor": 2.0}  # the row's own detail is left alone


def test_a_finding_without_a_diagnosis_is_unexplained():
    assert finding_from_row(_row(status="diverged"), "chain").diagnosis == UNEXPLAINED


def test_public_finding_is_the_core_one():
    import gradparity as gp

    assert gp.Finding is Finding


def test_diagnosis_labels_live_in_the_core_and_diagnose_uses_them():
    from gradparity.comparison.diagnose import common, values

    assert values.LABELS is LABELS and common.LABELS is LABELS
    assert len(set(LABELS)) == len(LABELS) == 37


def test_the_core_imports_neither_torch_nor_matplotlib():
    code = (
        "import sys\n"
        "import gradparity.core.address, gradparity.core.finding, gradparity.core.labels\n"
        "import gradparity.core.metrics, gradparity.core.row, gradparity.core.status\n"
        "import gradparity.core.tolerance\n"
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
