"""gradparity.ours: a from-scratch NumPy neural-network framework (no torch)."""

from gradparity.ours.containers import Sequential
from gradparity.ours.conv import AvgPool2d, Conv2d, Flatten, MaxPool2d
from gradparity.ours.layers import Layer, Linear, ReLU, Sigmoid, Softmax, Tanh, softmax
from gradparity.ours.losses import MSE, SoftmaxCrossEntropy
from gradparity.ours.models import assignment_data, assignment_network, mlp
from gradparity.ours.optim import SGD, Adam, Optimizer

__all__ = [
    "MSE",
    "SGD",
    "Adam",
    "AvgPool2d",
    "Conv2d",
    "Flatten",
    "Layer",
    "Linear",
    "MaxPool2d",
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
