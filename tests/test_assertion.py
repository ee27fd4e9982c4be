"""``assert_parity``: returns the report on parity, fails with the fix in the first line."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch

from gradparity.corpus import layer_bugs as bugs
from gradparity.ours import Linear, Sequential, mlp
from gradparity.reference import mirror, mirror_loss
from gradparity.report.report import Report
from gradparity.testing.assertion import ParityError, assert_parity, default_target, failure_message


def _fail(tmp_path=None, **bug) -> ParityError:
    """The ParityError of ``bugs.base_network`` with ``bug`` injected."""
    model, loss, x, target = bugs.base_network(0, **bug)
    with pytest.raises(ParityError) as info:
        assert_parity(
            model,
            mirror(model),
            x,
            target,
            ours_loss=loss,
            reference_loss=mirror_loss(loss),
            report_dir=tmp_path,
        )
    return info.value


@pytest.fixture(scope="module")
def bias_not_summed() -> ParityError:
    return _fail(fc2=bugs.BiasNotSummed)


@pytest.fixture(scope="module")
def loss_sign() -> ParityError:
    return _fail(loss=bugs.LossGradSign)


def test_returns_the_report_on_a_correct_model(tmp_path):
    model = mlp((5, 4, 3))
    x = np.random.default_rng(1).standard_normal((6, 5))
    report = assert_parity(model, mirror(model), x, report_dir=tmp_path / "out")
    assert isinstance(report, Report) and report.ok
    assert not (tmp_path / "out").exists()  # reports are written on failure only


def test_first_line_names_the_place_and_the_fix(bias_not_summed):
    lines = str(bias_not_summed).splitlines()
    assert lines[0].startswith("gradparity: fc2.b:")
    assert "sum it over the batch axis" in lines[0]
    assert isinstance(bias_not_summed, AssertionError)
    assert bias_not_summed.report.root_causes[0].diagnosis == "not_reduced"


def test_shape_bug_shows_both_shapes_instead_of_numbers(bias_not_summed):
    message = str(bias_not_summed)
    assert "Shapes: ours (8, 3), reference (3,)" in message
    assert "Mismatched elements" not in message
    assert "Tolerance: rtol 1e-07, atol 1e-12 (float64)" in message
    assert "first divergence in the chain run: backward at fc2.b" in message


def test_value_bug_gets_assert_close_numbers(loss_sign):
    message = str(loss_sign)
    report = loss_sign.report
    assert message.startswith("gradparity: loss grad_input:")
    row = next(
        r for r in report.rows if (r.mode, r.layer, r.quantity) == ("isolate", "loss", "grad_input")
    )
    numel = math.prod(row.shape_ref)
    count = round(row.mismatch_frac * numel)
    assert f"Mismatched elements: {count} / {numel} ({100 * count / numel:.1f}%)" in message
    values = report.arrays[("loss", "grad_input")]
    ours, ref = values["ours"], values["reference"]
    at = np.unravel_index(np.argmax(np.abs(ours - ref)), ours.shape)
    index = tuple(int(i) for i in at)
    assert (
        f"Greatest absolute difference: {np.abs(ours - ref).max():.4g} at index {index} "
        f"(ours {ours[at]:.4g}, reference {ref[at]:.4g}; up to "
    ) in message
    assert "Greatest relative difference: 2 at index" in message  # a sign flip: |2r| / |r|
    assert "Tolerance: rtol 1e-07, atol 1e-12 (float64)" in message
    assert "first divergence in the chain run: backward at loss grad_input" in message


def test_table_lists_non_ok_rows_isolate_first_and_is_capped(loss_sign):
    report = loss_sign.report
    bad = [r for r in report.rows if r.diverged]
    lines = failure_message(report, max_rows=3).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mode "))
    table = lines[header + 1 : header + 4]
    assert table[0].split()[:5] == ["isolate", "loss", "grad_input", "root_cause", "sign_flipped"]
    assert all(line.split()[0] == "chain" for line in table[1:])
    assert lines[header + 4] == f"... {len(bad) - 3} more"


def test_every_root_cause_is_listed():
    err = _fail(fc1=bugs.BiasGradSign, fc2=bugs.WeightGradZero)
    lines = str(err).splitlines()
    assert lines[0].startswith("gradparity: fc2.W:")
    assert lines[1].startswith("  - [sign_flipped] fc1.b:")


class RaisingBackward(Linear):
    def backward(self, grad_out):
        raise ValueError("shapes (8,3) and (4,3) not aligned")


def test_a_layer_that_raises_shows_the_error_instead_of_numbers():
    model = Sequential(("fc1", RaisingBackward(5, 3, rng=np.random.default_rng(0))))
    with pytest.raises(ParityError) as info:
        assert_parity(model, mirror(model), np.ones((4, 5)))
    lines = str(info.value).splitlines()
    assert lines[0].startswith("gradparity: fc1 grad_input: backward raised ValueError")
    assert lines[1].startswith("Raised: backward raised ValueError: shapes (8,3)")


def test_report_dir_gets_the_full_report_on_failure(tmp_path):
    err = _fail(tmp_path / "out", fc2=bugs.BiasNotSummed)
    saved = json.loads((tmp_path / "out/report.json").read_text())
    assert saved["ok"] is False and saved["root_causes"][0]["layer"] == "fc2"
    assert str(err).splitlines()[-1] == f"full report: {tmp_path / 'out' / 'report.md'}"


def test_parity_error_survives_pickling(bias_not_summed):
    again = pickle.loads(pickle.dumps(bias_not_summed))
    assert str(again) == str(bias_not_summed)
    assert again.report.root_causes[0].layer == "fc2"


def test_default_target_is_classes_of_the_output_width():
    reference = torch.nn.Sequential(torch.nn.Linear(5, 7)).float()
    x = np.random.default_rng(0).standard_normal((11, 5))
    target = default_target(reference, x, seed=3)
    assert target.shape == (11,) and target.dtype.kind == "i"
    assert target.min() >= 0 and target.max() < 7
    np.testing.assert_array_equal(target, default_target(reference, x, seed=3))
    assert next(reference.parameters()).dtype == torch.float32  # the reference is untouched
    assert default_target(reference, x[0]).shape == (1,)  # a 1-D x is one example


def test_without_target_an_x_the_reference_rejects_points_at_x():
    from gradparity.core.errors import InputError

    model = mlp((5, 4, 3))
    with pytest.raises(InputError, match=r"x has 7 features but the first layer fc1 takes 5"):
        assert_parity(model, mirror(model), np.ones((6, 7)))
