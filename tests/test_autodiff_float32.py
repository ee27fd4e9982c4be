"""compare_function(..., "autodiff", dtype="float32"): the user's float32 run, on their own
arrays, judged against the exact float64 gradient of their loss, within a budget measured from
their own code run again in float64."""

import itertools

import numpy as np
import pytest

import gradparity as gp
from gradparity.corpus.function_bugs import FUNCTION_BUGS, function_setup
from gradparity.corpus.naive_conv import ThreeLayerConvNet, batch
from gradparity.evidence.float32_budget import DRIFT_FACTOR, FLOAT32_EPS, FLOOR_ULPS

# --- a tanh MLP as a params dict and a function returning its gradients (course style) -------


def init_mlp(seed, sizes=(6, 16, 4)):
    rng = np.random.default_rng(seed)
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes), start=1):
        params[f"W{i}"] = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros(n_out, dtype=np.float32)
    return params


def mlp_forward(params, x):
    z1 = x @ params["W1"] + params["b1"]
    a1 = np.tanh(z1)
    scores = a1 @ params["W2"] + params["b2"]
    return scores, (x, a1)


def softmax(scores):
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def mlp_loss(params, x, y):
    scores, _ = mlp_forward(params, x)
    probs = softmax(scores)
    return -np.mean(np.log(probs[np.arange(len(y)), y]))


def mlp_grads(params, x, y, w2_scale=1.0):
    scores, (x_in, a1) = mlp_forward(params, x)
    dscores = softmax(scores)
    dscores[np.arange(len(y)), y] -= 1
    dscores /= len(y)
    grads = {"W2": a1.T @ dscores * w2_scale, "b2": dscores.sum(axis=0)}
    dz1 = (dscores @ params["W2"].T) * (1 - a1**2)
    grads["W1"] = x_in.T @ dz1
    grads["b1"] = dz1.sum(axis=0)
    return grads


def mlp_batch(seed, scale, n=8):
    rng = np.random.default_rng(seed + 100)
    x = (rng.standard_normal((n, 6)) * scale).astype(np.float32)
    return x, rng.integers(0, 4, size=n)


def check_mlp(seed, scale, w2_scale=1.0):
    params = init_mlp(seed)
    x, y = mlp_batch(seed, scale)
    return gp.compare_function(
        lambda xb, yb: mlp_grads(params, xb, yb, w2_scale), params, "autodiff", x, y,
        loss_fn=mlp_loss, dtype="float32", seed=seed, strict=True,
    )  # fmt: skip


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_a_correct_float32_mlp_has_no_finding_at_any_input_scale(scale):
    for seed in range(20):
        report = check_mlp(seed, scale)
        assert report.ok, (seed, [f.message for f in report.findings])
        assert report.dtype == "float32"


def test_a_correct_float32_conv_net_has_no_finding():
    for seed in range(20):
        net = ThreeLayerConvNet(input_dim=(2, 6, 6), num_filters=3, hidden_dim=8, seed=seed)
        for name in list(net.params):
            net.params[name] = net.params[name].astype(np.float32)
        X, y = batch(n=3, input_dim=(2, 6, 6), seed=seed + 1)
        report = gp.compare_function(
            net.loss, net.params, "autodiff", X.astype(np.float32), y, dtype="float32",
            seed=seed, strict=True,
        )  # fmt: skip
        assert report.ok, (seed, [f.message for f in report.findings])


def test_the_budget_is_measured_and_shown_beside_the_error():
    report = check_mlp(0, 1.0)
    rows = {r.quantity: r for r in report.rows if r.type == "parameter"}
    assert set(rows) == {"grad:W1", "grad:b1", "grad:W2", "grad:b2"}
    for row in rows.values():
        budget = row.detail["float32_budget"]
        floor = FLOOR_ULPS * FLOAT32_EPS * budget["scale"]
        assert budget["drift"] is not None and budget["drift"] > 0  # float32 rounds somewhere
        assert budget["allowed"] == pytest.approx(max(DRIFT_FACTOR * budget["drift"], floor))
        assert row.allowed_at_worst >= budget["allowed"]  # the row was judged by it
    note = next(n for n in report.notes if n.startswith("float32 judged by your own rounding"))
    assert "grad:W1" in note and "\n" not in note
    assert report.tolerance.dtype == "float32"


def test_a_bug_far_below_the_fixed_float32_rtol_is_found():
    # dW2 off by 2e-5 relative: inside float32's fixed rtol (1e-4), far outside the rounding
    # this network measures (a few 1e-7).
    report = check_mlp(0, 1.0, w2_scale=1 + 2e-5)
    assert not report.ok
    first = report.root_causes[0]
    assert (first.layer, first.quantity) == ("grads", "grad:W2")
    params = init_mlp(0)
    fixed = gp.compare_function(
        lambda xb, yb: mlp_grads(params, xb, yb, 1 + 2e-5), params, "autodiff",
        *mlp_batch(0, 1.0), loss_fn=mlp_loss, dtype="float32", rtol=1e-4,
    )  # fmt: skip
    assert fixed.ok  # the fixed float32 rtol, given by hand, lets it pass


