"""float32 ``compare_training`` over long runs: ours and the reference each follow their own
float32 trajectory, and what a step receives from the earlier steps' rounding is counted in
its budget (``sides.training_received``), so correct training gives no finding over 60 steps,
while a bug that starts late is still found at its step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import gradparity as gp
from gradparity.ours import SGD
from gradparity.reference import mirror

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from float32_training_long import batches, every_step_ratio, float32_mlp, long_run

SEEDS = range(5)
STEPS = 60
BUG_STEP = 41

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("seed", SEEDS)
def test_correct_float32_training_gives_no_finding_over_long_runs(seed, optimizer):
    with every_step_ratio() as ratios:
        report = long_run(seed, STEPS, optimizer)
    assert report.ok and not report.root_causes, report.summary()
    assert report.first_divergent_step is None
    assert 0 < max(ratios) < 1


def test_later_steps_show_what_they_received_beside_the_drift():
    report = long_run(0, STEPS, "sgd")
    last = {(r.layer, r.quantity): r.detail["float32_budget"] for r in report.rows
            if r.step == STEPS and "float32_budget" in r.detail}  # fmt: skip
    assert last[("loss", "loss")]["received"] > 0
    assert last[("fc2", "grad:W")]["received"] > 0
    first = [r for r in report.rows if r.step == 1 and "float32_budget" in r.detail]
    assert first and all(r.detail["float32_budget"]["received"] == 0 for r in first)


class SGDLateStepSize(SGD):
    """SGD whose step size is 0.1% too large from step ``BUG_STEP`` on."""

    def __init__(self, model, lr: float) -> None:
        super().__init__(model, lr=lr)
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        self.lr = 0.1 * (1.001 if self.steps >= BUG_STEP else 1.0)
        super().step()


def test_a_bug_that_starts_late_is_found_at_its_step():
    model = float32_mlp(0)
    report = gp.compare_training(
        model, mirror(model), batches(0, BUG_STEP + 2), dtype="float32",
        ours_optimizer=lambda m: SGDLateStepSize(m, lr=0.1),
        reference_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )  # fmt: skip
    assert not report.ok and report.first_divergent_step == BUG_STEP
    assert {f.quantity for f in report.root_causes} >= {"param:W"}
