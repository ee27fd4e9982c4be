"""Corpus bugs of the normalisation and dropout layers (``ours.norm``), written as
``layer_bugs``'s are: each a subclass overriding one method, paired in ``NORM_BUGS`` with the
network it goes into and where gradparity must find it. Not yet part of the self-test."""

from __future__ import annotations

import numpy as np

from gradparity.corpus.layer_bugs import Bug, _bug
from gradparity.ours import (
    BatchNorm1d,
    Dropout,
    Linear,
    Sequential,
    SoftmaxCrossEntropy,
    Tanh,
)
from gradparity.ours.norm import _affine_bwd, _batch_axes, _running_update


class BatchNormNoMeanTerm(BatchNorm1d):
    def backward(self, grad_out):
        axes = _batch_axes(grad_out)
        grad_gamma, grad_beta = _affine_bwd(grad_out, self._xhat, axes)
        self._accumulate(gamma=grad_gamma, beta=grad_beta)
        dxhat = grad_out * self.params["gamma"]
        var_term = self._xhat * (dxhat * self._xhat).mean(axis=axes, keepdims=True)
        return self._inv_std * (dxhat - var_term)  # - mean(dxhat) forgotten


class BatchNormMomentumInverted(BatchNorm1d):
    def _update_running(self, mean, unbiased_var):
        old_weight = self.momentum  # Keras's convention: momentum weighs the old average
        self.running_mean = _running_update(self.running_mean, mean, 1 - old_weight)
        self.running_var = _running_update(self.running_var, unbiased_var, 1 - old_weight)


class DropoutNotScaled(Dropout):
    def forward(self, x):
        if not self.training:
            return x
        self.mask = self._keep_mask(x)
        return x * self.mask  # no 1 / (1 - p)


def norm_network(seed: int, norm: type = BatchNorm1d):
    """x (8, 5) -> fc1 -> bn (training) -> act1 -> fc2 -> logits (8, 3)."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("fc1", Linear(5, 4, rng=rng)),
        ("bn", norm(4, rng=rng)),
        ("act1", Tanh()),
        ("fc2", Linear(4, 3, rng=rng)),
    )
    x = rng.standard_normal((8, 5))
    return model, SoftmaxCrossEntropy(), x, rng.integers(0, 3, size=8)


def dropout_network(seed: int, dropout: type = Dropout):
    """x (8, 5) -> fc1 -> act1 -> drop (p 0.5, training, a pinned mask) -> fc2 -> (8, 3)."""
    rng = np.random.default_rng(seed)
    drop = dropout(0.5, rng=rng)
    drop.pinned_mask = rng.random((8, 4)) >= 0.5
    model = Sequential(
        ("fc1", Linear(5, 4, rng=rng)),
        ("act1", Tanh()),
        ("drop", drop),
        ("fc2", Linear(4, 3, rng=rng)),
    )
    x = rng.standard_normal((8, 5))
    return model, SoftmaxCrossEntropy(), x, rng.integers(0, 3, size=8)


NORM_BUGS: list[Bug] = [
    _bug(
        "batch_norm_no_mean_term",
        "batch norm backward without the mean term - mean(dxhat)",
        "bn",
        "grad_input",
        "missing_mean_term",
        lambda s: norm_network(s, norm=BatchNormNoMeanTerm),
    ),
    _bug(
        "running_momentum_inverted",
        "running statistics updated with 1 - momentum (Keras's convention read as torch's)",
        "bn",
        "buffer:running_mean",
        "running_momentum",
        lambda s: norm_network(s, norm=BatchNormMomentumInverted),
    ),
    _bug(
        "dropout_not_scaled",
        "dropout keeps x * mask without the 1 / (1 - p) scaling",
        "drop",
        "output",
        "scaled",
        lambda s: dropout_network(s, dropout=DropoutNotScaled),
    ),
]

UNMUTATED_NORM = {"norm": norm_network, "dropout": dropout_network}
