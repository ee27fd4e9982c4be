"""compare_function set-ups for the textbook network (tests/textbook_network.py), and its
mutants: the same backprop with one line changed, as a student would get it wrong.

The factories (``correct``, ``wrong_hidden_derivative``, ``transposed_output_weight``) serve
``gradparity check --function tests/textbook_setup.py:FACTORY``.
"""

from __future__ import annotations

import inspect
import itertools
import textwrap

import numpy as np
import textbook_network
import torch
from textbook_network import Network, sigmoid

SIZES = [4, 5, 5, 5]  # w[1] and w[2] are square
TAP_MAP = {
    "z[0]": "0", "a[0]": "1", "z[1]": "2", "a[1]": "3", "z[2]": "4", "a[2]": "5",
    "delta[0]": "grad:4", "delta[1]": "grad:2", "delta[2]": "grad:0",
}  # fmt: skip


def mutant(old: str, new: str) -> type[Network]:
    """Network with one line of its backprop changed."""
    source = textwrap.dedent(inspect.getsource(Network.backprop))
    if source.count(old) != 1:
        raise ValueError(f"backprop has no single line {old!r}")
    namespace = dict(vars(textbook_network))
    exec(compile(source.replace(old, new), "mutant_backprop", "exec"), namespace)
    return type("Mutant", (Network,), {"backprop": namespace["backprop"]})


TRANSPOSED_OUTPUT_WEIGHT = mutant(
    "nabla_w[-1] = delta @ activations[-2].T", "nabla_w[-1] = (delta @ activations[-2].T).T"
)
HIDDEN_DERIVATIVE = mutant("sp = sigmoid_prime(z)", "sp = sigmoid(z)")


def quadratic_cost(params, x, y) -> float:
    """0.5 * ||a - y||^2 computed from ``params`` ({"b": biases, "w": weights})."""
    a = x
    for b, w in zip(params["b"], params["w"]):
        a = sigmoid(w @ a + b)
    return 0.5 * float(np.sum((a - y) ** 2))


def torch_twin() -> torch.nn.Module:
    layers = []
    for n_in, n_out in itertools.pairwise(SIZES):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers)


def setup(network_class=Network, seed: int = 0, numeric: bool = False, **extra) -> dict:
    """compare_function arguments: one column example, torch twin (or central differences)."""
    net = network_class(SIZES, seed=seed)
    rng = np.random.default_rng(seed + 100)
    x, y = rng.normal(size=(SIZES[0], 1)), np.eye(SIZES[-1])[[rng.integers(SIZES[-1])]].T
    kwargs = {"grads": net.backprop, "params": {"b": net.biases, "w": net.weights}, "x": x,
              "target": y}  # fmt: skip
    if numeric:
        return {**kwargs, "reference": None, "loss_fn": quadratic_cost, **extra}
    return {
        **kwargs,
        "reference": torch_twin(),
        "reference_loss": lambda out, t: 0.5 * ((out - t) ** 2).sum(),
        "reference_x": x.T,
        "reference_target": y.T,
        "tap_map": dict(TAP_MAP),
        **extra,
    }


def correct() -> dict:
    return setup()


def wrong_hidden_derivative() -> dict:
    return setup(HIDDEN_DERIVATIVE)


def transposed_output_weight() -> dict:
    return setup(TRANSPOSED_OUTPUT_WEIGHT)