@pytest.mark.parametrize("bug", FUNCTION_BUGS, ids=lambda b: b.name)
def test_every_function_bug_is_found_in_float32_at_its_place(bug):
    kwargs = function_setup(bug, seed=0, numeric=True)
    params = kwargs["params"]
    for name in list(params):  # the corpus closure reads the dict: float32 arrays in it
        params[name] = params[name].astype(np.float32)
    kwargs.update(reference="autodiff", x=kwargs["x"].astype(np.float32), dtype="float32")
    report = gp.compare_function(**kwargs, seed=0)
    # A bug at a gradient tap shows at that tap's forward pairing, as in float64.
    at_tap = not bug.place.startswith("grad:")
    expected = (bug.place, "output") if at_tap else ("backprop", bug.place)
    first = report.root_causes[0]
    assert (first.layer, first.quantity) == expected, [f.message for f in report.root_causes]
    assert first.diagnosis == bug.diagnosis


def test_the_live_float32_arrays_are_left_as_they_were():
    params = init_mlp(3)
    held = dict(params)
    before = {n: a.copy() for n, a in params.items()}
    x, y = mlp_batch(3, 1.0)
    gp.compare_function(
        lambda xb, yb: mlp_grads(params, xb, yb), params, "autodiff", x, y, loss_fn=mlp_loss,
        dtype="float32",
    )  # fmt: skip
    assert all(params[n] is held[n] for n in held)
    for name, array in params.items():
        assert array.dtype == np.float32
        assert np.array_equal(array, before[name])


# --- parameters as module globals (gist style) ------------------------------------------------

RNG = np.random.default_rng(7)
Wxh = (RNG.standard_normal((5, 7)) * 0.3).astype(np.float32)
Why = (RNG.standard_normal((7, 3)) * 0.3).astype(np.float32)


def global_loss_and_grads(x, y):
    h = np.tanh(x @ Wxh)
    scores = h @ Why
    probs = softmax(scores)
    loss = -np.mean(np.log(probs[np.arange(len(y)), y]))
    dscores = probs.copy()
    dscores[np.arange(len(y)), y] -= 1
    dscores /= len(y)
    dh = dscores @ Why.T * (1 - h**2)
    return loss, {"Wxh": x.T @ dh, "Why": h.T @ dscores}


def test_module_global_float32_parameters_get_a_measured_budget_and_are_put_back():
    held = (Wxh, Why)
    before = (Wxh.copy(), Why.copy())
    x = np.random.default_rng(8).standard_normal((6, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    report = gp.compare_function(
        global_loss_and_grads, {"Wxh": Wxh, "Why": Why}, "autodiff", x, y, dtype="float32",
        strict=True,
    )  # fmt: skip
    assert report.ok, [f.message for f in report.findings]
    drifts = [r.detail["float32_budget"]["drift"] for r in report.rows if r.type == "parameter"]
    assert all(d is not None and d > 0 for d in drifts)  # the float64 run reached the globals
    assert all(a is b for a, b in zip((Wxh, Why), held, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip((Wxh, Why), before, strict=True))


def test_float32_code_that_cannot_run_on_tensors_is_refused_in_one_line():
    # Central differences, the fallback in float64, drown in float32 rounding.
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 2)).astype(np.float32)}
    held, before = params["W"], params["W"].copy()
    x, y = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)

    def dropout_loss(params, x, y):  # a dropout mask drawn with a fixed seed
        np.random.seed(0)
        mask = np.random.rand(*x.shape) > 0.2
        return 0.5 * np.sum(((x * mask) @ params["W"] - y) ** 2)

    def grads(x, y):
        np.random.seed(0)
        xm = x * (np.random.rand(*x.shape) > 0.2)
        return {"W": xm.T @ (xm @ params["W"] - y)}

    with pytest.raises(gp.InputError, match=r"cannot run on tensors .*need float64") as err:
        gp.compare_function(grads, params, "autodiff", x, y, loss_fn=dropout_loss, dtype="float32")
    assert "\n" not in str(err.value)
    assert params["W"] is held and np.array_equal(params["W"], before)


def naive_softmax_loss(params, x, y):
    e = np.exp(x @ params["W"])  # no max shift: overflows in float32 beyond 88.7
    probs = e / e.sum(axis=1, keepdims=True)
    return -np.mean(np.log(probs[np.arange(len(y)), y]))


def naive_softmax_grads(params, x, y):
    e = np.exp(x @ params["W"])
    dscores = e / e.sum(axis=1, keepdims=True)
    dscores[np.arange(len(y)), y] -= 1
    return {"W": x.T @ dscores / len(y)}


def test_a_float32_overflow_is_a_finding_not_a_budget():
    # Scores near 100: exp overflows in float32 only; the float64 run is fine, so the drift
    # is not rounding and the NaN gradient is found.
    params = {"W": np.full((2, 3), 25.0, dtype=np.float32)}
    params["W"][:, 0] = 30.0
    x = np.array([[2.0, 1.5], [1.8, 1.7]], dtype=np.float32)
    y = np.array([0, 2])
    report = gp.compare_function(
        lambda xb, yb: naive_softmax_grads(params, xb, yb), params, "autodiff", x, y,
        loss_fn=naive_softmax_loss, dtype="float32",
    )  # fmt: skip
    assert not report.ok
    row = next(r for r in report.rows if r.quantity == "grad:W")
    assert row.diverged
    assert row.detail["float32_budget"]["drift"] is None
