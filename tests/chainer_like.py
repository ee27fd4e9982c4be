"""A stand-in for chainer (7.x), written the way chainer is: a ``Variable`` (``.array``,
``.grad``, ``.grad_var``) whose graph node holds the variable by weak reference, function nodes
that hold their outputs' nodes by weak reference, and ``Link`` objects whose parameters are
registered in ``init_scope()`` and listed by ``namedparams()``.

The node's weak reference makes a deep copy of a link not a copy: the copy's parameters' nodes
still point at the original's parameters, so the copy's backward writes its gradients there."""

from __future__ import annotations

import contextlib
import weakref

import numpy as np


class VariableNode:
    def __init__(self, variable):
        self._variable = weakref.ref(variable)
        self.creator_node = None
        self.rank = 0

    def get_variable_or_none(self):
        return self._variable()

    def set_creator_node(self, creator_node):
        self.creator_node = creator_node
        self.rank = creator_node.rank + 1


class Variable:
    def __init__(self, data=None, name=None):
        self.array = data
        self.name = name
        self._grad_var = None
        self._node = VariableNode(self)

    @property
    def data(self):
        return self.array

    @property
    def node(self):
        return self._node

    @property
    def creator(self):
        return self._node.creator_node

    @property
    def grad(self):
        return None if self._grad_var is None else self._grad_var.array

    @grad.setter
    def grad(self, g):
        self._grad_var = None if g is None else Variable(g)

    @property
    def grad_var(self):
        return self._grad_var

    def cleargrad(self):
        self._grad_var = None

    def backward(self):
        if self.creator is None:
            return
        grads = {self._node: self._grad_var}
        candidates, seen = [self.creator], {self.creator}
        while candidates:
            candidates.sort(key=lambda f: f.rank)
            func = candidates.pop()
            outputs = [y() for y in func.outputs]
            gys = tuple(grads.pop(y, None) for y in outputs)
            gxs = func.backward(tuple(range(len(func.inputs))), gys)
            for x_node, gx in zip(func.inputs, gxs):
                if x_node.creator_node is None:
                    var = x_node.get_variable_or_none()
                    if var is not None:
                        old = var._grad_var
                        var._grad_var = gx if old is None else Variable(old.array + gx.array)
                    continue
                old = grads.get(x_node)
                grads[x_node] = gx if old is None else Variable(old.array + gx.array)
                if x_node.creator_node not in seen:
                    seen.add(x_node.creator_node)
                    candidates.append(x_node.creator_node)


class Parameter(Variable):
    pass


class FunctionNode:
    rank = 0

    def apply(self, inputs):
        variables = [x if isinstance(x, Variable) else Variable(x) for x in inputs]
        self.inputs = tuple(v.node for v in variables)
        self.rank = max(n.rank for n in self.inputs)
        outputs = tuple(Variable(y) for y in self.forward(tuple(v.array for v in variables)))
        for y in outputs:
            y.node.set_creator_node(self)
        self.outputs = tuple(weakref.ref(y.node) for y in outputs)
        return outputs


class LinearFunction(FunctionNode):
    def forward(self, inputs):
        x, W, b = inputs
        self.retained = (x, W)
        return (x.dot(W.T) + b,)

    def backward(self, indexes, grad_outputs):
        (gy,) = grad_outputs
        x, W = self.retained
        return Variable(gy.array.dot(W)), Variable(gy.array.T.dot(x)), Variable(gy.array.sum(0))


class Sigmoid(FunctionNode):
    def forward(self, inputs):
        self.y = 1 / (1 + np.exp(-inputs[0]))
        return (self.y,)

    def backward(self, indexes, grad_outputs):
        return (Variable(grad_outputs[0].array * self.y * (1 - self.y)),)


def linear(x, W, b):
    return LinearFunction().apply((x, W, b))[0]


def sigmoid(x):
    return Sigmoid().apply((x,))[0]


class Link:
    def __init__(self):
        self._params = []
        self._within_init_scope = False

    @contextlib.contextmanager
    def init_scope(self):
        self._within_init_scope = True
        yield
        self._within_init_scope = False

    def __setattr__(self, name, value):
        if getattr(self, "_within_init_scope", False) and isinstance(value, Parameter):
            self._params.append(name)
        super().__setattr__(name, value)

    def namedparams(self):
        for name in self._params:
            yield "/" + name, getattr(self, name)

    def cleargrads(self):
        for _, param in self.namedparams():
            param.cleargrad()

    def __call__(self, *args):
        return self.forward(*args)


class Linear(Link):
    def __init__(self, in_size, out_size, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        with self.init_scope():
            self.W = Parameter(rng.standard_normal((out_size, in_size)) / np.sqrt(in_size))
            self.b = Parameter(rng.standard_normal(out_size) * 0.1)

    def forward(self, x):
        return linear(x, self.W, self.b)
