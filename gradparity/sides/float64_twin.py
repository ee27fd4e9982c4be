"""The user's own ``grads(x, target)`` run once more in float64: float64 copies stand in for
the float32 parameters wherever the code reaches them (by identity, as the autodiff run
finds them: closures, bound instances, containers, module globals), and x and target are
float64 copies. What it gives against the float32 run is the user's own float32 rounding,
measured. The live arrays are put back afterwards (identity and values), also after an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradparity.sides.function_run import UserRun, run_user
from gradparity.sides.rebinding import Rebinding, user_modules


def as_float64(array: np.ndarray) -> np.ndarray:
    """A float64 copy of a floating-point ``array`` (any shape); other arrays (labels, indices)
    as they are."""
    return array.astype(np.float64) if array.dtype.kind == "f" else array


def float64_run(
    grads: Callable, params: Any, flat: dict[str, np.ndarray], x: np.ndarray, target: np.ndarray
) -> UserRun:
    """One call of ``grads(x, target)`` with every parameter of ``flat`` (name -> live array)
    replaced by a float64 copy wherever ``grads`` and ``params`` reach it, on float64 copies of
    x and target; the record of that call, its gradients by ``flat``'s names."""
    copies = {id(a): as_float64(a) for a in flat.values()}
    flat64 = {name: copies[id(a)] for name, a in flat.items()}
    roots = [grads, params]
    rebinding = Rebinding(copies, list(flat.values()))
    try:
        for module in user_modules([grads]):
            rebinding.replace_globals(module, {})
        rebinding.replace_in(roots)
        return run_user(grads, _stand_in(params, copies), flat64, as_float64(x), as_float64(target))
    finally:
        rebinding.restore()


def _stand_in(params: Any, copies: dict[int, np.ndarray]) -> Any:
    """``params`` as the float64 run sees it: a dict or list the rebinding already changed in
    place is itself; a tuple (never changed in place) is rebuilt holding the copies."""
    if isinstance(params, tuple):
        return tuple(_stand_in(p, copies) for p in params)
    return copies.get(id(params), params)
