"""Dropout in training mode: the harness shares each mask between the sides in every pass
(``gradparity.sides.dropout_masks``), so a correct model reaches parity and a dropout bug is
still found with its label."""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.core.labels import DROPOUT_MASK_UNSHARED, MASK_MISSING, SCALED
from gradparity.corpus.norm_bugs import DropoutNotScaled
from gradparity.ours import Dropout, Linear, ReLU, Tanh
from gradparity.ours.zoo import bn_cnn
from gradparity.reference import mirror
from gradparity.reference.mirror_norm import MaskedDropout
from gradparity.sides.dropout_masks import draws_own_mask, keep_of

BATCH = 8


class BookDropout:
    """The textbook layer: draws its mask from np.random at each forward, keeps it in
    self.mask (scaled by 1 / (1 - p)) for backward, and takes no mask from outside."""

    def __init__(self, p: float = 0.5) -> None:
        self.p, self.mask, self.params, self.grads = p, None, {}, {}

    def forward(self, x):
        self.mask = (np.random.rand(*x.shape) >= self.p) / (1 - self.p)
        return x * self.mask

    def backward(self, grad_out):
        return grad_out * self.mask


class HiddenMaskDropout:
    """Keeps its mask under a name the harness cannot know, and takes none."""

    def __init__(self, p: float = 0.5) -> None:
        self.p, self.params, self.grads = p, {}, {}

    def forward(self, x):
        self._m = (np.random.rand(*x.shape) >= self.p) / (1 - self.p)
        return x * self._m

    def backward(self, grad_out):
        return grad_out * self._m


class BackwardWithoutMask(Dropout):
    """Bug: backward scales but forgets the mask."""

    def backward(self, grad_out):
        return grad_out / (1 - self.p)


class RecordingDropout(Dropout):
    """ours' Dropout that logs every training mask it applies (a class list: copies share it)."""

    applied: ClassVar[list[np.ndarray]] = []

    def forward(self, x):
        out = super().forward(x)
        if self.mask is not None:
            RecordingDropout.applied.append(self.mask.copy())
        return out


def small_model(drop, first=Tanh):
    """x (8, 5) -> fc1 -> act -> drop -> fc2 -> (8, 3) with its torch twin (nn.Dropout)."""
    rng = np.random.default_rng(0)
    ours = [("fc1", Linear(5, 6, rng=rng)), ("act", first()), ("drop", drop)]
    ours.append(("fc2", Linear(6, 3, rng=rng)))
    act = nn.Tanh() if first is Tanh else nn.ReLU()
    modules = OrderedDict(
        fc1=nn.Linear(5, 6), act=act, drop=nn.Dropout(drop.p), fc2=nn.Linear(6, 3)
    )
    return ours, nn.Sequential(modules).double()


def data(seed: int = 1, shape: tuple[int, ...] = (5,)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, *shape)), rng.integers(0, 3, BATCH)


def bn_cnn_pair():
    """The zoo's bn-cnn (8x8 images) in training mode, no mask pinned, and its mirror with a
    plain torch nn.Dropout that draws its own masks."""
    ours = bn_cnn(8, seed=0, dropout=0.25)
    reference = mirror(ours)
    reference.drop = nn.Dropout(0.25)
    return ours, reference


def dropout_notes(report) -> list[str]:
    return [n for n in report.notes if n.startswith("dropout masks shared")]


def test_zoo_bn_cnn_in_train_mode_reaches_parity_in_compare():
    ours, reference = bn_cnn_pair()
    assert ours["drop"].training and reference.drop.training
    x, y = data(shape=(1, 8, 8))
    before = torch.get_rng_state()
    report = gp.compare(ours, reference, x, y)
    assert report.ok, [f.message for f in report.root_causes]
    (note,) = dropout_notes(report)
    assert "reference -> ours" in note and "pinned_mask" in note
    # Nothing the user holds changed: ours' pin is back to None, torch's generator unmoved.
    assert ours["drop"].pinned_mask is None
    assert torch.equal(torch.get_rng_state(), before)
    assert not reference.drop._forward_hooks


def test_zoo_bn_cnn_in_train_mode_reaches_parity_in_compare_training():
    ours, reference = bn_cnn_pair()
    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((6, 1, 8, 8)), rng.integers(0, 10, 6)) for _ in range(3)]
    report = gp.compare_training(ours, reference, batches)
    assert report.ok, [f.message for f in report.root_causes]
    assert len(report.history) == 3 and dropout_notes(report)


def test_compare_training_shares_a_fresh_mask_each_step():
    RecordingDropout.applied.clear()
    ours, reference = small_model(RecordingDropout(0.5))
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((BATCH, 5)), rng.integers(0, 3, BATCH)) for _ in range(3)]
    report = gp.compare_training(ours, reference, batches)
    assert report.ok, [f.message for f in report.root_causes]
    masks = {m.tobytes() for m in RecordingDropout.applied}
    assert len(masks) == 3  # one mask per step, the same in every pass of that step


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_book_style_dropout_hands_its_own_mask_to_the_reference(dtype):
    ours, reference = small_model(BookDropout(0.5))
    x, y = data()
    report = gp.compare(ours, reference, x, y, dtype=dtype)
    assert report.ok, [f.message for f in report.root_causes]
    (note,) = dropout_notes(report)
    assert "ours -> reference" in note and "drop.mask" in note
    assert not report.warnings
    assert type(ours[2][1]).forward is BookDropout.forward  # the class is put back


def test_zero_inputs_keep_their_units_in_the_shared_mask():
    # ReLU feeds the dropout exact zeros: a mask read from out != 0 would drop those units
    # and break the gradient of fc1; the mask drawn on ones keeps them.
    ours, reference = small_model(Dropout(0.5), first=ReLU)
    x, y = data(seed=4)
    report = gp.compare(ours, reference, x, y)
    assert report.ok, [f.message for f in report.root_causes]


@pytest.mark.parametrize(
    ("bug", "quantity", "label"),
    [(DropoutNotScaled, "output", SCALED), (BackwardWithoutMask, "grad_input", MASK_MISSING)],
)
def test_a_dropout_bug_is_still_found_in_training_mode(bug, quantity, label):
    ours, reference = small_model(bug(0.5))
    x, y = data()
    report = gp.compare(ours, reference, x, y)
    assert not report.ok
    assert [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes] == [
        ("drop", quantity, label)
    ]


def test_a_dropout_that_neither_takes_nor_keeps_its_mask_gets_a_one_line_warning():
    ours, reference = small_model(HiddenMaskDropout(0.5))
    x, y = data()
    report = gp.compare(ours, reference, x, y)
    (warning,) = [w for w in report.warnings if w.diagnosis == DROPOUT_MASK_UNSHARED]
    assert warning.layer == "drop" and "\n" not in warning.message
    assert "self.mask" in warning.message and "pinned_mask" in warning.message
    assert not dropout_notes(report)


def test_which_modules_draw_their_own_mask():
    assert draws_own_mask(nn.Dropout(0.3)) and draws_own_mask(nn.Dropout2d(0.3))
    assert not draws_own_mask(nn.Dropout(0.3).eval())
    assert not draws_own_mask(nn.Dropout(0.0)) and not draws_own_mask(nn.AlphaDropout(0.3))
    assert not draws_own_mask(MaskedDropout(Dropout(0.3)))  # the mirror follows ours already
    assert keep_of(np.array([0.0, 2.0, 0.0])).tolist() == [False, True, False]
