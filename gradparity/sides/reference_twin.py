"""``compare(..., dtype="float32")`` with a torch reference: the reference run once more in
float64, a third opinion that measures the reference's own float32 rounding tensor by tensor.

The float32 reference and ours round differently (NumPy's and torch's float32 tanh differ by
an ulp near saturation), so a fixed tolerance either flags correct networks or hides bugs.
The float64 twin (a copy of the reference moved to float64) repeats both runs: the chain from
a float64 copy of x, and each isolated probe on float64 copies of what the float32 probe was
fed. Each tensor's budget is ``float32_budget.measured_budget`` of the reference's float32
value against the twin's, its floor taken of the upstream gradient for a ``grad_input`` (a
derivative that cancels to ~0 keeps an ulp of it). In chain mode a layer also receives
error from upstream: ours' chain fed it other inputs and upstream gradients than the
reference's chain. The twin is fed both, and what that difference makes of each of its tensors
(``received``) is added to the budget, which is never less than the same tensor's isolate
budget. A layer whose isolated probe drifts far beyond rounding (a random draw, such as a
dropout mask not shared) measures nothing: it, and the chain from it on, keep the fixed float32
tolerance, with a note naming it.

The reference's own drift understates what an honest float32 implementation must round
where the reference's kernel is more accurate (torch's LSTM sums its gates in one fused
product; NumPy adds ``x @ W_ih.T + b_ih + h @ W_hh.T + b_hh`` in four rounded steps: 8x torch's
drift on gate pre-activations near 1e3 whose sum cancels). So the twin runs once more,
nudged (``ReferenceTwin.nudged``): its parameters and floating buffers, x and every probe's
input each moved by one relative float32 ulp with seeded random signs, upstream gradients and
targets kept. max|nudged - twin| of each tensor (``conditioning``) is what rounding the
layer's operands once makes of it, an error any float32 implementation may commit and the one
upstream rounding would cause; it is added to the budget
(``float32_budget.measured_budget``), beside the drift in ``detail["float32_budget"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from gradparity.core.plan import Entry, TensorPair
from gradparity.core.records import USER_ERRORS, LayerRecord
from gradparity.core.tolerance import Tolerance, tolerance_for
from gradparity.evidence.float32_budget import (
    FLOAT32_EPS,
    Budget,
    Key,
    RowTolerances,
    beyond_rounding,
    largest,
    reference_budget,
    widest,
)
from gradparity.pairing.align import LayerPair
from gradparity.sides import run_torch
from gradparity.sides.float64_twin import as_float64
from gradparity.sides.isolation import Probe
from gradparity.sides.running_stats import RUNNING_ALIASES
from gradparity.sides.training_steps import Shadow

FLOAT64 = torch.float64
# The nudged twin's signs are drawn from this seed: a report is the same on every run.
NUDGE_SEED = 0
# Records as ``compare``'s pairing step reads them: the reference's chain, then its isolated
# probes (layer name, or "loss", -> record).
Records = tuple[dict[str, LayerRecord], dict[str, LayerRecord]]
REFERENCE_ROUNDING = (
    "float32 judged by the reference's own rounding: the reference was run again in float64 "
    "(chain from x, and each isolated probe on the same inputs); in chain mode that drift "
    "includes what the layer received from upstream; each tensor may differ from the "
    "reference by its conditioning (the twin run once more with its parameters and inputs "
    "nudged by a float32 ulp: what rounding them once makes of it) plus"
)


@dataclass
class ReferenceTwin:
    """A float64 copy of the reference and the layer pairs pointing into it."""

    model: nn.Module
    pairs: list[LayerPair]

    @staticmethod
    def make(ref_model: nn.Module, pairs: list[LayerPair]) -> ReferenceTwin:
        """Copy ``ref_model`` (weights already synced) and move the copy to float64."""
        shadow = Shadow.make(ref_model, None, pairs, None)
        return ReferenceTwin(shadow.model, shadow.pairs)

    def records(
        self,
        loss: Callable,
        x: np.ndarray,
        target: np.ndarray,
        probes: dict[str, Probe],
        nudge: Callable[[np.ndarray], np.ndarray] = as_float64,
    ) -> Records:
        """(the twin's chain on float64 copies of x (N, ...) and target, each probe of
        ``probes`` repeated on float64 copies of what the reference's float32 probe was fed);
        ``nudge`` makes those copies of x and of each probe's input (not of targets or upstream
        gradients)."""
        chain = run_torch.run_chain(
            self.model, self.pairs, loss, nudge(x), as_float64(target), FLOAT64
        )
        by_name = {p.name: p for p in self.pairs}
        isolated = {}
        for name, probe in probes.items():
            fed = probe.ref.input
            assert fed is not None  # every probe is fed the reference chain's input
            fed = nudge(fed)
            if probe.upstream is None:
                isolated[name] = run_torch.probe_loss(loss, fed, as_float64(target), FLOAT64)
            else:
                isolated[name] = run_torch.probe_module(
                    by_name[name], fed, as_float64(probe.upstream), FLOAT64
                )
        return chain, isolated

    def nudged(
        self, loss: Callable, x: np.ndarray, target: np.ndarray, probes: dict[str, Probe]
    ) -> Records:
        """``records`` of a copy of the twin whose parameters and floating buffers, and whose
        x and probe inputs, are each rounded once more (``_nudge``). How far that moves each
        tensor is the layer's conditioning."""
        rng = np.random.default_rng(NUDGE_SEED)
        copy = ReferenceTwin.make(self.model, self.pairs)
        with torch.no_grad():
            for tensor in [*copy.model.parameters(), *copy.model.buffers()]:
                if tensor.is_floating_point():
                    nudged = _nudge(rng, tensor.detach().cpu().numpy())
                    tensor.copy_(torch.as_tensor(nudged, dtype=tensor.dtype))
        return copy.records(loss, x, target, probes, partial(_nudge, rng))

    def fed(self, loss: Callable, chain: dict[str, LayerRecord], target: np.ndarray) -> Records:
        """(each layer and the loss of the twin fed, in float64, the input and upstream
        gradient of ``chain`` (a float32 chain's records), no isolated probes). A layer the
        chain never ran is left out; one whose backward never ran is fed a zero upstream."""
        records = {}
        for pair in self.pairs:
            rec = chain.get(pair.name)
            if rec is None or rec.input is None or rec.output is None:
                continue
            upstream = rec.grad_output if rec.grad_output is not None else np.zeros_like(rec.output)
            records[pair.name] = run_torch.probe_module(
                pair, as_float64(rec.input), as_float64(upstream), FLOAT64
            )
        logits = chain["loss"].input if "loss" in chain else None
        if logits is not None:
            records["loss"] = run_torch.probe_loss(
                loss, as_float64(logits), as_float64(target), FLOAT64
            )
        return records, {}


