"""Hostile input (issue 10): every bad option or input is refused with one InputError line
naming what to fix (on the command line: exit 2 and one stderr line), or accepted and handled
correctly; nothing the user holds is changed, also after a refusal."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from refusal import refused
from torch import nn

import gradparity as gp
from gradparity.corpus.function_bugs import SIZES, function_setup
from gradparity.ours import (
    MSE,
    SGD,
    Layer,
    Linear,
    Sequential,
    Sigmoid,
    SoftmaxCrossEntropy,
    mlp,
)
from gradparity.reference import mirror

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 4))
Y = np.array([0, 1, 2, 0, 1, 2])


def _net() -> tuple:
    model = mlp((4, 5, 3), seed=0)
    return model, mirror(model)


def quietly(call):
    """``call()``, failing on any RuntimeWarning (overflow, invalid value) it lets out."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return call()


# --- options: the same refusal from every public entry point -----------------------------

FRONT_ENDS = {
    "compare": lambda **o: gp.compare(*_net(), X, Y, **o),
    "assert_parity": lambda **o: gp.assert_parity(*_net(), X, Y, **o),
    "compare_function": lambda **o: gp.compare_function(**function_setup(None), **o),
    "assert_function_parity": lambda **o: gp.assert_function_parity(**function_setup(None), **o),
    "compare_training": lambda **o: gp.compare_training(*_net(), [(X, Y)], **o),
}
BAD_OPTIONS = [
    ("rtol", float("nan")),
    ("atol", float("nan")),
    ("rtol", float("inf")),
    ("atol", float("-inf")),
    ("rtol", -1e-3),
    ("rtol", 10**400),  # an int beyond any float: OverflowError in float()
    ("atol", 10**400),
    ("atol", -1.0),
    ("rtol", "big"),
    ("atol", True),
    ("rtol", [1e-7]),
    ("seed", -1),
    ("seed", 1.5),
    ("seed", "a"),
    ("seed", True),
    ("seed", np.bool_(False)),
    ("seed", None),
    ("seed", np.int64(-3)),
    ("dtype", "float16"),
    ("dtype", "int64"),
    ("dtype", None),
    ("dtype", np.float16),
    ("dtype", torch.int32),
]


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS, ids=lambda v: repr(v)[:12])
def test_a_bad_option_is_refused_by_every_front_end(front_end, option, value):
    refused(lambda: FRONT_ENDS[front_end](**{option: value}), option)


@pytest.mark.parametrize(
    "options",
    [
        {"seed": np.int64(3)},
        {"seed": np.uint8(1)},
        {"dtype": np.float64},
        {"dtype": torch.float64},
        {"dtype": np.dtype("float32")},
        {"rtol": 0, "atol": np.float32(1e-12)},
        {"rtol": np.float64(1e-6)},
    ],
    ids=repr,
)
def test_numpy_and_torch_spellings_of_valid_options_are_accepted(options):
    report = gp.compare(*_net(), X, Y, **options)
    assert report.ok, report.summary()
    assert isinstance(report.meta["seed"], int)


class _FlippedBias(Linear):
    """A corpus bug: the bias gradient's sign flipped."""

    def backward(self, grad_out):
        grad_in = super().backward(grad_out)
        self.grads["b"] = -self.grads["b"]
        return grad_in


def test_a_nan_tolerance_no_longer_hides_a_real_bug():
    rng = np.random.default_rng(0)
    bugged = Sequential(
        ("fc1", Linear(4, 5, rng=rng)), ("act1", Sigmoid()), ("fc2", _FlippedBias(5, 3, rng=rng))
    )
    assert not gp.compare(bugged, mirror(bugged), X, Y).ok
    for option in ("rtol", "atol"):
        refused(lambda o=option: gp.compare(bugged, mirror(bugged), X, Y, **{o: np.nan}), option)


