"""``compare(model, "autodiff", x, target, ours_loss=...)``: layered NumPy code checked with no
torch twin. Each layer, fed the input ours' own chain gave it and a seeded random upstream
gradient, has its ``backward`` compared with the exact vector-Jacobian product of its own
``forward`` (``sides.layer_autodiff``), and the loss's backward with the gradient of its
forward: the isolate run of ``compare``, with the same evidence plug-ins and locators, so
every buggy layer is named in one run. The forward is the reference's definition, so no
output is compared and there is no chain run against a reference.

In float32 each isolated gradient is judged by the user's own float32 rounding: the same probe
run again on a float64 copy of the layer (``float64_twin.float64_probes``) measures it, and
``float32_budget.layer_tolerances`` turns it into that row's tolerance."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
from torch import nn

from gradparity.core.errors import InputError
from gradparity.core.losses import DEFAULT, loss_name
from gradparity.core.plan import Captures, Context, Entry, Evidence, Side, TensorPair
from gradparity.core.records import USER_ERRORS, LayerRecord, error_info, real_array, snapshot
from gradparity.core.tolerance import Tolerance, tolerance_for
from gradparity.core.validate import (
    check_options,
    check_parameters,
    prepare_input,
    prepare_target,
    quiet_arithmetic,
)
from gradparity.engine import Plan, build_report, execute, numpy_side
from gradparity.evidence.batch_rerun import BatchRerun
from gradparity.evidence.conv_labels import conv_probe
from gradparity.evidence.explain import (
    Referee,
    StaleProbe,
    jacobian_probe,
    keep_values,
    note_chain_stops,
)
from gradparity.evidence.float32_budget import layer_tolerances
from gradparity.evidence.kinks import KinkRerun
from gradparity.evidence.lints import lint_isolated
from gradparity.evidence.loss_patterns import loss_activation_probe
from gradparity.evidence.minor import EpsilonFits
from gradparity.evidence.penalty import weight_decay_probe
from gradparity.evidence.recurrent_labels import GateDerivative
from gradparity.evidence.structure_labels import structure_probe
from gradparity.evidence.ties import TiedMaxima
from gradparity.evidence.weight_access import weight_access_probe
from gradparity.locate.layers import locate_layers, source_locator
from gradparity.locate.minor import separate_minor
from gradparity.ours import SoftmaxCrossEntropy
from gradparity.pairing.align import LayerPair
from gradparity.pairing.layer_entries import run_entries
from gradparity.pairing.params import ParamPair
from gradparity.pairing.tree import descendants, expand_tree, hand_parameters_to_children
from gradparity.reference.layout import IDENTITY
from gradparity.report.report import Report
from gradparity.sides import layer_functions, run_numpy, run_torch
from gradparity.sides.adapt import check_protocol, layer_code, params_of
from gradparity.sides.child_records import ours_calls, recording_children
from gradparity.sides.float64_twin import float64_probes
from gradparity.sides.isolation import Probe, layer_probe, loss_probe
from gradparity.sides.layer_autodiff import (
    REFERENCE_NAME,
    OwnForwardModule,
    OwnLossFunction,
    ReferenceNotes,
    torch_name,
)
from gradparity.sides.layer_functions import TorchFunctionModule

FLOAT64 = run_torch.TORCH_DTYPES["float64"]  # the reference always runs in float64
NOT_COMPARED = (
    "autodiff reference: each layer's backward is compared with the exact vector-Jacobian "
    "product of its own forward, at the input ours' chain gave it and a seeded random upstream "
    "gradient; forward outputs are not compared (the forward is the reference's definition)"
)

TWIN_FORWARD_NOT_COMPARED = (
    "torch function reference: the layer's backward is compared with autograd of the torch "
    "function at the same input and a seeded random upstream gradient; forward outputs are "
    "not compared here (gp.compare with a torch module compares them)"
)


def own_pairs(
    layers: list[tuple[str, Any]], module_of: Callable[[str, Any], nn.Module]
) -> list[LayerPair]:
    """Each layer paired with its reference module ``module_of(name, layer)`` (its own forward
    as a module), whose parameters have the layer's names and layout."""
    return [
        LayerPair(name, layer, name, module_of(name, layer), params=_own_params(name, layer))
        for name, layer in layers
    ]


