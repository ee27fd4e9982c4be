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
