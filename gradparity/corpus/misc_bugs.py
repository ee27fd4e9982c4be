"""Known bugs for ours' Embedding, GELU, LeakyReLU and NLLLoss: each a subclass overriding one
method, with the network it goes into and where gradparity must find it (see ``layer_bugs``).
Not yet in the self-test's corpus: ``BUGS`` here is registered there separately."""

from __future__ import annotations

import numpy as np

from gradparity.corpus.layer_bugs import Bug, _bug
from gradparity.ours import (
    GELU,
    MSE,
    Embedding,
    LeakyReLU,
    Linear,
    LogSoftmax,
    NLLLoss,
    Sequential,
    SoftmaxCrossEntropy,
    Tanh,
)
from gradparity.ours.activations import _normal_cdf

# --- the mutants ----------------------------------------------------------------------------


class EmbeddingGradOverwritten(Embedding):
    def backward(self, grad_out):
        assert self._indices is not None, "backward before forward"  # the harness runs forward
        dim = grad_out.shape[-1]
        grad = np.zeros_like(self.params["weight"])
        # Fancy-index assignment keeps one row per repeated index instead of their sum.
        grad[self._indices.reshape(-1)] = grad_out.reshape(-1, dim)
        self._accumulate(weight=grad)
        return np.zeros(self._indices.shape, dtype=grad_out.dtype)


class LeakyReLUSlopeWrongSide(LeakyReLU):
    def backward(self, grad_out):
        slope = self.negative_slope
        return np.where(self._x > 0, slope * grad_out, grad_out)  # slope on the positive side


class GELUDerivativeMissingPdf(GELU):
    def backward(self, grad_out):
        return grad_out * _normal_cdf(self._x)  # Phi(x) without the x phi(x) term


class NLLLossNotAveraged(NLLLoss):
    def backward(self):
        return super().backward() * len(self._target)  # the sum's gradient, not the mean's


# --- the networks ---------------------------------------------------------------------------


def embedding_network(seed: int, embedding: type = Embedding):
    """Token indices x (6, 5) with repeats among 4 tokens -> emb (4, 3) -> tanh -> MSE against
    a (6, 5, 3) target."""
    rng = np.random.default_rng(seed)
    model = Sequential(("emb", embedding(4, 3, rng=rng)), ("act1", Tanh()))
    x = rng.integers(0, 4, size=(6, 5))
    return model, MSE(), x, rng.standard_normal((6, 5, 3))


def activation_network(seed: int, act: type = GELU):
    """x (8, 5) -> fc1 -> act1 -> fc2 -> logits (8, 3) -> softmax cross-entropy."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("fc1", Linear(5, 4, rng=rng)), ("act1", act()), ("fc2", Linear(4, 3, rng=rng))
    )
    x = rng.standard_normal((8, 5))
    return model, SoftmaxCrossEntropy(), x, rng.integers(0, 3, size=8)


def nll_network(seed: int, loss: type = NLLLoss):
    """x (8, 5) -> fc1 -> tanh -> fc2 -> log_softmax -> NLLLoss against classes (8,)."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("fc1", Linear(5, 4, rng=rng)),
        ("act1", Tanh()),
        ("fc2", Linear(4, 3, rng=rng)),
        ("log_softmax", LogSoftmax()),
    )
    x = rng.standard_normal((8, 5))
    return model, loss(), x, rng.integers(0, 3, size=8)


BUGS: list[Bug] = [
    _bug(
        "embedding_grad_overwritten",
        "embedding weight gradient assigned per index, so repeated indices keep one row",
        "emb",
        "grad:weight",
        "repeats_overwritten",
        lambda s: embedding_network(s, embedding=EmbeddingGradOverwritten),
    ),
    _bug(
        "leaky_relu_slope_wrong_side",
        "LeakyReLU backward scales the positive side by the slope, not the negative one",
        "act1",
        "grad_input",
        "elementwise_derivative",
        lambda s: activation_network(s, act=LeakyReLUSlopeWrongSide),
    ),
    _bug(
        "gelu_derivative_missing_pdf",
        "GELU derivative Phi(x), missing the x phi(x) term of the product rule",
        "act1",
        "grad_input",
        "elementwise_derivative",
        lambda s: activation_network(s, act=GELUDerivativeMissingPdf),
    ),
    _bug(
        "nll_loss_not_averaged",
        "NLLLoss gradient not divided by the batch size",
        "loss",
        "grad_input",
        "batch_reduction",
        lambda s: nll_network(s, loss=NLLLossNotAveraged),
    ),
]
