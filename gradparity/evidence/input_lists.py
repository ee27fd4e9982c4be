"""Why a layer's gradient is stale, when the reason is a list of cached inputs.

numpy-ml's layers append each forward's input to a list (``self.X.append(X)``) and pair it
with the next backward until ``flush_gradients()`` empties the list; after the harness's
warm-up forward the backward reads the warm-up input. Such a list is found by forwarding a copy
of the layer twice and keeping the list attributes that grew by one each time; the stale
finding then says to pass ``reset=`` to ``gradparity.wrap``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from gradparity.core.records import USER_ERRORS
from gradparity.sides.adapt import LIKELY_RESETS, Wrapped, before_pass


def _list_lengths(obj: Any) -> dict[str, int]:
    """Length of each list attribute of ``obj``, and of each list one dict deep
    (``derived_variables['Z']``)."""
    lengths = {}
    for name, value in vars(obj).items() if hasattr(obj, "__dict__") else ():
        if isinstance(value, list):
            lengths[name] = len(value)
        elif isinstance(value, dict):
            lengths |= {
                f"{name}[{key!r}]": len(item)
                for key, item in value.items()
                if isinstance(item, list)
            }
    return lengths


def growing_lists(layer: Any, inputs: list[np.ndarray]) -> list[str]:
    """The list attributes of ``layer`` (the wrapped object for a ``wrap``-adapted layer) that
    grow by one entry per forward call, over forwards on ``inputs`` (N, ...) of a copy; empty
    when there are none or the layer cannot be copied or run."""
    try:
        fresh = copy.deepcopy(layer)
        before_pass(fresh)
        owner = fresh.obj if isinstance(fresh, Wrapped) else fresh
        counts = [_list_lengths(owner)]
        for x in inputs:
            fresh.forward(x.copy())
            counts.append(_list_lengths(owner))
    except USER_ERRORS:  # evidence only: a layer that fails here was reported by the real run
        return []
    first = counts[0]  # a list made by the first forward counts from 0
    return [
        name
        for name in counts[-1]
        if all(c.get(name, 0) == first.get(name, 0) + i for i, c in enumerate(counts))
    ]


def reset_advice(layer: Any, lists: list[str]) -> tuple[str, str]:
    """(message, fix) for a stale gradient explained by the growing ``lists`` of ``layer``."""
    owner = layer.obj if isinstance(layer, Wrapped) else layer
    kind = type(owner).__name__
    named = ", ".join(f"{kind}.{name}" for name in lists)
    message = (
        f"equals the reference's value for the input of the previous forward call: {named} "
        "keeps one entry per forward call, and backward read an earlier one"
    )
    if isinstance(layer, Wrapped) and layer._reset is not None:
        return message, "the reset= given to gradparity.wrap does not empty that list; make it"
    method = next((m for m in LIKELY_RESETS if callable(getattr(owner, m, None))), None)
    reset = repr(method) if method else f"lambda obj: obj.{lists[0]}.clear()"
    fix = (
        f"pass reset={reset} to gradparity.wrap, so the list is emptied before each pass: "
        f"gradparity.wrap(layer, ..., reset={reset})"
    )
    return message, fix
