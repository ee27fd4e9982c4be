"""Max pooling over a ReLU's zeros (tied maxima) under the autodiff reference: the pool's and
the convolution's own forwards run on tensors (``sliding_window_view`` has a tensor version),
so autograd routes a tied window's gradient through the forward's own ``argmax`` (the first
maximum, as torch does) and a correct network gives no finding; central differences split it
between the tied elements and gave a false one. The conv corpus bugs now run there too."""

from __future__ import annotations

import numpy as np
import pytest
import torch._numpy as tnp
from numpy.lib.stride_tricks import sliding_window_view

import gradparity as gp
from gradparity.core.labels import TIED_MAXIMA
from gradparity.corpus import conv_bugs, selftest
from gradparity.corpus.all_bugs import AUTODIFF_BUGS
from gradparity.ours import Flatten, Linear, MaxPool2d, ReLU, Sequential
from gradparity.sides.tensor_versions import tensor_sliding_window_view


def _max_pool_over_relu(seed: int = 0):
    """x (4, 2, 8, 8) -> relu -> 2x2 max pool -> flatten -> fc -> logits (4, 3): about half of
    the pool's inputs are 0, and some windows are all 0 (every element a tied maximum)."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("act", ReLU()),
        ("pool", MaxPool2d(2)),
        ("flat", Flatten()),
        ("fc", Linear(2 * 4 * 4, 3, rng=rng)),
    )
    return model, rng.standard_normal((4, 2, 8, 8)) - 0.5, rng.integers(0, 3, size=4)


def _has_an_all_zero_window(x: np.ndarray) -> bool:
    relu = np.maximum(x, 0).reshape(4, 2, 4, 2, 4, 2)
    return bool((relu.max(axis=(3, 5)) == 0).any())


def _on_tensors_notes(report: gp.Report) -> list[str]:
    return [n for n in report.notes if "cannot run on tensors" in n]


@pytest.mark.parametrize("seed", [0, 3])
def test_a_correct_max_pool_over_relu_gives_no_finding_under_autodiff(seed):
    model, x, target = _max_pool_over_relu(seed)
    assert _has_an_all_zero_window(x)  # the case that used to give a false finding
    report = gp.compare(model, "autodiff", x, target)
    assert report.ok, [(f.layer, f.diagnosis) for f in report.root_causes]
    assert not _on_tensors_notes(report)  # exact, not central differences


def test_the_conv_network_runs_on_tensors_and_is_clean():
    model, loss, x, target = conv_bugs.conv_network(0)
    report = gp.compare(model, "autodiff", x, target, ours_loss=loss)
    assert report.ok and not _on_tensors_notes(report)


def test_a_pool_routing_a_tie_to_every_maximum_is_still_found():
    class EveryTiedMaximum(MaxPool2d):
        def backward(self, grad_out):
            x = self._x
            windows = x.reshape(*x.shape[:2], x.shape[2] // 2, 2, x.shape[3] // 2, 2)
            top = windows.max(axis=(3, 5), keepdims=True)
            routed = (windows == top) * grad_out[:, :, :, None, :, None]
            return routed.reshape(x.shape)

        def forward(self, x):
            self._x = x
            return super().forward(x)

    model, x, target = _max_pool_over_relu()
    layers = [(n, EveryTiedMaximum(2) if n == "pool" else la) for n, la in model.named_layers()]
    report = gp.compare(Sequential(*layers), "autodiff", x, target)
    (finding,) = report.root_causes
    assert (finding.layer, finding.quantity, finding.diagnosis) == (
        "pool",
        "grad_input",
        TIED_MAXIMA,
    )


@pytest.mark.parametrize(
    ("shape", "window", "axis"),
    [
        ((2, 3, 5, 6), (2, 3), (2, 3)),
        ((4, 5), (2, 3), None),
        ((3, 7), (3,), -1),
        ((2, 6, 4), 3, 1),
        ((2, 6, 4), (3, 2), (2, 0)),
        ((7, 3), (2, 3), (0, 0)),  # an axis repeated
    ],
)
def test_the_tensor_sliding_window_view_is_numpys(shape, window, axis):
    x = np.random.default_rng(0).standard_normal(shape)
    got = tensor_sliding_window_view(tnp.asarray(x), window, axis)
    np.testing.assert_array_equal(got.tensor.numpy(), sliding_window_view(x, window, axis))
    plain = tensor_sliding_window_view(x, window, axis)  # a NumPy array goes to NumPy
    assert isinstance(plain, np.ndarray) and plain.shape == got.shape


def test_the_conv_corpus_bugs_run_through_autodiff_with_their_labels():
    names = {b.name for b in AUTODIFF_BUGS}
    conv = [b for b in conv_bugs.BUGS if b.layer == "conv2"]
    assert {b.name for b in conv} <= names
    for bug in conv:
        result = selftest.run_bug(bug, autodiff=True)
        assert result.localized and result.diagnosed, (bug.name, result.found)
        assert not result.not_on_tensors
