"""Hostile values (issue 10, second pass): what the user's code hands back or the reference
computes is never compared as something it is not.

Values ours' code produces (outputs, gradients, taps, the loss) that are complex, text or None
become a ``raised`` finding on that quantity, with no warning printed, while the rest is still
checked; inputs the user passes (parameters, options, optimisers, the reference) are refused
in one InputError line naming what to fix. Correct code is never blamed: a float32 loss under
central differences, a softmax over one output, a non-finite reference and an optimiser bound
to another model are refused instead.
"""

from __future__ import annotations

import copy
import textwrap
import warnings

import numpy as np
import pytest
import torch
from refusal import refused
from torch import nn

import gradparity as gp
from gradparity.cli.main import main
from gradparity.ours import SGD, Linear, Sequential, SoftmaxCrossEntropy, Tanh
from gradparity.reference import mirror

RNG = np.random.default_rng(1)
X = RNG.standard_normal((5, 4))
Y = np.array([0, 1, 2, 0, 1])


def quietly(call):
    """``call()``, failing on any warning it lets out (ComplexWarning, DeprecationWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


class Dense:
    """Foreign code with its own names: y = x @ w.T + b, gradients in dw and db."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        self.w, self.b = w, b

    def fprop(self, x):
        self.x = x
        return x @ self.w.T + self.b

    def bprop(self, g):
        self.dw, self.db = g.T @ self.x, g.sum(0)
        return g @ self.w


def wrapped(layer: Dense, **accessors):
    names = {"params": ["w", "b"], "grads": ["dw", "db"], **accessors}
    return gp.wrap(layer, forward="fprop", backward="bprop", **names)


def dense_net(cls: type = Dense, width: int = 3) -> tuple[list, nn.Module]:
    """One wrapped ``cls`` layer named "fc" and its torch twin (an nn.Sequential: module "0")."""
    rng = np.random.default_rng(0)
    layer = cls(rng.standard_normal((width, 4)), rng.standard_normal(width))
    return [("fc", wrapped(layer))], nn.Sequential(nn.Linear(4, width))


def only_finding(report, layer: str, quantity: str, *words: str):
    """The report's single root cause, at (layer, quantity), a ``raised`` one saying ``words``."""
    assert not report.ok
    (found,) = report.root_causes
    assert (found.layer, found.quantity, found.diagnosis) == (layer, quantity, "raised"), found
    for word in words:
        assert word in found.message, found.message
    return found


# --- 1. complex values are never compared by their real part ------------------------------


class ComplexGrad(Dense):
    def bprop(self, g):
        grad_in = super().bprop(g)
        self.dw = self.dw + 5j
        return grad_in


class ComplexOutput(Dense):
    def fprop(self, x):
        return super().fprop(x) * (1 + 0.5j)


@pytest.mark.parametrize(
    ("cls", "quantity", "words"),
    [
        (ComplexGrad, "grad:w", ("ours is complex", "grads['w']", "imaginary part up to 5")),
        (ComplexOutput, "output", ("ours is complex", "forward's output")),
    ],
    ids=["gradient", "output"],
)
def test_a_complex_value_of_ours_is_a_finding_on_that_quantity(cls, quantity, words):
    report = quietly(lambda: gp.compare(*dense_net(cls), X, Y))
    only_finding(report, "fc", quantity, *words)
    findings = quietly(lambda: gp.lint(dense_net(cls)[0], X, Y))
    assert [(f.quantity, f.diagnosis) for f in findings] == [(quantity, "raised")]


class ComplexLoss(SoftmaxCrossEntropy):
    def forward(self, logits, target):
        return super().forward(logits, target) + 1j


def test_a_complex_loss_value_is_a_finding_on_the_loss():
    model, reference = dense_net()
    report = quietly(
        lambda: gp.compare(
            model, reference, X, Y, ours_loss=ComplexLoss(), reference_loss=nn.CrossEntropyLoss()
        )
    )
    only_finding(report, "loss", "output", "ours is complex")


