"""Layout conversions between a NumPy parameter and the torch parameter with the same numbers
(``gradparity.reference.layout``): which conversions fit two shapes, and that each is undone."""

from __future__ import annotations

import numpy as np
import pytest

from gradparity.reference.layout import (
    IDENTITY,
    RESHAPE,
    TRANSPOSE,
    candidate_conversions,
    describe,
    squeezed,
    to_ours_layout,
    to_torch_layout,
)


@pytest.mark.parametrize(
    ("ours", "torch_shape", "expected"),
    [
        ((3, 2), (3, 2), [IDENTITY]),
        ((2, 3), (3, 2), [TRANSPOSE]),  # a weight stored (in, out) against torch's (out, in)
        ((4, 4), (4, 4), [IDENTITY, TRANSPOSE]),  # square: the shape cannot tell
        ((1, 5), (5,), [RESHAPE]),
        ((5, 1), (5,), [RESHAPE]),
        ((5,), (1, 5), [RESHAPE]),
        ((1, 1), (1,), [RESHAPE]),
        ((6,), (6,), [IDENTITY]),
        ((2, 3), (6,), []),  # same size, but not singleton axes only
        ((2, 3), (2, 4), []),
        ((2, 3, 4), (4, 3, 2), []),  # only 2-D arrays are transposed
        ((), (), [IDENTITY]),
    ],
)
def test_candidate_conversions(ours, torch_shape, expected):
    assert candidate_conversions(ours, torch_shape) == expected


def test_candidate_conversions_accept_lists():
    assert candidate_conversions([2, 3], [3, 2]) == [TRANSPOSE]
    assert candidate_conversions([1, 3], (3,)) == [RESHAPE]


def test_the_names_are_the_documented_ones():
    assert (IDENTITY, TRANSPOSE, RESHAPE) == ("identity", "transpose", "reshape")


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((5, 1), (5,)), ((1, 5), (5,)), ((1, 1), ()), ((2, 1, 3), (2, 3)), ((), ()), ((4,), (4,))],
)
def test_squeezed_drops_singleton_axes_only(shape, expected):
    assert squeezed(shape) == expected


def test_transpose_round_trip():
    ours = np.arange(6.0).reshape(2, 3)
    theirs = to_torch_layout(ours, TRANSPOSE, (3, 2))
    np.testing.assert_array_equal(theirs, ours.T)
    assert theirs.flags.c_contiguous
    back = to_ours_layout(theirs, TRANSPOSE, (2, 3))
    np.testing.assert_array_equal(back, ours)
    assert back.flags.c_contiguous


@pytest.mark.parametrize("conversion", [IDENTITY, RESHAPE])
def test_identity_and_reshape_round_trip(conversion):
    ours = np.arange(5.0).reshape(1, 5)
    theirs = to_torch_layout(ours, conversion, (5,))
    assert theirs.shape == (5,)
    np.testing.assert_array_equal(theirs, [0.0, 1.0, 2.0, 3.0, 4.0])
    back = to_ours_layout(theirs, conversion, (1, 5))
    assert back.shape == (1, 5)
    np.testing.assert_array_equal(back, ours)


def test_conversions_give_contiguous_arrays_from_views():
    """torch.from_numpy and in-place copies need contiguous memory: a strided view comes back
    contiguous with the same values."""
    view = np.arange(12.0).reshape(3, 4)[:, ::2]
    for out in (
        to_torch_layout(view, IDENTITY, (3, 2)),
        to_ours_layout(view, IDENTITY, (3, 2)),
        to_torch_layout(view, TRANSPOSE, (2, 3)),
        to_ours_layout(view, TRANSPOSE, (2, 3)),
    ):
        assert out.flags.c_contiguous
    np.testing.assert_array_equal(to_torch_layout(view, IDENTITY, (3, 2)), view)
    np.testing.assert_array_equal(to_ours_layout(view, TRANSPOSE, (2, 3)), view.T)


def test_describe_names_the_conversion_and_both_shapes():
    assert describe(TRANSPOSE, (2, 3), (3, 2)) == "transpose (2, 3) -> (3, 2)"
    assert describe(RESHAPE, [1, 5], [5]) == "reshape (1, 5) -> (5,)"
