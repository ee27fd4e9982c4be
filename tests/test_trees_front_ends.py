"""Trees in every front end (issue 15, item 2): the same nested model gives the same dotted
root cause with a torch twin, with the autodiff reference (each layer, inside a container too,
judged by its own forward) and in ``compare_training``; a bare ``param_map`` key keeps naming a
top-level layer's parameter, and one that could mean several names them dotted."""

from __future__ import annotations

import numpy as np
import pytest
from test_trees import _unrolled

import gradparity as gp
from gradparity.corpus.recurrent_bugs import ResidualSkipGradDropped, residual_network
from gradparity.ours import Linear, Sequential, Tanh, zoo
from gradparity.ours.recurrent import Residual
from gradparity.pairing.tree import descendants
from gradparity.reference import mirror
from gradparity.sides.child_records import ours_calls

CHILDREN = ["norm", "fc1", "act", "fc2"]


class ScaledWeightGrad(Linear):
    """dL/dW twice what it should be: a bug inside a residual block."""

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_in = super().backward(grad_out)
        self.grads["W"] = 2 * self.grads["W"]
        return grad_in


def _resmlp(buggy: bool):
    """zoo's resmlp (its twin mirrored before any bug), x (5, 6), target (5,); ``buggy``:
    block1.fc1's weight gradient doubled."""
    model = zoo.resmlp(n_features=6, n_classes=3, width=4, seed=0)
    reference = mirror(model)
    if buggy:
        block = model["block1"].block
        wrong = ScaledWeightGrad(4, 8)
        wrong.params.update(block["fc1"].params)
        layers = [(n, wrong if n == "fc1" else layer) for n, layer in block.named_layers()]
        model = Sequential(
            *[(n, Residual(Sequential(*layers)) if n == "block1" else layer)
              for n, layer in model.named_layers()]
        )  # fmt: skip
    rng = np.random.default_rng(0)
    return model, reference, rng.standard_normal((5, 6)), rng.integers(0, 3, size=5)


def _found(report) -> list[tuple[str, str, str]]:
    return [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes]


def _rows(report, layer: str) -> dict[str, str]:
    table = report.table
    rows = table[table["layer"] == layer]
    return dict(zip(rows["quantity"], rows["status"]))


def _batches(n: int = 2):
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((5, 6)), rng.integers(0, 3, size=5)) for _ in range(n)]


# --- the units ------------------------------------------------------------------------------


def test_descendants_lists_every_layer_inside_containers_in_pre_order():
    model, *_ = _resmlp(buggy=False)
    paths = [".".join(path) for path, _ in descendants(list(model.named_layers()))]
    assert paths == [f"block{b}.{c}" for b in (1, 2) for c in CHILDREN]


def test_a_container_holding_itself_is_not_entered_again():
    class Loop:
        def __init__(self) -> None:
            self.layers = [("me", self), ("fc", Linear(2, 2))]

    assert [".".join(p) for p, _ in descendants([("loop", Loop())])] == ["loop.me", "loop.fc"]


def test_ours_calls_names_each_call_of_a_child_in_the_order_they_start():
    model, _, x, _ = _resmlp(buggy=False)
    layers = list(model.named_layers())
    calls = ours_calls(layers, x)
    assert calls == [(f"block{b}.{c}", 0) for b in (1, 2) for c in CHILDREN]
    assert model["block1"].block["fc1"].forward.__self__ is model["block1"].block["fc1"]


# --- the autodiff reference -----------------------------------------------------------------


def test_autodiff_blames_the_layer_inside_the_block_and_the_block_inherits():
    model, _, x, target = _resmlp(buggy=True)
    report = gp.compare(model, "autodiff", x, target)
    assert _found(report) == [("block1.fc1", "grad:W", "scaled")]
    assert report.root_causes[0].detail["factor"] == pytest.approx(2.0)
    assert _rows(report, "block1.fc1") == {
        "grad_input": "ok", "grad:W": "root_cause", "grad:b": "ok",
    }  # fmt: skip
    # The block keeps its dL/dx; its children's parameters are theirs alone.
    assert _rows(report, "block1") == {"grad_input": "ok"}
    assert report.root_causes[0].source is not None  # the child's own backward


def test_autodiff_blames_a_dropped_skip_path_on_the_residual_itself():
    model, loss, x, target = residual_network(0, residual=ResidualSkipGradDropped)
    report = gp.compare(model, "autodiff", x, target, ours_loss=loss)
    assert _found(report) == [("res", "grad_input", "skip_path_missing")]
    for child in ("res.fc1", "res.act", "res.fc2"):
        assert set(_rows(report, child).values()) == {"ok"}


