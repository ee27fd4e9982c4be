"""The optimisers of ``compare_training``: copies of both models with an optimiser bound to
each copy, refused in one line when an optimiser cannot be built or updates none of its
model's parameters (an instance built on another model would leave the copy untouched and
make correct code look broken)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradparity.core.errors import InputError, describe_error
from gradparity.core.records import USER_ERRORS
from gradparity.ours import SGD
from gradparity.sides.adapt import named_layers, params_of
from gradparity.sides.preflight import to_cpu

_OURS_FACTORY = "ours_optimizer=lambda model: SGD(model, lr=0.1)"
_REFERENCE_FACTORY = "reference_optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"


def optimizers(
    ours_model: Any,
    reference_model: nn.Module,
    ours_optimizer: Any,
    reference_optimizer: Any,
    tdtype: torch.dtype,
) -> tuple[Any, Any, nn.Module, Any, list[str]]:
    """Copies of both models with optimisers bound to the copies (instances are deep-copied
    together with their model, factories are called on the copy), the reference copy on the
    CPU in ``tdtype``; last, its parameters that came from the meta device (``to_cpu``)."""
    if (ours_optimizer is None) != (reference_optimizer is None):
        raise InputError(
            "give both ours_optimizer and reference_optimizer, or neither "
            "(then both are plain SGD with lr 0.1)"
        )
    if ours_optimizer is None:
        ours_optimizer = lambda model: SGD(model, lr=0.1)  # noqa: E731
        reference_optimizer = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    for role, given in (
        ("ours_optimizer", ours_optimizer),
        ("reference_optimizer", reference_optimizer),
    ):
        if not (hasattr(given, "step") or callable(given)):
            raise InputError(
                f"{role} must be an optimiser (with step() and zero_grad()) or a factory "
                f"building one from the model's parameters, got {type(given).__name__}"
            )
    if hasattr(ours_optimizer, "step"):
        ours_model, ours_opt = copy.deepcopy((ours_model, ours_optimizer))
        _check_ours_bound(ours_opt, ours_model)
    else:
        ours_model = copy.deepcopy(ours_model)
        ours_opt = _build("ours_optimizer", ours_optimizer, ours_model, "model")
    if hasattr(reference_optimizer, "step"):
        if any(p.is_meta for p in reference_model.parameters()):
            raise InputError(
                "reference_optimizer is bound to parameters on the meta device (no values); "
                f"pass a factory instead: {_REFERENCE_FACTORY}"
            )
        reference_model, ref_opt = copy.deepcopy((reference_model, reference_optimizer))
        _check_reference_bound(ref_opt, reference_model)
        empty = to_cpu(reference_model, tdtype, sync_weights=True)  # in place: opt stays bound
    else:
        reference_model = copy.deepcopy(reference_model)
        empty = to_cpu(reference_model, tdtype, sync_weights=True)
        ref_opt = _build(
            "reference_optimizer", reference_optimizer, reference_model.parameters(), "params"
        )
    for name, opt in (("ours_optimizer", ours_opt), ("reference_optimizer", ref_opt)):
        if not (callable(getattr(opt, "step", None)) and callable(getattr(opt, "zero_grad", None))):
            raise InputError(f"{name} needs step() and zero_grad() methods")
    return ours_model, ours_opt, reference_model, ref_opt, empty


def _build(role: str, factory: Callable, argument: Any, argument_name: str) -> Any:
    """``factory(argument)``; one line naming ``role`` when it raises (a bad learning rate
    that the optimiser's own check refuses, say)."""
    try:
        return factory(argument)
    except USER_ERRORS as exc:
        raise InputError(
            f"{role}({argument_name}) raised {describe_error(exc)}; fix the optimiser's "
            "arguments (a finite, positive learning rate)"
        ) from exc


def _array_ids(model: Any) -> set[int]:
    return {id(v) for name, layer in named_layers(model) for v in params_of(layer, name).values()}


def _check_ours_bound(optimizer: Any, model: Any) -> None:
    """Refuse an ours optimiser instance whose ``model`` (the attribute ``gradparity.ours``
    optimisers keep) holds none of ``model``'s parameter arrays. Optimisers that keep their
    parameters some other way are not judged."""
    bound_to = getattr(optimizer, "model", None)
    if bound_to is None or bound_to is model:
        return
    try:
        theirs = _array_ids(bound_to)
    except InputError:  # not a model gradparity can list: nothing to judge by
        return
    if theirs and not theirs & _array_ids(model):
        raise InputError(
            "ours_optimizer updates none of the model's parameters (it was built on another "
            f"model): pass a factory ({_OURS_FACTORY}) or an optimizer built on this model"
        )


def _check_reference_bound(optimizer: Any, model: nn.Module) -> None:
    """Refuse a torch optimiser instance none of whose parameters is one of ``model``'s."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return
    bound = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if bound and not bound & {id(p) for p in model.parameters()}:
        raise InputError(
            "reference_optimizer updates none of the reference model's parameters (it was "
            f"built on another model's): pass a factory ({_REFERENCE_FACTORY}) or an "
            "optimizer built on this model's parameters"
        )
