"""Pairing NumPy layers with torch modules, and parameters inside each pair.

Layers: ``layer_map`` first, then equal names, then order (leaf modules, else the model's
direct children, which lets one fused NumPy layer face a torch submodule). Parameters: by
order, else by shape, each with the layout conversion that makes them hold the same numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from gradparity.core.errors import InputError
from gradparity.core.records import USER_ERRORS, real_array
from gradparity.reference.layout import (
    IDENTITY,
    TRANSPOSE,
    candidate_conversions,
    to_torch_layout,
)
from gradparity.sides.adapt import params_of


@dataclass(frozen=True)
class ParamPair:
    """One NumPy parameter and the torch parameter holding the same numbers."""

    key: str
    torch_name: str
    conversion: str
    ours_shape: tuple[int, ...]
    torch_shape: tuple[int, ...]
    how: str  # why this conversion: "shape", "model convention" or "forward agreement"

    def describe(self) -> str:
        return (
            f"{self.key} {self.ours_shape} <-> {self.torch_name} {self.torch_shape}: "
            f"{self.conversion} ({self.how})"
        )


@dataclass
class LayerPair:
    """A NumPy layer and the torch module it is compared with."""

    name: str
    layer: Any
    module_name: str
    module: nn.Module | None  # None for the loss, which the reference computes with no module
    params: list[ParamPair] = field(default_factory=list)

    @property
    def torch_module(self) -> nn.Module:
        """The module, for a pair that has one (every pair but the loss's)."""
        if self.module is None:
            raise ValueError(f"{self.name!r} is paired with no torch module")
        return self.module

    @property
    def type_name(self) -> str:
        inner = getattr(self.layer, "obj", self.layer)
        return type(inner).__name__


def _fmt(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def align_layers(
    ours: list[tuple[str, Any]], torch_model: nn.Module, layer_map: dict[str, str] | None = None
) -> list[LayerPair]:
    """Pair every NumPy layer with a torch module; one-line error naming what is unmatched."""
    modules = {n: m for n, m in torch_model.named_modules() if n}
    if not modules:
        modules = {"": torch_model}
    layer_map = dict(layer_map or {})
    unknown = [v for v in layer_map.values() if v not in modules]
    if unknown:
        raise InputError(
            f"layer_map names reference modules {unknown} that do not exist; "
            f"the reference has {_fmt(list(modules))}"
        )
    stray = [k for k in layer_map if k not in dict(ours)]
    if stray:
        raise InputError(
            f"layer_map names NumPy layers {stray} that do not exist; "
            f"ours has {_fmt([n for n, _ in ours])}"
        )
    names = [n for n, _ in ours]
    if all(n in layer_map or n in modules for n in names):
        chosen = [layer_map.get(n, n) for n in names]
    else:
        leaves = [n for n, m in modules.items() if not any(True for _ in m.children())]
        children = [n for n, _ in torch_model.named_children()]
        candidates = [c for c in (leaves, children) if len(c) == len(names)]
        if not candidates:
            unmatched_ours = [n for n in names if n not in modules and n not in layer_map]
            unmatched_ref = [n for n in leaves if n not in names]
            raise InputError(
                f"cannot align layers: ours has {len(names)} {_fmt(names)}, the reference "
                f"{len(leaves)} leaf modules {_fmt(leaves)}; unmatched ours {_fmt(unmatched_ours)},"
                f" unmatched reference {_fmt(unmatched_ref)}; pass layer_map={{ours: module}}"
            )
        chosen = [layer_map.get(n, c) for n, c in zip(names, candidates[0])]
    _refuse_uncovered(modules, chosen, names)
    return [LayerPair(n, layer, m, modules[m]) for (n, layer), m in zip(ours, chosen)]


def _refuse_uncovered(modules: dict[str, nn.Module], chosen: list[str], names: list[str]) -> None:
    """Every reference leaf module must sit inside a chosen module: an unmatched one computes
    something ours does not, and every comparison after it would be meaningless."""
    if "" in modules:
        return
    leaves = [n for n, m in modules.items() if not any(True for _ in m.children())]
    uncovered = [
        leaf for leaf in leaves if not any(leaf == c or leaf.startswith(f"{c}.") for c in chosen)
    ]
    if uncovered:
        raise InputError(
            f"the reference has modules no NumPy layer is aligned with: {_fmt(uncovered)}; "
            f"ours has {_fmt(names)}; add the missing layers or pass layer_map={{ours: module}}"
        )


def _pair_params(pair: LayerPair) -> list[tuple[str, str, list[str]]]:
    """(ours key, torch name, candidate conversions) by order, else by shape."""
    ours = {k: tuple(np.shape(v)) for k, v in params_of(pair.layer).items()}
    ref = {n: tuple(p.shape) for n, p in pair.torch_module.named_parameters()}
    listing = (
        f"ours {', '.join(f'{k} {s}' for k, s in ours.items()) or 'none'}; reference "
        f"{', '.join(f'{k} {s}' for k, s in ref.items()) or 'none'}"
    )
    if len(ours) != len(ref):
        raise InputError(
            f"layer {pair.name!r}: {len(ours)} parameters on ours, {len(ref)} on "
            f"reference module {pair.module_name!r} ({listing})"
        )
    paired, unfit = by_order_else_shape(ours, ref)
    if unfit is not None:
        raise InputError(
            f"layer {pair.name!r}: ours parameter {unfit!r} of shape {ours[unfit]} fits no "
            f"reference parameter by any layout conversion ({listing})"
        )
    return [(k, n, candidate_conversions(ours[k], ref[n])) for k, n in paired]


def by_order_else_shape(
    ours: dict[str, tuple[int, ...]],
    ref: dict[str, tuple[int, ...]],
    first: Callable[[str, str], bool] | None = None,
) -> tuple[list[tuple[str, str]], str | None]:
    """((ours name, reference name) pairs, None): in order when every pair fits some layout
    conversion, else each ours entry takes the first free reference entry it fits (those
    ``first(ours, ref)`` marks come first). (pairs so far, name) for an entry nothing fits."""
    if all(candidate_conversions(ours[o], ref[r]) for o, r in zip(ours, ref)):
        return list(zip(ours, ref)), None
    paired: list[tuple[str, str]] = []
    free = list(ref)
    for name, shape in ours.items():
        fits = [r for r in free if candidate_conversions(shape, ref[r])]
        if first is not None:
            fits.sort(key=lambda r: not first(name, r))
        if not fits:
            return paired, name
        free.remove(fits[0])
        paired.append((name, fits[0]))
    return paired, None


def pair_parameters(pairs: list[LayerPair], rng: np.random.Generator) -> None:
    """Fill ``pair.params`` for every layer pair.

    A square weight's layout cannot be read off its shape: it follows the model's convention
    (what its non-square weights showed), else whichever layout makes the two forwards agree,
    else (a layer whose forward agrees under no layout, e.g. a forward bug) the layout the
    other layers agreed on.
    """
    raw = {p.name: _pair_params(p) for p in pairs}
    decided = {
        c[0]
        for pair in pairs
        for k, _, c in raw[pair.name]
        if len(c) == 1 and c[0] in (IDENTITY, TRANSPOSE) and np.ndim(params_of(pair.layer)[k]) == 2
    }
    convention = decided.pop() if len(decided) == 1 else None
    chosen: dict[tuple[str, str], tuple[str | None, str]] = {}
    for pair in pairs:
        for k, n, options in raw[pair.name]:
            if len(options) == 1:
                chosen[(pair.name, k)] = (options[0], "shape")
            elif convention is not None:
                chosen[(pair.name, k)] = (convention, "model convention")
            else:
                chosen[(pair.name, k)] = _forward_agreement(pair, k, n, options, rng)
    agreed = [c for c, how in chosen.values() if how == "forward agreement" and c is not None]
    fallback = max(set(agreed), key=agreed.count) if agreed else TRANSPOSE
    for pair in pairs:
        ours = params_of(pair.layer)
        ref = dict(pair.torch_module.named_parameters())
        for k, n, _ in raw[pair.name]:
            conversion, how = chosen[(pair.name, k)]
            if conversion is None:
                conversion = fallback
                how = (
                    f"assumed ({how}): {'the layout other layers agreed on' if agreed else 'x @ W'}"
                )
            pair.params.append(
                ParamPair(k, n, conversion, tuple(np.shape(ours[k])), tuple(ref[n].shape), how)
            )


def _forward_agreement(
    pair: LayerPair, key: str, torch_name: str, options: list[str], rng: np.random.Generator
) -> tuple[str | None, str]:
    """(conversion, how): the conversion of ``key`` under which ours and the module compute
    the same output; (None, why) when none does or ours cannot run."""
    module = copy.deepcopy(pair.torch_module).double()
    first = next(iter(module.parameters()), None)
    in_features = first.shape[-1] if first is not None and first.ndim == 2 else None
    if in_features is None:
        return None, "no 2-D input to test the forward on"
    x = rng.standard_normal((3, in_features))
    for conversion in options:
        candidate = [
            ParamPair(k, n, conversion if k == key else c[0], (), (), "")
            for k, n, c in _pair_params(pair)
        ]
        sync_module(pair.layer, module, candidate)
        with torch.no_grad():
            expected = module(torch.as_tensor(x)).numpy()
        try:
            got = real_array(copy.deepcopy(pair.layer).forward(x.copy()), "output", "output")
        except USER_ERRORS:  # a layer that cannot run here is judged (and reported) later
            continue
        if np.shape(got) == expected.shape and np.allclose(got, expected, rtol=1e-6, atol=1e-9):
            return conversion, "forward agreement"
    return None, "no layout made the forwards agree"


@torch.no_grad()
def sync_module(layer: Any, module: nn.Module, params: list[ParamPair]) -> None:
    """Copy the NumPy layer's parameters into ``module`` (layout converted, module dtype)."""
    values = params_of(layer)
    ref = dict(module.named_parameters())
    for p in params:
        tparam = ref[p.torch_name]
        converted = to_torch_layout(np.asarray(values[p.key]), p.conversion, tuple(tparam.shape))
        tparam.copy_(torch.as_tensor(converted, dtype=tparam.dtype))


def synced_names(pairs: list[LayerPair]) -> set[str]:
    """The reference's full parameter names that ``sync_module`` fills for ``pairs``."""
    return {f"{p.module_name}.{pp.torch_name}".lstrip(".") for p in pairs for pp in p.params}
