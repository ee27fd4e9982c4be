"""Running the PyTorch reference: the whole chain with hooks, or one module in isolation.

Capture uses forward pre-/post-hooks and tensor hooks, not ``register_full_backward_hook``
(which breaks on in-place ops). The pre-hook feeds each aligned module a clone of its input,
so an in-place op inside it can neither alter what was recorded nor the gradient hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

import numpy as np
import torch
from torch import nn

from gradparity.core.errors import InputError, describe_error
from gradparity.core.records import USER_ERRORS, LayerRecord
from gradparity.core.validate import DTYPES
from gradparity.pairing.align import LayerPair

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}  # validate's names -> torch


@overload
def to_numpy(t: torch.Tensor) -> np.ndarray: ...
@overload
def to_numpy(t: None) -> None: ...
def to_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().copy()


def as_tensor(a: np.ndarray, dtype: torch.dtype, grad: bool = False) -> torch.Tensor:
    # ascontiguousarray would turn a 0-d array (one example's class) into shape (1,).
    t = torch.as_tensor(np.ascontiguousarray(a) if np.ndim(a) else np.asarray(a))
    if t.is_floating_point():
        t = t.to(dtype)
    return t.requires_grad_(grad)


def _install_hooks(pairs: list[LayerPair], records: dict[str, LayerRecord]) -> list:
    handles = []
    for pair in pairs:
        rec = records[pair.name]

        def pre(module, args, rec=rec):
            fed = args[0].clone()
            rec.input = to_numpy(fed)
            if fed.requires_grad:
                fed.register_hook(lambda g, rec=rec: setattr(rec, "grad_input", to_numpy(g)))
            return (fed, *args[1:])

        def post(module, args, out, rec=rec):
            rec.output = to_numpy(out)
            if out.requires_grad:
                out.register_hook(lambda g, rec=rec: setattr(rec, "grad_output", to_numpy(g)))

        handles.append(pair.torch_module.register_forward_pre_hook(pre))
        handles.append(pair.torch_module.register_forward_hook(post))
    return handles


def reference_loss_value(loss: object, finite: bool = True) -> torch.Tensor:
    """The reference loss's return value, checked: a scalar tensor that requires grad, and
    finite unless ``finite`` is False (training, where a loss that blows up on both sides is
    a finding); one line saying what it is instead."""
    must = "the reference loss must return a scalar tensor that requires grad"
    if not isinstance(loss, torch.Tensor):
        raise InputError(f"{must}, got {type(loss).__name__}; compute it with torch operations")
    if loss.numel() != 1:
        raise InputError(
            f"{must}, got a tensor of shape {tuple(loss.shape)}; reduce it (.mean() or .sum())"
        )
    if not loss.requires_grad:
        raise InputError(
            f"{must}, got one detached from the output; compute it from the output with torch "
            "operations (no .item(), .detach(), NumPy or torch.no_grad())"
        )
    if finite and not bool(torch.isfinite(loss.detach()).all()):
        raise InputError(
            f"the reference loss is {float(loss.detach())}, not finite, so it cannot judge "
            "ours; fix the reference loss (a log of 0?) or the target"
        )
    return loss


def check_finite_reference(what: str, value: np.ndarray | None) -> None:
    """One line when a value the reference computed holds inf or NaN: a non-finite
    reference cannot judge ours, so it is refused rather than blamed on ours."""
    if value is None or value.dtype.kind not in "fc" or bool(np.isfinite(value).all()):
        return
    bad = np.argwhere(~np.isfinite(value))
    raise InputError(
        f"the reference's {what} is not finite ({len(bad)} of {value.size} values, first at "
        f"{tuple(int(i) for i in bad[0])}), so it cannot judge ours; fix the reference (a log "
        "of 0, a division by 0, an overflow) or scale x down"
    )


def _output_gradient(loss_fn: Callable, out: torch.Tensor, target: np.ndarray, dtype) -> tuple:
    """(loss value, dL/d(output)) of the reference loss at ``out``, detached from the model."""
    logits = out.detach().requires_grad_(True)
    try:
        loss = loss_fn(logits, as_tensor(target, dtype))
    except USER_ERRORS as exc:
        raise InputError(
            f"the reference loss rejected the target ({target.dtype} {target.shape}) for the "
            f"output {tuple(out.shape)}: {describe_error(exc)}"
        ) from exc
    loss = reference_loss_value(loss)
    try:
        (dlogits,) = torch.autograd.grad(loss, [logits])
    except RuntimeError as exc:
        raise InputError(
            "the reference loss does not depend on the output it is given; compute it from "
            f"that output ({describe_error(exc)})"
        ) from exc
    check_finite_reference("gradient of the loss (dL/d(output))", to_numpy(dlogits))
    return loss, dlogits


def run_chain(
    model: nn.Module,
    pairs: list[LayerPair],
    loss_fn: Callable,
    x: np.ndarray,
    target: np.ndarray,
    dtype: torch.dtype,
) -> dict[str, LayerRecord]:
    """Forward and backward of the whole reference; records keyed like ours' (plus "loss").

    Parameter gradients are taken with ``torch.autograd.grad``, so no ``.grad`` is touched.
    A reference whose output autograd cannot follow, whose loss is not a finite scalar, or
    whose gradients are not finite is refused in one line.
    """
    records = {p.name: LayerRecord() for p in pairs}
    handles = _install_hooks(pairs, records)
    x_t = as_tensor(x, dtype, grad=True)
    try:
        out = model(x_t)
    except USER_ERRORS as exc:
        raise InputError(f"the reference model raised {describe_error(exc)}") from exc
    finally:
        for h in handles:
            h.remove()
    if not out.requires_grad:
        raise InputError(
            "the reference's output is detached: autograd sees no path from x or the "
            "parameters to it; return the tensor its layers compute (no .detach(), .numpy() "
            "or torch.no_grad() in forward)"
        )
    loss, dlogits = _output_gradient(loss_fn, out, target, dtype)
    params = [
        (p.name, pp.torch_name, dict(p.torch_module.named_parameters())[pp.torch_name])
        for p in pairs
        for pp in p.params
    ]
    grads = torch.autograd.grad(
        out, [x_t] + [t for _, _, t in params], grad_outputs=dlogits, allow_unused=True
    )
    for (name, tname, tparam), g in zip(params, grads[1:]):
        records[name].grads[tname] = to_numpy(g) if g is not None else np.zeros(tuple(tparam.shape))
        check_finite_reference(f"gradient of {name}'s {tname}", records[name].grads[tname])
    for name, rec in records.items():
        check_finite_reference(f"{name} input gradient", rec.grad_input)
    records["loss"] = LayerRecord(
        input=to_numpy(out), output=to_numpy(loss), grad_input=to_numpy(dlogits)
    )
    return records


def probe_module(
    pair: LayerPair, x: np.ndarray, upstream: np.ndarray, dtype: torch.dtype
) -> LayerRecord:
    """One module alone: forward on x, backward of ``upstream``; grads keyed by torch names.
    Non-finite reference values are refused, as in ``run_chain``."""
    x_t = as_tensor(x, dtype, grad=True)
    named = list(pair.torch_module.named_parameters())
    out = pair.torch_module(x_t)
    grads = torch.autograd.grad(
        out,
        [x_t] + [t for _, t in named],
        grad_outputs=as_tensor(upstream, dtype),
        allow_unused=True,
    )
    rec = LayerRecord(
        input=x.copy(),
        output=to_numpy(out),
        grad_output=upstream.copy(),
        grad_input=to_numpy(grads[0]),
    )
    rec.grads = {
        n: to_numpy(g) if g is not None else np.zeros(tuple(t.shape))
        for (n, t), g in zip(named, grads[1:])
    }
    gradients = [("input gradient", rec.grad_input)]
    gradients += [(f"gradient of {name}", value) for name, value in rec.grads.items()]
    for what, value in gradients:
        check_finite_reference(f"{pair.name} {what} (alone, at a random upstream gradient)", value)
    return rec


def probe_loss(
    loss_fn: Callable, logits: np.ndarray, target: np.ndarray, dtype: torch.dtype
) -> LayerRecord:
    """The reference loss alone at ``logits``."""
    z = as_tensor(logits, dtype)
    loss, g = _output_gradient(loss_fn, z, target, dtype)
    return LayerRecord(input=logits.copy(), output=to_numpy(loss), grad_input=to_numpy(g))
