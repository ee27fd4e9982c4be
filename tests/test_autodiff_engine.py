"""The autodiff engine (issue 13): the exact gradient of the user's own NumPy forward code, the
user's arrays and modules untouched, one-line errors for code that cannot run on tensors."""

from __future__ import annotations

import copy

import autodiff_nets as nets
import numpy as np
import pytest

from gradparity.sides import taps
from gradparity.sides.autodiff import ExactRun, exact_gradients, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason="torch._numpy unavailable")

EXACT = 1e-12


def assert_close(ours: dict, exact: dict) -> None:
    assert set(ours) == set(exact)
    for name in exact:
        np.testing.assert_allclose(ours[name], exact[name], rtol=0, atol=EXACT, err_msg=name)


def snapshot(params: dict) -> tuple[dict, dict]:
    return {k: id(v) for k, v in params.items()}, copy.deepcopy(params)


def assert_untouched(params: dict, before: tuple[dict, dict]) -> None:
    ids, values = before
    assert {k: id(v) for k, v in params.items()} == ids
    for name, value in values.items():
        assert type(params[name]) is np.ndarray
        np.testing.assert_array_equal(params[name], value)
    assert nets.np is np


def mlp_setup(seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {
        "W1": rng.normal(size=(4, 5)),
        "b1": rng.normal(size=5),
        "W2": rng.normal(size=(5, 3)),
        "b2": rng.normal(size=3),
    }
    return params, rng.normal(size=(6, 4)), np.array([0, 1, 2, 0, 1, 2])


def test_course_style_params_dict_gets_its_exact_gradients_and_is_put_back():
    params, X, y = mlp_setup()
    before = snapshot(params)
    run = exact_gradients(
        lambda: nets.mlp_loss(params, X, y), params, [nets.mlp_loss], inputs=[X, y]
    )
    assert isinstance(run, ExactRun)
    assert_close(run.grads, nets.mlp_grads(params, X, y))
    assert run.loss == pytest.approx(float(nets.mlp_loss(params, X, y)), abs=1e-12)
    assert run.seconds > 0
    assert_untouched(params, before)


def test_forward_taps_get_their_exact_gradients():
    params, X, y = mlp_setup(1)
    run = exact_gradients(
        lambda: nets.mlp_loss(params, X, y), params, [nets.mlp_loss], inputs=[X, y]
    )
    with taps.recording() as log:
        nets.mlp_grads(params, X, y)
    np.testing.assert_allclose(run.taps["z1"], X @ params["W1"] + params["b1"], atol=EXACT)
    np.testing.assert_allclose(run.tap_grads["z1"], taps.grad_taps(log)["z1"], atol=EXACT)


def test_naive_loop_conv_net_loss_returning_loss_and_grads():
    net = nets.ConvNet()
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(2, 1, 6, 6)), np.array([0, 2])
    before = snapshot(net.params)
    run = exact_gradients(lambda: net.loss(X, y), net.params, [net.loss], inputs=[X, y])
    assert_close(run.grads, net.loss(X, y)[1])
    assert run.notes == []
    assert_untouched(net.params, before)


def test_book_style_layers_sharing_arrays_with_the_params_dict_and_caches_put_back():
    net = nets.TwoLayerNet()
    rng = np.random.default_rng(2)
    x, t = rng.normal(size=(5, 4)), np.eye(3)[[0, 1, 2, 1, 0]]
    net.loss(x, t)  # the layers hold caches from an earlier call, as they would in training
    cache = net.layers["Affine1"].x
    before = snapshot(net.params)
    run = exact_gradients(lambda: net.loss(x, t), net.params, [net.loss], inputs=[x, t])
    assert_close(run.grads, net.gradient(x, t))
    assert_untouched(net.params, before)
    assert net.layers["Affine1"].W is net.params["W1"]
    net.loss(x, t)
    net2 = nets.TwoLayerNet()
    net2.loss(x, t)
    exact_gradients(lambda: net2.loss(x, t), net2.params, [net2.loss], inputs=[x, t])
    assert type(net2.layers["Affine1"].x) is np.ndarray
    assert type(net2.lastLayer.y) is np.ndarray
    assert cache is not None


def test_module_global_char_rnn():
    names = ("Wxh", "Whh", "Why", "bh", "by")
    params = {n: getattr(nets, n) for n in names}
    before = snapshot(params)
    inputs, targets, hprev = [0, 3, 1, 4], [3, 1, 4, 2], np.zeros((nets.hidden_size, 1))
    run = exact_gradients(
        lambda: nets.lossFun(inputs, targets, hprev), params, [nets.lossFun], inputs=[hprev]
    )
    analytic = nets.lossFun(inputs, targets, hprev)
    assert_close(run.grads, dict(zip(names, analytic[1:6], strict=True)))
    assert_untouched(params, before)
    assert all(getattr(nets, n) is params[n] for n in names)