@pytest.mark.parametrize(("option", "value"), [("seed", -1), ("seed", "a"), ("seed", 2.0)])
def test_lint_refuses_a_bad_seed(option, value):
    model, _ = _net()
    refused(lambda: gp.lint(model, X, Y, **{option: value}), option)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: gp.compare(*_net(), X, Y, layer_map="fc1"), "layer_map must be a dict"),
        (lambda: gp.compare(*_net(), X, Y, layer_map=["fc1"]), "layer_map must be a dict"),
        (lambda: gp.compare(*_net(), X, Y, layer_map={"fc1": 3}), "layer_map"),
        (lambda: gp.compare(*_net(), X, Y, name=3), "name must be a string"),
        (lambda: gp.compare(*_net(), X, Y, reference_loss="ce"), "reference_loss"),
        (lambda: gp.compare(*_net(), X, Y, ours_loss=3), "'loss'"),
        (lambda: gp.compare_training(*_net(), [(X, Y)], layer_map=5), "layer_map"),
        (lambda: gp.compare_training(*_net(), [(X, Y)], ours_optimizer=3, reference_optimizer=3),
         "ours_optimizer must be an optimiser"),
        (lambda: gp.compare_function(**{**function_setup(None), "param_map": "W1"}), "param_map"),
        (lambda: gp.compare_function(**{**function_setup(None), "tap_map": ["h1"]}), "tap_map"),
        (lambda: gp.compare_function(**{**function_setup(None), "name": b"f"}), "name"),
        (lambda: gp.lint(_net()[0], X, Y, ours_loss=3), "'loss'"),
        (lambda: gp.assert_parity(*_net(), X, Y, report_dir=3), "report_dir"),
        (lambda: gp.assert_function_parity(**function_setup(None), report_dir=3.0), "report_dir"),
    ],
)  # fmt: skip
def test_other_options_of_the_wrong_kind_are_refused(call, name):
    refused(call, name)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_sync_weights_must_be_a_bool(value):
    refused(lambda: gp.compare(*_net(), X, Y, sync_weights=value), "sync_weights")


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"steps": "a"}, "steps"),
        ({"steps": 0}, "steps"),
        ({"steps": 1.0}, "steps"),
        ({"eval_every": 0}, "eval_every"),
        ({"progress": 3}, "progress"),
        ({"validation": X}, "validation"),
        ({"validation": (X, Y[:3])}, "validation classes"),
        ({"validation": (X, Y.astype(float))}, "validation classes"),
        ({"validation": (X[:, :2] + 1j, Y)}, "validation"),
        ({"validation": (X, torch.empty(6, device="meta"))}, "validation classes is on the meta"),
        ({"validation": (torch.empty((6, 4), device="meta"), Y)}, "validation: x is on the meta"),
    ],
)
def test_compare_training_options(options, name):
    refused(lambda: gp.compare_training(*_net(), [(X, Y)], **options), name)


def test_compare_function_batch_size_must_be_a_positive_integer():
    for value in (0, -2, 2.5, True, "8"):
        refused(
            lambda v=value: gp.compare_function(**function_setup(None), batch_size=v), "batch_size"
        )
    assert gp.compare_function(**function_setup(None), batch_size=np.int64(6)).ok


# --- x ------------------------------------------------------------------------------------

BAD_X = [
    ("complex", X + 1j, "complex"),
    ("complex with zero imaginary part", X.astype(complex), "complex"),
    ("objects", np.array([[object()] * 4] * 6), "Python objects"),
    ("strings", np.array([["1.5"] * 4] * 6), "strings"),
    ("bytes", np.array([[b"1"] * 4] * 6), "bytes"),
    ("datetimes", np.array([["2024-01-01"] * 4] * 6, dtype="datetime64[D]"), "datetimes"),
    ("None", None, "x is None"),
    ("empty", np.zeros((0, 4)), "empty"),
    ("scalar", 3.0, "at least one example"),
    ("ragged", [[1.0, 2.0], [3.0]], "ragged"),
    ("meta tensor", torch.empty((6, 4), device="meta"), "x is on the meta device"),
    ("sparse tensor", torch.tensor(X).to_sparse(), "x is a tensor NumPy cannot read"),
    ("list of tensors with grad", [torch.ones(4, requires_grad=True)] * 6, "x must be a numeric"),
    ("nan", np.where(X > 1, np.nan, X), "non-finite"),
    ("inf", np.full((6, 4), np.inf), "non-finite"),
    ("too wide", RNG.standard_normal((6, 5)), "x has 5 features but the first layer fc1 takes 4"),
    ("too narrow", RNG.standard_normal((6, 3)), "x has 3 features but the first layer fc1 takes 4"),
    ("features last", RNG.standard_normal((6, 4, 1)), "x has 1 features but the first layer fc1"),
]


@pytest.mark.parametrize(("x", "names"), [c[1:] for c in BAD_X], ids=[c[0] for c in BAD_X])
def test_bad_x_is_refused_before_anything_runs(x, names):
    model, reference = _net()
    before = {k: v.copy() for _, layer in model.named_layers() for k, v in layer.params.items()}
    ref_before = copy.deepcopy(reference.state_dict())
    refused(lambda: gp.compare(model, reference, x, Y), names)
    after = {k: v for _, layer in model.named_layers() for k, v in layer.params.items()}
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(torch.equal(ref_before[k], v) for k, v in reference.state_dict().items())


