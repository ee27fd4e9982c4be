"""Parameters pair by name (with the aliases frameworks use), then shape, then order; a note
names what order alone decided; ``param_map`` on ``compare`` and ``compare_training`` pairs
what names cannot, and its mistakes are one line each. The layers are small stand-ins
written the way their frameworks write them (plain NumPy, the frameworks' own names)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.pairing.aliases import are_aliases, plain_name
from gradparity.pairing.params import pair_by_name_shape_order

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 4))
T = RNG.standard_normal((6, 4))


class MSE:
    def forward(self, y, t):
        self.d = y - t
        return float((self.d**2).mean())

    def backward(self):
        return 2 * self.d / self.d.size


def _compare(layers, reference, **options):
    return gp.compare(
        layers, reference, X, T, ours_loss=MSE(), reference_loss=nn.MSELoss(), **options
    )


class LayerNormalization:
    """ML-From-Scratch style: ``gamma``/``beta``, here listed beta first."""

    def __init__(self, n, eps=1e-5):
        self.params = {"beta": RNG.standard_normal(n), "gamma": RNG.standard_normal(n)}
        self.grads = {}
        self.eps = eps

    def forward(self, x):
        self.xc = x - x.mean(axis=1, keepdims=True)
        self.std = np.sqrt((self.xc**2).mean(axis=1, keepdims=True) + self.eps)
        self.xn = self.xc / self.std
        return self.params["gamma"] * self.xn + self.params["beta"]

    def backward(self, dout):
        self.grads["gamma"] = (self.xn * dout).sum(axis=0)
        self.grads["beta"] = dout.sum(axis=0)
        dxn = dout * self.params["gamma"]
        n = dxn.shape[1]
        return (
            n * dxn - dxn.sum(1, keepdims=True) - self.xn * (dxn * self.xn).sum(1, keepdims=True)
        ) / (n * self.std)


class LayerNorm1D:
    """numpy-ml style: ``parameters``/``gradients`` dicts, ``scaler``/``intercept`` (listed
    intercept first), ``backward(dLdy)``."""

    def __init__(self, n_in, epsilon=1e-5):
        self.parameters = {
            "intercept": RNG.standard_normal(n_in),
            "scaler": RNG.standard_normal(n_in),
        }
        self.gradients = {"intercept": np.zeros(n_in), "scaler": np.zeros(n_in)}
        self.inner = LayerNormalization(n_in, epsilon)

    def forward(self, X):
        self.inner.params = {
            "gamma": self.parameters["scaler"],
            "beta": self.parameters["intercept"],
        }
        return self.inner.forward(X)

    def backward(self, dLdy):
        dX = self.inner.backward(dLdy)
        self.gradients["scaler"] = self.inner.grads["gamma"]
        self.gradients["intercept"] = self.inner.grads["beta"]
        return dX


def test_gamma_and_beta_listed_in_swapped_order_reach_parity_by_name_with_no_note():
    report = _compare([("ln", LayerNormalization(4))], nn.LayerNorm(4).double())
    assert report.ok, report.summary()
    assert not any("paired by order" in note for note in report.notes)


def test_a_numpy_ml_layer_pairs_scaler_and_intercept_by_alias():
    layer = gp.wrap(LayerNorm1D(4), params="parameters", grads="gradients")
    report = _compare([("ln", layer)], nn.LayerNorm(4).double())
    assert report.ok, report.summary()
    assert not any("paired by order" in note for note in report.notes)


class Affine:
    """Names no alias knows: ``p`` is the shift, ``q`` the scale (listed shift first)."""

    def __init__(self, n):
        self.params = {"p": RNG.standard_normal(n), "q": RNG.standard_normal(n)}
        self.grads = {}

    def forward(self, x):
        self.x = x
        return x * self.params["q"] + self.params["p"]

    def backward(self, g):
        self.grads["q"] = (g * self.x).sum(0)
        self.grads["p"] = g.sum(0)
        return g * self.params["q"]


class TorchAffine(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def forward(self, x):
        return x * self.weight + self.bias


class Net(nn.Module):
    def __init__(self, *names):
        super().__init__()
        for name in names:
            self.add_module(name, TorchAffine(4))

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x


def test_order_pairing_of_equal_shapes_is_named_in_a_note_and_in_report_json(tmp_path):
    report = _compare([("aff", Affine(4))], Net("aff"))
    assert not report.ok  # order paired the shift with the scale
    expected = (
        "aff: p <-> weight and q <-> bias paired by order (same shape (4,)): pass param_map "
        "(e.g. {'aff.p': 'weight'}) if that is wrong"
    )
    assert expected in report.notes
    report.save(tmp_path)
    assert expected in json.loads((tmp_path / "report.json").read_text())["notes"]


@pytest.mark.parametrize(
    "param_map",
    [
        {"aff.p": "bias", "aff.q": "weight"},
        {"p": "bias", "q": "weight"},  # one layer alone has them
        {"aff.p": "aff.bias", "aff.q": "aff.weight"},  # qualified by the module
        {"aff.q": "weight"},  # the other one is then the only fit left
    ],
)
def test_param_map_on_compare_fixes_a_confusing_pairing_and_leaves_no_order_note(param_map):
    report = _compare([("aff", Affine(4))], Net("aff"), param_map=param_map)
    assert report.ok, report.summary()
    assert not any("paired by order" in note for note in report.notes)
    assert "aff: p (4,) <-> bias (4,): identity (shape)" in report.conversions


def test_param_map_comes_in_maps_too():
    report = _compare([("aff", Affine(4))], Net("aff"), maps=gp.Maps(param_map={"p": "bias"}))
    assert report.ok, report.summary()


def test_compare_training_takes_param_map():
    def batches():
        return [(X, T)] * 2

    layers = [("aff", Affine(4))]
    options = {"ours_loss": MSE(), "reference_loss": nn.MSELoss(), "steps": 2}
    guessed = gp.compare_training(layers, Net("aff"), batches(), **options)
    assert not guessed.ok
    assert any(
        note.startswith("aff: p <-> weight and q <-> bias paired by order")
        for note in guessed.notes
    )
    mapped = gp.compare_training(
        layers, Net("aff"), batches(), param_map={"aff.p": "bias"}, **options
    )
    assert mapped.ok, mapped.summary()


@pytest.mark.parametrize(
    ("param_map", "message"),
    [
        (
            {"aff1.r": "bias"},
            "param_map names ours parameter 'aff1.r', which no layer has; ours has "
            "[aff1.p, aff1.q, aff2.p, aff2.q]",
        ),
        (
            {"aff1.p": "bais"},
            "param_map pairs aff1.p with 'bais', which reference module 'aff1' (the one layer "
            "aff1 faces) does not have; it has [weight (4,), bias (4,)]",
        ),
        (
            {"aff1.p": "aff2.bias"},  # another module's parameter
            "param_map pairs aff1.p with 'aff2.bias', which reference module 'aff1' (the one "
            "layer aff1 faces) does not have; it has [weight (4,), bias (4,)]",
        ),
        (
            {"aff1.p": "bias", "aff1.q": "bias"},
            "param_map pairs reference parameter 'bias' of module 'aff1' with 2 parameters "
            "[aff1.p, aff1.q]; use each once",
        ),
        (
            {"p": "bias"},
            "param_map key 'p' is ambiguous: layers [aff1, aff2] all have it; name one as "
            "'<layer>.p' (e.g. 'aff1.p')",
        ),
    ],
)
def test_param_map_mistakes_are_one_line(param_map, message):
    layers = [("aff1", Affine(4)), ("aff2", Affine(4))]
    with pytest.raises(gp.InputError) as raised:
        _compare(layers, Net("aff1", "aff2"), param_map=param_map)
    assert str(raised.value) == message


class Linear:
    """chainer style: ``W`` stored (out, in) and ``b``."""

    def __init__(self, n_in, n_out):
        self.params = {"W": RNG.standard_normal((n_out, n_in)), "b": RNG.standard_normal(n_out)}
        self.grads = {}

    def forward(self, x):
        self.x = x
        return x @ self.params["W"].T + self.params["b"]

    def backward(self, g):
        self.grads["W"] = g.T @ self.x
        self.grads["b"] = g.sum(0)
        return g @ self.params["W"]


def test_param_map_refuses_shapes_no_conversion_fits():
    with pytest.raises(gp.InputError) as raised:
        _compare([("fc", Linear(4, 4))], nn.Linear(4, 4).double(), param_map={"fc.b": "weight"})
    assert str(raised.value) == (
        "param_map pairs fc.b (4,) with weight (4, 4): no layout conversion fits those shapes"
    )


def test_the_autodiff_reference_refuses_param_map():
    with pytest.raises(gp.InputError, match=r"^param_map= needs a torch reference"):
        gp.compare(
            [("fc", Linear(4, 4))], "autodiff", X, T, ours_loss=MSE(), param_map={"fc.b": "b"}
        )


class SimpleRNNCell:
    """One step of ``h = tanh(x @ Wxh + h0 @ Whh + bh)`` from a fixed state ``h0``."""

    def __init__(self, n, h0):
        self.params = {
            k: RNG.standard_normal(s) for k, s in (("Wxh", (n, n)), ("Whh", (n, n)), ("bh", (n,)))
        }
        self.grads = {}
        self.h0 = h0

    def forward(self, x):
        self.x = x
        self.h = np.tanh(x @ self.params["Wxh"] + self.h0 @ self.params["Whh"] + self.params["bh"])
        return self.h

    def backward(self, g):
        dz = g * (1 - self.h**2)
        self.grads["Wxh"] = self.x.T @ dz
        self.grads["Whh"] = np.outer(self.h0, dz.sum(0))
        self.grads["bh"] = dz.sum(0)
        return dz @ self.params["Wxh"].T


class TorchRNNCell(nn.Module):
    """The same step, its parameters registered recurrent weight first (order would swap the
    two square weights), stored as ours stores them."""

    def __init__(self, n, h0):
        super().__init__()
        self.weight_hh = nn.Parameter(torch.zeros(n, n, dtype=torch.float64))
        self.weight_ih = nn.Parameter(torch.zeros(n, n, dtype=torch.float64))
        self.bias_hh = nn.Parameter(torch.zeros(n, dtype=torch.float64))
        self.h0 = torch.as_tensor(h0)

    def forward(self, x):
        return torch.tanh(x @ self.weight_ih + self.h0 @ self.weight_hh + self.bias_hh)


def test_an_rnn_with_wxh_whh_bh_pairs_with_torch_names_by_alias():
    h0 = RNG.standard_normal(4)  # the state every example of the batch starts from
    report = _compare([("rnn", SimpleRNNCell(4, h0))], TorchRNNCell(4, h0))
    assert report.ok, report.summary()
    assert [c.rsplit(": ", 1)[0] for c in report.conversions] == [
        "rnn: Wxh (4, 4) <-> weight_ih (4, 4)",
        "rnn: Whh (4, 4) <-> weight_hh (4, 4)",
        "rnn: bh (4,) <-> bias_hh (4,)",
    ]
    assert not any("paired by order" in note for note in report.notes)


@pytest.mark.parametrize(
    ("ours", "reference", "expected"),
    [
        # chainer: Linear's W and b; LSTM's upward and lateral (listed against torch's order)
        ({"b": (3,), "W": (3, 3)}, {"weight": (3, 3), "bias": (3,)}, {"W": "weight", "b": "bias"}),
        (
            {"lateral": (8, 2), "upward": (8, 2)},
            {"weight_ih": (8, 2), "weight_hh": (8, 2)},
            {"upward": "weight_ih", "lateral": "weight_hh"},
        ),
        # ML-From-Scratch: W and w0; numpy-ml: scaler and intercept
        (
            {"w0": (1, 3), "W": (3, 3)},
            {"weight": (3, 3), "bias": (3,)},
            {"W": "weight", "w0": "bias"},
        ),
        (
            {"intercept": (5,), "scaler": (5,)},
            {"weight": (5,), "bias": (5,)},
            {"scaler": "weight", "intercept": "bias"},
        ),
        # dotted and case: "cell.Wxh" against torch's layer suffix
        (
            {"cell.Whh": (4, 4), "cell.Wxh": (4, 4), "cell.BH": (4,), "cell.bx": (4,)},
            {
                "weight_ih_l0": (4, 4),
                "weight_hh_l0": (4, 4),
                "bias_ih_l0": (4,),
                "bias_hh_l0": (4,),
            },
            {
                "cell.Wxh": "weight_ih_l0",
                "cell.Whh": "weight_hh_l0",
                "cell.bx": "bias_ih_l0",
                "cell.BH": "bias_hh_l0",
            },
        ),
    ],
)
def test_framework_names_pair_by_alias_not_by_order(ours, reference, expected):
    found = pair_by_name_shape_order(ours, reference)
    assert dict(found.pairs) == expected and found.by_order == [] and found.unfit is None


def test_aliases_are_one_table_with_groups_that_do_not_merge():
    assert are_aliases("Gamma", "weight") and are_aliases("W", "layer.weight")
    assert not are_aliases("W", "gamma")  # both alias "weight", not each other
    assert plain_name("rnn.weight_hh_l1_reverse") == "weight_hh"


def test_shape_decides_before_order_and_order_is_reported_only_for_what_it_decided():
    found = pair_by_name_shape_order(
        {"u": (4,), "m": (4, 3), "v": (4,)}, {"first": (4,), "second": (4,), "mat": (3, 4)}
    )
    assert dict(found.pairs) == {"m": "mat", "u": "first", "v": "second"}
    assert found.by_order == [("u", "first"), ("v", "second")]


def test_two_names_claiming_one_alias_leave_it_to_shape_and_order():
    found = pair_by_name_shape_order({"W": (3,), "kernel": (3,)}, {"weight": (3,), "x": (3,)})
    assert found.by_order == [("W", "weight"), ("kernel", "x")]


class ScaleShift(nn.Module):
    """y = x * a + c: two parameters of one shape whose names say nothing about ours' p, q."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(3, dtype=torch.float64))
        self.c = nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def forward(self, x):
        return x * self.a + self.c


