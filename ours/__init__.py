"""gradparity.ours: a from-scratch NumPy neural-network framework (no torch)."""

from gradparity.ours.activations import GELU, LeakyReLU, LogSoftmax
from gradparity.ours.containers import Sequential
from gradparity.ours.conv import AvgPool2d, Conv2d, Flatten, MaxPool2d
from gradparity.ours.embedding import Embedding
from gradparity.ours.layers import Layer, Linear, ReLU, Sigmoid, Softmax, Tanh, softmax
from gradparity.ours.losses import MSE, SoftmaxCrossEntropy
from gradparity.ours.losses_more import BCEWithLogits, NLLLoss
from gradparity.ours.models import assignment_data, assignment_network, mlp
from gradparity.ours.norm import BatchNorm1d, BatchNorm2d, Dropout, LayerNorm
from gradparity.ours.optim import SGD, Adam, Optimizer
from gradparity.ours.recurrent import LSTM, RNN, Residual
from gradparity.ours.zoo import LastStep, bn_cnn, cnn, lstm_classifier, resmlp

__all__ = [
    "GELU",
    "LSTM",
    "MSE",
    "RNN",
    "SGD",
    "Adam",
    "AvgPool2d",
    "BCEWithLogits",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "Embedding",
    "Flatten",
    "LastStep",
    "Layer",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MaxPool2d",
    "NLLLoss",
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
    "bn_cnn",
    "cnn",
    "lstm_classifier",
    "mlp",
    "resmlp",
    "softmax",
]
