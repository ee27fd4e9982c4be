"""The one parameter pairing (``pairing.params``) and its square-weight strategies
(``pairing.square``): names by param_map, equal names, order, then shape; a square weight by
the model's convention, else the front end's strategy; one sync into the reference and one
conversion back into ours' layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.pairing.align import LayerPair
from gradparity.pairing.layer_params import pair_layer_parameters as pair_parameters
from gradparity.pairing.params import (
    Candidate,
    ParamPair,
    pair_by_name_shape_order,
    resolve_layouts,
    sync_parameters,
    to_ours,
    to_reference,
)
from gradparity.pairing.square import AgreementTest, pair_function_params
from gradparity.reference.layout import IDENTITY, RESHAPE, TRANSPOSE


class Dense:
    """y = x @ W + b, W stored (in, out): the layout torch's Linear holds transposed."""

    def __init__(self, w: np.ndarray, b: np.ndarray, broken: bool = False) -> None:
        self.params = {"W": w, "b": b}
        self.grads = {"W": np.zeros_like(w), "b": np.zeros_like(b)}
        self.broken = broken

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.broken:
            return x @ self.params["W"] * 2.0 + self.params["b"]
        return x @ self.params["W"] + self.params["b"]

    def backward(self, g: np.ndarray) -> np.ndarray:
        return g


def _dense(n_in: int, n_out: int, seed: int, broken: bool = False) -> Dense:
    rng = np.random.default_rng(seed)
    return Dense(rng.standard_normal((n_in, n_out)), rng.standard_normal(n_out), broken)


def _candidate(key: str, ours: tuple, ref: tuple, options: tuple, layer: str = "") -> Candidate:
    return Candidate(layer, key, f"t.{key}", ours, ref, options)


def pair_names(ours, ref, param_map=None):
    """(pairs, the parameter nothing fits): ``pair_by_name_shape_order`` as a tuple."""
    found = pair_by_name_shape_order(ours, ref, param_map)
    return found.pairs, found.unfit


def test_names_pair_by_param_map_then_name_then_order():
    ours = {"W1": (3, 4), "extra": (4,), "Wxh": (4, 3)}
    ref = {"a.weight": (3, 4), "cell.Wxh": (4, 3), "bias": (4,)}
    named, unfit = pair_names(ours, ref, {"extra": "bias"})
    assert unfit is None
    assert dict(named) == {"extra": "bias", "Wxh": "cell.Wxh", "W1": "a.weight"}


def test_numbered_names_pair_in_their_numbers_order_whatever_order_they_come_in():
    ours = {"W2": (4, 4), "W1": (4, 4)}
    ref = {"0.weight": (4, 4), "1.weight": (4, 4)}
    assert dict(pair_names(ours, ref)[0]) == {"W1": "0.weight", "W2": "1.weight"}


def test_when_order_does_not_fit_biases_take_one_dimensional_parameters_first():
    ours = {"b": (1, 3), "W": (3, 3)}
    ref = {"weight": (3, 3), "bias": (3,)}
    assert dict(pair_names(ours, ref)[0]) == {"b": "bias", "W": "weight"}


def test_a_parameter_no_reference_parameter_fits_is_named():
    named, unfit = pair_names({"W": (3, 4), "V": (7, 7)}, {"weight": (4, 3), "other": (2,)})
    assert named == [("W", "weight")] and unfit == "V"


class _Never:
    """A strategy that must not be asked."""

    def __call__(self, square, everything):
        raise AssertionError(f"asked about {square}")


def test_layouts_follow_the_shape_then_the_model_convention_without_asking_the_strategy():
    found = [
        _candidate("W1", (3, 4), (4, 3), (TRANSPOSE,)),
        _candidate("W2", (4, 4), (4, 4), (IDENTITY, TRANSPOSE)),
        _candidate("b", (1, 4), (4,), (RESHAPE,)),
    ]
    pairs = resolve_layouts(found, _Never())
    assert [(p.key, p.conversion, p.how) for p in pairs] == [
        ("W1", TRANSPOSE, "shape"),
        ("W2", TRANSPOSE, "model convention"),
        ("b", RESHAPE, "shape"),
    ]


