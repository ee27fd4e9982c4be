"""Running statistics on both sides: ours' arrays found by their common names, the reference's
buffers, paired by name or alias, copied across, and kept from drifting between the passes
the harness runs (each compared pass starts from the state the user gave)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from gradparity.sides.adapt import Wrapped

# Ours' attribute names of running statistics (chainer's avg_*, Keras-style moving_*) -> the
# torch buffer each is paired with.
RUNNING_ALIASES = {
    "running_mean": "running_mean",
    "running_var": "running_var",
    "moving_mean": "running_mean",
    "moving_var": "running_var",
    "avg_mean": "running_mean",
    "avg_var": "running_var",
}


def state_owner(layer: Any) -> Any:
    """The object that holds a layer's state: the wrapped object of ``gp.wrap``, else the
    layer itself."""
    return layer.obj if isinstance(layer, Wrapped) else layer


def ours_running(layer: Any) -> dict[str, np.ndarray]:
    """Copies of the running-statistic arrays ``layer`` holds, by attribute name; {} for a
    layer without any (an attribute that is not a float array is not one)."""
    owner = state_owner(layer)
    found = {}
    for name in RUNNING_ALIASES:
        value = getattr(owner, name, None)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            found[name] = value.copy()
    return found


def running_pairs(layer: Any, module: nn.Module | None) -> list[tuple[str, str]]:
    """(ours' attribute, the reference's buffer) for each running statistic both sides hold
    with the same number of values."""
    if module is None:
        return []
    buffers = dict(module.named_buffers(recurse=False))
    pairs = []
    for name, value in ours_running(layer).items():
        buffer = buffers.get(RUNNING_ALIASES[name])
        if buffer is not None and buffer.numel() == value.size:
            pairs.append((name, RUNNING_ALIASES[name]))
    return pairs


def sync_running(layer: Any, module: nn.Module) -> None:
    """Copy ours' running statistics into the module's paired buffers (as parameters are
    copied), so an eval-mode pass normalises with the same statistics on both sides."""
    buffers = dict(module.named_buffers(recurse=False))
    ours = ours_running(layer)
    with torch.no_grad():
        for name, torch_name in running_pairs(layer, module):
            target = buffers[torch_name]
            target.copy_(torch.as_tensor(ours[name].reshape(tuple(target.shape))))


def updates_running_stats(module: nn.Module | None) -> bool:
    """Whether a forward of ``module`` updates its running statistics (a batch or instance
    norm in training mode that tracks them)."""
    return (
        module is not None
        and module.training
        and bool(getattr(module, "track_running_stats", False))
        and getattr(module, "running_mean", None) is not None
    )


def reference_running(module: nn.Module | None) -> dict[str, np.ndarray]:
    """The module's running-statistic buffers by torch name, as arrays; {} unless its
    forward updates them (``updates_running_stats``)."""
    if module is None or not updates_running_stats(module):
        return {}
    return {
        name: buffer.detach().cpu().numpy().copy()
        for name, buffer in module.named_buffers(recurse=False)
        if name in ("running_mean", "running_var")
    }


@contextlib.contextmanager
def kept_buffers(module: nn.Module) -> Iterator[None]:
    """Run a block and put every buffer of ``module`` (running_mean, running_var,
    num_batches_tracked, ...) back as it was: an extra pass must not move the statistics."""
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextlib.contextmanager
def kept_running(layer: Any) -> Iterator[None]:
    """Run a block and put ours' running statistics back as they were (in place where the
    array is still the layer's, else by re-binding the attribute)."""
    saved, owner = ours_running(layer), state_owner(layer)
    try:
        yield
    finally:
        for name, value in saved.items():
            now = getattr(owner, name, None)
            if isinstance(now, np.ndarray) and now.shape == value.shape and now.flags.writeable:
                now[...] = value
            else:
                setattr(owner, name, value.copy())
