"""compare_training: ours and the reference trained side by side through identical batches.

Steps are numbered from 1; each step compares the loss, every gradient, every parameter update
(as a delta) and the optimiser state. Correct runs stay within tolerance (also for optimisers
that are not ours, and for NumPy code that is not ours); the known training bugs are found at
their step with their diagnosis; a non-finite loss stops the run; bad input gets one line.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.corpus import layer_bugs as bugs
from gradparity.corpus import selftest
from gradparity.corpus.training_bugs import TRAINING_BUGS
from gradparity.ours import MSE, SGD, Adam, Linear, ReLU, Sequential, Sigmoid, mlp
from gradparity.pipelines.training import TrainingReport, compare_training
from gradparity.reference import mirror

HISTORY_COLUMNS = [
    "step",
    "loss_ours",
    "loss_ref",
    "err_loss",
    "err_grad",
    "err_param",
    "err_state",
]
ERR_COLUMNS = ["err_loss", "err_grad", "err_param", "err_state"]


def make_batches(
    n: int, seed: int = 0, batch: int = 8, features: int = 5, classes: int = 3
) -> list[tuple[np.ndarray, np.ndarray]]:
    """n seeded batches: x (batch, features) standard normal, y (batch,) classes."""
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((batch, features)), rng.integers(0, classes, size=batch))
        for _ in range(n)
    ]


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity (not strict JSON)."""

    def refuse(constant: str):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def findings(report) -> list[tuple]:
    return [(f.step, f.layer, f.quantity, f.diagnosis) for f in report.root_causes]


# --- optimiser pairs (ours factory, reference factory) --------------------------------------

OPTIMIZERS: dict[str, tuple[Callable, Callable]] = {
    "sgd": (
        lambda m: SGD(m, lr=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1),
    ),
    "momentum": (
        lambda m: SGD(m, lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    ),
    "momentum_dampening": (
        lambda m: SGD(m, lr=0.1, momentum=0.9, dampening=0.3),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.3),
    ),
    "nesterov": (
        lambda m: SGD(m, lr=0.1, momentum=0.9, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    ),
    "weight_decay": (
        lambda m: SGD(m, lr=0.1, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),
    ),
    "momentum_weight_decay": (
        lambda m: SGD(m, lr=0.05, momentum=0.5, weight_decay=0.05),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=0.05),
    ),
    "adam": (
        lambda m: Adam(m, lr=0.01),
        lambda p: torch.optim.Adam(p, lr=0.01),
    ),
    "adam_weight_decay": (
        lambda m: Adam(m, lr=0.01, betas=(0.8, 0.99), weight_decay=0.01),
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.01),
    ),
}


# --- public API -----------------------------------------------------------------------------


def test_compare_training_is_public():
    """The design lists ``gp.compare_training(...)`` next to ``gp.compare``."""
    assert gp.compare_training is compare_training


# --- correct runs ---------------------------------------------------------------------------


@pytest.mark.parametrize("opt", list(OPTIMIZERS), ids=list(OPTIMIZERS))
def test_correct_run_stays_in_parity(opt):
    ours_opt, ref_opt = OPTIMIZERS[opt]
    model = mlp((5, 4, 3))
    report = compare_training(
        model,
        mirror(model),
        make_batches(20),
        ours_optimizer=ours_opt,
        reference_optimizer=ref_opt,
    )
    assert isinstance(report, TrainingReport)
    assert report.ok, report.summary()
    assert report.first_divergent_step is None
    assert report.root_causes == []
    history = report.history
    assert set(HISTORY_COLUMNS) <= set(history.columns)
    assert list(history["step"]) == list(range(1, 21))
    assert len(history) == 20
    assert np.abs(history["loss_ours"] - history["loss_ref"]).max() < 1e-12
    assert (history[ERR_COLUMNS] < 1).all().all()
    assert all(r.status == "ok" for r in report.rows)
    assert report.meta["steps"] == 20


