"""A stand-in for dezero (0.0.13), written the way dezero is: a define-by-run graph whose
functions hold their outputs by weak reference, parameters as ``Parameter`` objects, layers
that accumulate gradients until ``cleargrads()``, and dezero's max pooling, which pads with 0
instead of -inf (its bug: a window over the border whose values are all negative gives 0)."""

from __future__ import annotations

import weakref

import numpy as np


class Variable:
    def __init__(self, data, name=None):
        self.data = data
        self.name = name
        self.grad = None
        self.creator = None
        self.generation = 0

    @property
    def shape(self):
        return self.data.shape

    def __add__(self, other):
        return Variable(self.data + other.data)

    def set_creator(self, func):
        self.creator = func
        self.generation = func.generation + 1

    def cleargrad(self):
        self.grad = None

    def backward(self, retain_grad=False):
        if self.grad is None:
            self.grad = Variable(np.ones_like(self.data))
        funcs, seen = [], set()

        def add_func(f):
            if f not in seen:
                funcs.append(f)
                seen.add(f)
                funcs.sort(key=lambda x: x.generation)

        add_func(self.creator)
        while funcs:
            f = funcs.pop()
            gys = [output().grad for output in f.outputs]
            gxs = f.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for x, gx in zip(f.inputs, gxs):
                x.grad = gx if x.grad is None else x.grad + gx
                if x.creator is not None:
                    add_func(x.creator)
            if not retain_grad:
                for y in f.outputs:
                    y().grad = None


class Parameter(Variable):
    pass


def as_variable(obj):
    return obj if isinstance(obj, Variable) else Variable(obj)


class Function:
    def __call__(self, *inputs):
        inputs = [as_variable(x) for x in inputs]
        ys = self.forward(*[x.data for x in inputs])
        outputs = [Variable(np.asarray(y)) for y in (ys if isinstance(ys, tuple) else (ys,))]
        self.generation = max(x.generation for x in inputs)
        for output in outputs:
            output.set_creator(self)
        self.inputs = inputs
        self.outputs = [weakref.ref(output) for output in outputs]
        return outputs if len(outputs) > 1 else outputs[0]


class Linear_(Function):
    def forward(self, x, W, b):
        return x.dot(W) + b

    def backward(self, gy):
        x, W = self.inputs[0].data, self.inputs[1].data
        return Variable(gy.data.dot(W.T)), Variable(x.T.dot(gy.data)), Variable(gy.data.sum(0))


class Sigmoid(Function):
    def forward(self, x):
        return 1 / (1 + np.exp(-x))

    def backward(self, gy):
        y = self.outputs[0]().data
        return Variable(gy.data * y * (1 - y))


class WrongSigmoid(Sigmoid):
    def backward(self, gy):  # the bug: y * (1 + y)
        y = self.outputs[0]().data
        return Variable(gy.data * y * (1 + y))


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return Variable(gy.data.reshape(self.x_shape))


class Pooling(Function):
    """Max pooling of (N, C, H, W), padded with 0 as dezero's im2col does (-inf belongs)."""

    pad_value = 0.0

    def __init__(self, kernel_size, stride, pad):
        self.k, self.s, self.p = kernel_size, stride, pad

    def forward(self, x):
        k, s, p = self.k, self.s, self.p
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=self.pad_value)
        n, c, h, w = padded.shape
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        cols = np.empty((n, c, oh, ow, k * k))
        for i in range(oh):
            for j in range(ow):
                window = padded[:, :, i * s : i * s + k, j * s : j * s + k]
                cols[:, :, i, j] = window.reshape(n, c, k * k)
        self.padded_shape, self.indexes = padded.shape, cols.argmax(axis=4)
        return cols.max(axis=4)

    def backward(self, gy):
        k, s, p = self.k, self.s, self.p
        gpad = np.zeros(self.padded_shape)
        n, c, oh, ow = gy.shape
        for i in range(oh):
            for j in range(ow):
                di, dj = np.divmod(self.indexes[:, :, i, j], k)
                for b in range(n):
                    for ch in range(c):
                        gpad[b, ch, i * s + di[b, ch], j * s + dj[b, ch]] += gy.data[b, ch, i, j]
        return Variable(gpad[:, :, p : gpad.shape[2] - p, p : gpad.shape[3] - p])


class FixedPooling(Pooling):
    pad_value = -np.inf


def linear(x, W, b):
    return Linear_()(x, W, b)


def sigmoid(x):
    return Sigmoid()(x)


def reshape(x, shape):
    return Reshape(shape)(x)


def pooling(x, kernel_size, stride=1, pad=0):
    return Pooling(kernel_size, stride, pad)(x)


def fixed_pooling(x, kernel_size, stride=1, pad=0):
    return FixedPooling(kernel_size, stride, pad)(x)


def wrong_sigmoid(x):
    return WrongSigmoid()(x)


class Layer:
    def __init__(self):
        self._params = set()

    def __setattr__(self, name, value):
        if isinstance(value, (Parameter, Layer)):
            self._params.add(name)
        super().__setattr__(name, value)

    def __call__(self, *inputs):
        outputs = self.forward(*inputs)
        self.inputs = [weakref.ref(x) for x in inputs]
        self.outputs = [weakref.ref(outputs)]
        return outputs

    def params(self):
        for name in self._params:
            obj = self.__dict__[name]
            yield from obj.params() if isinstance(obj, Layer) else (obj,)

    def cleargrads(self):
        for param in self.params():
            param.cleargrad()


class Linear(Layer):
    def __init__(self, out_size, in_size, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.W = Parameter(rng.standard_normal((in_size, out_size)) / np.sqrt(in_size), name="W")
        self.b = Parameter(rng.standard_normal(out_size) * 0.1, name="b")

    def forward(self, x):
        return linear(x, self.W, self.b)
