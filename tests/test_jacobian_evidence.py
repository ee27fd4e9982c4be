"""Jacobian evidence attached by ``gp.compare`` to diverging input gradients: the pattern for
small layers, and a "skipped" note, with no probing at all, for layers too large to probe."""

from __future__ import annotations

import numpy as np
import pytest

import gradparity as gp
import gradparity.evidence.jacobian
from gradparity.core.tolerance import tolerance_for
from gradparity.corpus import layer_bugs as bugs
from gradparity.corpus.selftest import compare_setup
from gradparity.ours import Sequential, mlp
from gradparity.reference import mirror

TOL = tolerance_for("float64")


def run(model, loss, x, target, seed=0):
    return compare_setup(model, loss, x, target, seed=seed)


def root(report, layer, quantity):
    hits = [f for f in report.root_causes if (f.layer, f.quantity) == (layer, quantity)]
    assert len(hits) == 1, [(f.layer, f.quantity) for f in report.root_causes]
    return hits[0]


def forbid_probe(monkeypatch):
    def probe(*args, **kwargs):
        raise AssertionError("jacobian.probe must not be called here")

    monkeypatch.setattr(gradparity.evidence.jacobian, "probe", probe)


# --- small layers: the pattern --------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_softmax_diagonal_only_names_off_diagonal_terms(seed):
    model, loss, x, t = bugs.softmax_network(seed, softmax=bugs.SoftmaxDiagonalOnly)
    report = run(model, loss, x, t, seed=seed)
    finding = root(report, "softmax", "grad_input")
    evidence = finding.detail["jacobian"]
    assert "note" not in evidence
    pattern = evidence["pattern"]
    assert pattern["off_diagonal_only"] is True
    assert pattern["diagonal_match"] is True
    assert pattern["off_diagonal_match"] is False
    assert pattern["ours_offdiag_zero"] is True
    assert pattern["diagonal_mismatches"] == 0
    assert pattern["off_diagonal_mismatches"] > 0
    assert pattern["samples"] == len(x)
    assert pattern["out_features"] == pattern["in_features"] == 3
    assert "Jacobian" in finding.message
    assert "off-diagonal" in finding.message
    assert "off-diagonal" in evidence["message"]
    # only the buggy layer is blamed
    assert {f.layer for f in report.root_causes} == {"softmax"}


def test_softmax_kronecker_inverted_has_pattern_and_message():
    model, loss, x, t = bugs.softmax_network(0, softmax=bugs.SoftmaxKroneckerInverted)
    finding = root(run(model, loss, x, t), "softmax", "grad_input")
    pattern = finding.detail["jacobian"]["pattern"]
    assert pattern["diagonal_match"] is False
    assert pattern["mismatch_entries"] > 0
    assert "Jacobian" in finding.message


def test_transposed_input_gradient_is_named_from_the_jacobian():
    model, loss, x, t = bugs.base_network(0, fc2=bugs.InputGradUsesW, square=True)
    finding = root(run(model, loss, x, t), "fc2", "grad_input")
    assert finding.detail["jacobian"]["pattern"]["transposed"] is True
    assert finding.diagnosis == "transposed"
    assert "Jacobian" in finding.message


def test_jacobian_evidence_only_on_input_gradients():
    model, loss, x, t = bugs.base_network(0, fc1=bugs.WeightGradScaled)
    finding = root(run(model, loss, x, t), "fc1", "grad:W")
    assert "jacobian" not in finding.detail


def test_loss_finding_has_no_jacobian():
    model, loss, x, t = bugs.base_network(0, loss=bugs.LossGradSign)
    finding = root(run(model, loss, x, t), "loss", "grad_input")
    assert "jacobian" not in finding.detail


def test_clean_run_never_probes(monkeypatch):
    forbid_probe(monkeypatch)
    model, loss, x, t = bugs.softmax_network(0)
    report = run(model, loss, x, t)
    assert report.ok
    assert all("jacobian" not in r.detail for r in report.rows)


# --- large layers: skipped, without probing -------------------------------------------------


def big_buggy_mlp() -> Sequential:
    base = mlp((784, 300, 10))
    return Sequential(
        *[
            (name, bugs.SigmoidDerivativeOfOutput() if name == "act1" else layer)
            for name, layer in base.named_layers()
        ]
    )


def test_large_layer_is_skipped_without_probing(monkeypatch):
    forbid_probe(monkeypatch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 784))
    t = rng.integers(0, 10, 4)
    model = big_buggy_mlp()
    report = gp.compare(model, mirror(model), x, t, seed=0)
    finding = root(report, "act1", "grad_input")
    evidence = finding.detail["jacobian"]
    assert "pattern" not in evidence
    note = evidence["note"]
    assert note.startswith("skipped")
    assert "300" in note
    assert str(gradparity.evidence.jacobian.MAX_JACOBIAN_ELEMENTS) in note
    assert {f.layer for f in report.root_causes} == {"act1"}


def test_too_large_matches_the_skip_note():
    note = gradparity.evidence.jacobian.too_large((4, 300), (4, 300))
    assert note is not None and note.startswith("skipped")
    assert gradparity.evidence.jacobian.too_large((4, 5), (4, 3)) is None
