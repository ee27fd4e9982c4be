"""Running the PyTorch reference: the whole chain recorded, or one module in isolation.

The chain is recorded by ``torch_recorder`` (forward pre-/post-hooks and tensor hooks), which
keeps every call of a module apart: each NumPy layer gets the record of its own call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gradparity.core.errors import InputError, describe_error
from gradparity.core.records import USER_ERRORS, LayerRecord
from gradparity.core.validate import DTYPES
from gradparity.pairing.align import LayerPair, check_calls, layers_by_module
from gradparity.sides.running_stats import kept_buffers, reference_running
from gradparity.sides.torch_recorder import ModuleCall, TorchRecorder, to_numpy

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}  # validate's names -> torch


def as_tensor(a: np.ndarray, dtype: torch.dtype, grad: bool = False) -> torch.Tensor:
    # ascontiguousarray would turn a 0-d array (one example's class) into shape (1,).
    t = torch.as_tensor(np.ascontiguousarray(a) if np.ndim(a) else np.asarray(a))
    if t.is_floating_point():
        t = t.to(dtype)
    return t.requires_grad_(grad)


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


def all_finite(value: np.ndarray) -> bool:
    """No inf or NaN in ``value`` (floating): a finite sum settles it in one pass without a
    mask; only a sum that overflowed or met inf/NaN is checked element by element."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(value.sum())) or bool(np.isfinite(value).all())


def check_finite_reference(what: str, value: np.ndarray | None) -> None:
    """One line when a value the reference computed holds inf or NaN: a non-finite
    reference cannot judge ours, so it is refused rather than blamed on ours."""
    if value is None or value.dtype.kind not in "fc" or all_finite(value):
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

    Each layer's record is the one of its call of the module (``pair.call``). Parameter
    gradients are taken with ``torch.autograd.grad``, so no ``.grad`` is touched; a module
    that runs more than once gives each call its own share (see ``_call_gradients``). A
    reference whose output autograd cannot follow, whose loss is not a finite scalar, or
    whose gradients are not finite is refused in one line.
    """
    with kept_buffers(model):
        return _run_chain(model, pairs, loss_fn, x, target, dtype)


def _run_chain(
    model: nn.Module,
    pairs: list[LayerPair],
    loss_fn: Callable,
    x: np.ndarray,
    target: np.ndarray,
    dtype: torch.dtype,
) -> dict[str, LayerRecord]:
    x_t = as_tensor(x, dtype, grad=True)
    with TorchRecorder({p.module_name: p.torch_module for p in pairs}) as recorder:
        try:
            out = model(x_t)
        except USER_ERRORS as exc:
            raise InputError(f"the reference model raised {describe_error(exc)}") from exc
    running = {p.name: reference_running(p.torch_module) for p in pairs}
    counts = recorder.counts()
    check_calls(layers_by_module(pairs), counts)
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
        if counts[p.module_name] == 1
        for pp in p.params
    ]
    grads = torch.autograd.grad(
        out, [x_t] + [t for _, _, t in params], grad_outputs=dlogits, allow_unused=True
    )
    records = {p.name: _record(recorder.of(p.module_name)[p.call]) for p in pairs}
    for name, buffers in running.items():
        records[name].buffers = buffers
    for (name, tname, tparam), g in zip(params, grads[1:]):
        # The gradients autograd just made are held by nothing else: kept without a copy.
        records[name].grads[tname] = (
            g.detach().cpu().numpy() if g is not None else np.zeros(tuple(tparam.shape))
        )
    for pair in pairs:
        if counts[pair.module_name] > 1 and pair.params:
            records[pair.name].grads = _call_gradients(pair.torch_module, records[pair.name], dtype)
    for name, rec in records.items():
        for tname, value in rec.grads.items():
            check_finite_reference(f"gradient of {name}'s {tname}", value)
    for name, rec in records.items():
        check_finite_reference(f"{name} input gradient", rec.grad_input)
    records["loss"] = LayerRecord(
        input=to_numpy(out), output=to_numpy(loss), grad_input=to_numpy(dlogits)
    )
    return records


def _record(call: ModuleCall) -> LayerRecord:
    """The values of one recorded call as a layer record (no parameter gradients yet)."""
    return LayerRecord(
        input=call.input,
        output=call.output,
        grad_output=call.grad_output,
        grad_input=call.grad_input,
    )


def _call_gradients(
    module: nn.Module, rec: LayerRecord, dtype: torch.dtype
) -> dict[str, np.ndarray]:
    """dL/d(parameter) of one call of a module the forward runs more than once, by torch name.

    Autograd over the whole forward sums the shares of every call in one gradient, while
    each of ours' layers holds the share of its own call: the module is run again on that
    call's input and differentiated at that call's dL/d(output) (0 where the loss does not
    reach that output).
    """
    if rec.input is None or rec.output is None:
        return {n: np.zeros(tuple(t.shape)) for n, t in module.named_parameters()}
    upstream = rec.grad_output if rec.grad_output is not None else np.zeros_like(rec.output)
    _, _, grads, _ = _differentiate(module, rec.input, upstream, dtype)
    return grads


def _differentiate(
    module: nn.Module, x: np.ndarray, upstream: np.ndarray, dtype: torch.dtype
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the module's output on ``x``, dL/dx, dL/d(parameter) by torch name, its running
    statistics after that forward) at ``upstream`` = dL/d(output); a parameter the output
    does not use gets a zero gradient. The module's buffers are put back afterwards."""
    x_t = as_tensor(x, dtype, grad=True)
    named = list(module.named_parameters())
    # Put back after the backward too: autograd refuses buffers changed since its forward.
    with kept_buffers(module):
        out = module(x_t)
        running = reference_running(module)
        grads = torch.autograd.grad(
            out,
            [x_t] + [t for _, t in named],
            grad_outputs=as_tensor(upstream, dtype),
            allow_unused=True,
        )
    by_name = {
        n: to_numpy(g) if g is not None else np.zeros(tuple(t.shape))
        for (n, t), g in zip(named, grads[1:])
    }
    return to_numpy(out), to_numpy(grads[0]), by_name, running


def probe_module(
    pair: LayerPair, x: np.ndarray, upstream: np.ndarray, dtype: torch.dtype
) -> LayerRecord:
    """One module alone: forward on x (N, ...), backward of ``upstream`` (like the output);
    grads keyed by torch names. Non-finite reference values are refused, as in
    ``run_chain``."""
    output, grad_input, grads, running = _differentiate(pair.torch_module, x, upstream, dtype)
    rec = LayerRecord(
        input=x.copy(),
        output=output,
        grad_output=upstream.copy(),
        grad_input=grad_input,
        buffers=running,
    )
    rec.grads = grads
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
