"""The reference before a comparison: on the CPU, run once on x, the target judged by it.

``to_cpu`` moves the reference copy to the CPU, allocating a meta-device model there when
ours' weights will fill it. ``dry_run`` runs the copy once on x (no gradients, eval mode,
modes restored) and turns what would surface as a torch error deep inside a comparison into
one line: an x of the wrong width (named against the first layer), a forward that returns
None, a layer that overflows, an output that is not finite, a module that does not run once
per layer of ours aligned with it. ``check_target`` then judges the target by that output:
classes beyond its width, float labels, one-hot rows, MSE shapes.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from gradparity.core.errors import InputError, describe_error
from gradparity.core.records import USER_ERRORS
from gradparity.core.validate import (
    class_target,
    is_one_hot,
    same_shape_target,
    takes_classes,
    takes_same_shape,
)
from gradparity.pairing.align import check_calls
from gradparity.sides.run_torch import TORCH_DTYPES, as_tensor
from gradparity.sides.torch_recorder import ModuleCall, TorchRecorder, finite, no_call, to_numpy


def to_cpu(model: nn.Module, dtype: torch.dtype, sync_weights: bool) -> list[str]:
    """Move the reference copy ``model`` to the CPU in ``dtype``, in place. A model on the meta
    device (shapes only) is allocated there when ``sync_weights`` will fill it with ours'
    parameters; the names of the parameters that hold no values yet are returned."""
    on_meta = [n for n, p in model.named_parameters() if p.is_meta]
    meta_buffers = [n for n, b in model.named_buffers() if b.is_meta]
    if meta_buffers:
        raise InputError(
            f"the reference's buffer {meta_buffers[0]} is on the meta device (no values); "
            "load real values first (module.to_empty(device='cpu'), then load_state_dict)"
        )
    if on_meta and not sync_weights:
        raise InputError(
            f"the reference's parameter {on_meta[0]} is on the meta device (no values); pass "
            "sync_weights=True to copy ours' weights into it, or load real weights first"
        )
    empty = [n for n, _ in model.named_parameters()] if on_meta else []
    if on_meta:  # to_empty reallocates every parameter, so all of them need ours' values
        model.to_empty(device="cpu")
        with torch.no_grad():
            for param in model.parameters():
                param.zero_()  # no uninitialised memory, even for a run before the sync
    model.to(device="cpu", dtype=dtype)
    return empty


def check_filled(empty: list[str], filled: set[str]) -> None:
    """Refuse a meta-device reference parameter that no parameter of ours was copied into."""
    missing = [n for n in empty if n not in filled]
    if missing:
        raise InputError(
            f"the reference's parameter {missing[0]} was on the meta device and no parameter "
            "of ours is copied into it; load real weights into the reference first"
        )


def _layer_name(call: ModuleCall, names: dict[str, list[str]]) -> str:
    """How a message names a reference module's call: ours' layer name where the call is
    aligned with one (the name the user knows), the module's own name in parentheses when it
    differs."""
    aligned = names.get(call.module, [])
    if call.index >= len(aligned) or aligned[call.index] == call.module:
        return call.module
    return f"{aligned[call.index]} (reference module {call.module})"


def _failure(
    exc: BaseException,
    called: list[ModuleCall],
    modules: dict[str, nn.Module],
    what: str,
    hint: str,
    shape: tuple[int, ...],
    names: dict[str, list[str]],
) -> str:
    """The one line for a reference forward that raised: the width a Linear-like layer
    takes, when that is what went wrong, else torch's first line and ``hint``."""
    if called:
        last = called[-1]
        takes = getattr(modules[last.module], "in_features", None)
        got = last.input_shape
        if isinstance(takes, int) and got and got[-1] != takes:
            layer = _layer_name(last, names)
            if len(called) == 1:
                return (
                    f"{what} has {got[-1]} features but the first layer {layer} takes {takes}; "
                    f"pass {what} of shape (N, {takes})"
                )
            return (
                f"the reference's layer {layer} gets {got[-1]} features but takes {takes}; "
                "check the reference model's layer sizes"
            )
    return f"the reference model raised {describe_error(exc)} on {what} of shape {shape}; {hint}"


def _leaves(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: m for name, m in model.named_modules() if name and not any(True for _ in m.children())
    }


def _traced_forward(
    model: nn.Module,
    x: np.ndarray,
    dtype: torch.dtype,
    what: str,
    hint: str,
    names: dict[str, list[str]],
) -> tuple[Any, list[ModuleCall], TorchRecorder]:
    """(the reference's output on ``x``, its leaf-module calls in order, the recorder of
    those calls and of the modules ``names`` aligns), in eval mode without gradients; every
    module's mode is restored. One line when the forward raises."""
    leaves = _leaves(model)
    every = dict(model.named_modules())
    recorder = TorchRecorder({**leaves, **{m: every[m] for m in names}}, inputs=False, keep=no_call)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with recorder, torch.no_grad():
            out = model(as_tensor(x, dtype))
    except USER_ERRORS as exc:
        called = [c for c in recorder.calls if c.module in leaves]
        raise InputError(_failure(exc, called, every, what, hint, x.shape, names)) from exc
    finally:
        for module, training in modes:
            module.training = training
    return out, [c for c in recorder.calls if c.module in leaves], recorder


def leaf_calls(model: nn.Module, x: np.ndarray, dtype: torch.dtype) -> list[str]:
    """The reference's leaf modules in the order its forward on ``x`` calls them (a module
    run twice is named twice), for aligning layers by call order; [] when the forward
    raises (the dry run then says why in one line)."""
    try:
        _, calls, _ = _traced_forward(model, x, dtype, "x", "", {})
    except InputError:
        return []
    return [c.module for c in calls]


