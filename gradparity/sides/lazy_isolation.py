"""Lazy isolation: only the layers whose chain values diverged are run alone.

Running every layer alone costs another forward and backward of both sides. A layer whose
output, gradients and running statistics all agree in the chain, and whose own record is clean
(no error, no mutated input, no aliased gradient, no update inside backward), needs no isolated
run to be judged correct: it was fed (to within tolerance) the reference's input and upstream
gradient and returned the reference's values. So the chain is compared first, and the isolate
run is given the layers that diverged, in the order the locate stage reads a chain (outputs in
forward order, then gradients in backward order). ``stop_at_first`` probes them one at a time
and stops at the first that diverges alone: its root cause.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gradparity.core.metrics import within_tolerance
from gradparity.core.plan import Entry, TensorPair
from gradparity.core.records import LayerRecord
from gradparity.core.tolerance import Tolerance
from gradparity.pairing.align import LayerPair
from gradparity.pairing.layer_entries import LayerRun, run_entries
from gradparity.sides.isolation import Probe

ISOLATE_CHOICES = ("lazy", "all")
# From this size on (ours' parameters plus the elements of every layer's input and output in
# the reference's chain) ``isolate=None`` is lazy. Below it every layer runs alone, as a
# check by hand would: there the isolated run costs little, and it also shows a difference
# the chain hides (a backward whose natural upstream gradient is zero, a tie a ReLU below
# blocks), which lazy isolation does not look for.
LAZY_ELEMENTS = 100_000


def run_size(parameters: int, ref_chain: dict[str, LayerRecord]) -> int:
    """``parameters`` plus the elements of each layer's input and output in ``ref_chain``."""
    arrays = [a for rec in ref_chain.values() for a in (rec.input, rec.output) if a is not None]
    return parameters + sum(int(np.size(a)) for a in arrays)


def isolation_of(isolate: str | None, dtype: str, size: int) -> str:
    """ "lazy" or "all": ``isolate`` where given; else "lazy" from ``LAZY_ELEMENTS`` on. float32
    always runs every layer alone: each isolated row's budget is measured by the twin."""
    if dtype == "float32":
        return "all"
    if isolate is not None:
        return isolate
    return "lazy" if size >= LAZY_ELEMENTS else "all"


def agrees(entry: Entry, tol: Tolerance) -> bool:
    """A tensor pair whose values match within ``tol`` (a row already judged never agrees:
    it is code that raised or a gradient never recorded)."""
    if not isinstance(entry, TensorPair) or entry.ours is None:
        return False
    ours, ref = np.asarray(entry.ours), entry.reference
    return ours.shape == ref.shape and within_tolerance(ours, ref, tol)


def _clean(rec: LayerRecord) -> bool:
    """A record with nothing for the lints: no error, mutation, alias or update in backward."""
    return not (rec.error or rec.mutated or rec.aliases or rec.backward_updates)


def diverging_layers(
    pairs: list[LayerPair],
    loss_pair: LayerPair,
    ours_chain: dict[str, LayerRecord],
    ref_chain: dict[str, LayerRecord],
    batch_size: int,
    tol: Tolerance,
) -> list[str]:
    """Names of the layers (and "loss") to run alone, in propagation order: those with a chain
    quantity out of ``tol``, a record that is not clean, or no chain record (the chain
    stopped before them)."""
    runs: list[LayerRun] = [
        (p, ours_chain[p.name], ref_chain[p.name])
        for p in [*pairs, loss_pair]
        if p.name in ours_chain
    ]
    found: list[str] = []
    for entry in run_entries("chain", runs, batch_size):
        if entry.layer not in found and not agrees(entry, tol):
            found.append(entry.layer)
    found += [p.name for p in pairs if p.name in ours_chain and not _clean(ours_chain[p.name])]
    found += [p.name for p in [*pairs, loss_pair] if p.name not in ours_chain]
    return list(dict.fromkeys(found))


def probe_until_root(
    names: list[str],
    probe: Callable[[str], tuple[LayerPair, LayerRecord, LayerRecord]],
    batch_size: int,
    tol: Tolerance,
) -> list[str]:
    """Probe ``names`` in order (``probe(name)`` runs one alone and returns its run) until one
    diverges alone; the names probed, the root cause last (all of them when none diverges)."""
    probed = []
    for name in names:
        probed.append(name)
        run = probe(name)
        if not _clean(run[1]) or not all(
            agrees(e, tol) for e in run_entries("isolate", [run], batch_size)
        ):
            break
    return probed


def isolate_lazily(
    pairs: list[LayerPair],
    loss_pair: LayerPair,
    chains: tuple[dict[str, LayerRecord], dict[str, LayerRecord]],
    probe: Callable[[str], Probe],
    batch_size: int,
    tol: Tolerance,
    stop_at_first: bool,
) -> tuple[dict[str, Probe], list[str]]:
    """(probes by name, notes): the isolate run of the layers whose chain diverged
    (``diverging_layers`` of the (ours, reference) ``chains``), all of them or, with
    ``stop_at_first``, up to the first wrong alone."""
    names = diverging_layers(pairs, loss_pair, *chains, batch_size, tol)
    probes: dict[str, Probe] = {}

    def run(name: str) -> tuple[LayerPair, LayerRecord, LayerRecord]:
        probes[name] = found = probe(name)
        return found.pair, found.ours, found.ref

    if stop_at_first:
        probed = probe_until_root(names, run, batch_size, tol)
    else:
        for name in names:
            run(name)
        probed = names
    # In forward order, the loss last, as a run of every layer gives them: the locate stage
    # reads isolated gradients in backward order from it.
    order = [*(p.name for p in pairs), "loss"]
    in_order = {name: probes[name] for name in order if name in probes}
    return in_order, _notes(len(pairs) + 1, names, probed, stop_at_first)


def _notes(count: int, names: list[str], probed: list[str], stop_at_first: bool) -> list[str]:
    if not names:
        return [
            "isolate: no layer was run alone, as every chain value agreed (lazy isolation; "
            'isolate="all" runs each layer alone)'
        ]
    notes = [
        f"isolate: {len(probed)} of {count} layers (the loss counted as one) were run alone, "
        'those whose chain values diverged (lazy isolation; isolate="all" runs each layer alone)'
    ]
    if stop_at_first and len(probed) < len(names):
        left = len(names) - len(probed)
        notes.append(
            f"stop_at_first: the isolate run stopped at {probed[-1]}, the first wrong alone; "
            f"{left} more diverging layer{'s' if left != 1 else ''} of the chain "
            f"{'were' if left != 1 else 'was'} not run alone"
        )
    return notes
