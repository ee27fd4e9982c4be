"""The autodiff engine (issue 13): the exact gradient of the user's own NumPy forward code, the
user's arrays and modules untouched, one-line errors for code that cannot run on tensors."""

from __future__ import annotations

import copy
import inspect

import autodiff_nets as nets
import numpy as np
import pytest

from gradparity.core.errors import InputError
from gradparity.sides import taps
from gradparity.sides.autodiff import ExactRun, NotOnTensors, exact_gradients, unavailable

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


def small_setup() -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(4)
    return {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}, rng.normal(size=(4, 3))


@pytest.mark.parametrize(
    ("loss", "error", "words", "line_of"),
    [
        (nets.loss_with_numpy_binding, NotOnTensors, "from numpy import exp", "exp(X"),
        (nets.loss_with_dropout, NotOnTensors, "np.random.rand", "np.random.rand"),
        (nets.loss_through_float, NotOnTensors, "float()", "float(np"),
        (nets.loss_through_item, NotOnTensors, ".item()", ".item()"),
        (nets.loss_not_scalar, InputError, "shape (4,), not one number", None),
        (nets.loss_ignoring_b, InputError, "does not depend on parameter 'b'", None),
        (nets.loss_with_missing_function, NotOnTensors, "np.nansum", "np.nansum"),
        (nets.loss_that_raises, NotOnTensors, "the user's own error", "raise RuntimeError"),
    ],
)
def test_code_that_cannot_be_differentiated_gets_one_line_and_nothing_is_changed(
    loss, error, words, line_of
):
    params, X = small_setup()
    before = snapshot(params)
    module_before = dict(vars(nets))
    with pytest.raises(error) as caught:
        exact_gradients(lambda: loss(params, X), params, [loss], inputs=[X])
    message = str(caught.value)
    assert "\n" not in message and words in message
    if line_of is not None:
        where = f"tests/autodiff_nets.py:{line_number(line_of, loss)}"
        assert caught.value.where == where and where in message
    assert_untouched(params, before)
    assert vars(nets).keys() == module_before.keys()
    assert all(vars(nets)[k] is v for k, v in module_before.items())
    assert nets.exp is np.exp


def line_number(text: str, function) -> int:
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_integer_parameters_are_refused_in_one_line():
    params = {"W": np.arange(6).reshape(3, 2), "b": np.zeros(2)}
    X = np.ones((4, 3))
    with pytest.raises(InputError, match=r"parameter 'W' holds int64 values") as caught:
        exact_gradients(lambda: nets.loss_ignoring_b(params, X), params, [nets.loss_ignoring_b])
    assert "\n" not in str(caught.value)


def test_relu_exactly_at_zero_is_noted_where_it_changes_a_gradient():
    params = {"W": np.zeros((3, 2)), "b": np.array([0.0, 1.0]), "v": np.array([[1.0, 2.0]])}
    X = np.ones((4, 3))
    call = lambda: nets.loss_with_relu_at_zero(params, X)  # noqa: E731
    run = exact_gradients(call, params, [nets.loss_with_relu_at_zero], inputs=[X])
    where = f"tests/autodiff_nets.py:{line_number('np.maximum', nets.loss_with_relu_at_zero)}"
    assert len(run.notes) == 1 and "np.maximum" in run.notes[0] and where in run.notes[0]
    params["v"] = np.array([[0.0, 2.0]])  # the tied unit's gradient is now zero: no note
    run = exact_gradients(call, params, [nets.loss_with_relu_at_zero], inputs=[X])
    assert run.notes == []
