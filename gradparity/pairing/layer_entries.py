"""The pairing step of ``compare``: each layer's records on both sides become tensor pairs
(output, dL/dx, dL/dparam), the reference's values converted into ours' layout first, so every
shape and index in a row is the one the user sees in their own code."""

from __future__ import annotations

from gradparity.comparison.diff import failed_row, reference_grad
from gradparity.core.address import Address, Kind
from gradparity.core.labels import MUTATES_INPUT, UNEXPLAINED
from gradparity.core.plan import Entry, TensorPair
from gradparity.core.records import LayerRecord
from gradparity.core.row import Row
from gradparity.core.status import Status
from gradparity.evidence.update_findings import unreadable_words
from gradparity.pairing.align import LayerPair
from gradparity.pairing.tree import forward_order
from gradparity.sides.running_stats import running_pairs

# One layer run on both sides: the pair, ours' record, the reference's record.
LayerRun = tuple[LayerPair, LayerRecord, LayerRecord]


def layer_entries(
    mode: str, pair: LayerPair, ours: LayerRecord, ref: LayerRecord, batch_size: int
) -> tuple[list[Entry], list[Entry]]:
    """(forward entries, backward entries) for one layer or the loss (the pair named "loss",
    whose output is the loss value). A layer that raised yields one ``raised`` row for the
    failing phase; quantities it never reached are left out."""
    if _failed(ours, "forward"):
        return [_raised(mode, pair, ours)], []
    assert ref.output is not None  # the reference ran its forward
    fwd: list[Entry] = [
        TensorPair(
            mode, pair.name, pair.type_name, "output", ours.output, ref.output,
            batch_size=batch_size,
        )
    ]  # fmt: skip
    fwd += _buffer_entries(mode, pair, ours, ref)
    if _failed(ours, "backward"):
        return fwd, [_raised(mode, pair, ours)]
    if ours.grad_input is None:  # the chain stopped at a later layer before backward
        return fwd, []
    weights = [p.conversion for p in pair.params if len(p.ours_shape) == 2]
    bwd: list[Entry] = []
    # None where the reference's input carries no gradient (an embedding's integer indices):
    # there is nothing to compare ours' grad_input with.
    if ref.grad_input is not None:
        bwd.append(
            TensorPair(
                mode, pair.name, pair.type_name, "grad_input", ours.grad_input, ref.grad_input,
                batch_size=batch_size, upstream=ours.grad_output,
                conversion=weights[0] if weights else "",
            )
        )  # fmt: skip
    for p in pair.params:
        if p.key not in ours.grads:
            update = ours.backward_updates.get(p.key)  # stepped by backward, gradient unknown
            bwd.append(_missing_grad(mode, pair, p.key, sorted(ours.grads), update))
            continue
        quantity = Address(pair.name, Kind.GRAD, p.key).quantity
        bwd.append(
            TensorPair(
                mode, pair.name, pair.type_name, quantity, ours.grads[p.key],
                reference_grad(pair, ref, quantity), batch_size=batch_size,
                upstream=ours.grad_output, param_shape=p.ours_shape, conversion=p.conversion,
            )
        )  # fmt: skip
    return fwd, bwd


def run_entries(mode: str, runs: list[LayerRun], batch_size: int) -> list[Entry]:
    """Entries of one mode in propagation order: outputs in forward order, then gradients in
    backward order (the loss first), the order the locate stage reads a chain in. ``runs`` in
    forward order, a container before the layers inside it (``pairing.tree``)."""
    made = [layer_entries(mode, pair, ours, ref, batch_size) for pair, ours, ref in runs]
    # Inside a container the children run first both ways (``pairing.tree.forward_order``).
    fwd = [e for i in forward_order([pair.name for pair, _, _ in runs]) for e in made[i][0]]
    bwd = [e for _, b in reversed(made) for e in b]
    return fwd + bwd


def _buffer_entries(mode: str, pair: LayerPair, ours: LayerRecord, ref: LayerRecord) -> list[Entry]:
    """A ``buffer:<name>`` pair for each running statistic the reference updated in this
    forward (a training-mode norm) and ours holds under a paired name, in ours' shape."""
    entries: list[Entry] = []
    for name, torch_name in running_pairs(pair.layer, pair.module):
        mine, theirs = ours.buffers.get(name), ref.buffers.get(torch_name)
        if theirs is None:
            continue
        quantity = Address(pair.name, Kind.BUFFER, name).quantity
        if mine is None:
            entries.append(_missing_buffer(mode, pair, quantity))
            continue
        entries.append(
            TensorPair(
                mode, pair.name, pair.type_name, quantity, mine, theirs.reshape(mine.shape),
                reference_parameter=torch_name,
            )
        )  # fmt: skip
    return entries


def _missing_buffer(mode: str, pair: LayerPair, quantity: str) -> Row:
    name = Address.parse(quantity).name
    return Row(
        mode,
        pair.name,
        pair.type_name,
        quantity,
        None,
        None,
        status=Status.DIVERGED,
        diagnosis=UNEXPLAINED,
        message=f"ours' {name} was not a float array after the forward",
        fix=f"keep {name} a float array of the layer, updated in place or re-bound",
    )


def _failed(rec: LayerRecord, phase: str) -> bool:
    return rec.error is not None and rec.error["phase"] == phase


def _raised(mode: str, pair: LayerPair, rec: LayerRecord) -> Row:
    assert rec.error is not None  # only called for a record that failed
    return failed_row(mode, pair.name, pair.type_name, rec.error)


def _missing_grad(
    mode: str, pair: LayerPair, key: str, present: list[str], update: dict | None = None
) -> Row:
    if update is not None:
        problem, fix = unreadable_words(key, update)
        return Row(
            mode, pair.name, pair.type_name, Address(pair.name, Kind.GRAD, key).quantity,
            None, None, status=Status.DIVERGED, diagnosis=MUTATES_INPUT,
            detail={"grads_present": present, **update}, message=problem, fix=fix,
        )  # fmt: skip
    return Row(
        mode,
        pair.name,
        pair.type_name,
        Address(pair.name, Kind.GRAD, key).quantity,
        None,
        None,
        status=Status.DIVERGED,
        diagnosis=UNEXPLAINED,
        detail={"grads_present": present},
        message=f"backward recorded no gradient for {key!r} (grads holds {present or 'nothing'})",
        fix=f"fill grads[{key!r}] in backward; with gp.wrap, check that grads= names the "
        "attributes backward really sets",
    )
