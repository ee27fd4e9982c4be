"""compare(model, "autodiff", dtype="float32") and check_layer(..., dtype="float32"): each
isolated float32 layer probe judged against the exact gradient of its own forward, within a
budget measured by the same probe run again on a float64 copy of the layer (issue 13, item 9
for layered code). The networks are written as users write them, with ``import numpy as np``:
a book-style net (layer classes in an OrderedDict, a loss layer) and course-style functions."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import numpy as np
import pytest

import gradparity as gp
from gradparity.cli.main import main
from gradparity.evidence.float32_budget import DRIFT_FACTOR, FLOAT32_EPS, FLOOR_ULPS

pytest_plugins = ["pytester"]

# A book-style network: Affine, Tanh, Sigmoid and Relu layers in an OrderedDict and a
# SoftmaxWithLoss layer. The first two affine layers are biased so that tanh and sigmoid sit
# near saturation, where 1 - out**2 and out * (1 - out) lose most of float32's digits.
BOOK_NET = textwrap.dedent(
    """
    from collections import OrderedDict

    import numpy as np


    class Affine:
        def __init__(self, W, b, bug=None):
            self.W, self.b, self.bug = W, b, bug
            self.params = {"W": W, "b": b}
            self.grads = {}

        def forward(self, x):
            self.x = x
            return x @ self.W + self.b

        def backward(self, dout):
            if self.bug == "transposed":
                self.grads["W"] = dout.T @ self.x
            elif self.bug == "scaled":
                self.grads["W"] = self.x.T @ dout * (1 + 2e-5)
            else:
                self.grads["W"] = self.x.T @ dout
            self.grads["b"] = np.sum(dout, axis=0)
            return dout @ self.W.T


    class Tanh:
        def forward(self, x):
            self.out = np.tanh(x)
            return self.out

        def backward(self, dout):
            return dout * (1 - self.out ** 2)


    class Sigmoid:
        def forward(self, x):
            self.out = 1 / (1 + np.exp(-x))
            return self.out

        def backward(self, dout):
            return dout * (1.0 - self.out) * self.out


    class Relu:
        def forward(self, x):
            self.mask = x <= 0
            out = x.copy()
            out[self.mask] = 0
            return out

        def backward(self, dout):
            dx = dout.copy()
            dx[self.mask] = 0
            return dx


    class CastingTanh(Tanh):
        def backward(self, dout):
            return (dout * (1 - self.out ** 2)).astype(np.float32)


    def softmax(x):
        x = x - np.max(x, axis=1, keepdims=True)
        return np.exp(x) / np.sum(np.exp(x), axis=1, keepdims=True)


    class SoftmaxWithLoss:
        def __init__(self, bug=None):
            self.bug = bug

        def forward(self, x, t):
            self.t = t
            self.y = softmax(x)
            batch_size = x.shape[0]
            return -np.sum(np.log(self.y[np.arange(batch_size), t])) / batch_size

        def backward(self, dout=1):
            batch_size = self.t.shape[0]
            dx = self.y.copy()
            dx[np.arange(batch_size), self.t] -= 1
            if self.bug == "no_mean":
                return dx * dout
            return dx * dout / batch_size


    def make_layers(seed=0, dtype=np.float32, affine_bug=None, tanh=Tanh):
        rng = np.random.default_rng(seed)
        sizes, shifts = (6, 10, 8, 8, 4), (6.0, 8.0, 0.0, 0.0)
        activations = [tanh, Sigmoid, Relu]
        layers = OrderedDict()
        for i in range(4):
            W = rng.standard_normal((sizes[i], sizes[i + 1])) / np.sqrt(sizes[i])
            b = np.full(sizes[i + 1], shifts[i])
            bug = affine_bug if i == 2 else None  # Affine3's W is square: (8, 8)
            layers["Affine" + str(i + 1)] = Affine(W.astype(dtype), b.astype(dtype), bug)
            if i < 3:
                layers["Act" + str(i + 1)] = activations[i]()
        return layers


    def batch(seed=0, scale=1.0, dtype=np.float32):
        rng = np.random.default_rng(seed + 100)
        x = rng.standard_normal((8, 6)) * scale
        return x.astype(dtype), rng.integers(0, 4, size=8)


    def correct():
        x, t = batch()
        return {"model": list(make_layers().items()), "loss": SoftmaxWithLoss(), "x": x,
                "target": t}


    def no_mean():
        return {**correct(), "loss": SoftmaxWithLoss(bug="no_mean")}
    """
)


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """The book-style network, imported from its own file as the user's module."""
    path = tmp_path_factory.mktemp("book") / "book_net_f32.py"
    path.write_text(BOOK_NET)
    spec = importlib.util.spec_from_file_location("book_net_f32", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["book_net_f32"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["book_net_f32"]


def check_book(book, seed=0, scale=1.0, dtype="float32", affine_bug=None, loss_bug=None, **opts):
    layers = book.make_layers(seed, np.dtype(dtype), affine_bug)
    x, t = book.batch(seed, scale, np.dtype(dtype))
    return gp.compare(
        layers.items(), "autodiff", x, t, ours_loss=book.SoftmaxWithLoss(loss_bug), dtype=dtype,
        seed=seed, strict=True, **opts,
    )  # fmt: skip


def fixed_ratio(row) -> float:
    """How far past the fixed float32 tolerance (rtol 1e-4) the row's worst element is: above
    1, the fixed tolerance would have flagged it (a lower bound of that tensor's worst)."""
    fixed = gp.tolerance_for("float32")
    scale = row.detail["float32_budget"]["scale"]
    allowed = fixed.rtol * abs(row.ref_at_worst) + fixed.rtol * scale + fixed.atol
    return row.max_abs / allowed


def root_places(report) -> list[tuple[str, str, str]]:
    return [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes]


# --- a correct float32 network passes at every input scale -----------------------------------


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_a_correct_float32_book_net_has_no_finding_at_any_input_scale(book, scale):
    past_fixed = []
    for seed in range(20):
        report = check_book(book, seed, scale)
        assert report.ok, (seed, [f.message for f in report.root_causes + report.minor])
        assert report.dtype == "float32"
        past_fixed += [
            (seed, row.layer, row.quantity)
            for row in report.rows
            if row.max_abs and fixed_ratio(row) > 1
        ]
    if scale < 1e3:  # beyond that tanh is saturated to exactly 1: its gradient is 0 both ways
        # The saturated tanh and sigmoid layers are off by more than the fixed rtol would
        # allow: the measured budget is what keeps them from being findings.
        assert past_fixed, "the fixed float32 tolerance would have passed every row"
        assert {layer for _, layer, _ in past_fixed} <= {"Act1", "Act2"}


def test_every_gradient_row_shows_its_budget_beside_its_error(book):
    report = check_book(book, 0, 1e-3)
    rows = {(r.layer, r.quantity): r for r in report.rows}
    assert ("Affine3", "grad:W") in rows and ("loss", "grad_input") in rows
    for row in rows.values():
        budget = row.detail["float32_budget"]
        floor = FLOOR_ULPS * FLOAT32_EPS * budget["scale"]
        assert budget["allowed"] == pytest.approx(max(DRIFT_FACTOR * (budget["drift"]), floor))
        assert "conditioning" not in budget  # the drift is the user's own rounding already
        assert row.allowed_at_worst >= budget["allowed"]  # the row was judged by it
    saturated = rows[("Act1", "grad_input")].detail["float32_budget"]
    assert saturated["drift"] > 0  # float32 rounds there, and the float64 run measured it
    note = next(n for n in report.notes if n.startswith("float32 judged by your own rounding"))
    assert "Act1 grad_input" in note and "Affine3 grad:W" in note and "\n" not in note
    assert report.tolerance.dtype == "float32"
    assert report.tolerance.rtol == max(
        r.detail["float32_budget"]["allowed"] / r.detail["float32_budget"]["scale"]
        for r in rows.values()
    )  # the report names the loosest of the rows' tolerances, as compare_function's does
    assert note in json.loads(report.to_json())["notes"]  # report.json shows it too


def test_float64_runs_keep_the_fixed_tolerance(book):
    report = check_book(book, 0, 1.0, dtype="float64")
    assert report.ok
    assert report.tolerance == gp.tolerance_for("float64")
    assert all("float32_budget" not in r.detail for r in report.rows)


# --- bugs are found in float32 as in float64 -------------------------------------------------


@pytest.mark.parametrize(
    ("affine_bug", "loss_bug"), [("transposed", None), (None, "no_mean")], ids=["dW.T", "mean"]
)
def test_a_real_bug_is_found_in_float32_with_the_float64_label(book, affine_bug, loss_bug):
    found = {
        dtype: root_places(check_book(book, 0, 1.0, dtype, affine_bug, loss_bug))
        for dtype in ("float64", "float32")
    }
    assert found["float64"], "the bug must be a finding in float64"
    assert found["float32"] == found["float64"]


def test_a_bug_inside_the_fixed_float32_rtol_is_found_by_the_budget(book):
    # dW of Affine3 off by 2e-5 relative: inside the fixed float32 rtol (1e-4), far outside the
    # rounding an affine layer measures (about 1e-7).
    report = check_book(book, 0, 1.0, affine_bug="scaled")
    assert [(f.layer, f.quantity) for f in report.root_causes] == [("Affine3", "grad:W")]
    row = next(r for r in report.rows if (r.layer, r.quantity) == ("Affine3", "grad:W"))
    assert fixed_ratio(row) < 1  # the fixed tolerance would have let it pass
    # The user's rtol adds to each budget: given the fixed one by hand, it passes.
    assert check_book(book, 0, 1.0, affine_bug="scaled", rtol=1e-4).ok


# --- a layer that cannot run in float64 -------------------------------------------------------


def test_a_layer_casting_back_to_float32_is_judged_by_the_fixed_tolerance(book):
    layers = book.make_layers(0, np.float32, tanh=book.CastingTanh)
    layers["Affine1"].b[...] = 0  # tanh away from saturation: the fixed rtol suffices there
    x, t = book.batch(0, 0.1)
    report = gp.compare(
        layers.items(), "autodiff", x, t, ours_loss=book.SoftmaxWithLoss(), dtype="float32"
    )
    assert report.ok, [f.message for f in report.root_causes]
    note = next(n for n in report.notes if "'Act1'" in n)
    assert "gave float32 gradients when run in float64" in note and "rtol 0.0001" in note
    act1 = next(r for r in report.rows if r.layer == "Act1")
    assert "float32_budget" not in act1.detail
    fixed = gp.tolerance_for("float32")
    # rtol * |ref| + rtol * max|ref| + atol, and max|ref| >= |ref|: the fixed tolerance judged it
    assert act1.allowed_at_worst >= 2 * fixed.rtol * abs(act1.ref_at_worst) + fixed.atol
    others = [r for r in report.rows if r.layer != "Act1"]
    assert all("float32_budget" in r.detail for r in others)


def test_a_layer_raising_in_float64_is_named_and_judged_by_the_fixed_tolerance():
    class Float32Only:
        def forward(self, x):
            self.out = np.tanh(x)
            return self.out

        def backward(self, dout):
            assert dout.dtype == np.float32, "float32 only"
            return dout * (1 - self.out**2)

    rng = np.random.default_rng(0)
    layers = [("strict", Float32Only())]
    report = gp.compare(layers, "autodiff", rng.standard_normal((4, 3)).astype(np.float32),
                        None, dtype="float32")  # fmt: skip
    assert report.ok
    note = next(n for n in report.notes if n.startswith("float32: layer 'strict'"))
    assert "raised (AssertionError: float32 only) when run in float64" in note


# --- check_layer: course-style functions -----------------------------------------------------


def tanh_forward(x):
    out = np.tanh(x)
    return out, out


def tanh_backward(dout, cache):
    out = cache
    return dout * (1 - out**2)


def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    x, w, _ = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = np.sum(dout, axis=0)
    return dx, dw, db


def test_check_layer_in_float32_is_judged_by_budget():
    rng = np.random.default_rng(3)
    x = (6.0 + 0.01 * rng.standard_normal((5, 4))).astype(np.float32)  # tanh saturated
    report = gp.check_layer(tanh_forward, tanh_backward, x, dtype="float32")
    assert report.ok, [f.message for f in report.root_causes]
    (row,) = report.rows
    budget = row.detail["float32_budget"]
    assert budget["drift"] > 0
    # Judged by its budget (rtol = allowed / scale, no atol), not by the fixed tolerance:
    rtol = budget["allowed"] / budget["scale"]
    assert row.allowed_at_worst == pytest.approx(rtol * (abs(row.ref_at_worst) + budget["scale"]))
    assert report.tolerance.rtol == pytest.approx(rtol)
    w = (rng.standard_normal((4, 3)) * 0.5).astype(np.float32)
    b = np.zeros(3, dtype=np.float32)
    report = gp.check_layer(affine_forward, affine_backward, x, w=w, b=b, dtype="float32")
    assert report.ok
    assert {r.quantity for r in report.rows if "float32_budget" in r.detail} == {
        "grad_input", "grad:w", "grad:b"
    }  # fmt: skip


def test_check_layer_in_float32_finds_a_bug():
    def affine_backward_no_transpose(dout, cache):
        x = cache[0]
        dx, _, db = affine_backward(dout, cache)
        return dx, (dout.T @ x).T * 1.001, db

    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    w = (rng.standard_normal((4, 3)) * 0.5).astype(np.float32)
    b = np.zeros(3, dtype=np.float32)
    report = gp.check_layer(
        affine_forward, affine_backward_no_transpose, x, w=w, b=b, dtype="float32"
    )
    assert [(f.layer, f.quantity) for f in report.root_causes] == [("affine", "grad:w")]


# --- the CLI and the pytest fixture ----------------------------------------------------------


def test_cli_dtype_float32_reaches_the_autodiff_reference(tmp_path, capsys):
    (tmp_path / "book_cli.py").write_text(BOOK_NET)
    out = tmp_path / "out"
    argv = ["check", "--ours", f"{tmp_path / 'book_cli.py'}:correct", "--reference", "autodiff"]
    code = main([*argv, "--dtype", "float32", "--out", str(out)])
    assert code == 0, capsys.readouterr().out
    saved = json.loads((out / "report.json").read_text())
    assert saved["dtype"] == "float32" and saved["tolerance"]["dtype"] == "float32"
    assert any(n.startswith("float32 judged by your own rounding") for n in saved["notes"])
    bad = ["check", "--ours", f"{tmp_path / 'book_cli.py'}:no_mean", "--reference", "autodiff"]
    assert main([*bad, "--dtype", "float32", "--out", str(tmp_path / "bad")]) == 1


def test_the_fixture_checks_float32_layers_against_autodiff(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile(book_net=BOOK_NET)
    pytester.makepyfile(
        test_book=textwrap.dedent(
            """
            from book_net import SoftmaxWithLoss, batch, make_layers


            def test_correct(parity):
                x, t = batch(0, 1e-3)
                report = parity.check(make_layers().items(), "autodiff", x, t,
                                      ours_loss=SoftmaxWithLoss(), dtype="float32")
                assert report.dtype == "float32"
                assert "float32_budget" in report.rows[0].detail


            def test_no_mean(parity):
                x, t = batch()
                parity.check(make_layers().items(), "autodiff", x, t,
                             ours_loss=SoftmaxWithLoss(bug="no_mean"), dtype="float32")
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*gradparity: loss*"])
