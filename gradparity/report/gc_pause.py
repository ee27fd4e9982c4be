"""The cyclic garbage collector paused while a report is drawn and written.

Writing a report allocates many objects (a dict per row, matplotlib's artists), and so sets off
collections; a full one walks every object of the process: the models, torch, the report's
rows (about 300 000 objects after a 1000-layer ``compare``). One took 0.45 s of a 2 s save.
Reference counting still frees all that is not in a cycle; what is (matplotlib's figures)
waits for the first collection after the save.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No automatic cyclic collection inside the block; afterwards the collector is as the
    caller left it (enabled or not), also when the block raises."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