def _own_params(name: str, layer: Any) -> list[ParamPair]:
    """The layer's parameters, each its own reference (same key, same layout)."""
    shapes = {key: np.shape(value) for key, value in params_of(layer, name).items()}
    return [
        ParamPair(key, torch_name(key), IDENTITY, shape, shape, "the layer's own parameter")
        for key, shape in shapes.items()
    ]


def own_tree(
    layers: list[tuple[str, Any]],
    module_of: Callable[[str, Any], nn.Module],
    x: np.ndarray,
) -> list[LayerPair]:
    """``own_pairs`` with each container of ours followed by the layers inside it under dotted
    names (``block1.fc1``; ``rnn.cell@k`` per call), each its own reference, as
    ``pairing.tree`` expands against a twin; a child keeps its parameters' rows, its container
    the rest. x: the model's input, run through ours' forward (on copies) to count the calls
    only when there is a container."""
    # Only layers (forward and backward) get a module: a container holding anything else
    # stays whole (against a twin, its submodules' names decide that).
    modules = {
        ".".join(path): module_of(".".join(path), inner)
        for path, inner in descendants(layers)
        if all(callable(getattr(inner, m, None)) for m in ("forward", "backward"))
    }
    pairs = expand_tree(own_pairs(layers, module_of), modules, lambda: ours_calls(layers, x))
    for pair in pairs:
        if pair.path:
            pair.params = _own_params(pair.name, pair.layer)
    hand_parameters_to_children(pairs)
    return pairs


def isolate_own(
    pairs: list[LayerPair],
    loss_pair: LayerPair | None,
    reference_loss: Any,
    chain: dict[str, LayerRecord],
    target: np.ndarray | None,
    rng: np.random.Generator,
) -> dict[str, Probe]:
    """Probes keyed by layer name (plus "loss" when there is one): each layer fed the input
    ours' chain gave it (``chain``: ours' chain records) and a seeded random upstream
    gradient. Layers the chain never reached (a layer before them raised) are left out."""
    probes: dict[str, Probe] = {}
    for pair in pairs:
        rec = chain.get(pair.name)
        if rec is None or rec.input is None:
            continue
        if rec.output is None:  # the forward raised: its row says so
            _add_raised(probes, pair, rec.input, rng)
            continue
        # In the layer's own float type, so a float32 backward rounds as it does in training.
        upstream = rng.standard_normal(np.shape(rec.output)).astype(_float_type(rec.output))
        probes[pair.name] = layer_probe(pair, rec.input, upstream, rng, FLOAT64)
    logits = chain["loss"].input if "loss" in chain else None
    if loss_pair is not None and logits is not None and target is not None:
        probes["loss"] = loss_probe(loss_pair, reference_loss, logits, target, rng, FLOAT64)
    return probes


def _float_type(a: np.ndarray) -> np.dtype:
    return a.dtype if a.dtype.kind == "f" else np.dtype(np.float64)


def forward_chain(
    layers: list[tuple[str, Any]], x: np.ndarray, children: list[run_numpy.Child] | None = None
) -> Side:
    """The side that runs ours' forward alone (a check without a loss): each layer's input and
    output as ``ours_chain``, up to a layer that raises; ``children`` (name, path, call) of
    layers inside containers are recorded as their containers call them."""
    children = children or []

    def side(captures: Captures) -> None:
        records: dict[str, LayerRecord] = {}
        h = x
        own_layers = copy.deepcopy(layers)
        with recording_children(own_layers, [path for _, path, _ in children]) as calls:
            for name, layer in own_layers:
                records[name] = rec = LayerRecord(input=snapshot(h))
                try:
                    out = layer.forward(h.copy())
                    h = rec.output = real_array(out, "forward's output", "output")
                except USER_ERRORS as exc:
                    rec.error = error_info("forward", exc)
                    break
        for name, path, call in children:
            made = calls.get(path, [])
            if call < len(made) and made[call].output is not None:
                records[name] = made[call]
        captures["ours_chain"] = records

    return side


