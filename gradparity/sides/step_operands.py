"""How large the numbers a training step's gradients are computed from are, per layer: the
floor of a float32 budget is taken of them where a gradient cancels far below them.

A layer's parameter gradient is a sum of products of its input and its upstream gradient.
A saturated tanh or sigmoid after it makes that upstream gradient a product with a difference
of nearly equal float32 numbers (1 - y**2 with y an ulp from 1): NumPy's and torch's float32
values may part by an ulp of the gradient that activation received, while each is far below
it. So the upstream magnitude counted for a layer is the largest of its own and of every layer
after it (the gradient flows back through them to it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from gradparity.pairing.align import LayerPair


def _largest(tensor: torch.Tensor) -> float:
    """max|tensor| over its finite values (0 when there is none)."""
    finite = tensor.detach()[torch.isfinite(tensor.detach())]
    return float(finite.abs().max()) if finite.numel() else 0.0


@contextmanager
def layer_operands(pairs: list[LayerPair]) -> Iterator[dict[str, float]]:
    """Inside: each paired module's forward and backward are watched; the dict yielded holds,
    by ours' layer name, max|input| * max|upstream gradient of it or any layer after it in
    ``pairs``' (forward) order| over its calls, once backward has run."""
    inputs: dict[str, float] = {}
    upstream: dict[str, float] = {}

    def watch(name: str):
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            fed = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
            inputs[name] = max([inputs.get(name, 0.0), *(_largest(a) for a in fed)])
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(
                    lambda g: upstream.__setitem__(name, max(upstream.get(name, 0.0), _largest(g)))
                )

        return hook

    handles = [p.torch_module.register_forward_hook(watch(p.name)) for p in pairs]
    products: dict[str, float] = {}
    try:
        yield products
    finally:
        for handle in handles:
            handle.remove()
    downstream = 0.0
    for pair in reversed(pairs):
        downstream = max(downstream, upstream.get(pair.name, 0.0))
        products[pair.name] = inputs.get(pair.name, 0.0) * downstream
