"""Ours' side of a tree: the layers inside containers, recorded while the chain runs.

A container calls its children itself, so the chain run cannot feed them; instead each child
of the working copy gets, for the run, instance attributes ``forward``/``backward`` that call
its own methods and record what passed: one record per call, in call order (a cell applied
over time steps has call 0, 1, ...). Backward calls are matched with forward calls last in,
first out, as backpropagation runs them. The attributes are removed after the run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from gradparity.core.records import USER_ERRORS, LayerRecord, real_array, snapshot
from gradparity.pairing.tree import children_of, descendants
from gradparity.sides.adapt import before_pass, grads_of
from gradparity.sides.fresh import working_copy
from gradparity.sides.running_stats import kept_running, ours_running

Path = tuple[str, ...]  # names from a top-level layer down to a child: ("block1", "fc1")


def resolve(layers: list[tuple[str, Any]], path: Path) -> Any:
    """The layer at ``path`` among ``layers`` (a top-level name, then child names)."""
    found = dict(layers)[path[0]]
    for name in path[1:]:
        found = dict(children_of(found))[name]
    return found


class _Recording:
    """The calls of one child: a record per forward, filled by the matching backward."""

    def __init__(self, layer: Any, path: Path, started: list[tuple[Path, int]]) -> None:
        self.layer, self.path, self.started = layer, path, started
        self.calls: list[LayerRecord] = []
        self._open: list[LayerRecord] = []  # forwards whose backward has not run yet

    def forward(self, x: np.ndarray, *rest: Any) -> Any:
        rec = LayerRecord(input=snapshot(x))
        self.started.append((self.path, len(self.calls)))
        self.calls.append(rec)
        out = type(self.layer).forward(self.layer, x, *rest)
        rec.output = snapshot(out)
        rec.buffers = ours_running(self.layer)
        self._open.append(rec)
        return out

    def backward(self, grad_out: np.ndarray, *rest: Any) -> Any:
        rec = self._open.pop() if self._open else LayerRecord()
        rec.grad_output = snapshot(grad_out)
        grad_in = type(self.layer).backward(self.layer, grad_out, *rest)
        rec.grad_input = snapshot(grad_in)
        with contextlib.suppress(*USER_ERRORS):  # unreadable gradients: the container's rows
            rec.grads = {k: snapshot(v) for k, v in grads_of(self.layer).items() if v is not None}
        return grad_in


@contextlib.contextmanager
def recording_children(
    layers: list[tuple[str, Any]], paths: list[Path], started: list[tuple[Path, int]] | None = None
) -> Iterator[dict[Path, list[LayerRecord]]]:
    """Record the calls of the children at ``paths`` inside ``layers`` (working copies) while
    the block runs; yields path -> records in call order, filled as the block runs.
    ``started``, when given, gets (path, k) of each call as it starts."""
    log = [] if started is None else started
    recordings = {
        path: _Recording(resolve(layers, path), path, log) for path in dict.fromkeys(paths)
    }
    calls = {path: r.calls for path, r in recordings.items()}
    patched: list[_Recording] = []
    try:
        for r in recordings.values():
            if id(r.layer) in {id(p.layer) for p in patched}:
                continue  # one object at two paths: recorded once, at the first
            try:
                r.layer.forward, r.layer.backward = r.forward, r.backward
            except (AttributeError, TypeError):  # __slots__: compared inside its container only
                continue
            patched.append(r)
        yield calls
    finally:
        for r in patched:
            del r.layer.forward, r.layer.backward


def ours_calls(layers: list[tuple[str, Any]], x: np.ndarray) -> list[tuple[str, int]]:
    """(dotted name, k) of every call ours' forward on x makes of a layer inside a container,
    in the order the calls start (``tree.reference_calls`` for ours' own tree: the autodiff
    reference's). Runs on copies; a forward that raises ends the list there (the chain run
    reports the error)."""
    started: list[tuple[Path, int]] = []
    with working_copy(layers) as own_layers:
        paths = [path for path, _ in descendants(own_layers)]
        with recording_children(own_layers, paths, started):
            h = x
            for _, layer in own_layers:
                before_pass(layer)
                try:
                    with kept_running(layer):
                        h = real_array(layer.forward(h.copy()), "forward's output", "output")
                except USER_ERRORS:
                    break
    return [(".".join(path), k) for path, k in started]
