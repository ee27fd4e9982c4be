"""gradparity: find the layer where hand-written NumPy backprop parts from PyTorch, and why."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> defining module, imported on first use (PEP 562): every pytest run loads the
# plugin submodule, and it must not pay for importing torch.
_EXPORTS = {
    "Finding": "gradparity.core.finding",
    "InputError": "gradparity.core.errors",
    "Maps": "gradparity.core.options",
    "ParityError": "gradparity.testing.assertion",
    "ReferenceInputs": "gradparity.core.options",
    "Report": "gradparity.report.report",
    "Tolerance": "gradparity.core.tolerance",
    "Tolerances": "gradparity.core.options",
    "TrainingOptions": "gradparity.core.options",
    "Wrapped": "gradparity.sides.adapt",
    "assert_function_parity": "gradparity.testing.assertion",
    "assert_parity": "gradparity.testing.assertion",
    "check_layer": "gradparity.pipelines.layers_autodiff",
    "compare": "gradparity.pipelines.layers",
    "compare_function": "gradparity.pipelines.function",
    "compare_training": "gradparity.pipelines.training",
    "define_by_run": "gradparity.sides.define_by_run",
    "layer": "gradparity.sides.layer_functions",
    "lint": "gradparity.evidence.lints",
    "tap": "gradparity.sides.taps",
    "tolerance_for": "gradparity.core.tolerance",
    "wrap": "gradparity.sides.adapt",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gradparity' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
