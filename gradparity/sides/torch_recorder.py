"""The one recorder of torch module calls: every call of every hooked module, in call order.

A module that runs more than once in a forward (a shared activation, one Linear applied
twice) keeps each call apart as call 0, 1, ... so each can be paired with its own layer or
tap; nothing is overwritten by a later call.

Capture uses forward pre-/post-hooks and tensor hooks, not ``register_full_backward_hook``
(which breaks on in-place ops). Where inputs are recorded, the pre-hook feeds the module a
clone of its input, so an in-place op inside it can neither alter what was recorded nor the
gradient hook on that input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
from torch import nn


@overload
def to_numpy(t: torch.Tensor) -> np.ndarray: ...
@overload
def to_numpy(t: None) -> None: ...
@overload
def to_numpy(t: torch.Tensor | None) -> np.ndarray | None: ...
def to_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """A private NumPy copy of ``t`` (detached, on the CPU); None for None."""
    return None if t is None else t.detach().cpu().numpy().copy()


def finite(value: Any) -> bool:
    """False only for a floating tensor holding inf or NaN."""
    if not (torch.is_tensor(value) and value.is_floating_point()):
        return True
    with torch.no_grad():
        # A finite sum needs finite terms, and a sum costs one pass and no mask; only a sum
        # that overflowed or met inf/NaN is looked at element by element.
        return bool(torch.isfinite(value.sum())) or bool(torch.isfinite(value).all())


def every_call(module: str, index: int) -> bool:
    """Keep the values of every call."""
    return True


def no_call(module: str, index: int) -> bool:
    """Keep no values: only which modules ran, in what order, on what shapes."""
    return False


@dataclass
class ModuleCall:
    """One call of one hooked module; ``index`` is k, 0-based among that module's calls.

    The values are NumPy copies, None where not recorded (a call whose values are not kept,
    an input not recorded, a gradient the loss does not reach, an output that is no tensor):
    input (like the first argument), output, grad_output (dL/d(output), like output),
    grad_input (dL/d(input), like input). ``overflowed``: the output holds inf or NaN
    although every argument is finite.
    """

    module: str
    index: int
    input_shape: tuple[int, ...]
    output_type: str = ""  # "Tensor" or the type name forward returned; "" while it runs
    output_shape: tuple[int, ...] = ()
    overflowed: bool = False
    input: np.ndarray | None = None
    output: np.ndarray | None = None
    grad_output: np.ndarray | None = None
    grad_input: np.ndarray | None = None

    @property
    def returned_tensor(self) -> bool:
        """Whether the call's forward returned a tensor (not a tuple, None, ...)."""
        return self.output_type == "Tensor"


class TorchRecorder:
    """Records the calls of ``modules`` (name -> module) while used as a context manager;
    the hooks are removed on leaving it (the tensor hooks still fire in a later backward).

    ``inputs``: also record each kept call's input and dL/d(input) (the module then runs on
    a clone of its input); ``keep(module name, k)``: whether call k's values are copied (all
    calls are counted, in order, either way).
    """

    def __init__(
        self,
        modules: dict[str, nn.Module],
        *,
        inputs: bool = True,
        keep: Callable[[str, int], bool] = every_call,
    ) -> None:
        self.modules, self.inputs, self.keep = modules, inputs, keep
        self.calls: list[ModuleCall] = []
        self._by_module: dict[str, list[ModuleCall]] = {name: [] for name in modules}
        self._running: dict[str, list[ModuleCall]] = {}  # a stack: a module may call itself
        self._handles: list[Any] = []

    def __enter__(self) -> TorchRecorder:
        for name, module in self.modules.items():
            self._handles.append(
                module.register_forward_pre_hook(functools.partial(self._called, name))
            )
            self._handles.append(
                module.register_forward_hook(functools.partial(self._returned, name))
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def of(self, module: str) -> list[ModuleCall]:
        """The calls of ``module``, in call order (call k at position k)."""
        return list(self._by_module.get(module, []))

    def counts(self) -> dict[str, int]:
        """How often each hooked module ran (0 for one that never did)."""
        return {name: len(calls) for name, calls in self._by_module.items()}

    def _called(self, name: str, module: nn.Module, args: tuple) -> tuple | None:
        first = args[0] if args else None
        shape = tuple(first.shape) if torch.is_tensor(first) else ()
        call = ModuleCall(name, len(self._by_module[name]), shape)
        self.calls.append(call)
        self._by_module[name].append(call)
        self._running.setdefault(name, []).append(call)
        if not (self.inputs and torch.is_tensor(first) and self.keep(name, call.index)):
            return None
        fed = first.clone()
        call.input = to_numpy(fed)
        if fed.requires_grad:
            fed.register_hook(functools.partial(self._set, call, "grad_input"))
        return (fed, *args[1:])

    def _returned(self, name: str, module: nn.Module, args: tuple, out: Any) -> None:
        call = self._running[name].pop()
        call.overflowed = not finite(out) and all(finite(a) for a in args)
        if not torch.is_tensor(out):
            call.output_type = type(out).__name__
            return
        call.output_type, call.output_shape = "Tensor", tuple(out.shape)
        if not self.keep(name, call.index):
            return
        call.output = to_numpy(out)
        if out.requires_grad:
            out.register_hook(functools.partial(self._set, call, "grad_output"))

    @staticmethod
    def _set(call: ModuleCall, field_name: str, grad: torch.Tensor) -> None:
        setattr(call, field_name, to_numpy(grad))
