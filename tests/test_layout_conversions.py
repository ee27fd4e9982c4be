"""Layout conversions beyond transpose (issue 14, item 3): reshape between equal sizes when
only one conversion fits, per-channel vectors of any rank, and the gate order of stacked
recurrent weights found by the forward; each reported where conversions are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.ours.layers import Linear
from gradparity.ours.losses import MSE
from gradparity.reference.layout import (
    RESHAPE,
    TRANSPOSE,
    following,
    parameter_conversions,
    to_ours_layout,
    to_torch_layout,
    with_gates,
)
from tests.framework_layouts import (
    ChainerBatchNorm,
    FlatDense,
    FlatKernelConv,
    StackedGRU,
    StackedLSTM,
)


class FirstOutput(nn.Module):
    """A recurrent module's output sequence alone (torch's LSTM and GRU return a tuple)."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def _compare(layer, module: nn.Module, x: np.ndarray, out_shape: tuple[int, ...]) -> gp.Report:
    """``layer`` against ``module`` under mean squared error, in float64."""
    target = np.random.default_rng(9).standard_normal(out_shape)
    return gp.compare(
        [("layer", layer)], nn.Sequential(module), x, target,
        ours_loss=MSE(), reference_loss=nn.MSELoss(), layer_map={"layer": "0"},
    )  # fmt: skip


# ---------------------------------------------------------------- conversions by shape


@pytest.mark.parametrize(
    ("ours", "ref", "expected"),
    [
        ((75,), (1, 3, 5, 5), [RESHAPE]),  # a kernel stored flat
        ((3, 5, 5), (1, 3, 5, 5), [RESHAPE]),  # a kernel without its single filter axis
        ((1, 8, 1, 1), (8,), [RESHAPE]),  # batch norm gamma, chainer style
        ((8, 1, 1), (8,), [RESHAPE]),
        ((1, 8), (8,), [RESHAPE]),
        ((8, 1), (8,), [RESHAPE]),
        ((12,), (3, 4), [RESHAPE, "reshape + transpose"]),  # flat dense: (out, in) or (in, out)
        ((4, 3), (12,), [RESHAPE, "transpose + reshape"]),
        ((5, 5, 3), (3, 5, 5), []),  # channels last: several axis orders fit, none is taken
        ((6, 2), (3, 4), []),
        ((75,), (1, 3, 5, 4), []),  # sizes differ
    ],
)
def test_parameter_conversions_reshape_only_where_one_order_fits(ours, ref, expected):
    assert parameter_conversions(ours, ref) == expected


@pytest.mark.parametrize(
    ("conversion", "ours_shape", "torch_shape"),
    [
        ("reshape", (75,), (1, 3, 5, 5)),
        ("reshape + transpose", (12,), (3, 4)),
        ("transpose + reshape", (4, 3), (12,)),
        ("gates g,i,f,o -> i,f,g,o", (8, 3), (8, 3)),
        ("transpose + gates g,i,f,o -> i,f,g,o", (3, 8), (8, 3)),
        ("reshape + gates z,r,n -> r,z,n", (1, 6), (6,)),
    ],
)
def test_conversions_round_trip(conversion, ours_shape, torch_shape):
    value = np.arange(float(np.prod(ours_shape))).reshape(ours_shape)
    there = to_torch_layout(value, conversion, torch_shape)
    assert there.shape == torch_shape
    np.testing.assert_array_equal(to_ours_layout(there, conversion, ours_shape), value)


def test_gate_blocks_move_to_torch_order():
    blocks = {g: np.full((2, 3), float(k)) for k, g in enumerate("gifo")}
    ours = np.concatenate([blocks[g] for g in "gifo"])  # chainer's a, i, f, o
    conversion = with_gates("identity", "g,i,f,o", "i,f,g,o")
    assert conversion == "gates g,i,f,o -> i,f,g,o"
    there = to_torch_layout(ours, conversion, (8, 3))
    np.testing.assert_array_equal(there, np.concatenate([blocks[g] for g in "ifgo"]))
    assert with_gates("transpose", "i,f,g,o", "i,f,g,o") == TRANSPOSE  # torch's own order


def test_following_picks_the_option_of_the_models_convention():
    options = (RESHAPE, "reshape + transpose")
    assert following(options, TRANSPOSE) == "reshape + transpose"
    assert following(options, "identity") == RESHAPE


# ---------------------------------------------------------------- whole layers


def test_chainer_style_lstm_reaches_parity_with_its_gate_order_found():
    d, h = 3, 4
    ref = FirstOutput(nn.LSTM(d, h, batch_first=True))
    x = np.random.default_rng(1).standard_normal((2, 5, d))
    report = _compare(StackedLSTM(d, h, seed=0, order="aifo"), ref, x, (2, 5, h))
    assert report.ok, [f.message for f in report.root_causes]
    assert len(report.conversions) == 4
    for line in report.conversions:
        assert "gates g,i,f,o -> i,f,g,o" in line
        assert "gate order g,i,f,o made the forwards agree" in line


def test_lstm_stored_by_columns_gets_transpose_and_gate_order():
    d, h = 3, 2
    ref = FirstOutput(nn.LSTM(d, h, batch_first=True))
    x = np.random.default_rng(2).standard_normal((3, 4, d))
    report = _compare(StackedLSTM(d, h, seed=1, order="ifoa", rows=False), ref, x, (3, 4, h))
    assert report.ok, [f.message for f in report.root_causes]
    weight = next(c for c in report.conversions if "upward.W" in c)
    assert "transpose + gates i,f,o,g -> i,f,g,o" in weight


