"""The process's objects set aside from garbage collection while a report is drawn.

Drawing allocates many objects (a dict per row, matplotlib's artists), which sets off
collections; now and then a full one, which walks every object of the process: the models,
torch, the rows (about 300 000 objects after a 1000-layer ``compare``; 0.4 s of a 2 s save).
Frozen (``gc.freeze``), the objects that existed before the save are skipped by those
collections, while the save's own garbage (matplotlib's figures hold cycles) is still
collected as usual. Pausing the collector instead costs more: the save's garbage, all
collected at once at the end, took longer than the small collections along the way.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def frozen() -> Iterator[None]:
    """Objects that exist on entry are left out of collections inside the block and given
    back afterwards (also when the block raises). A caller that froze objects itself keeps
    them frozen: nothing is done then."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
