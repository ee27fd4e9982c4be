"""float32 with dropout and other random references: a float64 twin whose drift is not
rounding (another mask, another function) widens no budget (``reference_twin._not_rounding``),
so a divergence float64 shows is shown in float32 too; shared masks keep measured budgets; a
dropout module called several times is named in a warning; a validation batch of another size
is scored."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from test_dropout_masks import HiddenMaskDropout, bn_cnn_pair, data, small_model
from torch import nn

import gradparity as gp
from gradparity.core.labels import DROPOUT_CALLS_SHARE_MASK, DROPOUT_MASK_UNSHARED
from gradparity.evidence.float32_budget import NOT_ROUNDING, beyond_rounding
from gradparity.ours import Dropout, Linear, Tanh

STRAY = "far more than rounding could"


class Identity:
    """An ours layer that passes x (N, F) through."""

    def __init__(self) -> None:
        self.params, self.grads = {}, {}

    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


class Noise(nn.Module):
    """A reference that draws random numbers in forward: x plus 10% noise."""

    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


class TwiceInFloat64(nn.Module):
    """A reference that computes 2x in float32 and 3x in float64."""

    def forward(self, x):
        return x * (2.0 if x.dtype == torch.float32 else 3.0)


class Double(Identity):
    """Ours' 2x, right against ``TwiceInFloat64`` in float32."""

    def forward(self, x):
        return 2 * x

    def backward(self, grad_out):
        return 2 * grad_out


def with_middle(ours_layer, module: nn.Module):
    """x (8, 5) -> fc1 -> act -> mid -> fc2 -> (8, 3), ``mid`` being the given pair."""
    rng = np.random.default_rng(0)
    ours = [("fc1", Linear(5, 6, rng=rng)), ("act", Tanh()), ("mid", ours_layer)]
    ours.append(("fc2", Linear(6, 3, rng=rng)))
    modules = OrderedDict(fc1=nn.Linear(5, 6), act=nn.Tanh(), mid=module, fc2=nn.Linear(6, 3))
    return ours, nn.Sequential(modules).double()


def statuses(report) -> dict[tuple[str, str, str], str]:
    return {(r.mode, r.layer, r.quantity): r.status for r in report.rows}


def causes(report) -> list[tuple[str, str, str]]:
    return [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes]


def stray_notes(report) -> list[str]:
    return [n for n in report.notes if STRAY in n]


def test_unshared_dropout_in_float32_reports_the_divergence_as_float64_does():
    x, y = data()
    float64 = gp.compare(*small_model(HiddenMaskDropout(0.5)), x, y)
    float32 = gp.compare(*small_model(HiddenMaskDropout(0.5)), x, y, dtype="float32")
    assert not float64.ok and not float32.ok
    assert causes(float32) == causes(float64) == [("drop", "output", "unexplained")]
    assert statuses(float32) == statuses(float64)
    assert [w.diagnosis for w in float32.warnings] == [DROPOUT_MASK_UNSHARED]
    (note,) = stray_notes(float32)
    assert "drop" in note and "\n" not in note and "fixed float32 tolerance" in note
    # No budget stands behind drop's rows, nor behind any chain row after drop's output.
    budgeted = {(r.mode, r.layer, r.quantity) for r in float32.rows if "float32_budget" in r.detail}
    assert ("isolate", "fc2", "grad:W") in budgeted
    assert not any(layer == "drop" for _, layer, _ in budgeted)
    before_drop = {("chain", "fc1", "output"), ("chain", "act", "output")}
    assert {k for k in budgeted if k[0] == "chain"} == before_drop


def test_a_reference_drawing_random_numbers_is_judged_by_the_fixed_tolerance():
    x, y = data()
    report = gp.compare(*with_middle(Identity(), Noise()), x, y, dtype="float32")
    assert not report.ok
    assert ("mid", "output") in {(layer, q) for layer, q, _ in causes(report)}
    (note,) = stray_notes(report)
    assert "mid" in note


def test_a_reference_computing_something_else_in_float64_widens_no_budget():
    # Ours agrees with the float32 reference; the twin measures 3x, which is no rounding:
    # the fixed tolerance judges mid and the chain after it, and finds nothing.
    x, y = data()
    report = gp.compare(*with_middle(Double(), TwiceInFloat64()), x, y, dtype="float32")
    assert report.ok, causes(report)
    (note,) = stray_notes(report)
    assert "mid" in note
    mid = [r for r in report.rows if r.layer == "mid"]
    assert mid and not any("float32_budget" in r.detail for r in mid)


@pytest.mark.parametrize("make", [lambda: small_model(Dropout(0.5)), bn_cnn_pair])
def test_shared_masks_keep_measured_budgets_in_float32(make):
    ours, reference = make()
    shape = (5,) if isinstance(ours, list) else (1, 8, 8)
    x, y = data(shape=shape)
    report = gp.compare(ours, reference, x, y, dtype="float32")
    assert report.ok, causes(report)
    assert not stray_notes(report)
    drop = [r for r in report.rows if r.layer == "drop"]
    assert drop and all(r.detail["float32_budget"]["drift"] is not None for r in drop)


def test_a_drift_is_rounding_up_to_a_small_fraction_of_the_magnitude():
    assert not beyond_rounding(None, 1.0) and not beyond_rounding(0.0, 0.0)
    assert not beyond_rounding(NOT_ROUNDING * 2.0, 2.0)
    assert beyond_rounding(NOT_ROUNDING * 2.1, 2.0) and beyond_rounding(1e-30, 0.0)
    # Underflow: float32's sigmoid at -340 is 0, float64's 1e-147.
    assert not beyond_rounding(1e-147, 1e-147)


class DropTwice(nn.Module):
    """fc1 -> drop -> fc2 -> drop -> fc3: one dropout module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc3(self.drop(self.fc2(self.drop(self.fc1(x)))))


def test_a_dropout_module_called_twice_gets_one_warning():
    rng = np.random.default_rng(0)
    ours = [("fc1", Linear(5, 6, rng=rng)), ("drop1", Dropout(0.5))]
    ours += [("fc2", Linear(6, 6, rng=rng)), ("drop2", Dropout(0.5))]
    ours.append(("fc3", Linear(6, 3, rng=rng)))
    x, y = data()
    report = gp.compare(
        ours, DropTwice().double(), x, y, layer_map={"drop1": "drop", "drop2": "drop"}
    )
    assert report.ok, causes(report)  # both sides apply the same mask at both calls
    (warning,) = [w for w in report.warnings if w.diagnosis == DROPOUT_CALLS_SHARE_MASK]
    assert warning.layer == "drop1" and "\n" not in warning.message
    assert "drop1, drop2" in warning.message and "2 times" in warning.message


@pytest.mark.parametrize("size", [5, 8])
def test_validation_of_any_batch_size_scores_ours_with_a_pinned_mask(size):
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((8, 5)), rng.integers(0, 3, 8)) for _ in range(2)]
    validation = (rng.standard_normal((size, 5)), rng.integers(0, 3, size))
    ours, reference = small_model(Dropout(0.5))
    report = gp.compare_training(ours, reference, batches, validation=validation, eval_every=1)
    assert report.ok, causes(report)
    scores = report.history["val_acc_ours"]
    assert len(scores) == 2 and np.isfinite(scores).all()
    assert ours[2][1].pinned_mask is None  # the user's layer is untouched
