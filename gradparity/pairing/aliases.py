"""The names frameworks give the same parameter, in one table.

torch calls a batch norm's scale ``weight`` where a NumPy framework says ``gamma`` (books,
ML-From-Scratch), ``scale`` or ``scaler`` (numpy-ml); chainer calls a linear weight ``W`` and
an LSTM's input and recurrent weights ``upward`` and ``lateral``. Two names are aliases when
one group below holds both, compared case-insensitively on their last dotted part
("cell.Wxh" is "wxh") without torch's layer suffix ("weight_ih_l0" is "weight_ih"). A name
may sit in several groups ("weight" is a scale and a linear weight) without those groups
becoming aliases of each other: ``W`` never pairs with ``gamma`` by name.
"""

from __future__ import annotations

import re

ALIAS_GROUPS: tuple[frozenset[str], ...] = tuple(
    frozenset(group)
    for group in (
        {"gamma", "weight", "scale", "scaler"},  # a normalisation's scale
        {"beta", "bias", "shift", "intercept"},  # a normalisation's shift
        {"w", "weight", "kernel"},  # a linear or convolution weight
        {"b", "bias", "w0"},  # its bias (ML-From-Scratch calls it w0)
        {"weight_ih", "w_ih", "wx", "wxh", "upward"},  # recurrent: input to hidden
        {"weight_hh", "w_hh", "wh", "whh", "lateral"},  # recurrent: hidden to hidden
        {"bias_ih", "b_ih", "bx"},
        {"bias_hh", "b_hh", "bh"},
    )
)

_LAYER_SUFFIX = re.compile(r"_l\d+(_reverse)?$")  # torch's nn.RNN/LSTM/GRU: weight_ih_l0


def plain_name(name: str) -> str:
    """``name`` as aliases compare it: last dotted part, lower case, no ``_l<k>`` suffix."""
    return _LAYER_SUFFIX.sub("", name.rsplit(".", 1)[-1].lower())


def are_aliases(ours: str, reference: str) -> bool:
    """True when the two names mean the same parameter (equal plain names included)."""
    a, b = plain_name(ours), plain_name(reference)
    return a == b or any(a in group and b in group for group in ALIAS_GROUPS)
