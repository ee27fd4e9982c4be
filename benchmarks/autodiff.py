"""What the autodiff reference costs (issue 13, item 7), against the user's own call and
against central differences of the same loss, on three networks:

- function: the function-corpus network (``corpus/function_bugs.py``): a params dict and
  ``forward_backward(params, x, y) -> (loss, grads)``;
- layers: the layer-corpus base network (``corpus/layer_bugs.py``: fc1 - sigmoid - fc2 -
  softmax cross-entropy): ours' forward and backward; the autodiff reference is each layer's
  vector-Jacobian product of its own forward (engine per layer, as ``compare(model,
  "autodiff", ...)`` asks it), central differences of that layer's forward where its code
  cannot run on tensors (named in the output: the tool falls back the same way);
- conv: a conv net written with naive loops (``corpus/naive_conv.py``) whose ``loss(X, y)``
  returns ``(loss, grads)``, the reference differentiating that call (its backward is run on
  tensors too); conv loss_fn: the same, given ``loss_fn`` (``net.cost``, the forward alone).

For each: the user's forward+backward call, the autodiff reference (``exact_gradients``, as
the front end calls it), and central differences of the loss (every parameter entry, two
evaluations each: ``evidence.central_difference.full_gradient``). Each time is the median of
REPEATS runs after one warm-up, all measured in this run with one thread (torch and NumPy's
BLAS); the two ratios are printed against their targets (autodiff <= 10x the user's call;
>= 10x faster than central differences). For the two small MLPs, "floor" is the same
gradients written by hand in torch (the forward on leaf tensors, then ``autograd.grad``; per
layer for the layered net, as its reference is): what torch's per-operation cost alone
comes to, over the user's call.

Run: .venv/bin/python benchmarks/autodiff.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from gradparity.corpus import function_bugs, layer_bugs, naive_conv
from gradparity.evidence.central_difference import full_gradient, step_size
from gradparity.sides.autodiff import NotOnTensors, exact_gradients

REPEATS = 5
TARGET_OF_USER = 10.0  # autodiff at most this many times the user's call
TARGET_VS_NUMERIC = 10.0  # autodiff at least this many times faster than central differences


def median_seconds(call: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median wall time of ``call`` over ``repeats`` runs, after one warm-up run."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def central_differences(loss: Callable[[], float], arrays: Mapping[str, np.ndarray]) -> None:
    """The whole numeric gradient of ``loss()`` in every array (moved in place, put back)."""
    for array in arrays.values():
        base = array.copy()

        def moved(step: np.ndarray, array: np.ndarray = array, base: np.ndarray = base) -> float:
            array[...] = base + step
            try:
                return float(loss())
            finally:
                array[...] = base

        full_gradient(moved, base.shape, step_size(base))


# --- the three networks: (user's call, autodiff reference, central differences, note) --------


Network = tuple[Callable, Callable, Callable, Callable | None, str]


def function_network() -> Network:
    params = function_bugs.make_params(0)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, function_bugs.SIZES[0])), rng.integers(0, 3, size=6)

    def user() -> object:
        return function_bugs.forward_backward(params, x, y)

    def autodiff() -> object:
        return exact_gradients(user, params, [user], inputs=[x], modules=[function_bugs])

    def floor() -> object:
        p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        h = torch.from_numpy(x)
        for i in (1, 2):
            h = torch.sigmoid(h @ p[f"W{i}"] + p[f"b{i}"])
        loss = torch.nn.functional.cross_entropy(h @ p["W3"] + p["b3"], torch.from_numpy(y))
        return torch.autograd.grad(loss, list(p.values()))

    numeric = lambda: central_differences(lambda: user()[0], params)  # noqa: E731
    return user, autodiff, numeric, floor, ""


def layer_network() -> Network:
    model, loss, x, target = layer_bugs.base_network(0)
    layers = list(model.named_layers())
    rng = np.random.default_rng(2)

    def user() -> object:
        value = loss.forward(model.forward(x), target)
        model.backward(loss.backward())
        return value

    # each layer's input and a random upstream gradient, as the isolated check uses them
    inputs, upstreams = [], []
    h = x
    for _, layer in layers:
        inputs.append(h.copy())
        h = layer.forward(h)
        upstreams.append(rng.standard_normal(h.shape))
    scores = h.copy()
    fell_back: dict[str, None] = {}  # the layers judged by central differences, in order

    def vjp(layer: object, x_in: np.ndarray, up: np.ndarray, name: str) -> None:
        arrays = {**layer.params, "x": x_in}
        try:
            exact_gradients(lambda: (layer.forward(x_in) * up).sum(), arrays, [layer], inputs=[up])
        except NotOnTensors:
            fell_back[name] = None
            central_differences(lambda: float((layer.forward(x_in) * up).sum()), arrays)

    def autodiff() -> None:
        for (name, layer), x_in, up in zip(layers, inputs, upstreams):
            vjp(layer, x_in, up, name)
        try:
            exact_gradients(lambda: loss.forward(scores, target), {"x": scores}, [loss])
        except NotOnTensors:
            fell_back["loss"] = None
            central_differences(lambda: loss.forward(scores, target), {"x": scores})

    arrays = {f"{n}.{k}": v for n, layer in layers for k, v in layer.params.items()}

    def numeric() -> None:
        central_differences(lambda: loss.forward(model.forward(x), target), arrays)

    def floor() -> None:
        target_t = torch.from_numpy(target)
        for (_, layer), x_in, up in zip(layers, inputs, upstreams):
            h = torch.tensor(x_in, requires_grad=True)
            p = {k: torch.tensor(v, requires_grad=True) for k, v in layer.params.items()}
            out = h @ p["W"] + p["b"] if p else torch.sigmoid(h)
            torch.autograd.grad((out * torch.from_numpy(up)).sum(), [h, *p.values()])
        s = torch.tensor(scores, requires_grad=True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(s, target_t), [s])

    autodiff()  # names the layers that fall back before the note is made
    note = f"central differences for {', '.join(fell_back)} (not on tensors)" if fell_back else ""
    return user, autodiff, numeric, floor, note


def conv_network(given_loss_fn: bool = False) -> Network:
    net = naive_conv.ThreeLayerConvNet()
    X, y = naive_conv.batch()

    def user() -> object:
        return net.loss(X, y)

    reference = (lambda: net.cost(X, y)) if given_loss_fn else user

    def autodiff() -> object:
        return exact_gradients(
            reference, net.params, [net.loss, net.cost], inputs=[X], modules=[naive_conv]
        )

    numeric = lambda: central_differences(lambda: net.cost(X, y), net.params)  # noqa: E731
    return user, autodiff, numeric, None, ""


NETWORKS = {
    "function": function_network,
    "layers": layer_network,
    "conv": conv_network,
    "conv loss_fn": lambda: conv_network(given_loss_fn=True),
}


def main() -> None:
    torch.set_num_threads(1)
    with threadpool_limits(1):  # NumPy's BLAS too: one thread for every side
        print(f"threads: torch {torch.get_num_threads()}, NumPy BLAS 1; median of {REPEATS}")
        measure()


def measure() -> None:
    """One line per network: the three times and the two ratios against their targets."""
    print(
        f"{'network':<13} {'user s':>9} {'autodiff s':>11} {'numeric s':>10} "
        f"{'autodiff/user':>14} {'numeric/autodiff':>17} {'floor/user':>11}"
    )
    for name, build in NETWORKS.items():
        user, autodiff, numeric, floor, note = build()
        t_user, t_ad, t_num = (median_seconds(c) for c in (user, autodiff, numeric))
        of_user, faster = t_ad / t_user, t_num / t_ad
        floor_ratio = f"{median_seconds(floor) / t_user:>10.1f}x" if floor else f"{'-':>11}"
        verdict = (
            f"{'ok' if of_user <= TARGET_OF_USER else 'OVER'} (<= {TARGET_OF_USER:g}), "
            f"{'ok' if faster >= TARGET_VS_NUMERIC else 'UNDER'} (>= {TARGET_VS_NUMERIC:g})"
        )
        print(
            f"{name:<13} {t_user:>9.4f} {t_ad:>11.4f} {t_num:>10.4f} {of_user:>13.1f}x "
            f"{faster:>16.1f}x {floor_ratio}  {verdict}" + (f"; {note}" if note else "")
        )


if __name__ == "__main__":
    main()