def test_correct_run_compares_the_optimiser_state():
    """With momentum the state (momentum buffers) takes part: one state row per parameter."""
    ours_opt, ref_opt = OPTIMIZERS["momentum"]
    model = mlp((5, 4, 3))
    report = compare_training(
        model,
        mirror(model),
        make_batches(3),
        ours_optimizer=ours_opt,
        reference_optimizer=ref_opt,
    )
    assert report.ok
    quantities = {(r.layer, r.quantity) for r in report.rows if r.step == 1}
    for layer in ("fc1", "fc2"):
        for key in ("W", "b"):
            assert (layer, f"grad:{key}") in quantities
            assert (layer, f"param:{key}") in quantities
            assert (layer, f"state:{key}.momentum_buffer") in quantities
    assert ("loss", "loss") in quantities


def test_default_optimisers_are_plain_sgd_on_both_sides():
    model = mlp((5, 4, 3))
    report = compare_training(model, mirror(model), make_batches(5))
    assert report.ok
    assert report.first_divergent_step is None
    assert report.meta["reference_optimizer"] == "SGD"
    assert "lr=0.1" in report.meta["ours_optimizer"]


def _snapshot_ours(model) -> dict:
    return {
        (name, key): (value.copy(), None if grad is None else grad.copy())
        for name, key, value, grad in model.parameters()
    }


def _snapshot_ref(module: nn.Module) -> dict:
    return {
        name: (p.detach().clone(), None if p.grad is None else p.grad.clone())
        for name, p in module.named_parameters()
    }


def _assert_ours_unchanged(model, before: dict) -> None:
    after = _snapshot_ours(model)
    assert after.keys() == before.keys()
    for key, (value, grad) in before.items():
        np.testing.assert_array_equal(after[key][0], value)
        if grad is None:
            assert after[key][1] is None
        else:
            np.testing.assert_array_equal(after[key][1], grad)


def _assert_ref_unchanged(module: nn.Module, before: dict) -> None:
    after = _snapshot_ref(module)
    assert after.keys() == before.keys()
    for name, (value, grad) in before.items():
        assert torch.equal(after[name][0], value)
        assert (after[name][1] is None) == (grad is None)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_optimiser_instances_bound_to_the_given_models(opt):
    """Instances (not factories) bound to the given models work like factories, and neither
    the models nor the optimisers passed in are modified."""
    ours_factory, ref_factory = OPTIMIZERS[opt]
    model = mlp((5, 4, 3))
    reference = mirror(model)
    ours_opt, ref_opt = ours_factory(model), ref_factory(reference.parameters())
    ours_before, ref_before = _snapshot_ours(model), _snapshot_ref(reference)

    report = compare_training(
        model,
        reference,
        make_batches(10),
        ours_optimizer=ours_opt,
        reference_optimizer=ref_opt,
    )

    assert report.ok, report.summary()
    assert report.first_divergent_step is None
    assert len(report.history) == 10
    _assert_ours_unchanged(model, ours_before)
    _assert_ref_unchanged(reference, ref_before)
    assert ours_opt.state == {}
    assert len(ref_opt.state) == 0


def test_ours_optimiser_instance_with_reference_factory():
    model = mlp((5, 4, 3))
    reference = mirror(model)
    ours_opt = SGD(model, lr=0.1, momentum=0.9)
    ours_before, ref_before = _snapshot_ours(model), _snapshot_ref(reference)
    report = compare_training(
        model,
        reference,
        make_batches(10),
        ours_optimizer=ours_opt,
        reference_optimizer=OPTIMIZERS["momentum"][1],
    )
    assert report.ok, report.summary()
    _assert_ours_unchanged(model, ours_before)
    _assert_ref_unchanged(reference, ref_before)
    assert ours_opt.state == {}


def test_factories_leave_the_given_models_alone():
    model = mlp((5, 4, 3))
    reference = mirror(model)
    ours_before, ref_before = _snapshot_ours(model), _snapshot_ref(reference)
    ours_opt, ref_opt = OPTIMIZERS["adam"]
    compare_training(
        model, reference, make_batches(5), ours_optimizer=ours_opt, reference_optimizer=ref_opt
    )
    _assert_ours_unchanged(model, ours_before)
    _assert_ref_unchanged(reference, ref_before)
    assert all(layer.grads == {} for _, layer in model.named_layers())


