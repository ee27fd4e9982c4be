"""One root cause per bug in a function comparison: diverging parameter gradients grouped per
reference module, and the groups nearer the input than the deepest one, which a backward bug
there may explain, marked possibly inherited, with the taps that would split them.

Without gradient taps, a bug in a delta shows in the parameter gradients of its layer and of
every layer nearer the input, so only the deepest diverging layer is sure to hold (or sit just
under) the bug: it is the root cause, and each shallower layer's gradients are listed under it
as possibly inherited. With taps, parameters between the first diverging gradient tap and the
agreeing tap before it belong to that tap's finding.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradparity.core.address import place
from gradparity.core.finding import (
    POSSIBLY_INHERITED,
    Finding,
    finding_from_row,
    quantity_entry,
)
from gradparity.core.labels import (
    ACCUMULATED,
    MUTATES_INPUT,
    NOT_REDUCED,
    RAISED,
    SHAPE_MISMATCH,
    STALE,
    TRANSPOSED,
    WEIGHT_DECAY,
)
from gradparity.core.row import Row
from gradparity.core.status import Status

# Labels a wrong upstream delta cannot produce in a parameter gradient: they name a mistake in
# that gradient's own line (or its state across calls), so such a layer is never inherited.
LOCAL_LABELS = frozenset(
    {
        ACCUMULATED,
        MUTATES_INPUT,
        NOT_REDUCED,
        RAISED,
        SHAPE_MISMATCH,
        STALE,
        TRANSPOSED,
        WEIGHT_DECAY,
    }
)


def param_name(row: Row) -> str:
    """The parameter a parameter row's gradient is of."""
    name = row.address.name
    assert name is not None  # a parameter row's address is grad:<name>
    return name


def module_of(row: Row) -> str | None:
    """The reference module owning a parameter row's parameter; None without a reference."""
    if row.reference_parameter is None:
        return None
    return row.reference_parameter.rpartition(".")[0]


@dataclass
class Layer:
    """The diverging parameter gradients of one reference module (deepest first order kept),
    at ``depth`` (position in forward order) and named ``module`` (None without a
    reference)."""

    depth: int
    module: str | None
    rows: list[Row]

    def split(self) -> tuple[Layer | None, Layer | None]:
        """(the rows a wrong delta from deeper down may explain, the rest) as layers; None
        for an empty part."""
        delta = [r for r in self.rows if _inheritable(r)]
        local = [r for r in self.rows if not _inheritable(r)]
        return (
            Layer(self.depth, self.module, delta) if delta else None,
            Layer(self.depth, self.module, local) if local else None,
        )


def _inheritable(row: Row) -> bool:
    """Whether a wrong delta from deeper down may be all that is wrong with ``row``."""
    return row.referee != "ours" and row.diagnosis not in LOCAL_LABELS


def per_layer(rows: list[Row], depth: dict[str, int]) -> list[Layer]:
    """``rows`` grouped by the module their parameter belongs to, deepest first."""
    groups: dict[int, Layer] = {}
    for row in rows:
        at = depth[param_name(row)]
        groups.setdefault(at, Layer(at, module_of(row), [])).rows.append(row)
    return sorted(groups.values(), key=lambda g: -g.depth)


def tap_name(module: str) -> str:
    """The tap name the advice suggests for the delta reaching ``module``'s output."""
    return "delta_" + module.replace(".", "_")


def tap_advice(split: list[Layer], above: Layer | None, by_name: bool = False) -> str:
    """Where to put ``gp.tap`` calls to split the layers ``split`` (deepest first): the delta
    reaching each one's output (its pre-activation), and that of ``above``, the next deeper
    layer whose gradients agree, so the first diverging tap brackets the bug. ``by_name``:
    the reference pairs taps by name (autodiff), no tap_map."""
    lead = "to split them" if len(split) > 1 else "to narrow the bug down"
    if by_name:
        return (
            f"{lead}, tap each layer's pre-activation in the forward (gp.tap('z1', z1)) and "
            "its gradient in your backward (gp.tap('z1', dz1, grad=True)): the first gradient "
            "tap that diverges (in backward order) brackets the bug"
        )
    modules = [g.module for g in ([above] if above else []) + split]
    first = split[0].module
    if first is None or None in modules:  # no reference module names (central differences)
        return (
            f"{lead}, tap the gradient that reaches each layer's output in your backward "
            "(gp.tap('delta', delta)) and compare with a torch reference and tap_map"
        )
    tap_map = ", ".join(f'"{tap_name(m)}": "grad:{m}"' for m in modules if m is not None)
    return (
        f"{lead}, tap the gradient that reaches each layer's output (its pre-activation) "
        f'in your backward, e.g. gp.tap("{tap_name(first)}", delta) where you compute the '
        f"delta of module {first}, and pass tap_map={{{tap_map}}}: the first tap that diverges "
        "(in backward order) brackets the bug"
    )


def _restate(found: Finding) -> None:
    found.message = f"{place(found.layer, found.quantity)}: {found.problem}" + (
        f"; {found.fix}" if found.fix else ""
    )


def _layer_finding(layer: Layer) -> Finding:
    """One root cause for a layer's diverging parameter gradients (statuses set in place)."""
    for row in layer.rows:
        row.status = Status.ROOT_CAUSE
    found = finding_from_row(layer.rows[0], layer.rows[0].mode)
    found.quantities = [quantity_entry(r) for r in layer.rows[1:]]
    return found


