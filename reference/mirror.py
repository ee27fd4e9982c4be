"""PyTorch mirrors of ``gradparity.ours`` models, and weight transfer in both directions.

``mirror(model)`` builds a ``torch.nn.Sequential`` whose module names equal the ours layer
names, so the harness aligns the two by name. Weights are copied with layout conversion:
ours ``Linear.W`` is (in, out), torch's ``weight`` is (out, in).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from gradparity.reference.layout import TRANSPOSE, candidate_conversions, to_ours_layout
from gradparity.reference.mirror_conv import MIRRORS as CONV_MIRRORS
from gradparity.reference.mirror_misc import LOSS_MIRRORS
from gradparity.reference.mirror_misc import MIRRORS as MISC_MIRRORS
from gradparity.reference.mirror_norm import MIRRORS as NORM_MIRRORS
from gradparity.reference.mirror_recurrent import MIRRORS as RECURRENT_MIRRORS
from gradparity.reference.mirror_recurrent import mirror_residual
from gradparity.reference.mirror_zoo import MIRRORS as ZOO_MIRRORS

_ELEMENTWISE = {"Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "ReLU": nn.ReLU}
# ours class name -> builder of its torch module (weights copied), one group per module. A
# container's builder mirrors its inner layers with mirror_layer (looked up at call time).
_BUILDERS = {
    **CONV_MIRRORS,
    **MISC_MIRRORS,
    **NORM_MIRRORS,
    **RECURRENT_MIRRORS,
    **ZOO_MIRRORS,
    "Residual": lambda layer: mirror_residual(layer, mirror_layer),
}


def _kind(obj) -> str:
    """The first ours class name in obj's MRO, so subclasses (e.g. injected bugs) mirror too."""
    known = {"Linear", "Softmax", "SoftmaxCrossEntropy", "MSE", *_ELEMENTWISE, *_BUILDERS}
    known |= set(LOSS_MIRRORS)
    return next((c.__name__ for c in type(obj).__mro__ if c.__name__ in known), type(obj).__name__)


def mirror_layer(layer) -> nn.Module:
    """The torch module equivalent to one ours layer (weights copied)."""
    kind = _kind(layer)
    if kind == "Linear":
        n_in, n_out = layer.params["W"].shape
        module = nn.Linear(n_in, n_out, dtype=torch.float64)
        copy_into_module(layer, module)
        return module
    if kind in _ELEMENTWISE:
        return _ELEMENTWISE[kind]()
    if kind == "Softmax":
        return nn.Softmax(dim=-1)
    if kind in _BUILDERS:
        return _BUILDERS[kind](layer)
    raise TypeError(f"no torch mirror for ours layer type {kind}")


def mirror(model) -> nn.Sequential:
    """``nn.Sequential`` mirroring an ours ``Sequential`` (same names, same weights, float64)."""
    return nn.Sequential(
        OrderedDict((name, mirror_layer(layer)) for name, layer in model.named_layers())
    )


def mirror_loss(loss) -> nn.Module:
    """The torch loss equivalent to an ours loss (mean reduction)."""
    kind = _kind(loss)
    if kind == "SoftmaxCrossEntropy":
        return nn.CrossEntropyLoss()
    if kind == "MSE":
        return nn.MSELoss()
    if kind in LOSS_MIRRORS:
        return LOSS_MIRRORS[kind](loss)
    raise TypeError(f"no torch mirror for ours loss type {kind}")


def _pairs(layer, module: nn.Module):
    """(ours key, torch parameter, conversion) in order; ours Linear W is always transposed."""
    torch_params = list(module.named_parameters())
    if len(torch_params) != len(layer.params):
        raise ValueError(
            f"{type(layer).__name__} has {len(layer.params)} parameters, "
            f"the torch module {len(torch_params)}"
        )
    for (key, value), (tname, tparam) in zip(layer.params.items(), torch_params):
        options = candidate_conversions(value.shape, tuple(tparam.shape))
        if not options:
            raise ValueError(
                f"ours {key} {value.shape} does not fit torch {tname} {tuple(tparam.shape)}"
            )
        # ours stores weights (in, out): a square one is transposed, never identity ("0.W" is
        # the weight of a container's layer "0").
        is_linear_weight = key.rsplit(".", 1)[-1] == "W"
        conversion = TRANSPOSE if is_linear_weight and TRANSPOSE in options else options[0]
        yield key, tparam, conversion


@torch.no_grad()
def copy_into_module(layer, module: nn.Module) -> None:
    """Copy an ours layer's parameters into the torch module (layout converted, dtype kept)."""
    for key, tparam, conversion in _pairs(layer, module):
        value = layer.params[key]
        converted = value.T if conversion == TRANSPOSE else value.reshape(tparam.shape)
        tparam.copy_(torch.as_tensor(np.ascontiguousarray(converted), dtype=tparam.dtype))


@torch.no_grad()
def copy_from_module(module: nn.Module, layer) -> None:
    """Copy a torch module's parameters into the ours layer (layout converted, ours dtype kept)."""
    for key, tparam, conversion in _pairs(layer, module):
        old = layer.params[key]
        value = to_ours_layout(tparam.detach().cpu().numpy(), conversion, old.shape)
        layer.params[key] = value.astype(old.dtype, copy=False)


def copy_weights(model, torch_model: nn.Module, direction: str = "to_torch") -> None:
    """Copy every parameter between an ours ``Sequential`` and its mirror, matched by name.

    direction: "to_torch" (ours -> torch) or "to_ours" (torch -> ours).
    """
    if direction not in ("to_torch", "to_ours"):
        raise ValueError(f"direction must be 'to_torch' or 'to_ours', not {direction!r}")
    modules = dict(torch_model.named_modules())
    for name, layer in model.named_layers():
        if name not in modules:
            raise KeyError(f"torch model has no module named {name!r}")
        if direction == "to_torch":
            copy_into_module(layer, modules[name])
        else:
            copy_from_module(modules[name], layer)
