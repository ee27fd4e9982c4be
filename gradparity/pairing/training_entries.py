"""The pairing step of one training step: the loss, every parameter's gradient and update
(after minus before), and the optimiser state both sides keep, in ours' layout."""

from __future__ import annotations

import numpy as np

from gradparity.core.plan import Entry, TensorPair
from gradparity.pairing.align import LayerPair
from gradparity.sides.training_steps import StepResult


def step_entries(
    step: int, ours: StepResult, ref: StepResult, pairs: list[LayerPair], batch: int
) -> list[Entry]:
    """Entries of one step, both sides' records in ours' layout."""
    entries: list[Entry] = [
        TensorPair(
            "train", "loss", "loss", "loss", np.asarray(ours.loss), np.asarray(ref.loss),
            step=step,
        )
    ]  # fmt: skip
    for pair in pairs:
        for p in pair.params:
            where = (pair.name, p.key)
            for quantity, side in ((f"grad:{p.key}", "grads"), (f"param:{p.key}", "deltas")):
                entries.append(
                    TensorPair(
                        "train", pair.name, pair.type_name, quantity,
                        getattr(ours, side).get(where), getattr(ref, side)[where],
                        batch_size=batch, param_shape=p.ours_shape, conversion=p.conversion,
                        step=step,
                    )
                )  # fmt: skip
            for state_name, value in ref.state.get(where, {}).items():
                mine = ours.state.get(where, {}).get(state_name)
                if mine is not None:
                    entries.append(
                        TensorPair(
                            "train", pair.name, pair.type_name, f"state:{p.key}.{state_name}",
                            mine, value, step=step,
                        )
                    )  # fmt: skip
    return entries
