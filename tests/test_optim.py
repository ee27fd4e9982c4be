"""``gradparity.ours`` optimisers against ``torch.optim`` step by step.

A small float64 MLP and its torch mirror see identical batches; after every step the parameters
and the optimiser state (momentum_buffer, step, exp_avg, exp_avg_sq) must agree to round-off.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradparity.ours import SoftmaxCrossEntropy, mlp
from gradparity.ours.optim import SGD, Adam, Optimizer
from gradparity.reference import mirror

RTOL, ATOL = 1e-10, 1e-14
SIZES = (5, 4, 3)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: torch's thread pool costs more than it saves (3x here on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batches(n_steps: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n_steps):
        yield rng.normal(size=(8, SIZES[0])), rng.integers(0, SIZES[-1], size=8)


def _torch_param(ref: nn.Module, name: str, key: str) -> torch.nn.Parameter:
    module = getattr(ref, name)
    return {"W": module.weight, "b": module.bias}[key]


def _as_ours_layout(key: str, tensor: torch.Tensor) -> np.ndarray:
    """torch weight (out, in) -> ours W (in, out); biases unchanged."""
    array = tensor.detach().numpy()
    return array.T if key == "W" else array


def _assert_same(model, ref, ours_opt: Optimizer, torch_opt, step: int) -> None:
    for name, key, value, _ in model.parameters():
        tparam = _torch_param(ref, name, key)
        where = f"step {step}, {name}.{key}"
        np.testing.assert_allclose(
            value, _as_ours_layout(key, tparam), rtol=RTOL, atol=ATOL, err_msg=where
        )
        ours_state = ours_opt.state.get((name, key), {})
        torch_state = torch_opt.state.get(tparam, {})
        torch_names = {k for k, v in torch_state.items() if v is not None}
        assert set(ours_state) == torch_names, where
        for state_name, torch_value in torch_state.items():
            if torch_value is None:
                continue
            if state_name == "step":
                assert isinstance(ours_state["step"], int), where
                assert ours_state["step"] == int(torch_value.item()), where
                continue
            assert ours_state[state_name].dtype == value.dtype, where
            np.testing.assert_allclose(
                ours_state[state_name],
                _as_ours_layout(key, torch_value),
                rtol=RTOL,
                atol=ATOL,
                err_msg=f"{where} state {state_name}",
            )


def _run_parity(
    ours_cls, torch_cls, kwargs: dict, n_steps: int = 10, seed: int = 0, same_grads=False
) -> None:
    """Train both sides on the same batches, comparing after every step. ``same_grads``: hand
    torch ours' gradients instead of its own backward, so only the optimiser maths is compared
    (needed where an update divides by |grad|, e.g. beta2 = 0, which magnifies the round-off of
    tiny gradient entries)."""
    model = mlp(SIZES, seed=seed)
    ref = mirror(model)
    ours_opt = ours_cls(model, **kwargs)
    torch_opt = torch_cls(ref.parameters(), foreach=False, **kwargs)
    loss, torch_loss = SoftmaxCrossEntropy(), nn.CrossEntropyLoss()
    for step, (x, t) in enumerate(_batches(n_steps, seed), start=1):
        ours_opt.zero_grad()
        loss.forward(model.forward(x), t)
        model.backward(loss.backward())
        ours_opt.step()

        torch_opt.zero_grad()
        if same_grads:
            for name, key, _, grad in model.parameters():
                tparam = _torch_param(ref, name, key)
                tparam.grad = torch.from_numpy(np.ascontiguousarray(grad.T if key == "W" else grad))
        else:
            torch_loss(ref(torch.from_numpy(x)), torch.from_numpy(t)).backward()
        torch_opt.step()
        _assert_same(model, ref, ours_opt, torch_opt, step)


SGD_CASES = {
    "plain": {"lr": 0.1},
    "momentum": {"lr": 0.05, "momentum": 0.9},
    "dampening": {"lr": 0.05, "momentum": 0.8, "dampening": 0.3},
    "nesterov": {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    "weight_decay": {"lr": 0.1, "weight_decay": 0.01},
    "momentum_weight_decay": {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.1},
    "maximize": {"lr": 0.05, "momentum": 0.9, "maximize": True},
}

ADAM_CASES = {
    "default": {},
    "lr": {"lr": 0.01},
    "weight_decay": {"lr": 0.01, "weight_decay": 0.05},
    "betas": {"lr": 0.01, "betas": (0.5, 0.9)},
    "small_betas": {"lr": 0.01, "betas": (0.2, 0.3)},
    "eps": {"lr": 0.01, "eps": 1e-3},
    "maximize": {"lr": 0.01, "maximize": True},
}


@pytest.mark.parametrize("kwargs", SGD_CASES.values(), ids=SGD_CASES.keys())
def test_sgd_matches_torch(kwargs):
    _run_parity(SGD, torch.optim.SGD, kwargs, n_steps=12)


@pytest.mark.parametrize("kwargs", ADAM_CASES.values(), ids=ADAM_CASES.keys())
def test_adam_matches_torch(kwargs):
    _run_parity(Adam, torch.optim.Adam, kwargs, n_steps=12)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    lr=st.floats(1e-4, 0.5),
    momentum=st.sampled_from([0.0, 0.3, 0.9, 0.99]),
    dampening=st.sampled_from([0.0, 0.1, 0.5]),
    weight_decay=st.sampled_from([0.0, 1e-3, 0.1]),
    nesterov=st.booleans(),
    maximize=st.booleans(),
    n_steps=st.integers(5, 15),
    seed=st.integers(0, 2**16),
)
def test_sgd_matches_torch_any_hyperparameters(
    lr, momentum, dampening, weight_decay, nesterov, maximize, n_steps, seed
):
    if nesterov and (momentum == 0 or dampening != 0):
        nesterov = False
    kwargs = {
        "lr": lr,
        "momentum": momentum,
        "dampening": dampening,
        "weight_decay": weight_decay,
        "nesterov": nesterov,
        "maximize": maximize,
    }
    _run_parity(SGD, torch.optim.SGD, kwargs, n_steps=n_steps, seed=seed)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    lr=st.floats(1e-4, 0.1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    eps=st.sampled_from([1e-8, 1e-6, 1e-3, 0.1]),
    weight_decay=st.sampled_from([0.0, 1e-3, 0.1]),
    maximize=st.booleans(),
    n_steps=st.integers(5, 15),
    seed=st.integers(0, 2**16),
)
def test_adam_matches_torch_any_hyperparameters(
    lr, beta1, beta2, eps, weight_decay, maximize, n_steps, seed
):
    kwargs = {
        "lr": lr,
        "betas": (beta1, beta2),
        "eps": eps,
        "weight_decay": weight_decay,
        "maximize": maximize,
    }
    _run_parity(Adam, torch.optim.Adam, kwargs, n_steps=n_steps, seed=seed)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    lr=st.floats(1e-4, 0.1),
    beta1=st.floats(0.0, 0.999),
    beta2=st.floats(0.0, 0.9999),
    eps=st.sampled_from([0.0, 1e-12, 1e-8, 0.1]),
    weight_decay=st.sampled_from([0.0, 0.1]),
    maximize=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_adam_extreme_betas_on_identical_gradients(
    lr, beta1, beta2, eps, weight_decay, maximize, seed
):
    kwargs = {
        "lr": lr,
        "betas": (beta1, beta2),
        "eps": eps,
        "weight_decay": weight_decay,
        "maximize": maximize,
    }
    _run_parity(Adam, torch.optim.Adam, kwargs, n_steps=8, seed=seed, same_grads=True)


def _trained_step(model, opt, x, t) -> None:
    loss = SoftmaxCrossEntropy()
    opt.zero_grad()
    loss.forward(model.forward(x), t)
    model.backward(loss.backward())
    opt.step()


@pytest.mark.parametrize(
    "make",
    [
        lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda m: Adam(m, lr=0.01, weight_decay=0.01),
    ],
    ids=["sgd", "adam"],
)
def test_float32_stays_float32(make):
    model = mlp(SIZES, seed=1)
    for _, layer in model.named_layers():
        for key in layer.params:
            layer.params[key] = layer.params[key].astype(np.float32)
    # A float64 twin from the same (float32) starting values: what the steps should give.
    twin = copy.deepcopy(model)
    for _, layer in twin.named_layers():
        for key in layer.params:
            layer.params[key] = layer.params[key].astype(np.float64)
    opt, twin_opt = make(model), make(twin)
    for x, t in _batches(5, seed=1):
        _trained_step(model, opt, x.astype(np.float32), t)
        _trained_step(twin, twin_opt, x.astype(np.float32).astype(np.float64), t)
    for (name, key, value, _), (_, _, exact, _) in zip(model.parameters(), twin.parameters()):
        assert value.dtype == np.float32, (name, key)
        # five steps of float32 round-off (eps 1.2e-7) on values of order 1
        np.testing.assert_allclose(value, exact, rtol=1e-4, atol=1e-5, err_msg=f"{name}.{key}")
        assert not np.array_equal(value, mlp(SIZES, seed=1)[name].params[key])  # it did train
        for state_value in opt.state[(name, key)].values():
            if isinstance(state_value, np.ndarray):
                assert state_value.dtype == np.float32, (name, key)


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_step_updates_in_place_and_zero_grad_zeroes_in_place(cls):
    model = mlp(SIZES, seed=2)
    opt = cls(model)
    before = {(n, k): (v, v.copy()) for n, k, v, _ in model.parameters()}
    x, t = next(_batches(1, seed=2))
    _trained_step(model, opt, x, t)
    for name, key, value, grad in model.parameters():
        obj, old = before[(name, key)]
        assert value is obj
        assert not np.array_equal(value, old)
        assert grad is not None and np.any(grad != 0)
    grads = [(grad, id(grad)) for _, _, _, grad in model.parameters()]
    opt.zero_grad()
    for (grad, ident), (_, _, _, now) in zip(grads, model.parameters()):
        assert id(now) == ident and now is grad
        assert np.all(now == 0)


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_params_without_grad_are_skipped(cls):
    model = mlp(SIZES, seed=3)
    before = [v.copy() for _, _, v, _ in model.parameters()]
    opt = cls(model)
    opt.zero_grad()  # no gradients yet: a no-op
    opt.step()
    for old, (_, _, now, grad) in zip(before, model.parameters()):
        assert grad is None
        np.testing.assert_array_equal(now, old)
    assert opt.state == {}


def test_sgd_without_momentum_keeps_no_state_and_positional_lr_works():
    model = mlp(SIZES, seed=4)
    opt = SGD(model, 0.5)
    assert opt.lr == 0.5
    x, t = next(_batches(1, seed=4))
    _trained_step(model, opt, x, t)
    assert opt.state == {}


def test_state_arrays_are_not_gradient_arrays():
    """The first momentum buffer is a copy: zeroing the gradient must not clear it."""
    model = mlp(SIZES, seed=5)
    opt = SGD(model, lr=0.1, momentum=0.9)
    x, t = next(_batches(1, seed=5))
    _trained_step(model, opt, x, t)
    opt.zero_grad()
    for name, key, _, grad in model.parameters():
        buf = opt.state[(name, key)]["momentum_buffer"]
        assert buf is not grad and np.any(buf != 0)


def test_accepts_list_of_named_layers():
    model = mlp(SIZES, seed=6)
    layers = list(model.named_layers())
    opt = Adam(layers, lr=0.01)
    x, t = next(_batches(1, seed=6))
    _trained_step(model, opt, x, t)
    assert set(opt.state) == {(n, k) for n, k, _, _ in model.parameters()}
    assert all(s["step"] == 1 for s in opt.state.values())


def test_repr():
    model = mlp(SIZES)
    assert repr(SGD(model, lr=0.1, momentum=0.9)) == (
        "SGD(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)"
    )
    assert repr(Adam(model)).startswith("Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08")


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SGD, {"lr": 0.0}, "lr must be positive"),
        (SGD, {"lr": -0.1}, "lr must be positive"),
        (SGD, {"lr": float("nan")}, "lr must be positive"),
        (SGD, {"momentum": -0.5}, "momentum"),
        (SGD, {"weight_decay": -1e-3}, "weight_decay"),
        (SGD, {"nesterov": True}, "nesterov"),
        (SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "nesterov"),
        (Adam, {"lr": 0.0}, "lr must be positive"),
        (Adam, {"betas": (1.0, 0.999)}, r"betas\[0\]"),
        (Adam, {"betas": (0.9, -0.1)}, r"betas\[1\]"),
        (Adam, {"eps": -1e-8}, "eps"),
        (Adam, {"weight_decay": -0.1}, "weight_decay"),
        (Adam, {"amsgrad": True}, "amsgrad"),
    ],
)
def test_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        cls(mlp(SIZES), **kwargs)
    assert "\n" not in str(info.value)
