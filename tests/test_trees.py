"""Trees, not only chains (issue 15, item 2): ours' containers are compared at every module
boundary under dotted names, the innermost module wrong in isolation is the root cause, and a
module called several times inside a container is compared call by call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.corpus.recurrent_bugs import ResidualSkipGradDropped, residual_network
from gradparity.ours import Linear, Sequential, Tanh, zoo
from gradparity.ours.recurrent import Residual
from gradparity.pairing.tree import children_of, forward_order, inner_root
from gradparity.reference import mirror

CHILDREN = ["norm", "fc1", "act", "fc2"]


def _resmlp(seed: int = 0):
    model = zoo.resmlp(n_features=6, n_classes=3, width=4, seed=seed)
    rng = np.random.default_rng(seed)
    return model, rng.standard_normal((5, 6)), rng.integers(0, 3, size=5)


def _rows(report, mode: str, layer: str) -> dict[str, str]:
    table = report.table
    rows = table[(table["mode"] == mode) & (table["layer"] == layer)]
    return dict(zip(rows["quantity"], rows["status"]))


class ScaledWeightGrad(Linear):
    """dL/dW twice what it should be: a bug inside a residual block."""

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_in = super().backward(grad_out)
        self.grads["W"] = 2 * self.grads["W"]
        return grad_in


# --- the units ------------------------------------------------------------------------------


def test_children_of_reads_named_layers_and_layers_lists():
    block = Sequential(("fc", Linear(2, 2)), ("act", Tanh()))
    assert [n for n, _ in children_of(Residual(block))] == ["fc", "act"]

    class Listed:
        layers = (Linear(2, 2), Tanh())

    assert [n for n, _ in children_of(Listed())] == ["0", "1"]
    assert children_of(Linear(2, 2)) == []


def test_forward_order_puts_a_container_after_its_children():
    names = ["fc_in", "b", "b.x", "b.y", "b.y.z", "b10", "fc"]
    assert [names[i] for i in forward_order(names)] == [
        "fc_in", "b.x", "b.y.z", "b.y", "b", "b10", "fc",
    ]  # fmt: skip
    assert inner_root("b", {"b", "b.y"}) and not inner_root("b", {"b", "b10"})


# --- every boundary -------------------------------------------------------------------------


def test_resmlp_is_compared_at_every_module_boundary_in_both_modes():
    model, x, target = _resmlp()
    report = gp.compare(model, mirror(model), x, target)
    assert report.ok, report.root_causes
    for mode in ("chain", "isolate"):
        for block in ("block1", "block2"):
            # The container: its own output and dL/dx, none of its children's parameters.
            assert _rows(report, mode, block) == {"output": "ok", "grad_input": "ok"}
            assert _rows(report, mode, f"{block}.fc1") == {
                "output": "ok", "grad_input": "ok", "grad:W": "ok", "grad:b": "ok",
            }  # fmt: skip
            assert set(_rows(report, mode, f"{block}.norm")) >= {"grad:gamma", "grad:beta"}
            assert _rows(report, mode, f"{block}.act") == {"output": "ok", "grad_input": "ok"}
    chain = report.table[report.table["mode"] == "chain"]
    outputs = list(chain[chain["quantity"] == "output"]["layer"])
    assert outputs.index("block1.fc2") < outputs.index("block1") < outputs.index("block2.norm")


def test_a_container_whose_reference_children_have_other_names_is_compared_whole():
    model, x, target = _resmlp()
    reference = mirror(model)
    renamed = nn.Sequential(
        *[m if not isinstance(m, nn.Sequential) else type(m)(*m.children()) for m in reference]
    )  # the blocks' children become "0", "1", ...: no name matches ours' "norm", "fc1"
    report = gp.compare(model, renamed, x, target)
    assert report.ok
    assert set(report.table["layer"]) == {"fc_in", "block1", "block2", "fc", "loss"}
    assert "grad:fc1.W" in _rows(report, "isolate", "block1")


# --- the innermost root cause ---------------------------------------------------------------


def test_a_bug_inside_a_block_is_the_child_s_root_cause_and_the_block_inherits():
    model, x, target = _resmlp()
    reference = mirror(model)
    block = model["block1"].block
    buggy = ScaledWeightGrad(4, 8)
    buggy.params.update(block["fc1"].params)
    layers = [(n, buggy if n == "fc1" else layer) for n, layer in block.named_layers()]
    model = Sequential(
        *[(n, Residual(Sequential(*layers)) if n == "block1" else layer)
          for n, layer in model.named_layers()]
    )  # fmt: skip
    report = gp.compare(model, reference, x, target)
    assert not report.ok
    assert [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes] == [
        ("block1.fc1", "grad:W", "scaled")
    ]
    assert report.root_causes[0].detail["factor"] == pytest.approx(2.0)
    for mode in ("chain", "isolate"):
        assert _rows(report, mode, "block1.fc1")["grad:W"] == "root_cause"
        assert "root_cause" not in _rows(report, mode, "block1").values()


def test_a_dropped_skip_path_with_correct_children_is_the_container_s_root_cause():
    model, loss, x, target = residual_network(0, residual=ResidualSkipGradDropped)
    reference = mirror(model)
    report = gp.compare(model, reference, x, target, ours_loss=loss)
    assert [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes] == [
        ("res", "grad_input", "skip_path_missing")
    ]
    for child in ("res.fc1", "res.act", "res.fc2"):
        assert set(_rows(report, "isolate", child).values()) == {"ok"}


# --- a module called several times inside a container ---------------------------------------


class StackedTanh(Tanh):
    """A tanh that may run several times before its backwards: it keeps every forward's output
    on a stack and each backward takes the latest (last in, first out)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale, self.outputs = scale, []

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.outputs.append(np.tanh(x))
        return self.outputs[-1]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return self.scale * grad_out * (1 - self.outputs.pop() ** 2)


