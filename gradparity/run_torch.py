"""Running the PyTorch reference: the whole chain with hooks, or one module in isolation.

Capture uses forward pre-/post-hooks and tensor hooks, not ``register_full_backward_hook``
(which breaks on in-place ops). The pre-hook feeds each aligned module a clone of its input,
so an in-place op inside it can neither alter what was recorded nor the gradient hook.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gradparity.align import LayerPair
from gradparity.errors import InputError
from gradparity.records import LayerRecord


def to_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().copy()


def as_tensor(a: np.ndarray, dtype: torch.dtype, grad: bool = False) -> torch.Tensor:
    # ascontiguousarray would turn a 0-d array (one example's class) into shape (1,).
    t = torch.as_tensor(np.ascontiguousarray(a) if np.ndim(a) else np.asarray(a))
    if t.is_floating_point():
        t = t.to(dtype)
    return t.requires_grad_(grad)


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


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

        handles.append(pair.module.register_forward_pre_hook(pre))
        handles.append(pair.module.register_forward_hook(post))
    return handles


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
    """
    records = {p.name: LayerRecord() for p in pairs}
    handles = _install_hooks(pairs, records)
    x_t = as_tensor(x, dtype, grad=True)
    try:
        out = model(x_t)
    except Exception as exc:
        raise InputError(f"the reference model raised {_one_line(exc)}") from exc
    finally:
        for h in handles:
            h.remove()
    logits = out.detach().requires_grad_(True)
    try:
        loss = loss_fn(logits, as_tensor(target, dtype))
        (dlogits,) = torch.autograd.grad(loss, [logits])
    except Exception as exc:
        raise InputError(
            f"the reference loss rejected the target ({target.dtype} {target.shape}) for the "
            f"output {tuple(out.shape)}: {_one_line(exc)}"
        ) from exc
    params = [
        (p.name, pp.torch_name, dict(p.module.named_parameters())[pp.torch_name])
        for p in pairs
        for pp in p.params
    ]
    grads = torch.autograd.grad(
        out, [x_t] + [t for _, _, t in params], grad_outputs=dlogits, allow_unused=True
    )
    for (name, tname, tparam), g in zip(params, grads[1:]):
        records[name].grads[tname] = to_numpy(g) if g is not None else np.zeros(tuple(tparam.shape))
    records["loss"] = LayerRecord(
        input=to_numpy(out), output=to_numpy(loss), grad_input=to_numpy(dlogits)
    )
    return records


def probe_module(
    pair: LayerPair, x: np.ndarray, upstream: np.ndarray, dtype: torch.dtype
) -> LayerRecord:
    """One module alone: forward on x, backward of ``upstream``; grads keyed by torch names."""
    x_t = as_tensor(x, dtype, grad=True)
    named = list(pair.module.named_parameters())
    out = pair.module(x_t)
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
    return rec


def probe_loss(
    loss_fn: Callable, logits: np.ndarray, target: np.ndarray, dtype: torch.dtype
) -> LayerRecord:
    """The reference loss alone at ``logits``."""
    z = as_tensor(logits, dtype, grad=True)
    loss = loss_fn(z, as_tensor(target, dtype))
    (g,) = torch.autograd.grad(loss, [z])
    return LayerRecord(input=logits.copy(), output=to_numpy(loss), grad_input=to_numpy(g))
