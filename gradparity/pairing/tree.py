"""Trees, not only chains: ours' containers compared at every module boundary.

A layer of ours that holds layers (an ours ``Sequential`` or ``Residual``, or any object with
``named_layers()`` or a ``layers`` list) and faces a torch module whose submodules carry its
children's names is expanded: each child becomes a pair of its own under a dotted name
(``block1.fc1`` facing ``block1.fc1``), recursively, listed after its container in forward
order. The container keeps its ``output`` and ``grad_input`` rows; its children own their
parameters' rows. A child the reference's forward runs T > 1 times (one cell applied over
time steps) gets one pair per call, ``rnn.cell@0`` ... ``rnn.cell@<T-1>`` (calls named as
``compare_function``'s taps name them), each compared with that call; their shared
parameters stay with the container, whose gradient is the sum of the calls'.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from gradparity.core.records import USER_ERRORS
from gradparity.pairing.align import LayerPair
from gradparity.sides.running_stats import kept_buffers
from gradparity.sides.torch_recorder import TorchRecorder, no_call


def children_of(layer: Any) -> list[tuple[str, Any]]:
    """``[(name, layer), ...]`` a container holds, in forward order; [] for a leaf layer.

    ``named_layers()`` first, else a ``layers`` list of ``(name, layer)`` pairs or of layers
    (named "0", "1", ... as torch's ``nn.Sequential``)."""
    if callable(getattr(layer, "named_layers", None)):
        try:
            return [(str(n), child) for n, child in layer.named_layers()]
        except USER_ERRORS:  # not a container after all: compared whole, as a leaf
            return []
    held = getattr(layer, "layers", None)
    if not isinstance(held, (list, tuple)):
        return []
    return [
        item if isinstance(item, tuple) and len(item) == 2 else (str(i), item)
        for i, item in enumerate(held)
    ]


def _expandable(pair: LayerPair, modules: Mapping[str, nn.Module]) -> list[tuple[str, Any]]:
    """The children to compare inside ``pair``: all of them, when the module it faces has a
    submodule of each child's name; else none (the container is compared whole)."""
    if pair.module is None or pair.call > 0:  # a container run several times stays whole
        return []
    children = children_of(pair.layer)
    if children and all(f"{pair.module_name}.{n}".lstrip(".") in modules for n, _ in children):
        return children
    return []


def reference_calls(model: nn.Module, x: np.ndarray, dtype: torch.dtype) -> list[tuple[str, int]]:
    """(module name, k) of every module call the reference's forward on x makes, in the order
    the calls start (no values kept, no gradients, running statistics put back); [] when that
    forward raises (the checks that follow say why in one line)."""
    from gradparity.sides.run_torch import as_tensor  # run_torch imports this package

    modules = {n: m for n, m in model.named_modules() if n}
    with TorchRecorder(modules, inputs=False, keep=no_call) as recorder, kept_buffers(model):
        try:
            with torch.no_grad():
                model(as_tensor(x, dtype))
        except USER_ERRORS:
            return []
    return [(call.module, call.index) for call in recorder.calls]


def descendants(
    layers: list[tuple[str, Any]], above: tuple[int, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
    """``(path, layer)`` of every layer inside the containers among ``layers``, pre-order:
    the names from a top-level layer down to it (``("block1", "fc1")``, dotted
    ``block1.fc1``). ``above``: ids of the containers already entered, so one that holds
    itself, directly or further down, is not entered again."""
    found: list[tuple[tuple[str, ...], Any]] = []
    for name, layer in layers:
        entered = (*above, id(layer))
        for child_name, child in children_of(layer):
            found.append(((name, child_name), child))
            if id(child) not in entered:
                found += [
                    ((name, *path), inner)
                    for path, inner in descendants([(child_name, child)], entered)
                ]
    return found


def expand_containers(
    pairs: list[LayerPair], torch_model: nn.Module, calls: Callable[[], list[tuple[str, int]]]
) -> list[LayerPair]:
    """``pairs`` with every expandable container followed by its children's pairs (pre-order:
    a container, then its subtree, the children in the order the reference calls them).
    ``calls()`` (``reference_calls``) is asked for only when a container is expanded."""
    return expand_tree(pairs, {n: m for n, m in torch_model.named_modules() if n}, calls)


def expand_tree(
    pairs: list[LayerPair],
    modules: Mapping[str, nn.Module],
    calls: Callable[[], list[tuple[str, int]]],
) -> list[LayerPair]:
    """``expand_containers`` against ``modules`` {dotted module name: the module a layer of
    that name faces}: a reference model's named modules, or a module per layer of ours' own
    tree (the autodiff reference, where each layer is its own reference)."""
    known: list[tuple[str, int]] | None = None
    expanded: list[LayerPair] = []
    stack = list(reversed(pairs))
    while stack:
        pair = stack.pop()
        expanded.append(pair)
        children = _expandable(pair, modules)
        if not children:
            continue
        known = calls() if known is None else known
        counts = Counter(module for module, _ in known)
        pair.container = True
        inner: list[LayerPair] = []
        for child_name, child in children:
            module_name = f"{pair.module_name}.{child_name}".lstrip(".")
            called = counts.get(module_name, 1)
            dotted = f"{pair.name}.{child_name}"
            inner += [
                LayerPair(
                    dotted if called == 1 else f"{dotted}@{k}",
                    child,
                    module_name,
                    modules[module_name],
                    call=k,
                    path=(*(pair.path or (pair.name,)), child_name),
                )
                for k in range(max(called, 1))
            ]
        order = {call: i for i, call in enumerate(known)}
        inner.sort(key=lambda p: order.get((p.module_name, p.call), len(order)))
        stack += reversed(inner)
    return expanded


def repeated(pair: LayerPair, pairs: list[LayerPair]) -> bool:
    """Whether ``pair`` is one of several calls of one child (``rnn.cell@k``)."""
    return bool(pair.path) and sum(p.path == pair.path for p in pairs) > 1


def hand_parameters_to_children(pairs: list[LayerPair]) -> None:
    """After parameter pairing: a container drops the rows of parameters a child compares
    (a child called once), and a child called several times compares none (its per-call share
    is not what ours keeps: the container's row compares the summed gradient)."""
    for pair in pairs:
        if repeated(pair, pairs):
            pair.params = []
    # A parameter is known by the reference's dotted name ("block1.fc1.weight") or by ours'
    # ("block1.fc1.W": a container keys its children's parameters "fc1.W"); the autodiff
    # reference has only ours' names (a module's parameter name holds no dot).
    children = [p for p in pairs if not p.container]
    owned = {f"{p.module_name}.{pp.torch_name}" for p in children for pp in p.params}
    owned |= {f"{p.name}.{pp.key}" for p in children for pp in p.params}
    for pair in pairs:
        if pair.container:
            pair.params = [
                pp
                for pp in pair.params
                if f"{pair.module_name}.{pp.torch_name}" not in owned
                and f"{pair.name}.{pp.key}" not in owned
            ]


def forward_order(names: list[str]) -> list[int]:
    """Positions of ``names`` (pairs in pre-order) in the order their outputs are computed: a
    container's output after its children's (post-order). The reverse of the pre-order is
    the order the gradients are computed in: a container's dL/dx after its children's."""
    order: list[int] = []
    open_containers: list[int] = []
    for i, name in enumerate(names):
        while open_containers and not _inside(name, names[open_containers[-1]]):
            order.append(open_containers.pop())
        open_containers.append(i)
    order += reversed(open_containers)
    return order


def _inside(name: str, container: str) -> bool:
    return name.startswith(f"{container}.")


def inner_root(layer: str, blamed_layers: set[str]) -> bool:
    """Whether a layer inside ``layer`` (a container) is itself blamed: the innermost module
    wrong in isolation is the root cause, the container only inherits."""
    return any(_inside(other, layer) for other in blamed_layers)
