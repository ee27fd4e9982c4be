"""Pairing a function's parameters and taps with a torch reference.

Parameters: ``param_map`` first, then equal names ("Wxh" with "cell.Wxh"), then order, else
each parameter takes the first free reference parameter its shape fits (biases prefer 1-D
ones), so ``(biases, weights)`` lists pair with torch's layer-by-layer order. A square
weight's layout follows the model's convention (what its non-square weights showed), else the
evidence (``decide``: the forward taps or the loss agree under one layout), else the layout
the examples suggest (columns: ``W @ a``, so (out, in)).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
from torch import nn

from gradparity.core.address import tap_target
from gradparity.core.errors import InputError
from gradparity.pairing.align import ParamPair, by_order_else_shape
from gradparity.pairing.structure import is_vector, layer_index
from gradparity.reference.layout import IDENTITY, TRANSPOSE, candidate_conversions


def _fmt(names: list[str], limit: int = 12) -> str:
    return f"[{', '.join(names[:limit])}{', ...' if len(names) > limit else ''}]"


def _listing(shapes: dict[str, tuple[int, ...]]) -> str:
    return _fmt([f"{n} {s}" for n, s in shapes.items()])


def _pair_names(
    ours: dict[str, tuple[int, ...]],
    ref: dict[str, tuple[int, ...]],
    param_map: dict[str, str],
) -> list[tuple[str, str]]:
    """(ours name, torch name) for every parameter; one-line errors for what cannot pair."""
    unknown = [k for k in param_map if k not in ours]
    if unknown:
        raise InputError(
            f"param_map names parameters {unknown} that params does not have; params has "
            f"{_fmt(list(ours))}"
        )
    missing = [v for v in param_map.values() if v not in ref]
    if missing:
        raise InputError(
            f"param_map names reference parameters {missing} that do not exist; the reference "
            f"has {_fmt(list(ref))}"
        )
    twice = sorted({v for v in param_map.values() if list(param_map.values()).count(v) > 1})
    if twice:
        raise InputError(f"param_map pairs {twice} with more than one parameter; use each once")
    for name, target in param_map.items():
        if not candidate_conversions(ours[name], ref[target]):
            raise InputError(
                f"param_map pairs {name} {ours[name]} with {target} {ref[target]}: no layout "
                "conversion fits those shapes"
            )
    all_mapped = len(param_map) == len(ours)
    if len(ours) > len(ref) or (len(ours) < len(ref) and not all_mapped):
        raise InputError(
            f"params holds {len(ours)} arrays {_listing(ours)} but the reference has "
            f"{len(ref)} parameters {_listing(ref)}; give every parameter once (with fewer, "
            "pair each with param_map)"
        )
    param_map = {**_by_name(ours, ref, param_map), **param_map}
    # Numbered names (W1, b1, W2, ... or w[0], b[0], ...) in layer order, whatever the order
    # they were given in: square layers of equal shape can only be told apart by that.
    index = layer_index(list(ours), list(ours.values()))
    free_ours = [n for n in ours if n not in param_map]
    if all(re.search(r"\d", n) for n in free_ours):
        free_ours.sort(key=lambda n: index[n])
    free_ref = {n: ref[n] for n in ref if n not in param_map.values()}
    paired, unfit = by_order_else_shape(
        {n: ours[n] for n in free_ours},
        free_ref,
        first=lambda o, r: is_vector(ours[o]) == (len(ref[r]) == 1),  # biases with biases
    )
    if unfit is not None:
        left = {r: s for r, s in free_ref.items() if r not in dict(paired).values()}
        raise InputError(
            f"parameter {unfit} of shape {ours[unfit]} fits no free reference parameter by "
            f"any layout conversion (free: {_listing(left)}); "
            "pass param_map={name: torch parameter name}"
        )
    return [*param_map.items(), *paired]


def _by_name(
    ours: dict[str, tuple[int, ...]], ref: dict[str, tuple[int, ...]], taken: dict[str, str]
) -> dict[str, str]:
    """Pairs by name: ours "Wxh" with the reference's "Wxh" or "cell.Wxh", where exactly one
    free reference parameter has that name and its shape fits."""
    free = [r for r in ref if r not in taken.values()]
    found = {}
    for name in ours:
        if name in taken:
            continue
        same = [r for r in free if name in (r, r.rsplit(".", 1)[-1])]
        if len(same) == 1 and candidate_conversions(ours[name], ref[same[0]]):
            found[name] = same[0]
            free.remove(same[0])
    return found


def pair_function_params(
    ours: dict[str, np.ndarray],
    model: nn.Module,
    param_map: dict[str, str] | None,
    columns: bool,
    decide: Callable[[list[ParamPair]], bool | None],
) -> list[ParamPair]:
    """A ParamPair per parameter (ours' order). ``decide(pairs)`` tells whether the two sides
    agree with the square weights laid out as in ``pairs`` (None: no evidence either way)."""
    shapes = {n: tuple(np.shape(a)) for n, a in ours.items()}
    ref = {n: tuple(p.shape) for n, p in model.named_parameters()}
    paired = dict(_pair_names(shapes, ref, dict(param_map or {})))
    options = {o: candidate_conversions(shapes[o], ref[paired[o]]) for o in shapes}

    def build(square: str, how: str) -> list[ParamPair]:
        return [
            ParamPair(
                o,
                paired[o],
                c[0] if len(c) == 1 else square,
                shapes[o],
                ref[paired[o]],
                "shape" if len(c) == 1 else how,
            )
            for o, c in options.items()
        ]

    decided = {c[0] for o, c in options.items() if len(c) == 1 and len(shapes[o]) == 2}
    decided &= {IDENTITY, TRANSPOSE}
    if len(decided) == 1:
        return build(decided.pop(), "model convention")
    if all(len(c) == 1 for c in options.values()):
        return build(IDENTITY, "shape")
    answers = []
    for conversion in (IDENTITY, TRANSPOSE):
        candidate = build(conversion, "the two sides agree under it")
        answers.append(decide(candidate))
        if answers[-1]:
            return candidate
    why = (
        "neither layout made the loss or the forward taps agree"
        if False in answers
        else "no loss_fn or forward tap to decide"
    )
    if columns:
        return build(IDENTITY, f"assumed ({why}): (out, in), as z = W @ a, examples as columns")
    return build(TRANSPOSE, f"assumed ({why}): (in, out), as z = x @ W, examples as rows")


def depth_of(model: nn.Module, pairs: list[ParamPair]) -> dict[str, int]:
    """ours name -> position of its reference module in forward (registration) order."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return {p.key: order.get(p.torch_name.rpartition(".")[0], 0) for p in pairs}


def resolve_tap_map(
    tap_map: dict[str, str] | None, model: nn.Module
) -> dict[str, tuple[str, str, int | None]]:
    """tap name -> ("output" | "grad_output", module name, call or None).

    "MODULE@k" names the module's k-th call (from 0), for a module the forward runs several
    times (a recurrent cell); plain "MODULE" is its first. One line naming a missing module.
    """
    modules = [n for n, _ in model.named_modules() if n]
    resolved = {}
    for tap, target in dict(tap_map or {}).items():
        if not isinstance(target, str):
            raise InputError(
                f"tap_map[{tap!r}] must be 'MODULE' or 'grad:MODULE', got {type(target).__name__}"
            )
        kind, rest = tap_target(target)
        module, at, call = rest.rpartition("@") if "@" in rest else (rest, "", "")
        if at and not call.isdigit():
            raise InputError(f"tap_map[{tap!r}]: after '@' comes the call number, got {call!r}")
        if module not in modules:
            raise InputError(
                f"tap_map[{tap!r}] names module {module!r}, which the reference does not have; "
                f"its modules are {_fmt(modules, 30)}"
            )
        resolved[str(tap)] = (kind, module, int(call) if at else None)
    return resolved


def tap_conversion(
    ours_shape: tuple[int, ...], ref_shape: tuple[int, ...], columns: bool
) -> str | None:
    """How a tap maps onto the reference tensor: a square one follows the examples' layout."""
    options = candidate_conversions(ours_shape, ref_shape)
    if len(options) > 1:
        return TRANSPOSE if columns else IDENTITY
    return options[0] if options else None
