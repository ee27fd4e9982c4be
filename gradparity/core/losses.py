"""Which loss each side ran, as the report names it: a report says so in its first lines, and
says when ours' loss was gradparity's default (the user's own loss backward then went
unchecked). Torch-free: the names are read from the report's ``meta``."""

from __future__ import annotations

from typing import Any

DEFAULT = " (default)"
# How a user passes their own loss (one line, said once per report).
UNCHECKED = (
    "your own loss was not checked: ours ran gradparity's default softmax cross-entropy; "
    "pass ours_loss=your_loss_layer (forward(logits, target) -> float, backward() -> "
    "dL/dlogits) to check it"
)


def loss_name(loss: Any) -> str:
    """A loss as the report names it: a function's or class's own name, else the class name
    of an instance (a ``gp.wrap`` adapter names the object it wraps)."""
    if type(loss).__module__ == "gradparity.sides.adapt" and hasattr(loss, "obj"):
        loss = loss.obj
    name = getattr(loss, "__name__", None)
    return name if isinstance(name, str) and name else type(loss).__name__


def loss_meta(ours: Any, reference: Any, ours_given: bool, reference_given: bool) -> dict:
    """The meta entries naming each side's loss, "(default)" where gradparity chose it."""
    return {
        "ours_loss": loss_name(ours) + ("" if ours_given else DEFAULT),
        "reference_loss": loss_name(reference) + ("" if reference_given else DEFAULT),
    }


def loss_line(meta: dict) -> str | None:
    """ "loss: ours X, reference Y" from a report's meta (None when it names no loss)."""
    if "ours_loss" not in meta:
        return None
    return f"loss: ours {meta['ours_loss']}, reference {meta.get('reference_loss', '?')}"


def unchecked_notice(meta: dict) -> str | None:
    """``UNCHECKED`` when ours' loss was gradparity's default, else None."""
    ours = meta.get("ours_loss")
    return UNCHECKED if isinstance(ours, str) and ours.endswith(DEFAULT) else None
