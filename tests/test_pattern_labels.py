"""Issue 12, item 3: the Jacobian- and loss-pattern labels and ``tied_maxima``, each on a case
that fits and a near miss that must not get it, in networks written as the book writes them
(layer classes in an OrderedDict, a loss layer, a torch twin)."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
from book_layers import (
    MSE,
    Affine,
    Flatten,
    MaxPooling,
    Relu,
    Sigmoid,
    SigmoidWithLoss,
    Softmax,
    SoftmaxWithLoss,
    Tanh,
    twin_linear,
)
from torch import nn

import gradparity as gp
from gradparity.cli.main import main
from gradparity.core.labels import (
    ELEMENTWISE_DERIVATIVE,
    EXTRA_ACTIVATION_DERIVATIVE,
    GATE_DERIVATIVE,
    GRADIENT_WRT_PROBABILITIES,
    KRONECKER_INVERTED,
    MISSING_CROSS_TERMS,
    TIED_MAXIMA,
    UNEXPLAINED,
)
from gradparity.core.tolerance import tolerance_for
from gradparity.corpus import selftest
from gradparity.corpus.all_bugs import ALL_BUGS
from gradparity.evidence.elementwise import fit_output_formula, formula_text
from gradparity.evidence.loss_patterns import activation_mistake
from gradparity.evidence.ties import tied_values

TOL = tolerance_for("float64")


def _mlp(act, act_ref: nn.Module, seed: int = 0, n_in: int = 5, n_out: int = 3):
    """x (8, n_in) -> affine1 -> act -> affine2 -> logits (8, n_out), and the torch twin."""
    rng = np.random.default_rng(seed)
    a1 = Affine(rng.standard_normal((n_in, 4)), rng.standard_normal(4) * 0.5)
    a2 = Affine(rng.standard_normal((4, n_out)), rng.standard_normal(n_out) * 0.5)
    layers = OrderedDict(affine1=a1, act=act, affine2=a2)
    twin = nn.Sequential(OrderedDict(affine1=twin_linear(a1), act=act_ref, affine2=twin_linear(a2)))
    return layers, twin, rng.standard_normal((8, n_in)), rng.integers(0, n_out, 8)


def _row(report: gp.Report, layer: str, quantity: str = "grad_input"):
    return next(
        r for r in report.rows if (r.mode, r.layer, r.quantity) == ("isolate", layer, quantity)
    )


def _check(layers: OrderedDict, twin: nn.Module, x, t, loss=None, reference_loss=None):
    return gp.compare(
        list(layers.items()),
        twin,
        x,
        t,
        ours_loss=loss or SoftmaxWithLoss(),
        reference_loss=reference_loss or nn.CrossEntropyLoss(),
    )


# ---------------------------------------------------------------- elementwise_derivative


def test_sigmoid_derivative_at_the_output_is_elementwise_derivative():
    def at_output(x, y):
        s = 1 / (1 + np.exp(-y))  # sigmoid'(y) instead of sigmoid'(x)
        return s * (1 - s)

    report = _check(*_mlp(Sigmoid(at_output), nn.Sigmoid()))
    row = _row(report, "act")
    assert row.diagnosis == ELEMENTWISE_DERIVATIVE
    assert row.detail["local_derivative"]["evaluated_at"] == "output"
    assert "output y instead of its input x" in row.message
    assert [f.diagnosis for f in report.root_causes] == [ELEMENTWISE_DERIVATIVE]


def test_tanh_output_formula_applied_to_the_input_is_named_with_its_formula():
    report = _check(*_mlp(Tanh(lambda x, y: 1 - x**2), nn.Tanh()))
    row = _row(report, "act")
    assert row.diagnosis == ELEMENTWISE_DERIVATIVE
    mistake = row.detail["local_derivative"]
    assert mistake["evaluated_at"] == "input" and mistake["formula"] == "1 - y**2"
    assert "1 - x**2" in row.message


def test_a_wrong_derivative_of_no_known_kind_is_labelled_without_a_cause():
    report = _check(*_mlp(Sigmoid(lambda x, y: y * (1 + y)), nn.Sigmoid()))
    row = _row(report, "act")
    assert row.diagnosis == ELEMENTWISE_DERIVATIVE
    assert "local_derivative" not in row.detail


def test_near_miss_a_backward_that_mixes_features_of_an_elementwise_layer():
    class Mixing(Sigmoid):
        def backward(self, dout):
            local = super().backward(dout)
            return local + 0.3 * local.mean(axis=1, keepdims=True)  # cross terms

    report = _check(*_mlp(Mixing(), nn.Sigmoid()))
    row = _row(report, "act")
    assert row.diagnosis not in (ELEMENTWISE_DERIVATIVE, MISSING_CROSS_TERMS)


def test_output_formula_fit_needs_an_exact_low_degree_polynomial():
    x = np.linspace(-3, 3, 20)
    tanh = fit_output_formula(np.tanh(x), 1 - np.tanh(x) ** 2, TOL)
    assert tanh is not None and formula_text(tanh, "y") == "1 - y**2"
    sig = 1 / (1 + np.exp(-x))
    fitted = fit_output_formula(sig, sig * (1 - sig), TOL)
    assert fitted is not None and formula_text(fitted, "y") == "y - y**2"
    # softplus: f'(x) = sigmoid(x) = 1 - exp(-y), no polynomial of y
    softplus = np.log1p(np.exp(x))
    assert fit_output_formula(softplus, sig, TOL) is None
    # too few distinct outputs to test a fit at all
    assert fit_output_formula(np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0]), TOL) is None


# ---------------------------------------------------------------- missing_cross_terms


def _softmax_net(softmax: Softmax, seed: int = 0):
    """affine1 -> tanh -> affine2 -> softmax, against one-hot targets (8, 3) under MSE."""
    layers, twin, x, t = _mlp(Tanh(lambda x, y: 1 - y**2), nn.Tanh(), seed)
    layers["softmax"] = softmax
    twin.add_module("softmax", nn.Softmax(dim=1))
    return layers, twin, x, np.eye(3)[t]


def test_softmax_with_its_diagonal_only_misses_the_cross_terms():
    layers, twin, x, onehot = _softmax_net(Softmax(diagonal_only=True))
    report = _check(layers, twin, x, onehot, MSE(), nn.MSELoss())
    row = _row(report, "softmax")
    assert row.diagnosis == MISSING_CROSS_TERMS
    assert row.detail["jacobian"]["pattern"]["ours_offdiag_zero"]
    assert "full Jacobian" in row.fix


def test_near_miss_wrong_cross_terms_are_not_missing_ones():
    class KroneckerInverted(Softmax):
        def backward(self, dout):
            s = self.s
            off = 1 - np.eye(s.shape[1])  # (1 - delta_ij) where delta_ij belongs
            return np.einsum("ni,nij->nj", dout, s[:, :, None] * (off[None] - s[:, None, :]))

    layers, twin, x, onehot = _softmax_net(KroneckerInverted())
    report = _check(layers, twin, x, onehot, MSE(), nn.MSELoss())
    assert _row(report, "softmax").diagnosis == KRONECKER_INVERTED


# ---------------------------------------------------------------- loss patterns


def test_softmax_prime_multiplied_into_the_loss_gradient():
    loss = SoftmaxWithLoss(slope=lambda y: y * (1 - y))
    report = _check(*_mlp(Sigmoid(), nn.Sigmoid()), loss=loss)
    row = _row(report, "loss")
    assert row.diagnosis == EXTRA_ACTIVATION_DERIVATIVE
    assert row.detail["activation"] == "softmax"
    assert [f.layer for f in report.root_causes] == ["loss"]


def test_binary_loss_returning_the_gradient_wrt_the_probability():
    layers, twin, x, _ = _mlp(Sigmoid(), nn.Sigmoid(), n_out=1)
    t = np.random.default_rng(3).integers(0, 2, (8, 1)).astype(float)
    report = _check(layers, twin, x, t, SigmoidWithLoss(), nn.BCEWithLogitsLoss())
    row = _row(report, "loss")
    assert row.diagnosis == GRADIENT_WRT_PROBABILITIES
    assert row.detail["activation"] == "sigmoid"
    assert "dL/dz" in row.message


def test_near_miss_a_loss_gradient_off_by_another_factor_of_the_probabilities():
    loss = SoftmaxWithLoss(slope=lambda y: y)  # s, not s (1 - s)
    row = _row(_check(*_mlp(Sigmoid(), nn.Sigmoid()), loss=loss), "loss")
    assert row.diagnosis not in (EXTRA_ACTIVATION_DERIVATIVE, GRADIENT_WRT_PROBABILITIES)


@pytest.mark.parametrize("shape", [(6, 3), (6, 1), (6,)])
def test_activation_mistake_fits_only_the_exact_pattern(shape):
    rng = np.random.default_rng(len(shape))
    z, ref = rng.standard_normal(shape), rng.standard_normal(shape)
    if len(shape) == 2 and shape[1] > 1:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        s, name = e / e.sum(axis=1, keepdims=True), "softmax"
    else:
        s, name = 1 / (1 + np.exp(-z)), "sigmoid"
    slope = s * (1 - s)
    times = activation_mistake(ref * slope, ref, z, TOL)
    assert times == {"label": EXTRA_ACTIVATION_DERIVATIVE, "activation": name}
    divided = activation_mistake(ref / slope, ref, z, TOL)
    assert divided == {"label": GRADIENT_WRT_PROBABILITIES, "activation": name}
    assert activation_mistake(ref * slope * 1.01, ref, z, TOL) is None
    assert activation_mistake(ref * slope, ref, z[:-1], TOL) is None


# ---------------------------------------------------------------- tied_maxima


def _pool_net(pool: MaxPooling, relu: Relu | None = None, shift: float = -0.8):
    """ReLU -> max pool -> flatten -> affine on (4, 3, 4, 4); ``shift`` < 0 makes all-zero
    windows after the ReLU, so maxima tie."""
    rng = np.random.default_rng(0)
    fc = Affine(rng.standard_normal((12, 3)) * 0.3, rng.standard_normal(3) * 0.1)
    layers = OrderedDict(relu=relu or Relu(), pool=pool, flat=Flatten(), fc=fc)
    twin = nn.Sequential(
        OrderedDict(relu=nn.ReLU(), pool=nn.MaxPool2d(2), flat=nn.Flatten(), fc=twin_linear(fc))
    )
    x = rng.standard_normal((4, 3, 4, 4)) + shift
    return layers, twin, x, rng.integers(0, 3, 4)


@pytest.mark.parametrize("split", [False, True], ids=["every-tie", "split"])
def test_max_pool_routing_to_every_tied_maximum_is_tied_maxima(split):
    report = _check(*_pool_net(MaxPooling(split=split)))
    row = _row(report, "pool")
    assert row.diagnosis == TIED_MAXIMA
    assert row.detail["ties"]["after_breaking_ties"] == "agrees"
    assert "argmax" in row.fix and "mask" not in row.fix
    assert "(z > 0)" not in row.message
    # the difference vanishes below the pool: the ReLU's gradient and fc's agree, so it is a
    # minor finding with no effect on the gradients, and the run passes
    assert not _row(report, "relu").diverged
    assert not any(r.diverged for r in report.rows if r.layer == "fc")
    assert report.root_causes == [] and report.ok
    (minor,) = report.minor
    assert (minor.layer, minor.diagnosis) == ("pool", TIED_MAXIMA)
    assert "no effect on the gradients" in minor.message


def test_near_miss_a_relu_whose_mask_differs_only_at_tied_zeros_is_not_a_pool():
    # inputs rounded to halves: exact (tied) zeros, where passing the gradient differs; breaking
    # the ties removes the difference as for a pool, but a ReLU does not reduce its input
    layers, twin, x, t = _pool_net(MaxPooling(), relu=Relu(blocks_zero=False), shift=0.0)
    x = np.round(2 * x) / 2
    row = _row(_check(layers, twin, x, t), "relu")
    assert row.diverged and row.diagnosis != TIED_MAXIMA


def test_near_miss_a_pool_bug_outside_the_ties_is_not_tied_maxima():
    report = _check(*_pool_net(MaxPooling(scale=0.9)))
    assert _row(report, "pool").diagnosis != TIED_MAXIMA


def test_tied_values_are_counted_per_sample_and_channel():
    x = np.array([[[0.0, 1.0, 0.0], [2.0, 3.0, 4.0]], [[5.0, 6.0, 7.0], [7.0, 8.0, 7.0]]])
    expected = [[[1, 0, 1], [0, 0, 0]], [[0, 0, 0], [1, 0, 1]]]
    assert tied_values(x).astype(int).tolist() == expected
    # 2-D: one group per sample
    assert tied_values(np.array([[1.0, 1.0], [1.0, 2.0]])).tolist() == [[1, 1], [0, 0]]


# ---------------------------------------------------------------- selftest distribution


def test_label_distribution_counts_each_label_and_unexplained_last():
    results = [
        selftest.BugResult("a", "fc1", "grad:W", "scaled", label="scaled"),
        selftest.BugResult("b", "fc1", "grad:W", "scaled", label="scaled"),
        selftest.BugResult("c", "act1", "grad_input", "zero", label=UNEXPLAINED),
        selftest.BugResult("d", "act1", "grad_input", "zero"),  # nothing found there
        selftest.BugResult("fn:e", "backprop", "grad:W1", "zero", label="zero", corpus="function"),
    ]
    counts = selftest.label_distribution(results[:4])
    assert counts == {"scaled": 2, "not found": 1, UNEXPLAINED: 1}
    assert selftest.label_distribution([])[UNEXPLAINED] == 0
    layer, function = selftest.format_labels(results).splitlines()
    assert (
        layer == "4 bugs by label (layer): scaled 2, not found 1, unexplained 1 (target: at most 2)"
    )
    assert function == "1 bugs by label (function): zero 1, unexplained 0"
    table = selftest.format_table(results).splitlines()
    assert table[-3:-1] == [layer, function]


@pytest.fixture(scope="module")
def layer_corpus() -> list[selftest.BugResult]:
    return [selftest.run_bug(bug) for bug in ALL_BUGS]


def test_layer_corpus_keeps_at_most_two_unexplained(layer_corpus):
    counts = selftest.label_distribution(layer_corpus)
    assert counts[UNEXPLAINED] <= selftest.UNEXPLAINED_TARGET, counts
    assert sum(counts.values()) == len(ALL_BUGS)
    labels = {r.name: r.label for r in layer_corpus}
    assert labels["sigmoid_derivative_of_output"] == ELEMENTWISE_DERIVATIVE
    assert labels["tanh_derivative_of_input"] == ELEMENTWISE_DERIVATIVE
    assert labels["softmax_diagonal_only"] == MISSING_CROSS_TERMS
    assert labels["loss_times_softmax_prime"] == EXTRA_ACTIVATION_DERIVATIVE
    assert labels["binary_ce_derivative"] == GRADIENT_WRT_PROBABILITIES
    assert labels["softmax_kronecker_inverted"] == KRONECKER_INVERTED
    assert labels["lstm_forget_gate_derivative"] == GATE_DERIVATIVE
    assert all(r.diagnosed for r in layer_corpus)


def test_cli_selftest_prints_and_saves_the_labels(capsys):
    assert main(["selftest", "--bug", "tanh_derivative_of_input"]) == 0
    out = capsys.readouterr().out
    assert "1 bugs by label (layer): elementwise_derivative 1, unexplained 0" in out
    assert main(["selftest", "--bug", "softmax_diagonal_only", "--format", "json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["bugs"]
    assert (entry["label"], entry["corpus"]) == (MISSING_CROSS_TERMS, "layer")


def test_a_slope_equal_everywhere_names_the_activation_not_only_a_factor(tmp_path, capsys):
    # The assignment network's equal logits make s * (1 - s) = 0.25 for every element, so the
    # value tests alone read the bug as a constant factor of 0.25.
    out = tmp_path / "r"
    bug = "loss_times_softmax_prime"
    code = main(["check", "--model", "assignment", "--bug", bug, "--out", str(out)])
    root = json.loads((out / "report.json").read_text())["root_causes"][0]
    assert code == 1
    assert (root["layer"], root["quantity"]) == ("loss", "grad_input")
    assert root["diagnosis"] == "extra_activation_derivative"
    assert "constant factor of 0.25" in root["message"]