def _mark_deepest(found: Finding) -> None:
    found.detail["deepest"] = True
    found.problem += (
        "; the deepest diverging parameter (closest to the output): a backward bug shows first "
        "here and spreads towards the input"
    )
    _restate(found)


def _add_possibly_inherited(found: Finding, layers: list[Layer], why: str, advice: str) -> None:
    """List ``layers`` under ``found`` as possibly inherited, ``why`` said after their names
    and ``advice`` added to the fix (statuses set in place)."""
    for layer in layers:
        for row in layer.rows:
            row.status = Status.INHERITED
            found.quantities.append(quantity_entry(row, POSSIBLY_INHERITED))
    names = ", ".join(param_name(r) for g in layers for r in g.rows)
    found.problem += f"; {names} {why}"
    found.fix = f"{found.fix}; {advice}" if found.fix and advice else (found.fix or advice)
    _restate(found)


def forward_rooted(layers: list[Layer], found: Finding) -> list[Finding]:
    """Root causes of the diverging ``layers`` when the first divergence, ``found``, is in
    the forward (a forward tap, or the loss): every gradient may follow from it, so those a
    wrong activation can explain are listed under it as possibly inherited; the others are
    root causes of their own."""
    inherited, roots = [], []
    for layer in layers:
        delta, local = layer.split()
        inherited += [delta] if delta else []
        roots += [_layer_finding(local)] if local else []
    if inherited:
        why = "diverge too, possibly only because the forward does: fix the forward first"
        _add_possibly_inherited(found, inherited, why, "")
    return roots


def untapped_roots(
    layers: list[Layer], all_rows: list[Row], depth: dict[str, int], by_name: bool = False
) -> list[Finding]:
    """Root causes of the diverging ``layers`` (deepest first) when no gradient tap was
    compared: the deepest layer, with the shallower inheritable ones listed under it as
    possibly inherited and the taps that would split them (``by_name``: as the autodiff
    reference pairs them); a layer whose labels a delta cannot explain is a root cause of its
    own."""
    if not layers:
        return []
    deepest, *shallower = layers
    roots = [_layer_finding(deepest)]
    if deepest.rows[0].referee != "ours":
        _mark_deepest(roots[0])
    if not any(map(_inheritable, deepest.rows)):  # its own lines' mistake: no delta is wrong
        return roots + [_layer_finding(g) for g in shallower]
    inherited = []
    for layer in shallower:
        delta, local = layer.split()
        inherited += [delta] if delta else []
        roots += [_layer_finding(local)] if local else []
    advice = tap_advice([deepest, *inherited], next_deeper(deepest, all_rows, depth), by_name)
    if inherited:
        why = (
            "(nearer the input) diverge too, possibly only because of this layer's delta: "
            "without gradient taps they cannot be told apart"
        )
        _add_possibly_inherited(roots[0], inherited, why, advice)
    else:
        roots[0].fix = f"{roots[0].fix}; {advice}" if roots[0].fix else advice
        _restate(roots[0])
    return roots


def tapped_roots(
    layers: list[Layer], backward: list[Row], tap_root: Finding | None
) -> list[Finding]:
    """Root causes of the diverging ``layers`` (deepest first) when gradient taps
    (``backward``, in backward order) were compared. The first diverging tap, when it is the
    root cause ``tap_root``, explains the layers its delta reaches (its module's and those
    nearer the input): ``inherited``. The layers between it and the agreeing tap before it
    are listed in its finding; every other layer is a root cause of its own."""
    reach, bracket = _tap_span(backward)
    roots = []
    for layer in layers:
        if reach is not None and layer.depth <= reach:
            mine = [r for r in layer.rows if r.referee == "ours"]
            for row in layer.rows:
                row.status = Status.INHERITED
            if not mine:
                continue
            layer = Layer(layer.depth, layer.module, mine)
        elif tap_root is not None and (bracket is None or layer.depth <= bracket):
            for row in layer.rows:
                row.status = Status.ROOT_CAUSE
            tap_root.quantities += [quantity_entry(r) for r in layer.rows]
            continue
        roots.append(_layer_finding(layer))
    if roots and _is_deepest(roots[0], layers):
        _mark_deepest(roots[0])
    return roots


def _is_deepest(found: Finding, layers: list[Layer]) -> bool:
    """Whether ``found`` heads the deepest diverging layer (and the reference is not the one
    at fault there)."""
    first = layers[0].rows[0]
    same_place = (found.layer, found.quantity) == (first.layer, first.quantity)
    return same_place and first.referee != "ours"


def _tap_span(backward: list[Row]) -> tuple[int | None, int | None]:
    """(module position of the root-cause gradient tap, that of the last agreeing gradient
    tap before it); None where there is none."""
    bracket = None
    for row in backward:
        if row.status == Status.ROOT_CAUSE:
            return row.module_index, bracket
        if not row.diverged:
            bracket = row.module_index
    return None, None


def next_deeper(layer: Layer, all_rows: list[Row], depth: dict[str, int]) -> Layer | None:
    """The nearest layer deeper than ``layer`` that has parameters (its gradients agree, or it
    would be the deepest diverging one)."""
    deeper = [r for r in all_rows if depth[param_name(r)] > layer.depth]
    if not deeper:
        return None
    nearest = min(depth[param_name(r)] for r in deeper)
    return Layer(nearest, module_of(next(r for r in deeper if depth[param_name(r)] == nearest)), [])