def test_steps_caps_an_endless_stream():
    model = mlp((5, 4, 3))
    stream = itertools.cycle(make_batches(3))
    report = compare_training(model, mirror(model), stream, steps=7)
    assert report.ok
    assert list(report.history["step"]) == list(range(1, 8))


def test_steps_beyond_the_data_runs_what_there_is():
    model = mlp((5, 4, 3))
    report = compare_training(model, mirror(model), make_batches(4), steps=50)
    assert list(report.history["step"]) == [1, 2, 3, 4]


def test_validation_is_scored_into_history():
    model = mlp((5, 4, 3))
    x_val, y_val = make_batches(1, seed=9, batch=40)[0]
    report = compare_training(
        model, mirror(model), make_batches(10), validation=(x_val, y_val), eval_every=5
    )
    history = report.history
    scored = history.dropna(subset=["val_acc_ours"])
    assert list(scored["step"]) == [1, 5, 10]
    assert (scored["val_acc_ours"] == scored["val_acc_ref"]).all()
    assert scored["val_acc_ours"].between(0, 1).all()


# --- the known training bugs ----------------------------------------------------------------


@pytest.mark.parametrize("bug", TRAINING_BUGS, ids=[b.name for b in TRAINING_BUGS])
def test_training_bug_found_at_its_step(bug):
    result = selftest.run_training_bug(bug)
    assert result.step == bug.step
    assert result.localized, result.found
    assert result.diagnosed, result.found
    assert result.found
    assert all(f["step"] == bug.step for f in result.found), result.found
    hits = [f for f in result.found if f["quantity"].startswith(f"{bug.kind}:")]
    assert any(f["diagnosis"] == bug.diagnosis for f in hits), result.found


@pytest.mark.parametrize("bug", TRAINING_BUGS, ids=[b.name for b in TRAINING_BUGS])
def test_training_bug_report_keeps_first_divergent_and_last_step(bug):
    """The run goes on after the first divergence; rows are kept for step 1, the first
    divergent step and the last step; every finding carries the step."""
    model, ours_opt, ref_opt = bug.build(0)
    report = compare_training(
        model,
        mirror(model),
        selftest.training_batches(0, n=6),
        ours_optimizer=ours_opt,
        reference_optimizer=ref_opt,
    )
    assert not report.ok
    assert report.first_divergent_step == bug.step
    assert list(report.history["step"]) == list(range(1, 7))
    assert {r.step for r in report.rows} == {1, bug.step, 6}
    assert report.root_causes
    assert all(f.step == bug.step for f in report.root_causes)
    # the history shows the divergence: some error is over the tolerance at that step
    row = report.history.set_index("step").loc[bug.step]
    assert max(row[c] for c in ERR_COLUMNS) > 1


def test_backprop_bug_in_training_is_localised_to_its_layer():
    model = bugs.base_network(0, fc1=bugs.WeightGradScaled)[0]
    report = compare_training(model, mirror(model), make_batches(5))
    assert report.first_divergent_step == 1
    assert ("fc1", "grad:W", "scaled") in {
        (f.layer, f.quantity, f.diagnosis) for f in report.root_causes
    }
    assert all(f.layer == "fc1" for f in report.root_causes)
    scaled = next(f for f in report.root_causes if f.diagnosis == "scaled")
    assert scaled.detail["factor"] == pytest.approx(2.0)


# --- optimisers that are not ours -----------------------------------------------------------