class ComplexGradLinear(Linear):
    def backward(self, grad_out):
        grad_in = super().backward(grad_out)
        self.grads["W"] = self.grads["W"] + 1j
        return grad_in


def test_a_complex_gradient_in_training_is_a_finding_at_its_step():
    model = Sequential(("fc", ComplexGradLinear(4, 3, rng=np.random.default_rng(0))))
    report = quietly(lambda: gp.compare_training(model, mirror(model), [(X, Y)] * 2))
    assert not report.ok and report.first_divergent_step == 1
    assert "ours is complex" in report.root_causes[0].message


def test_complex_parameters_are_refused_naming_them():
    layer = Dense(np.ones((3, 4)) + 1j, np.ones(3))
    refused(lambda: gp.compare([("fc", wrapped(layer))], dense_net()[1], X, Y), "fc.w", "complex")
    params = {"W": np.ones((3, 4)) + 1j, "b": np.ones(3)}
    refused(
        lambda: gp.compare_function(lambda x, y: params, params, nn.Linear(4, 3), X, Y),
        "parameter W",
        "complex",
    )


def _function_setup() -> dict:
    """compare_function on a softmax regression that is right, with a tap on the logits."""
    reference = nn.Sequential(nn.Linear(4, 3)).double()
    params = {
        "W": reference[0].weight.detach().numpy().copy(),
        "b": reference[0].bias.detach().numpy().copy(),
    }

    def grads(x, y):
        z = gp.tap("z", x @ params["W"].T + params["b"])
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        return {"W": p.T @ x / len(y), "b": p.sum(0) / len(y)}

    def loss_fn(p, x, y):
        z = x @ p["W"].T + p["b"]
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))

    return {"grads": grads, "params": params, "reference": reference, "x": X, "target": Y,
            "loss_fn": loss_fn, "tap_map": {"z": "0"}}  # fmt: skip


def test_compare_function_setup_is_in_parity():
    assert quietly(lambda: gp.compare_function(**_function_setup())).ok


@pytest.mark.parametrize("reference", ["model", None])
def test_a_complex_gradient_of_a_function_is_a_finding_and_the_rest_is_compared(reference):
    setup = _function_setup()
    right = setup["grads"]

    def complex_w(x, y):
        result = right(x, y)
        return {**result, "W": result["W"] * (1 + 1j)}

    setup["grads"] = complex_w
    if reference is None:
        setup.update(reference=None, tap_map=None)
    report = quietly(lambda: gp.compare_function(**setup))
    only_finding(report, "complex_w", "grad:W", "ours is complex", "the gradient of W")
    compared = report.table[report.table["quantity"] == "grad:b"]
    assert (compared["status"] == "ok").all()


@pytest.mark.parametrize(
    ("value", "words"),
    [(np.ones((5, 3)) * 1j, "ours is complex"), ("abc", "tap 'z' is a str")],
    ids=["complex", "text"],
)
def test_a_tap_holding_no_real_numbers_is_a_finding_on_that_tap(value, words):
    setup = _function_setup()
    right = setup["grads"]

    def grads(x, y):
        result = right(x, y)
        gp.tap("z2", value)
        return result

    setup.update(grads=grads, tap_map={"z2": "0"})
    report = quietly(lambda: gp.compare_function(**setup))
    only_finding(report, "z2", "output", words.replace("'z'", "'z2'"))


@pytest.mark.parametrize(
    ("returned", "words"),
    [
        (lambda value: value + 0.5j, "complex"),
        (lambda value: "1.5", "returned str"),
        (lambda value: None, "returned NoneType"),
        (lambda value: np.array([value, value]), "shape (2,)"),
    ],
    ids=["complex", "text", "None", "two values"],
)
def test_a_loss_fn_returning_no_real_number_is_refused(returned, words):
    setup = _function_setup()
    right = setup["loss_fn"]
    setup.update(reference=None, tap_map=None, loss_fn=lambda p, x, y: returned(right(p, x, y)))
    refused(lambda: quietly(lambda: gp.compare_function(**setup)), "loss_fn", words)


