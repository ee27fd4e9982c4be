"""The address of a compared tensor: where it lives (a layer, a function or a tap), what kind of
value it is, which parameter or state entry, and which call of a module run several times.

Reports name a quantity by a short string, and report.json keeps those strings: ``output``,
``grad_input``, ``loss``, ``grad:W`` (dL/dW), ``param:W`` (W after an optimiser step),
``state:W.exp_avg`` (optimiser state of W), ``buffer:running_mean`` (a running statistic after
the forward). ``Address.parse`` reads them and
``Address.quantity`` writes them back, so the pipeline reasons on fields, never on slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    """What a compared tensor is; the value is the word report.json uses."""

    OUTPUT = "output"  # a layer's forward output (for the loss: the loss value)
    GRAD_INPUT = "grad_input"  # dL/d(input), what backward returns
    GRAD_OUTPUT = "grad_output"  # dL/d(output): a gradient tap's reference value
    GRAD = "grad"  # dL/d(parameter), named
    LOSS = "loss"  # the loss of a training step
    PARAM = "param"  # a parameter after an optimiser step, named
    STATE = "state"  # an optimiser state entry, named "<param>.<entry>"
    BUFFER = "buffer"  # a running statistic after the forward, named by ours' attribute
    CALL = "call"  # a whole function call (it raised or changed its inputs)
    GRADS = "grads"  # a function's returned gradients as a whole (aliasing)

    def __str__(self) -> str:
        return self.value


# Kinds whose quantity string carries a name after a colon: "grad:W".
NAMED_KINDS = frozenset({Kind.GRAD, Kind.PARAM, Kind.STATE, Kind.BUFFER})
# Kinds that travel backwards through the network.
GRADIENT_KINDS = frozenset({Kind.GRAD_INPUT, Kind.GRAD_OUTPUT, Kind.GRAD})
# A tap_map target that starts with this names a module's dL/d(output), not its output.
TAP_GRADIENT_PREFIX = "grad:"


@dataclass(frozen=True)
class Address:
    """One compared tensor.

    place: the layer, function or tap name ("" when only the quantity matters); kind: see
    ``Kind``; name: the parameter ("W") or state entry ("W.exp_avg") for the named kinds, else
    None; call: which call of a module that runs several times (from 0), None when it runs
    once or the call does not matter.
    """

    place: str
    kind: Kind
    name: str | None = None
    call: int | None = None

    def __post_init__(self) -> None:
        named = self.kind in NAMED_KINDS
        if named != (self.name is not None):
            need = "needs a name" if named else "takes no name"
            raise ValueError(f"quantity kind {self.kind.value!r} {need}, got {self.name!r}")

    @classmethod
    def parse(cls, quantity: str, place: str = "", call: int | None = None) -> Address:
        """The address a quantity string names ("grad:W", "output", ...); ValueError for a
        string that is not one."""
        head, colon, name = quantity.partition(":")
        try:
            kind = Kind(head)
        except ValueError:
            raise ValueError(f"not a quantity: {quantity!r}") from None
        return cls(place, kind, name if colon else None, call)

    @property
    def quantity(self) -> str:
        """The quantity string report.json uses: "grad:W", "state:W.exp_avg", "output"."""
        return f"{self.kind.value}:{self.name}" if self.name is not None else self.kind.value

    @property
    def is_gradient(self) -> bool:
        """A gradient (dL/dx, dL/d(output) or dL/d(parameter)), compared in backward order."""
        return self.kind in GRADIENT_KINDS

    def spoken(self) -> str:
        """How a person names it: "fc2.b" for grad:b, "fc2.b update" for param:b,
        "fc2.W exp_avg" for state:W.exp_avg, "fc2 output" otherwise."""
        if self.kind is Kind.GRAD:
            return f"{self.place}.{self.name}"
        if self.kind is Kind.PARAM:
            return f"{self.place}.{self.name} update"
        if self.kind is Kind.STATE:
            return f"{self.place}.{str(self.name).replace('.', ' ', 1)}"
        return f"{self.place} {self.quantity}"


def place(layer: str, quantity: str) -> str:
    """``Address.spoken`` of ``quantity`` at ``layer``; a quantity that is not an address (a
    report.json written by another version or by hand) is named as "layer quantity"."""
    try:
        return Address.parse(quantity, layer).spoken()
    except ValueError:
        return f"{layer} {quantity}"


def kind_of(quantity: str) -> Kind | None:
    """The kind ``quantity`` names (``Kind.GRAD`` for "grad:W"); None for a string that is no
    quantity (a tap's name)."""
    try:
        return Address.parse(quantity).kind
    except ValueError:
        return None


def tap_target(target: str) -> tuple[str, str]:
    """(quantity, "MODULE" or "MODULE@k") of a tap_map target: "grad:MODULE" names the
    module's dL/d(output) ("grad_output"), a plain "MODULE" its output ("output")."""
    if target.startswith(TAP_GRADIENT_PREFIX):
        return Kind.GRAD_OUTPUT.value, target.removeprefix(TAP_GRADIENT_PREFIX)
    return Kind.OUTPUT.value, target
