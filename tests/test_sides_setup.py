"""The front ends' shared preparation (gradparity/sides/setup.py) and LayerPair.torch_module."""

import numpy as np
import pytest
import torch

from gradparity.core.errors import InputError
from gradparity.ours import MSE, Linear, SoftmaxCrossEntropy
from gradparity.pairing.align import LayerPair
from gradparity.sides.run_numpy import warm_input
from gradparity.sides.setup import reference_copy, resolve_losses


def test_warm_input_differs_keeps_shape_and_dtype_and_stays_finite_near_the_largest_float():
    rng = np.random.default_rng(0)
    a = np.ones((3, 2))
    warm = warm_input(a, rng)
    assert warm.shape == a.shape and warm.dtype == a.dtype and not np.array_equal(warm, a)
    huge = np.full((2, 2), -np.finfo(np.float32).max, dtype=np.float32)
    warm = warm_input(huge, rng)
    assert warm.dtype == np.float32 and np.isfinite(warm).all()


def test_resolve_losses_defaults_to_softmax_cross_entropy_and_mirrors_a_known_loss():
    ours, ref = resolve_losses(None, None)
    assert isinstance(ours, SoftmaxCrossEntropy) and callable(ref)
    ours, ref = resolve_losses(MSE(), None)
    assert isinstance(ours, MSE)
    out, target = torch.zeros(2, 3), torch.ones(2, 3)
    assert float(ref(out, target)) == pytest.approx(1.0)


def test_resolve_losses_refuses_a_reference_loss_that_is_not_callable():
    with pytest.raises(InputError, match="reference_loss must be callable"):
        resolve_losses(None, 3)


def test_reference_copy_is_a_private_copy_in_the_dtype_and_refuses_other_objects():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()).train()
    model[1].eval()
    copy, empty = reference_copy(model, "float64")
    # Each module keeps the mode it was given, and the user's model is left alone.
    assert copy is not model and [m.training for m in copy.modules()] == [True, True, False]
    assert [m.training for m in model.modules()] == [True, True, False]
    model.eval()
    assert copy.training
    assert copy[0].weight.dtype == torch.float64 and model[0].weight.dtype == torch.float32
    assert empty == []
    with pytest.raises(InputError, match=r"must be a torch\.nn\.Module, got list"):
        reference_copy([], "float64")


def test_torch_module_is_the_module_and_the_loss_pair_has_none():
    module = torch.nn.Linear(2, 2)
    assert LayerPair("fc", Linear(2, 2), "0", module).torch_module is module
    with pytest.raises(ValueError, match="'loss' is paired with no torch module"):
        _ = LayerPair("loss", SoftmaxCrossEntropy(), "loss", None).torch_module
