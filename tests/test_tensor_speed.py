"""The autodiff run's fast paths through torch._numpy (issue 13, item 7): each gives exactly
what the tensor module's general path gives (values, shapes, gradients), and hands every case
it does not take to that path, errors included."""

from __future__ import annotations

import numpy as np
import pytest

from gradparity.sides.autodiff import unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason="torch._numpy unavailable")

torch = pytest.importorskip("torch")
tnp = pytest.importorskip("torch._numpy")
speed = pytest.importorskip("gradparity.sides.tensor_speed")


def leaf(shape: tuple[int, ...], seed: int = 0) -> object:
    values = np.random.default_rng(seed).normal(size=shape)
    values[0, ...] = values[0, ...].max()  # ties: max and min share their gradient among them
    return tnp.asarray(torch.tensor(values, requires_grad=True))


def outcome(call: object, *args: object, **kwargs: object) -> tuple:
    """(values, shape, gradient of a weighted sum) of ``call``, or (error type, message)."""
    try:
        tensor = call(*args, **kwargs).tensor
        weights = torch.arange(tensor.numel(), dtype=tensor.dtype).reshape(tensor.shape)
        (grad,) = torch.autograd.grad((tensor * weights).sum(), [args[0].tensor])
    except Exception as exc:  # the general path's own refusal must be met by the fast path
        return type(exc), str(exc)
    return tensor.detach().numpy().tolist(), tuple(tensor.shape), grad.numpy().tolist()


CALLS = [
    ((), {}),
    ((0,), {}),
    ((-1,), {}),
    (((0, 2),), {}),
    (((2, -3),), {"keepdims": True}),
    ((), {"axis": 1}),
    ((), {"axis": None, "keepdims": True}),
    ((), {"axis": (1,), "keepdims": False}),
    # the general path's: an empty tuple, a NumPy integer, repeated, out of range, given twice
    (((),), {}),
    ((np.int64(1),), {}),
    (((1, 1),), {}),
    ((3,), {}),
    ((0,), {"axis": 1}),
    ((), {"axis": 0, "dtype": np.float64}),
]


@pytest.mark.parametrize("name", speed.REDUCTIONS)
@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_a_fast_reduction_is_the_general_one(name, args, kwargs):
    general = getattr(tnp, name)
    fast = speed.fast_reduction(name, general)
    a = leaf((3, 2, 4))
    assert outcome(fast, a, *args, **kwargs) == outcome(general, a, *args, **kwargs)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_fast_reduction_methods_are_installed_for_the_run_only(name):
    a = leaf((2, 3))
    original = tnp.ndarray.__dict__[name]
    with speed.fast_paths():
        assert tnp.ndarray.__dict__[name] is not original
        inside = outcome(lambda x, **k: getattr(x, name)(**k), a, axis=1, keepdims=True)
    assert tnp.ndarray.__dict__[name] is original
    assert inside == outcome(lambda x, **k: getattr(x, name)(**k), a, axis=1, keepdims=True)


@pytest.mark.parametrize("operator", ["+=", "-=", "*=", "/="])
@pytest.mark.parametrize("other", ["array", "row", "number", "integers", "wider"])
def test_an_in_place_operator_is_the_general_one(operator, other):
    def run(fast: bool) -> tuple:
        x = leaf((3, 4), seed=1)
        operands = {
            "array": leaf((3, 4), seed=2),
            "row": leaf((1, 4), seed=3),
            "number": 1.5,
            "integers": tnp.asarray(np.arange(1, 5)),
            "wider": leaf((2, 3, 4), seed=4),  # a result of another shape: refused
        }

        def apply(x: object) -> object:
            a = x * 1.0  # not the leaf itself: autograd allows in-place on it
            namespace = {"a": a, "b": operands[other]}
            exec(f"a {operator} b", namespace)
            assert namespace["a"] is a
            return a

        if not fast:
            return outcome(apply, x)
        with speed.fast_paths():
            return outcome(apply, x)

    assert run(fast=True) == run(fast=False)


def positive_leaf(shape: tuple[int, ...], seed: int) -> object:
    values = np.random.default_rng(seed).uniform(0.5, 2.0, size=shape)
    return tnp.asarray(torch.tensor(values, requires_grad=True))