def test_square_weights_without_a_convention_go_to_the_strategy_with_everything():
    found = [
        _candidate("W1", (4, 4), (4, 4), (IDENTITY, TRANSPOSE)),
        _candidate("b", (4,), (4,), (IDENTITY,)),
    ]
    asked = []

    def strategy(square, everything):
        asked.append((square, everything))
        return {c: (TRANSPOSE, "because") for c in square}

    pairs = resolve_layouts(found, strategy)
    assert asked == [([found[0]], found)]
    assert pairs[0] == ParamPair("W1", "t.W1", TRANSPOSE, (4, 4), (4, 4), "because")


@pytest.mark.parametrize(
    ("answers", "columns", "expected"),
    [
        ({IDENTITY: True}, False, (IDENTITY, "the two sides agree under it")),
        ({IDENTITY: False, TRANSPOSE: True}, True, (TRANSPOSE, "the two sides agree under it")),
        (
            {},
            True,
            (IDENTITY, "assumed (no loss_fn or forward tap to decide): (out, in), as z = W @ a, "
             "examples as columns"),
        ),
        (
            {IDENTITY: False, TRANSPOSE: False},
            False,
            (TRANSPOSE, "assumed (neither layout made the loss or the forward taps agree): "
             "(in, out), as z = x @ W, examples as rows"),
        ),
    ],
)  # fmt: skip
def test_the_agreement_strategy_tries_both_layouts_then_assumes_the_examples_layout(
    answers, columns, expected
):
    square = [_candidate("W", (3, 3), (3, 3), (IDENTITY, TRANSPOSE))]
    tried = []

    def decide(pairs: list[ParamPair]) -> bool | None:
        tried.append(pairs[0].conversion)
        return answers.get(pairs[0].conversion)

    chosen = AgreementTest(decide, columns)(square, square)
    assert chosen == {square[0]: expected}
    assert tried == [IDENTITY, TRANSPOSE][: len(tried)] and tried


