"""Bugs injected into ours (subclasses overriding backward) are pinned to the right layer and
quantity in ``isolate`` mode; layers wrong only because of upstream are ``inherited``."""

from __future__ import annotations

import numpy as np
import pytest

import gradparity as gp
from gradparity.ours import Linear, Sequential, Sigmoid, SoftmaxCrossEntropy, Tanh
from gradparity.reference import mirror

N, D = 6, 4  # batch size; every weight is D x D so a transposed gradient keeps its shape


class SignFlippedLoss(SoftmaxCrossEntropy):
    def backward(self):
        return -super().backward()


class BiasNotSummed(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["b"] = grad_out.copy()  # (N, out) instead of (out,)
        return grad_x


class TransposedWeightGrad(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["W"] = np.ascontiguousarray(self.grads["W"].T)
        return grad_x


def model(fc1=Linear, fc2=Linear, fc3=Linear) -> Sequential:
    rng = np.random.default_rng(0)
    return Sequential(
        ("fc1", fc1(D, D, rng=rng)),
        ("act1", Tanh()),
        ("fc2", fc2(D, D, rng=rng)),
        ("act2", Sigmoid()),
        ("fc3", fc3(D, D, rng=rng)),
    )


def data(seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, D)), rng.integers(0, D, N)


def run(net: Sequential, loss=None):
    x, t = data()
    return gp.compare(net, mirror(net), x, t, ours_loss=loss)


def isolate(report):
    t = report.table
    return t[t["mode"] == "isolate"]


def chain(report):
    t = report.table
    return t[t["mode"] == "chain"]


def pinned(report) -> set[tuple[str, str]]:
    iso = isolate(report)
    bad = iso[iso["status"] == "root_cause"]
    return set(zip(bad["layer"], bad["quantity"]))


def check_only(report, expected: dict[tuple[str, str], str]) -> None:
    """The isolate root-cause rows, the findings and their diagnoses are exactly ``expected``."""
    assert not report.ok
    iso = isolate(report)
    assert set(iso["status"]) <= {"ok", "root_cause"}
    assert pinned(report) == set(expected)
    for (layer, quantity), label in expected.items():
        row = iso[(iso["layer"] == layer) & (iso["quantity"] == quantity)]
        assert list(row["diagnosis"]) == [label], row.to_string()
    found = {(f.layer, f.quantity): f for f in report.root_causes}
    assert set(found) == set(expected)
    assert len(report.root_causes) == len(expected)
    for key, label in expected.items():
        assert found[key].diagnosis == label
        assert found[key].mode == "isolate"
    # in the chain run nothing outside the expected set is a root cause
    ch = chain(report)
    chain_roots = ch[ch["status"] == "root_cause"]
    assert set(zip(chain_roots["layer"], chain_roots["quantity"])) <= set(expected)


def test_clean_model_is_ok():
    report = run(model())
    assert report.ok, report.summary()


def test_loss_gradient_sign_flipped():
    report = run(model(), loss=SignFlippedLoss())
    check_only(report, {("loss", "grad_input"): "sign_flipped"})


def test_bias_gradient_not_summed():
    report = run(model(fc2=BiasNotSummed))
    check_only(report, {("fc2", "grad:b"): "not_reduced"})
    row = isolate(report).query("layer == 'fc2' and quantity == 'grad:b'").iloc[0]
    assert list(row["shape_ours"]) == [N, D]
    assert list(row["shape_ref"]) == [D]


def test_transposed_weight_gradient():
    report = run(model(fc1=TransposedWeightGrad))
    check_only(report, {("fc1", "grad:W"): "transposed"})


def test_three_bugs_in_one_run():
    report = run(model(fc1=BiasNotSummed, fc3=TransposedWeightGrad), loss=SignFlippedLoss())
    expected = {
        ("loss", "grad_input"): "sign_flipped",
        ("fc1", "grad:b"): "not_reduced",
        ("fc3", "grad:W"): "transposed",
    }
    check_only(report, expected)
    assert len({f.layer for f in report.root_causes}) == 3


@pytest.mark.parametrize("bug", ["loss", "fc3"])
def test_downstream_layers_are_inherited_in_chain(bug):
    """A sign-flipped dL/dlogits (or a bad fc3) makes every gradient below it wrong in the
    chain run: inherited, never root_cause, and never a finding."""
    if bug == "loss":
        report = run(model(), loss=SignFlippedLoss())
        culprit = ("loss", "grad_input")
    else:

        class WrongGradInput(Linear):
            def backward(self, grad_out):
                return 2.0 * super().backward(grad_out)

        report = run(model(fc3=WrongGradInput))
        culprit = ("fc3", "grad_input")
    ch = chain(report)
    assert set(ch["mode"]) == {"chain"}
    for _, row in ch.iterrows():
        key = (row["layer"], row["quantity"])
        if key == culprit:
            assert row["status"] == "root_cause"
        elif row["quantity"] == "output" or row["layer"] in ("loss", culprit[0]):
            # forward values and the culprit's own parameter gradients are fine
            # (fc3's parameter gradients only use its input and the upstream gradient)
            assert row["status"] == "ok", row.to_dict()
        else:
            assert row["status"] == "inherited", row.to_dict()
    assert [(f.layer, f.quantity) for f in report.root_causes] == [culprit]
    # every other layer is fine when judged alone
    iso = isolate(report)
    others = iso[(iso["layer"] != culprit[0])]
    assert (others["status"] == "ok").all()


def test_forward_bug_inherited_downstream():
    """A wrong output spreads forward: later outputs are inherited, the loss too."""

    class ShiftedOutput(Linear):
        def forward(self, x):
            return super().forward(x) + 0.5

    report = run(model(fc2=ShiftedOutput))
    ch = chain(report)
    out = ch[ch["quantity"] == "output"].set_index("layer")["status"]
    assert out["fc1"] == "ok" and out["act1"] == "ok"
    assert out["fc2"] == "root_cause"
    assert out["act2"] == "inherited" and out["fc3"] == "inherited" and out["loss"] == "inherited"
    assert "root_cause" not in set(ch[ch["layer"] != "fc2"]["status"])
    assert [(f.layer, f.quantity) for f in report.root_causes] == [("fc2", "output")]
