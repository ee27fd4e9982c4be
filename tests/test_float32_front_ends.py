"""float32 judged by measured rounding in ``compare_function`` against a torch reference and in
``compare_training``: per tensor, the reference's own float32-vs-float64 drift (a float64 twin
run on the same inputs, or stepped in lockstep over the same batches), shown beside the
error; correct float32 code passes at input scales 1e-3, 1 and 1e3, seeded bugs keep their
labels. Also ``compare_training(device=, keep_tf32=)`` with CUDA mocked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_device_cuda import SettingsSpy, fake_cuda, tf32_everywhere  # noqa: F401 (fixtures)

import gradparity as gp
from gradparity.corpus.function_bugs import FUNCTION_BUGS, forward_backward, function_setup
from gradparity.corpus.layer_bugs import WeightGradScaled, base_network
from gradparity.corpus.training_bugs import SGDWrongLR
from gradparity.ours import SGD, Sigmoid, Tanh, mlp
from gradparity.reference import mirror
from gradparity.sides.device import TF32_RTOL, tf32_settings

SCALES = (1e-3, 1.0, 1e3)
SEEDS = range(30)


def findings(report) -> set[tuple]:
    return {(f.step, f.layer, f.quantity, f.diagnosis) for f in report.root_causes}


# --- compare_function against a torch reference ------------------------------------------------


def float32_function(bug=None, seed: int = 0, scale: float = 1.0, dtype=np.float32) -> dict:
    """The corpus one-function network with ``bug``, its params and x in ``dtype``."""
    kwargs = function_setup(bug, seed)
    params = {name: value.astype(dtype) for name, value in kwargs["params"].items()}
    name = None if bug is None else bug.name
    accumulator: dict = {}
    kwargs.update(
        params=params,
        x=(kwargs["x"] * scale).astype(dtype),
        grads=lambda x, y: forward_backward(params, x, y, name, accumulator)[1],
        loss_fn=None,
    )
    return kwargs


@pytest.mark.parametrize("scale", SCALES)
def test_correct_float32_function_gives_no_finding_at_any_scale(scale):
    for seed in SEEDS:
        report = gp.compare_function(**float32_function(None, seed, scale), dtype="float32")
        assert report.ok and not report.root_causes, (seed, report.summary())


def test_function_rows_show_the_budget_beside_the_error():
    report = gp.compare_function(**float32_function(), dtype="float32")
    compared = [row for row in report.rows if row.max_abs is not None]
    assert compared
    for row in compared:
        budget = row.detail["float32_budget"]
        assert budget["allowed"] > 0 and row.max_abs <= 2 * budget["allowed"]
    note = next(n for n in report.notes if "run again in float64 on the same inputs" in n)
    assert "grad:W1" in note and "Error of budget" in note


def test_function_budgets_follow_the_references_own_drift_not_a_fixed_rtol():
    # Measured, the budget of each tensor is far below float32's fixed rtol 1e-4 of its scale.
    report = gp.compare_function(**float32_function(), dtype="float32")
    budgets = [row.detail["float32_budget"] for row in report.rows if row.max_abs is not None]
    assert all(b["allowed"] < 1e-4 * b["scale"] for b in budgets if b["scale"] > 0)


FUNCTION_CASES = ["weight_grad_doubled", "transposed_square_weight_grad", "loss_grad_sign",
                  "hidden_activation_derivative", "weight_decay_not_in_loss"]  # fmt: skip


@pytest.mark.parametrize("name", FUNCTION_CASES)
def test_function_bugs_keep_their_float64_labels_in_float32(name):
    bug = next(b for b in FUNCTION_BUGS if b.name == name)
    in64 = gp.compare_function(**float32_function(bug, dtype=np.float64))
    in32 = gp.compare_function(**float32_function(bug), dtype="float32")
    assert not in32.ok
    assert findings(in32) == findings(in64)
    assert any(f.diagnosis == bug.diagnosis for f in in32.root_causes)


# --- compare_training ------------------------------------------------------------------------


def float32_model(seed: int, model=None):
    """``model`` (default a 5-4-3 MLP, tanh or sigmoid by seed) with float32 parameters."""
    model = model or mlp((5, 4, 3), seed=seed, activation=Tanh if seed % 2 else Sigmoid)
    for _, layer in model.named_layers():
        for key in list(layer.params):
            layer.params[key] = layer.params[key].astype(np.float32)
    return model


def batches(seed: int, steps: int, scale: float = 1.0, dtype=np.float32) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [
        ((rng.standard_normal((8, 5)) * scale).astype(dtype), rng.integers(0, 3, 8))
        for _ in range(steps)
    ]


def sgd(weight_decay: float = 0.0, momentum: float = 0.0, cls=SGD) -> dict:
    kw = {"lr": 0.1, "momentum": momentum, "weight_decay": weight_decay}
    return {
        "ours_optimizer": lambda m: cls(m, **kw),
        "reference_optimizer": lambda p: torch.optim.SGD(p, **kw),
    }


@pytest.mark.parametrize("scale", SCALES)
def test_correct_float32_training_gives_no_finding_at_any_scale(scale):
    for seed in SEEDS:
        optimizer = sgd(0.01, 0.9) if seed % 3 == 0 else sgd()
        model = float32_model(seed)
        report = gp.compare_training(
            model, mirror(model), batches(seed, 3, scale), dtype="float32", **optimizer
        )
        assert report.ok and not report.root_causes, (seed, report.summary())


def test_training_budgets_are_measured_per_step_and_shown():
    model = float32_model(1)
    report = gp.compare_training(model, mirror(model), batches(1, 12), dtype="float32")
    kept = [row for row in report.rows if row.max_abs is not None]
    assert {row.step for row in kept} == {1, 12}
    for row in kept:
        budget = row.detail["float32_budget"]
        assert row.max_abs <= 2 * budget["allowed"]
    drift = {row.step: row.detail["float32_budget"]["drift"] for row in kept
             if (row.layer, row.quantity) == ("fc2", "grad:W")}  # fmt: skip
    assert drift[1] != drift[12]  # measured at each step, not one constant
    notes = [n for n in report.notes if "stepped alongside it on the same batches" in n]
    assert [n.split(":")[0] for n in notes] == ["step 1", "step 12"]


TRAINING_CASES = {
    "wrong_learning_rate": (lambda: base_network(0)[0], sgd(cls=SGDWrongLR)),
    "derivative_off_by_a_factor": (lambda: base_network(0, fc1=WeightGradScaled)[0], sgd()),
    "weight_decay_missing": (
        lambda: base_network(0)[0],
        {**sgd(), "reference_optimizer": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01)},
    ),
}


@pytest.mark.parametrize("case", list(TRAINING_CASES))
def test_training_bugs_keep_their_float64_labels_in_float32(case):
    build, optimizer = TRAINING_CASES[case]
    model64 = build()
    in64 = gp.compare_training(model64, mirror(model64), batches(0, 3, dtype=np.float64),
                               **optimizer)  # fmt: skip
    model32 = float32_model(0, build())
    in32 = gp.compare_training(
        model32, mirror(model32), batches(0, 3), dtype="float32", **optimizer
    )
    assert not in32.ok and in32.first_divergent_step == in64.first_divergent_step == 1
    assert findings(in32) == findings(in64)


# --- compare_training on a (mocked) GPU ---------------------------------------------------------


def _names() -> dict[str, str]:
    return {"fc1": "inner.fc1", "act1": "inner.act1", "fc2": "inner.fc2"}


def test_training_on_cuda_runs_with_tf32_off_and_restores_it(fake_cuda, tf32_everywhere):  # noqa: F811
    model = float32_model(1)
    SettingsSpy.seen.clear()
    report = gp.compare_training(
        model, SettingsSpy(mirror(model)), batches(1, 2), dtype="float32", device="cuda",
        layer_map=_names(),
    )  # fmt: skip
    assert report.ok, report.summary()
    assert "cuda" in fake_cuda  # the reference copy went there
    assert SettingsSpy.seen and all(on == [] for on in SettingsSpy.seen)
    assert tf32_settings() == tf32_everywhere
    assert report.meta["device"] == "cuda"
    assert report.meta["tf32"] == "off for the comparison"
    assert any("TF32 was on" in note and "restored" in note for note in report.notes)
    assert report.tolerance.rtol < TF32_RTOL


def test_training_with_kept_tf32_widens_and_says_why(fake_cuda, tf32_everywhere):  # noqa: F811
    model = float32_model(1)
    report = gp.compare_training(
        model, mirror(model), batches(1, 2), dtype="float32", device="cuda", keep_tf32=True
    )
    assert report.tolerance.rtol == TF32_RTOL
    assert report.meta["tf32"].startswith("kept: ")
    assert any("TF32 kept" in note and "widened" in note for note in report.notes)
    assert tf32_settings() == tf32_everywhere


def test_training_tf32_settings_come_back_after_an_error(fake_cuda, tf32_everywhere):  # noqa: F811
    model = float32_model(1)
    bad = [(batches(1, 1)[0][0], np.array([0, 1, 2, 9, 0, 1, 2, 0]))]
    with pytest.raises(gp.InputError):
        gp.compare_training(model, mirror(model), bad, dtype="float32", device="cuda")
    assert tf32_settings() == tf32_everywhere


def test_training_on_the_cpu_adds_nothing_and_an_unknown_device_is_one_line():
    model = float32_model(1)
    report = gp.compare_training(model, mirror(model), batches(1, 1), dtype="float32")
    assert "device" not in report.meta and not any("TF32" in n for n in report.notes)
    with pytest.raises(gp.InputError, match='unknown; pass "cpu" or "cuda"') as info:
        gp.compare_training(model, mirror(model), batches(1, 1), device="gpu")
    assert "\n" not in str(info.value)
