"""Streaming: how ``compare`` runs a model too large to hold several copies of.

A streaming run keeps what a run of both sides needs and little more: the reference's copy
takes its parameters from the reference's and ours' own memory instead of copies of them
(``setup.reference_copy``, ``params.sync_parameters``); ours' gradients are not copied out of
the run's own copy of each layer, whose parameters are checked once after the pass instead
of around each call (``run_numpy.run_chain``); tensors are compared block by block
(``metrics``), and only the values behind root causes outlive the comparison (as always).
With lazy isolation, a layer is run alone only where its chain diverged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradparity.core.validate import check_flag
from gradparity.sides.adapt import params_of

# Parameters (elements, over all of ours' layers) from which ``streaming=None`` streams:
# 4M float64 parameters are 32 MB a copy, where the copies start to weigh on the run.
STREAMING_PARAMETERS = 4_000_000


def parameter_count(layers: list[tuple[str, Any]]) -> int:
    """Elements in the parameters of ours' layers (a container's once)."""
    seen: set[int] = set()
    count = 0
    for name, layer in layers:
        for value in params_of(layer, name).values():
            if id(value) not in seen:
                seen.add(id(value))
                count += int(np.size(value))
    return count


def streams(streaming: Any, layers: list[tuple[str, Any]]) -> bool:
    """``streaming`` (True, False, or None: from ``STREAMING_PARAMETERS`` parameters on)."""
    if streaming is None:
        return parameter_count(layers) >= STREAMING_PARAMETERS
    return check_flag(streaming, "streaming")
