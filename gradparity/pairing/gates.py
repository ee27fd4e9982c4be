"""The gate order of stacked recurrent weights, decided by the forward.

torch stacks an LSTM's gates i, f, g, o (a GRU's r, z, n) in blocks of ``hidden_size`` rows of
``weight_ih_l0``, ``weight_hh_l0`` and the biases; other frameworks stack them in another
order (chainer: a, i, f, o, its ``a`` being torch's ``g``). The shapes cannot tell the orders
apart, so, as for square weights (``pairing.square``), the layer's forward is run against its
module's with each order of the gate blocks, and the order under which the two outputs agree
is kept and reported as a conversion (``gates g,i,f,o -> i,f,g,o``, in torch's letters).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from gradparity.core.records import USER_ERRORS, real_array
from gradparity.pairing.align import LayerPair
from gradparity.pairing.params import ParamPair, sync_parameters
from gradparity.reference.layout import with_gates
from gradparity.sides.adapt import params_of

TORCH_GATES = {nn.LSTM: "i,f,g,o", nn.GRU: "r,z,n"}  # torch's order of the stacked blocks


def recurrent_owner(module: nn.Module, torch_name: str) -> nn.RNNBase | None:
    """The LSTM or GRU that holds parameter ``torch_name`` of ``module``; None for others."""
    owner = module.get_submodule(torch_name.rpartition(".")[0])
    return owner if isinstance(owner, (nn.LSTM, nn.GRU)) else None


def _stacked(pair: LayerPair) -> list[int]:
    """Indices into ``pair.params`` of the parameters stacked from gate blocks."""
    found = []
    for i, p in enumerate(pair.params):
        owner = recurrent_owner(pair.torch_module, p.torch_name)
        blocks = len(TORCH_GATES[type(owner)].split(",")) if owner is not None else 0
        if owner is not None and p.torch_shape[0] == blocks * owner.hidden_size:
            found.append(i)
    return found


def _probe_input(owner: nn.RNNBase, rng: np.random.Generator) -> np.ndarray:
    """A random sequence batch for ``owner``: (batch 2, time 3, input_size), time first unless
    the module is batch_first."""
    batch, time = 2, 3
    shape = (batch, time) if owner.batch_first else (time, batch)
    return rng.standard_normal((*shape, owner.input_size))


def _agrees(pair: LayerPair, trial: list[ParamPair], x: np.ndarray, ours: np.ndarray) -> bool:
    """Whether the module, holding ours' values laid out as ``trial``, computes ``ours``."""
    module = copy.deepcopy(pair.torch_module).double()
    sync_parameters(params_of(pair.layer), module, trial)
    with torch.no_grad():
        out = module(torch.as_tensor(x))
    out = out[0] if isinstance(out, tuple) else out  # an RNN's (output, state)
    expected = out.cpu().numpy()  # the reference may run on a GPU
    return ours.shape == expected.shape and np.allclose(ours, expected, rtol=1e-6, atol=1e-9)


def _ours_output(pair: LayerPair, x: np.ndarray) -> np.ndarray | None:
    """The layer's output on ``x`` (a copy of the layer runs); None when it cannot run."""
    try:
        return real_array(copy.deepcopy(pair.layer).forward(x.copy()), "output", "output")
    except USER_ERRORS:  # a layer that cannot run here is judged (and reported) later
        return None


def _in_order(pair: LayerPair, stacked: list[int], order: str, torch_order: str) -> list[ParamPair]:
    """``pair.params`` with the ``stacked`` ones read as gate blocks in ``order``."""
    return [
        replace(p, conversion=with_gates(p.conversion, order, torch_order)) if i in stacked else p
        for i, p in enumerate(pair.params)
    ]


def _agreeing_order(
    pair: LayerPair, stacked: list[int], owner: nn.RNNBase, rng: np.random.Generator
) -> tuple[str | None, str]:
    """(order, "") of the first gate order (torch's own first) under which the layer and its
    module compute the same output on a random sequence; (None, why) when none does."""
    torch_order = TORCH_GATES[type(owner)]
    x = _probe_input(owner, rng)
    ours = _ours_output(pair, x)
    if ours is None:
        return None, "the layer's forward cannot run here"
    for letters in itertools.permutations(torch_order.split(",")):
        order = ",".join(letters)
        try:
            if _agrees(pair, _in_order(pair, stacked, order, torch_order), x, ours):
                return order, ""
        except (RuntimeError, TypeError, ValueError, IndexError):
            return None, "the module takes no (time, batch, features) input"
    return None, "no gate order made the forwards agree"


def order_gates(pair: LayerPair, rng: np.random.Generator) -> None:
    """Give the stacked recurrent parameters of ``pair.params`` the gate order under which the
    layer's forward agrees with its module's (one order for all of them: a framework stacks
    its gates alike everywhere); torch's own order, said to be assumed, when none agrees."""
    stacked = _stacked(pair)
    if not stacked:
        return
    owner = recurrent_owner(pair.torch_module, pair.params[stacked[0]].torch_name)
    assert owner is not None  # _stacked found it
    torch_order = TORCH_GATES[type(owner)]
    order, why = _agreeing_order(pair, stacked, owner, rng)
    if order is None:
        order, how = torch_order, f"assumed ({why}): torch's {torch_order}"
    else:
        how = f"gate order {order} made the forwards agree"
    pair.params[:] = [
        replace(p, how=how) if i in stacked else p
        for i, p in enumerate(_in_order(pair, stacked, order, torch_order))
    ]
