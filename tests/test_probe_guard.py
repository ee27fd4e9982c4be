"""Evidence never ends a run: an error in a probe becomes a note on the row it was examining
and in the report's notes, and the step goes on with the next row (``engine.guard``); probes'
fresh copies of a layer (``sides.fresh``)."""

from __future__ import annotations

import copy
import weakref

import numpy as np
import torch

from gradparity.core.row import Row
from gradparity.core.tolerance import tolerance_for
from gradparity.engine import Context, Plan, run
from gradparity.engine.guard import step_name
from gradparity.sides.fresh import StateSnapshot, reaches_back, working_copy


def _plan(*evidence) -> Plan:
    def pair(captures):
        return [Row("isolate", name, "Dense", "grad_input", (2,), (2,)) for name in "abc"]

    return Plan(
        name="guarded", dtype="float64", tolerance=tolerance_for("float64"), seed=0,
        batch_size=2, rng=np.random.default_rng(0), sides=[], pair=pair, evidence=evidence,
    )  # fmt: skip


class TouchyProbe:
    """Marks each row it examines; raises on row "b"."""

    def __call__(self, ctx: Context) -> None:
        for row in ctx.each_probed(ctx.rows):
            if row.layer == "b":
                raise TypeError("unsupported operand type(s) for *: 'NoneType' and 'float'")
            row.detail["touched"] = True


def test_an_error_on_one_row_is_noted_there_and_the_next_rows_still_get_evidence():
    report = run(_plan(TouchyProbe()))
    a, b, c = report.rows
    assert a.detail["touched"] and c.detail["touched"] and "touched" not in b.detail
    assert b.detail["probe_errors"] == [
        {
            "probe": "touchy probe",
            "error": "TypeError: unsupported operand type(s) for *: 'NoneType' and 'float'",
        }
    ]
    (note,) = report.notes
    assert note.startswith("the touchy probe raised TypeError") and "on b grad_input" in note


def test_an_error_outside_any_row_ends_that_step_only():
    def broken_probe(ctx: Context) -> None:
        raise KeyError("probes")

    def later_probe(ctx: Context) -> None:
        ctx.notes.append("later probe ran")

    report = run(_plan(broken_probe, later_probe))
    assert report.notes == [
        "the broken probe raised KeyError: 'probes'; the report is built without that evidence",
        "later probe ran",
    ]
    assert all("probe_errors" not in row.detail for row in report.rows)


def test_step_names_read_as_words():
    assert step_name(TouchyProbe()) == "touchy probe"
    assert step_name(test_step_names_read_as_words) == "test step names read as words"


class Cache:
    """A layer keeping its inputs in a list and its weights in an array."""

    def __init__(self) -> None:
        self.W = np.ones(3)
        self.inputs: list[np.ndarray] = []
        self.extra = {"k": 1}


class Node:
    def __init__(self, outputs: list) -> None:
        self.outputs = [weakref.ref(o) for o in outputs]


def test_a_plain_layer_copy_is_independent_a_graph_copy_is_not():
    assert not reaches_back(copy.deepcopy(Cache()))
    out = Cache()  # any object a graph node points at by weak reference
    holder = Cache()
    holder.node = Node([out])  # type: ignore[attr-defined]
    holder.out = out  # type: ignore[attr-defined]
    assert reaches_back(copy.deepcopy(holder))  # the copy's node points at the original's out
    gone = Node([Cache()])  # its output no longer exists: nothing to be wired to
    assert not reaches_back(copy.deepcopy(gone))


def test_a_snapshot_restores_attributes_containers_and_array_values():
    layer = Cache()
    weights = layer.W
    state = StateSnapshot(layer)
    layer.W -= 0.5  # in place, as an optimiser step inside backward does
    layer.inputs.append(np.zeros(2))
    layer.extra["k"] = 2
    layer.grad = np.ones(2)  # type: ignore[attr-defined]
    state.restore()
    assert layer.W is weights and np.array_equal(layer.W, np.ones(3))
    assert layer.inputs == [] and layer.extra == {"k": 1} and not hasattr(layer, "grad")


def test_working_copy_is_a_copy_when_independent_else_the_original_restored():
    layer = Cache()
    with working_copy(layer) as own:
        assert own is not layer
    linked = Cache()
    linked.me = weakref.ref(linked)  # type: ignore[attr-defined]
    linked.node = Node([linked])  # type: ignore[attr-defined]
    try:
        with working_copy(linked) as own:
            assert own is linked
            own.W[...] = 7.0
            raise RuntimeError("a probe that fails half way")
    except RuntimeError:
        pass
    assert np.array_equal(linked.W, np.ones(3))


class FixedBatchLinear(torch.nn.Module):
    """A torch twin written for one batch size only (it reshapes with a constant), as
    quick twins are: the square-weight probe's guessed 3-example input makes it raise."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4, 4))
        self.bias = torch.nn.Parameter(torch.zeros(4))

    def forward(self, x):
        return (x.reshape(8, 4) @ self.weight.T + self.bias).reshape(8, 4)


def test_a_reference_module_the_layout_probe_cannot_run_still_gives_a_report():
    import gradparity as gp
    from gradparity.ours import Linear

    layer = Linear(4, 4, rng=np.random.default_rng(0))  # square: W's layout is probed
    ref = torch.nn.Sequential()
    ref.add_module("fc", FixedBatchLinear())
    rng = np.random.default_rng(1)
    report = gp.compare([("fc", layer)], ref, rng.standard_normal((8, 4)), rng.integers(0, 4, 8))
    assert report.ok, report.root_causes
    (pairing,) = [c for c in report.conversions if c.startswith("fc: W ")]
    assert "cannot run" in pairing