def _nudge(rng: np.random.Generator, array: np.ndarray) -> np.ndarray:
    """A float64 copy of a floating-point ``array`` (any shape), each element moved by one
    relative float32 ulp up or down at random; other arrays (labels, indices) as they are.
    An array of whole numbers is only copied: indices or counts handed over as floats (an
    embedding's input, a mask), exact in float32 and not the result of a rounding."""
    values = as_float64(array)
    if values.dtype.kind != "f" or np.array_equal(values, np.round(values)):
        return values
    signs = rng.choice([-1.0, 1.0], size=array.shape)
    return values * (1.0 + FLOAT32_EPS * signs)


@dataclass
class TwinEntries:
    """The entries a pairing step makes of the twin's records: its own run (``own``: for
    ``compare`` its chain and probes), for ``compare`` its layers fed ours' chain
    (``fed_ours``) and the float32 reference's chain (``fed_reference``) (the other front ends
    have no layer chain to feed, so nothing is received), and its nudged copy's run
    (``nudged``; none: no conditioning measured)."""

    own: list[Entry]
    fed_ours: list[Entry] = field(default_factory=list)
    fed_reference: list[Entry] = field(default_factory=list)
    nudged: list[Entry] = field(default_factory=list)

    def received(self) -> dict[Key, float]:
        """max|fed ours - fed reference| of each chain tensor: what the error received from
        upstream makes of it."""
        theirs = _values(self.fed_reference)
        return {
            key: float(np.abs(np.asarray(value, np.float64) - theirs[key]).max(initial=0.0))
            for key, value in _values(self.fed_ours).items()
            if key[0] == "chain" and key in theirs and np.shape(value) == np.shape(theirs[key])
        }

    def conditioning(self) -> dict[Key, float]:
        """max|nudged - own| of each tensor: what one float32 rounding of the layer's operands
        (its input and parameters; in chain mode also of x and every layer upstream) makes of
        it, the error any float32 implementation may commit however exactly it then sums."""
        own = _values(self.own)
        return {
            key: _gap(value, own[key])
            for key, value in _values(self.nudged).items()
            if key in own and np.shape(value) == np.shape(own[key])
        }


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| over elements finite in both (0 for none)."""
    gap = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(gap[np.isfinite(gap)].max(initial=0.0))


def _values(entries: list[Entry]) -> dict[Key, np.ndarray]:
    """The reference value of each tensor pair of ``entries``, by (mode, layer, quantity)."""
    return {_key(e): e.reference for e in entries if isinstance(e, TensorPair)}


def reference_tolerances(
    entries: list[Entry],
    twin: TwinEntries | None,
    rtol: float | None,
    atol: float | None,
    why: str = "",
    inputs: dict[Key, float] | None = None,
    judged_by: str = REFERENCE_ROUNDING,
    operands: dict[Key, float] | None = None,
) -> tuple[RowTolerances, list[str]]:
    """(the tolerance of every tensor pair of ``entries`` (float32, ours against the
    reference), notes): each pair's budget measured against the same pair of ``twin.own``,
    plus what the error received from upstream makes of it (chain mode) and the user's
    ``rtol``/``atol``; the fixed float32 tolerance and a note saying ``why`` when the twin did
    not run (None). ``inputs``: the largest input magnitude of each (mode, layer);
    ``judged_by``: how the budget note says the drift was measured; ``operands``: the
    magnitude a tensor's floor is taken of, by key, where the caller knows it (else from
    ``inputs`` and the entry's upstream gradient)."""
    fixed = tolerance_for("float32", rtol, atol)
    inputs, operands = inputs or {}, operands or {}
    if twin is None:
        note = (
            f"float32: the reference {why} when run again in float64, so its own rounding was "
            f"not measured; the fixed float32 tolerance (rtol {fixed.rtol:g}, atol "
            f"{fixed.atol:g}) was used"
        )
        return RowTolerances(fixed), [note]
    own, received, conditioning = _values(twin.own), twin.received(), twin.conditioning()
    budgets: dict[Key, Budget] = {}
    for entry in entries:
        if isinstance(entry, TensorPair) and entry.ours is not None and _key(entry) in own:
            of = operands.get(_key(entry), _operands(entry, inputs))
            measured = conditioning.get(_key(entry))
            budgets[_key(entry)] = reference_budget(entry.reference, own[_key(entry)], of, measured)
    strays = _not_rounding(entries, own, budgets, inputs)
    tainted = _tainted(entries, set(strays))
    tolerances = {key: b.tolerance(rtol, atol) for key, b in budgets.items()}
    for key in tainted & set(budgets):  # a drift that is not rounding widens no budget
        del budgets[key]
        tolerances[key] = fixed
    clean = True  # every chain tensor so far within its budget: what is received is rounding
    for entry in entries:
        if entry.mode != "chain":
            continue
        if not isinstance(entry, TensorPair) or entry.ours is None or _key(entry) not in budgets:
            clean = False  # a row already judged (raised, missing)
            continue
        budget = _in_chain(budgets, _key(entry), received.get(_key(entry)) if clean else None)
        budgets[_key(entry)], tolerances[_key(entry)] = budget, budget.tolerance(rtol, atol)
        clean = clean and tolerances[_key(entry)].matches(entry.ours, entry.reference)
    rows = RowTolerances(
        widest(tolerances.values(), fixed),
        tolerances,
        budgets,
        by_mode=True,
        judged_by=judged_by,
    )
    return rows, [_stray_note(layer, ratio, fixed) for layer, ratio in strays.items()]


