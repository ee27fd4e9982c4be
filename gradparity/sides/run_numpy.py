"""Driving NumPy layers through the protocol: the whole chain, or one layer in isolation.

Every run works on deep copies (or on the objects themselves, restored after, where a deep
copy would not be independent: ``sides.fresh``), so the user's objects are never touched and
left-over state (caches in lists, gradients accumulated with ``+=``) cannot leak between runs.
Each run is preceded by a forward pass on a different input, as in training, so a layer whose
backward uses a stale cached input is caught rather than accidentally right. A layer adapted with
``wrap(..., reset=...)`` has its reset run before the warm-up and again before the real pass.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from gradparity.core.records import (
    USER_ERRORS,
    BadValue,
    LayerRecord,
    error_info,
    real_array,
    same_values,
    snapshot,
)
from gradparity.sides.adapt import before_pass, grads_of, params_of
from gradparity.sides.backward_updates import read_backward_updates, restore_params
from gradparity.sides.child_records import Path, recording_children
from gradparity.sides.fresh import working_copy
from gradparity.sides.running_stats import kept_running, ours_running

Child = tuple[str, Path, int]  # a layer inside a container: its name, path and call


def zero_grads(layer: Any) -> None:
    """Zero the layer's existing gradient arrays in place (layers that do ``grads[k] += ...``).
    Gradients that cannot be read are left alone: the run that follows reports them."""
    try:
        grads = grads_of(layer)
    except USER_ERRORS:
        return
    for grad in grads.values():
        if isinstance(grad, np.ndarray) and grad.flags.writeable:
            grad[...] = 0


def _warm_up(layers: list[tuple[str, Any]], x_warm: np.ndarray) -> None:
    h = x_warm
    for _, layer in layers:
        before_pass(layer)
        # Caches stay behind (that is what the warm-up is for), running statistics do not:
        # the compared pass updates them from the state the reference starts from too.
        try:
            with kept_running(layer):
                h = real_array(layer.forward(h.copy()), "forward's output", "output")
        except USER_ERRORS:  # the real pass reports errors; the warm-up only leaves state behind
            return


def _changed_params(layer: Any, before: dict[str, np.ndarray]) -> list[str]:
    """Parameters whose values differ from ``before``: only an optimiser may change them."""
    now = params_of(layer)
    return [
        f"param {k}"
        for k, v in before.items()
        if k in now and not same_values(np.asarray(now[k]), v)
    ]


def _param_snapshot(layer: Any) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in params_of(layer).items()}


def _ready_for_pass(layer: Any) -> None:
    """The layer's ``reset=`` run and its gradient arrays zeroed, before the pass that counts."""
    before_pass(layer)
    zero_grads(layer)


def _forward(
    layer: Any, x: np.ndarray, rec: LayerRecord, careful: bool = True
) -> np.ndarray | None:
    """``careful``: snapshot the parameters to tell a change in forward from one in backward
    (otherwise ``run_chain`` checks them once after the pass: ``_params_changed``)."""
    rec.input = before = snapshot(x)
    fed = x.copy()
    params_before = _param_snapshot(layer) if careful else {}
    try:
        out = real_array(layer.forward(fed), "forward's output", "output")
    except USER_ERRORS as exc:
        rec.error = error_info("forward", exc)
        return None
    if not same_values(fed, before):
        rec.mutated.append("input")
    rec.mutated += _changed_params(layer, params_before)
    rec.buffers = ours_running(layer)
    rec.output = out
    return rec.output


