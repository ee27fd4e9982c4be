"""Sequential: named layers run in order."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gradparity.ours.layers import Layer


class Sequential:
    """Layers applied in order, each with a unique name.

    ``Sequential(("fc1", Linear(2, 3)), ("act1", Sigmoid()))`` or
    ``Sequential(Linear(2, 3), Sigmoid())`` (named "0", "1", ... like torch).
    """

    def __init__(self, *layers: Layer | tuple[str, Layer]) -> None:
        self._layers: list[tuple[str, Layer]] = []
        for i, item in enumerate(layers):
            name, layer = item if isinstance(item, tuple) else (str(i), item)
            if any(name == n for n, _ in self._layers):
                raise ValueError(f"duplicate layer name {name!r}")
            self._layers.append((name, layer))

    def named_layers(self) -> Iterator[tuple[str, Layer]]:
        yield from self._layers

    def __getitem__(self, name: str) -> Layer:
        for n, layer in self._layers:
            if n == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers: {[n for n, _ in self._layers]}")

    def __len__(self) -> int:
        return len(self._layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for _, layer in self._layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        for _, layer in reversed(self._layers):
            grad_out = layer.backward(grad_out)
        return grad_out

    def parameters(self) -> Iterator[tuple[str, str, np.ndarray, np.ndarray | None]]:
        """(layer name, param key, value, gradient or None) for every parameter."""
        for name, layer in self._layers:
            for key, value in layer.params.items():
                yield name, key, value, layer.grads.get(key)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={layer!r}" for n, layer in self._layers)
        return f"Sequential({inner})"