def _not_rounding(
    entries: list[Entry], own: dict[Key, np.ndarray], budgets: dict[Key, Budget], inputs: dict
) -> dict[str, float]:
    """The layers whose isolated float64 probe drifted from the float32 one by far more than
    rounding (``beyond_rounding``), each with its largest drift as a fraction of the tensor's
    magnitude. Only isolated probes are judged: both runs were fed the same values, whereas a
    chain may rightly take another branch (a max or a ReLU on a near-tie) after rounding."""
    strays: dict[str, float] = {}
    for entry in entries:
        if not isinstance(entry, TensorPair) or entry.mode != "isolate":
            continue
        budget = budgets.get(_key(entry))
        if budget is None or budget.drift is None:
            continue
        value64 = own[_key(entry)]
        magnitude = max(budget.scale, _operands(entry, inputs), largest(value64))
        if beyond_rounding(budget.drift, magnitude):  # then magnitude > 0: drift <= 2 * it
            ratio = budget.drift / magnitude
            strays[entry.layer] = max(ratio, strays.get(entry.layer, 0.0))
    return strays


def _tainted(entries: list[Entry], strays: set[str]) -> set[Key]:
    """The tensors whose float64 value measures no rounding: every tensor of a layer in
    ``strays``, and every chain tensor from the first of theirs on (the twin's chain went on
    from that layer's other values)."""
    tainted, downstream = set(), False
    for entry in entries:
        downstream = downstream or (entry.mode == "chain" and entry.layer in strays)
        if isinstance(entry, TensorPair) and (
            entry.layer in strays or (downstream and entry.mode == "chain")
        ):
            tainted.add(_key(entry))
    return tainted


