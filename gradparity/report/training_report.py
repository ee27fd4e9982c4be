"""The report of ``compare_training``: a Report over steps, with the per-step history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gradparity.core.rounding import json_value
from gradparity.report.report import Report


@dataclass
class TrainingReport(Report):
    """A Report over steps: ``history`` has one row per step, ``first_divergent_step`` is the
    first step where anything diverged (None when none). Rows are kept for step 1, the first
    divergent step and the last step."""

    history: pd.DataFrame | None = None
    first_divergent_step: int | None = None

    def verdict(self) -> str:
        steps = 0 if self.history is None else len(self.history)
        if self.ok:
            text = f"Parity OK over {steps} steps"
            if self.history is not None and "val_acc_ours" in self.history:
                last = self.history.dropna(subset=["val_acc_ours"]).iloc[-1]
                text += (
                    f"; validation accuracy ours {last.val_acc_ours:.3f}, reference "
                    f"{last.val_acc_ref:.3f}"
                )
            return text
        return (
            f"Divergence at step {self.first_divergent_step} of {steps}: "
            f"{len(self.root_causes)} root cause(s)"
        )

    def _head(self) -> dict:
        history = [] if self.history is None else self.history.to_dict(orient="records")
        return {
            **super()._head(),
            "first_divergent_step": self.first_divergent_step,
            "history": [json_value(_plain(h)) for h in history],  # rounded as rows are
        }

    def plots(self) -> list[tuple[str, bytes, str]]:
        from gradparity.report import training_plots as plots

        files = []
        if self.history is not None and len(self.history):
            name = self.meta.get("model", "model")
            files.append(
                (
                    "training_curves.png",
                    plots.training_curves(self.history, name),
                    "Loss and validation accuracy per step, ours and reference",
                )
            )
            files.append(
                (
                    "error_growth.png",
                    plots.error_growth(self.history, name),
                    "Largest error per quantity kind and step, relative to the tolerance",
                )
            )
        return files + super().plots()


def _plain(record: dict) -> dict:
    return {
        k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in record.items()
    }