@pytest.mark.parametrize(
    "x",
    [
        X > 0,
        X.astype(np.float32),
        X.astype(np.int64),
        torch.tensor(X, requires_grad=True),
        torch.tensor(X, dtype=torch.bfloat16),
        torch.tensor(X, dtype=torch.float16),
        X[0],
    ],
    ids=["bool", "float32", "int", "tensor with grad", "bfloat16", "float16", "one example"],
)
def test_x_of_other_real_types_is_accepted(x):
    target = Y[:1] if np.ndim(x) == 1 else Y
    report = gp.compare(*_net(), x, target)
    assert report.ok, report.summary()


def test_complex_x_is_refused_by_compare_function_and_lint():
    refused(lambda: gp.compare_function(**{**function_setup(None), "x": X + 1j}), "complex")
    refused(lambda: gp.lint(_net()[0], X + 1j, Y), "complex")


def test_x_of_1e300_runs_without_warnings_and_is_in_parity():
    report = quietly(lambda: gp.compare(*_net(), X * 1e300, Y))
    assert report.ok, report.summary()


def test_x_beyond_float32_is_refused_naming_the_range():
    refused(lambda: gp.compare(*_net(), X * 1e300, Y, dtype="float32"), "x", "float32")


def test_an_x_that_overflows_the_reference_is_refused_naming_the_layer():
    model = mlp((4, 5, 3))
    dict(model.named_layers())["fc1"].params["W"][...] = 1.0  # four terms of 1e308 add up to inf
    huge = np.full((6, 4), 1e308)
    refused(
        lambda: quietly(lambda: gp.compare(model, mirror(model), huge, Y)), "layer fc1 overflows"
    )


# --- targets --------------------------------------------------------------------------------

BAD_TARGETS = [
    ("None", None, "target is None; pass"),
    ("out of range", Y + 3, "class 5 but the model has 3 outputs"),
    ("negative", Y - 1, "class -1 but the model has 3 outputs (classes 0..2)"),
    ("float labels", Y.astype(float), "target.astype(int)"),
    ("fractional labels", Y + 0.5, "integer classes"),
    ("too few rows", Y[:4], "target has 4 rows but x has 6"),
    ("probabilities of the wrong width", np.full((6, 4), 0.25), "(6, 4)"),
    ("probabilities outside [0, 1]", np.full((6, 3), 2.0), "outside [0, 1]"),
    ("complex", Y + 1j, "complex"),
    ("strings", np.array(list("abcabc")), "strings"),
    ("column of classes", Y[:, None], "shape (6, 1)"),
    ("meta tensor", torch.empty(6, device="meta"), "target is on the meta device"),
    ("bfloat16 labels", torch.tensor(Y, dtype=torch.bfloat16), "float class labels"),
]


@pytest.mark.parametrize(("target", "names"), [c[1:] for c in BAD_TARGETS],
                         ids=[c[0] for c in BAD_TARGETS])  # fmt: skip
def test_bad_class_target_is_refused_naming_the_fix(target, names):
    refused(lambda: gp.compare(*_net(), X, target), names)


@pytest.mark.parametrize(
    "target",
    [np.eye(3)[Y], np.eye(3, dtype=int)[Y], np.full((6, 3), 1 / 3), Y.astype(bool)],
    ids=["one-hot floats", "one-hot ints", "probabilities", "bool classes"],
)
def test_one_hot_and_probability_targets_are_accepted_where_both_losses_take_them(target):
    report = gp.compare(*_net(), X, target)
    assert report.ok, report.summary()


def test_one_hot_target_for_an_indices_only_reference_loss_gets_the_argmax_hint():
    def nll(output, target):
        return F.nll_loss(F.log_softmax(output, dim=-1), target)

    message = refused(
        lambda: gp.compare(*_net(), X, np.eye(3)[Y], reference_loss=nll),
        "looks one-hot (6, 3)",
        "target.argmax(axis=1)",
    )
    assert "the reference's loss" in message


def test_one_hot_target_for_an_indices_only_ours_loss_gets_the_argmax_hint():
    class IndicesOnly(SoftmaxCrossEntropy):
        def forward(self, logits, target):
            if np.ndim(target) != 1:
                raise ValueError("class indices only")
            return super().forward(logits, target)

    message = refused(
        lambda: gp.compare(*_net(), X, np.eye(3)[Y], ours_loss=IndicesOnly()),
        "target.argmax(axis=1)",
    )
    assert "ours' loss" in message


def test_mse_target_of_another_shape_is_refused():
    refused(lambda: gp.compare(*_net(), X, Y, ours_loss=MSE()), "target has shape (6,)", "MSE")
    assert gp.compare(*_net(), X, RNG.standard_normal((6, 3)), ours_loss=MSE()).ok