def test_a_loss_fn_returning_one_value_in_an_array_is_read():
    setup = _function_setup()
    right = setup["loss_fn"]
    setup.update(reference=None, tap_map=None, loss_fn=lambda p, x, y: np.array([[right(p, x, y)]]))
    assert gp.compare_function(**setup).ok


# --- 2. correct code is never blamed ------------------------------------------------------


def _logistic() -> dict:
    """Correct logistic-regression backprop with examples as columns (the course layout)."""
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((1, 4)), "b": np.zeros((1, 1))}
    x, y = rng.standard_normal((4, 6)), (rng.random((1, 6)) > 0.5) * 1.0

    def grads(x, y):
        a = 1 / (1 + np.exp(-(params["W"] @ x + params["b"])))
        dz = (a - y) / x.shape[1]
        return {"dW": dz @ x.T, "db": dz.sum(1, keepdims=True)}

    def cost(p, x, y):
        a = 1 / (1 + np.exp(-(p["W"] @ x + p["b"])))
        return -np.mean(y * np.log(a) + (1 - y) * np.log(1 - a))

    return {"grads": grads, "params": params, "x": x, "target": y, "loss_fn": cost}


def test_a_float32_loss_fn_is_refused_for_central_differences():
    setup = _logistic()
    cost = setup["loss_fn"]
    assert gp.compare_function(**setup, reference=None).ok
    setup["loss_fn"] = lambda p, x, y: np.float32(cost(p, x, y))
    refused(lambda: gp.compare_function(**setup, reference=None), "float32", "float64")


def test_a_float32_loss_fn_is_refused_against_a_float64_reference():
    setup = _function_setup()
    right = setup["loss_fn"]
    setup["loss_fn"] = lambda p, x, y: torch.tensor(right(p, x, y), dtype=torch.float32)
    refused(lambda: gp.compare_function(**setup), "float32", "dtype='float32'")


def _binary_reference(params: dict) -> nn.Module:
    reference = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid()).double()
    with torch.no_grad():
        reference[0].weight.copy_(torch.as_tensor(params["W"]))
        reference[0].bias.copy_(torch.as_tensor(params["b"].ravel()))
    return reference


def test_the_default_loss_on_one_output_is_refused_naming_reference_loss():
    setup = _logistic()
    del setup["loss_fn"]
    reference = _binary_reference(setup["params"])
    columns = {"reference_x": setup["x"].T, "reference_target": setup["target"].T}
    refused(
        lambda: gp.compare_function(**setup, reference=reference, **columns),
        "reference_loss",
        "BCELoss",
    )
    report = gp.compare_function(
        **setup, reference=reference, **columns, reference_loss=nn.BCELoss()
    )
    assert report.ok, report.summary()


def test_compare_refuses_a_softmax_over_one_output():
    model, reference = dense_net(width=1)
    refused(
        lambda: gp.compare(model, reference, X, np.zeros(5, int)), "ours_loss", "reference_loss"
    )


