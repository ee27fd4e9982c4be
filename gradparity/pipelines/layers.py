"""``compare``: the pipeline run -> records -> rows -> findings -> report, for layered models."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from gradparity import __version__
from gradparity.comparison.diff import compare_layer
from gradparity.core.options import Maps, ReferenceInputs, Tolerances, with_options
from gradparity.core.records import LayerRecord
from gradparity.core.row import Row
from gradparity.core.tolerance import tolerance_for
from gradparity.core.validate import (
    check_flag,
    check_mapping,
    check_name,
    check_options,
    check_parameters,
    prepare_input,
    prepare_target,
    quiet_arithmetic,
)
from gradparity.evidence.explain import Probe, add_evidence
from gradparity.evidence.lints import lint_records, merge_lints
from gradparity.locate.layers import first_divergence, locate
from gradparity.pairing.align import LayerPair, align_layers, layers_by_module, synced_names
from gradparity.pairing.params import sync_parameters, to_reference
from gradparity.pairing.square import pair_parameters
from gradparity.report.report import Report
from gradparity.sides import run_numpy, run_torch
from gradparity.sides.adapt import model_name, named_layers, params_of
from gradparity.sides.preflight import check_filled, check_target, dry_run, leaf_calls
from gradparity.sides.run_torch import TORCH_DTYPES
from gradparity.sides.setup import reference_copy, resolve_losses, warm_input


def run_isolation(
    pairs: list[LayerPair],
    loss_pair: LayerPair,
    reference_loss: Any,
    ref_chain: dict[str, LayerRecord],
    target: np.ndarray,
    rng: np.random.Generator,
    tdtype: torch.dtype,
) -> dict[str, Probe]:
    """Each layer fed the reference's exact input and a seeded random upstream gradient.

    Random, not the natural dL/dy: the natural upstream can be exactly zero (the assignment
    network's hidden layer gets dL/dh = 0), which would hide every backward bug there.
    """
    probes = {}
    for pair in pairs:
        ref_in, ref_out = ref_chain[pair.name].input, ref_chain[pair.name].output
        assert ref_in is not None and ref_out is not None  # the reference chain ran every layer
        upstream = rng.standard_normal(ref_out.shape).astype(ref_in.dtype)
        warm = warm_input(ref_in, rng)
        probes[pair.name] = Probe(
            pair,
            run_numpy.probe_layer(pair.layer, ref_in, upstream, warm),
            run_torch.probe_module(pair, ref_in, upstream, tdtype),
            warm,
            upstream,
        )
    logits = ref_chain["loss"].input
    assert logits is not None  # the reference chain reached its loss
    warm = warm_input(logits, rng)
    probes["loss"] = Probe(
        loss_pair,
        run_numpy.probe_loss(loss_pair.layer, logits, target, warm),
        run_torch.probe_loss(reference_loss, logits, target, tdtype),
        warm,
        None,
    )
    return probes


def _rows(mode: str, results, tol, batch: int) -> tuple[list[Row], list[Row]]:
    """(forward rows in forward order, backward rows in backward order)."""
    fwd: list[Row] = []
    bwd: list[Row] = []
    for pair, ours, ref in results:
        f, b = compare_layer(mode, pair, ours, ref, tol, batch)
        fwd += f
        bwd = b + bwd
    return fwd, bwd


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
    reference_model: nn.Module,
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
    ``tolerances`` (rtol, atol), ``reference_inputs`` (its ``loss``) and ``maps`` (its
    ``layer_map``): option objects, merged into those keyword arguments (``with_options``).
    """
    dtype, rtol, atol, seed = check_options(dtype, rtol, atol, seed)
    layer_map = check_mapping(layer_map, "layer_map", "ours layer name: reference module name")
    name = check_name(name)
    tol = tolerance_for(dtype, rtol, atol)
    tdtype = TORCH_DTYPES[dtype]
    layers = named_layers(ours_model)
    x = prepare_input(x, dtype)
    target = prepare_target(target, x.shape[0], dtype)
    ours_loss, reference_loss = resolve_losses(ours_loss, reference_loss)
    check_parameters((lname, params_of(layer, lname)) for lname, layer in layers)
    rng = np.random.default_rng(seed)
    ref_model, empty = reference_copy(
        reference_model, dtype, check_flag(sync_weights, "sync_weights")
    )
    pairs = align_layers(layers, ref_model, layer_map, lambda: leaf_calls(ref_model, x, tdtype))
    pair_parameters(pairs, rng)
    if sync_weights:
        for pair in pairs:
            sync_parameters(params_of(pair.layer), pair.torch_module, pair.params)
        check_filled(empty, synced_names(pairs))
    weight_notes = [] if sync_weights else _weight_differences(pairs)
    target = check_target(
        target,
        dry_run(ref_model, x, tdtype, names=layers_by_module(pairs)),
        dtype,
        ours_loss=ours_loss,
        reference_loss=reference_loss,
    )

    ours_chain = run_numpy.run_chain(layers, ours_loss, x, target, warm_input(x, rng))
    ref_chain = run_torch.run_chain(ref_model, pairs, reference_loss, x, target, tdtype)
    loss_pair = LayerPair("loss", ours_loss, "loss", None)
    chain = [
        (p, ours_chain[p.name], ref_chain[p.name])
        for p in [*pairs, loss_pair]
        if p.name in ours_chain  # a layer that raised ends the chain run there
    ]
    probes = run_isolation(pairs, loss_pair, reference_loss, ref_chain, target, rng, tdtype)
    isolated = [(p.pair, p.ours, p.ref) for p in probes.values()]

    batch = x.shape[0]
    chain_fwd, chain_bwd = _rows("chain", chain, tol, batch)
    iso_fwd, iso_bwd = _rows("isolate", isolated, tol, batch)
    chain_rows, iso_rows = chain_fwd + chain_bwd, iso_fwd + iso_bwd
    arrays = add_evidence(iso_rows, probes, tol, target, reference_loss, tdtype, rng)
    roots = locate(chain_rows, iso_rows)
    lint_roots, warnings = lint_records(
        [(p.name, params_of(p.layer), o) for p, o, _ in isolated], "isolate"
    )
    roots = merge_lints(roots, lint_roots)
    layout_notes = [
        f"layout of {p.name}.{pp.key} {pp.how}; pass a model whose forward runs, or check it"
        for p in pairs
        for pp in p.params
        if pp.how.startswith("assumed")
    ]
    notes = (
        weight_notes
        + layout_notes
        + [f"chain run stopped at {p.name}: it raised" for p, o, _ in chain if o.error]
    )
    return Report(
        dtype=dtype,
        tolerance=tol,
        rows=iso_rows + chain_rows,
        root_causes=roots,
        arrays={
            place: arrays[place]
            for place in ((f.layer, f.quantity) for f in roots)
            if place in arrays
        },
        warnings=warnings,
        first_divergence=first_divergence(chain_rows),
        conversions=[f"{p.name}: {pp.describe()}" for p in pairs for pp in p.params],
        notes=notes,
        meta={
            "model": name or model_name(ours_model),
            "seed": seed,
            "batch_size": batch,
            "isolate_upstream": "seeded random normal",
            "gradparity": __version__,
            "numpy": np.__version__,
            "torch": torch.__version__,
        },
    )
