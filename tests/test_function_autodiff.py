"""``compare_function(grads, params, "autodiff", x, target)``: every parameter gradient against
the exact gradient of the user's own NumPy loss, with no torch code written (issue 13, items 1,
2 and 5). The networks (``autodiff_networks.py``) are written as their authors write them."""

from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import pytest
from autodiff_networks import (
    ThreeLayerConvNet,
    TwoLayerNet,
    conv_batch,
    tapped_loss,
    tapped_params,
)

import gradparity as gp
from gradparity.core.labels import SCALED

REFERENCE = "autodiff: exact gradient of"


def _row(report: gp.Report, quantity: str):
    return next(r for r in report.rows if r.quantity == quantity)


def _book_batch(seed=1, n=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


def _book_run(net: TwoLayerNet) -> gp.Report:
    x, t = _book_batch()
    return gp.compare_function(
        net.gradient, net.params, "autodiff", x, t,
        loss_fn=lambda params, x, t: net.loss(x, t),
    )  # fmt: skip


@pytest.fixture(scope="module")
def correct_conv() -> gp.Report:
    net = ThreeLayerConvNet()
    X, y = conv_batch()
    return gp.compare_function(net.loss, net.params, "autodiff", X, y)


def test_a_correct_course_conv_net_matches_the_exact_gradients(correct_conv):
    assert correct_conv.ok, correct_conv.summary()
    rows = [r for r in correct_conv.rows if r.type == "parameter"]
    assert {r.quantity for r in rows} == {f"grad:{p}" for p in ("W1", "b1", "W2", "b2", "W3", "b3")}
    assert all(r.status == "ok" and r.max_abs <= 1e-12 for r in rows)
    assert correct_conv.meta["reference"] == (
        "autodiff: exact gradient of the loss your loss() returns (torch._numpy)"
    )
    assert correct_conv.meta["reference_used"] == "autodiff"


def test_a_pool_backward_that_averages_is_off_by_its_exact_factor():
    net = ThreeLayerConvNet(pool_bug="quarter")
    X, y = conv_batch()
    report = gp.compare_function(net.loss, net.params, "autodiff", X, y)
    assert not report.ok
    assert len(report.root_causes) == 1
    found = report.root_causes[0]
    assert found.quantity == "grad:W1"
    # b1 has no L2 term: exactly the bug's factor; W1's ``reg * W1`` is right, so it is not.
    b1 = _row(report, "grad:b1")
    assert b1.diagnosis == SCALED and b1.detail["factor"] == pytest.approx(0.25)
    assert [q["quantity"] for q in found.quantities] == ["grad:b1"]
    assert found.source["file"].endswith("autodiff_networks.py")
    line = found.source["first_line"]
    source = open(found.source["file"]).read().splitlines()[line - 1]  # noqa: SIM115
    assert 'grads["W1"], grads["b1"] = conv_backward_naive' in source
    assert "gp.tap('z1', dz1, grad=True)" in found.fix  # the advice for this reference
    assert "tap_map" not in found.fix
    for name in ("W2", "b2", "W3", "b3"):  # the layers above the pool are right
        assert _row(report, f"grad:{name}").status == "ok"


def test_a_pool_backward_that_routes_to_every_position_is_found():
    net = ThreeLayerConvNet(pool_bug="every")
    X, y = conv_batch()
    report = gp.compare_function(net.loss, net.params, "autodiff", X, y)
    assert [f.quantity for f in report.root_causes] == ["grad:W1"]
    assert _row(report, "grad:b1").status == "root_cause"


def test_a_missing_l2_term_in_the_gradients_is_named():
    net = ThreeLayerConvNet(l2_in_grads=False)
    X, y = conv_batch()
    report = gp.compare_function(net.loss, net.params, "autodiff", X, y)
    assert {r.quantity for r in report.rows if r.diverged} == {"grad:W1", "grad:W2", "grad:W3"}
    assert _row(report, "grad:W3").diagnosis == "weight_decay"


def test_nothing_the_user_holds_is_changed():
    net = ThreeLayerConvNet(pool_bug="quarter")
    X, y = conv_batch()
    before = {n: (a, a.copy()) for n, a in net.params.items()}
    x_before = X.copy()
    gp.compare_function(net.loss, net.params, "autodiff", X, y)
    for name, (array, values) in before.items():
        assert net.params[name] is array and np.array_equal(array, values)
    assert np.array_equal(X, x_before)
    assert sys.modules["autodiff_networks"].np is np


def test_book_style_layers_sharing_the_params_arrays():
    net = TwoLayerNet()
    report = _book_run(net)
    assert report.ok, report.summary()
    # The book's loss takes log(y + 1e-7), which its backward leaves out: ~1e-7 of difference.
    assert all(0 < r.max_abs <= 1e-6 for r in report.rows if r.type == "parameter")
    assert report.meta["reference_loss"] == f"{REFERENCE} loss_fn (lambda) (torch._numpy)"
    assert net.layers["Affine1"].W is net.params["W1"]  # the aliases are put back


def test_book_style_wrong_sigmoid_derivative_is_found():
    report = _book_run(TwoLayerNet(sigmoid_bug=True))
    assert not report.ok
    assert [f.quantity for f in report.root_causes] == ["grad:W1"]
    assert _row(report, "grad:W2").status == "ok"


def test_taps_pair_by_name_and_bracket_the_bug():
    params = tapped_params()
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(6, 3)), rng.uniform(size=(6, 2))
    report = gp.compare_function(
        lambda X, y: tapped_loss(params, X, y, tanh_bug=True), params, "autodiff", X, y
    )
    taps = {(r.layer, r.quantity): r.status for r in report.rows if r.type == "tap"}
    assert taps == {
        ("z1", "output"): "ok", ("a1", "output"): "ok", ("z2", "output"): "ok",
        ("z2", "grad_output"): "ok", ("a1", "grad_output"): "ok",
        ("z1", "grad_output"): "root_cause",
    }  # fmt: skip
    assert len(report.root_causes) == 1
    found = report.root_causes[0]
    assert (found.layer, found.quantity) == ("z1", "grad_output")
    assert "while a1 before it agrees" in found.message
    lines = open(found.source["file"]).read().splitlines()  # noqa: SIM115
    span = "\n".join(lines[found.source["first_line"] - 1 : found.source["last_line"]])
    assert "da1 * (1 - a1)" in span and "dz2 @ W2.T" in span and "X @ W1" not in span
    assert _row(report, "grad:W1").status == "root_cause"
    assert _row(report, "grad:W2").status == "ok"