class _NanSqrt(nn.Module):
    """A reference whose output is right but whose gradient is NaN (sqrt at 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        z = self.fc(x)
        return z + 0 * torch.sqrt(z - z)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (
            lambda: gp.compare(
                *dense_net(), X, Y, reference_loss=lambda o, y: nn.functional.cross_entropy(
                    o, torch.as_tensor(y)) * float("nan")
            ),
            "reference loss is nan",
        ),
        (
            lambda: gp.compare(dense_net()[0], _NanSqrt(), X, Y, layer_map={"fc": "fc"}),
            "reference's gradient of fc's weight is not finite",
        ),
        (
            lambda: gp.compare_function(
                **{**_function_setup(), "reference_loss": lambda o, y: o.sum() * float("inf")}
            ),
            "reference loss is nan",
        ),
    ],
    ids=["loss", "gradient", "function loss"],
)  # fmt: skip
def test_a_non_finite_reference_is_refused_not_blamed_on_ours(call, words):
    refused(call, words.replace(" is nan", ""), "cannot judge ours")


def _training_net():
    model = Sequential(
        ("fc1", Linear(4, 5, rng=np.random.default_rng(1))),
        ("act", Tanh()),
        ("fc2", Linear(5, 3, rng=np.random.default_rng(2))),
    )
    return model, mirror(model)


def test_an_optimizer_bound_to_another_model_is_refused():
    model, reference = _training_net()
    other, other_reference = _training_net()
    batches = [(X, Y)] * 2
    refused(
        lambda: gp.compare_training(
            model, reference, batches, ours_optimizer=SGD(other, lr=0.1),
            reference_optimizer=torch.optim.SGD(reference.parameters(), lr=0.1),
        ),
        "ours_optimizer updates none of the model's parameters", "lambda model",
    )  # fmt: skip
    refused(
        lambda: gp.compare_training(
            model, reference, batches, ours_optimizer=SGD(model, lr=0.1),
            reference_optimizer=torch.optim.SGD(other_reference.parameters(), lr=0.1),
        ),
        "reference_optimizer updates none of the reference model's parameters", "lambda params",
    )  # fmt: skip
    report = gp.compare_training(
        model, reference, batches, ours_optimizer=SGD(model, lr=0.1),
        reference_optimizer=torch.optim.SGD(reference.parameters(), lr=0.1),
    )  # fmt: skip
    assert report.ok, report.summary()


# --- 3. what used to leak a traceback -----------------------------------------------------


class _IntOutput(nn.Sequential):
    def forward(self, x):
        return super().forward(x).long()


class _Detached(nn.Sequential):
    def forward(self, x):
        return super().forward(x).detach()


class _Exits(nn.Sequential):
    def forward(self, x):
        raise SystemExit(3)


def _with_params(params=None, grads=None):
    layer = Dense(np.ones((3, 4)), np.ones(3))
    return [("fc", wrapped(layer, params=params, grads=grads or ["dw", "db"]))]


def _train(**options):
    model, reference = _training_net()
    return gp.compare_training(model, reference, [(X, Y)], **options)


LEAKS = [
    ("int output", lambda: gp.compare(dense_net()[0], _IntOutput(nn.Linear(4, 3)), X, Y),
     ("reference's output is int64",)),
    ("detached output", lambda: gp.compare(dense_net()[0], _Detached(nn.Linear(4, 3)), X, Y),
     ("reference's output is detached",)),
    ("function detached", lambda: gp.compare_function(
        **{**_function_setup(), "reference": _Detached(nn.Linear(4, 3)).double(),
           "tap_map": None}), ("reference's output is detached",)),
    ("reference exits", lambda: gp.compare(dense_net()[0], _Exits(nn.Linear(4, 3)), X, Y),
     ("SystemExit",)),
    ("params one name", lambda: gp.compare(
        [("fc", wrapped(Dense(np.ones((3, 4)), np.ones(3)), params="w", grads="dw"))],
        dense_net()[1], X, Y), ("params='w'", "not a dict", "params=['W', 'b']")),
    ("params gives a list", lambda: gp.compare(
        _with_params(params=lambda o: [o.w, o.b]), dense_net()[1], X, Y),
     ("params=<lambda> gives a list",)),
    ("params raises", lambda: gp.compare(
        _with_params(params=lambda o: o.missing), dense_net()[1], X, Y),
     ("params=<lambda> raised AttributeError",)),
    ("int keys", lambda: gp.compare(
        _with_params(params=lambda o: {0: o.w, 1: o.b}, grads=lambda o: {0: o.dw, 1: o.db}),
        dense_net()[1], X, Y), ("layer 'fc'", "keyed 0", "string keys")),
    ("validation width", lambda: _train(validation=(np.zeros((3, 7)), np.zeros(3, int))),
     ("validation x has 7 features", "fc1 takes 4")),
    ("validation classes", lambda: _train(validation=(np.zeros((3, 4)), np.array([0, 1, 7]))),
     ("validation classes", "class 7")),
    ("factory raises", lambda: _train(
        ours_optimizer=lambda model: SGD(model, lr=float("nan")),
        reference_optimizer=lambda params: torch.optim.SGD(params, lr=0.1)),
     ("ours_optimizer(model) raised ValueError", "lr must be positive")),
    ("reference factory raises", lambda: _train(
        ours_optimizer=lambda model: SGD(model, lr=0.1),
        reference_optimizer=lambda params: torch.optim.SGD(params, lr=-1)),
     ("reference_optimizer(params) raised",)),
]  # fmt: skip


@pytest.mark.parametrize(("call", "names"), [c[1:] for c in LEAKS], ids=[c[0] for c in LEAKS])
def test_what_leaked_a_traceback_is_refused_in_one_line(call, names):
    refused(call, *names)


class _GradText(Dense):
    def bprop(self, g):
        grad_in = super().bprop(g)
        self.dw = "oops"
        return grad_in


class _Exit(Dense):
    def fprop(self, x):
        raise SystemExit(5)


class _LossBackwardNone(SoftmaxCrossEntropy):
    def backward(self):
        return None


@pytest.mark.parametrize(
    ("cls", "loss", "layer", "quantity", "words"),
    [
        (_GradText, None, "fc", "grad:w", "grads['w'] is a str"),
        (_Exit, None, "fc", "output", "forward raised SystemExit: 5"),
        (Dense, _LossBackwardNone, "loss", "grad_input", "backward value (dL/dlogits) is None"),
    ],
    ids=["gradient is text", "layer exits", "loss backward None"],
)
def test_a_misbehaving_layer_is_a_finding_in_compare_and_lint(cls, loss, layer, quantity, words):
    model, reference = dense_net(cls)
    losses = {} if loss is None else {"ours_loss": loss(), "reference_loss": nn.CrossEntropyLoss()}
    report = quietly(lambda: gp.compare(model, reference, X, Y, **losses))
    only_finding(report, layer, quantity, words)
    lint = {} if loss is None else {"ours_loss": loss()}
    findings = gp.lint(model, X, Y, **lint)
    assert [(f.layer, f.quantity, f.diagnosis) for f in findings] == [(layer, quantity, "raised")]


def test_a_function_that_exits_is_a_finding():
    setup = _function_setup()

    def exits(x, y):
        raise SystemExit(2)

    report = gp.compare_function(**{**setup, "grads": exits, "tap_map": None})
    only_finding(report, "exits", "call", "SystemExit")


def test_a_text_gradient_on_the_command_line_is_a_divergence_not_an_internal_error(
    tmp_path, capsys
):
    (tmp_path / "text_grad.py").write_text(
        textwrap.dedent("""
        import numpy as np
        import torch
        from gradparity.ours import Linear, Sequential

        class TextGrad(Linear):
            def backward(self, grad_out):
                grad_in = super().backward(grad_out)
                self.grads["W"] = "oops"
                return grad_in

        def ours():
            return {"model": Sequential(("fc", TextGrad(4, 3, rng=np.random.default_rng(0))))}

        def reference():
            return torch.nn.Sequential(torch.nn.Linear(4, 3)).double()
    """)
    )
    spec = str(tmp_path / "text_grad.py")
    argv = ["check", "--ours", f"{spec}:ours", "--reference", f"{spec}:reference"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    assert "grads['W'] is a str" in capsys.readouterr().out


# --- 4. refusals that name the thing to fix -----------------------------------------------

MESSAGES = [
    ("ragged x", lambda: gp.compare(*dense_net(), [[1, 2, 3, 4], [1, 2, 3]], [0, 1]),
     ("x is ragged",)),
    ("3-D x", lambda: gp.compare(*dense_net(), X[:, None, :], Y),
     ("output has shape (5, 1, 3)", "x of shape (N, features)")),
    ("uint64 class", lambda: gp.compare(
        *dense_net(), X, np.array([0, 1, 2**64 - 1, 1, 0], dtype=np.uint64)),
     ("class 18446744073709551615",)),
    ("wrong width", lambda: gp.compare(*dense_net(), np.hstack([X, X[:, :1]]), Y),
     ("first layer fc (reference module 0) takes 4",)),
    ("loss vector", lambda: gp.compare(*dense_net(), X, Y, reference_loss=lambda o, y: o.sum(1)),
     ("scalar tensor that requires grad", "shape (5,)")),
    ("loss float", lambda: gp.compare(*dense_net(), X, Y, reference_loss=lambda o, y: 1.0),
     ("scalar tensor that requires grad", "got float")),
    ("loss None", lambda: gp.compare(*dense_net(), X, Y, reference_loss=lambda o, y: None),
     ("scalar tensor that requires grad", "got NoneType")),
    ("loss detached", lambda: gp.compare(
        *dense_net(), X, Y, reference_loss=lambda o, y: o.sum().detach()),
     ("scalar tensor that requires grad", "detached")),
    ("loss_fn arity", lambda: gp.compare_function(
        **{**_function_setup(), "loss_fn": lambda p, x: 1.0}),
     ("loss_fn is called as loss_fn(params, x, target), but loss_fn(p, x)",)),
]  # fmt: skip


@pytest.mark.parametrize(("call", "names"), [c[1:] for c in MESSAGES], ids=[c[0] for c in MESSAGES])
def test_a_refusal_names_what_to_fix(call, names):
    message = refused(call, *names)
    assert "inhomogeneous" not in message and "Expected target size" not in message


class _Narrow(Dense):
    def fprop(self, x):
        return super().fprop(x)[:, :2]


def test_lint_on_a_layer_with_too_few_outputs_names_that_layer():
    refused(lambda: gp.lint(dense_net(_Narrow)[0], X, Y), "class 2", "the last layer 'fc'")


# --- 5. smaller holes -----------------------------------------------------------------------


@pytest.mark.parametrize("forward", [None, 123])
def test_wrap_refuses_a_forward_that_is_neither_a_name_nor_callable(forward):
    layer = Dense(np.ones((3, 4)), np.ones(3))
    refused(lambda: gp.wrap(layer, forward=forward, backward="bprop"), "forward=")


class _TorchOutput(Dense):
    def fprop(self, x):
        return torch.as_tensor(super().fprop(x))


def test_a_layer_returning_a_torch_tensor_is_read_quietly():
    assert quietly(lambda: gp.compare(*dense_net(_TorchOutput), X, Y)).ok
    assert quietly(lambda: gp.lint(dense_net(_TorchOutput)[0], X, Y)) == []


def test_a_batch_size_larger_than_x_is_refused():
    refused(lambda: gp.compare_function(**_function_setup(), batch_size=1000), "batch_size=1000")


class _NoWeightGradient(Dense):
    def bprop(self, g):
        self.db = g.sum(0)
        return g @ self.w


def test_lint_reports_a_gradient_never_set():
    (found,) = gp.lint(dense_net(_NoWeightGradient)[0], X, Y)
    assert (found.quantity, found.diagnosis) == ("grad:w", "unexplained")
    assert "no gradient for 'w'" in found.message


def test_a_refusal_leaves_the_user_objects_unchanged():
    model, reference = _training_net()
    before = copy.deepcopy([(n, dict(layer.params)) for n, layer in model.named_layers()])
    state = copy.deepcopy(reference.state_dict())
    refused(
        lambda: gp.compare_training(
            model, reference, [(X, Y)], validation=(np.zeros((3, 4)), np.array([0, 1, 7]))
        )
    )
    for (_, params), (_, layer) in zip(before, model.named_layers()):
        assert all(np.array_equal(params[k], layer.params[k]) for k in params)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in state.items())
