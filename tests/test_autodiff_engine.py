"""The autodiff engine (issue 13): the exact gradient of the user's own NumPy forward code, the
user's arrays and modules untouched, one-line errors for code that cannot run on tensors."""

from __future__ import annotations

import copy
import importlib
import inspect
import subprocess
import sys

import autodiff_nets as nets
import numpy as np
import pytest
from book_verbatim import Affine

import gradparity.ours as ours
import gradparity.ours.layers as ours_layers
from gradparity.core.errors import InputError
from gradparity.sides import taps
from gradparity.sides.autodiff import (
    ExactRun,
    NotOnTensors,
    exact_gradients,
    unavailable,
    user_modules,
)

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


def test_closures_tuples_and_nested_containers_are_reached_by_identity():
    params, X = small_setup()
    W = params["W"]
    held = {"layers": [("affine", {"W": W, "b": params["b"]})]}

    def make_loss():
        def loss():
            (_, layer) = held["layers"][0]
            return np.sum(np.tanh(X @ W + layer["b"]) ** 2)

        return loss

    loss = make_loss()
    before = snapshot(params)
    run = exact_gradients(loss, params, [loss], inputs=[X])
    z = np.tanh(X @ W + params["b"])
    dz = 2 * z * (1 - z**2)
    assert_close(run.grads, {"W": X.T @ dz, "b": dz.sum(axis=0)})
    assert_untouched(params, before)
    assert held["layers"][0][1]["W"] is W and type(held["layers"][0]) is tuple


def write_user_package(root) -> None:
    package = root / "usernet"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text(
        "import numpy as np\n\n\ndef affine(x, w):\n    return np.tanh(x @ w)\n"
    )
    (package / "model.py").write_text(
        "import numpy as np\n\nfrom usernet import layers\n\n\n"
        "def loss(w, x):\n    return np.sum(layers.affine(x, w) ** 2)\n"
    )


def test_user_modules_of_an_imported_package_follow_its_globals(tmp_path, monkeypatch):
    write_user_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = importlib.import_module("usernet.model")
    found = {m.__name__ for m in user_modules([model.loss])}
    assert found == {"usernet.model", "usernet.layers"}
    w, x = np.random.default_rng(5).normal(size=(3, 2)), np.ones((4, 3))
    run = exact_gradients(lambda: model.loss(w, x), {"w": w}, [model.loss], inputs=[x])
    z = np.tanh(x @ w)
    np.testing.assert_allclose(run.grads["w"], x.T @ (2 * z * (1 - z**2)), atol=EXACT)
    assert model.layers.np is np and model.np is np
    for name in ("usernet.model", "usernet.layers", "usernet"):
        monkeypatch.delitem(sys.modules, name)


