"""Parameters given as a structure (dict, list, or nested lists such as ``(biases, weights)``)
and the gradients a user function returns in the same structure.

Names: a dict's keys (``"W1"``); a top-level list's positions ``p0, p1, ...``; nested lists
add ``[i]`` and nested dicts ``.key`` (``{"w": weights}`` gives ``w[0], w[1]``). Leaves are
NumPy arrays.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from gradparity.core.errors import InputError
from gradparity.core.validate import check_real_parameter, numpy_values
from gradparity.reference.layout import squeezed


def _child(name: str, key: Any, top_list: bool) -> str:
    if not name:
        return f"p{key}" if top_list else str(key)
    return f"{name}[{key}]" if isinstance(key, int) else f"{name}.{key}"


def _what(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {value.shape}"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _items(tree: dict | list | tuple) -> list[tuple[Any, Any]]:
    return list(tree.items()) if isinstance(tree, dict) else list(enumerate(tree))


def flatten(params: Any) -> dict[str, np.ndarray]:
    """name -> array, in structure order; one-line error for a leaf that is not an array."""
    if not isinstance(params, (dict, list, tuple)) or not params:
        raise InputError(
            f"params must be a non-empty dict or list of NumPy arrays, got {_what(params)}"
        )
    out: dict[str, np.ndarray] = {}

    def walk(node: Any, name: str) -> None:
        if isinstance(node, np.ndarray):
            check_real_parameter(f"parameter {name}", node)
            out[name] = node
        elif isinstance(node, (dict, list, tuple)) and node:
            for key, child in _items(node):
                walk(child, _child(name, key, isinstance(params, (list, tuple))))
        else:
            raise InputError(
                f"parameter {name or 'params'} is {_what(node)}; params must hold NumPy arrays "
                "(in dicts or lists)"
            )

    walk(params, "")
    return out


def match_grads(params: Any, grads: Any) -> dict[str, np.ndarray]:
    """The gradients ``grads`` holds for each parameter of ``params``, by parameter name.

    A dict of k entries may be answered by a tuple or list of k, in the dict's order (params
    ``{"b": biases, "w": weights}`` with grads ``(nabla_b, nabla_w)``). Shapes are not checked
    here. One-line errors name the parameter for a missing, extra or non-numeric entry.
    """
    out: dict[str, np.ndarray] = {}
    top_list = isinstance(params, (list, tuple))

    def walk(p: Any, g: Any, name: str) -> None:
        where = name or "the top level"
        if isinstance(p, np.ndarray):
            if g is None:
                raise InputError(f"grads returned None for {name} (parameter shape {p.shape})")
            arr = numpy_values(f"the gradient of {name}", g)  # a tensor, ragged lists, ...
            if arr.dtype.kind not in "fciub":
                raise InputError(
                    f"the gradient of {name} is not numeric ({_what(g)}, dtype {arr.dtype}); "
                    f"return an array shaped like the parameter {p.shape}"
                )
            out[name] = arr if arr.dtype.kind in "fc" else arr.astype(np.float64)
            return
        if isinstance(p, dict) and isinstance(g, dict):
            keys = _grad_keys(p, g, name, top_list)
            for key, child in p.items():
                walk(child, g[keys[key]], _child(name, key, top_list))
            return
        if isinstance(g, np.ndarray) and g.ndim > 0 and len(g) == len(p):
            g = list(g)  # np.array(list of gradients): one entry per parameter
        if not isinstance(g, (list, tuple)) or (isinstance(p, dict) and len(g) != len(p)):
            hint = ""
            if not name and isinstance(g, tuple) and len(g) == 2 and np.ndim(g[0]) == 0:
                hint = " (it looks like (loss, grads): pass grads=lambda x, y: f(x, y)[1])"
            raise InputError(
                f"grads returned {_what(g)} at {where} where params has {_what(p)}; return "
                f"gradients in the structure of params{hint}"
            )
        children = _items(p)
        if len(g) < len(children):
            key, child = children[len(g)]
            raise InputError(
                f"grads returned {len(g)} entries at {where} where params has {len(children)}: "
                f"no gradient for {_child(name, key, top_list)} (parameter {_what(child)})"
            )
        if len(g) > len(children):
            raise InputError(
                f"grads returned {len(g)} entries at {where} where params has {len(children)}: "
                f"an extra entry at position {len(children)} ({_what(g[len(children)])})"
            )
        for (key, child), value in zip(children, g):
            walk(child, value, _child(name, key, top_list))

    walk(params, grads, "")
    return out


def restore(params: Any, originals: dict[str, np.ndarray]) -> list[str]:
    """Put back every leaf of ``params`` that is no longer the original array (a rebinding
    such as ``params["W"] = W - lr * g``); the names put back."""
    top_list = isinstance(params, (list, tuple))
    rebound: list[str] = []

    def walk(node: Any, name: str) -> None:
        for key, child in _items(node):
            child_name = _child(name, key, top_list)
            if child_name in originals:
                if child is not originals[child_name] and not isinstance(node, tuple):
                    node[key] = originals[child_name]
                    rebound.append(child_name)
            elif isinstance(child, (dict, list, tuple)):
                walk(child, child_name)

    walk(params, "")
    return rebound


def _grad_keys(p: dict, g: dict, name: str, top_list: bool) -> dict:
    """params key -> grads key: the same key, or "d" + key (grads {"dW1": ..., "db1": ...},
    whose other entries, such as "dA0", are then left alone)."""
    for key, child in p.items():
        if key not in g and f"d{key}" not in g:
            raise InputError(
                f"grads has no entry {key!r} (nor 'd{key}') for {_child(name, key, top_list)} "
                f"(parameter {_what(child)}); it has {sorted(map(str, g))}"
            )
    prefixed = all(k not in g for k in p)
    keys = {k: f"d{k}" if prefixed else k for k in p}
    for key in p:
        if keys[key] not in g:
            raise InputError(
                f"grads has 'd{key}' for {key!r} but other entries without the 'd': use one style"
            )
    extra = [k for k in g if k not in keys.values()]
    if extra and not prefixed:
        raise InputError(
            f"grads has an entry {extra[0]!r} ({_what(g[extra[0]])}) that params lacks; params "
            f"has {list(map(str, p))}"
        )
    return keys


def rebuild(params: Any, values: dict[str, np.ndarray]) -> Any:
    """``params`` with each leaf replaced by ``values[name]`` (dicts, lists and tuples kept)."""
    top_list = isinstance(params, (list, tuple))

    def walk(node: Any, name: str) -> Any:
        if isinstance(node, np.ndarray):
            return values[name]
        if isinstance(node, dict):
            return {k: walk(v, _child(name, k, top_list)) for k, v in node.items()}
        items = [walk(v, _child(name, i, top_list)) for i, v in enumerate(node)]
        return type(node)(*items) if hasattr(node, "_fields") else type(node)(items)

    return walk(params, "")


def is_vector(shape: tuple[int, ...]) -> bool:
    """At most one axis longer than 1: a bias, whether stored (n,), (n, 1) or (1, n)."""
    return len(squeezed(shape)) <= 1


def layer_index(names: list[str], shapes: list[tuple[int, ...]] | None = None) -> dict[str, int]:
    """Each parameter's layer, larger closer to the output: the number in its name (w[2], W2,
    layers.2.weight), else its position in params.

    With two numbers (nested lists) the layer is the inner one when there is one outer group
    or each holds one kind of parameter (``(biases, weights)``: p1[2] is layer 2), else the
    outer one (``[[W1, b1], [W2, b2]]``: p1[0] is layer 1); ``shapes`` tell biases from
    weights.
    """
    numbers = {n: [int(d) for d in re.findall(r"\d+", n)] for n in names}
    if not all(numbers.values()):
        return {n: i for i, n in enumerate(names)}
    pick = -1
    if shapes is not None and all(len(v) >= 2 for v in numbers.values()):
        kinds: dict[int, set[bool]] = {}
        for name, shape in zip(names, shapes):
            kinds.setdefault(numbers[name][0], set()).add(is_vector(shape))
        single = all(len(k) == 1 for k in kinds.values())
        distinct = {next(iter(k)) for k in kinds.values()} if single else set()
        pick = -1 if len(kinds) == 1 or len(distinct) > 1 else 0
    return {n: v[pick] for n, v in numbers.items()}
