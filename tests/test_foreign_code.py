"""``gp.compare`` on hand-written NumPy code that does not follow ours' conventions.

Every network here is written the way a student might: weights stored (out, in), biases
shaped (1, n), gradients in attributes, other method names, caches in lists, fused layers.
Each comes with an equivalent ``torch.nn.Sequential`` in float64.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradparity as gp
from gradparity.ours import MSE

F64 = torch.float64


# ====================================================================== student code


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class DenseOI:
    """Weights stored (out, in) like torch, bias (1, out); gradients in dweights/dbias,
    which only exist after the first backward."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        self.weights = rng.uniform(-1, 1, (n_out, n_in))
        self.bias = rng.uniform(-1, 1, (1, n_out))

    def forward(self, x):
        self.x = x
        return x @ self.weights.T + self.bias

    def backward(self, grad):
        self.dweights = grad.T @ self.x
        self.dbias = np.sum(grad, axis=0, keepdims=True)
        return grad @ self.weights


class StudentSigmoid:
    """No params attribute at all."""

    def forward(self, x):
        self.out = _sigmoid(x)
        return self.out

    def backward(self, grad):
        return grad * self.out * (1 - self.out)


class StudentTanh:
    def forward(self, x):
        self.out = np.tanh(x)
        return self.out

    def backward(self, grad):
        return grad * (1 - self.out**2)


