"""The labels of the issue-15 corpus, each by its numeric test with a near miss beside it:
``skip_path_missing``, ``missing_mean_term`` and ``repeats_overwritten`` on arrays;
``flipped_kernel``, ``padding_not_removed`` and ``stride_ignored`` by rerunning the reference
convolution; ``truncated_bptt`` by rerunning the reference RNN one step at a time. That each
corpus bug gets its label through ``compare`` is tested with the corpus (``test_selftest``)."""

from __future__ import annotations

import numpy as np
import pytest

from gradparity.core.tolerance import tolerance_for
from gradparity.corpus import conv_bugs, recurrent_bugs
from gradparity.evidence.conv_labels import conv_mistake
from gradparity.evidence.recurrent_labels import step_records, truncation
from gradparity.evidence.structure_labels import (
    missing_mean_axes,
    overwritten_rows,
    skip_path_missing,
)
from gradparity.ours import RNN, Conv2d
from gradparity.pairing.align import LayerPair
from gradparity.pairing.layer_params import pair_layer_parameters
from gradparity.reference.mirror import mirror_layer

TOL = tolerance_for("float64")
RNG = np.random.default_rng(7)


# --- skip_path_missing ----------------------------------------------------------------------


def test_skip_path_missing_when_ours_plus_upstream_is_the_reference():
    ref, upstream = RNG.standard_normal((2, 4, 5))
    assert skip_path_missing(ref - upstream, ref, upstream, TOL)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_skip_path_missing_near_miss_another_multiple_of_upstream(factor):
    ref, upstream = RNG.standard_normal((2, 4, 5))
    assert not skip_path_missing(ref - factor * upstream, ref, upstream, TOL)
    assert not skip_path_missing(ref, ref, upstream, TOL)  # nothing differs
    assert not skip_path_missing(ref - upstream, ref, upstream[:, :3], TOL)  # shape changes


# --- missing_mean_term ----------------------------------------------------------------------


