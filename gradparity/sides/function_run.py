"""Running both sides of a function comparison: the user's ``grads(x, target)`` with its taps,
and the torch reference, whose tapped module calls ('module@k': call k) the one torch
recorder keeps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from gradparity.core.errors import InputError, describe_error
from gradparity.core.records import USER_ERRORS, BadValue, error_info, real_array, same_values
from gradparity.core.validate import numpy_values
from gradparity.pairing.structure import match_grads, restore
from gradparity.sides import taps
from gradparity.sides.run_torch import as_tensor, check_finite_reference, reference_loss_value
from gradparity.sides.torch_recorder import TorchRecorder, to_numpy


@dataclass
class UserRun:
    """One call of the user's gradient function.

    grads: parameter name -> gradient (None when the call raised); taps: name -> value in call
    order; mutated: parameters (or "x", "target") the call changed in place, since restored;
    aliases: gradients sharing memory with a parameter.
    """

    grads: dict[str, np.ndarray] | None
    taps: dict[str, np.ndarray]
    error: dict | None = None
    mutated: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    # Values the call gave that cannot be compared (complex, text), as ``error_info`` dicts:
    # by parameter name, and by tap name. Each is a finding; the other values are compared.
    bad_grads: dict[str, dict] = field(default_factory=dict)
    bad_taps: dict[str, dict] = field(default_factory=dict)
    # Where each tap was called: tap name -> (file, line).
    tap_sites: dict[str, tuple[str, int]] = field(default_factory=dict)
    # The loss the call returned with its gradients (course style: ``(loss, grads)``).
    loss: float | None = None
    # The taps made with ``grad=True`` (dL/d(the forward tap of the same name)), and their
    # call sites, by tap name.
    grad_taps: dict[str, np.ndarray] = field(default_factory=dict)
    grad_tap_sites: dict[str, tuple[str, int]] = field(default_factory=dict)
    bad_grad_taps: dict[str, dict] = field(default_factory=dict)


def run_user(
    grads_fn: Callable, params: Any, flat: dict[str, np.ndarray], x: np.ndarray, target: Any
) -> UserRun:
    """Call ``grads_fn(x, target)`` on copies of x and target, recording taps. The live
    parameters are put back as they were if the call changed them, in place or by rebinding
    an entry of ``params`` to a new array."""
    before = {n: a.copy() for n, a in flat.items()}
    x_in, t_in = np.array(x, copy=True), np.array(target, copy=True)
    error, returned = None, None
    with taps.recording() as log:
        try:
            returned = grads_fn(x_in, t_in)
        except USER_ERRORS as exc:  # the user's code raised: a finding, not a crash
            error = error_info("call", exc)
    mutated = restore(params, flat)  # rebound: params[k] = new array
    for name, live in flat.items():
        if not _unchanged(live, before[name]):  # changed in place
            mutated.append(name)
            live[...] = before[name]
    mutated += [
        n
        for n, used, given in (("x", x_in, x), ("target", t_in, target))
        if not _unchanged(used, np.asarray(given))
    ]
    recorded, bad_taps = _split(taps.named(log))
    sites = taps.sites(log)
    if error is not None:
        return UserRun(None, recorded, error, mutated, bad_taps=bad_taps, tap_sites=sites)
    loss, returned = split_loss(flat, returned)
    returned_grads = match_grads(params, returned)
    aliases = [
        f"the gradient of {g} shares memory with parameter {p}"
        for g, value in returned_grads.items()
        for p, live in flat.items()
        if np.shares_memory(value, live)
    ]
    grads, bad_grads = _split(
        {
            name: _checked(value, f"the gradient of {name}", f"grad:{name}")
            for name, value in returned_grads.items()
        }
    )
    return UserRun(
        grads, recorded, None, mutated, aliases, bad_grads, bad_taps, sites, loss,
        *_grad_taps(log),
    )  # fmt: skip


def _unchanged(now: np.ndarray, before: np.ndarray) -> bool:
    """``same_values(now, before)``: a plain ``==`` decides the usual case (nothing changed) at
    a fraction of the cost of the NaN-aware comparison, which is run only when it does not."""
    if now.shape == before.shape and now.dtype.kind in "fiub" and bool((now == before).all()):
        return True
    return same_values(now, before)


def _grad_taps(
    log: taps.TapLog,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, int]], dict[str, dict]]:
    """(the taps made with ``grad=True`` by final name, their call sites, ``error_info`` of
    those that hold no real numbers)."""
    values, bad = _split(taps.grad_taps(log))
    return values, taps.grad_sites(log), bad


def split_loss(flat: dict[str, np.ndarray], returned: Any) -> tuple[float | None, Any]:
    """(the loss, the gradients) of a call returning ``(loss, grads)`` as course code's
    ``net.loss(X, y)`` does; (None, ``returned``) for a call returning only gradients. A pair
    whose first item is a single real number is taken as a loss, unless the first parameter
    is itself a single number (then the pair may be its gradients)."""
    first_param = next(iter(flat.values()), None)
    if (
        not isinstance(returned, (tuple, list))
        or len(returned) != 2
        or (first_param is not None and first_param.ndim == 0)
    ):
        return None, returned
    value = returned[0]
    if np.ndim(value) != 0 or np.asarray(value).dtype.kind not in "fiu":
        return None, returned
    return float(np.asarray(value)), returned[1]


def _checked(value: Any, what: str, quantity: str) -> np.ndarray | BadValue:
    """A private real copy of ``value``, or the ``BadValue`` saying why it cannot be one."""
    try:
        return real_array(value, what, quantity)
    except BadValue as exc:
        return exc


def _split(values: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """(the arrays, ``error_info`` of the ``BadValue`` entries) of a name -> value dict."""
    good = {n: v for n, v in values.items() if not isinstance(v, BadValue)}
    bad = {n: error_info("call", v) for n, v in values.items() if isinstance(v, BadValue)}
    return good, bad


def call_loss_fn(loss_fn: Callable, params: Any, x: np.ndarray, target: Any) -> tuple[float, str]:
    """(``loss_fn(params, x, target)`` as a float, the dtype it came in: "float64" for a
    Python number). One line when it raises or returns anything but one real number (text,
    None, a complex value, several values)."""
    try:
        returned = loss_fn(params, x, target)
    except USER_ERRORS as exc:
        raise InputError(
            f"loss_fn(params, x, target) raised {describe_error(exc)}; it must return the loss "
            "as a float"
        ) from exc
    must = "it must return the loss as one real number (a float)"
    if returned is None or isinstance(returned, (str, bytes)):
        raise InputError(f"loss_fn returned {type(returned).__name__} {returned!r:.40}; {must}")
    value = numpy_values("loss_fn's value", returned)  # a tensor is read without warnings
    if value.dtype.kind == "c":
        imag = float(np.max(np.abs(value.imag))) if value.size else 0.0
        raise InputError(
            f"loss_fn returned a complex value ({value.dtype}, imaginary part up to {imag:.3g}); "
            f"{must}: keep its computation real"
        )
    if value.dtype.kind not in "fiub" or value.size != 1:
        raise InputError(
            f"loss_fn returned {type(returned).__name__} of dtype {value.dtype} and shape "
            f"{value.shape}; {must} (the mean or sum over the batch)"
        )
    precision = value.dtype.name if value.dtype.kind == "f" else "float64"
    return float(value.reshape(())), precision


@dataclass
class ReferenceRun:
    """The reference's loss, parameter gradients (torch names) and tapped tensors."""

    loss: float
    grads: dict[str, np.ndarray]
    taps: dict[str, np.ndarray]  # tap name -> module output or dL/d(module output)
    calls: dict[str, int] = field(default_factory=dict)  # tapped module -> calls in the forward


