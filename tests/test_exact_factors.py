"""Issue 12, item 4: exact factors for one-element quantities, and a factor that equals the
batch size and another constant of the layer (re-run at another batch size in ``compare``)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.comparison.diagnose.values import diagnose
from gradparity.core.labels import BATCH_REDUCTION, SCALED, UNEXPLAINED
from gradparity.core.tolerance import tolerance_for
from ours import Linear

TOL = tolerance_for("float64")


# ---------------------------------------------------------------- one element


def test_scalar_loss_exactly_three_times_is_scaled_3():
    # mean over the batch where the reference means over all N x 3 elements
    d = diagnose(np.array(3 * 0.7134), np.array(0.7134), TOL, quantity="loss", batch_size=4)
    assert d.label == SCALED
    assert d.detail["factor"] == pytest.approx(3.0)
    assert d.detail["exact_factor"] == "3"
    assert "3 times" in d.message and "not exactly" not in d.message


def test_scalar_exactly_one_eighteenth_gets_its_factor():
    d = diagnose(np.array(0.7134 / 18), np.array(0.7134), TOL, quantity="loss", batch_size=4)
    assert d.label == SCALED
    assert d.detail["factor"] == pytest.approx(1 / 18)
    assert d.detail["exact_factor"] == "1/18"
    assert "1/18 of" in d.message


def test_scalar_near_but_not_exact_factor_stays_unexplained():
    d = diagnose(np.array(3.0001 * 0.7134), np.array(0.7134), TOL, quantity="loss", batch_size=4)
    assert d.label == UNEXPLAINED
    assert "not exactly" in d.message


def test_scalar_batch_size_factor_is_batch_reduction():
    d = diagnose(np.array(4 * 0.7134), np.array(0.7134), TOL, quantity="loss", batch_size=4)
    assert d.label == BATCH_REDUCTION and d.ours_reduction == "sum"


def test_diagnose_names_the_constant_a_batch_factor_coincides_with():
    rng = np.random.default_rng(0)
    ref, up = rng.standard_normal((4, 3, 4, 4)), rng.standard_normal((4, 3, 2, 2))
    d = diagnose(ref / 4, ref, TOL, quantity="grad_input", batch_size=4, upstream=up)
    assert d.label == BATCH_REDUCTION  # no re-run here: the message says what else it can be
    assert "pool area" in d.message and "another batch size" in d.message
    assert any("pool area" in c for c in d.detail["also_equals"])


# ---------------------------------------------------------------- re-run in compare


class MaxPool2x2:
    """Book-style 2x2 max pool, stride 2, on (N, C, H, W)."""

    def __init__(self, divide_by_area: bool = False) -> None:
        self.params: dict = {}
        self.grads: dict = {}
        self.divide_by_area = divide_by_area

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
        win = win.reshape(n, c, h // 2, w // 2, 4)
        self.x_shape, self.arg = x.shape, win.argmax(axis=-1)
        return win.max(axis=-1)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        n, c, h, w = self.x_shape
        dwin = np.zeros((n, c, h // 2, w // 2, 4))
        np.put_along_axis(dwin, self.arg[..., None], dout[..., None], axis=-1)
        if self.divide_by_area:
            dwin /= 4  # the bug: an average pool's 1/area in a max pool
        dx = dwin.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
        return dx.reshape(n, c, h, w)


class Flatten:
    def __init__(self) -> None:
        self.params: dict = {}
        self.grads: dict = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self.shape)


class MeanLinear(Linear):
    """A Linear whose weight gradient is divided by the batch size: the real mean-vs-sum bug."""

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        dx = super().backward(grad_out)
        self.grads["W"] = self.grads["W"] / grad_out.shape[0]
        return dx


def _pool_net(pool: MaxPool2x2, fc: Linear) -> tuple[OrderedDict, nn.Module]:
    layers = OrderedDict([("pool", pool), ("flat", Flatten()), ("fc", fc)])
    fc_ref = nn.Linear(fc.params["W"].shape[0], fc.params["W"].shape[1]).double()
    with torch.no_grad():
        fc_ref.weight.copy_(torch.from_numpy(fc.params["W"].T))
        fc_ref.bias.copy_(torch.from_numpy(fc.params["b"]))
    ref = nn.Sequential(OrderedDict(pool=nn.MaxPool2d(2), flat=nn.Flatten(), fc=fc_ref))
    return layers, ref


def _row(report: gp.Report, layer: str, quantity: str):
    return next(
        r
        for r in report.rows
        if r.mode == "isolate" and r.layer == layer and r.quantity == quantity
    )


def test_pool_dividing_by_its_area_at_batch_4_is_not_batch_reduction():
    rng = np.random.default_rng(1)
    layers, ref = _pool_net(MaxPool2x2(divide_by_area=True), Linear(12, 3, rng=rng))
    x, t = rng.standard_normal((4, 3, 4, 4)), rng.integers(0, 3, 4)
    report = gp.compare(list(layers.items()), ref, x, t)
    row = _row(report, "pool", "grad_input")
    assert row.diagnosis == SCALED
    assert row.detail["batch_rerun"]["batch_size"] == 5
    assert "pool area" in row.message and "not the batch size" in row.message


def test_real_mean_vs_sum_at_batch_4_stays_batch_reduction():
    # W is (4, 3): its dimension 0 is 4, like the batch; the re-run at 5 follows the batch
    rng = np.random.default_rng(2)
    layers = OrderedDict([("fc", MeanLinear(4, 3, rng=rng))])
    fc_ref = nn.Linear(4, 3).double()
    with torch.no_grad():
        fc_ref.weight.copy_(torch.from_numpy(layers["fc"].params["W"].T))
        fc_ref.bias.copy_(torch.from_numpy(layers["fc"].params["b"]))
    ref = nn.Sequential(OrderedDict(fc=fc_ref))
    x, t = rng.standard_normal((4, 4)), rng.integers(0, 3, 4)
    report = gp.compare(list(layers.items()), ref, x, t)
    row = _row(report, "fc", "grad:W")
    assert row.diagnosis == BATCH_REDUCTION
    assert row.detail["batch_rerun"]["verdict"] == "follows the batch size"
    assert "it is the batch size" in row.message
