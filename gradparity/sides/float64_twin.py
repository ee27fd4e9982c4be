"""The user's own code run once more in float64, so that what it gives against the float32 run
is the user's own float32 rounding, measured.

``float64_run``: ``grads(x, target)`` with float64 copies standing in for the float32
parameters wherever the code reaches them (by identity, as the autodiff run finds them:
closures, bound instances, containers, module globals), on float64 copies of x and target; the
live arrays are put back afterwards (identity and values), also after an error.
``float64_probes``: each isolated layer probe of layered code again, on a copy of the layer
holding float64 parameters, fed float64 copies of what the float32 probe was fed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from gradparity.core.errors import InputError
from gradparity.core.records import LayerRecord
from gradparity.sides.adapt import grads_of, params_of
from gradparity.sides.function_run import UserRun, run_user
from gradparity.sides.isolation import Probe
from gradparity.sides.rebinding import Rebinding, user_modules
from gradparity.sides.run_numpy import probe_layer, probe_loss


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


def float64_probes(probes: dict[str, Probe], target: np.ndarray | None) -> dict[str, LayerRecord]:
    """Each probe of ``probes`` (layer name, or "loss", -> its float32 probe) run again on a
    float64 copy of its layer (``float64_copy``), fed float64 copies of the same warm-up input,
    input and upstream gradient (the loss: logits and ``target``); the records by name. A
    probe whose float32 run never reached backward is left out."""
    twins = {}
    for name, probe in probes.items():
        fed = probe.ours.input
        if fed is None or probe.ours.grad_input is None:
            continue
        twin, warm = float64_copy(probe.pair.layer, name), as_float64(probe.warm)
        if probe.upstream is None:
            assert target is not None  # a loss probe exists only with a target
            twins[name] = probe_loss(twin, as_float64(fed), as_float64(target), warm)
        else:
            twins[name] = probe_layer(twin, as_float64(fed), as_float64(probe.upstream), warm)
    return twins


def float64_copy(layer: Any, name: str) -> Any:
    """A deep copy of ``layer`` whose float parameter and gradient arrays are float64 copies,
    put wherever the copy holds them (attributes, dicts, lists, closures it owns)."""
    twin = copy.deepcopy(layer)
    held = [*_float_arrays(params_of, twin, name), *_float_arrays(grads_of, twin, name)]
    Rebinding({id(a): as_float64(a) for a in held}, held).replace_in([twin])
    return twin


def _float_arrays(read: Callable[..., dict], layer: Any, name: str) -> list[np.ndarray]:
    """The float arrays of ``read(layer)`` (its params or grads; none when it has no such
    dict or reading it raises: the float64 run then shows what goes wrong)."""
    try:
        values = read(layer, name).values()
    except InputError:  # the user's accessor raised: the probe reports its errors
        return []
    return [v for v in values if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