@pytest.mark.parametrize("name", speed.UNARY_UFUNCS)
@pytest.mark.parametrize("operand", ["float64", "0-d", "integers", "list"])
def test_a_fast_unary_ufunc_is_the_general_one(name, operand):
    general = getattr(tnp, name)
    fast = speed.fast_functions()[name]
    a = {
        "float64": positive_leaf((3, 2), 0),
        "0-d": positive_leaf((), 1),
        "integers": tnp.asarray(np.arange(1, 4)),
        "list": [1.0, 2.0],
    }[operand]
    if operand in ("integers", "list"):  # no gradient to compare: the values and dtype
        assert fast(a).tensor.tolist() == general(a).tensor.tolist()
        assert fast(a).dtype == general(a).dtype
    else:
        assert outcome(fast, a) == outcome(general, a)


@pytest.mark.parametrize("name", [*speed.BINARY_UFUNCS, "matmul"])
@pytest.mark.parametrize("shapes", [((3, 3), (3, 3)), ((2, 3, 3), (3, 3)), ((3,), (3, 3))])
def test_a_fast_binary_ufunc_is_the_general_one(name, shapes):
    general = getattr(tnp, name)
    fast = speed.fast_functions()[name]
    a, b = positive_leaf(shapes[0], 2), positive_leaf(shapes[1], 3)
    assert outcome(fast, a, b) == outcome(general, a, b)
    # a number, a dtype, out=: the general path's (with its refusals)
    assert outcome(fast, a, 2.0) == outcome(general, a, 2.0)
    assert outcome(fast, a, b, dtype=np.float32) == outcome(general, a, b, dtype=np.float32)


def test_fast_matmul_and_transpose_methods_are_the_general_ones():
    def both(call: object, *arrays: object) -> tuple[tuple, tuple]:
        general = outcome(call, *arrays)
        with speed.fast_paths():
            fast = outcome(call, *arrays)
        return fast, general

    for shape in [(), (3,), (2, 3), (2, 3, 4)]:
        fast, general = both(lambda a: a.T, positive_leaf(shape, 4))
        assert fast == general
    a, b = positive_leaf((2, 3), 5), positive_leaf((3, 4), 6)
    fast, general = both(lambda a, b: a @ b, a, b)
    assert fast == general
    fast, general = both(lambda a: a @ tnp.asarray(np.ones((3, 2), dtype=np.int64)), a)
    assert fast == general


INDICES = {
    "rows and classes": lambda: (tnp.arange(4), np.array([0, 2, 1, 2])),
    "tensor rows": lambda: tnp.asarray(np.array([3, 0, 0])),
    "negative rows": lambda: np.array([-1, 0]),
    "2-d rows": lambda: tnp.asarray(np.array([[0, 1], [2, 3]])),
    "tensor mask": lambda: tnp.asarray(np.array([True, False, True, False])),
    "numpy mask": lambda: np.array([[True, False, True]] * 4),
    "out of range": lambda: (np.array([0, 9]),),
    "int32 (general)": lambda: np.array([1, 2], dtype=np.int32),
    "0-d (general)": lambda: (tnp.asarray(np.array([1, 2])), tnp.asarray(np.int64(1))),
    "with a slice (general)": lambda: (slice(None), np.array([0, 2])),
}


@pytest.mark.parametrize("index", INDICES)
def test_fast_indexing_by_arrays_is_the_general_one(index):
    a = positive_leaf((4, 3), 7)
    general = outcome(lambda a: a[INDICES[index]()], a)
    with speed.fast_paths():
        fast = outcome(lambda a: a[INDICES[index]()], a)
    assert fast == general


def test_fast_negation_is_the_general_one():
    a = positive_leaf((2, 3), 8)
    general = outcome(lambda a: -a, a)
    with speed.fast_paths():
        assert outcome(lambda a: -a, a) == general
        assert (-tnp.asarray(np.array([1, 2]))).tensor.tolist() == [-1, -2]


BASIC = {
    "windows": (slice(None), slice(1, 3)),
    "a row": 2,
    "row and new axis": (1, None),
    "step 2": (slice(0, None, 2),),
    "reversed (general)": (slice(None, None, -1),),
    "numpy integer bound (general)": (slice(np.int64(1), 3),),
    "zero step (general)": (slice(None, None, 0),),
}


@pytest.mark.parametrize("index", BASIC)
def test_fast_basic_indexing_is_the_general_one(index):
    a = positive_leaf((4, 3), 9)
    general = outcome(lambda a: a[BASIC[index]], a)
    with speed.fast_paths():
        fast = outcome(lambda a: a[BASIC[index]], a)
    assert fast == general
