"""The referee: when ours and the reference disagree on a gradient, central differences of each
side's own forward say which side's backward is right ("ours", "reference", "neither", "both").

Covers the verdict through ``gp.compare`` (a wrong reference must not be blamed on ours) and
``referee_layer`` / ``referee_loss`` directly.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.corpus import layer_bugs as bugs
from gradparity.evidence import referee
from gradparity.ours import Linear, Sequential, Sigmoid, SoftmaxCrossEntropy
from gradparity.pairing.align import align_layers
from gradparity.pairing.layer_params import pair_layer_parameters as pair_parameters
from gradparity.pairing.params import sync_parameters
from gradparity.reference import mirror
from gradparity.sides.adapt import params_of

F64 = torch.float64


# --- torch references with a wrong backward -------------------------------------------------


class HalfSigmoidFn(torch.autograd.Function):
    """sigmoid forward, backward off by a factor 1/2."""

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid(x)
        ctx.save_for_backward(s)
        return s

    @staticmethod
    def backward(ctx, grad):
        (s,) = ctx.saved_tensors
        return grad * 0.5 * s * (1 - s)


class HalfSigmoid(nn.Module):
    def forward(self, x):
        return HalfSigmoidFn.apply(x)


class NegatedWeightLinearFn(torch.autograd.Function):
    """y = x @ W.T + b; backward negates dL/dW, the rest is right."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return grad @ weight, -(grad.T @ x), grad.sum(0)