def _add_raised(
    probes: dict[str, Probe], pair: LayerPair, x: np.ndarray, rng: np.random.Generator
) -> None:
    """The probe of a layer whose forward raised in ours' chain, when it raises alone too
    (nothing to compare otherwise: the reference has no output to differentiate)."""
    warm = run_numpy.warm_input(x, rng)
    ours = run_numpy.probe_layer(pair.layer, x, np.zeros(0), warm)
    if ours.error is not None and ours.error["phase"] == "forward":
        probes[pair.name] = Probe(pair, ours, LayerRecord(input=x), warm, None)


def gradient_entries(probes: dict[str, Probe], batch: int) -> list[Entry]:
    """The isolate entries of every probe but the forward outputs (a forward that raised
    stays, as its ``raised`` row)."""
    entries = run_entries("isolate", [(p.pair, p.ours, p.ref) for p in probes.values()], batch)
    return [e for e in entries if not (isinstance(e, TensorPair) and e.quantity == "output")]


def judge_float32(
    captures: Captures,
    entries: list[Entry],
    target: np.ndarray | None,
    rtol: float | None,
    atol: float | None,
) -> None:
    """Give each tensor pair of ``entries`` (float32 probes' gradients) its own tolerance, the
    float32 budget measured by the probes run again in float64, plus the user's ``rtol`` and
    ``atol`` when given; the budgets, the loosest tolerance (the report's) and notes on layers
    that could not be measured go to ``captures``."""
    twins = float64_probes(captures["probes"], target)
    tols, notes = layer_tolerances(entries, twins, rtol, atol)
    for entry in entries:
        if isinstance(entry, TensorPair):
            entry.tolerance = tols.of((entry.layer, entry.quantity))
    captures.update(row_tolerances=tols, tolerance=tols.default)
    captures.setdefault("notes", []).extend(notes)


def show_budgets(ctx: Context) -> None:
    """Each float32 row's budget in its detail and one note beside the errors (float32 only)."""
    tols = ctx.captures.get("row_tolerances")
    if tols is not None:
        ctx.notes += tols.annotate(ctx.rows)


def add_reference_notes(reference_notes: ReferenceNotes) -> Evidence:
    """An evidence step adding the reference's notes: each layer whose reference fell back to
    central differences, each kink met exactly (last: evidence plug-ins run the reference
    too)."""

    def add_notes(ctx: Context) -> None:
        diverging = dict.fromkeys(r.layer for r in ctx.rows if r.diverged)
        ctx.notes += reference_notes.lines(diverging)

    return add_notes