def test_a_forward_the_tensor_module_cannot_run_falls_back_to_central_differences():
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 2))}
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))

    def dropout_loss(params, x, y):  # a dropout mask drawn with a fixed seed
        np.random.seed(0)
        mask = np.random.rand(*x.shape) > 0.2
        return 0.5 * np.sum(((x * mask) @ params["W"] - y) ** 2)

    def grads(x, y):
        np.random.seed(0)
        xm = x * (np.random.rand(*x.shape) > 0.2)
        return {"W": xm.T @ (xm @ params["W"] - y)}

    report = gp.compare_function(grads, params, "autodiff", x, y, loss_fn=dropout_loss)
    assert report.ok, report.summary()
    assert report.meta["reference_used"] == "central differences"
    note = report.notes[0]
    assert note.startswith("autodiff could not run (") and "central differences were used" in note
    assert "test_function_autodiff.py:" in note  # the call's file:line
    assert "\n" not in note


@pytest.mark.parametrize(
    ("reference", "options", "needle"),
    [
        ("torch", {}, r"reference='torch' is not known: pass a torch nn.Module, 'autodiff'"),
        ("autodiff", {"tap_map": {"z1": "grad:0"}}, r"pairs taps by name, it takes no tap_map"),
        ("autodiff", {"reference_loss": abs}, r"reference_loss needs a reference model"),
        ("autodiff", {}, r"needs loss_fn=callable\(params, x, target\) -> loss, or a"),
    ],
)
def test_refusals_are_one_line(reference, options, needle):
    net = TwoLayerNet()
    x, t = _book_batch()
    before = {n: a.copy() for n, a in net.params.items()}
    with pytest.raises(gp.InputError, match=needle) as err:
        gp.compare_function(net.gradient, net.params, reference, x, t, **options)
    assert "\n" not in str(err.value)
    assert all(np.array_equal(net.params[n], a) for n, a in before.items())


def test_a_loss_returned_with_the_gradients_is_told_from_gradients():
    from gradparity.sides.function_run import split_loss

    flat, grads = {"W": np.ones(2)}, {"W": np.ones(2)}
    loss, unpacked = split_loss(flat, (np.float64(0.5), grads))
    assert loss == 0.5 and unpacked is grads
    pair = (np.ones(2), np.ones(2))  # the gradients of two parameters
    assert split_loss(flat, pair) == (None, pair)
    assert split_loss({"s": np.array(1.0)}, (1.0, 2.0)) == (None, (1.0, 2.0))  # a 0-d parameter


