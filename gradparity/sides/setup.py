"""What a front end prepares before either side runs: the two losses, the reference's private
copy, and the warm-up input that tells stale and accumulated gradients from fresh ones."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from gradparity.core.errors import InputError
from gradparity.ours import SoftmaxCrossEntropy
from gradparity.reference import mirror_loss
from gradparity.sides import device as devices
from gradparity.sides.adapt import check_protocol
from gradparity.sides.preflight import to_cpu
from gradparity.sides.run_torch import TORCH_DTYPES


def resolve_losses(ours_loss: Any, reference_loss: Any) -> tuple[Any, Any]:
    """Default softmax cross-entropy on both sides; a known ours loss gets its torch mirror."""
    ours_loss = SoftmaxCrossEntropy() if ours_loss is None else ours_loss
    check_protocol("loss", ours_loss)
    if reference_loss is None:
        try:
            reference_loss = mirror_loss(ours_loss)
        except TypeError as exc:
            raise InputError(f"{exc}; pass reference_loss=callable(output, target)") from exc
    if not callable(reference_loss):
        raise InputError("reference_loss must be callable(output, target) -> scalar tensor")
    return ours_loss, reference_loss


def reference_copy(
    reference_model: Any,
    dtype: str,
    sync_weights: bool = True,
    device: str = "cpu",
    share_parameters: bool = False,
) -> tuple[nn.Module, list[str]]:
    """(a deep copy of the reference in ``dtype`` on ``device`` (a name ``device.check_device``
    passed), each module in the mode it was
    given (the reference runs in it: batch norm in training mode normalises with the batch's
    statistics); the names of its parameters that came from the meta device and wait for
    ours' values, see ``to_cpu``). ``share_parameters`` (streaming): the copy's parameters
    are new Parameter objects over the reference's own memory, not copies of it; they are
    only read, and ``sync_parameters(..., rebind=True)`` replaces (never writes into) those
    that take ours' values."""
    if not isinstance(reference_model, nn.Module):
        raise InputError(
            f"reference model must be a torch.nn.Module, got {type(reference_model).__name__}"
        )
    memo: dict[int, Any] = {}
    if share_parameters:
        memo = {
            id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad)
            for p in reference_model.parameters()
        }
    try:
        model = copy.deepcopy(reference_model, memo)
    except Exception as exc:
        raise InputError(
            f"cannot copy the reference model ({exc}); it must support copy.deepcopy"
        ) from exc
    empty = to_cpu(model, TORCH_DTYPES[dtype], sync_weights)
    if device != "cpu":
        model.to(devices.torch_device(device))
    return model, empty
