"""``truncated_bptt``: a recurrent layer's gradient that backprop through time stopped after one
step. The reference recurrent module is run once per time step t, from its own state before t
(held fixed) on x[:, t] alone, for the upstream gradient at t only: each run is step t's
gradient with the recurrent path cut. Ours is labelled when it equals the last step's alone
(the loop over time never ran backwards) or the sum of every step's (each step's state treated
as a constant), and the full gradient does not.

``gate_derivative``: an LSTM whose backward differentiates one gate wrongly. Both sides run
again on the input with every step but the last set to zero, so the gradient of the stacked
input weight (4H, D: torch's row blocks i, f, g, o) is the last step's dL/dz alone times its
input, and each block depends on its own gate's derivative only. The gate is named when
exactly one block differs (a wrong cell derivative moves three blocks, and is not named).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gradparity.comparison.diff import reference_grad
from gradparity.core.labels import GATE_DERIVATIVE, TRUNCATED_BPTT, UNEXPLAINED
from gradparity.core.plan import Context
from gradparity.core.records import LayerRecord
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.evidence.explain import _diverging, _ours_value
from gradparity.pairing.align import LayerPair
from gradparity.sides import run_numpy, run_torch
from gradparity.sides.isolation import Probe

GATES = ("i", "f", "g", "o")  # torch's order of an LSTM's stacked gate blocks
# dL/dz of each gate at one step, as the fix states it (c the cell, h the hidden state).
GATE_FORMULAS = {
    "i": "dL/dz_i = dL/dc_t * g * i * (1 - i) (a sigmoid)",
    "f": "dL/dz_f = dL/dc_t * c_{t-1} * f * (1 - f) (a sigmoid)",
    "g": "dL/dz_g = dL/dc_t * i * (1 - g**2) (a tanh)",
    "o": "dL/dz_o = dL/dh_t * tanh(c_t) * o * (1 - o) (a sigmoid)",
}


def _single_rnn(module: nn.Module) -> nn.RNNBase | None:
    """The one batch-first, one-layer, one-direction recurrent module inside ``module``
    (which returns its output sequence), else None."""
    found = [m for m in module.modules() if isinstance(m, nn.RNNBase)]
    if len(found) != 1 or found[0] is module:  # an RNNBase itself returns a tuple
        return None
    rnn = found[0]
    ok = rnn.batch_first and rnn.num_layers == 1 and not rnn.bidirectional
    return rnn if ok else None


def step_records(module: nn.Module, x: np.ndarray, upstream: np.ndarray) -> list[LayerRecord]:
    """One record per time step t of ``module`` (x (N, T, D) -> (N, T, H), holding one
    recurrent module): dL/dx (x's shape, non-zero at t only) and dL/d(parameter) by the
    module's parameter names, for the upstream gradient at t alone with the state before t
    held fixed. Empty when the module holds no single batch-first recurrent module."""
    copied = copy.deepcopy(module)
    rnn = _single_rnn(copied)
    if rnn is None or x.ndim != 3:
        return []
    dtype = torch.float32 if x.dtype == np.float32 else torch.float64
    rnn.to(dtype)
    named = list(copied.named_parameters())
    xs = torch.tensor(x, dtype=dtype)
    records = []
    for t in range(x.shape[1]):
        with torch.no_grad():
            state = rnn(xs[:, :t])[1] if t else None
        step = xs[:, t : t + 1].clone().requires_grad_(True)
        out = rnn(step, state)[0]
        grads = torch.autograd.grad(
            out,
            [step, *(p for _, p in named)],
            grad_outputs=torch.tensor(upstream[:, t : t + 1], dtype=dtype),
            allow_unused=True,
        )
        grad_input = np.zeros_like(x)
        grad_input[:, t : t + 1] = grads[0].cpu().numpy()
        by_name = {
            n: np.zeros(tuple(p.shape)) if g is None else g.cpu().numpy()
            for (n, p), g in zip(named, grads[1:])
        }
        records.append(LayerRecord(grad_input=grad_input, grads=by_name))
    return records


def _summed(records: list[LayerRecord]) -> LayerRecord:
    """Every step's gradients added up: the gradient with each step's state held fixed."""
    grads = {name: np.sum([r.grads[name] for r in records], axis=0) for name in records[0].grads}
    inputs = [r.grad_input for r in records if r.grad_input is not None]
    return LayerRecord(grad_input=np.sum(inputs, axis=0), grads=grads)


def truncation(
    pair: LayerPair,
    x: np.ndarray,
    upstream: np.ndarray,
    quantity: str,
    ours: np.ndarray,
    tol: Tolerance,
) -> str | None:
    """ "last step only" or "one step each" when ours (``quantity``'s value, ours' layout)
    equals that truncated gradient of ``pair``'s reference at x (N, T, D) and ``upstream``
    (N, T, H); None otherwise."""
    steps = step_records(pair.torch_module, x, upstream)
    if len(steps) < 2:  # one step: nothing to truncate
        return None
    for name, record in (("last step only", steps[-1]), ("one step each", _summed(steps))):
        if tol.matches(ours, reference_grad(pair, record, quantity)):
            return name
    return None


def _name(row: Row, how: str) -> None:
    row.diagnosis = TRUNCATED_BPTT
    row.detail["truncation"] = how
    row.message = (
        f"ours equals the reference's gradient with backprop through time cut after one step "
        f"({how}): the gradient flowing back through the hidden state to earlier steps is "
        "missing"
    )
    row.fix = (
        "loop over time backwards, adding dL/dh_t from the next step (W_hh.T @ dz_{t+1}) to the "
        "upstream gradient at t, and sum every step's parameter gradients"
    )


def recurrent_probe(ctx: Context) -> None:
    """``compare``'s evidence step: each ``unexplained`` gradient of a layer whose reference
    is a recurrent module, equal to a one-step truncation of it, gets ``truncated_bptt``."""
    for row, probe in _diverging(ctx):
        if row.diagnosis != UNEXPLAINED or row.layer == "loss":
            continue
        x, ours = probe.ref.input, _ours_value(probe.ours, row.quantity)
        if x is None or ours is None or probe.upstream is None:
            continue
        how = truncation(probe.pair, x, probe.upstream, row.quantity, ours, ctx.tolerance)
        if how is not None:
            _name(row, how)


def _input_weight_key(ours: LayerRecord, pair: LayerPair, x: np.ndarray, hidden: int) -> str | None:
    """The key of ours' stacked input weight gradient, (4H, D) for x (N, T, D), that the
    reference has too ("weight_ih" first); None when there is none."""
    shape = (4 * hidden, x.shape[-1])
    keys = sorted(ours.grads, key=lambda k: k != "weight_ih")
    paired = {p.key for p in pair.params}
    return next((k for k in keys if k in paired and np.shape(ours.grads[k]) == shape), None)


def gate_blocks(probe: Probe, tol: Tolerance, tdtype: torch.dtype) -> dict | None:
    """The numbers behind ``gate_derivative`` for ``probe``'s layer, or None when the test
    does not fit: x (N, T, D) with T >= 2, output (N, T, H), a stacked input weight
    (4H, D), and exactly one gate block of its gradient differing once every step but the
    last is zero. Returns {"gate", "parameter", "rows", "max_abs"}."""
    x, out, upstream = probe.ref.input, probe.ref.output, probe.upstream
    if x is None or out is None or upstream is None or x.ndim != 3 or out.ndim != 3:
        return None
    if x.shape[1] < 2:  # one step from a zero cell: the forget gate has no effect
        return None
    last_only = x.copy()
    last_only[:, :-1] = 0
    ours = run_numpy.probe_layer(probe.pair.layer, last_only, upstream, probe.warm)
    key = _input_weight_key(ours, probe.pair, x, out.shape[-1])
    if key is None:
        return None
    ref = run_torch.probe_module(probe.pair, last_only, upstream, tdtype)
    ours_blocks = np.split(ours.grads[key], 4)
    ref_blocks = np.split(reference_grad(probe.pair, ref, f"grad:{key}"), 4)
    differing = [k for k in range(4) if not tol.matches(ours_blocks[k], ref_blocks[k])]
    if len(differing) != 1:
        return None
    k, hidden = differing[0], out.shape[-1]
    return {
        "gate": GATES[k],
        "parameter": key,
        "rows": [k * hidden, (k + 1) * hidden],
        "max_abs": float(np.abs(ours_blocks[k] - ref_blocks[k]).max()),
    }


def _name_gate(row: Row, found: dict) -> None:
    gate, (start, stop) = found["gate"], found["rows"]
    row.diagnosis = GATE_DERIVATIVE
    row.detail["gate_blocks"] = found
    row.message = (
        f"the LSTM's derivative of its {gate} gate is wrong: with the input zero before the last "
        f"step, ours' gradient of {found['parameter']} differs from the reference's only in the "
        f"{gate} gate's rows {start}:{stop} (gate blocks i, f, g, o, as torch stacks them)"
    )
    row.fix = f"at each step use {GATE_FORMULAS[gate]}"


@dataclass
class GateDerivative:
    """``compare``'s evidence step: each ``unexplained`` gradient of an LSTM-shaped layer
    whose input weight gradient differs in exactly one gate's block gets ``gate_derivative``."""

    tdtype: torch.dtype

    def __call__(self, ctx: Context) -> None:
        found: dict[str, dict | None] = {}  # one re-run per layer
        for row, probe in _diverging(ctx):
            if row.diagnosis != UNEXPLAINED or row.layer == "loss":
                continue
            if row.layer not in found:
                found[row.layer] = gate_blocks(probe, ctx.tolerance, self.tdtype)
            gate = found[row.layer]
            if gate is not None:
                _name_gate(row, gate)
