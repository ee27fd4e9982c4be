"""compare_function's edges: taps outside a comparison, parameter structures, bad input (one
line naming the parameter or module), the sampled referee for large parameters."""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest
import torch

import gradparity as gp
from gradparity.corpus.function_bugs import TAP_MAP, function_setup
from gradparity.pairing.structure import flatten, match_grads, rebuild
from gradparity.sides.taps import named, recording


def test_tap_outside_a_comparison_returns_its_argument_and_records_nothing():
    a = np.arange(3.0)
    assert gp.tap("a", a) is a
    with recording() as log:
        gp.tap("z", a)
        gp.tap("z", a * 2)
        gp.tap("once", a)
    assert gp.tap("after", a) is a
    taps = named(log)
    assert list(taps) == ["z[0]", "z[1]", "once"]
    assert np.array_equal(taps["z[1]"], a * 2)


def test_tap_keeps_a_copy_not_the_live_array():
    a = np.zeros(2)
    with recording() as log:
        gp.tap("a", a)
        a += 1
    assert np.array_equal(named(log)["a"], [0.0, 0.0])


def test_structures_flatten_match_and_rebuild():
    w, b = np.ones((2, 3)), np.zeros((2, 1))
    assert list(flatten({"w": [w, w], "b": [b]})) == ["w[0]", "w[1]", "b[0]"]
    assert list(flatten([w, b])) == ["p0", "p1"]
    assert list(flatten(([b], [w]))) == ["p0[0]", "p1[0]"]
    grads = match_grads({"b": [b], "w": [w]}, ([b + 1], [w + 1]))  # a tuple answers a dict
    assert np.array_equal(grads["w[0]"], w + 1)
    rebuilt = rebuild({"b": [b], "w": (w,)}, {"b[0]": b + 2, "w[0]": w})
    assert isinstance(rebuilt["w"], tuple) and np.array_equal(rebuilt["b"][0], b + 2)
    pair = namedtuple("Pair", "w b")
    assert rebuild(pair(w, b), {"p0": w + 1, "p1": b}).w[0, 0] == 2.0
    stacked = match_grads([w, w], np.stack([w, w + 1]))  # an array with one entry per param
    assert np.array_equal(stacked["p1"], w + 1)
    course = match_grads({"W1": w, "b1": b}, {"dW1": w + 3, "db1": b, "dA0": np.ones(9)})
    assert list(course) == ["W1", "b1"] and course["W1"][0, 0] == 4.0  # "d" + name, extras left
    with pytest.raises(gp.InputError, match="has 'db1' for 'b1' but other entries without"):
        match_grads({"W1": w, "b1": b}, {"W1": w, "db1": b})
    as_lists = match_grads({"W": w, "n": np.ones(2)}, {"W": w.tolist(), "n": [1, 2]})
    assert as_lists["W"].dtype == np.float64 and as_lists["n"].dtype == np.float64


def test_tapping_costs_no_torch_import():
    code = (
        "import sys, numpy, gradparity as gp; gp.tap('a', numpy.ones(2)); "
        "print('torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("params", "grads", "needle"),
    [
        ({"b": [np.ones((2, 1))] * 2}, {"b": [np.ones((2, 1))]},
         r"no gradient for b\[1\] \(parameter shape \(2, 1\)\)"),
        ([np.ones(2)], [np.ones(2), np.ones(3)], r"an extra entry at position 1 \(shape \(3,\)\)"),
        ({"W": np.ones(2), "b": np.ones(2)}, {"W": np.ones(2)}, r"no entry 'b' \(nor 'db'\) for b"),
        ({"W": np.ones(2)}, {"W": None}, r"grads returned None for W \(parameter shape \(2,\)\)"),
        ({"W": np.ones(2)}, np.ones(2), r"grads returned shape \(2,\) at the top level"),
        ({"W": np.ones(2), "b": np.ones(2), "c": np.ones(1)}, (0.5, {"W": np.ones(2)}),
         r"it looks like \(loss, grads\): pass grads=lambda x, y: f\(x, y\)\[1\]"),
        ({"W": np.ones(2)}, {"W": "text"}, r"the gradient of W is not numeric \(a str"),
        ({"W": np.ones(2)}, {"W": {"a": 1}}, r"the gradient of W is not numeric \(a dict"),
    ],
)  # fmt: skip
def test_grads_that_do_not_match_params_get_one_line(params, grads, needle):
    with pytest.raises(gp.InputError, match=needle) as err:
        match_grads(params, grads)
    assert "\n" not in str(err.value)


