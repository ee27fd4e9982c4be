"""Torch mirrors of ours' Embedding, GELU, LeakyReLU, LogSoftmax, NLLLoss and BCEWithLogits.

``MIRRORS`` and ``LOSS_MIRRORS`` map an ours class name to a builder of the torch module
(weights copied, float64). Embedding's weight has torch's layout already, (num_embeddings,
embedding_dim): no conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class IndexEmbedding(nn.Embedding):
    """``nn.Embedding`` that also takes its indices as a float tensor of whole numbers: the
    harness hands every model its input as floats, and ``nn.Embedding`` takes only integers.
    The input gets no gradient, as in ``nn.Embedding``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input.long() if input.is_floating_point() else input)


def _embedding(layer: Any) -> nn.Module:
    """The mirror of an ours ``Embedding``, its weight copied (same layout), float64."""
    num_embeddings, embedding_dim = layer.params["weight"].shape
    module = IndexEmbedding(num_embeddings, embedding_dim, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(layer.params["weight"], dtype=torch.float64))
    return module


MIRRORS: dict[str, Callable[[Any], nn.Module]] = {
    "Embedding": _embedding,
    "GELU": lambda layer: nn.GELU(approximate=layer.approximate),
    "LeakyReLU": lambda layer: nn.LeakyReLU(layer.negative_slope),
    "LogSoftmax": lambda layer: nn.LogSoftmax(dim=layer.dim),
}

LOSS_MIRRORS: dict[str, Callable[[Any], nn.Module]] = {
    "NLLLoss": lambda loss: nn.NLLLoss(),
    "BCEWithLogits": lambda loss: nn.BCEWithLogitsLoss(),
}
