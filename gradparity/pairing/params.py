"""Pairing ours' parameters with the reference's, and moving values between the two layouts.

One implementation for every front end. Names pair by ``param_map`` first, then equal names
("Wxh" with "cell.Wxh"), then aliases ("gamma" with "weight", ``pairing.aliases``), then a
shape only one free reference parameter fits, then order (numbered names in their numbers'
order), else each parameter takes the first free reference parameter its shape fits (biases
prefer 1-D ones); ``NamePairing.by_order`` says which pairs order alone decided.
Each pair carries the layout conversion that makes both hold the same numbers. A square
weight's layout cannot be read off its shape: it follows the model's convention (what its
non-square weights showed), else a ``SquareStrategy`` the front end passes in decides (see
``pairing.square``). ``sync_parameters`` copies ours' values into the reference and
``to_ours`` brings the reference's values back into ours' layout.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from gradparity.core.errors import InputError
from gradparity.pairing.aliases import are_aliases
from gradparity.pairing.structure import is_vector, layer_index
from gradparity.reference.layout import (
    IDENTITY,
    TRANSPOSE,
    following,
    parameter_conversions,
    to_ours_layout,
    to_torch_layout,
)

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class ParamPair:
    """One NumPy parameter and the torch parameter holding the same numbers."""

    key: str
    torch_name: str
    conversion: str
    ours_shape: tuple[int, ...]
    torch_shape: tuple[int, ...]
    how: str  # why this conversion: "shape", "model convention", or what the strategy found

    def describe(self) -> str:
        return (
            f"{self.key} {self.ours_shape} <-> {self.torch_name} {self.torch_shape}: "
            f"{self.conversion} ({self.how})"
        )


@dataclass(frozen=True)
class Candidate:
    """A paired parameter whose conversion is still to choose among ``options`` (two for a
    square weight). ``layer``: the layer it belongs to ("" for a function's parameters)."""

    layer: str
    key: str
    torch_name: str
    ours_shape: tuple[int, ...]
    torch_shape: tuple[int, ...]
    options: tuple[str, ...]

    @property
    def square(self) -> bool:
        """True when the shapes allow more than one conversion (a square weight)."""
        return len(self.options) > 1

    def choose(self, conversion: str, how: str) -> ParamPair:
        """The pair laid out by ``conversion``; ``how``: why that one."""
        return ParamPair(
            self.key, self.torch_name, conversion, self.ours_shape, self.torch_shape, how
        )


Choice = tuple[str, str]  # (conversion, how it was chosen)


class SquareStrategy(Protocol):
    """Decides the layout of the square weights the model's convention left open."""

    def __call__(
        self, square: list[Candidate], everything: list[Candidate]
    ) -> dict[Candidate, Choice]:
        """A (conversion, how) for each of ``square``; ``everything``: all candidates, so a
        probe can lay the other parameters out as well."""
        ...


def fmt_names(names: list[str], limit: int = 12) -> str:
    """``[a, b, ...]``, at most ``limit`` names shown."""
    return f"[{', '.join(names[:limit])}{', ...' if len(names) > limit else ''}]"


def listing(shapes: Shapes) -> str:
    """``[W (3, 4), b (3,)]``: names with their shapes, for messages."""
    return fmt_names([f"{n} {s}" for n, s in shapes.items()])


def _by_order_else_shape(
    ours: Shapes, ref: Shapes, first: Callable[[str, str], bool] | None = None
) -> tuple[list[tuple[str, str]], str | None]:
    """((ours name, reference name) pairs, None): in order when every pair fits some layout
    conversion, else each ours entry takes the first free reference entry it fits (those
    ``first(ours, ref)`` marks come first). (pairs so far, name) for an entry nothing fits."""
    if all(parameter_conversions(ours[o], ref[r]) for o, r in zip(ours, ref)):
        return list(zip(ours, ref)), None
    paired: list[tuple[str, str]] = []
    free = list(ref)
    for name, shape in ours.items():
        fits = [r for r in free if parameter_conversions(shape, ref[r])]
        if first is not None:
            fits.sort(key=lambda r: not first(name, r))
        if not fits:
            return paired, name
        free.remove(fits[0])
        paired.append((name, fits[0]))
    return paired, None


def check_param_map(ours: Shapes, ref: Shapes, param_map: Mapping[str, str]) -> None:
    """One line for a ``param_map`` naming a missing parameter on either side, using a
    reference parameter twice, or pairing shapes no layout conversion fits."""
    unknown = [k for k in param_map if k not in ours]
    if unknown:
        raise InputError(
            f"param_map names parameters {unknown} that params does not have; params has "
            f"{fmt_names(list(ours))}"
        )
    missing = [v for v in param_map.values() if v not in ref]
    if missing:
        raise InputError(
            f"param_map names reference parameters {missing} that do not exist; the reference "
            f"has {fmt_names(list(ref))}"
        )
    twice = sorted({v for v in param_map.values() if list(param_map.values()).count(v) > 1})
    if twice:
        raise InputError(f"param_map pairs {twice} with more than one parameter; use each once")
    for name, target in param_map.items():
        if not parameter_conversions(ours[name], ref[target]):
            raise InputError(
                f"param_map pairs {name} {ours[name]} with {target} {ref[target]}: no layout "
                "conversion fits those shapes"
            )


def _by_name(ours: Shapes, ref: Shapes, taken: Mapping[str, str]) -> dict[str, str]:
    """Pairs by name: ours "Wxh" with the reference's "Wxh" or "cell.Wxh", where exactly one
    free reference parameter has that name and its shape fits."""
    free = [r for r in ref if r not in taken.values()]
    found = {}
    for name in ours:
        if name in taken:
            continue
        same = [r for r in free if name in (r, r.rsplit(".", 1)[-1])]
        if len(same) == 1 and parameter_conversions(ours[name], ref[same[0]]):
            found[name] = same[0]
            free.remove(same[0])
    return found


def _by_alias(ours: Shapes, ref: Shapes, taken: Mapping[str, str]) -> dict[str, str]:
    """Pairs by alias ("gamma" with "weight", "Wxh" with "weight_ih_l0"; see
    ``pairing.aliases``): where exactly one free reference parameter of a fitting shape is an
    alias of ours' name and no other free ours parameter claims it."""
    free = [r for r in ref if r not in taken.values()]
    claims = {
        name: _same_prefix_first(
            name, [r for r in free if are_aliases(name, r) and parameter_conversions(shape, ref[r])]
        )
        for name, shape in ours.items()
        if name not in taken
    }
    claimed = Counter(r for found in claims.values() for r in found)
    return {n: found[0] for n, found in claims.items() if len(found) == 1 == claimed[found[0]]}


def _same_prefix_first(name: str, found: list[str]) -> list[str]:
    """Of the reference names ``found``, those under the same dotted prefix as ``name``
    ("fc1.W" with "fc1.weight", not "fc2.weight": a container's layers), when any is."""
    prefix = name.rsplit(".", 1)[0].lower() + "." if "." in name else None
    same = [r for r in found if prefix is not None and r.lower().startswith(prefix)]
    return same or found


def _by_unique_shape(ours: Shapes, ref: Shapes, taken: Mapping[str, str]) -> dict[str, str]:
    """Pairs by shape: an ours parameter only one free reference parameter fits takes it,
    repeatedly (each pairing may leave another parameter a single fit)."""
    found: dict[str, str] = {}
    progress = True
    while progress:
        progress = False
        free = [r for r in ref if r not in taken.values() and r not in found.values()]
        for name, shape in ours.items():
            if name in taken or name in found:
                continue
            fits = [r for r in free if parameter_conversions(shape, ref[r])]
            if len(fits) == 1:
                found[name] = fits[0]
                progress = True
                break
    return found


@dataclass(frozen=True)
class NamePairing:
    """How ours' parameters met the reference's: ``pairs`` (ours name, reference name);
    ``by_order``: those among them that only order decided (more than one free reference
    parameter fitted); ``unfit``: an ours parameter no free reference parameter fits."""

    pairs: list[tuple[str, str]]
    by_order: list[tuple[str, str]]
    unfit: str | None


def pair_by_name_shape_order(
    ours: Shapes, ref: Shapes, param_map: Mapping[str, str] | None = None
) -> NamePairing:
    """Pairs by ``param_map`` (checked beforehand by ``check_param_map``), then equal names,
    then aliases, then a shape only one free reference parameter fits, then order."""
    mapped = {**_by_name(ours, ref, param_map or {}), **(param_map or {})}
    mapped.update(_by_alias(ours, ref, mapped))
    mapped.update(_by_unique_shape(ours, ref, mapped))
    # Numbered names (W1, b1, W2, ... or w[0], b[0], ...) in layer order, whatever the order
    # they were given in: square layers of equal shape can only be told apart by that.
    index = layer_index(list(ours), list(ours.values()))
    free_ours = [n for n in ours if n not in mapped]
    if all(re.search(r"\d", n) for n in free_ours):
        free_ours.sort(key=lambda n: index[n])
    free_ref = {n: ref[n] for n in ref if n not in mapped.values()}
    by_order, unfit = _by_order_else_shape(
        {n: ours[n] for n in free_ours},
        free_ref,
        first=lambda o, r: is_vector(ours[o]) == (len(ref[r]) == 1),  # biases with biases
    )
    return NamePairing([*mapped.items(), *by_order], by_order, unfit)


def order_note(layer: str, by_order: list[tuple[str, str]], ours: Shapes, ref: Shapes) -> str:
    """The note naming the pairs (of ``layer``; "" for a function's parameters) that order
    alone decided: a wrong guess there reads as an unexplained divergence."""
    shapes = {ours[o] for o, _ in by_order} | {ref[r] for _, r in by_order}
    why = f"same shape {shapes.pop()}" if len(shapes) == 1 else "shapes that fit either way"
    joined = " and ".join(f"{o} <-> {r}" for o, r in by_order)
    key, target = by_order[0]
    where, key = (f"{layer}: ", f"{layer}.{key}") if layer else ("", key)
    return (
        f"{where}{joined} paired by order ({why}): pass param_map (e.g. "
        f"{{{key!r}: {target!r}}}) if that is wrong"
    )


def candidates(
    layer: str, ours: Shapes, ref: Shapes, named: list[tuple[str, str]]
) -> list[Candidate]:
    """A Candidate per (ours name, reference name) pair of ``named``, in ours' order."""
    order = {name: i for i, name in enumerate(ours)}
    return [
        Candidate(layer, o, r, ours[o], ref[r], tuple(parameter_conversions(ours[o], ref[r])))
        for o, r in sorted(named, key=lambda pair: order[pair[0]])
    ]


def model_convention(found: list[Candidate]) -> str | None:
    """The layout every non-square 2-D weight showed (identity or transpose), if they agree."""
    decided = {c.options[0] for c in found if not c.square and len(c.ours_shape) == 2}
    decided &= {IDENTITY, TRANSPOSE}
    return decided.pop() if len(decided) == 1 else None


def resolve_layouts(found: list[Candidate], strategy: SquareStrategy) -> list[ParamPair]:
    """A ParamPair per candidate (same order): the one conversion its shapes allow, else the
    model's convention, else what ``strategy`` decides for the square weights."""
    square = [c for c in found if c.square]
    convention = model_convention(found)
    chosen: dict[Candidate, Choice] = {}
    if square and convention is not None:
        chosen = {c: (following(c.options, convention), "model convention") for c in square}
    elif square:
        chosen = strategy(square, found)
    return [c.choose(*chosen.get(c, (c.options[0], "shape"))) for c in found]


def to_ours(value: np.ndarray, pair: ParamPair, view: bool = False) -> np.ndarray:
    """A reference-side array of ``pair`` (its value, gradient or optimiser state) in ours'
    layout: shape ``pair.ours_shape``; a view of ``value`` where ``view`` and it can be."""
    return to_ours_layout(value, pair.conversion, pair.ours_shape, view)


def to_reference(value: np.ndarray, pair: ParamPair, view: bool = False) -> np.ndarray:
    """An ours-side array of ``pair`` in the reference's layout: shape ``pair.torch_shape``;
    a view of ``value`` where ``view`` and it can be."""
    return to_torch_layout(np.asarray(value), pair.conversion, pair.torch_shape, view)


@torch.no_grad()
def sync_parameters(
    values: Mapping[str, np.ndarray],
    module: nn.Module,
    pairs: list[ParamPair],
    rebind: bool = False,
) -> None:
    """Copy ours' ``values`` (by ours' key) into ``module``'s parameters named by ``pairs``,
    layout converted, in the module's dtype. ``rebind`` (streaming): replace each parameter
    with one over ours' memory instead (no copy where the layout conversion is a view and the
    dtype agrees), leaving the memory the old one used untouched."""
    tparams = dict(module.named_parameters())
    for p in pairs:
        tparam = tparams[p.torch_name]
        value = to_reference(values[p.key], p, view=rebind)
        if not rebind:
            tparam.copy_(torch.as_tensor(value, dtype=tparam.dtype))
            continue
        owner_name, _, leaf = p.torch_name.rpartition(".")
        owner = module.get_submodule(owner_name)
        value = np.asarray(value)
        if not value.flags.writeable or any(step < 0 for step in value.strides):
            value = np.array(value)  # torch shares no read-only memory and no negative strides
        tensor = torch.as_tensor(value, dtype=tparam.dtype, device=tparam.device)
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=tparam.requires_grad)
