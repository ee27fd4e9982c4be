"""``compare``'s and ``compare_training``'s parameter pairing: each layer's parameters with
its module's, by ``param_map``, then equal names, aliases, a shape only one parameter fits,
then order (``pairing.params.pair_by_name_shape_order``); square weights by the forward probe
(``pairing.square.ForwardProbe``), stacked recurrent gates by trying their orders
(``pairing.gates``). Every layer whose pairing order alone decided among
fitting shapes gets a note, since a wrong guess there reads as an unexplained divergence.

``param_map`` keys are ours' qualified names ``"<layer>.<param>"`` (or ``"<param>"`` where
one layer alone has it); values the reference's parameter name within the module the layer
faces (``"weight"``), or qualified by that module (``"bn1.weight"``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gradparity.core.errors import InputError
from gradparity.pairing.align import LayerPair
from gradparity.pairing.gates import order_gates
from gradparity.pairing.params import (
    Candidate,
    NamePairing,
    Shapes,
    candidates,
    fmt_names,
    listing,
    order_note,
    pair_by_name_shape_order,
    resolve_layouts,
)
from gradparity.pairing.square import ForwardProbe
from gradparity.pairing.tree import repeated
from gradparity.reference.layout import parameter_conversions
from gradparity.sides.adapt import params_of

LayerMaps = dict[str, dict[str, str]]  # ours layer -> {ours key: its module's parameter name}


def _ours_shapes(pair: LayerPair) -> Shapes:
    return {k: tuple(np.shape(v)) for k, v in params_of(pair.layer).items()}


def _reference_shapes(pair: LayerPair) -> Shapes:
    return {n: tuple(p.shape) for n, p in pair.torch_module.named_parameters()}


def _owner(key: str, pairs: list[LayerPair]) -> tuple[LayerPair, str]:
    """The layer and parameter key ``key`` names: "<layer>.<param>" (a dotted layer inside a
    container too: "block1.fc1.W"), else "<param>" where one top-level layer alone has it, or,
    where none has it, one layer inside a container (each call of a layer called several
    times shares its container's parameters: not listed)."""
    listed = [p for p in pairs if not repeated(p, pairs)]
    qualified = {f"{p.name}.{k}": (p, k) for p in listed for k in params_of(p.layer)}
    if key in qualified:
        return qualified[key]
    having = [(p, k) for p in listed for k in params_of(p.layer) if k == key]
    top = [(p, k) for p, k in having if not p.path]  # what a bare name meant before trees
    if len(top or having) > 1:
        raise InputError(_ambiguous(key, [p.name for p, _ in top or having], having))
    if not having:
        raise InputError(
            f"param_map names ours parameter {key!r}, which no layer has; ours has "
            f"{fmt_names(list(qualified))}"
        )
    return (top or having)[0]


def _ambiguous(key: str, layers: list[str], having: list[tuple[LayerPair, str]]) -> str:
    """The refusal of a bare ``key`` that ``layers`` all have; inside a tree it names every
    dotted parameter the key could mean."""
    line = (
        f"param_map key {key!r} is ambiguous: layers {fmt_names(layers)} all have it; "
        f"name one as '<layer>.{key}' (e.g. {f'{layers[0]}.{key}'!r})"
    )
    if all(not p.path for p, _ in having):
        return line
    return f"{line}; it could mean {fmt_names([f'{p.name}.{key}' for p, _ in having])}"


def _module_parameter(pair: LayerPair, key: str, value: str) -> str:
    """``value`` as a parameter name within the module ``pair`` faces: as it is, or qualified
    by that module's name ("bn1.weight") or by a container's above it (inside ``block1``,
    "fc1.weight" and "block1.fc1.weight" both name ``block1.fc1``'s "weight")."""
    names = _reference_shapes(pair)
    prefix = f"{pair.module_name}."
    parts = pair.module_name.split(".")
    for above in [".".join(parts[:i]) for i in range(len(parts))]:
        full = f"{above}.{value}".lstrip(".")
        if value not in names and full.startswith(prefix) and full[len(prefix) :] in names:
            return full[len(prefix) :]
    if value not in names:
        raise InputError(
            f"param_map pairs {pair.name}.{key} with {value!r}, which reference module "
            f"{pair.module_name!r} (the one layer {pair.name} faces) does not have; it has "
            f"{listing(names)}"
        )
    return value


def layer_param_maps(pairs: list[LayerPair], param_map: Mapping[str, str] | None) -> LayerMaps:
    """``param_map`` split per layer, every name resolved within its layer and module. One
    line for a name that does not exist on either side, an ambiguous key, a reference
    parameter given twice, or shapes no layout conversion fits."""
    maps: LayerMaps = {}
    for key, value in (param_map or {}).items():
        pair, param = _owner(key, pairs)
        maps.setdefault(pair.name, {})[param] = _module_parameter(pair, param, value)
    for pair in pairs:
        _check_layer_map(pair, maps.get(pair.name, {}))
    return maps


def _check_layer_map(pair: LayerPair, layer_map: dict[str, str]) -> None:
    """One line for a reference parameter ``layer_map`` uses twice, or a pair of shapes no
    layout conversion fits."""
    for target in dict.fromkeys(layer_map.values()):
        users = [f"{pair.name}.{k}" for k, v in layer_map.items() if v == target]
        if len(users) > 1:
            raise InputError(
                f"param_map pairs reference parameter {target!r} of module "
                f"{pair.module_name!r} with {len(users)} parameters {fmt_names(users)}; "
                "use each once"
            )
    ours, ref = _ours_shapes(pair), _reference_shapes(pair)
    for key, target in layer_map.items():
        if not parameter_conversions(ours[key], ref[target]):
            raise InputError(
                f"param_map pairs {pair.name}.{key} {ours[key]} with {target} {ref[target]}: "
                "no layout conversion fits those shapes"
            )


def _layer_pairing(
    pair: LayerPair, ours: Shapes, ref: Shapes, layer_map: dict[str, str]
) -> NamePairing:
    """The layer's parameters (``ours``) paired with its module's (``ref``); one line naming
    what cannot pair."""
    shown = f"ours {', '.join(f'{k} {s}' for k, s in ours.items()) or 'none'}; reference " + (
        ", ".join(f"{k} {s}" for k, s in ref.items()) or "none"
    )
    if len(ours) != len(ref):
        raise InputError(
            f"layer {pair.name!r}: {len(ours)} parameters on ours, {len(ref)} on "
            f"reference module {pair.module_name!r} ({shown})"
        )
    found = pair_by_name_shape_order(ours, ref, layer_map)
    if found.unfit is not None:
        raise InputError(
            f"layer {pair.name!r}: ours parameter {found.unfit!r} of shape {ours[found.unfit]} "
            f"fits no reference parameter by any layout conversion ({shown})"
        )
    return found


def pair_layer_parameters(
    pairs: list[LayerPair], rng: np.random.Generator, param_map: Mapping[str, str] | None = None
) -> list[str]:
    """Fill ``pair.params`` for every layer pair; a square weight's layout follows the model's
    convention, else the forward probe (drawing from ``rng``). Returns a note per layer whose
    pairing order alone decided (``order_note``); none where names decided."""
    maps = layer_param_maps(pairs, param_map)
    found: list[Candidate] = []
    notes = []
    for pair in pairs:
        ours, ref = _ours_shapes(pair), _reference_shapes(pair)
        pairing = _layer_pairing(pair, ours, ref, maps.get(pair.name, {}))
        found += candidates(pair.name, ours, ref, pairing.pairs)
        if pairing.by_order:
            notes.append(order_note(pair.name, pairing.by_order, ours, ref))
    resolved = resolve_layouts(found, ForwardProbe(pairs, rng))
    for pair in pairs:
        pair.params.extend(p for c, p in zip(found, resolved) if c.layer == pair.name)
        order_gates(pair, rng)
    return notes
