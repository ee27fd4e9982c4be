"""Torch mirrors of ``gradparity.ours.norm``: BatchNorm1d/2d, LayerNorm and Dropout.

Parameters copy without conversion (gamma -> weight, beta -> bias, same shapes); batch norm
also takes ours' running statistics and mode. Dropout's mirror applies the mask ours' layer
applied (``MaskedDropout``), so a mirror pair agrees in training mode too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def _copy_affine(layer: Any, module: nn.Module) -> None:
    """gamma -> weight and beta -> bias where ours has them (same shapes)."""
    for key, name in (("gamma", "weight"), ("beta", "bias")):
        if key in layer.params:
            getattr(module, name).copy_(torch.as_tensor(layer.params[key], dtype=torch.float64))


def mirror_batch_norm(layer: Any) -> nn.Module:
    """nn.BatchNorm1d or nn.BatchNorm2d with ours' options, parameters, running statistics
    and mode (float64)."""
    kinds = {"BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d}
    kind = next(c.__name__ for c in type(layer).__mro__ if c.__name__ in kinds)
    module = kinds[kind](
        layer.num_features,
        eps=layer.eps,
        momentum=layer.momentum,
        affine=layer.affine,
        dtype=torch.float64,
    )
    _copy_affine(layer, module)
    with torch.no_grad():
        for name in ("running_mean", "running_var"):
            value = torch.as_tensor(getattr(layer, name), dtype=torch.float64)
            module.get_buffer(name).copy_(value)
    return module.train(layer.training)


def mirror_layer_norm(layer: Any) -> nn.Module:
    """nn.LayerNorm with ours' normalized_shape, eps, affine options and parameters."""
    module = nn.LayerNorm(
        layer.normalized_shape,
        eps=layer.eps,
        elementwise_affine=layer.elementwise_affine,
        bias=layer.bias,
        dtype=torch.float64,
    )
    _copy_affine(layer, module)
    return module


class MaskedDropout(nn.Dropout):
    """nn.Dropout that applies the mask an ours ``Dropout`` applied: its ``pinned_mask`` when
    set, else the ``mask`` of its last training forward (run ours first). The link to ours'
    layer survives ``copy.deepcopy`` (the copy reads the same layer), since the harness
    compares copies of the reference; ``gp.compare`` also runs copies of ours, whose masks
    this module never sees, so a training-mode comparison needs a pinned mask.

    Shapes: x (N, ...), y like x; the mask like x.
    """

    def __init__(self, source: Any) -> None:
        super().__init__(p=source.p)
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = self.source.pinned_mask
        if keep is None:
            keep = self.source.mask
        if keep is None or tuple(keep.shape) != tuple(x.shape):
            raise ValueError(
                f"ours' Dropout holds no mask for input {tuple(x.shape)}: pin one "
                "(layer.pinned_mask = mask) to compare in training mode, or run ours' forward "
                "on this input first"
            )
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        return x * torch.as_tensor(keep, dtype=x.dtype, device=x.device) * scale

    def __deepcopy__(self, memo: dict[int, Any]) -> MaskedDropout:
        clone = MaskedDropout(self.source)
        return clone.train(self.training)


def mirror_dropout(layer: Any) -> nn.Module:
    """A ``MaskedDropout`` reading ``layer``'s masks, in ``layer``'s mode."""
    return MaskedDropout(layer).train(layer.training)


MIRRORS: dict[str, Callable[[Any], nn.Module]] = {
    "BatchNorm1d": mirror_batch_norm,
    "BatchNorm2d": mirror_batch_norm,
    "LayerNorm": mirror_layer_norm,
    "Dropout": mirror_dropout,
}