class UserSGD:
    """A student's SGD with momentum over an ours Sequential's ``parameters()``: not a subclass
    of ours' optimisers, keeps torch's state names keyed (layer, key). ``bug`` injects one
    realistic mistake."""

    def __init__(
        self,
        model,
        lr: float = 0.1,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        bug: str | None = None,
    ) -> None:
        self.model, self.lr, self.momentum, self.dampening = model, lr, momentum, dampening
        self.weight_decay, self.nesterov, self.bug = weight_decay, nesterov, bug
        self.state: dict = {}

    def zero_grad(self) -> None:
        if self.bug == "no_zero_grad":
            return
        for _, _, _, grad in self.model.parameters():
            if grad is not None:
                grad[...] = 0.0

    def step(self) -> None:
        for name, key, value, grad in self.model.parameters():
            if grad is None:
                continue
            g = grad.copy()
            if self.weight_decay and self.bug != "decay_after_step":
                g = g + self.weight_decay * value
            if self.momentum:
                entry = self.state.setdefault((name, key), {})
                buf = entry.get("momentum_buffer")
                if buf is None:
                    buf = g.copy()
                elif self.bug == "dampening_forgotten":
                    buf = self.momentum * buf + g
                else:
                    buf = self.momentum * buf + (1.0 - self.dampening) * g
                entry["momentum_buffer"] = buf
                if self.nesterov and self.bug != "nesterov_as_buffer":
                    g = g + self.momentum * buf
                else:
                    g = buf
            value -= self.lr * g
            if self.weight_decay and self.bug == "decay_after_step":
                value -= self.lr * self.weight_decay * value


USER_CONFIGS = {
    "plain": {"lr": 0.1},
    "momentum": {"lr": 0.1, "momentum": 0.9},
    "dampening": {"lr": 0.1, "momentum": 0.9, "dampening": 0.5},
    "nesterov": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    "weight_decay": {"lr": 0.1, "weight_decay": 0.1},
}


def _torch_sgd(config: dict) -> Callable:
    return lambda params: torch.optim.SGD(params, **config)


@pytest.mark.parametrize("config", list(USER_CONFIGS), ids=list(USER_CONFIGS))
def test_correct_hand_written_optimiser_is_ok(config):
    kw = USER_CONFIGS[config]
    model = mlp((5, 4, 3))
    report = compare_training(
        model,
        mirror(model),
        make_batches(15),
        ours_optimizer=lambda m: UserSGD(m, **kw),
        reference_optimizer=_torch_sgd(kw),
    )
    assert report.ok, report.summary()
    assert report.first_divergent_step is None


def test_correct_hand_written_optimiser_instance_is_ok_and_untouched():
    model = mlp((5, 4, 3))
    before = _snapshot_ours(model)
    opt = UserSGD(model, lr=0.1, momentum=0.9)
    report = compare_training(
        model,
        mirror(model),
        make_batches(10),
        ours_optimizer=opt,
        reference_optimizer=_torch_sgd(USER_CONFIGS["momentum"]),
    )
    assert report.ok, report.summary()
    _assert_ours_unchanged(model, before)
    assert opt.state == {}


@pytest.mark.parametrize(
    ("bug", "config", "step", "kinds", "diagnosis"),
    [
        # Nesterov applied as buf instead of g + momentum * buf: step 1 moves 1/1.9 as far.
        ("nesterov_as_buffer", "nesterov", 1, {"param"}, "scaled"),
        # buf = momentum * buf + g, forgetting (1 - dampening): the first buffer is g either
        # way, so the buffers (and the updates) part at step 2.
        ("dampening_forgotten", "dampening", 2, {"param", "state"}, None),
        # weight decay applied to the parameter after the step instead of to the gradient.
        ("decay_after_step", "weight_decay", 1, {"param"}, None),
        # a loop that never zeroes: the gradients are the running sum from step 2 on.
        ("no_zero_grad", "momentum", 2, {"grad"}, "accumulated"),
    ],
)
def test_hand_written_optimiser_bug_found_at_its_step(bug, config, step, kinds, diagnosis):
    kw = USER_CONFIGS[config]
    model = mlp((5, 4, 3))
    report = compare_training(
        model,
        mirror(model),
        make_batches(6),
        ours_optimizer=lambda m: UserSGD(m, bug=bug, **kw),
        reference_optimizer=_torch_sgd(kw),
    )
    assert not report.ok
    assert report.first_divergent_step == step
    assert report.root_causes
    assert all(f.step == step for f in report.root_causes)
    found_kinds = {f.quantity.split(":", 1)[0] for f in report.root_causes}
    assert found_kinds == kinds, findings(report)
    if diagnosis is not None:
        assert {f.diagnosis for f in report.root_causes} == {diagnosis}, findings(report)


