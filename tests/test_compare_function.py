"""compare_function on the textbook network (tests/textbook_network.py): parity, the two
"done when" bugs, taps, layouts, against torch and against central differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from textbook_network import Network, sigmoid
from textbook_setup import (
    HIDDEN_DERIVATIVE,
    SIZES,
    TAP_MAP,
    TRANSPOSED_OUTPUT_WEIGHT,
    mutant,
    quadratic_cost,
    setup,
)

import gradparity as gp


def places(report: gp.Report) -> list[tuple[str, str, str]]:
    return [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes]


def status(report: gp.Report, layer: str, quantity: str) -> str:
    return next(r.status for r in report.rows if (r.layer, r.quantity) == (layer, quantity))


@pytest.mark.parametrize("numeric", [False, True], ids=["torch", "numeric"])
def test_correct_textbook_network_is_at_parity(numeric):
    report = gp.compare_function(**setup(numeric=numeric))
    assert report.ok, report.summary()
    assert len([r for r in report.rows if r.type == "parameter"]) == 6
    if not numeric:
        assert len([r for r in report.rows if r.type == "tap"]) == 9
        assert "b[0] (5, 1) <-> 0.bias (5,): reshape (shape)" in report.conversions
        assert "w[1] (5, 5) <-> 2.weight (5, 5): identity (model convention)" in report.conversions
        assert report.meta["examples_as"] == "columns"


def test_correct_textbook_network_has_no_finding_over_200_seeds():
    for seed in range(200):
        for numeric in (False, True):
            report = gp.compare_function(**setup(seed=seed, numeric=numeric), seed=seed)
            assert report.ok and not report.warnings, (seed, numeric, report.summary())


@pytest.mark.parametrize("numeric", [False, True], ids=["torch", "numeric"])
def test_transposed_square_weight_gradient_is_named_on_that_parameter_only(numeric):
    report = gp.compare_function(**setup(TRANSPOSED_OUTPUT_WEIGHT, numeric=numeric))
    assert places(report) == [("backprop", "grad:w[2]", "transposed")]
    assert "delta @ a.T" in report.root_causes[0].fix  # the column-vector wording
    assert all(r.status == "ok" for r in report.rows if r.quantity != "grad:w[2]")


def test_wrong_hidden_derivative_first_gradient_tap_is_just_below_the_output():
    report = gp.compare_function(**setup(HIDDEN_DERIVATIVE))
    first = report.root_causes[0]
    assert (first.layer, first.quantity) == ("delta[1]", "grad_output")
    assert "delta[0] before it agrees" in first.message
    assert report.first_divergence["backward"] == {"layer": "delta[1]", "quantity": "grad_output"}
    assert report.first_divergence["forward"] is None
    assert [status(report, f"delta[{i}]", "grad_output") for i in range(3)] == [
        "ok", "root_cause", "inherited"
    ]  # fmt: skip
    assert all(status(report, t, "output") == "ok" for t in TAP_MAP if not t.startswith("d"))
    # The tap explains every parameter gradient its delta reaches: one root cause in all.
    assert len(report.root_causes) == 1
    for name in ("w[1]", "b[1]", "w[0]", "b[0]"):
        assert status(report, "backprop", f"grad:{name}") == "inherited"
    assert any(
        n.startswith("deepest diverging parameter(s), closest to the output: b[1], w[1]")
        for n in report.notes
    )
    assert status(report, "backprop", "grad:w[2]") == "ok"


def test_wrong_hidden_derivative_without_reference_names_the_deepest_parameter():
    report = gp.compare_function(**setup(HIDDEN_DERIVATIVE, numeric=True))
    assert report.root_causes[0].quantity == "grad:b[1]"  # params' order within a layer
    # one root cause for the deepest layer (b[1], w[1]); the layer below is possibly inherited
    assert len(report.root_causes) == 1 and report.root_causes[0].detail.get("deepest")
    deepest = report.root_causes[0]
    assert [q["quantity"] for q in deepest.listed("same_place")] == ["grad:w[1]"]
    assert {q["quantity"] for q in deepest.listed("possibly_inherited")} == {
        "grad:w[0]", "grad:b[0]"
    }  # fmt: skip
    assert status(report, "backprop", "grad:w[1]") == "root_cause"
    assert status(report, "backprop", "grad:w[0]") == "inherited"
    assert not report.ok
    assert report.first_divergence["backward"]["quantity"] == "grad:b[1]"
    assert any(n.startswith("unmapped taps (taps are compared only with a reference model)")
               for n in report.notes)  # fmt: skip
    assert not any("tap_map" in n for n in report.notes)
    listed = {q["quantity"] for q in deepest.quantities}
    assert {deepest.quantity} | listed == {"grad:w[1]", "grad:b[1]", "grad:w[0]", "grad:b[0]"}


def test_params_are_left_as_they_were_and_x_is_not_touched():
    kwargs = setup(HIDDEN_DERIVATIVE)
    before = [a.copy() for a in kwargs["params"]["w"] + kwargs["params"]["b"]]
    x_before = kwargs["x"].copy()
    gp.compare_function(**kwargs)
    after = kwargs["params"]["w"] + kwargs["params"]["b"]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert np.array_equal(kwargs["x"], x_before)


def test_an_update_hidden_in_backprop_is_found_and_undone():
    updating = mutant(
        "    return (nabla_b, nabla_w)",
        "    self.weights[0] -= 0.1 * nabla_w[0]\n    return (nabla_b, nabla_w)",
    )
    kwargs = setup(updating)
    before = kwargs["params"]["w"][0].copy()
    report = gp.compare_function(**kwargs)
    assert ("backprop", "grad:w[0]", "mutates_input") in places(report)
    assert np.array_equal(kwargs["params"]["w"][0], before)


def test_a_raising_function_is_a_finding_and_earlier_taps_are_still_compared():
    raising = mutant("sp = sigmoid_prime(z)", "sp = sigmoid_prime(z) @ np.ones((3, 3))")
    report = gp.compare_function(**setup(raising))
    assert places(report)[0] == ("backprop", "call", "raised")
    assert "ValueError" in report.root_causes[0].message
    assert "mutant_backprop" in report.root_causes[0].detail["where"]
    assert status(report, "z[2]", "output") == "ok"
    assert status(report, "delta[0]", "grad_output") == "ok"


def test_unmapped_taps_are_listed_with_shapes(tmp_path):
    tap_map = {"delta[0]": "grad:4", "delta[1]": "grad:2"}
    report = gp.compare_function(**setup(HIDDEN_DERIVATIVE, tap_map=tap_map))
    unmapped = {u["name"]: u["shape"] for u in report.unmapped_taps}
    assert unmapped["z[0]"] == [5, 1] and unmapped["delta[2]"] == [5, 1]
    assert len(unmapped) == 7
    assert any(n.startswith("unmapped taps") and "delta[2] (5, 1)" in n for n in report.notes)
    report.save(tmp_path)
    saved = (tmp_path / "report.json").read_text()
    assert '"unmapped_taps"' in saved and "chain rows" in (tmp_path / "report.md").read_text()
    assert any(p.name.startswith("root_cause_01_delta_1") for p in (tmp_path / "plots").iterdir())


def test_list_params_are_named_by_position_and_tuples_of_lists_by_index():
    net = Network(SIZES)
    kwargs = setup()
    flat = [*net.biases, *net.weights]

    def as_list(x, y):
        nabla_b, nabla_w = net.backprop(x, y)
        return [*nabla_b, *nabla_w]

    report = gp.compare_function(as_list, flat, kwargs["reference"], kwargs["x"],
                                 kwargs["target"], **_ref_options(kwargs))  # fmt: skip
    assert report.ok
    assert {r.quantity for r in report.rows if r.type == "parameter"} == {
        f"grad:p{i}" for i in range(6)
    }
    report = gp.compare_function(net.backprop, (net.biases, net.weights), kwargs["reference"],
                                 kwargs["x"], kwargs["target"], **_ref_options(kwargs))  # fmt: skip
    assert report.ok and "grad:p1[2]" in {r.quantity for r in report.rows}


def _ref_options(kwargs: dict) -> dict:
    keys = ("reference_loss", "reference_x", "reference_target")
    return {k: kwargs[k] for k in keys}


def test_all_square_weights_take_the_layout_the_loss_agrees_with():
    net = Network([3, 3, 3])
    x, y = np.ones((3, 1)) * 0.3, np.eye(3)[[1]].T
    ref = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 3),
                              torch.nn.Sigmoid())  # fmt: skip
    options = {"reference_loss": lambda out, t: 0.5 * ((out - t) ** 2).sum(),
               "reference_x": x.T, "reference_target": y.T}  # fmt: skip
    params = {"b": net.biases, "w": net.weights}
    report = gp.compare_function(net.backprop, params, ref, x, y, loss_fn=quadratic_cost,
                                 **options)  # fmt: skip
    assert report.ok
    assert "w[0] (3, 3) <-> 0.weight (3, 3): identity (the two sides agree under it)" in (
        report.conversions
    )
    assumed = gp.compare_function(net.backprop, params, ref, x, y, **options)
    assert assumed.ok  # examples as columns: (out, in) assumed, and a note says so
    assert any(
        "assumed (no loss_fn or forward tap to decide): (out, in)" in n for n in assumed.notes
    )


def test_param_map_pairs_what_order_cannot():
    net = Network([3, 3, 3])
    x, y = np.full((3, 1), 0.2), np.eye(3)[[0]].T
    ref = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 3),
                              torch.nn.Sigmoid())  # fmt: skip
    params = {"w_out": net.weights[1], "w_in": net.weights[0], "b_in": net.biases[0],
              "b_out": net.biases[1]}  # fmt: skip

    def grads(x_in, y_in):
        nabla_b, nabla_w = net.backprop(x_in, y_in)
        return {"w_out": nabla_w[1], "w_in": nabla_w[0], "b_in": nabla_b[0], "b_out": nabla_b[1]}

    options = {"reference_loss": lambda out, t: 0.5 * ((out - t) ** 2).sum(),
               "reference_x": x.T, "reference_target": y.T, "loss_fn": lambda p, x, y: float(
                   0.5 * np.sum((sigmoid(p["w_out"] @ sigmoid(p["w_in"] @ x + p["b_in"])
                                         + p["b_out"]) - y) ** 2))}  # fmt: skip
    param_map = {"w_out": "2.weight", "b_out": "2.bias", "w_in": "0.weight", "b_in": "0.bias"}
    assert gp.compare_function(grads, params, ref, x, y, param_map=param_map, **options).ok
    with pytest.raises(gp.InputError, match=r"param_map names reference parameters \['9.weight'\]"):
        gp.compare_function(grads, params, ref, x, y, param_map={"w_out": "9.weight"}, **options)


def test_error_chart_has_a_column_per_tap_and_parameter_in_forward_order():
    from gradparity.report.plots import error_chart, layer_order

    report = gp.compare_function(**setup(HIDDEN_DERIVATIVE))
    order = layer_order(report.rows)
    assert order[:9] == [
        "z[0]", "a[0]", "z[1]", "a[1]", "z[2]", "a[2]", "delta[2]", "delta[1]", "delta[0]"
    ]  # fmt: skip
    assert order[9:] == [f"backprop.{p}[{i}]" for i in range(3) for p in ("w", "b")]
    assert error_chart(report.rows).startswith(b"\x89PNG")


def test_the_default_reference_loss_is_named_in_the_report():
    report = gp.compare_function(**setup(reference_loss=None))  # quadratic cost vs default CE
    assert not report.ok
    assert report.meta["reference_loss"] == "softmax cross-entropy, batch mean (default)"
    assert any(n.startswith("reference_loss was not given") for n in report.notes)
    assert gp.compare_function(**setup()).meta["reference_loss"] == "<lambda>"
