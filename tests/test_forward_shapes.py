"""Forward output shape mismatches: advice read off the two shapes (rounding mode, padding,
filters, axis or flatten order), and the backward that fails only because of them inherited
from that root cause. The layers are written as chainer and ML-From-Scratch write theirs
(``tests/shape_layers.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from shape_layers import Convolution2D, Flatten, MaxPooling2D, Tanh
from torch import nn

import gradparity as gp
from gradparity.comparison.diagnose.values import diagnose
from gradparity.core.row import Row
from gradparity.core.status import Status
from gradparity.core.tolerance import tolerance_for
from gradparity.locate.layers import locate

TOL = tolerance_for("float64")


def _values(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 2.0, size=shape)


# ---------------------------------------------------------------- diagnose: the advice


@pytest.mark.parametrize(
    ("ours", "ref", "rounds"),
    [((4, 2, 3, 3), (4, 2, 2, 2), "up"), ((4, 2, 2, 2), (4, 2, 3, 3), "down")],
)
def test_spatial_sizes_off_by_one_name_the_rounding_mode(ours, ref, rounds):
    d = diagnose(_values(ours), _values(ref), TOL, quantity="output")
    assert d.label == "shape_mismatch"
    assert d.detail["cause"] == "rounding" and d.detail["ours_rounds"] == rounds
    assert d.detail["size_difference"] == [ours[2] - ref[2]] * 2
    assert f"output has shape {ours}, the reference {ref}" in d.message
    assert f"rounds the output size {rounds}" in d.message
    assert "ceil_mode" in d.message and "cover_all" in d.message
    assert "gradient" not in d.fix
    want = "ceil_mode=True" if rounds == "up" else "ceil_mode=False"
    assert want in d.fix


@pytest.mark.parametrize(
    ("ours", "ref", "more"),
    [((2, 3, 3, 3), (2, 3, 5, 5), "less"), ((2, 3, 9, 9), (2, 3, 5, 5), "more")],
)
def test_spatial_sizes_off_by_an_even_number_name_the_padding(ours, ref, more):
    d = diagnose(_values(ours), _values(ref), TOL, quantity="output")
    pad = abs(ours[2] - ref[2]) // 2
    assert d.detail["cause"] == "padding" and d.detail["padding_difference"] == [pad, pad]
    assert f"ours pads each side by {pad} {more} than the reference" in d.fix
    assert "padding=" in d.fix


def test_other_spatial_sizes_name_kernel_stride_and_padding():
    d = diagnose(_values((2, 3, 4, 7)), _values((2, 3, 5, 5)), TOL, quantity="output")
    assert d.detail["cause"] == "spatial"
    assert "kernel size, stride, padding and rounding mode" in d.fix


def test_other_channel_counts_name_the_number_of_filters():
    d = diagnose(_values((2, 4, 5, 5)), _values((2, 6, 5, 5)), TOL, quantity="output")
    assert d.detail["cause"] == "channels"
    assert (d.detail["ours_count"], d.detail["ref_count"]) == (4, 6)
    assert "4 channels, the reference 6" in d.message
    assert d.fix.startswith("give the layer 6 filters (out_channels)")


def test_other_feature_counts_name_the_units_or_the_flattened_size():
    d = diagnose(_values((4, 18)), _values((4, 8)), TOL, quantity="output")
    assert d.detail["cause"] == "features"
    assert "18 features, the reference 8" in d.message
    assert "give the layer 8 output units" in d.fix and "flattened" in d.fix


def test_a_channels_last_output_is_named_nhwc_against_nchw():
    ref = _values((2, 3, 4, 5))
    d = diagnose(ref.transpose(0, 2, 3, 1), ref, TOL, quantity="output")
    assert d.label == "shape_mismatch"
    assert d.detail["cause"] == "axis_order" and d.detail["axes"] == [0, 3, 1, 2]
    assert d.detail["values_match"] is True
    assert "ours is NHWC where the reference is NCHW" in d.message
    assert ".transpose(0, 3, 1, 2)" in d.fix
    np.testing.assert_array_equal(ref.transpose(0, 2, 3, 1).transpose(0, 3, 1, 2), ref)


def test_axis_orders_of_a_rank_without_names_are_lettered():
    ref = _values((2, 2, 3, 4, 5, 6))
    d = diagnose(ref.transpose(0, 2, 1, 3, 4, 5), ref, TOL, quantity="output")
    assert d.detail["axes"] == [0, 2, 1, 3, 4, 5]
    assert "ours is NBACDE where the reference is NABCDE" in d.message


def test_the_same_size_in_another_shape_with_other_values_names_reshape_and_layout():
    d = diagnose(_values((2, 12), seed=1), _values((2, 3, 4)), TOL, quantity="output")
    assert d.detail["cause"] == "reshape"
    assert "the same number of elements in another shape" in d.message
    assert "reshape or flatten" in d.fix and "NCHW" in d.fix


def test_a_gradient_of_another_shape_keeps_the_gradient_advice():
    d = diagnose(_values((4, 2, 3, 3)), _values((4, 2, 2, 2)), TOL, quantity="grad_input")
    assert "cause" not in d.detail
    assert "a gradient has the shape of what it differentiates" in d.fix


def test_an_output_flattened_channels_last_is_transposed_with_the_order_named():
    x = _values((3, 2, 5, 5))
    ours = x.transpose(0, 2, 3, 1).reshape(3, -1)
    d = diagnose(ours, x.reshape(3, -1), TOL, quantity="output")
    assert d.label == "transposed"
    assert d.detail == {"cause": "flatten_order", "ref_axes": [2, 5, 5], "axes": [1, 2, 0]}
    assert "(C=2, H=5, W=5) flattened in the order (H, W, C) (channels last, NHWC)" in d.message
    assert d.fix.startswith("flatten in the reference's order (C, H, W)")


def test_an_output_flattened_in_another_two_axis_order_names_the_blocks():
    x = _values((3, 7, 11))
    ours = x.transpose(0, 2, 1).reshape(3, -1)
    d = diagnose(ours, x.reshape(3, -1), TOL, quantity="output")
    assert d.label == "transposed"
    assert d.detail["ref_axes"] == [7, 11] and d.detail["axes"] == [1, 0]


def test_values_shuffled_in_no_axis_order_are_not_called_transposed():
    x = _values((3, 12))
    shuffled = x[:, np.random.default_rng(5).permutation(12)]
    d = diagnose(shuffled, x, TOL, quantity="output")
    assert d.label == "unexplained"


def test_a_reordered_gradient_is_not_given_flatten_advice():
    x = _values((3, 2, 5, 5))
    ours = x.transpose(0, 2, 3, 1).reshape(3, -1)
    d = diagnose(ours, x.reshape(3, -1), TOL, quantity="grad_input")
    assert d.label != "transposed"


# ---------------------------------------------------------------- locate: inherited backward


def _row(layer: str, quantity: str, shapes: tuple, diagnosis: str, **fields) -> Row:
    row = Row("isolate", layer, "MaxPooling2D", quantity, *shapes, **fields)
    row.status, row.diagnosis = Status.DIVERGED, diagnosis
    return row


def test_a_backward_fed_the_other_shape_is_inherited_with_a_message_saying_so():
    output = _row("pool", "output", ([4, 2, 3, 3], [4, 2, 2, 2]), "shape_mismatch")
    raised = _row("pool", "grad_input", (None, None), "raised", message="backward raised X")
    roots = locate([], [output, raised])
    assert [(f.layer, f.quantity) for f in roots] == [("pool", "output")]
    assert raised.status == Status.INHERITED
    assert raised.message.startswith("inherited from the forward's shape mismatch: backward was")
    assert "upstream gradient of shape (4, 2, 2, 2) where ours' output has shape (4, 2, 3, 3)" in (
        raised.message
    )
    assert raised.message.endswith("(backward raised X)")
    assert [(q["quantity"], q["relation"]) for q in roots[0].quantities] == [
        ("grad_input", "follows_forward")
    ]


def test_a_backward_failure_with_a_forward_of_the_right_shape_stays_a_root_cause():
    output = _row("pool", "output", ([4, 2, 2, 2], [4, 2, 2, 2]), "unexplained")
    raised = _row("pool", "grad_input", (None, None), "raised", message="backward raised X")
    roots = locate([], [output, raised])
    assert raised.status == Status.ROOT_CAUSE and raised.message == "backward raised X"
    assert roots[0].listed("same_place")[0]["quantity"] == "grad_input"


def test_another_layers_backward_is_not_inherited_from_a_shape_mismatch():
    output = _row("pool", "output", ([4, 2, 3, 3], [4, 2, 2, 2]), "shape_mismatch")
    other = _row("fc", "grad:W", ([3, 8], [3, 8]), "scaled")
    roots = locate([], [output, other])
    assert other.status == Status.ROOT_CAUSE
    assert [f.layer for f in roots] == ["pool", "fc"]


# ---------------------------------------------------------------- compare: framework layers


def _net(first, first_ref: nn.Module, flatten: Flatten | None = None, name: str = "pool"):
    ours = [(name, first), ("flat", flatten or Flatten()), ("act", Tanh())]
    ref = nn.Sequential()
    ref.add_module(name, first_ref)
    ref.add_module("flat", nn.Flatten())
    ref.add_module("act", nn.Tanh())
    return ours, ref


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, 2, 5, 5)), rng.integers(0, 3, 4)


def _status(report, mode: str, layer: str, quantity: str) -> str:
    t = report.table
    return t[(t["mode"] == mode) & (t["layer"] == layer) & (t["quantity"] == quantity)][
        "status"
    ].item()


def test_chainer_cover_all_pooling_is_one_root_cause_with_forward_advice(tmp_path):
    x, t = _data()
    report = gp.compare(*_net(MaxPooling2D(2), nn.MaxPool2d(2)), x, t)
    assert not report.ok
    [root] = report.root_causes
    assert (root.layer, root.quantity, root.diagnosis) == ("pool", "output", "shape_mismatch")
    assert root.detail["cause"] == "rounding" and root.detail["ours_rounds"] == "up"
    assert "(4, 2, 3, 3), the reference (4, 2, 2, 2)" in root.message
    assert "ceil_mode" in root.message and "cover_all=False" in root.message
    assert [(q["quantity"], q["diagnosis"], q["relation"]) for q in root.quantities] == [
        ("grad_input", "raised", "follows_forward")
    ]
    assert _status(report, "isolate", "pool", "grad_input") == "inherited"
    for layer, quantity in [("flat", "output"), ("act", "output"), ("pool", "grad_input")]:
        assert _status(report, "chain", layer, quantity) == "inherited"
    report.save(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [r["quantity"] for r in saved["root_causes"]] == ["output"]


def test_the_same_pooling_without_cover_all_reaches_parity():
    x, t = _data()
    report = gp.compare(*_net(MaxPooling2D(2, cover_all=False), nn.MaxPool2d(2)), x, t)
    assert report.ok, [f.message for f in report.root_causes]


def test_a_convolution_with_less_padding_names_the_padding():
    x, t = _data()
    conv = nn.Conv2d(2, 3, 3, padding=1)
    W = conv.weight.detach().double().numpy().copy()
    b = conv.bias.detach().double().numpy().copy()
    report = gp.compare(*_net(Convolution2D(W, b), conv, name="conv"), x, t)
    [root] = report.root_causes
    assert (root.layer, root.quantity, root.detail["cause"]) == ("conv", "output", "padding")
    assert root.detail["padding_difference"] == [1, 1]
    assert "pads each side by 1 less than the reference" in root.message
    assert root.quantities and all(q["relation"] == "follows_forward" for q in root.quantities)
    assert _status(report, "chain", "conv", "grad:W") == "inherited"


def test_a_convolution_with_the_same_padding_reaches_parity():
    x, t = _data()
    conv = nn.Conv2d(2, 3, 3, padding=1)
    W = conv.weight.detach().double().numpy().copy()
    b = conv.bias.detach().double().numpy().copy()
    report = gp.compare(*_net(Convolution2D(W, b, pad=1), conv, name="conv"), x, t)
    assert report.ok, [f.message for f in report.root_causes]


def test_an_nhwc_flatten_against_torchs_nchw_flatten_names_the_order():
    x, t = _data()
    ours, ref = _net(Tanh(), nn.Tanh(), flatten=Flatten(channels_last=True))
    report = gp.compare(ours, ref, x, t)
    [root] = report.root_causes
    assert (root.layer, root.quantity, root.diagnosis) == ("flat", "output", "transposed")
    assert root.detail["cause"] == "flatten_order"
    assert "flattened in the order (H, W, C) (channels last, NHWC)" in root.message
    assert _status(report, "chain", "act", "output") == "inherited"


def test_torch_is_what_the_stand_ins_are_checked_against():
    """The stand-ins' reference sizes are torch's own: 5x5 pooled 2x2 is 2x2 (floor)."""
    assert nn.MaxPool2d(2)(torch.zeros(1, 1, 5, 5)).shape[-1] == 2
    assert nn.MaxPool2d(2, ceil_mode=True)(torch.zeros(1, 1, 5, 5)).shape[-1] == 3
