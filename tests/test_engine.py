"""The engine alone: a plan with a fake side, a plug-in and a locator runs through every stage
into one report with the common meta block; the one stale/accumulated detector."""

from __future__ import annotations

import numpy as np

from gradparity.core.finding import finding_from_row
from gradparity.core.row import Row
from gradparity.core.tolerance import tolerance_for
from gradparity.engine import Context, Plan, TensorPair, numpy_side, run
from gradparity.evidence.repeats import repeat_label

TOL = tolerance_for("float64")


class DoublingRunner:
    """A NumpyRunner whose 'gradient' is twice x."""

    def run(self, x: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        return {"grad": 2 * x}


def _plan(ours_factor: float, **extra) -> Plan:
    x = np.arange(6.0).reshape(3, 2)
    seen: list[str] = []

    def reference(captures):
        seen.append("reference saw " + ",".join(sorted(captures)))
        captures["reference"] = {"grad": 2 * x}

    def pair(captures):
        return [
            TensorPair(
                "chain", "fc", "Linear", "grad:W", ours_factor * captures["ours"]["grad"],
                captures["reference"]["grad"], batch_size=3, keep_arrays=True,
                detail={"where": "test"},
            ),
            Row("chain", "fc", "Linear", "grad:b", None, None, status="diverged",
                diagnosis="raised"),
        ]  # fmt: skip

    def evidence(ctx: Context) -> None:
        ctx.notes.append(f"evidence saw {len(ctx.rows)} rows")

    def locator(ctx: Context) -> None:
        for row in ctx.rows:
            if row.diverged:
                row.status = "root_cause"
                ctx.root_causes.append(finding_from_row(row, row.mode))

    plan = Plan(
        name="fake", dtype="float64", tolerance=TOL, seed=7, batch_size=3,
        rng=np.random.default_rng(7),
        sides=[numpy_side(DoublingRunner(), x, np.zeros(3), "ours"), reference],
        pair=pair, evidence=[evidence], locators=[locator], meta={"front_end": "test"},
        notes=["from the plan"], **extra,
    )  # fmt: skip
    plan.fields["seen"] = seen  # not a Report field: popped by the tests below
    return plan


def _run(plan: Plan):
    seen = plan.fields.pop("seen")
    return run(plan), seen


def test_a_plan_runs_every_stage_into_one_report():
    report, seen = _run(_plan(ours_factor=2.0))
    assert seen == ["reference saw ours"]  # sides run in order, each seeing the earlier
    assert [r.quantity for r in report.rows] == ["grad:W", "grad:b"]
    scaled, raised = report.rows
    assert scaled.status == "root_cause" and scaled.diagnosis == "scaled"
    assert scaled.detail["where"] == "test" and scaled.detail["factor"] == 2.0
    assert raised.diagnosis == "raised"  # a judged row passes the compare step unchanged
    assert report.notes == ["from the plan", "evidence saw 2 rows"]
    assert [f.quantity for f in report.root_causes] == ["grad:W", "grad:b"]
    assert set(report.arrays) == {("fc", "grad:W")}  # kept for root causes only
    assert not report.ok


def test_every_report_carries_the_same_meta_block():
    report, _ = _run(_plan(ours_factor=1.0))
    meta = report.meta
    assert list(meta)[:4] == ["model", "seed", "batch_size", "dtype"]
    assert (meta["model"], meta["seed"], meta["batch_size"], meta["dtype"]) == (
        "fake",
        7,
        3,
        "float64",
    )
    assert meta["front_end"] == "test"
    assert {"gradparity", "numpy", "torch"} <= set(meta)
    assert report.dtype == "float64" and report.tolerance.as_dict() == TOL.as_dict()


def test_arrays_of_places_without_a_root_cause_are_dropped():
    report, _ = _run(_plan(ours_factor=1.0))
    assert report.rows[0].status == "ok"
    assert ("fc", "grad:W") not in report.arrays


def test_repeat_label_names_stale_and_accumulated_values():
    now, old = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    assert repeat_label(old.copy(), now, old, old, TOL) == "stale"
    assert repeat_label(now + old, now, old, old, TOL) == "accumulated"
    assert repeat_label(now + 2 * old, now, old, 2 * old, TOL) == "accumulated"
    assert repeat_label(now * 3, now, old, old, TOL) is None
    assert repeat_label(now + old, now, old, None, TOL) is None  # accumulation not checked
    assert repeat_label(np.ones(3), now, old, old, TOL) is None  # another shape: no match
    assert repeat_label(None, now, old, old, TOL) is None


def test_a_side_may_leave_notes_and_widen_the_tolerance():
    ours, ref = np.array([1.0, 2.0]), np.array([1.001, 2.0])

    def plan(widen: bool) -> Plan:
        def side(captures):
            captures["notes"] = ["from the side"]
            if widen:
                captures["tolerance"] = tolerance_for("float64", rtol=1e-2)

        return Plan(
            name="widened", dtype="float64", tolerance=TOL, seed=0, batch_size=None,
            rng=np.random.default_rng(0), sides=[side],
            pair=lambda c: [TensorPair("train", "loss", "loss", "loss", ours, ref)],
            notes=["from the plan"],
        )  # fmt: skip

    narrow, wide = run(plan(widen=False)), run(plan(widen=True))
    assert narrow.rows[0].diverged and not wide.rows[0].diverged
    assert wide.notes == ["from the plan", "from the side"]
    assert wide.tolerance.as_dict() == TOL.as_dict()  # the report states the plan's tolerance
