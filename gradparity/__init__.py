"""gradparity: find the layer where hand-written NumPy backprop parts from PyTorch, and why."""

__version__ = "0.1.0"

from gradparity.adapt import Wrapped, wrap
from gradparity.api import compare
from gradparity.errors import InputError
from gradparity.lints import lint
from gradparity.locate import Finding
from gradparity.report import Report
from gradparity.tolerance import Tolerance, tolerance_for

__all__ = [
    "Finding",
    "InputError",
    "Report",
    "Tolerance",
    "Wrapped",
    "__version__",
    "compare",
    "lint",
    "tolerance_for",
    "wrap",
]