def _backward(
    layer: Any, grad_out: np.ndarray, rec: LayerRecord, careful: bool = True, private: bool = True
) -> np.ndarray | None:
    """``careful`` as in ``_forward``; without ``private`` the gradients are kept, not copied
    (streaming: the run's own copy of the layer is the only holder of them)."""
    rec.grad_output = before = snapshot(grad_out)
    fed = grad_out.copy()
    params_before = _param_snapshot(layer) if careful else {}
    try:
        returned = layer.backward(fed)
        grad_in = real_array(returned, "backward's return value (dL/dx)", "grad_input")
    except USER_ERRORS as exc:
        rec.error = error_info("backward", exc)
        return None
    grads = grads_of(layer)  # an InputError here is a params/grads accessor to fix
    try:
        # A None entry is a gradient never set: compared as missing, not as a bad value.
        rec.grads = {
            k: real_array(v, f"grads[{k!r}]", f"grad:{k}", private=private)
            for k, v in grads.items()
            if v is not None
        }
    except BadValue as exc:
        rec.error = error_info("backward", exc)
        return None
    if not same_values(fed, before):
        rec.mutated.append("grad_output")
    changed = _changed_params(layer, params_before)
    rec.mutated += [f"{p} (backward)" for p in changed]
    rec.aliases = _aliases(grads, params_of(layer), fed, returned)
    if changed:  # an optimiser inside backward: read the gradient from its step, then undo it
        keys = [p.split()[1] for p in changed]
        rec.backward_updates, recovered = read_backward_updates(
            layer, params_before, keys, rec.grads
        )
        rec.grads.update(recovered)
        restore_params(layer, params_before)
    rec.grad_input = grad_in
    return rec.grad_input


def _aliases(grads: dict, params: dict, grad_out: np.ndarray, grad_in: Any) -> list[str]:
    """Gradient arrays sharing memory with a parameter or another gradient (an optimiser step
    would then corrupt one through the other)."""
    found = []
    named = [(f"param {k}", v) for k, v in params.items()] + [("grad_output", grad_out)]
    keys = list(grads)
    for i, k in enumerate(keys):
        g = grads[k]
        if not isinstance(g, np.ndarray):
            continue
        others = named + [(f"grad {o}", grads[o]) for o in keys[i + 1 :]]
        found += [
            f"grad {k} shares memory with {name}"
            for name, arr in others
            if isinstance(arr, np.ndarray) and np.shares_memory(g, arr)
        ]
    return found


def loss_value(returned: Any) -> np.ndarray:
    """The loss's forward value as a 0-d float array; ``BadValue`` unless it is one real
    number (a float, or an array holding one)."""
    value = real_array(returned, "the loss's forward value", "output")
    if value.size != 1:
        raise BadValue(
            "output",
            f"the loss's forward value has shape {value.shape}, not one number",
            "return the loss as one number (the batch's mean or sum of the per-example losses)",
        )
    return np.asarray(float(value.reshape(())))


def run_chain(
    layers: list[tuple[str, Any]],
    loss: Any,
    x: np.ndarray,
    target: np.ndarray,
    x_warm: np.ndarray,
    children: list[Child] | None = None,
    streaming: bool = False,
    force_careful: bool = False,
) -> dict[str, LayerRecord]:
    """Forward through every layer and the loss, then backward; records keyed by layer name
    plus "loss". A layer that raises ends the pass there (later layers get no record). Runs
    on copies (``sides.fresh.working_copy``: the originals themselves, restored after, when
    their deep copies are wired to them). ``children``: (name, path, call) of layers inside
    containers, recorded as the containers call them (``child_records``); a child gets a
    record once its forward returned. The parameters are compared with the originals once
    after the pass; a pass that changed one is run again the careful way (``force_careful``:
    snapshots around each call), which names the phase that changed it. ``streaming``: the
    gradients are not copied out of the run's own layers."""
    children = children or []
    with working_copy((layers, loss)) as (own_layers, own_loss):
        # The parameters are checked once, against the originals, which a deep copy leaves
        # untouched; a run on the originals themselves snapshots them around each call.
        careful = force_careful or any(o is m for (_, o), (_, m) in zip(own_layers, layers))
        _warm_up(own_layers, x_warm)  # before the recording: its calls are not compared
        with recording_children(own_layers, [path for _, path, _ in children]) as calls:
            records = _chain(own_layers, own_loss, x, target, careful, not streaming)
        rerun = not careful and _params_changed(own_layers, layers)
    if rerun:  # a parameter changed in forward or backward: the careful run tells which
        return run_chain(layers, loss, x, target, x_warm, children, streaming, True)
    for name, path, call in children:
        made = calls.get(path, [])
        if call < len(made) and made[call].output is not None:
            records[name] = made[call]
    return records


def _params_changed(own: list[tuple[str, Any]], originals: list[tuple[str, Any]]) -> bool:
    """Whether a parameter of a layer's deep copy no longer equals the original's."""
    return any(
        _changed_params(copy, params_of(original))
        for (_, copy), (_, original) in zip(own, originals)
    )


