"""Optimisers over a ``Sequential``'s parameters (updated in place)."""

from __future__ import annotations

from gradparity.ours.containers import Sequential


class SGD:
    """Plain stochastic gradient descent: p <- p - lr * dp, in place."""

    def __init__(self, model: Sequential, lr: float = 0.1) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.model = model
        self.lr = lr

    def step(self) -> None:
        for _, _, value, grad in self.model.parameters():
            if grad is not None:
                value -= self.lr * grad

    def zero_grad(self) -> None:
        for _, _, _, grad in self.model.parameters():
            if grad is not None:
                grad[...] = 0.0