def test_lstm_in_torchs_order_keeps_identity():
    d, h = 2, 3
    ref = FirstOutput(nn.LSTM(d, h, batch_first=True))
    x = np.random.default_rng(3).standard_normal((2, 3, d))
    report = _compare(StackedLSTM(d, h, seed=2, order="ifao"), ref, x, (2, 3, h))
    assert report.ok
    assert all(": identity (gate order i,f,g,o" in c for c in report.conversions)


def test_lstm_whose_forward_agrees_under_no_order_says_the_order_was_assumed():
    d, h = 3, 2
    layer = StackedLSTM(d, h, seed=4, order="aifo")
    layer.broken = True
    ref = FirstOutput(nn.LSTM(d, h, batch_first=True))
    x = np.random.default_rng(4).standard_normal((2, 3, d))
    report = _compare(layer, ref, x, (2, 3, h))
    assert not report.ok
    assert report.root_causes[0].quantity == "output"
    assert all(
        "assumed (no gate order made the forwards agree): torch's i,f,g,o" in c
        for c in report.conversions
    )


def test_keras_style_gru_reaches_parity_time_first():
    d, h = 3, 2
    ref = FirstOutput(nn.GRU(d, h))  # (T, N, D): ours gets the same array
    x = np.random.default_rng(5).standard_normal((4, 2, d))
    report = _compare(StackedGRU(d, h, seed=5, order="zrn"), ref, x, (4, 2, h))
    assert report.ok, [f.message for f in report.root_causes]
    assert all("gates z,r,n -> r,z,n" in c for c in report.conversions)


@pytest.mark.parametrize("stored", [(75,), (3, 5, 5), (1, 75)])
def test_conv_kernel_stored_flat_reaches_parity(stored):
    ref = nn.Conv2d(3, 1, 5)
    x = np.random.default_rng(6).standard_normal((2, 3, 6, 7))
    report = _compare(FlatKernelConv(3, 1, 5, seed=6, stored=stored), ref, x, (2, 1, 2, 3))
    assert report.ok, [f.message for f in report.root_causes]
    assert f"W {stored} <-> weight (1, 3, 5, 5): reshape (shape)" in report.conversions[0]


def test_conv_kernel_stored_channels_last_is_refused_in_one_line():
    layer = FlatKernelConv(3, 1, 5, seed=7)
    layer.params["W"] = layer.params["W"].reshape(1, 3, 5, 5).transpose(0, 2, 3, 1)[0]
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 6))
    with pytest.raises(gp.InputError, match=r"'W' of shape \(5, 5, 3\) fits no") as caught:
        _compare(layer, nn.Conv2d(3, 1, 5), x, (2, 1, 2, 2))
    assert "\n" not in str(caught.value)


def test_batch_norm_gamma_stored_per_channel_4d_reaches_parity():
    layer = ChainerBatchNorm(4, seed=8)
    ref = nn.BatchNorm2d(4).double().eval()
    ref.running_mean = torch.as_tensor(layer.avg_mean)
    ref.running_var = torch.as_tensor(layer.avg_var)
    x = np.random.default_rng(8).standard_normal((3, 4, 2, 2))
    report = _compare(layer, ref, x, (3, 4, 2, 2))
    assert report.ok, [f.message for f in report.root_causes]
    assert any("gamma (1, 4, 1, 1) <-> weight (4,): reshape" in c for c in report.conversions)


def test_dense_weight_stored_flat_takes_the_order_the_forward_agrees_with():
    ref = nn.Linear(4, 3)
    x = np.random.default_rng(9).standard_normal((5, 4))
    report = _compare(FlatDense(4, 3, seed=9), ref, x, (5, 3))
    assert report.ok, [f.message for f in report.root_causes]
    weight = report.conversions[0]
    assert "W (12,) <-> weight (3, 4): reshape + transpose (forward agreement)" in weight


def test_lstm_that_cannot_run_keeps_torchs_order_and_says_why():
    class Raising(StackedLSTM):
        def forward(self, x: np.ndarray) -> np.ndarray:
            raise ValueError("shapes not aligned")

    d, h = 3, 2
    ref = FirstOutput(nn.LSTM(d, h, batch_first=True))
    x = np.random.default_rng(10).standard_normal((2, 3, d))
    report = _compare(Raising(d, h, seed=10), ref, x, (2, 3, h))
    assert [f.diagnosis for f in report.root_causes] == ["raised"]
    assert all(
        "assumed (the layer's forward cannot run here): torch's i,f,g,o" in c
        for c in report.conversions
    )


def test_square_dense_weight_stored_flat_follows_the_models_convention():
    ours = [("fc1", Linear(4, 3)), ("fc2", FlatDense(3, 3, seed=11))]
    ref = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3))
    x = np.random.default_rng(11).standard_normal((5, 4))
    target = np.random.default_rng(12).standard_normal((5, 3))
    report = gp.compare(ours, ref, x, target, ours_loss=MSE(), reference_loss=nn.MSELoss())
    assert report.ok, [f.message for f in report.root_causes]
    flat = next(c for c in report.conversions if c.startswith("fc2: W"))
    assert "W (9,) <-> weight (3, 3): reshape + transpose (model convention)" in flat


def test_training_steps_compare_gate_ordered_parameters_in_ours_layout():
    rng = np.random.default_rng(13)
    batches = [(rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 2))) for _ in range(3)]
    ref = nn.Sequential(FirstOutput(nn.LSTM(3, 2, batch_first=True)))
    report = gp.compare_training(
        [("lstm", StackedLSTM(3, 2, seed=13))], ref, batches,
        ours_loss=MSE(), reference_loss=nn.MSELoss(), layer_map={"lstm": "0"},
    )  # fmt: skip
    assert report.ok, [f.message for f in report.root_causes]
    assert {"param:upward.W", "param:lateral.b"} <= set(report.table["quantity"])