def test_compare_function_target_beyond_the_output_names_its_width():
    kwargs, width = function_setup(None), SIZES[-1]
    message = refused(
        lambda: gp.compare_function(**{**kwargs, "target": kwargs["target"] + width}),
        f"has {width} outputs",
    )
    assert message.startswith("target holds class")


def test_compare_function_target_none_says_what_to_pass():
    refused(lambda: gp.compare_function(**{**function_setup(None), "target": None}), "target")


def test_assert_parity_without_target_makes_classes_of_the_right_width():
    assert gp.assert_parity(*_net(), X).ok


# --- the reference --------------------------------------------------------------------------


def test_meta_reference_without_sync_is_refused_and_left_on_meta():
    model, reference = _net()
    meta = reference.to("meta")
    refused(lambda: gp.compare(model, meta, X, Y, sync_weights=False), "meta", "sync_weights=True")
    assert all(p.is_meta for p in meta.parameters())


def test_meta_reference_with_sync_gets_ours_weights_and_is_in_parity():
    model, reference = _net()
    meta = reference.to("meta")
    assert gp.compare(model, meta, X, Y).ok
    assert all(p.is_meta for p in meta.parameters())


def test_meta_reference_with_a_buffer_is_refused_naming_it():
    model, _ = _net()
    meta = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).to("meta")
    refused(lambda: gp.compare(model, meta, X, Y), "buffer", "meta")


def test_meta_reference_in_training():
    model, reference = _net()
    assert gp.compare_training(model, copy.deepcopy(reference).to("meta"), [(X, Y)]).ok
    meta = copy.deepcopy(reference).to("meta")
    bound = torch.optim.SGD(meta.parameters(), lr=0.1)
    ours_opt = SGD(model, lr=0.1)
    refused(
        lambda: gp.compare_training(
            model, meta, [(X, Y)], ours_optimizer=ours_opt, reference_optimizer=bound
        ),
        "reference_optimizer",
        "factory",
    )


class _Returns(nn.Module):
    """The mirror's layers, with a forward that returns ``what(output)``."""

    def __init__(self, what) -> None:
        super().__init__()
        self.fc1, self.act1, self.fc2 = nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3)
        self.what = what

    def forward(self, x):
        return self.what(self.fc2(self.act1(self.fc1(x))))


@pytest.mark.parametrize(
    ("what", "names"),
    [
        (lambda out: None, "returned NoneType, not a tensor"),
        (lambda out: (out, out), "returned tuple"),
        (lambda out: out * float("inf"), "not finite"),
    ],
    ids=["None", "tuple", "inf"],
)
def test_a_reference_forward_that_returns_no_usable_output_is_refused(what, names):
    refused(lambda: gp.compare(_net()[0], _Returns(what), X, Y), names)


def test_compare_function_refuses_a_reference_returning_none():
    kwargs = function_setup(None)
    module = kwargs["reference"]
    module.forward = lambda x: None
    refused(lambda: gp.compare_function(**kwargs), "returned NoneType")


def test_a_wrong_width_inside_the_reference_names_that_layer():
    broken = nn.Sequential()
    broken.add_module("fc1", nn.Linear(4, 5))
    broken.add_module("act1", nn.Sigmoid())
    broken.add_module("fc2", nn.Linear(6, 3))
    refused(
        lambda: gp.assert_parity(mlp((4, 5, 3)), broken, X), "layer fc2 gets 5 features but takes 6"
    )


# --- compare_training batches ----------------------------------------------------------------

BAD_BATCHES = [
    ("arrays, not pairs", [X, X], "batch 1 is an array of shape (6, 4), not an (x, target) pair"),
    ("triples", [(X, Y, Y)], "batch 1 is a tuple of 3 items"),
    ("dicts", [{"x": X, "y": Y}], "batch 1 is a dict"),
    ("None", None, "batches must be an iterable"),
    ("a number", 5, "batches must be an iterable"),
    ("empty", [], "gave no (x, target) pair"),
    ("second batch out of range", [(X, Y), (X, Y + 3)], "batch 2: target holds class 5"),
    (
        "second batch wider",
        [(X, Y), (np.ones((6, 5)), Y)],
        "batch 2: x has shape (6, 5), earlier batches had (N, 4)",
    ),
    ("float labels", [(X, Y.astype(float))], "batch 1: target holds float class labels"),
    ("first batch too wide", [(np.ones((6, 5)), Y)], "batch 1: x has 5 features"),
    ("meta x", [(torch.empty((6, 4), device="meta"), Y)], "batch 1: x is on the meta device"),
    ("meta target", [(X, torch.empty(6, device="meta"))], "batch 1: target is on the meta"),
]


