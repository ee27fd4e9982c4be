"""torch mirrors of ours' ``RNN``, ``LSTM`` and ``Residual``.

ours' recurrent layers keep torch's names and layouts, so their weights copy unconverted
(``weight_ih`` is ``rnn.weight_ih_l0``). torch's ``nn.RNN`` and ``nn.LSTM`` return
``(output, state)``: the mirror wraps them in ``SequenceOutput``, which returns the output
sequence alone, as ours' layers do. A ``Residual`` mirrors as ``ResidualSequential``, an
``nn.Sequential`` of the block's mirrored layers under the same names, so its parameters are
named as ours' ("0.weight" for "0.W", "fc1.bias" for "fc1.b").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


class SequenceOutput(nn.Module):
    """A recurrent module's output sequence alone. x (N, T, D) -> (N, T, H)."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class ResidualSequential(nn.Sequential):
    """y = block(x) + x, the block being this ``nn.Sequential``'s modules in order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x


@torch.no_grad()
def _copy_recurrent(layer, rnn: nn.RNNBase) -> None:
    """ours' weight_ih, ... into torch's weight_ih_l0, ... (same layout; dtype of torch's)."""
    for key, value in layer.params.items():
        tparam = getattr(rnn, f"{key}_l0")
        tparam.copy_(torch.as_tensor(np.ascontiguousarray(value), dtype=tparam.dtype))


def mirror_rnn(layer) -> nn.Module:
    """``SequenceOutput(nn.RNN(D, H, batch_first=True))`` holding ``layer``'s weights, float64."""
    rnn = nn.RNN(layer.input_size, layer.hidden_size, batch_first=True, dtype=torch.float64)
    _copy_recurrent(layer, rnn)
    return SequenceOutput(rnn)


def mirror_lstm(layer) -> nn.Module:
    """``SequenceOutput(nn.LSTM(D, H, batch_first=True))`` holding ``layer``'s weights,
    float64 (gates in torch's order i, f, g, o on both sides)."""
    lstm = nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True, dtype=torch.float64)
    _copy_recurrent(layer, lstm)
    return SequenceOutput(lstm)


def mirror_residual(layer, mirror_layer: Callable[[object], nn.Module]) -> nn.Module:
    """``ResidualSequential`` of the block's layers, each mirrored by ``mirror_layer`` (a block
    holds any ours layer: ``reference.mirror`` passes its own dispatcher)."""
    return ResidualSequential(
        OrderedDict((name, mirror_layer(inner)) for name, inner in layer.block.named_layers())
    )


# The leaf layers; ``Residual`` joins them in ``reference.mirror`` with ``mirror_residual``.
MIRRORS: dict[str, Callable[[object], nn.Module]] = {"RNN": mirror_rnn, "LSTM": mirror_lstm}