def test_nesterov_as_buffer_reports_the_factor():
    kw = USER_CONFIGS["nesterov"]
    model = mlp((5, 4, 3))
    report = compare_training(
        model,
        mirror(model),
        make_batches(3),
        ours_optimizer=lambda m: UserSGD(m, bug="nesterov_as_buffer", **kw),
        reference_optimizer=_torch_sgd(kw),
    )
    assert report.root_causes, "the Nesterov bug must be found"  # else the loop checks nothing
    for f in report.root_causes:
        assert f.detail["factor"] == pytest.approx(1 / 1.9, rel=1e-6)
        assert f.quantity.startswith("param:")


def test_optimiser_without_zero_grad_is_refused():
    class StepOnly:
        def __init__(self, model):
            self.model = model

        def step(self):
            pass

    model = mlp((5, 4, 3))
    with pytest.raises(gp.InputError) as info:
        compare_training(
            model,
            mirror(model),
            make_batches(2),
            ours_optimizer=StepOnly,
            reference_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        )
    message = str(info.value)
    assert "\n" not in message
    assert "zero_grad" in message
    assert "ours_optimizer" in message


# --- NumPy code that is not ours ------------------------------------------------------------


class StudentDense:
    """A student's dense layer: weights stored (out, in) like torch, other method names, and
    gradients overwritten (not accumulated) by each backward pass."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        self.weight = rng.uniform(-0.5, 0.5, (n_out, n_in))
        self.bias = rng.uniform(-0.5, 0.5, n_out)
        self.d_weight: np.ndarray | None = None
        self.d_bias: np.ndarray | None = None

    def fprop(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return x @ self.weight.T + self.bias

    def bprop(self, grad: np.ndarray) -> np.ndarray:
        self.d_weight = grad.T @ self.x
        self.d_bias = grad.sum(axis=0)
        return grad @ self.weight


class StudentSGD:
    """The student's update loop over a list of (name, layer) pairs."""

    def __init__(self, layers, lr: float, sign: float = 1.0) -> None:
        self.layers, self.lr, self.sign = layers, lr, sign

    def zero_grad(self) -> None:
        pass  # backward overwrites the gradients

    def step(self) -> None:
        for _, layer in self.layers:
            for key, value in layer.params.items():
                value -= self.sign * self.lr * layer.grads[key]


def _student_network(seed: int = 1):
    rng = np.random.default_rng(seed)

    def dense(n_in, n_out):
        return gp.wrap(
            StudentDense(n_in, n_out, rng),
            forward="fprop",
            backward="bprop",
            params=["weight", "bias"],
            grads=["d_weight", "d_bias"],
        )

    layers = [("fc1", dense(5, 4)), ("act1", Sigmoid()), ("fc2", dense(4, 3))]
    reference = nn.Sequential(
        OrderedDict(fc1=nn.Linear(5, 4), act1=nn.Sigmoid(), fc2=nn.Linear(4, 3))
    ).double()
    return layers, reference


