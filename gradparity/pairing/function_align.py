"""Pairing a function's taps with a torch reference (its parameters pair in
``pairing.square.pair_function_params``), and where each parameter sits in the reference.
"""

from __future__ import annotations

from torch import nn

from gradparity.core.address import tap_target
from gradparity.core.errors import InputError
from gradparity.pairing.params import ParamPair, fmt_names
from gradparity.reference.layout import IDENTITY, TRANSPOSE, candidate_conversions


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
                f"its modules are {fmt_names(modules, 30)}"
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