def _corpus(**changes) -> dict:
    return {**function_setup(None), **changes}


def test_a_gradient_shape_nothing_explains_names_the_parameter_and_both_shapes():
    kwargs = _corpus()
    inner = kwargs["grads"]
    kwargs["grads"] = lambda x, y: {**inner(x, y), "W2": np.ones(7)}
    with pytest.raises(gp.InputError, match=r"gradient of W2 has shape \(7,\), the parameter "
                       r"\(5, 5\)"):  # fmt: skip
        gp.compare_function(**kwargs)


def test_tap_map_naming_a_missing_module_lists_the_modules():
    with pytest.raises(gp.InputError, match=r"names module 'fc9'.*its modules are \[fc1, act1"):
        gp.compare_function(**_corpus(tap_map={"dh2": "grad:fc9"}))


def test_tap_map_naming_a_tap_never_made_lists_the_taps():
    with pytest.raises(gp.InputError, match=r"taps \['delta'\] that grads never recorded; it "
                       r"recorded \['h1', 'a1'"):  # fmt: skip
        gp.compare_function(**_corpus(tap_map={**TAP_MAP, "delta": "grad:fc1"}))


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"grads": 3}, "grads must be callable"),
        ({"params": {"W": [1.0, 2.0]}}, r"parameter W\[0\] is a float"),
        ({"params": []}, "params must be a non-empty dict or list"),
        ({"dtype": "float16"}, "dtype must be"),
        ({"reference": None, "loss_fn": None, "tap_map": None}, "reference=None needs loss_fn"),
        ({"reference": None}, "tap_map needs a reference model"),
        ({"reference": torch.nn.Linear(4, 3), "tap_map": None},
         r"params holds 6 arrays .* but the reference has 2 parameters"),
        ({"x": np.full((6, 4), np.nan)}, "x holds 24 non-finite"),
        ({"reference_x": np.ones((6, 7))}, "reference_x has 7 features but the first layer fc1"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(changes, needle):
    with pytest.raises(gp.InputError, match=needle) as err:
        gp.compare_function(**_corpus(**changes))
    assert "\n" not in str(err.value)


def test_a_loss_fn_that_ignores_its_params_is_refused():
    kwargs = function_setup(None, numeric=True)
    fixed = kwargs["loss_fn"](kwargs["params"], kwargs["x"], kwargs["target"])
    with pytest.raises(gp.InputError, match="must compute the loss from the params it is given"):
        gp.compare_function(**{**kwargs, "loss_fn": lambda p, x, y: fixed})


def test_correct_corpus_network_has_no_finding_over_200_seeds():
    for seed in range(200):
        for numeric in (False, True):
            report = gp.compare_function(**function_setup(None, seed, numeric), seed=seed)
            assert report.ok and not report.warnings, (seed, numeric, report.summary())


# --- large parameters: the referee samples directions and entries -----------------------


def _wide(bug: str | None = None, seed: int = 0) -> dict:
    """Rows of 40 features, W1 (40, 30) = 1200 entries: above the full-gradient limit."""
    rng = np.random.default_rng(seed)
    params = {"W1": rng.normal(size=(40, 30)) / 6, "b1": rng.normal(size=30),
              "W2": rng.normal(size=(30, 3)) / 5, "b2": rng.normal(size=3)}  # fmt: skip
    x, y = rng.normal(size=(8, 40)), rng.normal(size=(8, 3))

    def loss(p, x, y):
        return float(0.5 * np.mean(np.sum((np.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
                                           - y) ** 2, axis=1)))  # fmt: skip

    def grads(x, y):
        h = np.tanh(x @ params["W1"] + params["b1"])
        d_out = (h @ params["W2"] + params["b2"] - y) / len(x)
        dh = d_out @ params["W2"].T * (1 - h**2)
        per_example = x[:, :, None] * dh[:, None, :]
        dW1 = {
            "sign": -(x.T @ dh), "transposed": (x.T @ dh).T, "doubled": 2 * (x.T @ dh),
            "per_example": per_example, "one_column": x.T @ (dh * [0.0] + dh * (
                np.arange(30) > 0)),
        }.get(bug, x.T @ dh)  # fmt: skip
        return {"W1": dW1, "b1": dh.sum(0), "W2": h.T @ d_out, "b2": d_out.sum(0)}

    return {"grads": grads, "params": params, "reference": None, "x": x, "target": y,
            "loss_fn": loss}  # fmt: skip


@pytest.mark.parametrize(
    ("bug", "label"),
    [(None, None), ("sign", "sign_flipped"), ("transposed", "transposed"),
     ("doubled", "scaled"), ("per_example", "not_reduced"), ("one_column", "unexplained")],
)  # fmt: skip
def test_large_parameters_are_sampled_and_still_diagnosed(bug, label):
    report = gp.compare_function(**_wide(bug))
    row = next(r for r in report.rows if r.quantity == "grad:W1")
    assert row.detail["sampled"] == {"directions": 6, "entries": 6}
    if label is None:
        assert report.ok, report.summary()
        return
    assert [(f.quantity, f.diagnosis) for f in report.root_causes] == [("grad:W1", label)]


def test_function_report_saves_and_names_the_function(tmp_path):
    report = gp.compare_function(**_wide("doubled"))
    assert report.root_causes[0].message.startswith("grads.W1: values are 2 times")
    report.save(tmp_path)
    assert "numeric rows" in (tmp_path / "report.md").read_text()
    assert "central differences of loss_fn" in (tmp_path / "report.html").read_text()


# --- cases found by testing on code written outside this repository ----------------------


def _linear_softmax(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {"W": rng.normal(size=(5, 3)), "b": rng.normal(size=3)}
    x, y = rng.normal(size=(7, 5)), rng.integers(0, 3, size=7)

    def probs(p, x):
        s = np.atleast_2d(x) @ p["W"] + p["b"].reshape(-1)
        e = np.exp(s - s.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def loss(p, x, y):
        y = np.atleast_1d(y).astype(int)
        return float(-np.log(probs(p, x)[np.arange(len(y)), y]).mean())

    def grads(x, y):
        x, y = np.atleast_2d(x), np.atleast_1d(y)
        d = probs(params, x) - np.eye(3)[y.astype(int)]
        return {"W": x.T @ d / len(y), "b": d.sum(0) / len(y)}

    return params, x, y, loss, grads


def test_a_loss_unchanged_by_equal_shifts_still_counts_as_using_its_params():
    params, x, y, loss, grads = _linear_softmax()  # softmax ignores a shift of every score
    assert gp.compare_function(grads, params, None, x, y, loss_fn=loss).ok


def test_whole_float_labels_and_a_single_unbatched_example_use_the_default_loss():
    params, x, y, _loss, grads = _linear_softmax()
    ref = torch.nn.Linear(5, 3)
    assert gp.compare_function(grads, params, ref, x, y.astype(float)).ok
    one = gp.compare_function(grads, params, ref, x[0], y[0])  # x (5,), y a 0-d class
    assert one.ok, one.summary()


def test_param_map_mistakes_are_one_line():
    params, x, y, _loss, grads = _linear_softmax()
    ref = torch.nn.Linear(5, 3)
    with pytest.raises(gp.InputError, match=r"pairs \['weight'\] with more than one"):
        gp.compare_function(grads, params, ref, x, y, param_map={"W": "weight", "b": "weight"})
    with pytest.raises(gp.InputError, match=r"pairs b \(3,\) with weight \(3, 5\): no layout"):
        gp.compare_function(grads, params, ref, x, y, param_map={"b": "weight"})


def test_a_reference_with_an_unused_extra_parameter_is_fine_with_a_full_param_map():
    params, x, y, _loss, grads = _linear_softmax()
    ref = torch.nn.Sequential(torch.nn.Linear(5, 3))
    ref.register_parameter("unused", torch.nn.Parameter(torch.zeros(2)))
    full = {"W": "0.weight", "b": "0.bias"}
    assert gp.compare_function(grads, params, ref, x, y, param_map=full).ok
    with pytest.raises(gp.InputError, match="with fewer, pair each with param_map"):
        gp.compare_function(grads, params, ref, x, y)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [({"batch_size": 0}, "batch_size must be a positive integer"),
     ({"loss_fn": 3}, "loss_fn must be callable")],
)  # fmt: skip
def test_bad_options_are_one_line(changes, needle):
    with pytest.raises(gp.InputError, match=needle):
        gp.compare_function(**_corpus(**changes))


def test_numbered_names_pair_square_layers_whatever_their_order():
    kwargs = function_setup(None)
    shuffled = dict(reversed(kwargs["params"].items()))  # b3, W3, b2, W2, b1, W1
    inner = kwargs["grads"]
    report = gp.compare_function(**{**kwargs, "params": shuffled, "grads": inner})
    assert report.ok, report.summary()
    assert "W2 (5, 5) <-> fc2.weight (5, 5): transpose (model convention)" in report.conversions


def test_cached_results_skipping_the_taps_are_stale_not_a_tap_map_error():
    kwargs = function_setup(None)
    inner, cache = kwargs["grads"], {}

    def cached(x, y):
        if "g" not in cache:
            cache["g"] = inner(x, y)
        return cache["g"]

    report = gp.compare_function(**{**kwargs, "grads": cached})
    assert {f.diagnosis for f in report.root_causes} == {"stale"}
    assert any("recorded on the first (warm-up) call" in n for n in report.notes)


def test_with_loss_fn_a_wrong_reference_is_not_blamed_on_ours():
    kwargs = function_setup(None)
    wrong = kwargs["reference"]
    wrong.act2 = torch.nn.Tanh()  # the reference computes another network
    report = gp.compare_function(**kwargs)
    first = report.root_causes[0]
    assert (first.layer, first.quantity) == ("a2", "output")
    params = [f for f in report.root_causes if f.layer == "backprop"]
    assert params and all(f.detail["referee"] == "ours" for f in params)
    assert all("ours matches central differences of loss_fn" in f.message for f in params)
    assert not any(f.detail.get("deepest") for f in params)


def test_a_loss_fn_that_differs_from_the_reference_loss_is_named_at_the_loss():
    kwargs = function_setup(None)
    inner = kwargs["loss_fn"]
    report = gp.compare_function(**{**kwargs, "loss_fn": lambda p, x, y: 2 * inner(p, x, y)})
    first = report.root_causes[0]
    assert (first.layer, first.quantity) == ("loss", "output")
    assert "loss_fn and the reference's loss compute different costs" in first.message


def test_an_l2_penalty_works_through_loss_fn_and_a_reference_returning_it():
    params, x, y, loss, grads = _linear_softmax()
    reg = 0.1

    def reg_loss(p, x, y):
        return loss(p, x, y) + 0.5 * reg * float(np.sum(p["W"] ** 2))

    def reg_grads(x, y):
        g = grads(x, y)
        return {"W": g["W"] + reg * params["W"], "b": g["b"]}

    class Penalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(x), 0.5 * reg * (self.fc.weight**2).sum()

    def reference_loss(out, t):
        scores, penalty = out
        return torch.nn.functional.cross_entropy(scores, t) + penalty

    assert gp.compare_function(reg_grads, params, None, x, y, loss_fn=reg_loss).ok
    report = gp.compare_function(reg_grads, params, Penalised(), x, y, loss_fn=reg_loss,
                                 reference_loss=reference_loss)  # fmt: skip
    assert report.ok, report.summary()
    forgot = gp.compare_function(grads, params, Penalised(), x, y, loss_fn=reg_loss,
                                 reference_loss=reference_loss)  # fmt: skip
    assert [(f.quantity, f.detail["referee"]) for f in forgot.root_causes] == [
        ("grad:W", "reference")
    ]
    assert "-0.1 times W itself: a weight-decay (L2) term differs" in forgot.root_causes[0].message


def test_the_reference_runs_in_the_mode_it_was_given():
    rng = np.random.default_rng(0)
    params = {"gamma": rng.normal(size=4), "beta": rng.normal(size=4)}
    x, y = rng.normal(size=(8, 4)) * 3 + 1, rng.integers(0, 4, size=8)

    def grads(x, y):  # batch norm with the batch's statistics, then softmax cross-entropy
        xhat = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
        s = params["gamma"] * xhat + params["beta"]
        e = np.exp(s - s.max(1, keepdims=True))
        d = (e / e.sum(1, keepdims=True) - np.eye(4)[y]) / len(y)
        return {"gamma": (d * xhat).sum(0), "beta": d.sum(0)}

    norm = torch.nn.BatchNorm1d(4)
    training = gp.compare_function(grads, params, norm, x, y)
    assert training.ok and training.meta["reference_mode"] == "train"
    assert norm.training  # the given module is not touched
    inference = gp.compare_function(grads, params, norm.eval(), x, y)
    assert not inference.ok and inference.meta["reference_mode"] == "eval"
    assert any("batch norm ['0'] is in eval mode" in n or "is in eval mode" in n
               for n in inference.notes)  # fmt: skip


def test_a_module_called_at_every_step_is_tapped_at_the_call_named():
    rng = np.random.default_rng(0)
    params = {"Wxh": rng.normal(size=(3, 4)) / 2, "Whh": rng.normal(size=(3, 3)) / 2}
    xs, target = rng.normal(size=(3, 4)), rng.normal(size=3)  # 3 steps of a 4-feature input

    def grads(xs, target):
        hs = [np.zeros(3)]
        for t in range(3):
            hs.append(gp.tap("h", np.tanh(params["Wxh"] @ xs[t] + params["Whh"] @ hs[-1])))
        dh, dWxh, dWhh = hs[-1] - target, 0, 0
        for t in reversed(range(3)):
            dz = dh * (1 - hs[t + 1] ** 2)
            dWxh, dWhh = dWxh + np.outer(dz, xs[t]), dWhh + np.outer(dz, hs[t])
            dh = params["Whh"].T @ dz
        return {"Wxh": dWxh, "Whh": dWhh}

    class Recurrent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.Wxh = torch.nn.Parameter(torch.zeros(3, 4))
            self.Whh = torch.nn.Parameter(torch.zeros(3, 3))
            self.cell = torch.nn.Tanh()

        def forward(self, xs):
            h = torch.zeros(3, dtype=xs.dtype)
            for t in range(3):
                h = self.cell(self.Wxh @ xs[t] + self.Whh @ h)
            return h

    def half_squared(out, t):
        return 0.5 * ((out - t) ** 2).sum()

    options = {"reference_loss": half_squared, "param_map": {"Wxh": "Wxh", "Whh": "Whh"}}
    steps = {f"h[{t}]": f"cell@{t}" for t in range(3)}
    report = gp.compare_function(grads, params, Recurrent(), xs, target, tap_map=steps, **options)
    assert report.ok, report.summary()
    first_only = gp.compare_function(grads, params, Recurrent(), xs, target,
                                     tap_map={"h[2]": "cell"}, **options)  # fmt: skip
    assert not first_only.ok
    assert any("'cell' ran 3 times" in n and "cell@k" in n for n in first_only.notes)


def test_integer_inputs_are_shuffled_for_the_warm_up_call():
    rng = np.random.default_rng(2)
    params = {"E": rng.normal(size=(10, 4)), "W": rng.normal(size=(4, 3))}
    idx, y = rng.integers(0, 10, size=5), rng.integers(0, 3, size=5)

    def grads(idx, y):
        h = params["E"][idx]
        s = h @ params["W"]
        e = np.exp(s - s.max(1, keepdims=True))
        d = (e / e.sum(1, keepdims=True) - np.eye(3)[y]) / len(y)
        dE = np.zeros_like(params["E"])
        dE[idx] = d @ params["W"].T  # the bug: repeated indices must add (np.add.at)
        return {"E": dE, "W": h.T @ d}

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.E = torch.nn.Embedding(10, 4)
            self.W = torch.nn.Linear(4, 3, bias=False)

        def forward(self, idx):
            return self.W(self.E(idx))

    report = gp.compare_function(grads, params, Embed(), idx, y)
    assert len(set(idx.tolist())) < len(idx)  # a repeated index: the bug shows
    assert [(f.quantity, f.diagnosis) for f in report.root_causes] == [("grad:E", "unexplained")]


def test_a_gradient_an_update_still_takes_is_a_warning_not_a_root_cause():
    params, x, y, _loss, grads = _linear_softmax()
    params["b"] = params["b"].reshape(1, 3)  # a (1, n) bias; grads returns db as (n,)
    report = gp.compare_function(grads, params, torch.nn.Linear(5, 3), x, y)
    assert report.ok and not report.root_causes
    (warning,) = report.warnings
    assert (warning.quantity, warning.diagnosis) == ("grad:b", "shape_mismatch")
    assert "p -= lr * g broadcasts" in warning.message
    params["b"] = params["b"].reshape(3, 1)  # (n, 1): p -= lr * g would make it (n, n)
    report = gp.compare_function(grads, params, torch.nn.Linear(5, 3), x, y)
    assert [(f.quantity, f.diagnosis) for f in report.root_causes] == [("grad:b", "shape_mismatch")]


def test_taps_from_another_thread_do_not_reach_this_recording():
    import threading

    with recording() as log:
        worker = threading.Thread(target=gp.tap, args=("elsewhere", np.ones(1)))
        worker.start()
        worker.join()
        with recording() as inner:
            gp.tap("inner", np.ones(1))
        gp.tap("outer", np.ones(1))
    assert [n for n, _ in log] == ["outer"] and [n for n, _ in inner] == ["inner"]


def test_parameters_pair_by_name_before_order():
    from gradparity.pairing.square import pair_function_params

    class Cell(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.Wxh = torch.nn.Parameter(torch.zeros(4, 3))
            self.Whh = torch.nn.Parameter(torch.zeros(4, 4))

    class Recurrent(torch.nn.Module):  # own parameters first, the cell's after them
        def __init__(self) -> None:
            super().__init__()
            self.Why = torch.nn.Parameter(torch.zeros(3, 4))
            self.cell = Cell()

    ours = {"Wxh": np.zeros((4, 3)), "Whh": np.zeros((4, 4)), "Why": np.zeros((3, 4))}
    pairs = pair_function_params(ours, Recurrent(), None, False, lambda p: None)
    assert {p.key: (p.torch_name, p.conversion) for p in pairs} == {
        "Wxh": ("cell.Wxh", "identity"),
        "Whh": ("cell.Whh", "identity"),
        "Why": ("Why", "identity"),
    }


def test_integer_features_and_tuple_outputs_get_one_line_advice():
    params, x, y, _loss, grads = _linear_softmax()
    pixels = np.random.default_rng(0).integers(0, 255, size=(7, 5))
    with pytest.raises(gp.InputError, match=r"x is int64: .* pass x.astype\(float\)"):
        gp.compare_function(grads, params, torch.nn.Linear(5, 3), pixels, y)

    class Pair(torch.nn.Module):
        def forward(self, s):
            return s, s.sum()

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.pair = torch.nn.Linear(5, 3), Pair()

        def forward(self, x):
            return self.pair(self.fc(x))[0]

    def tapped(x, y):
        gp.tap("s", x @ params["W"])
        return grads(x, y)

    with pytest.raises(gp.InputError, match=r"module 'pair', which returns a tuple, not a tensor"):
        gp.compare_function(tapped, params, Wrapped(), x, y, tap_map={"s": "pair"})