def _model(*shapes: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(*(nn.Linear(n_in, n_out).double() for n_in, n_out in shapes))


def test_the_forward_probe_finds_a_square_weight_stored_in_out():
    pairs = [LayerPair("fc", _dense(4, 4, 0), "0", _model((4, 4))[0])]
    pair_parameters(pairs, np.random.default_rng(0))
    assert [(p.key, p.conversion, p.how) for p in pairs[0].params] == [
        ("W", TRANSPOSE, "forward agreement"),
        ("b", IDENTITY, "shape"),
    ]


def test_a_layer_whose_forward_agrees_under_no_layout_takes_what_the_others_agreed_on():
    model = _model((4, 4), (4, 4))
    pairs = [
        LayerPair("fc1", _dense(4, 4, 0), "0", model[0]),
        LayerPair("fc2", _dense(4, 4, 1, broken=True), "1", model[1]),
    ]
    pair_parameters(pairs, np.random.default_rng(0))
    assert (pairs[1].params[0].conversion, pairs[1].params[0].how) == (
        TRANSPOSE,
        "assumed (no layout made the forwards agree): the layout other layers agreed on",
    )
    alone = [LayerPair("fc2", _dense(4, 4, 1, broken=True), "1", _model((4, 4))[0])]
    pair_parameters(alone, np.random.default_rng(0))
    assert alone[0].params[0].how == "assumed (no layout made the forwards agree): x @ W"


class DenseOutIn(Dense):
    """y = x @ W.T + b, W stored (out, in) as torch's Linear holds it."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x @ self.params["W"].T + self.params["b"]


@pytest.mark.parametrize("first", [IDENTITY, TRANSPOSE])
def test_on_a_tie_a_broken_layer_takes_the_layout_of_the_first_layer_that_agreed(first):
    model = _model((4, 4), (4, 4), (4, 4))
    rng = np.random.default_rng(0)
    out_in = DenseOutIn(rng.standard_normal((4, 4)), rng.standard_normal(4))
    in_out = _dense(4, 4, 1)
    layers = [out_in, in_out] if first == IDENTITY else [in_out, out_in]
    pairs = [
        LayerPair("fc1", layers[0], "0", model[0]),
        LayerPair("fc2", layers[1], "1", model[1]),
        LayerPair("fc3", _dense(4, 4, 2, broken=True), "2", model[2]),
    ]
    pair_parameters(pairs, np.random.default_rng(0))
    other = TRANSPOSE if first == IDENTITY else IDENTITY
    assert [p.params[0].conversion for p in pairs] == [first, other, first]
    assert pairs[2].params[0].how.endswith("the layout other layers agreed on")


def test_a_layer_pairs_by_name_before_order():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.ones(3, dtype=torch.float64))
            self.b = nn.Parameter(torch.zeros(3, dtype=torch.float64))

    class Shift:  # its parameters listed in the other order than the module's
        def __init__(self) -> None:
            self.params = {"b": np.zeros(3), "a": np.ones(3)}
            self.grads = {"b": np.zeros(3), "a": np.zeros(3)}

        def forward(self, x: np.ndarray) -> np.ndarray:
            return x * self.params["a"] + self.params["b"]

        def backward(self, g: np.ndarray) -> np.ndarray:
            return g * self.params["a"]

    layer = Shift()
    pairs = [LayerPair("scale", layer, "", Scale())]
    pair_parameters(pairs, np.random.default_rng(0))
    assert [(p.key, p.torch_name) for p in pairs[0].params] == [("b", "b"), ("a", "a")]


def test_layer_pairing_names_the_layer_that_cannot_pair():
    wrong_count = [LayerPair("fc", _dense(4, 3, 0), "0", nn.Linear(4, 3, bias=False))]
    with pytest.raises(gp.InputError, match=r"layer 'fc': 2 parameters on ours, 1 on reference"):
        pair_parameters(wrong_count, np.random.default_rng(0))
    unfit = [LayerPair("fc", _dense(4, 3, 0), "0", nn.Linear(5, 3))]
    with pytest.raises(gp.InputError, match=r"ours parameter 'W' of shape \(4, 3\) fits no"):
        pair_parameters(unfit, np.random.default_rng(0))


def test_function_parameters_refuse_a_count_that_differs_without_a_param_map():
    params = {"W": np.zeros((3, 4))}
    with pytest.raises(gp.InputError, match="with fewer, pair each with param_map"):
        pair_function_params(params, nn.Linear(4, 3), None, False, lambda pairs: None)
    pairs = pair_function_params(params, nn.Linear(4, 3), {"W": "weight"}, False, lambda p: None)
    assert [p.describe() for p in pairs] == ["W (3, 4) <-> weight (3, 4): identity (shape)"]


@pytest.mark.parametrize(
    ("ours", "conversion", "torch_shape"),
    [((3, 4), TRANSPOSE, (4, 3)), ((1, 4), RESHAPE, (4,)), ((3, 4), IDENTITY, (3, 4))],
)
def test_sync_and_back_conversion_undo_each_other(ours, conversion, torch_shape):
    pair = ParamPair("W", "weight", conversion, ours, torch_shape, "shape")
    value = np.random.default_rng(0).standard_normal(ours)
    module = nn.Module()
    module.weight = nn.Parameter(torch.zeros(torch_shape, dtype=torch.float32))
    sync_parameters({"W": value}, module, [pair])
    assert module.weight.dtype == torch.float32  # the module's dtype is kept
    synced = module.weight.detach().double().numpy()
    np.testing.assert_allclose(synced, to_reference(value, pair), rtol=1e-6)
    np.testing.assert_array_equal(to_ours(to_reference(value, pair), pair), value)
    assert to_ours(synced, pair).shape == ours
