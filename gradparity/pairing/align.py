"""Pairing NumPy layers with torch modules, and parameters inside each pair.

Layers: ``layer_map`` first, then equal names, then order (leaf modules, else the model's
direct children, which lets one fused NumPy layer face a torch submodule). Parameters inside
each pair are paired by ``pairing.square.pair_parameters``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gradparity.core.errors import InputError
from gradparity.pairing.params import ParamPair


@dataclass
class LayerPair:
    """A NumPy layer and the torch module it is compared with."""

    name: str
    layer: Any
    module_name: str
    module: nn.Module
    params: list[ParamPair] = field(default_factory=list)

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