def test_wrapped_student_network_with_hand_written_optimiser_is_ok():
    layers, reference = _student_network()
    weight_before = layers[0][1].obj.weight.copy()
    report = compare_training(
        layers,
        reference,
        make_batches(15),
        ours_optimizer=lambda net: StudentSGD(net, lr=0.1),
        reference_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    assert report.ok, report.summary()
    assert report.first_divergent_step is None
    assert np.abs(report.history["loss_ours"] - report.history["loss_ref"]).max() < 1e-12
    # the student's own objects were not trained
    np.testing.assert_array_equal(layers[0][1].obj.weight, weight_before)
    assert layers[0][1].obj.d_weight is None


def test_wrapped_student_network_ascent_is_found():
    layers, reference = _student_network()
    report = compare_training(
        layers,
        reference,
        make_batches(4),
        ours_optimizer=lambda net: StudentSGD(net, lr=0.1, sign=-1.0),
        reference_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    assert report.first_divergent_step == 1
    assert {f.diagnosis for f in report.root_causes} == {"sign_flipped"}
    assert {f.quantity for f in report.root_causes} == {"param:weight", "param:bias"}


# --- non-finite losses ----------------------------------------------------------------------


class NaNOnThirdCall(Sigmoid):
    """A sigmoid whose third forward pass returns NaN (the harness owns the loop: one forward
    per step, so that is step 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        y = super().forward(x)
        return np.full_like(y, np.nan) if self.calls == 3 else y


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_from_a_layer_stops_the_run_at_that_step(tmp_path):
    rng = np.random.default_rng(0)
    model = Sequential(
        ("fc1", Linear(5, 4, rng=rng)), ("act1", NaNOnThirdCall()), ("fc2", Linear(4, 3, rng=rng))
    )
    report = compare_training(model, mirror(model), make_batches(8))
    assert not report.ok
    assert report.first_divergent_step == 3
    assert [(f.step, f.diagnosis) for f in report.root_causes] == [(3, "nonfinite")]
    message = report.root_causes[0].message
    assert "step 3" in message
    assert "ours" in message
    assert "both sides" not in message
    history = report.history
    assert list(history["step"]) == [1, 2, 3]
    # the steps before are kept, finite and in parity
    assert np.isfinite(history["loss_ours"].iloc[:2]).all()
    assert (history[ERR_COLUMNS].iloc[:2] < 1).all().all()
    assert np.isfinite(history["loss_ref"]).all()
    # the report still serialises as strict JSON
    data = strict_json(report.to_json())
    assert data["first_divergent_step"] == 3
    assert data["history"][-1]["loss_ours"] is None
    report.save(tmp_path)
    strict_json((tmp_path / "report.json").read_text())
    # rows: step 1 and step 3 (first divergent and last); nothing of step 2
    assert {r.step for r in report.rows} == {1, 3}


def _exploding_linear_regression():
    rng = np.random.default_rng(0)
    model = Sequential(("fc1", Linear(5, 3, rng=rng)))
    data = [(rng.standard_normal((8, 5)), rng.standard_normal((8, 3))) for _ in range(200)]
    return model, data, MSE()


def _exploding_relu_classifier():
    model = mlp((5, 16, 3), activation=ReLU)
    return model, make_batches(200), None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(
    "setup",
    [_exploding_linear_regression, _exploding_relu_classifier],
    ids=["mse_linear", "cross_entropy_relu"],
)
def test_huge_learning_rate_on_both_sides_is_nonfinite_not_a_bug(setup):
    """Both sides blow up together: the only finding is the non-finite loss, on both sides,
    at the step where it happens; up to there both sides agree."""
    model, data, loss = setup()
    report = compare_training(
        model,
        mirror(model),
        data,
        ours_loss=loss,
        ours_optimizer=lambda m: SGD(m, lr=1e6),
        reference_optimizer=lambda p: torch.optim.SGD(p, lr=1e6),
    )
    assert findings(report) == [(report.first_divergent_step, "loss", "loss", "nonfinite")]
    step = report.first_divergent_step
    assert step is not None
    assert step < 200
    assert len(report.history) == step
    assert "both sides" in report.root_causes[0].message
    assert f"step {step}" in report.root_causes[0].message
    # the loss did explode before it overflowed
    assert report.history["loss_ref"].iloc[:-1].max() > 1e100


# --- bad input ------------------------------------------------------------------------------


def _labels_out_of_range():
    x = np.random.default_rng(0).standard_normal((8, 5))
    return [(x, np.array([0, 1, 2, 7, 0, 1, 2, 0]))]


def _width_changes_at_step_2():
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((8, 5)), rng.integers(0, 3, 8)),
        (rng.standard_normal((8, 6)), rng.integers(0, 3, 8)),
    ]


def _target_too_short():
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((8, 5)), rng.integers(0, 3, 7))]


def _negative_label():
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((4, 5)), np.array([0, -1, 1, 2]))]


def _empty_generator() -> Iterator:
    yield from ()


BAD_INPUT = {
    "label_out_of_range": (_labels_out_of_range, {}, ["class 7", "3 outputs", "batch 1"]),
    "width_changes_at_step_2": (_width_changes_at_step_2, {}, ["batch 2", "(8, 6)", "5"]),
    "target_length": (_target_too_short, {}, ["target", "7", "8"]),
    "negative_label": (_negative_label, {}, ["-1"]),
    "empty_list": (list, {}, ["no (x, target)"]),
    "empty_generator": (_empty_generator, {}, ["no (x, target)"]),
    "only_ours_optimizer": (
        lambda: make_batches(2),
        {"ours_optimizer": lambda m: SGD(m, lr=0.1)},
        ["reference_optimizer"],
    ),
    "only_reference_optimizer": (
        lambda: make_batches(2),
        {"reference_optimizer": lambda p: torch.optim.SGD(p, lr=0.1)},
        ["ours_optimizer"],
    ),
    "steps_zero": (lambda: make_batches(2), {"steps": 0}, ["steps", "0"]),
    "steps_negative": (lambda: make_batches(2), {"steps": -2}, ["steps", "-2"]),
    "bad_dtype": (lambda: make_batches(2), {"dtype": "float16"}, ["float16"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_gets_a_one_line_error(case):
    data, kwargs, words = BAD_INPUT[case]
    model = mlp((5, 4, 3))
    with pytest.raises(gp.InputError) as info:
        compare_training(model, mirror(model), data(), **kwargs)
    message = str(info.value)
    assert message
    assert "\n" not in message
    for word in words:
        assert word in message, message


# --- float32 --------------------------------------------------------------------------------


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_float32_correct_run_is_ok(opt):
    """100 float32 steps drift from the reference by float32 round-off: not a bug."""
    ours_opt, ref_opt = OPTIMIZERS[opt]
    model = mlp((5, 4, 3))
    report = compare_training(
        model,
        mirror(model),
        make_batches(100),
        ours_optimizer=ours_opt,
        reference_optimizer=ref_opt,
        dtype="float32",
    )
    assert report.ok, report.summary()
    assert report.first_divergent_step is None
    assert report.dtype == "float32"
    assert len(report.history) == 100
    assert (report.history[ERR_COLUMNS] < 1).all().all()


def test_float32_tolerance_follows_the_references_own_drift():
    """A float32 run is judged against the reference's float32-vs-float64 drift, so even an
    rtol far below float32 round-off does not call the round-off a bug."""
    model = mlp((5, 4, 3))
    report = compare_training(model, mirror(model), make_batches(30), dtype="float32", rtol=1e-9)
    assert report.ok, report.summary()


def test_float32_still_finds_a_real_bug_at_step_1():
    model = bugs.base_network(0, fc1=bugs.WeightGradScaled)[0]
    report = compare_training(model, mirror(model), make_batches(100), dtype="float32")
    assert report.first_divergent_step == 1
    assert ("fc1", "grad:W", "scaled") in {
        (f.layer, f.quantity, f.diagnosis) for f in report.root_causes
    }
    assert all(f.step == 1 for f in report.root_causes)


# --- gradient accumulation in ours ----------------------------------------------------------


def test_ours_linear_accumulates_until_zero_grad():
    rng = np.random.default_rng(0)
    layer = Linear(5, 3, rng=rng)
    model = Sequential(("fc", layer))
    x, g = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))

    layer.forward(x)
    layer.backward(g)
    once = {k: v.copy() for k, v in layer.grads.items()}
    np.testing.assert_allclose(once["W"], x.T @ g)
    np.testing.assert_allclose(once["b"], g.sum(axis=0))

    layer.forward(x)
    layer.backward(g)  # no zero_grad: the gradients add up, as in torch
    for key in once:
        np.testing.assert_allclose(layer.grads[key], 2 * once[key])

    opt = SGD(model, lr=0.1)
    arrays = {k: id(v) for k, v in layer.grads.items()}
    opt.zero_grad()
    assert all(np.all(v == 0) for v in layer.grads.values())
    assert {k: id(v) for k, v in layer.grads.items()} == arrays  # zeroed in place
    layer.forward(x)
    layer.backward(g)
    for key in once:
        np.testing.assert_allclose(layer.grads[key], once[key])


# --- report ---------------------------------------------------------------------------------


def test_report_files_and_json(tmp_path):
    bug = next(b for b in TRAINING_BUGS if b.name == "no_zero_grad")
    model, ours_opt, ref_opt = bug.build(0)
    report = compare_training(
        model,
        mirror(model),
        selftest.training_batches(0, n=6),
        ours_optimizer=ours_opt,
        reference_optimizer=ref_opt,
    )
    assert report.first_divergent_step == 2
    assert {r.step for r in report.rows} == {1, 2, 6}
    assert set(report.table["step"]) == {1, 2, 6}

    out = report.save(tmp_path / "run")
    for name in ("training_curves.png", "error_growth.png"):
        png = (out / "plots" / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    for name in ("report.json", "report.md", "report.html", "table.csv"):
        assert (out / name).is_file()

    data = strict_json((out / "report.json").read_text())
    assert data["ok"] is False
    assert data["first_divergent_step"] == 2
    history = data["history"]
    assert isinstance(history, list)
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    for h in history:
        assert set(HISTORY_COLUMNS) <= set(h)
    assert {r["step"] for r in data["rows"]} == {1, 2, 6}
    assert {c["diagnosis"] for c in data["root_causes"]} == {"accumulated"}
    assert all(c["step"] == 2 for c in data["root_causes"])


def test_report_json_of_a_correct_run(tmp_path):
    model = mlp((5, 4, 3))
    report = compare_training(model, mirror(model), make_batches(5))
    assert {r.step for r in report.rows} == {1, 5}
    report.save(tmp_path)
    data = strict_json((tmp_path / "report.json").read_text())
    assert data["ok"] is True
    assert data["first_divergent_step"] is None
    assert len(data["history"]) == 5
    assert (tmp_path / "plots" / "training_curves.png").is_file()
    assert (tmp_path / "plots" / "error_growth.png").is_file()


def test_report_is_deterministic():
    model = mlp((5, 4, 3))
    first = compare_training(model, mirror(model), make_batches(5), seed=3).to_json()
    second = compare_training(
        copy.deepcopy(model), mirror(model), make_batches(5), seed=3
    ).to_json()
    assert first == second


# --- chaos is not a bug ---------------------------------------------------------------------


def test_long_correct_run_stays_within_tolerance(capsys):
    """1000 float64 steps of a 784-300-10 MLP on random data: round-off differences get
    amplified by the dynamics, but a correct implementation stays within tolerance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster here for these small matmuls
    try:
        rng = np.random.default_rng(0)
        stream = (
            (rng.standard_normal((16, 784)), rng.integers(0, 10, size=16)) for _ in range(1000)
        )
        model = mlp((784, 300, 10))
        report = compare_training(model, mirror(model), stream)
    finally:
        torch.set_num_threads(threads)
    assert report.ok, report.summary()
    assert report.first_divergent_step is None
    assert len(report.history) == 1000
    assert report.history["err_param"].max() < 1
    assert (report.history[ERR_COLUMNS] < 1).all().all()
    assert capsys.readouterr().out == ""


def test_a_layer_raising_at_step_1_is_a_finding_not_an_input_error(tmp_path):
    class Boom(Sigmoid):
        def forward(self, x):
            raise RuntimeError("boom")

    model = bugs.base_network(0)[0]
    reference = mirror(model)
    model._layers[1] = ("act1", Boom())
    rng = np.random.default_rng(0)
    report = compare_training(model, reference, [(rng.standard_normal((8, 5)), np.arange(8) % 3)])
    assert report.first_divergent_step == 1
    assert [(f.diagnosis, f.step) for f in report.root_causes] == [("raised", 1)]
    assert "boom" in report.root_causes[0].message
    report.save(tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is False