def _centred(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return a - a.mean(axis=axes, keepdims=True)


def test_missing_mean_term_over_the_batch_per_channel():
    ref = _centred(RNG.standard_normal((6, 3, 2, 2)), (0, 2, 3))  # batch norm's: zero mean
    ours = ref + RNG.standard_normal((1, 3, 1, 1))
    assert missing_mean_axes(ours, ref, TOL) == "batch"


def test_missing_mean_term_over_the_features_per_example():
    ref = _centred(RNG.standard_normal((6, 5)), (1,))  # layer norm's: zero mean per example
    ours = ref + RNG.standard_normal((6, 1))
    assert missing_mean_axes(ours, ref, TOL) == "features"


def test_missing_mean_term_near_miss_a_reference_without_zero_mean():
    ref = RNG.standard_normal((6, 4))  # not centred: a shift by a constant is something else
    assert missing_mean_axes(ref + RNG.standard_normal((1, 4)), ref, TOL) is None
    centred = _centred(ref, (0,))
    assert missing_mean_axes(1.5 * centred + 1.0, centred, TOL) is None  # scaled too
    assert missing_mean_axes(centred, centred, TOL) is None


# --- repeats_overwritten --------------------------------------------------------------------


def _embedding_grads(indices: np.ndarray, upstream: np.ndarray, vocab: int):
    """(summed, assigned): the right weight gradient and the overwritten one."""
    summed = np.zeros((vocab, upstream.shape[-1]))
    np.add.at(summed, indices.reshape(-1), upstream.reshape(-1, upstream.shape[-1]))
    assigned = np.zeros_like(summed)
    assigned[indices.reshape(-1)] = upstream.reshape(-1, upstream.shape[-1])
    return summed, assigned


def test_repeats_overwritten_when_repeated_rows_keep_one_occurrence():
    indices = np.array([[0, 2, 2], [3, 0, 1]])
    upstream = RNG.standard_normal((2, 3, 4))
    summed, assigned = _embedding_grads(indices, upstream, vocab=5)
    found = overwritten_rows(assigned, summed, indices.astype(np.float64), upstream, TOL)
    assert found == {"differing_rows": 2, "repeated_rows": 2}


def test_repeats_overwritten_near_misses():
    indices = np.array([[0, 2, 2], [3, 0, 1]])
    upstream = RNG.standard_normal((2, 3, 4))
    summed, assigned = _embedding_grads(indices, upstream, vocab=5)
    counts = np.bincount(indices.reshape(-1), minlength=5)[:, None]
    averaged = summed / np.maximum(counts, 1)  # the mean of the repeats: not one occurrence
    assert overwritten_rows(averaged, summed, indices, upstream, TOL) is None
    once_wrong = summed.copy()
    once_wrong[3] *= 2  # index 3 occurs once: a repeat cannot explain it
    assert overwritten_rows(once_wrong, summed, indices, upstream, TOL) is None
    assert overwritten_rows(assigned, summed, indices + 0.5, upstream, TOL) is None


# --- convolution ----------------------------------------------------------------------------


def _conv_case(layer_type: type, stride: int = 2, padding: int = 1):
    rng = np.random.default_rng(3)
    layer = layer_type(3, 4, 3, stride=stride, padding=padding, rng=rng)
    reference = mirror_layer(layer)
    x = rng.standard_normal((2, 3, 8, 8))
    upstream = rng.standard_normal(layer.forward(x).shape)
    return reference, x, upstream, layer.backward(upstream)


@pytest.mark.parametrize(
    ("layer_type", "label"),
    [
        (conv_bugs.ConvInputGradNotFlipped, "flipped_kernel"),
        (conv_bugs.ConvPaddingIgnoredInBackward, "padding_not_removed"),
        (conv_bugs.ConvStrideIgnoredInBackward, "stride_ignored"),
    ],
)
def test_conv_mistake_is_the_one_that_reproduces_ours(layer_type, label):
    reference, x, upstream, ours = _conv_case(layer_type)
    assert conv_mistake(reference, x, upstream, ours, TOL) == label


def test_conv_mistake_near_misses():
    reference, x, upstream, ours = _conv_case(Conv2d)
    assert conv_mistake(reference, x, upstream, 1.5 * ours, TOL) is None
    # without stride and padding only the kernel test can apply, and a scaled one fails it
    reference, x, upstream, ours = _conv_case(conv_bugs.ConvInputGradNotFlipped, 1, 0)
    assert conv_mistake(reference, x, upstream, ours, TOL) == "flipped_kernel"
    assert conv_mistake(reference, x, upstream, 1.5 * ours, TOL) is None
    assert conv_mistake(mirror_layer(RNN(3, 4, rng=RNG)), x, upstream, ours, TOL) is None


# --- truncated backprop through time --------------------------------------------------------


def _rnn_case(layer_type: type):
    rng = np.random.default_rng(5)
    layer = layer_type(3, 4, rng=rng)
    module = mirror_layer(layer)
    pair = LayerPair("rnn", layer, "rnn", module)
    pair_layer_parameters([pair], rng)
    x = rng.standard_normal((2, 5, 3))
    upstream = rng.standard_normal(layer.forward(x).shape)
    layer.backward(upstream)
    return pair, x, upstream, layer.grads["weight_hh"]


def test_truncated_bptt_last_step_only():
    pair, x, upstream, ours = _rnn_case(recurrent_bugs.RNNWeightHHLastStepOnly)
    assert truncation(pair, x, upstream, "grad:weight_hh", ours, TOL) == "last step only"


def test_truncated_bptt_one_step_each_and_the_near_miss():
    pair, x, upstream, right = _rnn_case(RNN)
    assert truncation(pair, x, upstream, "grad:weight_hh", right, TOL) is None
    steps = step_records(pair.torch_module, x, upstream)
    assert len(steps) == x.shape[1]
    name = next(p.torch_name for p in pair.params if p.key == "weight_hh")
    each = sum(s.grads[name] for s in steps)
    assert truncation(pair, x, upstream, "grad:weight_hh", each, TOL) == "one step each"
    assert truncation(pair, x, upstream, "grad:weight_hh", 0.5 * each, TOL) is None