def _shape_of(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return f"({', '.join(_shape_of(v) for v in value)})"
    return type(value).__name__


def reference_hint(x: np.ndarray) -> str:
    """What to check when the reference cannot run on ``x``."""
    if x.dtype.kind in "iub":
        return (
            f"x is {x.dtype}: integers are kept as they are (token indices); pass "
            "x.astype(float) for features"
        )
    return "pass reference_x in the reference's layout (e.g. x.T for column examples)"


def run_reference(
    model: nn.Module,
    x: np.ndarray,
    target: np.ndarray,
    loss_fn: Callable,
    tap_specs: dict[str, tuple[str, str, int | None]],
    dtype: torch.dtype,
) -> ReferenceRun:
    """Forward, loss and backward of the reference, recording the tapped module calls.

    ``tap_specs``: tap name -> (kind "output" or "grad_output", module name, call k or None
    for the first call)."""
    modules = dict(model.named_modules())
    wanted = {(m, c or 0) for _, m, c in tap_specs.values()}
    recorder = TorchRecorder(
        {m: modules[m] for m, _ in wanted}, inputs=False, keep=lambda m, k: (m, k) in wanted
    )
    params = list(model.named_parameters())
    with recorder:
        try:
            out = model(as_tensor(x, dtype))
        except USER_ERRORS as exc:
            raise InputError(
                f"the reference model raised {describe_error(exc)} on reference_x of shape "
                f"{x.shape}; {reference_hint(x)}"
            ) from exc
        if isinstance(out, torch.Tensor) and not out.requires_grad:
            raise InputError(
                "the reference's output is detached: autograd sees no path from its parameters "
                "to it; return the tensor its layers compute (no .detach(), .numpy() or "
                "torch.no_grad() in forward)"
            )
        try:
            loss = loss_fn(out, as_tensor(target, dtype))
        except USER_ERRORS as exc:
            raise InputError(
                f"the reference loss failed on the output {_shape_of(out)} and the target "
                f"({target.dtype} {target.shape}): {describe_error(exc)}; pass reference_target or "
                "reference_loss"
            ) from exc
        grads = torch.autograd.grad(
            reference_loss_value(loss), [p for _, p in params], allow_unused=True
        )
    made = {m: n for m, n in recorder.counts().items() if n}
    tapped = _tapped_values(tap_specs, recorder, made)
    gradients = {
        n: to_numpy(g) if g is not None else np.zeros(tuple(p.shape))
        for (n, p), g in zip(params, grads)
    }
    for name, value in gradients.items():
        check_finite_reference(f"gradient of {name}", value)
    for tap, value in tapped.items():
        check_finite_reference(f"value at tap {tap}", value)
    return ReferenceRun(float(loss.detach()), gradients, tapped, made)


def _tapped_values(
    tap_specs: dict[str, tuple[str, str, int | None]],
    recorder: TorchRecorder,
    made: dict[str, int],
) -> dict[str, np.ndarray]:
    """Tap name -> the recorded output or dL/d(output) of its module call (0 for an output
    the loss does not depend on); one line for a call never made or one that returned no
    tensor. ``made``: module -> calls made, for the message."""
    calls = {m: recorder.of(m) for m in made}
    not_tensor = [
        t for t, (_, m, c) in tap_specs.items()
        if len(calls.get(m, [])) > (c or 0) and not calls[m][c or 0].returned_tensor
    ]  # fmt: skip
    if not_tensor:
        m = tap_specs[not_tensor[0]][1]
        raise InputError(
            f"tap_map maps {not_tensor} to module {m!r}, which returns a "
            f"{calls[m][0].output_type}, not a tensor; map them to a module that outputs one"
        )
    never = [t for t, (_, m, c) in tap_specs.items() if len(calls.get(m, [])) <= (c or 0)]
    if never:
        raise InputError(
            f"tap_map maps {never} to module calls the reference's forward never makes (calls "
            f"made: {made})"
        )
    tapped = {}
    for tap, (kind, m, c) in tap_specs.items():
        call = calls[m][c or 0]
        value = call.output if kind == "output" else call.grad_output
        tapped[tap] = value if value is not None else np.zeros(call.output_shape)
    return tapped