def dry_run(
    model: nn.Module,
    x: np.ndarray,
    dtype: torch.dtype,
    what: str = "x",
    hint: str = "",
    needs_tensor: bool = True,
    names: dict[str, list[str]] | None = None,
) -> np.ndarray | None:
    """The reference's output on ``x`` (eval mode, no gradients; every module's mode is
    restored); one line when it raises, returns None, returns no tensor where
    ``needs_tensor`` (else None: a tuple for the user's own reference_loss), returns a tensor
    that is not floating point, overflows in a layer, gives an output that is not finite, or
    runs a module other than once per layer of ours aligned with it. ``names``: reference
    module name -> ours' layer names aligned with its calls (``layers_by_module``)."""
    hint = hint or f"check {what} against the reference's first layer (features on the last axis)"
    names = names or {}
    out, calls, recorder = _traced_forward(model, x, dtype, what, hint, names)
    if out is not None and not torch.is_tensor(out) and not needs_tensor:
        return None
    if not torch.is_tensor(out):
        raise InputError(
            f"the reference's forward returned {type(out).__name__}, not a tensor; make its "
            "forward return the output (a missing `return`?)"
        )
    if not out.is_floating_point():
        raise InputError(
            f"the reference's output is {str(out.dtype).removeprefix('torch.')}, not a real "
            "floating-point tensor, so it has no gradient to compare; return the output before "
            "any .long(), .argmax() or complex step"
        )
    largest = float(np.max(np.abs(x))) if x.dtype.kind in "fiu" else 1.0
    overflow = next((c for c in calls if c.overflowed), None)
    if overflow is not None:
        raise InputError(
            f"the reference's layer {overflow.module} overflows on {what}: its output is not "
            f"finite although its input is (largest |{what}| {largest:.3g}); scale {what} down"
        )
    if not finite(out):
        raise InputError(
            f"the reference's output on {what} is not finite (largest |{what}| {largest:.3g}); "
            f"scale {what} down, or fix the reference's forward"
        )
    check_calls(names, recorder.counts(), what)
    return to_numpy(out)


def _runs(call: Callable[[], Any]) -> bool:
    try:
        call()
    except USER_ERRORS:
        return False
    return True


def check_target(
    target: np.ndarray,
    output: np.ndarray | None,
    dtype: str,
    *,
    ours_loss: Any = None,
    reference_loss: Callable,
    what: str = "target",
    whole_floats: bool = False,
    loss_option: str = "ours_loss and reference_loss",
) -> np.ndarray:
    """``target`` checked against the reference's ``output`` for the losses in play: class
    indices below the output's width, float labels (unless ``whole_floats``) or one-hot rows
    where a loss takes only indices, MSE shapes; a class loss over one output (constant) or
    over outputs of more than two axes with one class per example. Returns the target the
    losses get (as given when ``output`` is None: a reference whose output is not a tensor).
    ``loss_option`` names the options that choose the losses, for the one-output hint."""
    if output is None:
        return target
    losses = [loss for loss in (ours_loss, reference_loss) if loss is not None]
    if any(takes_same_shape(loss) for loss in losses):
        same_shape_target(target, output.shape, what)
        return target.astype(dtype) if target.dtype.kind in "iub" else target
    if not any(takes_classes(loss) for loss in losses):
        return target
    if output.ndim > 2 and target.ndim == 1:
        raise InputError(
            f"the model's output has shape {output.shape}, more axes than (N, classes), while "
            f"{what} holds one class per example; pass x that gives (N, classes) outputs "
            "(dense layers take x of shape (N, features))"
        )
    if output.ndim != 2:
        return target
    if output.shape[1] == 1:
        raise InputError(
            "the model has one output per example, and a softmax cross-entropy loss over a "
            f"single class is constant (every gradient 0); pass {loss_option} for one output, e.g. "
            "torch.nn.BCELoss() after a sigmoid (BCEWithLogitsLoss() on a logit)"
        )
    checked = class_target(target, output.shape[1], dtype, what, whole_floats)
    if checked.ndim == 2:
        _hint_argmax(target, checked, output, dtype, ours_loss, reference_loss, what)
    return checked


def _hint_argmax(
    given: np.ndarray,
    probabilities: np.ndarray,
    output: np.ndarray,
    dtype: str,
    ours_loss: Any,
    reference_loss: Callable,
    what: str,
) -> None:
    """One line when a loss refuses class probabilities (a one-hot target) but takes the same
    classes as indices: the user meant target.argmax(axis=1)."""
    tdtype = TORCH_DTYPES[dtype]
    calls = {
        "the reference's loss": lambda t: reference_loss(
            as_tensor(output, tdtype), as_tensor(t, tdtype)
        )
    }
    if ours_loss is not None:
        calls["ours' loss"] = lambda t: copy.deepcopy(ours_loss).forward(output.copy(), t.copy())
    indices = probabilities.argmax(axis=1)
    for loss_name, call in calls.items():
        with torch.no_grad():
            if not _runs(functools.partial(call, probabilities)) and _runs(
                functools.partial(call, indices)
            ):
                looks = "looks one-hot" if is_one_hot(given) else "holds class probabilities"
                raise InputError(
                    f"{what} {looks} {given.shape}, but {loss_name} takes class indices: pass "
                    f"{what}.argmax(axis=1)"
                )