def test_user_modules_follow_a_global_rebound_between_runs(tmp_path, monkeypatch):
    # what a module's globals reference is remembered between runs: a rebound global is seen
    (tmp_path / "shapes_a.py").write_text(
        "import numpy as np\n\n\ndef helper(x):\n    return x\n\n\n"
        "def loss(w):\n    return np.sum(helper(w) ** 2)\n"
    )
    (tmp_path / "shapes_b.py").write_text("def helper(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    a, b = importlib.import_module("shapes_a"), importlib.import_module("shapes_b")
    own = a.helper
    assert {m.__name__ for m in user_modules([a.loss])} == {"shapes_a"}
    monkeypatch.setattr(a, "helper", b.helper)
    assert {m.__name__ for m in user_modules([a.loss])} == {"shapes_a", "shapes_b"}
    w = np.ones(3)
    run = exact_gradients(lambda: a.loss(w), {"w": w}, [a.loss])
    np.testing.assert_allclose(run.grads["w"], 8 * w, atol=EXACT)
    monkeypatch.setattr(a, "helper", own)
    assert {m.__name__ for m in user_modules([a.loss])} == {"shapes_a"}
    for name in ("shapes_a", "shapes_b"):
        monkeypatch.delitem(sys.modules, name)


def test_user_modules_picks_this_test_file_and_never_a_library():
    found = user_modules(
        [nets.mlp_loss, test_user_modules_picks_this_test_file_and_never_a_library]
    )
    names = {m.__name__ for m in found}
    assert {nets.__name__, __name__} <= names
    assert not any(n.split(".")[0] in ("numpy", "torch", "pytest", "os") for n in names)
    # gradparity's harness never; its NumPy framework (ours, imported here) and its user-style
    # corpus (the naive conv that autodiff_nets imports) are user code
    user_code = ("gradparity.ours", "gradparity.corpus")
    harness = {n for n in names if n.startswith("gradparity") and not n.startswith(user_code)}
    assert harness == set() and "gradparity.ours.layers" in names
    assert "gradparity.corpus.naive_conv" in names
    assert user_modules([nets.mlp_loss], modules=["json"])[0].__name__ == "json"


def test_a_script_run_as_main_is_differentiated(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import numpy as np\n"
        "from gradparity.sides.autodiff import exact_gradients, user_modules\n\n"
        "W = np.arange(6.0).reshape(3, 2) / 10\n"
        "x = np.ones((4, 3))\n\n\n"
        "def loss():\n    return np.sum((x @ W) ** 2)\n\n\n"
        "names = [m.__name__ for m in user_modules([loss])]\n"
        "run = exact_gradients(loss, {'W': W}, [loss])\n"
        "assert names == ['__main__'], names\n"
        "assert np.allclose(run.grads['W'], x.T @ (2 * (x @ W)), rtol=0, atol=1e-12)\n"
        "assert type(W) is np.ndarray and np.__name__ == 'numpy'\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_a_changed_tensor_module_is_named_and_refused_before_anything_runs(monkeypatch):
    import torch._numpy as tnp

    monkeypatch.delattr(tnp, "pad")
    why = unavailable()
    assert why is not None and "torch._numpy lacks pad" in why and "2.13" in why
    params, X = small_setup()
    before = snapshot(params)
    with pytest.raises(NotOnTensors, match="lacks pad"):
        exact_gradients(lambda: nets.loss_ignoring_b(params, X), params, [])
    assert_untouched(params, before)


def test_taps_in_a_loss_returning_grads_forward_exact_and_gradient_taps_apart():
    net = nets.TappedNet()
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    run = exact_gradients(lambda: net.loss(X, y), net.params, [net.loss], inputs=[X, y])
    with taps.recording() as log:
        _, grads = net.loss(X, y)
    assert_close(run.grads, grads)
    assert [name for name, _ in log] == ["h", "h", "scores"]
    assert [name for name, _ in log.grad_taps] == ["scores", "h", "h"]
    assert len(log.sites) == 3 and len(log.grad_sites) == 3
    recorded = taps.grad_taps(log)
    assert set(recorded) == {"scores", "h[0]", "h[1]"} == set(taps.grad_sites(log))
    assert set(run.taps) == set(taps.named(list(log))) == set(run.tap_grads)
    np.testing.assert_allclose(run.taps["h[1]"], taps.named(list(log))["h[1]"], atol=EXACT)
    np.testing.assert_allclose(run.tap_grads["scores"], recorded["scores"], atol=EXACT)
    # the backward loop runs last step first: its first gradient tap is the last forward one's
    np.testing.assert_allclose(run.tap_grads["h[1]"], recorded["h[0]"], atol=EXACT)
    np.testing.assert_allclose(run.tap_grads["h[0]"], recorded["h[1]"], atol=EXACT)


def test_a_layer_input_given_as_a_parameter_gets_its_vector_jacobian_product():
    rng = np.random.default_rng(7)
    layer = Affine(rng.normal(size=(3, 2)), rng.normal(size=2))
    x, upstream = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    params = {"W": layer.W, "b": layer.b, "x": x}
    before = snapshot(params)
    run = exact_gradients(
        lambda: (layer.forward(x) * upstream).sum(), params, [layer], inputs=[x, upstream]
    )
    layer.forward(x)
    assert_close(run.grads, {"x": layer.backward(upstream), "W": layer.dW, "b": layer.db})
    assert_untouched(params, before)


def test_a_value_taken_out_of_the_graph_by_float_is_noted_when_the_loss_still_runs():
    params, X = small_setup()
    run = exact_gradients(
        lambda: nets.loss_scaled_by_a_float(params, X), params, [nets.loss_scaled_by_a_float]
    )
    line = line_number("float(np", nets.loss_scaled_by_a_float)
    assert len(run.notes) == 1 and f"float() at tests/autodiff_nets.py:{line}" in run.notes[0]


def test_user_modules_reach_a_layer_inside_an_adapter_and_a_closure():
    import gradparity as gp

    layer = Affine(np.ones((3, 2)), np.zeros(2))
    adapted = gp.wrap(layer, params=lambda a: {"W": a.W, "b": a.b}, grads=lambda a: {})
    assert type(layer).__module__ in {m.__name__ for m in user_modules([adapted])}
    namespace = {"__name__": "json"}  # a closure made in a library module: only its cell leads
    exec("def make(layer):\n    return lambda: layer.forward(None)\n", namespace)
    found = {m.__name__ for m in user_modules([namespace["make"](layer)])}
    assert found == {type(layer).__module__}


@pytest.mark.parametrize("make", [lambda: ours.Linear(3, 4), ours.ReLU, ours.Sigmoid, ours.Tanh])
def test_ours_layers_run_on_tensors_astype_copy_false_and_numpy_typing_included(make):
    layer = make()
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 3))
    upstream = rng.normal(size=layer.forward(x).shape)
    params = {**layer.params, "x": x}
    run = exact_gradients(
        lambda: (layer.forward(x) * upstream).sum(), params, [layer], inputs=[x, upstream]
    )
    layer.forward(x)
    dx = layer.backward(upstream)
    assert_close(run.grads, {"x": dx, **layer.grads})
    assert ours_layers.np is np and ours_layers.npt.__name__ == "numpy.typing"


