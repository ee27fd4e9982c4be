"""Known answers of the course assignment network, on ours, on torch and through the harness."""

import numpy as np
import pytest
import torch

import gradparity as gp
from gradparity.ours import SoftmaxCrossEntropy, assignment_data, assignment_network
from gradparity.reference import mirror

LOSS = np.log(2.0)
DV = np.tile([[-0.44039854, 0.44039854]], (3, 1))
DC = np.array([-0.5, 0.5])

# What the hand-written version of this network once reported: every number wrong.
WRONG_DV = np.full((2, 3), 0.11009963)
WRONG_DC = np.array([0.125, 0.125])


def test_ours_known_answer():
    model, loss = assignment_network(), SoftmaxCrossEntropy()
    x, target = assignment_data()
    value = loss.forward(model.forward(x), target)
    model.backward(loss.backward())
    assert value == pytest.approx(LOSS, abs=1e-12)
    np.testing.assert_allclose(model["fc2"].grads["W"], DV, atol=1e-8)
    np.testing.assert_allclose(model["fc2"].grads["b"], DC, atol=1e-12)
    np.testing.assert_array_equal(model["fc1"].grads["W"], np.zeros((2, 3)))
    np.testing.assert_array_equal(model["fc1"].grads["b"], np.zeros(3))


def test_torch_known_answer():
    ref = mirror(assignment_network())
    x, target = assignment_data()
    loss = torch.nn.CrossEntropyLoss()(ref(torch.as_tensor(x)), torch.as_tensor(target))
    loss.backward()
    assert loss.item() == pytest.approx(LOSS, abs=1e-12)
    # torch stores V transposed: (out, in) = (2, 3)
    np.testing.assert_allclose(ref.fc2.weight.grad.numpy(), DV.T, atol=1e-8)
    np.testing.assert_allclose(ref.fc2.bias.grad.numpy(), DC, atol=1e-12)
    assert not ref.fc1.weight.grad.any() and not ref.fc1.bias.grad.any()


def test_the_old_wrong_answer_is_not_ours():
    model, loss = assignment_network(), SoftmaxCrossEntropy()
    x, target = assignment_data()
    loss.forward(model.forward(x), target)
    model.backward(loss.backward())
    assert model["fc2"].grads["W"].shape != WRONG_DV.shape
    assert not np.allclose(model["fc2"].grads["b"], WRONG_DC)


def test_harness_finds_parity_on_assignment():
    model = assignment_network()
    x, target = assignment_data()
    report = gp.compare(model, mirror(model), x, target)
    assert report.ok, report.summary()
    modes = set(report.table["mode"])
    assert modes == {"chain", "isolate"}
    loss_row = report.table.query("mode == 'chain' and layer == 'loss' and quantity == 'output'")
    assert len(loss_row) == 1 and loss_row.iloc[0]["max_abs"] == 0.0


def test_harness_names_a_broken_loss_backward_on_assignment():
    class HalfLoss(SoftmaxCrossEntropy):
        def backward(self):
            return super().backward() * 0.5

    model = assignment_network()
    x, target = assignment_data()
    report = gp.compare(model, mirror(model), x, target, ours_loss=HalfLoss())
    assert not report.ok
    assert [(f.layer, f.quantity) for f in report.root_causes] == [("loss", "grad_input")]
    assert report.root_causes[0].diagnosis == "scaled"
    assert report.root_causes[0].detail["factor"] == pytest.approx(0.5)


def test_unsynced_weights_are_named_in_the_notes():
    model, x, target = assignment_network(), *assignment_data()
    ref = mirror(model)
    assert gp.compare(model, ref, x, target, sync_weights=False).notes == []
    with torch.no_grad():
        ref.fc2.bias += 0.5
    report = gp.compare(model, ref, x, target, sync_weights=False)
    assert not report.ok
    assert any("fc2.b differs from the reference's bias" in n for n in report.notes)
