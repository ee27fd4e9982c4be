"""Issue 16's engine: lazy isolation, ``stop_at_first``, streaming, and the cheap comparisons
they rest on. Each test pins what a run does (which layers ran alone, what was copied, what a
row says), never how long it took."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from stateful_layers import StochasticGradientDescent
from test_stateful_layers import _data, _from_scratch

import gradparity as gp
from gradparity.core import metrics
from gradparity.core.errors import InputError
from gradparity.core.tolerance import tolerance_for
from gradparity.corpus.layer_bugs import BiasGradSign, InputGradUsesW, WeightGradZero
from gradparity.evidence.jacobian import (
    MAX_JACOBIAN_BACKWARDS,
    MIN_JACOBIAN_SAMPLES,
    jacobian_samples,
)
from gradparity.ours import Linear, Sequential, Tanh
from gradparity.reference import mirror
from gradparity.sides import lazy_isolation, streaming
from gradparity.sides.setup import reference_copy

TOL = tolerance_for("float64")


def _tanh_mlp(blocks: int = 4, width: int = 6, bugs: dict | None = None, seed: int = 0):
    """``blocks`` x (Linear + Tanh), a layer class from ``bugs`` {index: class} where given."""
    rng = np.random.default_rng(seed)
    bugs = bugs or {}
    layers = []
    for i in range(blocks):
        kind = bugs.get(i, Linear)
        layers += [(f"fc{i}", kind(width, width, rng=rng)), (f"act{i}", Tanh())]
    model = Sequential(*layers)
    twin = mirror(_tanh_mlp(blocks, width, seed=seed)[0]) if bugs else mirror(model)
    x, t = rng.standard_normal((5, width)), rng.integers(0, width, 5)
    return model, twin, x, t


def _isolated(report: gp.Report) -> set[str]:
    return {r.layer for r in report.rows if r.mode == "isolate"}


def _causes(report: gp.Report) -> list[tuple[str, str, str]]:
    return [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes]


# ----------------------------------------------------------------------------- lazy isolation


def test_lazy_isolation_runs_no_layer_alone_when_the_chain_agrees():
    model, twin, x, t = _tanh_mlp()
    report = gp.compare(model, twin, x, t, isolate="lazy")
    assert report.ok and _isolated(report) == set()
    assert any("no layer was run alone" in n for n in report.notes)
    everything = gp.compare(model, twin, x, t, isolate="all")
    assert _isolated(everything) == {*(n for n, _ in model.named_layers()), "loss"}


@pytest.mark.parametrize(
    "bugs", [{2: InputGradUsesW}, {1: BiasGradSign}, {0: BiasGradSign, 2: WeightGradZero}]
)
def test_lazy_isolation_names_the_root_causes_isolating_every_layer_names(bugs):
    model, twin, x, t = _tanh_mlp(bugs=bugs)
    lazy = gp.compare(model, twin, x, t, isolate="lazy")
    every = gp.compare(model, twin, x, t, isolate="all")
    assert not lazy.ok and _causes(lazy) == _causes(every)
    assert _isolated(lazy) < _isolated(every)  # the layers above the last bug agree in the chain


def test_stop_at_first_runs_layers_alone_only_until_the_first_root_cause():
    model, twin, x, t = _tanh_mlp(bugs={0: BiasGradSign, 2: WeightGradZero})
    every = gp.compare(model, twin, x, t, isolate="lazy")
    first = gp.compare(model, twin, x, t, isolate="lazy", stop_at_first=True)
    # fc2, the first wrong layer in backward order, where a gradient bug shows first
    assert _causes(first) == [c for c in _causes(every) if c[0] == "fc2"]
    assert _isolated(first) == {"fc2"}
    assert any(n.startswith("stop_at_first: the isolate run stopped at fc2") for n in first.notes)
    assert not first.ok


def test_small_models_run_every_layer_alone_by_default_and_large_ones_lazily(monkeypatch):
    model, twin, x, t = _tanh_mlp()
    assert len(_isolated(gp.compare(model, twin, x, t))) == 9  # 8 layers and the loss
    monkeypatch.setattr(lazy_isolation, "LAZY_ELEMENTS", 10)
    assert _isolated(gp.compare(model, twin, x, t)) == set()


def test_float32_runs_every_layer_alone_whatever_isolate_says():
    model, twin, x, t = _tanh_mlp()
    report = gp.compare(model, twin, x, t, dtype="float32", isolate="lazy")
    assert len(_isolated(report)) == 9


def test_isolate_and_stop_at_first_are_checked_in_one_line():
    model, twin, x, t = _tanh_mlp()
    with pytest.raises(InputError, match="isolate must be 'lazy' or 'all'"):
        gp.compare(model, twin, x, t, isolate="some")
    with pytest.raises(InputError, match="stop_at_first must be True or False"):
        gp.compare(model, twin, x, t, stop_at_first="yes")
    with pytest.raises(InputError, match="streaming must be True or False"):
        gp.compare(model, twin, x, t, streaming=1)


def test_inherited_chain_rows_are_not_diagnosed_but_the_named_ones_are():
    model, twin, x, t = _tanh_mlp(bugs={2: InputGradUsesW})
    report = gp.compare(model, twin, x, t, isolate="all")
    chain = [r for r in report.rows if r.mode == "chain" and r.diverged]
    inherited = [r for r in chain if r.status == "inherited"]
    assert inherited and all(r.diagnosis is None for r in inherited)
    named = [r for r in chain if r.status != "inherited"]
    assert named and all(r.diagnosis is not None for r in named)


# ---------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("bugs", [None, {1: InputGradUsesW}])
def test_streaming_gives_the_report_the_default_gives(bugs):
    model, twin, x, t = _tanh_mlp(bugs=bugs)
    streamed = gp.compare(model, twin, x, t, streaming=True).to_dict()
    kept = gp.compare(model, twin, x, t, streaming=False).to_dict()
    assert streamed["meta"]["streaming"] is True and kept["meta"]["streaming"] is False
    assert streamed["rows"] == kept["rows"]
    assert streamed["root_causes"] == kept["root_causes"]


def test_streaming_leaves_both_models_as_they_were():
    model, twin, x, t = _tanh_mlp()
    ours_before = {n: {k: v.copy() for k, v in l.params.items()} for n, l in model.named_layers()}
    arrays = {n: dict(l.params) for n, l in model.named_layers()}
    twin_before = {n: p.detach().clone() for n, p in twin.named_parameters()}
    twin_tensors = dict(twin.named_parameters())
    with torch.no_grad():  # the twin's values differ from ours: a sync must not write into it
        for p in twin.parameters():
            p.mul_(0.5)
    held = {n: p.detach().clone() for n, p in twin.named_parameters()}
    gp.compare(model, twin, x, t, streaming=True)
    for name, layer in model.named_layers():
        for key, value in layer.params.items():
            assert value is arrays[name][key] and np.array_equal(value, ours_before[name][key])
    for name, p in twin.named_parameters():
        assert p is twin_tensors[name] and torch.equal(p, held[name])
    assert any(not torch.equal(held[n], twin_before[n]) for n in held)


def test_the_streaming_reference_copy_shares_the_references_memory():
    _, twin, _, _ = _tanh_mlp()
    shared, _ = reference_copy(twin, "float64", share_parameters=True)
    copied, _ = reference_copy(twin, "float64")
    mine = dict(twin.named_parameters())
    for name, p in shared.named_parameters():
        assert p is not mine[name] and p.data_ptr() == mine[name].data_ptr()
    assert all(p.data_ptr() != mine[n].data_ptr() for n, p in copied.named_parameters())


def test_streaming_is_on_by_default_from_the_parameter_threshold(monkeypatch):
    model, twin, x, t = _tanh_mlp()
    assert gp.compare(model, twin, x, t).to_dict()["meta"]["streaming"] is False
    monkeypatch.setattr(
        streaming, "STREAMING_PARAMETERS", streaming.parameter_count(list(model.named_layers()))
    )
    assert gp.compare(model, twin, x, t).to_dict()["meta"]["streaming"] is True


def test_streaming_reruns_carefully_a_layer_that_updates_its_weights_in_backward():
    model, ref, layers = _from_scratch(StochasticGradientDescent(learning_rate=0.01))
    held = [(layer.W.copy(), layer.w0.copy()) for layer in layers]
    x, t = _data(6, 3, 2)
    streamed = gp.compare(model, ref, x, t, streaming=True)
    kept = gp.compare(copy.deepcopy(model), ref, x, t, streaming=False)
    assert streamed.ok and kept.ok
    assert [w.message for w in streamed.warnings] == [w.message for w in kept.warnings]
    assert any("learning rate 0.01" in w.message for w in streamed.warnings)
    for layer, (W, w0) in zip(layers, held):
        assert np.array_equal(layer.W, W) and np.array_equal(layer.w0, w0)


# ------------------------------------------------------------------------ cheap comparisons


def _general(ours: np.ndarray, ref: np.ndarray) -> metrics.TensorDiff:
    """tensor_diff by the general path alone."""
    original = metrics._below_floor
    metrics._below_floor = lambda *_: None
    try:
        return metrics.tensor_diff(ours, ref, TOL)
    finally:
        metrics._below_floor = original


CASES = {
    "equal": lambda r: r.copy(),
    "rounding": lambda r: r * (1 + 1e-14),
    "near the tolerance": lambda r: r + 0.9e-7 * np.abs(r).max(),
    "beyond it": lambda r: r + 2e-7 * np.abs(r).max(),
    "a NaN": lambda r: np.where(np.arange(r.size).reshape(r.shape) == 3, np.nan, r),
    "an inf": lambda r: np.where(np.arange(r.size).reshape(r.shape) == 5, np.inf, r),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "0-d"])
def test_the_cheap_paths_agree_with_the_general_rule(monkeypatch, case, layout):
    monkeypatch.setattr(metrics, "_BLOCK", 7)  # many blocks, a partial one last
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 11))
    ref = {"contiguous": ref, "transposed": ref.T, "0-d": np.array(ref[0, 0])}[layout]
    ours = CASES[case](ref)
    if layout == "transposed":
        ours = np.ascontiguousarray(ours.T).T
    expected = _general(ours, ref)
    assert metrics.within_tolerance(ours, ref, TOL) == expected.ok
    got = metrics.tensor_diff(ours, ref, TOL)
    assert (got.max_abs, got.max_rel, got.mismatch_count) == (
        expected.max_abs,
        expected.max_rel,
        expected.mismatch_count,
    )
    assert got.worst_index == expected.worst_index
    assert got.allowed_at_worst == pytest.approx(expected.allowed_at_worst, rel=1e-15)
    assert got.cosine == pytest.approx(expected.cosine, rel=1e-14, nan_ok=True)


def test_a_non_finite_reference_takes_the_general_rule():
    ref = np.array([1.0, np.inf, 2.0])
    assert metrics.within_tolerance(ref.copy(), ref, TOL)  # inf against the same inf
    assert not metrics.within_tolerance(np.array([1.0, 3.0, 2.0]), ref, TOL)


def test_the_jacobian_probe_builds_every_sample_of_a_small_layer_and_a_bounded_number_else():
    assert jacobian_samples(8, 5) == 8
    assert jacobian_samples(64, 256) == MIN_JACOBIAN_SAMPLES == 1
    assert jacobian_samples(64, 16) == MAX_JACOBIAN_BACKWARDS // 16 == 16
    assert jacobian_samples(2, 4) == 2