def test_the_readme_autodiff_example_prints_what_the_readme_shows(monkeypatch):
    from test_readme import TESTS, _block_after

    monkeypatch.chdir(TESTS)  # as the README says: run inside tests/ (source paths from there)
    monkeypatch.syspath_prepend(str(TESTS))
    example = _block_after("## No torch twin: autodiff", "python")[0]
    shown = _block_after("## No torch twin: autodiff", "")[0]
    assert len(example.splitlines()) <= 15
    assert "torch" not in example.replace("torch._numpy", "")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), {})
    assert out.getvalue() == shown


@pytest.mark.parametrize("hidden_bug", [False, True])
def test_module_global_parameters(hidden_bug):
    import autodiff_networks as nets

    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    params = {"Wxh": nets.Wxh, "Why": nets.Why}
    report = gp.compare_function(
        lambda X, y: nets.global_loss(X, y, hidden_bug), params, "autodiff", X, y
    )
    assert report.ok is not hidden_bug
    assert _row(report, "grad:Why").status == "ok"
    assert _row(report, "grad:Wxh").status == ("root_cause" if hidden_bug else "ok")
    assert nets.Wxh is params["Wxh"] and nets.np is np


def test_gradients_cached_from_the_first_call_are_stale():
    params = tapped_params()
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(6, 3)), rng.uniform(size=(6, 2))
    cached = {}

    def gradient(X, y):
        if not cached:
            cached.update(tapped_loss(params, X, y)[1])
        return dict(cached)

    report = gp.compare_function(
        gradient, params, "autodiff", X, y, loss_fn=lambda p, X, y: tapped_loss(p, X, y)[0]
    )
    assert {r.quantity: r.diagnosis for r in report.rows if r.diverged} == {
        f"grad:{name}": "stale" for name in params
    }


@pytest.mark.parametrize(
    ("loss_fn", "needle"),
    [
        (
            lambda params, x, t: params["W1"].sum() * x,
            r"reference='autodiff': the loss has shape \(5, 4\), not one number",
        ),
        (
            lambda params, x, t: (x @ params["W1"]).sum(),
            r"reference='autodiff': the loss does not depend on parameter 'b1'",
        ),
    ],
    ids=["not a scalar", "independent of W2"],
)
def test_an_unfit_loss_gets_one_line(loss_fn, needle):
    net = TwoLayerNet()
    x, t = _book_batch()
    with pytest.raises(gp.InputError, match=needle) as err:
        gp.compare_function(net.gradient, net.params, "autodiff", x, t, loss_fn=loss_fn)
    assert "\n" not in str(err.value)


def test_without_torch_numpy_central_differences_judge_with_a_note(monkeypatch):
    from gradparity.sides import autodiff

    monkeypatch.setattr(autodiff, "unavailable", lambda: "torch 9.0's torch._numpy changed")
    params = tapped_params()
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(6, 3)), rng.uniform(size=(6, 2))
    before = {n: (a, a.copy()) for n, a in params.items()}
    report = gp.compare_function(
        lambda X, y: tapped_loss(params, X, y, tanh_bug=True), params, "autodiff", X, y
    )
    assert report.notes[0] == (
        "autodiff could not run (torch 9.0's torch._numpy changed): central differences were "
        "used instead"
    )
    assert report.meta["reference_used"] == "central differences"
    assert report.meta["reference_loss"] == ("central differences of the loss your grads() returns")
    assert {r.quantity for r in report.rows if r.diverged} == {"grad:W1", "grad:b1"}
    for name, (array, values) in before.items():  # moved in place and put back
        assert params[name] is array and np.array_equal(array, values)


def test_a_tap_of_complex_values_and_a_raising_function_are_findings():
    params = tapped_params()
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(6, 3)), rng.uniform(size=(6, 2))

    def complex_tap(X, y):
        loss, grads = tapped_loss(params, X, y)
        gp.tap("h", np.ones(2) * 1j, grad=True)
        return loss, grads

    report = gp.compare_function(complex_tap, params, "autodiff", X, y)
    row = next(r for r in report.rows if (r.layer, r.quantity) == ("h", "grad_output"))
    assert row.diagnosis == "raised" and not report.ok

    def raising(X, y):
        raise ValueError("shapes do not align")

    report = gp.compare_function(
        raising, params, "autodiff", X, y, loss_fn=lambda p, X, y: tapped_loss(p, X, y)[0]
    )
    assert [f.diagnosis for f in report.root_causes] == ["raised"]
