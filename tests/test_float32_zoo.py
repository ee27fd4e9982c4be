"""The float32 targets of issue 15 for the zoo: every model of ``gradparity train --model``
(``float32_models.ZOO``: bn-cnn in training mode with a pinned dropout mask, and in eval mode)
gives no finding against its torch mirror at input scales 1e-3, 1 and 1e3, and every bug of
the new layers' corpus is still localized with its label in float32.
``benchmarks/float32_zoo.py`` measures the same over 200 seeds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import gradparity as gp
from gradparity.core import tolerance
from gradparity.corpus import layer_bugs
from gradparity.corpus.all_bugs import ALL_BUGS
from gradparity.corpus.float32_models import SCALES, ZOO, as_float32
from gradparity.evidence.float32_budget import DRIFT_FACTOR, FLOAT32_EPS, FLOOR_ULPS
from gradparity.reference import mirror, mirror_loss

SEEDS = 3  # per model and scale
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DENSE = {b.name for b in layer_bugs.BUGS}  # tests/test_compare_float32.py runs those
NEW_LAYER_BUGS = [b for b in ALL_BUGS if b.name not in DENSE]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def compare32(model, loss, x, target, seed=0):
    return gp.compare(
        model, mirror(model), x, target, ours_loss=loss, reference_loss=mirror_loss(loss),
        dtype="float32", seed=seed,
    )  # fmt: skip


def findings(report) -> list[tuple]:
    """Every row that is not ok, and every root cause: [] for a clean report."""
    rows = [(r.mode, r.layer, r.quantity, r.status) for r in report.rows if r.status != "ok"]
    causes = [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes]
    return rows + causes + ([] if report.ok else ["not ok"])


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_correct_zoo_models_raise_no_finding_in_float32(name, scale):
    flagged = {}
    for seed in range(SEEDS):
        report = compare32(*ZOO[name](seed, scale), seed=seed)
        if findings(report):
            flagged[seed] = findings(report)
    assert flagged == {}


def quantities(name: str) -> set[tuple[str, str]]:
    report = compare32(*ZOO[name](0, 1.0))
    return {(r.layer, r.quantity) for r in report.rows if r.mode == "isolate"}


def test_bn_cnn_is_measured_in_training_and_in_eval_mode():
    # Training compares the running statistics batch norm updates; eval updates none.
    assert ("bn1", "buffer:running_var") in quantities("bn-cnn-train")
    assert not any(q.startswith("buffer:") for _, q in quantities("bn-cnn-eval"))
    model = ZOO["bn-cnn-eval"](0, 1.0)[0]
    assert not np.allclose(model["bn1"].running_var, 1.0)  # not the initial statistics


def test_the_dropout_mask_is_pinned_in_training_mode():
    model = ZOO["bn-cnn-train"](0, 1.0)[0]
    drop = model["drop"]
    assert drop.training and drop.pinned_mask is not None and not drop.pinned_mask.all()


@pytest.mark.parametrize("bug", NEW_LAYER_BUGS, ids=lambda b: b.name)
def test_every_new_layer_bug_is_localized_in_float32(bug):
    model, loss, x, target = bug.build(0)
    floats = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in (x, np.asarray(target))]
    report = compare32(as_float32(model), loss, *floats)
    found = [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes]
    assert (bug.layer, bug.quantity, bug.diagnosis) in found
    assert {layer for layer, _, _ in found} == {bug.layer}


def test_the_corpus_holds_the_new_layers_bugs():
    names = {b.name for b in NEW_LAYER_BUGS}
    for expected in ("conv_stride_ignored_in_backward", "batch_norm_no_mean_term",
                     "lstm_forget_gate_derivative", "residual_skip_grad_dropped"):  # fmt: skip
        assert expected in names


def test_the_benchmark_prints_each_model_and_scale_and_the_corpus(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it shares float32_budget.py's measuring
    monkeypatch.setitem(tolerance.NOISE_FLOORS, "float32", tolerance.NOISE_FLOORS["float32"])
    spec = importlib.util.spec_from_file_location("float32_zoo", BENCHMARKS / "float32_zoo.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "ZOO", {"assignment": ZOO["assignment"]})
    monkeypatch.setattr(bench, "ALL_BUGS", NEW_LAYER_BUGS[:2])
    monkeypatch.setattr(sys, "argv", ["float32_zoo.py", "--seeds", "1"])
    bench.main()
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:5] for line in out if "assignment" in line] == [
        ["assignment", f"x*{s:g}", "flagged", "0/1,", "worst"] for s in SCALES
    ]
    assert out[-1].startswith("whole corpus in float32: 2/2 localized and labelled")


def test_a_running_mean_near_zero_is_judged_by_its_inputs_rounding():
    # Seed 133: bn1's batch mean is ~4e-3 of its inputs, so NumPy's and torch's float32 sums
    # differ by more than 8 ulps of the running mean itself (1.66 of that budget: "epsilon").
    report = compare32(*ZOO["bn-cnn-train"](133, 1.0), seed=133)
    assert findings(report) == []
    row = next(r for r in report.rows if (r.mode, r.layer, r.quantity)
               == ("isolate", "bn1", "buffer:running_mean"))  # fmt: skip
    assert (
        row.detail["float32_budget"]["allowed"] > 8 * 2**-23 * row.detail["float32_budget"]["scale"]
    )


@pytest.mark.parametrize("seed", [9, 151])
def test_an_lstm_fed_large_inputs_is_judged_by_its_conditioning(seed):
    # x*1e3: gate pre-activations near 1e3 whose sum cancels. Torch sums them in one fused
    # product, ours in four rounded steps (8x torch's drift): seed 9 flagged the output
    # ("minor", 2.03 of the drift's budget), seed 151 a false weight_decay on grad:weight_ih.
    report = compare32(*ZOO["lstm"](seed, 1e3), seed=seed)
    assert findings(report) == []
    row = next(r for r in report.rows if (r.mode, r.layer, r.quantity)
               == ("isolate", "lstm", "output"))  # fmt: skip
    budget = row.detail["float32_budget"]
    assert budget["conditioning"] > budget["drift"]  # what ours may round, torch's kernel not
    assert budget["allowed"] == pytest.approx(
        max(DRIFT_FACTOR * budget["drift"], FLOOR_ULPS * FLOAT32_EPS * budget["scale"])
        + budget["conditioning"]
    )
