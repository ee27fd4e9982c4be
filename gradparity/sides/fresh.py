"""Fresh copies of a layer for probes, and what to do when a deep copy is not a real copy.

Probes run a layer many times and must leave the user's object as it was, so they work on deep
copies. A define-by-run framework (chainer, dezero) breaks that: its graph links nodes by weak
reference, and ``copy.deepcopy`` keeps weak references as they are, so a copy's backward reads
(or writes) the original's nodes, e.g. the original output's gradient, which is not set. Such a
copy is detected by its weak references that point out of it; the probe then runs on the
original object itself, whose state (attributes, containers, array contents) is snapshotted
first and restored after.
"""

from __future__ import annotations

import copy
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

MAX_OBJECTS = 100_000  # a bound on the object graph walked (a layer holds far fewer)

# Objects shared, not copied, by deepcopy and never part of a layer's own state.
_SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
           types.MethodType, str, bytes, int, float, complex, bool, type(None))  # fmt: skip


def _children(obj: Any) -> list[Any]:
    """What ``obj`` holds directly: container items, instance attributes and slots."""
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    held = list(getattr(obj, "__dict__", {}).values())
    for slot in getattr(type(obj), "__slots__", ()):
        if isinstance(slot, str) and slot not in ("__dict__", "__weakref__"):
            held += [getattr(obj, slot)] if hasattr(obj, slot) else []
    return held


def reachable(root: Any) -> list[Any]:
    """Every object reachable from ``root`` through attributes and containers (weak references
    are listed but not followed; arrays, classes, functions and plain values are leaves)."""
    seen: dict[int, Any] = {}
    stack = [root]
    while stack and len(seen) < MAX_OBJECTS:
        obj = stack.pop()
        if isinstance(obj, _SHARED) or id(obj) in seen:
            continue
        seen[id(obj)] = obj
        if not isinstance(obj, (np.ndarray, weakref.ref)):
            stack += _children(obj)
    return list(seen.values())


def reaches_back(duplicate: Any) -> bool:
    """True when ``duplicate`` (a deep copy) holds a live weak reference to an object outside
    itself: it is then wired to the original's objects, not independent of them."""
    objects = reachable(duplicate)
    inside = {id(o) for o in objects}
    for ref in objects:
        if isinstance(ref, weakref.ref):
            target = ref()
            if target is not None and not isinstance(target, _SHARED) and id(target) not in inside:
                return True
    return False


class StateSnapshot:
    """The state of an object graph: each object's attributes, each container's items and each
    writable array's contents, put back by ``restore`` (objects made since are dropped with the
    references to them)."""

    def __init__(self, root: Any) -> None:
        self._saved: list[tuple[Any, Any]] = []
        for obj in reachable(root):
            if isinstance(obj, np.ndarray):
                if obj.flags.writeable:
                    self._saved.append((obj, obj.copy()))
            elif isinstance(obj, (dict, list, set)):
                self._saved.append((obj, obj.copy()))
            elif isinstance(getattr(obj, "__dict__", None), dict):
                self._saved.append((obj, dict(obj.__dict__)))

    def restore(self) -> None:
        """Put every attribute, container item and array value back as it was."""
        for obj, saved in self._saved:
            if isinstance(obj, np.ndarray):
                if obj.shape == saved.shape:
                    np.copyto(obj, saved)
            elif isinstance(obj, list):
                obj[:] = saved
            elif isinstance(obj, (dict, set)):
                obj.clear()
                obj.update(saved)
            else:
                obj.__dict__.clear()
                obj.__dict__.update(saved)


def independent_copy(obj: Any) -> Any | None:
    """A deep copy of ``obj`` that shares nothing with it, or None when deep copying fails or
    gives a copy wired to the original (a define-by-run graph)."""
    try:
        duplicate = copy.deepcopy(obj)
    except Exception:  # deepcopy signals "not copyable" with many types (TypeError, copy.Error)
        return None
    return None if reaches_back(duplicate) else duplicate


@contextmanager
def working_copy(obj: Any) -> Iterator[Any]:
    """An object a probe may run freely: an independent deep copy of ``obj``, else ``obj``
    itself, restored to its present state when the block ends (also after an error)."""
    duplicate = independent_copy(obj)
    if duplicate is not None:
        yield duplicate
        return
    state = StateSnapshot(obj)
    try:
        yield obj
    finally:
        state.restore()
