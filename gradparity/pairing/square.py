"""The front ends' parameter pairing: the pairing of ``pairing.params`` with the square-weight
strategy each front end brings.

``compare`` and ``compare_training`` pair each layer's parameters with its module's
(``pair_parameters``); a square weight the model's convention leaves open is probed: the
layout under which the layer and its module compute the same output (``ForwardProbe``).
``compare_function`` pairs a function's parameters with the whole reference
(``pair_function_params``); its square weights take the layout under which the forward taps
or the loss agree (``AgreementTest``, the front end's ``decide`` callback).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gradparity.core.errors import InputError
from gradparity.core.records import USER_ERRORS, real_array
from gradparity.pairing.align import LayerPair
from gradparity.pairing.params import (
    Candidate,
    Choice,
    ParamPair,
    candidates,
    check_param_map,
    listing,
    order_note,
    pair_by_name_shape_order,
    resolve_layouts,
    sync_parameters,
)
from gradparity.reference.layout import IDENTITY, TRANSPOSE, following
from gradparity.sides.adapt import params_of


class ForwardProbe:
    """Square weights of layers: the layout under which the layer's forward agrees with its
    module's on a random input; else (a forward bug, or a layer that cannot run) the layout the
    other layers agreed on, else x @ W."""

    def __init__(self, layers: list[LayerPair], rng: np.random.Generator) -> None:
        self.layers = {pair.name: pair for pair in layers}
        self.rng = rng

    def __call__(
        self, square: list[Candidate], everything: list[Candidate]
    ) -> dict[Candidate, Choice]:
        found = {
            c: self._agreement(c, [o for o in everything if o.layer == c.layer]) for c in square
        }
        agreed = [conversion for conversion, _ in found.values() if conversion is not None]
        # The commonest; on a tie the first in forward order (a set's order changes by process).
        fallback = max(agreed, key=agreed.count) if agreed else TRANSPOSE
        assumed = "the layout other layers agreed on" if agreed else "x @ W"
        chosen: dict[Candidate, Choice] = {}
        for c, (conversion, how) in found.items():
            if conversion is None:
                chosen[c] = (following(c.options, fallback), f"assumed ({how}): {assumed}")
            else:
                chosen[c] = (conversion, how)
        return chosen

    def _agreement(self, square: Candidate, layer: list[Candidate]) -> tuple[str | None, str]:
        """(conversion, how): the conversion of ``square`` under which ours and the module
        compute the same output; (None, why) when none does or ours cannot run."""
        pair = self.layers[square.layer]
        module = copy.deepcopy(pair.torch_module).double()
        first = next(iter(module.parameters()), None)
        in_features = first.shape[-1] if first is not None and first.ndim == 2 else None
        if in_features is None:
            return None, "no 2-D input to test the forward on"
        x = self.rng.standard_normal((3, in_features))
        try:  # one copy for every trial: each forward overwrites what the last one cached
            trial_layer = copy.deepcopy(pair.layer)
        except USER_ERRORS:  # deepcopy signals "not copyable" with many types
            trial_layer = None
        for conversion in square.options:
            trial = [c.choose(conversion if c == square else c.options[0], "") for c in layer]
            sync_parameters(params_of(pair.layer), module, trial)
            try:
                with torch.no_grad():
                    expected = np.asarray(module(torch.as_tensor(x)).cpu().numpy())
            except Exception:  # a probe never ends the run: the module's input is only guessed
                return None, "the reference module cannot run on a guessed (3, in) input"
            if trial_layer is None:
                continue
            try:
                got = real_array(trial_layer.forward(x.copy()), "output", "output")
            except USER_ERRORS:  # a layer that cannot run here is judged (and reported) later
                continue
            if np.shape(got) == expected.shape and np.allclose(got, expected, rtol=1e-6, atol=1e-9):
                return conversion, "forward agreement"
        return None, "no layout made the forwards agree"


class AgreementTest:
    """Square weights of a function: the layout (all square weights alike) under which
    ``decide(pairs)`` says the two sides agree (None: no evidence either way); else the
    layout the examples suggest (columns: ``W @ a``, so (out, in))."""

    def __init__(self, decide: Callable[[list[ParamPair]], bool | None], columns: bool) -> None:
        self.decide = decide
        self.columns = columns

    def __call__(
        self, square: list[Candidate], everything: list[Candidate]
    ) -> dict[Candidate, Choice]:
        answers = []
        for conversion in (IDENTITY, TRANSPOSE):
            how = "the two sides agree under it"
            answers.append(self.decide(_laid_out(everything, conversion, how)))
            if answers[-1]:
                return {c: (following(c.options, conversion), how) for c in square}
        why = (
            "neither layout made the loss or the forward taps agree"
            if False in answers
            else "no loss_fn or forward tap to decide"
        )
        if self.columns:
            assumed = (IDENTITY, f"assumed ({why}): (out, in), as z = W @ a, examples as columns")
        else:
            assumed = (TRANSPOSE, f"assumed ({why}): (in, out), as z = x @ W, examples as rows")
        return {c: (following(c.options, assumed[0]), assumed[1]) for c in square}


def _laid_out(everything: list[Candidate], square: str, how: str) -> list[ParamPair]:
    """Every candidate as a ParamPair, the square ones in the ``square`` layout."""
    return [
        c.choose(following(c.options, square), how) if c.square else c.choose(c.options[0], "shape")
        for c in everything
    ]


def pair_function_params(
    ours: dict[str, np.ndarray],
    model: nn.Module,
    param_map: dict[str, str] | None,
    columns: bool,
    decide: Callable[[list[ParamPair]], bool | None],
    notes: list[str] | None = None,
) -> list[ParamPair]:
    """A ParamPair per parameter (ours' order). ``decide(pairs)`` tells whether the two sides
    agree with the square weights laid out as in ``pairs`` (None: no evidence either way);
    ``columns``: ours holds examples as columns, which sets the layout assumed without one.
    ``notes`` gets a line when order alone decided a pairing (``order_note``)."""
    shapes = {n: tuple(np.shape(a)) for n, a in ours.items()}
    ref = {n: tuple(p.shape) for n, p in model.named_parameters()}
    param_map = dict(param_map or {})
    check_param_map(shapes, ref, param_map)
    all_mapped = len(param_map) == len(shapes)
    if len(shapes) > len(ref) or (len(shapes) < len(ref) and not all_mapped):
        raise InputError(
            f"params holds {len(shapes)} arrays {listing(shapes)} but the reference has "
            f"{len(ref)} parameters {listing(ref)}; give every parameter once (with fewer, "
            "pair each with param_map)"
        )
    found = pair_by_name_shape_order(shapes, ref, param_map)
    named, unfit = found.pairs, found.unfit
    if found.by_order and notes is not None:
        notes.append(order_note("", found.by_order, shapes, ref))
    if unfit is not None:
        taken = {r for _, r in named}
        left = {r: s for r, s in ref.items() if r not in taken}
        raise InputError(
            f"parameter {unfit} of shape {shapes[unfit]} fits no free reference parameter by "
            f"any layout conversion (free: {listing(left)}); "
            "pass param_map={name: torch parameter name}"
        )
    return resolve_layouts(candidates("", shapes, ref, named), AgreementTest(decide, columns))