class StackedLinear(Linear):
    """A Linear that may run several times before its backwards: each backward takes the
    latest forward's input (last in, first out) and adds its gradient to the total."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.inputs: list[np.ndarray] = []

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.inputs.append(x)
        return super().forward(x)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._x = self.inputs.pop()
        return super().backward(grad_out)


class Unrolled:
    """h <- cell(fc(h)) over ``steps`` steps: one Linear and one cell, each called per step.
    params/grads are fc's (summed over the steps), keyed "fc.<key>" as a Residual keys its
    block's."""

    def __init__(self, fc: StackedLinear, cell: StackedTanh, steps: int) -> None:
        self.fc, self.cell, self.steps = fc, cell, steps

    def named_layers(self):
        yield from [("fc", self.fc), ("cell", self.cell)]

    @property
    def params(self):
        return {f"fc.{k}": v for k, v in self.fc.params.items()}

    @property
    def grads(self):
        return {f"fc.{k}": v for k, v in self.fc.grads.items()}

    def forward(self, x: np.ndarray) -> np.ndarray:
        for _ in range(self.steps):
            x = self.cell.forward(self.fc.forward(x))
        return x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        for _ in range(self.steps):
            grad_out = self.fc.backward(self.cell.backward(grad_out))
        return grad_out


class TorchUnrolled(nn.Module):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.fc, self.cell, self.steps = nn.Linear(3, 3, dtype=torch.float64), nn.Tanh(), steps

    def forward(self, x):
        for _ in range(self.steps):
            x = self.cell(self.fc(x))
        return x


def _unrolled(scale: float = 1.0, steps: int = 3):
    rng = np.random.default_rng(1)
    ours = Sequential(("rnn", Unrolled(StackedLinear(3, 3, rng=rng), StackedTanh(scale), steps)))
    reference = nn.Sequential()
    reference.add_module("rnn", TorchUnrolled(steps))
    return ours, reference, rng.standard_normal((4, 3)), rng.integers(0, 3, size=4)


def test_a_cell_called_at_every_step_is_compared_call_by_call():
    ours, reference, x, target = _unrolled()
    report = gp.compare(ours, reference, x, target)
    assert report.ok, report.root_causes
    for mode in ("chain", "isolate"):
        for k in range(3):
            assert _rows(report, mode, f"rnn.cell@{k}") == {"output": "ok", "grad_input": "ok"}
            assert _rows(report, mode, f"rnn.fc@{k}") == {"output": "ok", "grad_input": "ok"}
        # The shared weights' gradient is the sum over the steps: compared at the container.
        assert _rows(report, mode, "rnn") == {
            "output": "ok", "grad_input": "ok", "grad:fc.W": "ok", "grad:fc.b": "ok",
        }  # fmt: skip
    table = report.table
    chain = table[(table["mode"] == "chain") & (table["quantity"] == "output")]
    assert list(chain["layer"])[:3] == ["rnn.fc@0", "rnn.cell@0", "rnn.fc@1"]


def test_a_wrong_cell_is_blamed_at_each_call_and_the_container_inherits():
    ours, reference, x, target = _unrolled(scale=0.5)
    report = gp.compare(ours, reference, x, target)
    found = {(f.layer, f.quantity, f.diagnosis) for f in report.root_causes}
    assert found == {(f"rnn.cell@{k}", "grad_input", "scaled") for k in range(3)}
    assert "root_cause" not in _rows(report, "isolate", "rnn").values()