def scale_shift_grads(params, x, target):
    """(mean squared error of x * p + q, {p, q gradients}), as one function."""
    diff = x * params["p"] + params["q"] - target
    n = x.shape[0]
    return (diff**2).sum() / n, {"p": 2 * (diff * x).sum(axis=0) / n, "q": 2 * diff.sum(axis=0) / n}


def test_compare_function_names_a_pairing_order_decided():
    rng = np.random.default_rng(0)
    params = {"p": rng.standard_normal(3), "q": rng.standard_normal(3)}
    x, target = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    report = gp.compare_function(
        lambda x, t: scale_shift_grads(params, x, t)[1], params, ScaleShift(), x, target,
        reference_loss=lambda out, t: ((out - t) ** 2).sum() / out.shape[0],
    )  # fmt: skip
    assert report.ok, report.root_causes
    (note,) = [n for n in report.notes if "paired by order" in n]
    assert note.startswith("p <-> a and q <-> c paired by order (same shape (3,))")
    assert "param_map (e.g. {'p': 'a'})" in note
    named = gp.compare_function(
        lambda x, t: scale_shift_grads(params, x, t)[1], params, ScaleShift(), x, target,
        reference_loss=lambda out, t: ((out - t) ** 2).sum() / out.shape[0],
        param_map={"p": "a", "q": "c"},
    )  # fmt: skip
    assert not [n for n in named.notes if "paired by order" in n]


def test_a_containers_layers_pair_by_prefix_and_alias_with_no_order_note():
    """A residual block's fc1.W / fc2.W face fc1.weight / fc2.weight: the dotted prefix
    decides between the equal-shape aliases, not order."""
    from gradparity.ours import Linear, Residual, Sequential, Tanh
    from gradparity.reference.mirror import mirror

    rng = np.random.default_rng(0)
    block = Sequential(
        ("fc1", Linear(4, 4, rng=rng)), ("act", Tanh()), ("fc2", Linear(4, 4, rng=rng))
    )
    model = Sequential(("res", Residual(block)), ("head", Linear(4, 3, rng=rng)))
    x, target = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    report = gp.compare(model, mirror(model), x, target)
    assert report.ok, report.root_causes
    assert not [n for n in report.notes if "paired by order" in n]
    # The block's layers are compared inside it (trees): fc2's weight is paired at res.fc2.
    assert "res.fc2: W (4, 4) <-> weight (4, 4): transpose (model convention)" in (
        report.conversions
    )