def test_the_tensor_module_is_put_back_after_a_run_and_after_an_error():
    import inspect as inspect_module

    import torch._numpy as tnp
    from torch._numpy import _normalizations

    before = dict(vars(tnp.ndarray))
    params, X = small_setup()
    exact_gradients(lambda: nets.loss_with_relu_at_zero({**params, "v": 1.0}, X), params, [])
    with pytest.raises(NotOnTensors):
        exact_gradients(lambda: nets.loss_that_raises(params, X), params, [nets.loss_that_raises])
    assert dict(vars(tnp.ndarray)) == before
    assert _normalizations.inspect is inspect_module


def test_np_add_at_in_the_backward_of_a_loss_returning_grads_runs_on_tensors():
    rng = np.random.default_rng(9)
    params = {"E": rng.normal(size=(5, 3)), "W": rng.normal(size=(3, 2))}
    words, target = np.array([[0, 2, 2], [4, 0, 1]]), rng.normal(size=(2, 2))
    run = exact_gradients(
        lambda: nets.embedding_loss(params, words, target),
        params,
        [nets.embedding_loss],
        inputs=[words, target],
    )
    assert_close(run.grads, nets.embedding_loss(params, words, target)[1])


def test_add_at_on_tensor_arrays_adds_repeated_indices_up_as_numpy_does():
    import torch
    import torch._numpy as tnp

    from gradparity.sides.tensor_numpy import add_at

    rng = np.random.default_rng(10)
    values = rng.normal(size=(4, 3))
    for indices in [np.array([0, 2, 2, 0]), (slice(None), np.array([1, 1, 0]))]:
        shaped = values if isinstance(indices, np.ndarray) else values[:, :3]
        expected = np.zeros((4, 3))
        np.add.at(expected, indices, shaped)
        target = tnp.asarray(torch.zeros((4, 3), dtype=torch.float64))
        add_at(target, indices, tnp.asarray(torch.tensor(shaped)))
        np.testing.assert_allclose(target.tensor.numpy(), expected, atol=EXACT)


def test_a_loss_returned_as_float_of_its_value_keeps_its_graph():
    params, x = small_setup()
    run = exact_gradients(lambda: nets.loss_as_float(params, x), params, [nets.loss_as_float])
    total = float(np.sum(x @ params["W"] + params["b"]))
    expected_w = 2 * total * np.broadcast_to(x.sum(axis=0)[:, None], params["W"].shape)
    assert_close(run.grads, {"W": expected_w, "b": 2 * total * x.shape[0] * np.ones(2)})
    assert run.loss == nets.loss_as_float(params, x)


def test_code_loaded_from_a_file_without_registering_its_module_is_differentiated_exactly(
    tmp_path,
):
    """``importlib.util.module_from_spec`` + ``exec_module`` leaves the module out of
    ``sys.modules``: its objects and its ``np`` are found through their globals all the same."""
    import importlib.util
    import sys

    path = tmp_path / "unregistered_net.py"
    path.write_text(
        "import numpy as np\n\n"
        "class Dense:\n"
        "    def __init__(self, W):\n"
        "        self.W = W\n\n"
        "    def loss(self, x):\n"
        "        return np.sum(np.tanh(x @ self.W) ** 2)\n"
    )
    spec = importlib.util.spec_from_file_location("unregistered_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "unregistered_net" not in sys.modules
    W, x = np.random.default_rng(0).standard_normal((3, 2)), np.ones((4, 3))
    layer = module.Dense(W)
    run = exact_gradients(lambda: layer.loss(x), {"W": W}, [layer], inputs=[x])
    z = np.tanh(x @ W)
    assert_close(run.grads, {"W": x.T @ (2 * z * (1 - z**2))})
    assert layer.W is W and module.np is np