def _chain(
    layers: list[tuple[str, Any]],
    loss: Any,
    x: np.ndarray,
    target: np.ndarray,
    careful: bool = True,
    private: bool = True,
) -> dict[str, LayerRecord]:
    for _, layer in layers:
        _ready_for_pass(layer)
    before_pass(loss)
    records: dict[str, LayerRecord] = {}
    h = x
    for name, layer in layers:
        records[name] = LayerRecord()
        out = _forward(layer, h, records[name], careful)
        if out is None:
            return records
        h = out
    records["loss"] = loss_rec = LayerRecord(input=snapshot(h))
    try:
        loss_rec.output = loss_value(loss.forward(h.copy(), target))
        g = real_array(loss.backward(), "the loss's backward value (dL/dlogits)", "grad_input")
    except USER_ERRORS as exc:
        loss_rec.error = error_info("forward" if loss_rec.output is None else "backward", exc)
        return records
    loss_rec.grad_input = g
    for name, layer in reversed(layers):
        back = _backward(layer, g, records[name], careful, private)
        if back is None:
            return records
        g = back
    return records


def warm_input(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A different input of a's shape, for the warm-up pass (finite, also for an input near
    the dtype's largest values)."""
    top = float(np.max(np.abs(a))) if a.size else 0.0
    spread = max(float(np.std(a / top)) * top if top > 0 else 0.0, 1.0)
    limit = np.finfo(a.dtype).max if a.dtype.kind == "f" else np.inf
    with np.errstate(over="ignore"):
        warm = a + rng.standard_normal(a.shape) * 0.5 * spread
    return np.clip(warm, -limit, limit).astype(a.dtype)


class LayerRunner:
    """The ``NumpyRunner`` of a layered model: the whole chain and the loss, after a warm-up
    forward on an input drawn from ``rng`` at each run."""

    def __init__(
        self,
        layers: list[tuple[str, Any]],
        loss: Any,
        rng: np.random.Generator,
        children: list[Child] | None = None,
        streaming: bool = False,
    ) -> None:
        self.layers, self.loss, self.rng, self.children = layers, loss, rng, children
        self.streaming = streaming

    def run(self, x: np.ndarray, target: np.ndarray) -> dict[str, LayerRecord]:
        """Records keyed by layer name plus "loss" (see ``run_chain``)."""
        warm = warm_input(x, self.rng)
        return run_chain(self.layers, self.loss, x, target, warm, self.children, self.streaming)


def probe_layer(layer: Any, x: np.ndarray, upstream: np.ndarray, x_warm: np.ndarray) -> LayerRecord:
    """One layer alone on a fresh copy (or on the layer itself, restored after, when its deep
    copies are wired to it: ``sides.fresh``): warm-up forward, forward(x), backward(upstream)."""
    rec = LayerRecord()
    with working_copy(layer) as fresh:
        _warm_up([("", fresh)], x_warm)
        _ready_for_pass(fresh)
        if _forward(fresh, x, rec) is not None:
            _backward(fresh, upstream, rec)
    return rec


def probe_loss(
    loss: Any, logits: np.ndarray, target: np.ndarray, logits_warm: np.ndarray
) -> LayerRecord:
    """The loss alone on a fresh copy (as ``probe_layer``), fed the reference's logits."""
    with working_copy(loss) as fresh:
        return _loss_pass(fresh, logits, target, logits_warm)


def _loss_pass(
    loss: Any, logits: np.ndarray, target: np.ndarray, logits_warm: np.ndarray
) -> LayerRecord:
    before_pass(loss)
    with contextlib.suppress(*USER_ERRORS):  # the real call below reports errors
        loss.forward(logits_warm.copy(), target)
    before_pass(loss)
    before = snapshot(logits)
    rec = LayerRecord(input=before)
    fed = logits.copy()
    try:
        rec.output = loss_value(loss.forward(fed, target))
        rec.grad_input = real_array(
            loss.backward(), "the loss's backward value (dL/dlogits)", "grad_input"
        )
    except USER_ERRORS as exc:
        rec.error = error_info("forward" if rec.output is None else "backward", exc)
    if not same_values(fed, before):
        rec.mutated.append("input")
    return rec