class FCLayer:
    """Other method names (fprop/bprop), weights (out, in), bias (out,), grads gW/gb."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        self.W = rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
        self.b = rng.standard_normal(n_out) * 0.5
        self.gW = np.zeros_like(self.W)
        self.gb = np.zeros_like(self.b)

    def fprop(self, x):
        self.inp = x
        return x @ self.W.T + self.b

    def bprop(self, delta):
        self.gW = delta.T @ self.inp
        self.gb = delta.sum(axis=0)
        return delta @ self.W


class AccumDense:
    """Accumulates gradients with += (like torch's .grad) and caches inputs in a list."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        self.weights = rng.uniform(-1, 1, (n_out, n_in))
        self.bias = rng.uniform(-1, 1, (1, n_out))
        self.dweights = np.zeros_like(self.weights)
        self.dbias = np.zeros_like(self.bias)
        self.cache: list[np.ndarray] = []

    def forward(self, x):
        self.cache.append(x)
        return x @ self.weights.T + self.bias

    def backward(self, grad):
        x = self.cache.pop()
        self.dweights += grad.T @ x
        self.dbias += grad.sum(axis=0, keepdims=True)
        return grad @ self.weights


class DenseSigmoid:
    """Linear + sigmoid fused into one layer; weights (out, in), bias (out,)."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        self.weights = rng.uniform(-1, 1, (n_out, n_in))
        self.bias = rng.uniform(-1, 1, n_out)

    def forward(self, x):
        self.x = x
        self.y = _sigmoid(x @ self.weights.T + self.bias)
        return self.y

    def backward(self, grad):
        dz = grad * self.y * (1 - self.y)
        self.dweights = dz.T @ self.x
        self.dbias = dz.sum(axis=0)
        return dz @ self.weights


class DenseTransposedGrad(DenseOI):
    """Bug: weight gradient computed as x.T @ grad, i.e. (in, out) for an (out, in) weight."""

    def backward(self, grad):
        out = super().backward(grad)
        self.dweights = self.x.T @ grad
        return out


class DenseBiasNotSummed(DenseOI):
    """Bug: the bias gradient keeps the batch axis."""

    def backward(self, grad):
        out = super().backward(grad)
        self.dbias = grad.copy()
        return out


class Exploding:
    """Raises in forward or in backward."""

    def __init__(self, phase: str) -> None:
        self.phase = phase

    def forward(self, x):
        if self.phase == "forward":
            raise RuntimeError("forward exploded on purpose")
        self.out = np.tanh(x)
        return self.out

    def backward(self, grad):
        if self.phase == "backward":
            raise RuntimeError("backward exploded on purpose")
        return grad * (1 - self.out**2)


class StudentNet:
    """A model object exposing named_layers()."""

    def __init__(self, layers: dict) -> None:
        self.layers = layers

    def named_layers(self):
        return iter(self.layers.items())


class StudentMSE:
    """A loss with other method names."""

    def loss(self, pred, y):
        self.diff = pred - y
        return float(np.mean(self.diff**2))

    def grad(self):
        return 2 * self.diff / self.diff.size


def dense(layer) -> gp.Wrapped:
    return gp.wrap(layer, params=["weights", "bias"], grads=["dweights", "dbias"])


def torch_linear(layer_or_in, n_out: int | None = None) -> nn.Linear:
    """A float64 nn.Linear, filled from a student layer (weights (out, in)) when given one."""
    if n_out is not None:
        return nn.Linear(layer_or_in, n_out, dtype=F64)
    w = getattr(layer_or_in, "weights", getattr(layer_or_in, "W", None))
    b = getattr(layer_or_in, "bias", getattr(layer_or_in, "b", None))
    module = nn.Linear(w.shape[1], w.shape[0], dtype=F64)
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(w))
        module.bias.copy_(torch.as_tensor(b).reshape(-1))
    return module


def seq(**modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(modules))


def data(n: int, n_in: int, n_classes: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)), rng.integers(0, n_classes, n)


# ====================================================================== helpers


def assert_ok(report) -> None:
    assert report.ok, report.summary()
    table = report.table
    assert set(table["mode"]) == {"chain", "isolate"}
    assert (table["status"] == "ok").all(), table[table["status"] != "ok"].to_string()


def roots(report) -> list[tuple[str, str]]:
    return [(f.layer, f.quantity) for f in report.root_causes]


def rows(report, mode: str, layer: str):
    t = report.table
    return t[(t["mode"] == mode) & (t["layer"] == layer)]


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    return msg


# ====================================================================== conventions


def test_out_in_weights_row_bias_with_wrap_param_lists():
    rng = np.random.default_rng(0)
    fc1, fc2 = DenseOI(3, 5, rng), DenseOI(5, 4, rng)
    model = [("fc1", dense(fc1)), ("act1", StudentSigmoid()), ("fc2", dense(fc2))]
    # reference with its own random init: sync_weights copies the student's numbers over
    ref = seq(fc1=nn.Linear(3, 5, dtype=F64), act1=nn.Sigmoid(), fc2=nn.Linear(5, 4, dtype=F64))
    x, t = data(6, 3, 4)
    report = gp.compare(model, ref, x, t)
    assert_ok(report)
    quantities = set(rows(report, "isolate", "fc1")["quantity"])
    assert {"grad:weights", "grad:bias", "grad_input", "output"} <= quantities
    conv = rows(report, "isolate", "fc1").set_index("quantity")["conversion"]
    assert conv["grad:weights"] == "identity"
    assert conv["grad:bias"] == "reshape"


def test_wrap_with_callables_and_renamed_methods():
    rng = np.random.default_rng(1)

    def adapt(layer):
        return gp.wrap(
            layer,
            forward="fprop",
            backward="bprop",
            params=lambda l: {"W": l.W, "b": l.b},
            grads=lambda l: {"W": l.gW, "b": l.gb},
        )

    fc1, fc2 = FCLayer(4, 6, rng), FCLayer(6, 3, rng)
    model = [("h", adapt(fc1)), ("act", StudentTanh()), ("out", adapt(fc2))]
    ref = seq(h=torch_linear(fc1), act=nn.Tanh(), out=torch_linear(fc2))
    x, t = data(5, 4, 3)
    report = gp.compare(model, ref, x, t)
    assert_ok(report)
    assert {"grad:W", "grad:b"} <= set(rows(report, "chain", "out")["quantity"])


def test_wrap_with_callable_forward_backward():
    rng = np.random.default_rng(2)
    fc = FCLayer(3, 2, rng)
    wrapped = gp.wrap(
        fc,
        forward=lambda l, x: l.fprop(x),
        backward=lambda l, g: l.bprop(g),
        params=["W", "b"],
        grads=["gW", "gb"],
    )
    report = gp.compare([("fc", wrapped)], seq(fc=torch_linear(3, 2)), *data(4, 3, 2))
    assert_ok(report)


def test_wrap_refuses_missing_method_naming_it():
    with pytest.raises(gp.InputError) as exc:
        gp.wrap(FCLayer(2, 2, np.random.default_rng(0)), forward="forward")
    msg = one_line(exc)
    assert "'forward'" in msg and "FCLayer" in msg


def test_accumulating_layer_with_list_cache_is_immune_to_leftover_state():
    rng = np.random.default_rng(3)
    fc1, fc2 = AccumDense(3, 4, rng), AccumDense(4, 2, rng)
    model = [("fc1", dense(fc1)), ("act1", StudentSigmoid()), ("fc2", dense(fc2))]
    act = model[1][1]
    # the student played with it first: gradients accumulated, stale inputs cached
    for _ in range(3):
        h = fc2.forward(act.forward(fc1.forward(rng.standard_normal((7, 3)))))
        fc1.backward(act.backward(fc2.backward(rng.standard_normal(h.shape))))
    fc1.forward(rng.standard_normal((2, 3)))  # one forward left without its backward
    assert np.abs(fc1.dweights).sum() > 0 and len(fc1.cache) == 1
    ref = seq(fc1=torch_linear(fc1), act1=nn.Sigmoid(), fc2=torch_linear(fc2))
    x, t = data(5, 3, 2)
    report = gp.compare(model, ref, x, t)
    assert_ok(report)
    # ... and running it twice changes nothing
    again = gp.compare(model, ref, x, t)
    assert again.to_json() == report.to_json()


def test_fused_layer_aligned_to_named_submodule():
    rng = np.random.default_rng(4)
    d1, d2 = DenseSigmoid(3, 5, rng), DenseOI(5, 3, rng)
    model = [("dense1", dense(d1)), ("out", dense(d2))]
    ref = seq(
        dense1=nn.Sequential(nn.Linear(3, 5, dtype=F64), nn.Sigmoid()),
        out=nn.Linear(5, 3, dtype=F64),
    )
    report = gp.compare(model, ref, *data(4, 3, 3))
    assert_ok(report)
    assert set(report.table["layer"]) == {"dense1", "out", "loss"}
    assert {"grad:weights", "grad:bias"} <= set(rows(report, "isolate", "dense1")["quantity"])


def test_fused_layer_aligned_by_order_to_unnamed_children():
    rng = np.random.default_rng(5)
    d1, d2 = DenseSigmoid(3, 5, rng), DenseOI(5, 3, rng)
    model = [("layer_a", dense(d1)), ("layer_b", dense(d2))]
    ref = nn.Sequential(
        nn.Sequential(nn.Linear(3, 5, dtype=F64), nn.Sigmoid()), nn.Linear(5, 3, dtype=F64)
    )
    report = gp.compare(model, ref, *data(4, 3, 3))
    assert_ok(report)


def test_fused_layer_with_bug_is_found_inside_the_submodule():
    rng = np.random.default_rng(6)

    class DenseSigmoidNoLocal(DenseSigmoid):
        def backward(self, grad):  # bug: forgot the sigmoid derivative
            self.dweights = grad.T @ self.x
            self.dbias = grad.sum(axis=0)
            return grad @ self.weights

    model = [("dense1", dense(DenseSigmoidNoLocal(3, 4, rng))), ("out", dense(DenseOI(4, 2, rng)))]
    ref = seq(
        dense1=nn.Sequential(nn.Linear(3, 4, dtype=F64), nn.Sigmoid()),
        out=nn.Linear(4, 2, dtype=F64),
    )
    report = gp.compare(model, ref, *data(5, 3, 2))
    assert not report.ok
    assert {layer for layer, _ in roots(report)} == {"dense1"}
    assert "output" not in {q for _, q in roots(report)}


@pytest.mark.parametrize("n", [1, 4])
def test_square_out_in_weights_layout_inferred(n):
    rng = np.random.default_rng(7)
    fc1, fc2, fc3 = DenseOI(4, 4, rng), DenseOI(4, 4, rng), DenseOI(4, 4, rng)
    model = [
        ("fc1", dense(fc1)),
        ("a1", StudentTanh()),
        ("fc2", dense(fc2)),
        ("a2", StudentSigmoid()),
        ("fc3", dense(fc3)),
    ]
    ref = seq(
        fc1=nn.Linear(4, 4, dtype=F64),
        a1=nn.Tanh(),
        fc2=nn.Linear(4, 4, dtype=F64),
        a2=nn.Sigmoid(),
        fc3=nn.Linear(4, 4, dtype=F64),
    )
    report = gp.compare(model, ref, *data(n, 4, 4))
    assert_ok(report)
    weights = report.table[report.table["quantity"] == "grad:weights"]
    assert set(weights["conversion"]) == {"identity"}


def test_square_weights_follow_model_convention():
    """A square (out, in) weight in a model whose other weights show the (out, in) layout."""
    rng = np.random.default_rng(8)
    model = [
        ("fc1", dense(DenseOI(3, 4, rng))),
        ("a1", StudentTanh()),
        ("fc2", dense(DenseOI(4, 4, rng))),
        ("a2", StudentTanh()),
        ("fc3", dense(DenseOI(4, 2, rng))),
    ]
    ref = seq(
        fc1=nn.Linear(3, 4, dtype=F64),
        a1=nn.Tanh(),
        fc2=nn.Linear(4, 4, dtype=F64),
        a2=nn.Tanh(),
        fc3=nn.Linear(4, 2, dtype=F64),
    )
    report = gp.compare(model, ref, *data(5, 3, 2))
    assert_ok(report)


class DenseIO:
    """Weights stored (in, out) like ours, bias (1, out); y = x @ W + b."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        self.weights = rng.uniform(-1, 1, (n_in, n_out))
        self.bias = rng.uniform(-1, 1, (1, n_out))

    def forward(self, x):
        self.x = x
        return x @ self.weights + self.bias

    def backward(self, grad):
        self.dweights = self.x.T @ grad
        self.dbias = grad.sum(axis=0, keepdims=True)
        return grad @ self.weights.T


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    sizes=st.lists(st.integers(1, 7), min_size=2, max_size=4),
    layout=st.sampled_from(["out_in", "in_out"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_student_networks_ok(n, sizes, layout, seed):
    """Any sizes (square, 1 x k, 1 x 1 included), either layout: the harness works it out."""
    rng = np.random.default_rng(seed)
    cls = DenseOI if layout == "out_in" else DenseIO
    model, modules = [], OrderedDict()
    for i in range(len(sizes) - 1):
        model.append((f"fc{i}", dense(cls(sizes[i], sizes[i + 1], rng))))
        modules[f"fc{i}"] = nn.Linear(sizes[i], sizes[i + 1], dtype=F64)
        if i < len(sizes) - 2:
            model.append((f"act{i}", StudentTanh()))
            modules[f"act{i}"] = nn.Tanh()
    x = rng.standard_normal((n, sizes[0]))
    if sizes[-1] == 1:  # softmax over one class is constant: a one-output net takes MSE
        report = gp.compare(model, nn.Sequential(modules), x, rng.standard_normal((n, 1)), MSE())
    else:
        report = gp.compare(model, nn.Sequential(modules), x, rng.integers(0, sizes[-1], n))
    assert_ok(report)


def test_model_as_plain_list_of_pairs():
    rng = np.random.default_rng(9)
    fc1, fc2 = FCLayer(2, 3, rng), FCLayer(3, 2, rng)
    wrap = {"forward": "fprop", "backward": "bprop", "params": ["W", "b"], "grads": ["gW", "gb"]}
    model = [
        ("first", gp.wrap(fc1, **wrap)),
        ("squash", StudentSigmoid()),
        ("second", gp.wrap(fc2, **wrap)),
    ]
    ref = seq(
        first=nn.Linear(2, 3, dtype=F64), squash=nn.Sigmoid(), second=nn.Linear(3, 2, dtype=F64)
    )
    report = gp.compare(model, ref, *data(3, 2, 2))
    assert_ok(report)
    assert set(report.table["layer"]) == {"first", "squash", "second", "loss"}


def test_model_object_with_named_layers():
    rng = np.random.default_rng(10)
    net = StudentNet(
        {"enc": dense(DenseOI(5, 3, rng)), "act": StudentTanh(), "dec": dense(DenseOI(3, 5, rng))}
    )
    ref = seq(enc=nn.Linear(5, 3, dtype=F64), act=nn.Tanh(), dec=nn.Linear(3, 5, dtype=F64))
    x = np.random.default_rng(0).standard_normal((4, 5))
    y = np.random.default_rng(1).standard_normal((4, 5))
    report = gp.compare(
        net,
        ref,
        x,
        y,
        ours_loss=gp.wrap(StudentMSE(), forward="loss", backward="grad", params=None, grads=None),
        reference_loss=nn.MSELoss(),
    )
    assert_ok(report)
    assert report.meta["model"] == "StudentNet"


def test_layer_map_with_different_names():
    rng = np.random.default_rng(11)
    model = [
        ("hidden", dense(DenseOI(3, 5, rng))),
        ("nonlin", StudentSigmoid()),
        ("logits", dense(DenseOI(5, 2, rng))),
    ]
    ref = seq(
        linear_a=nn.Linear(3, 5, dtype=F64), sig=nn.Sigmoid(), linear_b=nn.Linear(5, 2, dtype=F64)
    )
    # a map that goes against the order would be caught by the shapes; this one is right
    report = gp.compare(
        model,
        ref,
        *data(4, 3, 2),
        layer_map={"hidden": "linear_a", "nonlin": "sig", "logits": "linear_b"},
    )
    assert_ok(report)
    assert set(report.table["layer"]) == {"hidden", "nonlin", "logits", "loss"}


class RegisteredOutOfOrder(nn.Module):
    """Modules registered in another order than they run: alignment by order would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(5, 2, dtype=F64)
        self.squash = nn.Sigmoid()
        self.body = nn.Linear(3, 5, dtype=F64)

    def forward(self, x):
        return self.head(self.squash(self.body(x)))


def test_layer_map_needed_when_registration_order_differs():
    rng = np.random.default_rng(20)
    model = [
        ("hidden", dense(DenseOI(3, 5, rng))),
        ("nonlin", StudentSigmoid()),
        ("logits", dense(DenseOI(5, 2, rng))),
    ]
    report = gp.compare(
        model,
        RegisteredOutOfOrder(),
        *data(4, 3, 2),
        layer_map={"hidden": "body", "nonlin": "squash", "logits": "head"},
    )
    assert_ok(report)


def test_layer_map_naming_missing_module_refused():
    rng = np.random.default_rng(21)
    model = [("hidden", dense(DenseOI(3, 5, rng)))]
    with pytest.raises(gp.InputError) as exc:
        gp.compare(
            model, seq(lin=nn.Linear(3, 5, dtype=F64)), *data(4, 3, 5), layer_map={"hidden": "nope"}
        )
    assert "nope" in one_line(exc)


# ====================================================================== bad input


def test_layer_counts_that_do_not_align():
    rng = np.random.default_rng(12)
    model = [
        ("fc1", dense(DenseOI(3, 4, rng))),
        ("act1", StudentSigmoid()),
        ("fc2", dense(DenseOI(4, 2, rng))),
    ]
    ref = seq(lin1=nn.Linear(3, 4, dtype=F64), lin2=nn.Linear(4, 2, dtype=F64))
    with pytest.raises(gp.InputError) as exc:
        gp.compare(model, ref, *data(4, 3, 2))
    msg = one_line(exc)
    for name in ("fc1", "act1", "fc2", "lin1", "lin2"):
        assert name in msg
    assert "unmatched" in msg


@pytest.mark.parametrize("where", ["end", "middle"])
def test_reference_with_an_extra_layer_is_refused_even_when_names_match(where):
    """Every ours name exists in the reference, but the reference runs one more layer that
    ours lacks: the counts do not align, so this is bad input naming that layer, not a
    divergence blamed on the loss (or on the layer after the extra one)."""
    rng = np.random.default_rng(22)
    if where == "end":
        model = [
            ("fc1", dense(DenseOI(3, 4, rng))),
            ("act1", StudentSigmoid()),
            ("fc2", dense(DenseOI(4, 2, rng))),
        ]
        ref = seq(
            fc1=nn.Linear(3, 4, dtype=F64),
            act1=nn.Sigmoid(),
            fc2=nn.Linear(4, 2, dtype=F64),
            extra=nn.Tanh(),
        )
    else:
        model = [("fc1", dense(DenseOI(3, 4, rng))), ("fc2", dense(DenseOI(4, 2, rng)))]
        ref = seq(fc1=nn.Linear(3, 4, dtype=F64), extra=nn.Tanh(), fc2=nn.Linear(4, 2, dtype=F64))
    with pytest.raises(gp.InputError) as exc:
        gp.compare(model, ref, *data(4, 3, 2))
    assert "extra" in one_line(exc)


def test_parameter_shapes_no_conversion_reconciles():
    rng = np.random.default_rng(13)
    model = [
        ("fc1", dense(DenseOI(5, 3, rng))),
        ("act1", StudentSigmoid()),
        ("fc2", dense(DenseOI(3, 2, rng))),
    ]
    ref = seq(fc1=nn.Linear(4, 3, dtype=F64), act1=nn.Sigmoid(), fc2=nn.Linear(3, 2, dtype=F64))
    with pytest.raises(gp.InputError) as exc:
        gp.compare(model, ref, *data(4, 5, 2))
    msg = one_line(exc)
    assert "fc1" in msg
    assert "(3, 5)" in msg and "(3, 4)" in msg


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_layer_that_raises_becomes_a_finding(phase):
    rng = np.random.default_rng(14)
    model = [
        ("fc1", dense(DenseOI(3, 4, rng))),
        ("boom", Exploding(phase)),
        ("fc2", dense(DenseOI(4, 2, rng))),
    ]
    ref = seq(fc1=nn.Linear(3, 4, dtype=F64), boom=nn.Tanh(), fc2=nn.Linear(4, 2, dtype=F64))
    report = gp.compare(model, ref, *data(4, 3, 2))
    assert not report.ok
    raised = [f for f in report.root_causes if f.diagnosis == "raised"]
    assert [f.layer for f in raised] == ["boom"]
    assert raised[0].quantity == ("output" if phase == "forward" else "grad_input")
    assert raised[0].detail["phase"] == phase
    assert "RuntimeError" in raised[0].message and "exploded" in raised[0].message
    assert {f.layer for f in report.root_causes} == {"boom"}
    # the other layers were still checked, alone, and are fine
    for other in ("fc1", "fc2", "loss"):
        r = rows(report, "isolate", other)
        assert {"output", "grad_input"} <= set(r["quantity"]), other
        assert (r["status"] == "ok").all(), r.to_string()
    for other in ("fc1", "fc2"):
        assert {"grad:weights", "grad:bias"} <= set(rows(report, "isolate", other)["quantity"])


def test_nonfinite_parameter_refused_naming_it():
    layer = DenseOI(3, 2, np.random.default_rng(23))
    layer.weights[1, 0] = np.nan
    with pytest.raises(gp.InputError) as exc:
        gp.compare([("fc", dense(layer))], seq(fc=nn.Linear(3, 2, dtype=F64)), *data(4, 3, 2))
    msg = one_line(exc)
    assert "fc.weights" in msg and "(1, 0)" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_x_refused(bad):
    rng = np.random.default_rng(15)
    model = [("fc", dense(DenseOI(3, 2, rng)))]
    x, t = data(4, 3, 2)
    x[2, 1] = bad
    with pytest.raises(gp.InputError) as exc:
        gp.compare(model, seq(fc=nn.Linear(3, 2, dtype=F64)), x, t)
    msg = one_line(exc)
    assert msg.startswith("x ") or " x " in msg or "'x'" in msg
    assert "(2, 1)" in msg


# ====================================================================== buggy foreign code


def test_transposed_weight_gradient_square_out_in():
    rng = np.random.default_rng(16)
    model = [
        ("fc1", dense(DenseOI(4, 4, rng))),
        ("act1", StudentTanh()),
        ("fc2", dense(DenseTransposedGrad(4, 4, rng))),
        ("act2", StudentSigmoid()),
        ("fc3", dense(DenseOI(4, 4, rng))),
    ]
    ref = seq(
        fc1=nn.Linear(4, 4, dtype=F64),
        act1=nn.Tanh(),
        fc2=nn.Linear(4, 4, dtype=F64),
        act2=nn.Sigmoid(),
        fc3=nn.Linear(4, 4, dtype=F64),
    )
    report = gp.compare(model, ref, *data(6, 4, 4))
    assert not report.ok
    assert roots(report) == [("fc2", "grad:weights")]
    assert report.root_causes[0].diagnosis == "transposed"
    iso = report.table[report.table["mode"] == "isolate"]
    bad = iso[iso["status"] != "ok"]
    assert list(zip(bad["layer"], bad["quantity"])) == [("fc2", "grad:weights")]


def test_bias_gradient_not_summed():
    rng = np.random.default_rng(17)
    model = [
        ("fc1", dense(DenseBiasNotSummed(3, 5, rng))),
        ("act1", StudentSigmoid()),
        ("fc2", dense(DenseOI(5, 2, rng))),
    ]
    ref = seq(fc1=nn.Linear(3, 5, dtype=F64), act1=nn.Sigmoid(), fc2=nn.Linear(5, 2, dtype=F64))
    report = gp.compare(model, ref, *data(6, 3, 2))
    assert not report.ok
    assert roots(report) == [("fc1", "grad:bias")]
    assert report.root_causes[0].diagnosis == "not_reduced"


# ====================================================================== no side effects


def _state(layers) -> dict:
    out = {}
    for name, layer in layers:
        obj = getattr(layer, "obj", layer)
        for attr, value in vars(obj).items():
            out[name, attr] = copy.deepcopy(value)
    return out


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


@pytest.mark.parametrize(("sync", "tdtype"), [(True, F64), (False, F64), (True, torch.float32)])
def test_users_objects_are_not_mutated(sync, tdtype):
    rng = np.random.default_rng(18)
    fc1, fc2 = AccumDense(3, 4, rng), DenseOI(4, 2, rng)
    fc1.forward(rng.standard_normal((2, 3)))
    model = [("fc1", dense(fc1)), ("act1", StudentSigmoid()), ("fc2", dense(fc2))]
    ref = seq(
        fc1=nn.Linear(3, 4, dtype=tdtype), act1=nn.Sigmoid(), fc2=nn.Linear(4, 2, dtype=tdtype)
    )
    before = _state(model)
    ref_before = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    x, t = data(5, 3, 2)
    x_before, t_before = x.copy(), t.copy()
    gp.compare(model, ref, x, t, sync_weights=sync)
    after = _state(model)
    assert after.keys() == before.keys()
    for key in before:
        assert _same(before[key], after[key]), key
    assert not hasattr(fc2, "dweights")
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ref_before[k]), k
    assert all(p.grad is None and p.dtype == tdtype for p in ref.parameters())
    assert ref.training  # not switched to eval on the user's object
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(t, t_before)


def test_without_sync_different_weights_diverge():
    rng = np.random.default_rng(19)
    model = [
        ("fc1", dense(DenseOI(3, 4, rng))),
        ("act1", StudentSigmoid()),
        ("fc2", dense(DenseOI(4, 2, rng))),
    ]
    torch.manual_seed(0)
    ref = seq(fc1=nn.Linear(3, 4, dtype=F64), act1=nn.Sigmoid(), fc2=nn.Linear(4, 2, dtype=F64))
    report = gp.compare(model, ref, *data(4, 3, 2), sync_weights=False)
    assert not report.ok
    ref_synced = seq(
        fc1=torch_linear(model[0][1].obj), act1=nn.Sigmoid(), fc2=torch_linear(model[2][1].obj)
    )
    assert_ok(gp.compare(model, ref_synced, *data(4, 3, 2), sync_weights=False))
