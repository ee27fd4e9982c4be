"""Evidence plug-in of ``compare``: an input gradient that multiplies by a square weight where
its transpose belongs (``W @ dZ`` for ``W.T @ dZ``), labelled ``transposed`` from the values
alone: ours equals the upstream gradient times W, the reference the upstream gradient times W.T
(or the reverse). The isolate probe knows both the upstream gradient it fed and the layer's
weight, so this needs no Jacobian (and works where the Jacobian probe is skipped)."""

from __future__ import annotations

import numpy as np

from gradparity.core.labels import TRANSPOSED, UNEXPLAINED
from gradparity.core.plan import Context
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.sides.adapt import params_of


def transposed_access(
    ours: np.ndarray, ref: np.ndarray, upstream: np.ndarray, weight: np.ndarray, tol: Tolerance
) -> bool | None:
    """True when ``ours`` matches upstream @ W and ``ref`` upstream @ W.T (ours uses W where
    W.T belongs), False for the reverse, None otherwise. upstream: (..., k); weight: (k, k);
    ours, ref: upstream's shape."""
    w = np.asarray(weight, dtype=np.float64)
    up = np.asarray(upstream, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or up.ndim < 2 or up.shape[-1] != w.shape[0]:
        return None
    if not (np.shape(ours) == np.shape(ref) == up.shape):
        return None
    plain, transposed = up @ w, up @ w.T
    if tol.matches(ours, plain) and tol.matches(ref, transposed):
        return True
    if tol.matches(ours, transposed) and tol.matches(ref, plain):
        return False
    return None


def _relabel(row: Row, key: str, ours_plain: bool) -> None:
    used, belongs = (key, f"{key}.T") if ours_plain else (f"{key}.T", key)
    row.diagnosis = TRANSPOSED
    row.detail["access"] = f"{used} for {belongs}"
    row.detail["weight"] = key
    row.message = (
        f"the input gradient is grad_out @ {used} where the reference's is grad_out @ "
        f"{belongs}: backward multiplies by {used} where {belongs} belongs (the weight is "
        "square, so the shapes agree)"
    )
    row.fix = (
        f"use grad_out @ {belongs}: for y = x @ {key} the input gradient is grad_out @ {key}.T"
        if ours_plain
        else f"use grad_out @ {belongs}: for y = x @ {key}.T the input gradient is grad_out @ {key}"
    )


def weight_access_probe(ctx: Context) -> None:
    """Each unexplained isolate ``grad_input`` row whose values are the upstream gradient
    times a square weight of the layer where the reference's are times its transpose is
    ``transposed`` (detail ``access``: "W for W.T")."""
    probes = ctx.captures["probes"]
    for row in ctx.rows_of("isolate"):
        if not row.diverged or row.quantity != "grad_input" or row.diagnosis != UNEXPLAINED:
            continue
        probe = probes[row.layer]
        values = ctx.arrays.get((row.layer, row.quantity), {})
        if probe.upstream is None or "ours" not in values:
            continue
        for key, weight in params_of(probe.pair.layer).items():
            found = transposed_access(
                values["ours"], values["reference"], probe.upstream, weight, ctx.tolerance
            )
            if found is not None:
                _relabel(row, key, found)
                break
