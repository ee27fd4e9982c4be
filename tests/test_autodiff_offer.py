"""Where autodiff is offered (issue 13, item 8): ``gradparity check --function`` with a
factory that returns no reference or with ``--reference autodiff``, ``--ours ... --reference
autodiff`` for layered code, and the pytest fixture; the selftest's record of what fell back
to central differences. The networks are written as users write them, with ``import numpy``."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from gradparity.cli.main import main
from gradparity.corpus import selftest
from gradparity.pipelines.function import compare_function

pytest_plugins = ["pytester"]

# A course-style network: a params dict, a loss function and a backprop function, in the
# user's own file (tanh hidden layer, softmax cross-entropy, L2 on W1).
USER_NET = textwrap.dedent(
    """
    import numpy as np

    REG = 0.05


    def init_params(seed=0):
        rng = np.random.default_rng(seed)
        return {
            "W1": rng.standard_normal((4, 6)) * 0.5, "b1": rng.standard_normal(6) * 0.1,
            "W2": rng.standard_normal((6, 3)) * 0.5, "b2": rng.standard_normal(3) * 0.1,
        }


    def data(seed=1):
        rng = np.random.default_rng(seed)
        return rng.standard_normal((8, 4)), rng.integers(0, 3, size=8)


    def forward(params, X):
        h = np.tanh(X @ params["W1"] + params["b1"])
        scores = h @ params["W2"] + params["b2"]
        scores = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(scores) / np.sum(np.exp(scores), axis=1, keepdims=True)
        return h, probs


    def loss(params, X, y):
        _, probs = forward(params, X)
        data_loss = -np.mean(np.log(probs[np.arange(X.shape[0]), y]))
        return data_loss + 0.5 * REG * np.sum(params["W1"] * params["W1"])


    def make_backprop(params, tanh_bug=False):
        def backprop(X, y):
            N = X.shape[0]
            h, probs = forward(params, X)
            dscores = probs.copy()
            dscores[np.arange(N), y] -= 1
            dscores /= N
            grads = {"W2": h.T @ dscores, "b2": dscores.sum(axis=0)}
            dh = dscores @ params["W2"].T
            dz = dh * (1 - h) if tanh_bug else dh * (1 - h ** 2)
            grads["W1"] = X.T @ dz + REG * params["W1"]
            grads["b1"] = dz.sum(axis=0)
            return grads
        return backprop
    """
)

FACTORIES = textwrap.dedent(
    """
    from user_net import data, init_params, loss, make_backprop
    from gradparity.corpus.function_bugs import FUNCTION_BUGS, function_setup


    def _setup(**bug):
        params = init_params()
        x, y = data()
        return {"grads": make_backprop(params, **bug), "params": params, "x": x, "target": y,
                "loss_fn": loss}


    def correct():
        return _setup()


    def wrong_tanh():
        return _setup(tanh_bug=True)


    def with_torch_twin():
        return function_setup(FUNCTION_BUGS[0])
    """
)


@pytest.fixture
def factories(tmp_path) -> str:
    (tmp_path / "user_net.py").write_text(USER_NET)
    (tmp_path / "setups.py").write_text(FACTORIES)
    return str(tmp_path / "setups.py")


def _check(tmp_path, *argv: str) -> tuple[int, dict | None]:
    out = tmp_path / "out"
    code = main(["check", *argv, "--out", str(out)])
    saved = out / "report.json"
    return code, json.loads(saved.read_text()) if saved.exists() else None


# --- gradparity check --function ------------------------------------------------------------


def test_a_factory_with_no_reference_is_checked_against_autodiff(tmp_path, factories, capsys):
    code, saved = _check(tmp_path, "--function", f"{factories}:correct")
    out = capsys.readouterr().out
    assert code == 0, out
    assert saved["meta"]["reference_used"] == "autodiff"
    assert saved["meta"]["model"] == "setups:correct"
    assert "parity OK (4 parameter gradients" in out


def test_a_bug_found_through_autodiff_exits_1(tmp_path, factories, capsys):
    code, saved = _check(tmp_path, "--function", f"{factories}:wrong_tanh")
    assert code == 1
    assert saved["meta"]["reference_used"] == "autodiff"
    first = saved["root_causes"][0]
    assert (first["layer"], first["quantity"]) == ("backprop", "grad:W1")
    assert "backprop.W1" in capsys.readouterr().out


def test_reference_autodiff_sets_the_factorys_torch_twin_aside(tmp_path, factories, capsys):
    """The corpus factory returns a torch model and a tap_map: the flag drops both."""
    code, saved = _check(
        tmp_path, "--function", f"{factories}:with_torch_twin", "--reference", "autodiff"
    )
    assert code == 1
    assert saved["meta"]["reference"] != "Sequential"
    first = saved["root_causes"][0]
    assert (first["quantity"], first["diagnosis"]) == ("grad:W2", "transposed")
    code, saved = _check(tmp_path, "--function", f"{factories}:with_torch_twin")
    assert code == 1 and saved["meta"]["reference"] == "Sequential"  # without the flag: torch


def test_reference_other_than_autodiff_with_function_is_a_usage_error(tmp_path, factories, capsys):
    code, saved = _check(tmp_path, "--function", f"{factories}:correct", "--reference", "t.py:m")
    err = capsys.readouterr().err.strip()
    assert (code, saved) == (2, None)
    assert len(err.splitlines()) == 1
    assert "with --function, --reference takes only 'autodiff'" in err and "'t.py:m'" in err


# --- gradparity check --ours ... --reference autodiff ---------------------------------------

LAYERED = textwrap.dedent(
    """
    import numpy as np
    from gradparity.corpus.layer_bugs import BUGS, base_network
    from gradparity.ours import mlp


    def correct():
        rng = np.random.default_rng(0)
        return {"model": mlp([5, 4, 3], seed=0), "x": rng.standard_normal((6, 5)),
                "target": rng.integers(0, 3, size=6)}


    def bias_not_summed():
        model, loss, x, target = next(b for b in BUGS if b.name == "bias_not_summed").build(0)
        return {"model": model, "loss": loss, "x": x, "target": target}


    def no_data():
        return {"model": mlp([5, 4, 3], seed=0)}
    """
)


@pytest.fixture
def layered(tmp_path) -> str:
    (tmp_path / "layered.py").write_text(LAYERED)
    return str(tmp_path / "layered.py")


def test_ours_against_autodiff_of_each_layer(tmp_path, layered, capsys):
    code, saved = _check(tmp_path, "--ours", f"{layered}:correct", "--reference", "autodiff")
    assert code == 0, capsys.readouterr().out
    assert saved["meta"]["reference"].startswith("autodiff")
    code, saved = _check(
        tmp_path, "--ours", f"{layered}:bias_not_summed", "--reference", "autodiff"
    )
    assert code == 1
    found = [(f["layer"], f["quantity"], f["diagnosis"]) for f in saved["root_causes"]]
    assert found == [("fc2", "grad:b", "not_reduced")]


def test_ours_against_autodiff_needs_x_and_target(tmp_path, layered, capsys):
    code, _ = _check(tmp_path, "--ours", f"{layered}:no_data", "--reference", "autodiff")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "must return a dict with 'model', 'x' and 'target'" in err


# --- the pytest fixture ---------------------------------------------------------------------


def test_fixture_checks_against_autodiff(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile(user_net=USER_NET)
    pytester.makepyfile(
        test_net=textwrap.dedent(
            """
            from user_net import data, init_params, loss, make_backprop


            def test_correct(parity):
                params = init_params()
                x, y = data()
                report = parity.check_function(make_backprop(params), params, "autodiff", x, y,
                                               loss_fn=loss)
                assert report.ok and report.meta["reference_used"] == "autodiff"


            def test_wrong_tanh(parity):
                params = init_params()
                x, y = data()
                parity.check_function(make_backprop(params, tanh_bug=True), params,
                                      "autodiff", x, y, loss_fn=loss)
            """
        )
    )
    pytester.makepyfile(
        test_layers=textwrap.dedent(
            """
            import numpy as np
            from gradparity.corpus.layer_bugs import BUGS


            def test_bias_not_summed(parity):
                bug = next(b for b in BUGS if b.name == "bias_not_summed")
                model, loss, x, target = bug.build(0)
                parity.check(model, "autodiff", x, target, ours_loss=loss)


            def test_no_target(parity):
                model, loss, x, _ = BUGS[0].build(0)
                parity.check(model, "autodiff", x, ours_loss=loss)
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(
        [
            "gradparity: fc2.b: *",
            "(parity.check at test_layers.py:*)",
            "gradparity: error: reference 'autodiff' needs a target* (parity.check at *)",
        ],
        consecutive=False,
    )
    result.stdout.fnmatch_lines(
        [
            "gradparity: backprop.W1*",
            "(parity.check_function at test_net.py:*)",
            "test_net.py::test_wrong_tanh -> backprop.W1 *",
        ]
    )


# --- the selftest says what fell back to central differences -------------------------------


def test_not_on_tensors_names_the_function_that_fell_back(tmp_path, monkeypatch):
    (tmp_path / "user_net.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_net

    params = user_net.init_params()
    x, y = user_net.data()
    report = compare_function(
        user_net.make_backprop(params), params, "autodiff", x, y, loss_fn=user_net.loss
    )
    assert selftest.not_on_tensors(report) == []  # the user's own module runs on tensors

    def float_loss(p, xs, ys):  # a loss returned as float() of its value keeps its graph
        return float(user_net.loss(p, xs, ys))

    report = compare_function(
        user_net.make_backprop(params), params, "autodiff", x, y, loss_fn=float_loss
    )
    assert report.meta["reference_used"] == "autodiff"

    def cut_loss(p, xs, ys):  # float() mid-graph: the number returned leaves the tensor graph
        return 2.0 * float(user_net.loss(p, xs, ys))

    report = compare_function(
        user_net.make_backprop(params), params, "autodiff", x, y, loss_fn=cut_loss
    )
    assert report.meta["reference_used"] == "central differences"
    assert selftest.not_on_tensors(report) == ["backprop"]
    assert np.isfinite(report.rows[0].max_abs)
