"""``gate_derivative``: an LSTM whose backward differentiates one gate wrongly is named with
that gate, against a torch twin and against autodiff of its own forward; a wrong derivative
shared by several gates, or a correct LSTM, is not. ``kronecker_inverted``: a Jacobian with
1 - delta_ij where delta_ij belongs (softmax), recognised only in that pattern."""

from __future__ import annotations

import numpy as np
import pytest

import gradparity as gp
from gradparity.core.labels import GATE_DERIVATIVE, KRONECKER_INVERTED
from gradparity.core.tolerance import tolerance_for
from gradparity.corpus import layer_bugs
from gradparity.corpus.recurrent_bugs import LSTMForgetGateTanhDerivative
from gradparity.corpus.selftest import compare_setup
from gradparity.evidence.jacobian import JacobianProbe, describe_jacobian_difference
from gradparity.evidence.jacobian_labels import _kronecker_inverted
from gradparity.evidence.recurrent_labels import GATES
from gradparity.ours import LSTM, MSE, Sequential
from gradparity.ours.recurrent import _lstm_gate_grads

TOL = tolerance_for("float64")


def _scaled_blocks(*gates: str) -> type[LSTM]:
    """An LSTM whose dL/dz is doubled in the blocks of ``gates`` (a wrong derivative there)."""

    def gate_grads(d_c, d_h, gates_now, c_prev, tanh_c):
        blocks = np.split(_lstm_gate_grads(d_c, d_h, gates_now, c_prev, tanh_c), 4, axis=1)
        return np.concatenate(
            [2.0 * b if name in gates else b for name, b in zip(GATES, blocks)], axis=1
        )

    return type("WrongGates", (LSTM,), {"_gate_grads": staticmethod(gate_grads)})


def _network(lstm: type[LSTM] = LSTM, steps: int = 5, seed: int = 0):
    """x (3, steps, 2) -> lstm (hidden 3) -> MSE against (3, steps, 3)."""
    rng = np.random.default_rng(seed)
    model = Sequential(("lstm", lstm(2, 3, rng=rng)))
    return model, MSE(), rng.standard_normal((3, steps, 2)), rng.standard_normal((3, steps, 3))


def _gate_findings(report: gp.Report) -> list[gp.Finding]:
    return [f for f in report.root_causes if f.diagnosis == GATE_DERIVATIVE]


@pytest.mark.parametrize("gate", GATES)
def test_each_gate_is_named_against_a_torch_twin(gate):
    report = compare_setup(*_network(_scaled_blocks(gate)))
    (finding,) = [f for f in report.root_causes if f.quantity == "grad_input"]
    assert (finding.layer, finding.diagnosis) == ("lstm", GATE_DERIVATIVE)
    found = finding.detail["gate_blocks"]
    k = GATES.index(gate)
    assert found["gate"] == gate and found["rows"] == [3 * k, 3 * (k + 1)]
    assert found["parameter"] == "weight_ih"
    assert f"{gate} gate" in finding.message and f"dL/dz_{gate}" in finding.message


def test_the_corpus_forget_gate_bug_is_named_through_autodiff():
    model, loss, x, target = _network(LSTMForgetGateTanhDerivative)
    report = gp.compare(model, "autodiff", x, target, ours_loss=loss)
    findings = _gate_findings(report)
    assert findings and {f.detail["gate_blocks"]["gate"] for f in findings} == {"f"}
    assert "f * (1 - f)" in findings[0].message


def test_a_wrong_derivative_in_three_gates_names_no_gate():
    # What a wrong dL/dc (the cell's tanh derivative) does: i, f and g move together.
    report = compare_setup(*_network(_scaled_blocks("i", "f", "g")))
    assert not report.ok
    assert not _gate_findings(report)


def test_one_step_sequences_are_not_judged():
    # From a zero cell, one step gives the forget gate no effect: no rule to apply.
    report = compare_setup(*_network(_scaled_blocks("i"), steps=1))
    assert not report.ok
    assert not _gate_findings(report)


def test_a_correct_lstm_gives_no_finding():
    assert compare_setup(*_network()).ok


# --- kronecker_inverted: the other layer-corpus bug that was unexplained ---------------------


def _jacobians(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax's per-sample Jacobians (4, 5, 5), s_i (delta_ij - s_j), and the same with
    delta_ij written as 1 - delta_ij."""
    z = np.random.default_rng(seed).standard_normal((4, 5))
    s = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    eye = np.eye(5)
    right = s[:, :, None] * (eye - s[:, None, :])
    return right, s[:, :, None] * ((1 - eye) - s[:, None, :])


def _probe_of(ours: np.ndarray, ref: np.ndarray) -> JacobianProbe:
    return JacobianProbe(ours, ref, describe_jacobian_difference(ours, ref, TOL), "")


def test_the_inverted_delta_is_recognised_in_the_jacobians():
    right, inverted = _jacobians()
    assert _kronecker_inverted(_probe_of(inverted, right), TOL)
    assert not _kronecker_inverted(_probe_of(right, right), TOL)  # nothing differs
    negated_delta = right - 2 * np.eye(5) * np.diagonal(right, axis1=1, axis2=2)[:, :, None]
    assert not _kronecker_inverted(_probe_of(negated_delta, right), TOL)  # diagonal only
    other = right + 0.1 * np.random.default_rng(1).standard_normal(right.shape)
    assert not _kronecker_inverted(_probe_of(other, right), TOL)


def test_the_corpus_kronecker_bug_is_labelled_with_its_fix():
    report = compare_setup(*layer_bugs.softmax_network(0, layer_bugs.SoftmaxKroneckerInverted))
    (finding,) = [f for f in report.root_causes if f.layer == "softmax"]
    assert (finding.quantity, finding.diagnosis) == ("grad_input", KRONECKER_INVERTED)
    assert "np.eye(C)" in finding.message and "delta_ij" in finding.message
