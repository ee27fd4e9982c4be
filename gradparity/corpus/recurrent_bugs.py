"""Known bugs of recurrent layers and residual blocks, injected into ``ours`` (issue 15, item 7).

Written as ``layer_bugs`` writes them: each a subclass overriding one method, paired in
``BUGS`` with its model and where gradparity must find it. Not yet in the selftest corpus.
"""

from __future__ import annotations

import numpy as np

from gradparity.corpus.layer_bugs import Bug, _bug
from gradparity.ours import (
    LSTM,
    MSE,
    RNN,
    Linear,
    Residual,
    Sequential,
    SoftmaxCrossEntropy,
    Tanh,
)
from gradparity.ours.recurrent import _previous_states

# --- the bugs -------------------------------------------------------------------------------


class LSTMForgetGateTanhDerivative(LSTM):
    @staticmethod
    def _gate_grads(d_c, d_h, gates, c_prev, tanh_c):
        i, f, g, o = gates
        return np.concatenate(
            [
                d_c * g * i * (1.0 - i),
                d_c * c_prev * (1.0 - f * f),  # tanh' for the forget gate, a sigmoid: f (1 - f)
                d_c * i * (1.0 - g * g),
                d_h * tanh_c * o * (1.0 - o),
            ],
            axis=1,
        )


class ResidualSkipGradDropped(Residual):
    def backward(self, grad_out):
        return self.block.backward(grad_out)  # the skip path's + grad_out is missing


class RNNWeightHHLastStepOnly(RNN):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        # Truncated backprop through time: weight_hh's gradient from the last step alone.
        h_last, h_before = self._hs[:, -1], _previous_states(self._hs)[:, -1]
        dz_last = grad_out[:, -1] * (1.0 - h_last * h_last)
        self.grads["weight_hh"] = dz_last.T @ h_before
        return grad_x


# --- the networks ---------------------------------------------------------------------------


def recurrent_network(seed: int, first: type = RNN, second: type = LSTM):
    """x (4, 6, 3) -> first (hidden 5) -> second (hidden 4) -> MSE against (4, 6, 4)."""
    rng = np.random.default_rng(seed)
    model = Sequential(("rnn", first(3, 5, rng=rng)), ("lstm", second(5, 4, rng=rng)))
    x = rng.standard_normal((4, 6, 3))
    target = rng.standard_normal((4, 6, 4))
    return model, MSE(), x, target


def residual_network(seed: int, residual: type = Residual):
    """x (8, 5) -> fc0 -> res (fc1 -> tanh -> fc2, plus the skip) -> head -> logits (8, 3)."""
    rng = np.random.default_rng(seed)
    block = Sequential(
        ("fc1", Linear(6, 6, rng=rng)), ("act", Tanh()), ("fc2", Linear(6, 6, rng=rng))
    )
    model = Sequential(
        ("fc0", Linear(5, 6, rng=rng)), ("res", residual(block)), ("head", Linear(6, 3, rng=rng))
    )
    x = rng.standard_normal((8, 5))
    target = rng.integers(0, 3, size=8)
    return model, SoftmaxCrossEntropy(), x, target


BUGS: list[Bug] = [
    _bug(
        "lstm_forget_gate_derivative",
        "LSTM forget gate differentiated as a tanh, 1 - f**2, not f (1 - f)",
        "lstm",
        "grad_input",
        "gate_derivative",
        lambda s: recurrent_network(s, second=LSTMForgetGateTanhDerivative),
    ),
    _bug(
        "residual_skip_grad_dropped",
        "residual backward returns the block's input gradient without the skip path's",
        "res",
        "grad_input",
        "skip_path_missing",
        lambda s: residual_network(s, residual=ResidualSkipGradDropped),
    ),
    _bug(
        "rnn_bptt_truncated",
        "RNN weight_hh gradient from the last time step alone (backprop through time cut)",
        "rnn",
        "grad:weight_hh",
        "truncated_bptt",
        lambda s: recurrent_network(s, first=RNNWeightHHLastStepOnly),
    ),
]

UNMUTATED = {"recurrent": recurrent_network, "residual": residual_network}
