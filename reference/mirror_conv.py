"""Torch mirrors of the ours convolution, pooling and flattening layers (``ours/conv.py``).

``MIRRORS`` maps an ours class name to a builder returning the equivalent torch module in
float64 with the layer's weights copied. ours ``Conv2d`` stores its weight (F, C/groups, kh, kw)
in torch's own layout, so its conversion is the identity (and the bias (F,) likewise).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def _conv2d(layer) -> nn.Module:
    """nn.Conv2d with ours Conv2d's options and weights (identity layout)."""
    W = layer.params["W"]
    module = nn.Conv2d(
        W.shape[1] * layer.groups,
        W.shape[0],
        kernel_size=tuple(W.shape[2:]),
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias="b" in layer.params,
        dtype=torch.float64,
    )
    with torch.no_grad():
        for key, tparam in zip(("W", "b"), module.parameters()):
            tparam.copy_(torch.as_tensor(np.ascontiguousarray(layer.params[key])))
    return module


def _max_pool2d(layer) -> nn.Module:
    pool = layer.pool
    return nn.MaxPool2d(pool["kernel"], pool["stride"], pool["padding"], pool["dilation"])


def _avg_pool2d(layer) -> nn.Module:
    pool = layer.pool
    return nn.AvgPool2d(
        pool["kernel"],
        pool["stride"],
        pool["padding"],
        count_include_pad=pool["count_include_pad"],
    )


def _flatten(layer) -> nn.Module:
    return nn.Flatten(layer.start_dim, layer.end_dim)


MIRRORS: dict[str, Callable[..., nn.Module]] = {
    "Conv2d": _conv2d,
    "MaxPool2d": _max_pool2d,
    "AvgPool2d": _avg_pool2d,
    "Flatten": _flatten,
}
