"""A textbook network in the style of Nielsen's network.py: one example at a time as a column
vector, weights stored (out, in), biases (out, 1), a quadratic cost, and backprop written as
one function, with gp.tap calls marking each z, activation and delta."""

import numpy as np

import gradparity as gp


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1 - sigmoid(z))


class Network:
    def __init__(self, sizes, seed=0):
        rng = np.random.default_rng(seed)
        self.num_layers = len(sizes)
        self.biases = [rng.standard_normal((y, 1)) for y in sizes[1:]]
        self.weights = [rng.standard_normal((y, x)) for x, y in zip(sizes[:-1], sizes[1:])]

    def feedforward(self, a):
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(w @ a + b)
        return a

    def backprop(self, x, y):
        """(nabla_b, nabla_w): the gradient of 0.5 * ||a - y||^2 for one example x, y."""
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(self.biases, self.weights):
            z = gp.tap("z", w @ activation + b)
            zs.append(z)
            activation = gp.tap("a", sigmoid(z))
            activations.append(activation)
        delta = self.cost_derivative(activations[-1], y) * sigmoid_prime(zs[-1])
        gp.tap("delta", delta)
        nabla_b[-1] = delta
        nabla_w[-1] = delta @ activations[-2].T
        for l in range(2, self.num_layers):
            z = zs[-l]
            sp = sigmoid_prime(z)
            delta = (self.weights[-l + 1].T @ delta) * sp
            gp.tap("delta", delta)
            nabla_b[-l] = delta
            nabla_w[-l] = delta @ activations[-l - 1].T
        return (nabla_b, nabla_w)

    def cost_derivative(self, output_activations, y):
        return output_activations - y