def compare_autodiff(
    layers: list[tuple[str, Any]],
    x: Any,
    target: Any,
    ours_loss: Any,
    *,
    dtype: str,
    tolerance: Tolerance,
    seed: int,
    name: str,
    strict: bool,
    reference: Callable[..., Any] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> Report:
    """The report of ``compare(model, "autodiff", ...)`` for a model's ``(name, layer)``
    pairs on x (N, ...) and target; ``ours_loss`` None is the default softmax cross-entropy,
    and ``target`` None checks the layers alone (no loss). Options are already checked by
    the caller. ``reference``: a torch function judging ``gp.layer`` objects instead of
    autodiff (``check_layer``'s). In float32 each row is judged by its measured budget plus
    the user's ``rtol``/``atol`` (``judge_float32``); ``tolerance`` judges float64 runs."""
    x = prepare_input(x, dtype)
    given = ours_loss is not None
    loss = None
    if target is not None:
        target = prepare_target(target, x.shape[0], dtype)
        loss = SoftmaxCrossEntropy() if ours_loss is None else ours_loss
        check_protocol("loss", loss)
    check_parameters((lname, params_of(layer, lname)) for lname, layer in layers)
    rng = np.random.default_rng(seed)
    reference_notes = ReferenceNotes()
    if reference is None:
        pairs = own_tree(layers, partial(OwnForwardModule, notes=reference_notes), x)
    else:
        pairs = own_tree(layers, lambda _, layer: TorchFunctionModule(reference, layer), x)
    loss_pair = LayerPair("loss", loss, "loss", None) if loss is not None else None
    reference_loss = OwnLossFunction(loss, reference_notes) if loss is not None else None
    batch = x.shape[0]
    children = [(p.name, p.path, p.call) for p in pairs if p.path]
    chain_side = (
        numpy_side(run_numpy.LayerRunner(layers, loss, rng, children), x, target, "ours_chain")
        if loss is not None
        else forward_chain(layers, x, children)
    )

    def isolate(captures: Captures) -> None:
        captures["probes"] = isolate_own(
            pairs, loss_pair, reference_loss, captures["ours_chain"], target, rng
        )
        captures["entries"] = gradient_entries(captures["probes"], batch)
        if dtype == "float32":
            judge_float32(captures, captures["entries"], target, rtol, atol)

    named = REFERENCE_NAME if reference is None else f"torch function {loss_name(reference)}"
    meta = {"reference": named, "isolate_upstream": "seeded random normal"}
    if loss is not None:
        meta["ours_loss"] = loss_name(loss) + ("" if given else DEFAULT)
        meta["reference_loss"] = f"autodiff of {loss_name(loss)}'s own forward"
    sources = {p.name: p.layer for p in pairs} | ({"loss": loss} if loss is not None else {})
    ctx = execute(
        Plan(
            name=name,
            dtype=dtype,
            tolerance=tolerance,
            seed=seed,
            batch_size=batch,
            rng=rng,
            sides=[chain_side, isolate],
            pair=lambda captures: captures["entries"],
            evidence=[
                keep_values,
                StaleProbe(FLOAT64),
                BatchRerun(FLOAT64, target, reference_loss),
                weight_decay_probe,
                weight_access_probe,
                TiedMaxima(FLOAT64),
                structure_probe,
                conv_probe,
                GateDerivative(FLOAT64),
                KinkRerun(reference_notes, FLOAT64),
                jacobian_probe,
                loss_activation_probe,
                Referee(target, reference_loss),
                EpsilonFits(target),
                note_chain_stops,
                show_budgets,
                add_reference_notes(reference_notes),
            ],
            locators=[
                locate_layers,
                lint_isolated,
                source_locator(sources, layer_code),
                separate_minor,
            ],
            meta=meta,
            notes=[NOT_COMPARED if reference is None else TWIN_FORWARD_NOT_COMPARED],
            fields={"strict": strict},
        )
    )
    report = build_report(ctx)
    # Each float32 row was judged by its own budget: the report names the loosest of them (as
    # compare_function's does); otherwise this is the plan's tolerance.
    report.tolerance = ctx.tolerance
    return report


@quiet_arithmetic
def check_layer(
    forward: Callable[..., Any],
    backward: Callable[..., Any],
    x: Any,
    params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    dtype: str = "float64",
    reference: Callable[..., Any] | None = None,
    **arguments: Any,
) -> Report:
    """Check one course-style layer function pair against autodiff of its forward.

    ``forward(x, *args) -> (out, cache)``, ``backward(dout, cache) -> (dx, *dparams)``, the
    arguments after x given as for :func:`gradparity.layer` (``params`` then keyword
    arguments, in order; float arrays are the parameters). x: the layer's input (N, ...).
    The layer runs on x and backward on a seeded random upstream gradient; its dL/dx and
    each parameter gradient are compared with the exact vector-Jacobian product of
    ``forward`` (``compare(..., "autodiff")``'s isolate rows, with the same diagnoses and
    source lines). ``rtol``/``atol`` override the tolerance of ``dtype``. ``reference``: a
    torch function ``fn(x, *args) -> tensor`` taking the forward's arguments in the same order
    (parameters as tensors), to judge the backward by autograd of it instead.
    """
    if reference is not None and (isinstance(reference, nn.Module) or not callable(reference)):
        raise InputError(
            "check_layer: reference must be a torch function fn(x, *args) -> tensor; for a "
            "torch module use gp.compare([(name, gp.layer(...))], module, x, target)"
        )
    dtype, rtol, atol, seed = check_options(dtype, rtol, atol, seed)
    wrapped = layer_functions.layer(forward, backward, params, **arguments)
    return compare_autodiff(
        [(layer_functions.layer_name(wrapped), wrapped)], x, None, None,
        dtype=dtype, tolerance=tolerance_for(dtype, rtol, atol), seed=seed,
        name=getattr(forward, "__name__", "layer"), strict=False, reference=reference,
        rtol=rtol, atol=atol,
    )  # fmt: skip
