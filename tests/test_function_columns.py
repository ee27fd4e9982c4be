"""compare_function on column-style code (Andrew Ng's course: Z = W @ A + b, dZ without 1/m,
dW = dZ @ A.T / m): the cases outside testing found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradparity as gp


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def ng_network(n: int = 4, m: int = 6, bug: str | None = None, seed: int = 0) -> dict:
    """Two tanh layers and a sigmoid output, all n x n, m examples as columns, BCE mean."""
    rng = np.random.default_rng(seed)
    params = {f"{k}{i}": rng.normal(size=(n, n) if k == "W" else (n, 1)) / 2
              for i in (1, 2, 3) for k in ("W", "b")}  # fmt: skip
    X, Y = rng.normal(size=(n, m)), rng.integers(0, 2, size=(n, m)).astype(float)

    def forward(p, X):
        A1 = gp.tap("A1", np.tanh(p["W1"] @ X + p["b1"]))
        A2 = gp.tap("A2", np.tanh(p["W2"] @ A1 + p["b2"]))
        return A1, A2, _sigmoid(p["W3"] @ A2 + p["b3"])

    def cost(p, X, Y):
        A3 = forward(p, X)[2]
        return float(-np.mean(np.sum(Y * np.log(A3) + (1 - Y) * np.log(1 - A3), axis=0)))

    def backprop(X, Y):
        A1, A2, A3 = forward(params, X)
        dZ3 = gp.tap("dZ", A3 - Y)  # no 1/m here: it goes into dW and db
        dW3, db3 = dZ3 @ A2.T / m, dZ3.sum(axis=1, keepdims=True) / m
        dZ2 = gp.tap("dZ", (params["W3"].T @ dZ3) * (1 - A2**2))
        dW2 = dZ2 @ A1.T / m
        db2 = (dZ2.sum(axis=0, keepdims=True) if bug == "bias_wrong_axis"
               else dZ2.sum(axis=1, keepdims=True))  # fmt: skip
        db2 = db2 if bug == "db2_without_m" else db2 / m
        dZ1 = gp.tap("dZ", (params["W2"].T @ dZ2) * (1 - A1**2))
        dW1 = (X @ dZ1.T if bug == "dW1_transposed" else dZ1 @ X.T) / m
        return {"W1": dW1, "b1": dZ1.sum(axis=1, keepdims=True) / m, "W2": dW2, "b2": db2,
                "W3": dW3, "b3": db3}  # fmt: skip

    return {"grads": backprop, "params": params, "x": X, "target": Y, "loss_fn": cost}


def _torch(n: int = 4) -> dict:
    ref = torch.nn.Sequential(torch.nn.Linear(n, n), torch.nn.Tanh(), torch.nn.Linear(n, n),
                              torch.nn.Tanh(), torch.nn.Linear(n, n))  # fmt: skip

    def bce(out, t):  # summed over units, averaged over examples, as cost() does
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, t, reduction="none")
        return loss.sum(dim=1).mean()

    taps = {"A1": "1", "A2": "3", "dZ[0]": "grad:4", "dZ[1]": "grad:2", "dZ[2]": "grad:0"}
    return {"reference": ref, "reference_loss": bce, "tap_map": taps}


def _with_torch(kwargs: dict) -> dict:
    return {**kwargs, **_torch(), "reference_x": kwargs["x"].T,
            "reference_target": kwargs["target"].T}  # fmt: skip


@pytest.mark.parametrize("m", [4, 6], ids=["batch equals width", "batch 6"])
def test_ng_network_is_at_parity_with_deltas_that_carry_no_1_over_m(m):
    report = gp.compare_function(**_with_torch(ng_network(m=m)))
    assert report.ok, report.summary()
    assert report.meta["examples_as"] == "columns"
    assert any(n.startswith("gradient taps ['dZ[0]', 'dZ[1]', 'dZ[2]'] hold") for n in report.notes)
    delta = next(r for r in report.rows if r.layer == "dZ[0]")
    assert delta.detail["batch_convention"] == m


def test_square_batch_without_reference_x_is_told_to_check_reference_x():
    kwargs = {**ng_network(m=4), **_torch(), "reference_target": ng_network(m=4)["target"].T}
    report = gp.compare_function(**kwargs)  # reference_x forgotten: x is square, so it runs
    assert not report.ok
    assert any("check reference_x and reference_target" in n for n in report.notes)


def test_square_column_weight_transposed_gets_column_advice_in_both_modes():
    kwargs = ng_network(m=4, bug="dW1_transposed")
    numeric = gp.compare_function(**kwargs, reference=None)
    assert [(f.quantity, f.diagnosis) for f in numeric.root_causes] == [("grad:W1", "transposed")]
    # x (4, 4) and target (4, 4): the shapes leave the layout open, so the advice names both.
    assert "delta @ a.T for W stored (out, in) with examples as columns" in (
        numeric.root_causes[0].fix
    )
    with_torch = gp.compare_function(**_with_torch(kwargs))
    assert "delta @ a.T, not a @ delta.T" in with_torch.root_causes[0].fix


def test_bias_summed_over_the_wrong_axis_is_told_which_axis():
    report = gp.compare_function(**ng_network(m=4, bug="bias_wrong_axis"), reference=None)
    (found,) = report.root_causes
    assert (found.quantity, found.diagnosis) == ("grad:b2", "shape_mismatch")
    assert "sum over the examples' axis (axis 1 with examples as columns" in found.fix
    assert "times the reference" not in found.message


def test_nested_layer_lists_name_the_outer_index_as_the_layer():
    kwargs = ng_network(bug="dW1_transposed")
    p = kwargs["params"]
    inner = kwargs["grads"]
    nested = [[p["W1"], p["b1"]], [p["W2"], p["b2"]], [p["W3"], p["b3"]]]

    def grads(x, y):
        g = inner(x, y)
        return [[g["W1"], g["b1"]], [g["W2"], g["b2"]], [g["W3"], g["b3"]]]

    def cost(q, x, y):
        return kwargs["loss_fn"](
            {"W1": q[0][0], "b1": q[0][1], "W2": q[1][0], "b2": q[1][1], "W3": q[2][0],
             "b3": q[2][1]}, x, y)  # fmt: skip

    report = gp.compare_function(grads, nested, None, kwargs["x"], kwargs["target"],
                                 loss_fn=cost)  # fmt: skip
    (found,) = report.root_causes
    assert found.quantity == "grad:p0[0]" and found.detail["deepest"] is True


def test_a_forward_that_reuses_an_earlier_input_is_stale_at_its_first_tap():
    kwargs = ng_network()
    inner, first = kwargs["grads"], {}

    def grads(x, y):
        first.setdefault("x", x)
        return inner(first["x"], y)  # keeps the first call's X

    report = gp.compare_function(**{**_with_torch(kwargs), "grads": grads})
    top = report.root_causes[0]
    assert (top.layer, top.quantity, top.diagnosis) == ("A1", "output", "stale")


def test_a_backprop_taking_params_first_is_told_how_to_wrap_it():
    def backprop(params, X, Y):
        return params

    kwargs = ng_network()
    with pytest.raises(gp.InputError, match=r"grads=lambda x, y: backprop\(params, x, y\)"):
        gp.compare_function(**{**kwargs, "grads": backprop, "reference": None})


def test_a_bias_missing_its_1_over_m_is_blamed_on_the_bias_not_on_the_deltas():
    report = gp.compare_function(**_with_torch(ng_network(bug="db2_without_m")))
    assert [(f.quantity, f.diagnosis) for f in report.root_causes] == [
        ("grad:b2", "batch_reduction")
    ]
    assert "as the weight gradients are: the deltas here carry no 1/N" in report.root_causes[0].fix
    assert all(r.status == "ok" for r in report.rows if r.type == "tap")
