"""``compare``: checks the options and inputs, then builds the engine plan for layered models:
ours' chain, the reference's chain and the isolate run as sides, each layer's tensors paired,
the isolate evidence plug-ins, the layer and lint locators."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from torch import nn

from gradparity.core.errors import InputError
from gradparity.core.losses import loss_meta
from gradparity.core.options import (
    MAP_MEANINGS,
    Maps,
    ReferenceInputs,
    Tolerances,
    with_options,
)
from gradparity.core.plan import Captures
from gradparity.core.tolerance import tolerance_for
from gradparity.core.validate import (
    check_choice,
    check_flag,
    check_mapping,
    check_name,
    check_options,
    check_parameters,
    prepare_input,
    prepare_target,
    quiet_arithmetic,
)
from gradparity.engine import Entry, Plan, numpy_side, run
from gradparity.evidence.batch_rerun import BatchRerun
from gradparity.evidence.conv_labels import conv_probe
from gradparity.evidence.explain import (
    Referee,
    StaleProbe,
    jacobian_probe,
    keep_values,
    note_chain_stops,
)
from gradparity.evidence.lints import lint_isolated
from gradparity.evidence.loss_patterns import loss_activation_probe
from gradparity.evidence.minor import EpsilonFits
from gradparity.evidence.penalty import weight_decay_probe
from gradparity.evidence.recurrent_labels import GateDerivative, recurrent_probe
from gradparity.evidence.running_stats import running_stats_probe
from gradparity.evidence.structure_labels import structure_probe
from gradparity.evidence.ties import TiedMaxima
from gradparity.evidence.weight_access import weight_access_probe
from gradparity.locate.layers import locate_layers, source_locator
from gradparity.locate.minor import layer_without_effect, separate_minor
from gradparity.pairing.align import LayerPair, align_layers, layers_by_module, synced_names
from gradparity.pairing.layer_entries import run_entries
from gradparity.pairing.layer_params import pair_layer_parameters
from gradparity.pairing.params import sync_parameters, to_reference
from gradparity.pairing.tree import expand_containers, hand_parameters_to_children, reference_calls
from gradparity.pipelines.layers_autodiff import compare_autodiff, show_budgets
from gradparity.report.report import Report
from gradparity.sides import run_numpy, run_torch
from gradparity.sides.adapt import layer_code, model_name, named_layers, params_of
from gradparity.sides.device import choose_device, reference_device
from gradparity.sides.dropout_masks import shared_dropout_masks
from gradparity.sides.isolation import prober
from gradparity.sides.lazy_isolation import (
    ISOLATE_CHOICES,
    isolate_lazily,
    isolation_of,
    run_size,
)
from gradparity.sides.modes import mode_warnings, modes_note, reference_modes
from gradparity.sides.preflight import check_filled, check_target, dry_run, leaf_calls
from gradparity.sides.reference_twin import Records, ReferenceTwin, judge_by_twin
from gradparity.sides.run_torch import TORCH_DTYPES
from gradparity.sides.running_stats import sync_running
from gradparity.sides.setup import reference_copy, resolve_losses
from gradparity.sides.streaming import parameter_count, streams


def check_autodiff(
    reference: str,
    reference_loss: Any,
    layer_map: dict | None,
    param_map: dict | None = None,
    device: str = "cpu",
) -> None:
    """One line for a reference named by a string other than "autodiff", or for options that
    only a torch reference takes (a device other than the CPU among them)."""
    if reference != "autodiff":
        raise InputError(
            f'reference {reference!r} is unknown; pass a torch.nn.Module or "autodiff" (the '
            "exact gradient of each layer's own forward)"
        )
    given = {
        "reference_loss": reference_loss,
        "layer_map": layer_map,
        "param_map": param_map,
        "device": device != "cpu",
    }
    for option, value in given.items():
        if value:
            raise InputError(
                f'{option}= needs a torch reference; with "autodiff" each layer and the loss '
                "are their own reference: leave it out"
            )


def _weight_differences(pairs: list[LayerPair]) -> list[str]:
    """Notes naming parameters that differ between the sides (only when not synced)."""
    notes = []
    for pair in pairs:
        ours, ref = params_of(pair.layer), dict(pair.torch_module.named_parameters())
        for p in pair.params:
            theirs = ref[p.torch_name].detach().cpu().numpy()
            mine = to_reference(ours[p.key], p)
            gap = float(np.abs(mine - theirs).max()) if mine.size else 0.0
            if gap > 0:
                notes.append(
                    f"sync_weights=False and {pair.name}.{p.key} differs from the "
                    f"reference's {p.torch_name} (max abs {gap:.3g})"
                )
    return notes


@quiet_arithmetic
@with_options
def compare(
    ours_model: Any,
    reference_model: nn.Module | str,
    x: Any,
    target: Any,
    ours_loss: Any = None,
    reference_loss: Any = None,
    layer_map: dict[str, str] | None = None,
    dtype: str = "float64",
    sync_weights: bool = True,
    seed: int = 0,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    name: str | None = None,
    tolerances: Tolerances | None = None,
    reference_inputs: ReferenceInputs | None = None,
    maps: Maps | None = None,
    strict: bool = False,
    param_map: dict[str, str] | None = None,
    device: str = "cpu",
    keep_tf32: bool = False,
    isolate: str | None = None,
    stop_at_first: bool = False,
    streaming: bool | None = None,
) -> Report:
    """Diff every activation and gradient of a NumPy model against a torch reference.

    x: (N, features) (a 1-D x is one example); target: (N,) integer classes or (N, C) class
    probabilities (one-hot rows included) for the default softmax cross-entropy, or an array
    shaped like the output for other losses. Options and inputs are checked before anything
    runs (one reference forward on x among the checks): a bad one is an InputError of one
    line. Runs both modes: ``chain`` (end to end) and ``isolate`` (each layer alone on the
    reference's input and a seeded random upstream gradient). Neither model is modified:
    both sides run on copies, and ``sync_weights`` copies ours' parameters into the copy (a
    reference on the meta device is then allocated on the CPU to take them).
    ``param_map`` {ours parameter: reference parameter}: keys ``"<layer>.<param>"`` (or
    ``"<param>"`` where one layer alone has it), values the parameter's name within the module
    that layer faces (``"weight"``, or ``"bn1.weight"``); parameters it leaves out pair by
    equal names, aliases (gamma/weight, beta/bias, W/weight, Wxh/weight_ih, ...), a shape only
    one fits, then order, and a note names every pairing order alone decided.
    ``tolerances`` (rtol, atol), ``reference_inputs`` (its ``loss``) and ``maps`` (its
    ``layer_map`` and ``param_map``): option objects, merged into those keyword arguments
    (``with_options``).
    ``reference_model="autodiff"``: no twin; each layer's backward (and the loss's) is checked
    in isolation against the exact gradient of its own forward (``layers_autodiff``), so no
    forward output and no chain is compared, and ``reference_loss``, ``layer_map`` and
    ``param_map`` are refused.
    ``strict``: minor differences (small against the tensor's scale and consistent with a
    small constant such as an epsilon) make ``ok`` False too; by default they are listed in
    ``report.minor`` and leave it True.
    ``isolate``: "all" runs every layer alone; "lazy" only the layers whose chain values
    diverged (or whose record is not clean), which costs nothing more when nothing diverges
    but does not see a difference the chain hides (``sides.lazy_isolation``); None (default):
    lazy from ``LAZY_ELEMENTS`` (parameters plus activation elements) on, float32 always all.
    ``stop_at_first``: the lazy isolate run stops at the first layer wrong alone.
    ``streaming``: keep no copies a run of both sides does not need (``sides.streaming``);
    None (default): from ``STREAMING_PARAMETERS`` parameters on.
    """
    dtype, rtol, atol, seed = check_options(dtype, rtol, atol, seed)
    layer_map = check_mapping(layer_map, "layer_map", "ours layer name: reference module name")
    param_map = check_mapping(param_map, "param_map", MAP_MEANINGS["param_map"])
    name = check_name(name)
    strict = check_flag(strict, "strict")
    stop_at_first = check_flag(stop_at_first, "stop_at_first")
    chosen = None if isolate is None else check_choice(isolate, "isolate", ISOLATE_CHOICES)
    choice = choose_device(device, check_flag(keep_tf32, "keep_tf32"))
    tol = choice.tolerance(tolerance_for(dtype, rtol, atol), rtol is not None)
    tdtype = TORCH_DTYPES[dtype]
    layers = named_layers(ours_model)
    if isinstance(reference_model, str):
        check_autodiff(reference_model, reference_loss, layer_map, param_map, choice.device)
        return compare_autodiff(
            layers, x, target, ours_loss, dtype=dtype, tolerance=tol, seed=seed,
            name=name or model_name(ours_model), strict=strict, rtol=rtol, atol=atol,
        )  # fmt: skip
    with reference_device(choice):
        x = prepare_input(x, dtype)
        target = prepare_target(target, x.shape[0], dtype)
        given = (ours_loss is not None, reference_loss is not None)
        ours_loss, reference_loss = resolve_losses(ours_loss, reference_loss)
        check_parameters((lname, params_of(layer, lname)) for lname, layer in layers)
        rng = np.random.default_rng(seed)
        sync_weights = check_flag(sync_weights, "sync_weights")
        streaming = streams(streaming, layers)
        share = streaming and sync_weights and choice.device == "cpu"
        ref_model, empty = reference_copy(
            reference_model, dtype, sync_weights, choice.device, share_parameters=share
        )
        pairs = align_layers(layers, ref_model, layer_map, lambda: leaf_calls(ref_model, x, tdtype))
        pairs = expand_containers(pairs, ref_model, lambda: reference_calls(ref_model, x, tdtype))
        pairing_notes = pair_layer_parameters(pairs, rng, param_map)
        hand_parameters_to_children(pairs)
        if sync_weights:
            for pair in pairs:
                sync_parameters(params_of(pair.layer), pair.torch_module, pair.params, share)
                sync_running(pair.layer, pair.torch_module)
            check_filled(empty, synced_names(pairs))
        modes = reference_modes(ref_model)
        weight_notes = [] if sync_weights else _weight_differences(pairs)
        target = check_target(
            target,
            dry_run(ref_model, x, tdtype, names=layers_by_module(pairs)),
            dtype,
            ours_loss=ours_loss,
            reference_loss=reference_loss,
        )

        layout_notes = [
            f"layout of {p.name}.{pp.key} {pp.how}; pass a model whose forward runs, or check it"
            for p in pairs
            for pp in p.params
            if pp.how.startswith("assumed")
        ]
        loss_pair = LayerPair("loss", ours_loss, "loss", None)
        children = [(p.name, p.path, p.call) for p in pairs if p.path]
        batch = x.shape[0]

        def reference_chain(captures: Captures) -> None:
            captures["reference_chain"] = run_torch.run_chain(
                ref_model, pairs, reference_loss, x, target, tdtype
            )

        def isolated(captures: Captures) -> None:
            ref_chain = captures["reference_chain"]
            probe = prober(pairs, loss_pair, reference_loss, ref_chain, target, rng, tdtype)
            size = run_size(parameter_count(layers), ref_chain)
            if isolation_of(chosen, dtype, size) == "all":
                captures["probes"] = {n: probe(n) for n in [*(p.name for p in pairs), "loss"]}
                return
            chains = (captures["ours_chain"], ref_chain)
            captures["probes"], notes = isolate_lazily(
                pairs, loss_pair, chains, probe, batch, tol, stop_at_first
            )
            captures.setdefault("notes", []).extend(notes)

        def pairing_of(captures: Captures, references: Records) -> list[Entry]:
            """Ours' records against the reference's ``references`` (chain, isolated probes)."""
            ours_chain, (ref_chain, ref_probes) = captures["ours_chain"], references
            chain = [
                (p, ours_chain[p.name], ref_chain[p.name])
                for p in [*pairs, loss_pair]
                if p.name in ours_chain  # a layer that raised ends the chain run there
            ]
            isolated = [
                (p.pair, p.ours, ref_probes[n])
                for n, p in captures["probes"].items()
                if n in ref_probes
            ]
            return run_entries("isolate", isolated, batch) + run_entries("chain", chain, batch)

        def pairing(captures: Captures) -> list[Entry]:
            if "entries" in captures:  # paired already, to be judged by the float64 twin
                return captures["entries"]
            probes = {name: p.ref for name, p in captures["probes"].items()}
            return pairing_of(captures, (captures["reference_chain"], probes))

        def twin_records(captures: Captures) -> tuple[Records, ...]:
            twin = ReferenceTwin.make(ref_model, pairs)
            return (
                twin.records(reference_loss, x, target, captures["probes"]),
                twin.fed(reference_loss, captures["ours_chain"], target),
                twin.fed(reference_loss, captures["reference_chain"], target),
                twin.nudged(reference_loss, x, target, captures["probes"]),
            )

        def largest_inputs(captures: Captures) -> dict[tuple[str, ...], float]:
            """max|input| of each layer the reference ran, by (mode, layer)."""
            fed = {("isolate", n): p.ref.input for n, p in captures["probes"].items()}
            fed.update({("chain", n): r.input for n, r in captures["reference_chain"].items()})
            return {
                key: float(np.abs(v[np.isfinite(v)]).max(initial=0.0))
                for key, v in fed.items()
                if v is not None
            }

        def judge_float32(captures: Captures) -> None:
            """Each tensor pair judged by the reference's own float32 rounding, measured by its
            float64 twin (``reference_twin``)."""
            entries = pairing(captures)
            tols, notes = judge_by_twin(
                entries,
                partial(pairing_of, captures),
                lambda: twin_records(captures),
                rtol,
                atol,
                largest_inputs(captures),
            )
            # The evidence steps keep the fixed float32 tolerance their re-runs are judged by;
            # each row has its own budget.
            captures.update(entries=entries, row_tolerances=tols)
            captures.setdefault("notes", []).extend(notes)

        with shared_dropout_masks(pairs, ref_model) as dropout:
            dropout.draw(ref_model, run_torch.as_tensor(x, tdtype), seed)
            return run(
                Plan(
                    name=name or model_name(ours_model),
                    dtype=dtype,
                    tolerance=tol,
                    lazy_chain_diagnosis=True,
                    seed=seed,
                    batch_size=batch,
                    rng=rng,
                    sides=[
                        numpy_side(
                            run_numpy.LayerRunner(layers, ours_loss, rng, children, streaming),
                            x,
                            target,
                            "ours_chain",
                        ),
                        reference_chain,
                        isolated,
                        *([judge_float32] if dtype == "float32" else []),
                    ],
                    pair=pairing,
                    evidence=[
                        keep_values,
                        StaleProbe(tdtype),
                        BatchRerun(tdtype, target, reference_loss),
                        weight_decay_probe,
                        running_stats_probe,
                        weight_access_probe,
                        TiedMaxima(tdtype),
                        structure_probe,
                        conv_probe,
                        recurrent_probe,
                        GateDerivative(tdtype),
                        jacobian_probe,
                        loss_activation_probe,
                        Referee(target, reference_loss),
                        EpsilonFits(target),
                        note_chain_stops,
                        show_budgets,
                        lambda ctx: ctx.warnings.extend(mode_warnings(pairs, modes)),
                        lambda ctx: ctx.warnings.extend(dropout.warnings()),
                    ],
                    locators=[
                        locate_layers,
                        lint_isolated,
                        source_locator(
                            {**{p.name: p.layer for p in pairs}, "loss": ours_loss}, layer_code
                        ),
                        layer_without_effect,
                        separate_minor,
                    ],
                    meta={
                        **loss_meta(ours_loss, reference_loss, *given),
                        "isolate_upstream": "seeded random normal",
                        "reference_modes": modes,
                        "streaming": streaming,
                        **choice.meta(),
                    },
                    notes=pairing_notes
                    + weight_notes
                    + layout_notes
                    + modes_note(modes)
                    + dropout.notes()
                    + choice.notes(dtype),
                    fields={
                        "conversions": [
                            f"{p.name}: {q.describe()}" for p in pairs for q in p.params
                        ],
                        "strict": strict,
                    },
                )
            )
