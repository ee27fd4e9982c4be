"""gradparity.ours: a from-scratch NumPy neural-network framework (no torch)."""

from gradparity.ours.containers import Sequential
from gradparity.ours.layers import Layer, Linear, ReLU, Sigmoid, Softmax, Tanh, softmax
from gradparity.ours.losses import MSE, SoftmaxCrossEntropy
from gradparity.ours.models import assignment_data, assignment_network, mlp
from gradparity.ours.norm import BatchNorm1d, BatchNorm2d, Dropout, LayerNorm
from gradparity.ours.optim import SGD, Adam, Optimizer

__all__ = [
    "MSE",
    "SGD",
    "Adam",
    "BatchNorm1d",
    "BatchNorm2d",
    "Dropout",
    "Layer",
    "LayerNorm",
    "Linear",
    "Optimizer",
    "ReLU",
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