def _stray_note(layer: str, ratio: float, fixed: Tolerance) -> str:
    """The one-line note of a layer whose float64 probe measured no rounding."""
    return (
        f"float32: the reference's {layer} run again in float64 differed from its float32 run "
        f"by up to {ratio:.0%} of the tensor's magnitude, far more than rounding could (it draws "
        f"random numbers, such as a dropout mask not shared with ours, or computes something "
        f"else in float64), so no budget was measured: {layer}, and every chain tensor from "
        f"it on, were judged by the fixed float32 tolerance (rtol {fixed.rtol:g}, atol "
        f"{fixed.atol:g})"
    )


def _in_chain(budgets: dict[Key, Budget], key: Key, received: float | None) -> Budget:
    """The chain budget of ``key``: never less than the same tensor's isolate budget (the
    chain's inputs may round more kindly), plus ``received`` (None: nothing received is
    counted, after a divergence upstream, which must show downstream as inherited)."""
    budget, alone = budgets[key], budgets.get(("isolate", *key[1:]))
    allowed = max(budget.allowed, alone.allowed if alone is not None else 0.0)
    return replace(budget, allowed=allowed + (received or 0.0), received=received)


def _operands(entry: TensorPair, inputs: dict[Key, float]) -> float:
    """The magnitude a gradient's floor is taken of, where cancellation can leave it far
    below its operands: the upstream gradient for a ``grad_input`` (times a derivative that
    rounds to ~0), that times the layer's largest input for a parameter's (a sum of their
    products); for a running statistic, the layer's largest input (squared for a variance):
    a batch mean cancels to ~0 where the inputs do not, and keeps their rounding; 0 for other
    quantities (their own scale)."""
    if entry.quantity.startswith("buffer:"):
        layer_input = inputs.get((entry.mode, entry.layer), 0.0)
        name = entry.quantity.removeprefix("buffer:")
        return layer_input**2 if RUNNING_ALIASES.get(name) == "running_var" else layer_input
    if entry.upstream is None or not entry.quantity.startswith("grad"):
        return 0.0
    upstream = largest(np.asarray(entry.upstream))
    if entry.quantity == "grad_input":
        return upstream
    return upstream * inputs.get((entry.mode, entry.layer), 0.0)


def _key(entry: TensorPair) -> Key:
    return (entry.mode, entry.layer, entry.quantity)


TwinRecords = TypeVar("TwinRecords")


def judge_by_twin(
    entries: list[Entry],
    pairing: Callable[[TwinRecords], list[Entry]],
    twin: Callable[[], Sequence[TwinRecords]],
    rtol: float | None,
    atol: float | None,
    inputs: dict[Key, float] | None = None,
    judged_by: str = REFERENCE_ROUNDING,
    operands: dict[Key, float] | None = None,
) -> tuple[RowTolerances, list[str]]:
    """Give each tensor pair of ``entries`` its measured float32 tolerance (``entry.tolerance``):
    ``twin()`` runs the float64 twin (its own records, then, for ``compare``, fed ours' chain,
    fed the reference's chain and its nudged copy's records (``ReferenceTwin.nudged``), when
    measured) and ``pairing`` turns records into entries as it turned the float32 reference's
    into ``entries``; ``inputs``: the largest input magnitude of each (mode, layer);
    ``judged_by`` opens the budget note; ``operands`` as in ``reference_tolerances``. A twin
    that raises leaves the fixed float32 tolerance, with a note."""
    try:
        made: TwinEntries | None = TwinEntries(*(pairing(r) for r in twin()))
        why = ""
    except USER_ERRORS as exc:  # a twin that fails to run leaves the fixed tolerance
        first = "".join(str(exc).splitlines()[:1])
        made, why = None, f"raised ({type(exc).__name__}: {first})"
    tols, notes = reference_tolerances(entries, made, rtol, atol, why, inputs, judged_by, operands)
    for entry in entries:
        if isinstance(entry, TensorPair):
            entry.tolerance = tols.of(_key(entry))
    return tols, notes