def test_a_correct_resmlp_has_no_finding_via_autodiff_at_every_boundary():
    model, _, x, target = _resmlp(buggy=False)
    report = gp.compare(model, "autodiff", x, target)
    assert report.ok and not report.root_causes
    assert {f"block{b}.{c}" for b in (1, 2) for c in CHILDREN} <= set(report.table["layer"])


def test_the_same_nested_bug_has_the_same_root_cause_against_a_twin_and_autodiff():
    model, reference, x, target = _resmlp(buggy=True)
    assert _found(gp.compare(model, reference, x, target)) == _found(
        gp.compare(model, "autodiff", x, target)
    )


def test_autodiff_judges_a_cell_called_at_every_step_call_by_call():
    ours, _, x, target = _unrolled(scale=0.5)  # the cell's backward halves dL/dx
    report = gp.compare(ours, "autodiff", x, target)
    assert set(_found(report)) == {(f"rnn.cell@{k}", "grad_input", "scaled") for k in range(3)}
    assert set(_rows(report, "rnn.fc@1").values()) == {"ok"}
    assert _rows(report, "rnn")["grad:fc.W"] == "inherited"  # shared weights: the container's


# --- compare_training -----------------------------------------------------------------------


def test_training_localises_a_bug_inside_a_block_to_the_dotted_layer():
    model, reference, *_ = _resmlp(buggy=True)
    report = gp.compare_training(model, reference, _batches())
    assert not report.ok
    assert report.first_divergent_step == 1
    assert _found(report) == [("block1.fc1", "grad:W", "scaled")]
    assert report.root_causes[0].source["file"].endswith("test_trees_front_ends.py")


def test_a_container_holding_things_other_than_layers_is_checked_whole_via_autodiff():
    class Holder(Linear):
        layers = (("shape", (3, 3)),)  # a "layers" tuple that holds no layer

    rng = np.random.default_rng(4)
    model = [("fc", Holder(3, 3, rng=rng))]
    report = gp.compare(model, "autodiff", rng.standard_normal((4, 3)), rng.integers(0, 3, 4))
    assert report.ok and set(report.table["layer"]) == {"fc", "loss"}


def test_a_correct_resmlp_trains_with_no_finding():
    model, reference, *_ = _resmlp(buggy=False)
    report = gp.compare_training(model, reference, _batches())
    assert report.ok and not report.root_causes


# --- param_map in a tree --------------------------------------------------------------------


def _one_top_level_w():
    """fc0 (the one top-level layer with a "W"), then a residual block with its own fc1.W."""
    rng = np.random.default_rng(2)
    block = Sequential(("fc1", Linear(4, 4, rng=rng)), ("act", Tanh()))
    model = Sequential(("fc0", Linear(3, 4, rng=rng)), ("res", Residual(block)))
    return model, mirror(model), rng.standard_normal((5, 3)), rng.integers(0, 4, size=5)


def test_a_bare_param_map_key_still_names_the_one_top_level_layer_having_it():
    model, reference, x, target = _one_top_level_w()
    report = gp.compare(model, reference, x, target, param_map={"W": "weight"})
    assert report.ok
    assert "fc0: W (3, 4) <-> weight (4, 3): transpose (shape)" in report.conversions
    assert set(_rows(report, "res.fc1")) >= {"grad:W", "grad:b"}


def test_a_dotted_param_map_key_reaches_a_layer_inside_a_block():
    model, reference, x, target = _one_top_level_w()
    for value in ("weight", "fc1.weight", "res.fc1.weight"):
        report = gp.compare(model, reference, x, target, param_map={"res.fc1.W": value})
        assert report.ok, value


def test_an_ambiguous_bare_key_names_every_dotted_parameter_it_could_mean():
    model, reference, x, target = _resmlp(buggy=False)
    with pytest.raises(gp.InputError) as raised:
        gp.compare(model, reference, x, target, param_map={"W": "weight"})
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("param_map key 'W' is ambiguous: layers [fc_in, fc] all have it")
    for name in ("fc_in.W", "fc.W", "block1.fc1.W", "block1.fc2.W", "block2.fc2.W"):
        assert name in message


def test_a_bare_key_only_layers_inside_blocks_have_is_refused_with_their_dotted_names():
    model, *_ = residual_network(0)
    inner = Sequential(("res", model["res"]))
    rng = np.random.default_rng(3)
    x, target = rng.standard_normal((5, 6)), rng.integers(0, 6, size=5)
    with pytest.raises(gp.InputError, match=r"could mean \[res\.fc1\.W, res\.fc2\.W\]"):
        gp.compare(inner, mirror(inner), x, target, param_map={"W": "weight"})
