"""The isolate run of ``compare``: each layer on both sides, fed the reference's exact input
and a seeded random upstream gradient, so each layer is judged alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradparity.core.records import LayerRecord
from gradparity.pairing.align import LayerPair
from gradparity.sides import run_numpy, run_torch


@dataclass
class Probe:
    """One isolated run of one layer on both sides, with what it was fed."""

    pair: LayerPair
    ours: LayerRecord
    ref: LayerRecord
    warm: np.ndarray  # the warm-up input fed to ours before the real forward
    upstream: np.ndarray | None  # None for the loss


def prober(
    pairs: list[LayerPair],
    loss_pair: LayerPair,
    reference_loss: Any,
    ref_chain: dict[str, LayerRecord],
    target: np.ndarray,
    rng: np.random.Generator,
    tdtype: torch.dtype,
) -> Callable[[str], Probe]:
    """``probe(name)``: that layer (or "loss") run alone on both sides, fed its input in the
    reference's chain ``ref_chain``.

    The upstream gradient is random, not the natural dL/dy: the natural one can be exactly
    zero (the assignment network's hidden layer gets dL/dh = 0), which would hide every
    backward bug there.
    """
    by_name = {p.name: p for p in pairs}

    def probe(name: str) -> Probe:
        rec = ref_chain[name]
        if name == "loss":
            assert rec.input is not None  # the reference chain reached its loss
            return loss_probe(loss_pair, reference_loss, rec.input, target, rng, tdtype)
        assert rec.input is not None and rec.output is not None  # the reference ran every layer
        upstream = rng.standard_normal(rec.output.shape).astype(rec.input.dtype)
        return layer_probe(by_name[name], rec.input, upstream, rng, tdtype)

    return probe


def layer_probe(
    pair: LayerPair,
    x: np.ndarray,
    upstream: np.ndarray,
    rng: np.random.Generator,
    tdtype: torch.dtype,
) -> Probe:
    """One layer run alone on both sides on x (N, ...) with ``upstream`` (the output's
    shape) as dL/dy, ours after a warm-up forward on an input drawn from ``rng``."""
    warm = run_numpy.warm_input(x, rng)
    return Probe(
        pair,
        run_numpy.probe_layer(pair.layer, x, upstream, warm),
        run_torch.probe_module(pair, x, upstream, tdtype),
        warm,
        upstream,
    )


def loss_probe(
    loss_pair: LayerPair,
    reference_loss: Any,
    logits: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    tdtype: torch.dtype,
) -> Probe:
    """The loss run alone on both sides on ``logits`` (N, C), ours after a warm-up forward on
    logits drawn from ``rng``."""
    warm = run_numpy.warm_input(logits, rng)
    return Probe(
        loss_pair,
        run_numpy.probe_loss(loss_pair.layer, logits, target, warm),
        run_torch.probe_loss(reference_loss, logits, target, tdtype),
        warm,
        None,
    )
