"""The one torch recorder, and references whose forward runs one module more than once.

A shared activation (``self.act`` after two Linear layers) or one Linear applied twice faces
one NumPy layer per call: the k-th layer aligned with the module is compared with its call k,
in chain and in isolate mode. Before the recorder kept every call, both layers were compared
with the module's last call: a correct model showed a false shape mismatch.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.ours import Linear, Sequential, Tanh
from gradparity.pairing.align import align_layers, layers_by_module
from gradparity.pairing.layer_params import pair_layer_parameters as pair_parameters
from gradparity.sides.function_run import run_reference
from gradparity.sides.preflight import dry_run
from gradparity.sides.run_torch import run_chain
from gradparity.sides.torch_recorder import TorchRecorder

F64 = torch.float64


# ====================================================================== the recorder


class TwiceTanh(nn.Module):
    """One Tanh run twice: out = tanh(2 * tanh(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(2 * self.act(x))


def test_recorder_keeps_every_call_of_a_module_in_call_order():
    x = torch.tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    w = torch.tensor(np.random.default_rng(1).standard_normal((3, 4)))
    model = TwiceTanh()
    with TorchRecorder({"act": model.act}) as recorder:
        out = model(x)
    (out * w).sum().backward()

    first, second = recorder.of("act")
    assert (first.index, second.index) == (0, 1)
    assert recorder.counts() == {"act": 2}
    h = np.tanh(x.detach().numpy())
    y = np.tanh(2 * h)
    np.testing.assert_allclose(first.input, x.detach().numpy())
    np.testing.assert_allclose(first.output, h)
    np.testing.assert_allclose(second.input, 2 * h)
    np.testing.assert_allclose(second.output, y)
    # dL/d(output) and dL/d(input) of each call, by the chain rule by hand
    g_in_second = w.numpy() * (1 - y**2)
    np.testing.assert_allclose(second.grad_output, w.numpy())
    np.testing.assert_allclose(second.grad_input, g_in_second)
    np.testing.assert_allclose(first.grad_output, 2 * g_in_second)
    np.testing.assert_allclose(first.grad_input, 2 * g_in_second * (1 - h**2))


def test_recorder_copies_only_the_calls_it_keeps_and_counts_all():
    model = TwiceTanh()
    x = torch.ones(2, 3, dtype=F64, requires_grad=True)
    with TorchRecorder({"act": model.act}, keep=lambda name, k: k == 1) as recorder:
        model(x).sum().backward()
    first, second = recorder.of("act")
    assert first.output is None and first.input is None and first.grad_output is None
    assert first.output_shape == (2, 3)  # shapes are known for every call
    assert second.output is not None and second.grad_output is not None


def test_recorder_removes_its_module_hooks_on_leaving():
    model = TwiceTanh()
    with TorchRecorder({"act": model.act}):
        assert model.act._forward_hooks and model.act._forward_pre_hooks
    assert not model.act._forward_hooks and not model.act._forward_pre_hooks


class DoublesInPlace(nn.Module):
    def forward(self, x):
        return x.mul_(2)


def test_an_in_place_module_neither_alters_the_recorded_input_nor_the_callers_tensor():
    module = DoublesInPlace()
    x = torch.ones(2, 2, dtype=F64)
    with TorchRecorder({"m": module}) as recorder:
        out = module(x)
    (call,) = recorder.of("m")
    np.testing.assert_array_equal(call.input, np.ones((2, 2)))
    np.testing.assert_array_equal(call.output, 2 * np.ones((2, 2)))
    np.testing.assert_array_equal(x.numpy(), np.ones((2, 2)))  # fed a clone
    assert out is not x


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


class Pair(nn.Module):
    def forward(self, x):
        return x, x


def test_recorder_notes_an_overflow_and_an_output_that_is_no_tensor():
    exp, pair = Exp(), Pair()
    with TorchRecorder({"exp": exp, "pair": pair}, inputs=False) as recorder:
        exp(torch.tensor([1000.0], dtype=F64))
        exp(torch.tensor([1.0], dtype=F64))
        exp(torch.tensor([np.inf], dtype=F64))
        pair(torch.tensor([1.0], dtype=F64))
    big, small, given = recorder.of("exp")
    assert big.overflowed and not small.overflowed
    assert not given.overflowed  # not finite because its input is not
    assert big.input is None  # inputs=False: no input recorded
    (returned,) = recorder.of("pair")
    assert returned.output_type == "tuple" and not returned.returned_tensor
    assert [c.module for c in recorder.calls] == ["exp", "exp", "exp", "pair"]


# ====================================================================== the models

N_IN, HIDDEN, MID, N_OUT, BATCH = 3, 5, 4, 2, 6


class SharedActivation(nn.Module):
    """One Tanh after two Linear layers: fc3(act(fc2(act(fc1(x)))))."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(N_IN, HIDDEN, dtype=F64)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(HIDDEN, MID, dtype=F64)
        self.fc3 = nn.Linear(MID, N_OUT, dtype=F64)

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class SharedLinear(nn.Module):
    """One square Linear applied twice with its one weight: head(lin(tanh(lin(x))))."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(MID, MID, dtype=F64)
        self.act = nn.Tanh()
        self.head = nn.Linear(MID, N_OUT, dtype=F64)

    def forward(self, x):
        return self.head(self.lin(self.act(self.lin(x))))


class TanhMissingDerivative(Tanh):
    """Backward hands the upstream gradient through: the local derivative is missing."""

    def backward(self, grad_out):
        return grad_out


class TanhDoubled(Tanh):
    """Forward returns 2 tanh(x)."""

    def forward(self, x):
        return 2 * super().forward(x)


class LinearWeightGradDoubled(Linear):
    """dL/dW twice too large."""

    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["W"] = 2 * self.grads["W"]
        return grad_x


def shared_activation_ours(second_act: Tanh | None = None) -> Sequential:
    rng = np.random.default_rng(3)
    return Sequential(
        ("fc1", Linear(N_IN, HIDDEN, rng)),
        ("act1", Tanh()),
        ("fc2", Linear(HIDDEN, MID, rng)),
        ("act2", second_act or Tanh()),
        ("fc3", Linear(MID, N_OUT, rng)),
    )


def shared_linear_ours(second_use: type[Linear] = Linear) -> Sequential:
    rng = np.random.default_rng(4)
    first = Linear(MID, MID, rng)
    second = second_use(MID, MID)
    second.params = {k: v.copy() for k, v in first.params.items()}
    return Sequential(
        ("lin_a", first), ("act", Tanh()), ("lin_b", second), ("head", Linear(MID, N_OUT, rng))
    )


def data(n_in: int = N_IN):
    rng = np.random.default_rng(5)
    return rng.standard_normal((BATCH, n_in)), rng.integers(0, N_OUT, BATCH)


SHARED_ACT_MAP = {"act1": "act", "act2": "act"}
SHARED_LIN_MAP = {"lin_a": "lin", "lin_b": "lin"}


def assert_parity(report) -> None:
    assert report.ok, report.summary()
    assert (report.table["status"] == "ok").all(), report.table.to_string()
    assert set(report.table["mode"]) == {"chain", "isolate"}


def roots(report) -> list[tuple[str, str, str]]:
    return [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes]


# ====================================================================== compare


@pytest.mark.parametrize("layer_map", [SHARED_ACT_MAP, None], ids=["layer_map", "call_order"])
def test_shared_activation_is_in_parity_with_a_layer_per_use(layer_map):
    """With a layer_map, and without one: the leaf modules in the order the forward calls
    them (fc1, act, fc2, act, fc3) align with ours' five layers."""
    report = gp.compare(shared_activation_ours(), SharedActivation(), *data(), layer_map=layer_map)
    assert_parity(report)
    for mode in ("chain", "isolate"):
        rows = report.table[report.table["mode"] == mode]
        assert {"act1", "act2"} <= set(rows["layer"])  # ours' names, one set of rows per use


def test_a_backward_bug_in_the_second_use_is_found_there():
    report = gp.compare(
        shared_activation_ours(TanhMissingDerivative()),
        SharedActivation(),
        *data(),
        layer_map=SHARED_ACT_MAP,
    )
    assert not report.ok
    assert roots(report) == [("act2", "grad_input", "missing_local_derivative")]


def test_a_forward_bug_in_the_second_use_is_found_there():
    report = gp.compare(
        shared_activation_ours(TanhDoubled()), SharedActivation(), *data(), layer_map=None
    )
    assert [(layer, q) for layer, q, _ in roots(report)] == [("act2", "output")]
    assert report.root_causes[0].diagnosis == "scaled"
    assert report.root_causes[0].detail["factor"] == pytest.approx(2.0)
    table = report.table.set_index(["mode", "layer", "quantity"])
    assert table.loc[("chain", "act1", "output"), "status"] == "ok"  # judged by its own call
    assert table.loc[("chain", "act2", "output"), "status"] == "root_cause"


def test_shared_linear_is_in_parity_with_a_layer_per_use():
    report = gp.compare(shared_linear_ours(), SharedLinear(), *data(MID), layer_map=SHARED_LIN_MAP)
    assert_parity(report)
    grads = report.table[report.table["quantity"] == "grad:W"]
    assert set(grads["layer"]) == {"lin_a", "lin_b", "head"}


def test_a_weight_gradient_bug_in_the_second_use_of_a_shared_linear_is_found_there():
    report = gp.compare(
        shared_linear_ours(LinearWeightGradDoubled),
        SharedLinear(),
        *data(MID),
        layer_map=SHARED_LIN_MAP,
    )
    assert roots(report) == [("lin_b", "grad:W", "scaled")]
    assert report.root_causes[0].detail["factor"] == pytest.approx(2.0)


def test_each_use_gets_the_input_and_gradients_of_its_own_call():
    """The reference chain run: act1 and act2 get the inputs of calls 0 and 1; a shared
    Linear's per-use weight gradients are the shares of its calls and add up to the whole."""
    model, (x, target) = SharedLinear(), data(MID)
    pairs = align_layers(list(shared_linear_ours().named_layers()), model, SHARED_LIN_MAP)
    assert [(p.name, p.module_name, p.call) for p in pairs if p.module_name == "lin"] == [
        ("lin_a", "lin", 0),
        ("lin_b", "lin", 1),
    ]
    pair_parameters(pairs, np.random.default_rng(0))
    records = run_chain(model, pairs, nn.CrossEntropyLoss(), x, target, F64)

    xt = torch.tensor(x, requires_grad=True)
    h1 = model.lin(xt)
    h2 = model.lin(model.act(h1))
    loss = nn.CrossEntropyLoss()(model.head(h2), torch.as_tensor(target))
    (whole,) = torch.autograd.grad(loss, [model.lin.weight])
    np.testing.assert_allclose(records["lin_a"].input, x)
    np.testing.assert_allclose(records["lin_a"].output, h1.detach().numpy())
    np.testing.assert_allclose(records["lin_b"].input, torch.tanh(h1).detach().numpy())
    np.testing.assert_allclose(records["lin_b"].output, h2.detach().numpy())
    g_b = records["lin_b"].grad_output
    np.testing.assert_allclose(records["lin_b"].grads["weight"], g_b.T @ records["lin_b"].input)
    np.testing.assert_allclose(
        records["lin_a"].grads["weight"] + records["lin_b"].grads["weight"], whole.numpy()
    )


def test_rows_keep_ours_names_for_models_without_repeated_modules():
    rng = np.random.default_rng(6)
    ours = Sequential(
        ("fc1", Linear(N_IN, HIDDEN, rng)), ("act", Tanh()), ("fc2", Linear(HIDDEN, N_OUT, rng))
    )
    ref = nn.Sequential(
        nn.Linear(N_IN, HIDDEN, dtype=F64), nn.Tanh(), nn.Linear(HIDDEN, N_OUT, dtype=F64)
    )
    report = gp.compare(ours, ref, *data())
    assert_parity(report)
    assert set(report.table["layer"]) == {"fc1", "act", "fc2", "loss"}
    pairs = align_layers(list(ours.named_layers()), ref)
    assert [p.call for p in pairs] == [0, 0, 0]
    assert layers_by_module(pairs) == {"0": ["fc1"], "1": ["act"], "2": ["fc2"]}


# ====================================================================== refusals


def test_a_module_run_twice_against_one_layer_of_ours_is_refused():
    """Ours lacks the second activation: comparing its one layer with either call would be
    wrong, so the comparison is refused in one line naming the module and the fix."""
    rng = np.random.default_rng(7)
    ours = Sequential(
        ("fc1", Linear(N_IN, HIDDEN, rng)),
        ("act", Tanh()),
        ("fc2", Linear(HIDDEN, MID, rng)),
        ("fc3", Linear(MID, N_OUT, rng)),
    )
    with pytest.raises(gp.InputError) as exc:
        gp.compare(ours, SharedActivation(), *data())
    message = str(exc.value)
    assert "\n" not in message
    assert "'act' runs 2 times" in message and "one layer per call" in message


def test_more_layers_than_calls_are_refused():
    layers = list(shared_activation_ours().named_layers())
    ours = [*layers[:4], ("act3", Tanh()), layers[4]]  # one Tanh too many
    layer_map = {**SHARED_ACT_MAP, "act3": "act"}
    with pytest.raises(gp.InputError, match=r"'act' runs 2 times .* layers \[act1, act2, act3\]"):
        gp.compare(ours, SharedActivation(), *data(), layer_map=layer_map)


def test_a_module_that_never_runs_is_refused_in_one_line():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(N_IN, N_OUT, dtype=F64)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.fc(x)

    ours = Sequential(("fc", Linear(N_IN, N_OUT)), ("act", Tanh()))
    with pytest.raises(gp.InputError, match="'act' never runs"):
        gp.compare(ours, Unused(), *data())


def test_uses_of_a_shared_linear_with_different_weights_are_refused():
    ours = shared_linear_ours()
    ours["lin_b"].params["W"] = ours["lin_b"].params["W"] + 0.5
    with pytest.raises(gp.InputError, match=r"lin_a and lin_b .* their W differ \(max abs 0.5\)"):
        gp.compare(ours, SharedLinear(), *data(MID), layer_map=SHARED_LIN_MAP)


# ====================================================================== training, functions


def test_training_with_a_shared_activation_stays_in_parity():
    x, target = data()
    batches = [(x, target), (x[::-1].copy(), target[::-1].copy())]
    report = gp.compare_training(
        shared_activation_ours(), SharedActivation(), batches, layer_map=SHARED_ACT_MAP
    )
    assert report.ok, report.summary()


def test_training_a_shared_linear_against_separate_layers_is_refused():
    with pytest.raises(gp.InputError, match=r"\[lin_a, lin_b\] face reference module 'lin'"):
        gp.compare_training(
            shared_linear_ours(), SharedLinear(), [data(MID)], layer_map=SHARED_LIN_MAP
        )


def test_function_taps_read_the_call_they_name():
    model = copy.deepcopy(SharedActivation())
    x, target = data()
    specs = {
        "h1": ("output", "act", 0),
        "h2": ("output", "act", 1),
        "d2": ("grad_output", "act", 1),
    }
    run = run_reference(model, x, target, nn.CrossEntropyLoss(), specs, F64)

    xt = torch.tensor(x)
    h1 = torch.tanh(model.fc1(xt))
    h2 = torch.tanh(model.fc2(h1))
    h2.retain_grad()
    nn.CrossEntropyLoss()(model.fc3(h2), torch.as_tensor(target)).backward()
    np.testing.assert_allclose(run.taps["h1"], h1.detach().numpy())
    np.testing.assert_allclose(run.taps["h2"], h2.detach().numpy())
    np.testing.assert_allclose(run.taps["d2"], h2.grad.numpy())
    assert run.calls == {"act": 2}
    assert not model.act._forward_hooks  # the recorder left no hook behind


class WidensBeforeTheSecondCall(nn.Module):
    """A broken reference: its one Linear's second call gets one feature too many."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(MID, MID, dtype=F64)

    def forward(self, x):
        h = self.lin(x)
        return self.lin(torch.cat([h, h[:, :1]], dim=1))


@pytest.mark.parametrize(
    ("width", "message"),
    [
        (MID + 1, "x has 5 features but the first layer lin_a (reference module lin) takes 4"),
        (MID, "the reference's layer lin_b (reference module lin) gets 5 features but takes 4"),
    ],
    ids=["first call", "second call"],
)
def test_the_dry_run_names_the_layer_of_the_call_that_failed(width, message):
    x = np.random.default_rng(8).standard_normal((BATCH, width))
    with pytest.raises(gp.InputError) as exc:
        dry_run(WidensBeforeTheSecondCall(), x, F64, names={"lin": ["lin_a", "lin_b"]})
    assert str(exc.value).startswith(message)