class NegatedWeightLinear(nn.Module):
    """Parameters named and shaped like ``nn.Linear`` (weight (out, in), bias (out,))."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_out, n_in, dtype=F64))
        self.bias = nn.Parameter(torch.zeros(n_out, dtype=F64))

    def forward(self, x):
        return NegatedWeightLinearFn.apply(x, self.weight, self.bias)


def ours_net(seed: int = 0) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential(
        ("fc1", Linear(5, 4, rng=rng)), ("act1", Sigmoid()), ("fc2", Linear(4, 3, rng=rng))
    )


def data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, 5)), rng.integers(0, 3, 8)


def torch_net(fc1: nn.Module | None = None, act1: nn.Module | None = None) -> nn.Sequential:
    """Hand-built float64 mirror of ``ours_net``, same names; weights come from sync_weights."""
    return nn.Sequential(
        OrderedDict(
            fc1=fc1 if fc1 is not None else nn.Linear(5, 4, dtype=F64),
            act1=act1 if act1 is not None else nn.Sigmoid(),
            fc2=nn.Linear(4, 3, dtype=F64),
        )
    )


def root(report, layer: str, quantity: str):
    hits = [f for f in report.root_causes if (f.layer, f.quantity) == (layer, quantity)]
    assert hits, [(f.layer, f.quantity) for f in report.root_causes]
    assert len(hits) == 1
    return hits[0]


# --- through compare ------------------------------------------------------------------------


def test_hand_built_correct_reference_is_in_parity():
    """Sanity check of the fixture: the plain hand-built torch net agrees with ours."""
    x, t = data()
    report = gp.compare(ours_net(), torch_net(), x, t, sync_weights=True)
    assert report.ok, [f.message for f in report.root_causes]


@pytest.mark.parametrize(
    ("reference", "layer", "quantity"),
    [
        (lambda: torch_net(act1=HalfSigmoid()), "act1", "grad_input"),
        (lambda: torch_net(fc1=NegatedWeightLinear(5, 4)), "fc1", "grad:W"),
    ],
    ids=["sigmoid_backward_halved", "linear_weight_grad_negated"],
)
def test_wrong_reference_is_named_and_ours_not_blamed(reference, layer, quantity):
    x, t = data()
    report = gp.compare(ours_net(), reference(), x, t, sync_weights=True, seed=0)
    assert not report.ok
    finding = root(report, layer, quantity)
    verdict = finding.detail["referee"]
    assert verdict["referee"] == "ours"
    assert verdict["ours_matches_numeric"] is True
    assert verdict["reference_matches_numeric"] is False
    assert "reference is wrong" in finding.message
    assert "not ours" in finding.message
    assert "check the reference" in finding.message
    # No advice to change ours' code: the diagnoser's own fix text is replaced.
    assert "remove the extra factor" not in finding.message
    assert "flip the sign" not in finding.message.lower()
    # Only the layer whose reference backward is wrong is a root cause.
    assert {f.layer for f in report.root_causes} == {layer}


def test_wrong_reference_row_in_table_carries_reference_message():
    x, t = data()
    report = gp.compare(ours_net(), torch_net(act1=HalfSigmoid()), x, t, sync_weights=True)
    rows = [
        r for r in report.rows if (r.mode, r.layer, r.quantity) == ("isolate", "act1", "grad_input")
    ]
    assert len(rows) == 1
    assert rows[0].detail["referee"]["referee"] == "ours"
    assert "reference is wrong" in rows[0].message


def test_wrong_ours_is_refereed_against_ours():
    model, loss, x, t = bugs.base_network(0, fc1=bugs.WeightGradScaled)
    report = gp.compare(model, mirror(model), x, t, ours_loss=loss, seed=0)
    finding = root(report, "fc1", "grad:W")
    verdict = finding.detail["referee"]
    assert verdict["referee"] == "reference"
    assert verdict["ours_matches_numeric"] is False
    assert verdict["reference_matches_numeric"] is True
    assert finding.diagnosis == "scaled"
    assert "reference is wrong" not in finding.message


def test_wrong_ours_loss_is_refereed_against_ours():
    model, loss, x, t = bugs.base_network(0, loss=bugs.LossGradSign)
    report = gp.compare(model, mirror(model), x, t, ours_loss=loss, seed=0)
    finding = root(report, "loss", "grad_input")
    assert finding.detail["referee"]["referee"] == "reference"
    assert finding.diagnosis == "sign_flipped"


def test_clean_run_has_no_referee_evidence():
    model, loss, x, t = bugs.base_network(0)
    report = gp.compare(model, mirror(model), x, t, ours_loss=loss, seed=0)
    assert report.ok
    assert all("referee" not in r.detail for r in report.rows)


# --- referee_layer directly -----------------------------------------------------------------


@pytest.fixture
def linear_case():
    """(pair, x (6, 5), upstream (6, 4), correct grads in ours' layout) for one Linear."""
    rng = np.random.default_rng(3)
    layer = Linear(5, 4, rng=rng)
    ref_model = nn.Sequential(OrderedDict(fc=nn.Linear(5, 4, dtype=F64)))
    (pair,) = align_layers([("fc", layer)], ref_model)
    pair_parameters([pair], rng)
    sync_parameters(params_of(pair.layer), pair.module, pair.params)
    x = rng.standard_normal((6, 5))
    upstream = rng.standard_normal((6, 4))
    W = layer.params["W"]
    grads = {
        "grad_input": upstream @ W.T,
        "grad:W": x.T @ upstream,
        "grad:b": upstream.sum(axis=0),
    }
    return pair, x, upstream, grads


QUANTITIES = ["grad_input", "grad:W", "grad:b"]


def _verdict(case, quantity, ours_grad, ref_grad, seed=0):
    pair, x, upstream, _ = case
    return referee.referee_layer(
        pair, x, upstream, quantity, ours_grad, ref_grad, np.random.default_rng(seed)
    )


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_layer_both_right(linear_case, quantity):
    g = linear_case[3][quantity]
    v = _verdict(linear_case, quantity, g.copy(), g.copy())
    assert v["referee"] == "both"
    assert v["ours_matches_numeric"] and v["reference_matches_numeric"]
    assert v["directions"] >= 1


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_layer_ours_right_reference_wrong(linear_case, quantity):
    g = linear_case[3][quantity]
    assert _verdict(linear_case, quantity, g.copy(), -g)["referee"] == "ours"
    assert _verdict(linear_case, quantity, g.copy(), 0.5 * g)["referee"] == "ours"


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_layer_reference_right_ours_wrong(linear_case, quantity):
    g = linear_case[3][quantity]
    assert _verdict(linear_case, quantity, 2.0 * g, g.copy())["referee"] == "reference"
    assert _verdict(linear_case, quantity, np.zeros_like(g), g.copy())["referee"] == "reference"


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_layer_neither_when_both_wrong_differently(linear_case, quantity):
    g = linear_case[3][quantity]
    v = _verdict(linear_case, quantity, 2.0 * g, -g)
    assert v["referee"] == "neither"
    assert not v["ours_matches_numeric"] and not v["reference_matches_numeric"]


def test_layer_both_when_forwards_differ():
    """Each side's gradient is right for its own forward, though the forwards differ."""
    rng = np.random.default_rng(4)
    layer = Linear(5, 4, rng=rng)
    ref_model = nn.Sequential(OrderedDict(fc=nn.Linear(5, 4, dtype=F64)))
    (pair,) = align_layers([("fc", layer)], ref_model)
    pair_parameters([pair], rng)
    sync_parameters(params_of(pair.layer), pair.module, pair.params)
    with torch.no_grad():
        pair.module.weight.mul_(3.0)  # the reference now computes x @ (3 W) + b
    x = rng.standard_normal((6, 5))
    up = rng.standard_normal((6, 4))
    W = layer.params["W"]
    v = referee.referee_layer(
        pair, x, up, "grad_input", up @ W.T, up @ (3.0 * W).T, np.random.default_rng(0)
    )
    assert v["referee"] == "both"


@pytest.mark.parametrize(
    ("quantity", "bad_shape"),
    [
        ("grad:b", lambda g, up: up.copy()),
        ("grad:W", lambda g, up: g.T.copy()),
        ("grad_input", lambda g, up: g[:, :-1].copy()),
    ],
    ids=["bias_not_summed", "weight_transposed_shape", "input_grad_truncated"],
)
def test_shape_mismatched_ours_grad_never_wins(linear_case, quantity, bad_shape):
    _, _, upstream, grads = linear_case
    g = grads[quantity]
    bad = bad_shape(g, upstream)
    assert bad.shape != g.shape
    right_ref = _verdict(linear_case, quantity, bad, g.copy())
    wrong_ref = _verdict(linear_case, quantity, bad, -g)
    for v in (right_ref, wrong_ref):
        assert v["referee"] not in ("ours", "both")
        assert v["ours_matches_numeric"] is False
    assert right_ref["referee"] == "reference"
    assert wrong_ref["referee"] == "neither"


def test_missing_ours_grad_never_wins(linear_case):
    g = linear_case[3]["grad:W"]
    assert _verdict(linear_case, "grad:W", None, g.copy())["referee"] == "reference"
    assert _verdict(linear_case, "grad:W", None, -g)["referee"] == "neither"


class NonFiniteWhenMoved(Linear):
    """A Linear whose output turns NaN once its input or a parameter leaves the probe point."""

    def forward(self, x):
        out = super().forward(x)
        moved = not np.array_equal(x, self.probe_x) or any(
            not np.array_equal(self.params[k], v) for k, v in self.probe_params.items()
        )
        return out * np.nan if moved else out


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_a_forward_turning_non_finite_when_moved_never_matches(linear_case, quantity):
    """Central differences of a non-finite value are non-finite: that side does not match."""
    pair, x, _, grads = linear_case
    pair.layer.__class__ = NonFiniteWhenMoved
    pair.layer.probe_x = x.copy()
    pair.layer.probe_params = {k: v.copy() for k, v in pair.layer.params.items()}
    g = grads[quantity]
    v = _verdict(linear_case, quantity, g.copy(), g.copy())
    assert v["referee"] == "reference"
    assert v["ours_matches_numeric"] is False and v["reference_matches_numeric"] is True


def test_layer_referee_leaves_layer_and_module_untouched(linear_case):
    pair, x, _, grads = linear_case
    W = pair.layer.params["W"].copy()
    weight = pair.module.weight.detach().clone()
    x_before = x.copy()
    _verdict(linear_case, "grad:W", grads["grad:W"], grads["grad:W"])
    _verdict(linear_case, "grad_input", grads["grad_input"], grads["grad_input"])
    np.testing.assert_array_equal(pair.layer.params["W"], W)
    assert torch.equal(pair.module.weight.detach(), weight)
    np.testing.assert_array_equal(x, x_before)


def test_layer_verdict_deterministic_for_seed(linear_case):
    g = linear_case[3]["grad:W"]
    a = _verdict(linear_case, "grad:W", 2 * g, g.copy(), seed=7)
    b = _verdict(linear_case, "grad:W", 2 * g, g.copy(), seed=7)
    assert a == b


# --- referee_loss directly ------------------------------------------------------------------


@pytest.fixture
def loss_case():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((8, 3)) * 2.0
    target = rng.integers(0, 3, 8)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    s = e / e.sum(axis=1, keepdims=True)
    grad = (s - np.eye(3)[target]) / len(target)
    return logits, target, grad


def _loss_verdict(case, ours_grad, ref_grad, seed=0):
    logits, target, _ = case
    return referee.referee_loss(
        SoftmaxCrossEntropy(),
        nn.CrossEntropyLoss(),
        logits,
        target,
        ours_grad,
        ref_grad,
        np.random.default_rng(seed),
    )


def test_loss_both_right(loss_case):
    g = loss_case[2]
    assert _loss_verdict(loss_case, g.copy(), g.copy())["referee"] == "both"


def test_loss_ours_right_reference_wrong(loss_case):
    g = loss_case[2]
    assert _loss_verdict(loss_case, g.copy(), -g)["referee"] == "ours"
    assert _loss_verdict(loss_case, g.copy(), g * len(g))["referee"] == "ours"


def test_loss_reference_right_ours_wrong(loss_case):
    g = loss_case[2]
    assert _loss_verdict(loss_case, -g, g.copy())["referee"] == "reference"
    assert _loss_verdict(loss_case, g * len(g), g.copy())["referee"] == "reference"


def test_loss_neither(loss_case):
    g = loss_case[2]
    v = _loss_verdict(loss_case, -g, 2.0 * g)
    assert v["referee"] == "neither"
    assert not v["ours_matches_numeric"] and not v["reference_matches_numeric"]


def test_loss_shape_mismatched_ours_grad_never_wins(loss_case):
    g = loss_case[2]
    for bad in (g.T.copy(), g[:, :2].copy(), g.sum(axis=0), None):
        right_ref = _loss_verdict(loss_case, bad, g.copy())
        wrong_ref = _loss_verdict(loss_case, bad, -g)
        assert right_ref["referee"] == "reference"
        assert wrong_ref["referee"] == "neither"


def test_loss_with_float_targets_mse(loss_case):
    """A float target (MSE) goes through the referee as float64 on the torch side."""
    from gradparity.ours import MSE

    logits = loss_case[0]
    rng = np.random.default_rng(6)
    target = rng.standard_normal(logits.shape)
    grad = 2.0 * (logits - target) / logits.size
    verdict = referee.referee_loss(
        MSE(), nn.MSELoss(), logits, target, grad / 2.0, grad, np.random.default_rng(0)
    )
    assert verdict["referee"] == "reference"
    verdict = referee.referee_loss(
        MSE(), nn.MSELoss(), logits, target, grad, grad, np.random.default_rng(0)
    )
    assert verdict["referee"] == "both"
