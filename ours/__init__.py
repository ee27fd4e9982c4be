"""gradparity.ours: a from-scratch NumPy neural-network framework (no torch)."""

from gradparity.ours.containers import Sequential
from gradparity.ours.layers import Layer, Linear, ReLU, Sigmoid, Softmax, Tanh, softmax
from gradparity.ours.losses import MSE, SoftmaxCrossEntropy
from gradparity.ours.models import assignment_data, assignment_network, mlp
from gradparity.ours.optim import SGD, Adam, Optimizer
from gradparity.ours.recurrent import LSTM, RNN, Residual

__all__ = [
    "LSTM",
    "MSE",
    "RNN",
    "SGD",
    "Adam",
    "Layer",
    "Linear",
    "Optimizer",
    "ReLU",
    "Residual",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "SoftmaxCrossEntropy",
    "Tanh",
    "assignment_data",
    "assignment_network",
    "mlp",
    "softmax",
]
