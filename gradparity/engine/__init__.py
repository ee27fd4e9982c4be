"""The one engine behind ``compare``, ``compare_function`` and ``compare_training``: a front end
builds a ``Plan``, ``run`` takes it through run sides -> pair -> compare -> evidence -> locate
-> build report."""

from gradparity.core.plan import Context, Entry, Evidence, Locator, Plan, Side, TensorPair
from gradparity.engine.report import build_report, meta_block
from gradparity.engine.run import execute, numpy_side, run

__all__ = [
    "Context",
    "Entry",
    "Evidence",
    "Locator",
    "Plan",
    "Side",
    "TensorPair",
    "build_report",
    "execute",
    "meta_block",
    "numpy_side",
    "run",
]