@pytest.mark.parametrize(("batches", "names"), [c[1:] for c in BAD_BATCHES],
                         ids=[c[0] for c in BAD_BATCHES])  # fmt: skip
def test_bad_batches_are_refused_naming_the_batch(batches, names):
    refused(lambda: gp.compare_training(*_net(), batches), names)


def test_training_takes_list_batches_and_one_hot_targets():
    report = gp.compare_training(*_net(), [[X, Y], (X, np.eye(3)[Y])])
    assert report.ok, report.summary()


# --- gp.lint ---------------------------------------------------------------------------------


def test_lint_reports_a_forward_that_cannot_run():
    findings = gp.lint(_net()[0], RNG.standard_normal((6, 5)), Y)
    assert [(f.layer, f.quantity, f.diagnosis) for f in findings] == [("fc1", "output", "raised")]
    assert findings[0].detail["type"] == "ValueError" and "\n" not in findings[0].message


def test_lint_reports_a_backward_that_cannot_run():
    class Broken(Layer):
        def forward(self, x):
            return x

        def backward(self, grad_out):
            raise RuntimeError("not written yet")

    model = [*mlp((4, 5, 3)).named_layers(), ("broken", Broken())]
    findings = gp.lint(model, X, Y)
    assert [(f.layer, f.quantity, f.diagnosis) for f in findings] == [
        ("broken", "grad_input", "raised")
    ]
    assert "not written yet" in findings[0].message


def test_lint_refuses_a_class_beyond_the_output():
    refused(lambda: gp.lint(_net()[0], X, Y + 3), "class 5", "3 outputs")


def test_lint_refuses_what_numpy_would_take_silently():
    # NumPy indexes with -1 (the last class) and broadcasts (6, 3) against (6, 3, 1).
    refused(lambda: gp.lint(_net()[0], X, Y - 1), "class -1 but the model has 3 outputs")
    mse_target = RNG.standard_normal((6, 3, 1))
    refused(lambda: gp.lint(_net()[0], X, mse_target, ours_loss=MSE()), "target has shape (6, 3")


# --- tensors the user's code hands over --------------------------------------------------------


def _returning(convert):
    """compare_function's setup with its grads returning W1's gradient through ``convert``."""
    kwargs = function_setup(None)
    grads = kwargs["grads"]

    def converted(x, target):
        out = dict(grads(x, target))
        out["W1"] = convert(out["W1"])
        return out

    return {**kwargs, "grads": converted}


@pytest.mark.parametrize(
    ("convert", "names"),
    [
        (lambda g: torch.empty(g.shape, device="meta"), "the gradient of W1 is on the meta device"),
        (lambda g: torch.tensor(g).to_sparse(), "the gradient of W1 is a tensor NumPy cannot"),
        (lambda g: [[1.0], [1.0, 2.0]], "the gradient of W1 is ragged"),
    ],
    ids=["meta", "sparse", "ragged"],
)
def test_gradients_numpy_cannot_read_are_refused_naming_the_parameter(convert, names):
    refused(lambda: gp.compare_function(**_returning(convert)), names)


@pytest.mark.parametrize(
    "convert",
    [lambda g: torch.tensor(g, requires_grad=True), lambda g: torch.tensor(g, dtype=torch.float16)],
    ids=["tensor with grad", "float16"],
)
def test_gradients_returned_as_tensors_are_read(convert):
    report = gp.compare_function(**_returning(convert), rtol=1e-2)
    assert report.ok, report.summary()


@pytest.mark.parametrize(
    "tensor",
    [
        lambda w: torch.tensor(w, requires_grad=True),
        lambda w: torch.tensor(w, dtype=torch.bfloat16),
        lambda w: torch.empty(w.shape, device="meta"),
    ],
    ids=["with grad", "bfloat16", "meta"],
)
@pytest.mark.parametrize("front_end", ["compare", "lint", "compare_training"])
def test_a_torch_tensor_among_ours_params_is_refused_naming_it(tensor, front_end):
    model, reference = _net()
    fc1 = dict(model.named_layers())["fc1"]
    fc1.params["W"] = tensor(fc1.params["W"])
    call = {
        "compare": lambda: gp.compare(model, reference, X, Y),
        "lint": lambda: gp.lint(model, X, Y),
        "compare_training": lambda: gp.compare_training(model, reference, [(X, Y)]),
    }[front_end]
    refused(call, "parameter fc1.W is a Tensor", "NumPy arrays")
