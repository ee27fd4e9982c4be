"""Which loss each side ran, as the report names it: a report says so in its first lines, and
says when ours' loss was gradparity's default (the user's own loss backward then went
unchecked), or, for ``compare_function``, when the value of the loss the user's ``grads``
computes was not compared (no ``loss_fn``). Torch-free: the names are read from the report's
``meta``."""

from __future__ import annotations

from typing import Any

DEFAULT = " (default)"
# How a user passes their own loss (one line, said once per report).
UNCHECKED = (
    "your own loss was not checked: ours ran gradparity's default softmax cross-entropy; "
    "pass ours_loss=your_loss_layer (forward(logits, target) -> float, backward() -> "
    "dL/dlogits) to check it"
)

# compare_function without loss_fn: its grads() computes its own loss, whose gradient is checked
# through the gradients it returns, but whose value nobody computed on ours' side.
VALUE_UNCOMPARED = (
    "the loss value was not compared: your grads function computes its own loss, checked "
    "only through the gradients it returns; pass loss_fn=lambda params, x, target: "
    "your_loss (a float, from those params) to compare its value with the reference loss"
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


def function_loss_meta(
    fn: str, loss_fn: Any, reference: str | None, *, judged_by: str | None = None
) -> dict:
    """The meta entries of a ``compare_function`` report: ours is the user's ``fn()`` with its
    own loss (its value compared when ``loss_fn`` is given); ``reference`` names the torch
    reference's loss, or is None for central differences of ``loss_fn``. ``judged_by`` names
    another referee of the gradients of the user's own loss (the exact gradient by autodiff).
    A referee judges the gradients of the user's loss itself, so no value is compared and
    nothing is said to be missing."""
    if judged_by is not None or reference is None:
        return {
            "ours_loss": f"your {fn}() (its own loss)",
            "reference_loss": judged_by or f"central differences of loss_fn {loss_name(loss_fn)}",
        }
    value = "value not compared" if loss_fn is None else f"value: loss_fn {loss_name(loss_fn)}"
    return {
        "ours_loss": f"your {fn}() (its own loss, {value})",
        "reference_loss": reference,
        "loss_value_compared": loss_fn is not None,
    }


def loss_line(meta: dict) -> str | None:
    """ "loss: ours X, reference Y" from a report's meta (None when it names no loss)."""
    if "ours_loss" not in meta:
        return None
    return f"loss: ours {meta['ours_loss']}, reference {meta.get('reference_loss', '?')}"


def unchecked_notice(meta: dict) -> str | None:
    """``UNCHECKED`` when ours' loss was gradparity's default, ``VALUE_UNCOMPARED`` when a
    ``compare_function`` report had no ``loss_fn`` to compare the loss value with, else None."""
    if meta.get("loss_value_compared") is False:
        return VALUE_UNCOMPARED
    ours = meta.get("ours_loss")
    return UNCHECKED if isinstance(ours, str) and ours.endswith(DEFAULT) else None
