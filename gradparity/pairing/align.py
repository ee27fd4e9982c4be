"""Pairing NumPy layers with torch modules, and parameters inside each pair.

Layers: ``layer_map`` first, then equal names, then order (leaf modules, else the model's
direct children, which lets one fused NumPy layer face a torch submodule, else the leaf
modules in the order the forward calls them). A module the forward runs more than once (a
shared activation, one Linear applied twice) faces one NumPy layer per call: the k-th layer
aligned with it, in ours' forward order, is compared with its call k. Parameters inside
each pair are paired by ``pairing.layer_params.pair_layer_parameters``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from gradparity.core.errors import InputError
from gradparity.pairing.params import ParamPair
from gradparity.sides.adapt import params_of


@dataclass
class LayerPair:
    """A NumPy layer and the torch module it is compared with."""

    name: str
    layer: Any
    module_name: str
    module: nn.Module | None  # None for the loss, which the reference computes with no module
    params: list[ParamPair] = field(default_factory=list)
    call: int = 0  # which call of the module this layer is compared with (0-based)
    # A layer inside a container: the names from ours' top-level layer down to it (the
    # chain run records it there); () for a top-level layer (``pairing.tree``).
    path: tuple[str, ...] = ()
    container: bool = False  # its children are compared too, each under a dotted name

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
    ours: list[tuple[str, Any]],
    torch_model: nn.Module,
    layer_map: dict[str, str] | None = None,
    call_order: Callable[[], list[str]] | None = None,
) -> list[LayerPair]:
    """Pair every NumPy layer with a torch module; one-line error naming what is unmatched.

    ``call_order`` gives the reference's leaf modules in the order its forward calls them (a
    module run twice appears twice); it is asked for only when neither names nor the order of
    registration align the layers. Each of several layers aligned with one module gets its
    own call of it (``LayerPair.call``), in ours' forward order."""
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
        chosen = [
            layer_map.get(n, c)
            for n, c in zip(names, _by_order(names, modules, torch_model, layer_map, call_order))
        ]
    _refuse_uncovered(modules, chosen, names)
    pairs = [
        LayerPair(n, layer, m, modules[m], call=chosen[:i].count(m))
        for i, ((n, layer), m) in enumerate(zip(ours, chosen))
    ]
    _refuse_unequal_shared_parameters(pairs)
    return pairs


def _by_order(
    names: list[str],
    modules: dict[str, nn.Module],
    torch_model: nn.Module,
    layer_map: dict[str, str],
    call_order: Callable[[], list[str]] | None,
) -> list[str]:
    """The reference module for each of ours' layers by position: the leaf modules as
    registered, else the direct children, else (asked for only then) the leaf modules as the
    forward calls them."""
    leaves = [n for n, m in modules.items() if not any(True for _ in m.children())]
    children = [n for n, _ in torch_model.named_children()]
    for candidate in (leaves, children):
        if len(candidate) == len(names):
            return candidate
    called = call_order() if call_order is not None else []
    if len(called) == len(names):
        return called
    unmatched_ours = [n for n in names if n not in modules and n not in layer_map]
    unmatched_ref = [n for n in leaves if n not in names]
    runs = f" ({len(called)} calls in its forward)" if len(called) != len(leaves) and called else ""
    raise InputError(
        f"cannot align layers: ours has {len(names)} {_fmt(names)}, the reference "
        f"{len(leaves)} leaf modules {_fmt(leaves)}{runs}; unmatched ours {_fmt(unmatched_ours)},"
        f" unmatched reference {_fmt(unmatched_ref)}; pass layer_map={{ours: module}}"
    )


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


def layers_by_module(pairs: list[LayerPair]) -> dict[str, list[str]]:
    """Reference module name -> the names of ours' layers aligned with it, in call order."""
    by_module: dict[str, list[str]] = {}
    for pair in sorted(pairs, key=lambda p: p.call):
        by_module.setdefault(pair.module_name, []).append(pair.name)
    return by_module


def check_calls(layers: dict[str, list[str]], counts: dict[str, int], what: str = "x") -> None:
    """Refuse a reference module that the forward on ``what`` does not run once per NumPy
    layer aligned with it: a layer without a call of its own would be compared with another
    layer's call. ``layers`` as from ``layers_by_module``; ``counts``: module -> calls made."""
    for module, names in layers.items():
        made = counts.get(module, 0)
        if made == len(names):
            continue
        faced = f"ours' layer {names[0]}" if len(names) == 1 else f"ours' layers {_fmt(names)}"
        runs = "never runs" if made == 0 else f"runs {made} time{'s' if made > 1 else ''}"
        fix = (
            "give ours one layer per call and align each with it (layer_map={ours: module})"
            if made > len(names)
            else "align each of ours' layers with a module the forward runs"
        )
        raise InputError(
            f"reference module {module!r} {runs} in the forward on {what}, but {faced} "
            f"{'is' if len(names) == 1 else 'are'} aligned with it; {fix}"
        )


def refuse_shared_parameters(pairs: list[LayerPair]) -> None:
    """Refuse, for training, a module with parameters that several of ours' layers face: a
    step updates its one set of parameters with the sum of every call's gradient, and each
    of ours' layers its own copy with its own call's share, so the two cannot agree."""
    for module, names in layers_by_module(pairs).items():
        shared = next(p.torch_module for p in pairs if p.module_name == module)
        if len(names) > 1 and any(True for _ in shared.parameters()):
            raise InputError(
                f"ours' layers {_fmt(names)} face reference module {module!r}, which uses one "
                "set of parameters for all its calls; a training step updates it with their "
                "summed gradient and each of ours' layers with its own share, so they cannot "
                "be trained side by side; compare one pass with gp.compare"
            )


def _refuse_unequal_shared_parameters(pairs: list[LayerPair]) -> None:
    """Several of ours' layers facing one module with parameters (one Linear applied twice)
    must hold the same values: the module uses one set of parameters for every call."""
    for module in layers_by_module(pairs):
        sharing = [p for p in pairs if p.module_name == module]
        if len(sharing) < 2 or not any(True for _ in sharing[0].torch_module.parameters()):
            continue
        first = params_of(sharing[0].layer)
        for other in sharing[1:]:
            for key, value in params_of(other.layer).items():
                if key not in first:
                    continue  # keys or shapes that differ are named by the parameter pairing
                mine, theirs = np.asarray(first[key]), np.asarray(value)
                if mine.shape != theirs.shape or np.array_equal(mine, theirs):
                    continue
                gap = float(np.max(np.abs(theirs - mine)))
                raise InputError(
                    f"ours' layers {sharing[0].name} and {other.name} face the same reference "
                    f"module {module!r}, which uses one {key} for all its calls, but their "
                    f"{key} differ (max abs {gap:.3g}); give them the same values"
                )


def synced_names(pairs: list[LayerPair]) -> set[str]:
    """The reference's full parameter names that ``sync_parameters`` fills for ``pairs``."""
    return {f"{p.module_name}.{pp.torch_name}".lstrip(".") for p in pairs for pp in p.params}
