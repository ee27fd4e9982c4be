"""The model zoo of ``--model``: cnn, bn-cnn, resmlp and lstm beside assignment and mlp.

Each is an ours ``Sequential`` with a torch mirror; ``gradparity check --model NAME`` reaches
parity in float64 and float32, ``gradparity train --model NAME`` trains on the 8x8 digits
(images for the conv models, rows for the LSTM) with no divergent step, and a wrong backward
in the zoo's own layer is found where it is.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gradparity.cli import zoo
from gradparity.cli.main import TRAIN_MODELS, main
from gradparity.ours import Dropout, SoftmaxCrossEntropy
from gradparity.ours.containers import Sequential
from gradparity.ours.zoo import LastStep, bn_cnn, cnn, lstm_classifier, resmlp
from gradparity.pipelines.layers import compare
from gradparity.reference import mirror

ZOO = ("cnn", "bn-cnn", "resmlp", "lstm")


def ours_forward(model: Sequential, x: np.ndarray) -> np.ndarray:
    return model.forward(x.copy())


def torch_forward(model: Sequential, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return mirror(model)(torch.as_tensor(x)).numpy()


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_is_listed_for_check_and_train(name):
    assert name in zoo.MODELS
    assert name in TRAIN_MODELS
    setup = zoo.build(name, seed=0)
    assert isinstance(setup.ours, Sequential)
    assert setup.x.shape[0] == setup.target.shape[0]
    assert ours_forward(setup.ours, setup.x).shape == (setup.x.shape[0], 10)


@pytest.mark.parametrize(
    ("builder", "shape"),
    [
        (lambda: cnn(28), (3, 1, 28, 28)),
        (lambda: cnn(8), (3, 1, 8, 8)),
        (lambda: bn_cnn(8, dropout=0.0), (3, 1, 8, 8)),
        (lambda: resmlp(64), (3, 64)),
        (lambda: lstm_classifier(8), (3, 8, 8)),
    ],
)
def test_mirror_computes_the_same_logits(builder, shape):
    model = builder()
    x = np.random.default_rng(3).standard_normal(shape)
    ours = ours_forward(model, x)
    assert ours.shape == (3, 10)
    np.testing.assert_allclose(ours, torch_forward(model, x), rtol=1e-10, atol=1e-12)


def test_conv_models_take_the_image_size():
    assert cnn(28)["fc"].params["W"].shape == (8 * 7 * 7, 10)
    assert cnn(8)["fc"].params["W"].shape == (8 * 2 * 2, 10)
    assert bn_cnn(8, n_classes=3)["fc"].params["W"].shape == (8 * 2 * 2, 3)
    with pytest.raises(ValueError, match="at least 4x4"):
        cnn(3)


def test_bn_cnn_convs_have_no_bias_before_batch_norm():
    model = bn_cnn(8)
    assert set(model["conv1"].params) == {"W"}
    assert set(model["conv2"].params) == {"W"}
    assert set(cnn(8)["conv1"].params) == {"W", "b"}


def test_last_step_backward_matches_autograd():
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    grad_out = np.random.default_rng(1).standard_normal((2, 3))
    layer = LastStep()
    assert np.array_equal(layer.forward(x), x[:, -1])
    xt = torch.tensor(x, requires_grad=True)
    mirror(Sequential(("last", LastStep())))(xt).backward(torch.as_tensor(grad_out))
    np.testing.assert_array_equal(layer.backward(grad_out), xt.grad.numpy())
    with pytest.raises(ValueError, match=r"\(N, T, H\)"):
        layer.forward(x[0])


def test_bn_cnn_check_drops_units_with_a_pinned_mask():
    setup = zoo.build("bn-cnn", seed=0)
    drop = setup.ours["drop"]
    assert isinstance(drop, Dropout) and drop.training and drop.p == zoo.DROPOUT_P
    assert drop.pinned_mask is not None and not drop.pinned_mask.all()
    assert setup.ours["bn1"].training


@pytest.mark.parametrize("name", ZOO)
def test_check_model_reaches_parity_in_float64(name, tmp_path, capsys):
    code = main(["check", "--model", name, "--format", "json", "--out", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, [f["message"] for f in report["root_causes"]]
    assert report["ok"] is True


@pytest.mark.parametrize("name", ZOO)
def test_check_model_reaches_parity_in_float32(name):
    """What ``check --model NAME --dtype float32`` compares (the report files left out)."""
    setup = zoo.build(name, seed=0)
    report = compare(
        setup.ours, setup.reference, setup.x, setup.target, SoftmaxCrossEntropy(), dtype="float32"
    )
    assert report.ok, [f.message for f in report.root_causes]


def test_a_wrong_last_step_backward_is_found_at_that_layer():
    class FirstStepGradient(LastStep):
        def backward(self, grad_out):
            grad_x = np.zeros(self._shape, dtype=grad_out.dtype)
            grad_x[:, 0] = grad_out  # the gradient sent to the wrong time step
            return grad_x

    model = lstm_classifier(8)
    buggy = Sequential(
        *(
            (name, FirstStepGradient() if name == "last" else layer)
            for name, layer in model.named_layers()
        )
    )
    x = np.random.default_rng(0).standard_normal((2, 8, 8))
    report = compare(buggy, mirror(model), x, np.array([3, 7]), SoftmaxCrossEntropy())
    assert not report.ok
    assert report.root_causes[0].layer == "last"


def test_train_model_shapes_the_flat_digits():
    for name, shape in [("cnn", (1, 8, 8)), ("lstm", (8, 8)), ("resmlp", (64,))]:
        model, example = zoo.train_model(name, 64, 10, seed=0)
        assert example == shape
        assert ours_forward(model, np.zeros((2, *shape))).shape == (2, 10)
    model, _ = zoo.train_model("bn-cnn", 64, 10, seed=0)
    assert not model["drop"].training and model["bn1"].training


def test_train_refuses_features_that_are_no_square_image(capsys):
    code = main(["train", "--model", "cnn", "--dataset", "synth", "--steps", "1"])
    assert code == 2
    assert "square" in capsys.readouterr().err


@pytest.mark.parametrize("name", ZOO)
def test_train_model_on_digits_without_divergence(name, tmp_path, capsys):
    out = tmp_path / name
    argv = ["train", "--model", name, "--steps", "2", "--batch-size", "8", "--out", str(out)]
    code = main(argv)
    text = capsys.readouterr().out
    assert code == 0, text
    assert f"{name}-digits-sgd: 2 steps" in text
    assert "no divergence" in text
    data = json.loads((out / "report.json").read_text())
    assert data["first_divergent_step"] is None


def test_the_zoo_builders_are_exported_from_ours():
    import gradparity.ours as ours
    from gradparity.ours import zoo as zoo_module

    exported = ("LastStep", "bn_cnn", "cnn", "lstm_classifier", "resmlp")
    for name in exported:
        assert name in ours.__all__ and getattr(ours, name) is getattr(zoo_module, name)
    assert ours.__all__ == sorted(ours.__all__, key=lambda n: (not n.isupper(), n))
