"""torch mirror of the zoo's own layer, ``gradparity.ours.zoo.LastStep``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class LastStep(nn.Module):
    """A sequence's last time step: x (N, T, H) -> x[:, -1] (N, H)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1]


def mirror_last_step(layer: Any) -> nn.Module:
    """``LastStep()``: no parameters to copy."""
    return LastStep()


MIRRORS: dict[str, Callable[[Any], nn.Module]] = {"LastStep": mirror_last_step}
