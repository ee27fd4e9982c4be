"""The reference of ``compare(model, "autodiff", ...)``: each layer's own NumPy forward, made
differentiable by running it on tensors (``sides.autodiff``).

A layer becomes a torch module (``OwnForwardModule``) whose forward is the layer's own forward
and whose backward is the exact vector-Jacobian product of that forward; the loss becomes a
torch loss callable (``OwnLossFunction``) in the same way. The isolate run and every evidence
plug-in of ``compare`` then use them as they use a twin's modules. Where a forward cannot run
on tensors (``NotOnTensors``: ``np.random``, a NumPy function the tensor module lacks, ...),
central differences of the same forward stand in, and a note says so with the reason.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from gradparity.evidence.central_difference import full_gradient, step_size
from gradparity.sides.adapt import Wrapped, params_of

REFERENCE_NAME = "autodiff (each layer's own forward)"
INPUT = "<input>"  # the name the layer's input is differentiated under (no parameter has it)
_OWN_PACKAGES = ("gradparity.ours", "gradparity.corpus")  # gradparity code users check as theirs


@dataclass
class ReferenceNotes:
    """What a run of the reference has to say: layers whose reference fell back to central
    differences (layer name -> the reason), the engine's notes (a value that left the graph)
    and its kink probes (ReLU at 0, a tie), each layer's run only when asked about."""

    fallbacks: dict[str, str] = field(default_factory=dict)
    engine: dict[str, list[str]] = field(default_factory=dict)  # layer name -> its notes
    kink_probes: dict[str, list[Callable[[], list[str]]]] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict) -> ReferenceNotes:
        return self  # one record per run, also through the copies evidence plug-ins make

    def add(self, name: str, run: Any) -> None:
        """Keep what the engine's ``ExactRun`` of layer ``name`` has to say."""
        self.engine.setdefault(name, []).extend(run.cut_notes)
        self.kink_probes.setdefault(name, []).append(lambda: run.kink_notes)

    def lines(self, diverging: Iterable[str] = ()) -> list[str]:
        """One note per fallen-back layer, in the order they fell back, then the engine's; the
        kink notes of the ``diverging`` layers only (a kink explains nothing elsewhere)."""
        kinks = [n for name in diverging for n in self._kink_notes(name)]
        return [
            f"{name}: its forward cannot run on tensors ({reason}); its reference is central "
            "differences of that forward (approximate, and only right if the forward gives "
            "the same output for the same input)"
            for name, reason in self.fallbacks.items()
        ] + list(dict.fromkeys([n for notes in self.engine.values() for n in notes] + kinks))

    def kinks(self, name: str) -> bool:
        """Whether the engine met an exact kink (ReLU at 0, a tie) in ``name``'s forward."""
        return bool(self._kink_notes(name))

    def _kink_notes(self, name: str) -> list[str]:
        return [n for probe in self.kink_probes.get(name, []) for n in probe()]


def code_objects(obj: Any) -> list[Any]:
    """What the autodiff run searches for the layer's arrays and whose modules it rebinds: the
    object itself; for a ``gp.wrap`` adapter the wrapped object and its callables; for a
    ``gp.layer`` adapter the user's functions (``code_of``)."""
    if isinstance(obj, Wrapped):
        extra = [a for a in (obj._forward, obj._backward) if callable(a)]
        return [obj, obj.obj, *extra]
    named = getattr(obj, "code_of", None)
    if callable(named):
        return [obj, named("forward"), named("backward")]
    return [obj]


def _own_modules(obj: Any) -> list[ModuleType]:
    """The gradparity modules (``ours`` and its corpus) the object's forward runs in, which
    ``user_modules`` leaves out as gradparity's own: its classes' modules and every loaded
    ``gradparity.ours`` module (their helpers call each other)."""
    inner = obj.obj if isinstance(obj, Wrapped) else obj
    names = {c.__module__ for c in type(inner).__mro__ if c.__module__.startswith(_OWN_PACKAGES)}
    if not names:
        return []
    names |= _loaded_ours()
    return [sys.modules[n] for n in sorted(names)]


_LOADED_OURS: dict[int, set[str]] = {}  # len(sys.modules) -> the gradparity.ours modules


def _loaded_ours() -> set[str]:
    """The names of the loaded ``gradparity.ours`` modules. A scan of ``sys.modules`` costs
    more than a small layer's whole run, so it is redone only when the number of loaded
    modules changed (a module imported) or a remembered one is gone."""
    count = len(sys.modules)
    names = _LOADED_OURS.get(count)
    if names is None or not all(n in sys.modules for n in names):
        names = {n for n in sys.modules if n.startswith("gradparity.ours.")}
        _LOADED_OURS.clear()
        _LOADED_OURS[count] = names
    return set(names)


def run_modules(obj: Any, callables: list[Any]) -> list[ModuleType] | None:
    """The modules to rebind for ``obj``'s forward: None (the engine's own choice) for user
    code, the user's modules plus ``_own_modules`` for layers built on ``gradparity.ours``."""
    own = _own_modules(obj)
    if not own:
        return None
    from gradparity.sides.autodiff import user_modules

    return [*user_modules(callables), *own]


def _differentiate(
    value: Callable[[], Any],
    arrays: dict[str, np.ndarray],
    owner: Any,
    inputs: list[np.ndarray],
    notes: ReferenceNotes,
    name: str,
) -> dict[str, np.ndarray]:
    """Exact gradients of ``value()`` with respect to ``arrays`` (name -> the array ``owner``
    or ``value`` references), ``inputs`` held as tensors without gradient; the engine's notes
    join ``notes`` under ``name``."""
    from gradparity.sides.autodiff import exact_gradients

    callables = [*code_objects(owner), value]
    # Called from a backward, where autograd is off; torch warns at a float() the engine
    # itself turns into a one-line fallback reason.
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        run = exact_gradients(
            value, arrays, callables, inputs=inputs, modules=run_modules(owner, callables)
        )
    notes.add(name, run)
    return run.grads


def _numeric(
    moved_value: Callable[[str, np.ndarray], float], arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Central differences of ``moved_value(name, step)`` for each of ``arrays``."""
    return {
        name: full_gradient(partial(moved_value, name), base.shape, step_size(base))
        for name, base in arrays.items()
    }


def _fallback_reason(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _cannot_run() -> tuple[type[Exception], ...]:
    """What sends a layer to central differences: code that cannot run on tensors, and the
    engine's one-line refusals (a parameter the forward does not use, a kink hit exactly)."""
    from gradparity.sides.autodiff import NotOnTensors

    return (NotOnTensors, ValueError)


@dataclass
class OwnForward:
    """One layer's forward as the reference: ``layer`` is a private copy of the user's layer
    (never the user's own), ``keys`` its parameters in order."""

    name: str
    layer: Any
    keys: list[str]
    notes: ReferenceNotes

    def fresh(self, values: Iterable[np.ndarray]) -> Any:
        """A copy of the layer holding ``values`` (in ``keys`` order), written into its own
        arrays in place so that arrays the layer shares between attributes stay shared."""
        layer = copy.deepcopy(self.layer)
        params = params_of(layer, self.name)
        for key, value in zip(self.keys, values):
            params[key][...] = value
        return layer

    def forward(self, x: np.ndarray, values: list[np.ndarray]) -> np.ndarray:
        """The layer's output at x with parameters ``values`` (NumPy, a copy of x fed)."""
        return np.asarray(self.fresh(values).forward(x.copy()))

    def vjp(
        self, x: np.ndarray, values: list[np.ndarray], upstream: np.ndarray
    ) -> dict[str, np.ndarray]:
        """d(sum(forward(x) * upstream)) by ``INPUT`` and each parameter key: exact, or by
        central differences when the forward cannot run on tensors (noted in ``notes``)."""
        if self.name not in self.notes.fallbacks:
            layer, xa, u = self.fresh(values), x.copy(), upstream.copy()
            try:
                return _differentiate(
                    lambda: (layer.forward(xa) * u).sum(),
                    {INPUT: xa, **params_of(layer, self.name)},
                    layer,
                    [u],
                    self.notes,
                    self.name,
                )
            except _cannot_run() as exc:
                self.notes.fallbacks[self.name] = _fallback_reason(exc)
        return self._numeric_vjp(x, values, upstream)

    def _numeric_vjp(
        self, x: np.ndarray, values: list[np.ndarray], upstream: np.ndarray
    ) -> dict[str, np.ndarray]:
        at = {INPUT: x, **dict(zip(self.keys, values))}

        def moved_value(name: str, step: np.ndarray) -> float:
            point = {k: v + step if k == name else v for k, v in at.items()}
            out = self.forward(point[INPUT], [point[k] for k in self.keys])
            return float(np.sum(out * upstream))

        return _numeric(moved_value, at)


class _ForwardOnTensors(torch.autograd.Function):
    """A layer's NumPy forward as an autograd node: its backward is ``OwnForward.vjp``."""

    @staticmethod
    def forward(ctx: Any, own: OwnForward, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.own = own
        ctx.save_for_backward(x, *params)
        values = [p.detach().numpy() for p in params]
        out = own.forward(x.detach().numpy(), values)
        return torch.from_numpy(np.array(out, dtype=np.float64)).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        own: OwnForward = ctx.own
        values = [p.numpy() for p in params]
        grads = own.vjp(x.numpy(), values, grad_out.numpy())
        wanted = [INPUT, *own.keys]
        return (None, *(_as_grad(grads.get(k), t) for k, t in zip(wanted, (x, *params))))


def _as_grad(grad: np.ndarray | None, like: torch.Tensor) -> torch.Tensor:
    if grad is None:
        return torch.zeros_like(like)
    return torch.as_tensor(np.asarray(grad, dtype=np.float64)).reshape(like.shape).to(like.dtype)


def torch_name(key: str) -> str:
    """The module's name for a layer's parameter ``key`` (torch refuses dots in names)."""
    return key.replace(".", "_")


class OwnForwardModule(nn.Module):
    """A user layer's forward as a torch module: parameters are float64 copies of the layer's
    (named by ``torch_name``), forward runs the layer's NumPy forward on a private copy, and
    backward is the exact vector-Jacobian product of that forward."""

    def __init__(self, name: str, layer: Any, notes: ReferenceNotes) -> None:
        super().__init__()
        params = params_of(layer, name)
        self.own = OwnForward(name, copy.deepcopy(layer), list(params), notes)
        for key, value in params.items():
            tensor = torch.tensor(np.array(value, dtype=np.float64))
            self.register_parameter(torch_name(key), nn.Parameter(tensor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        named = dict(self.named_parameters())
        params = [named[torch_name(k)] for k in self.own.keys]
        return _ForwardOnTensors.apply(self.own, x, *params)


@dataclass
class OwnLoss:
    """The user's loss's forward as the reference loss: ``loss`` is a private copy."""

    loss: Any
    notes: ReferenceNotes

    def value(self, z: np.ndarray, target: np.ndarray) -> float:
        """The loss's forward at logits z (a fresh copy of the loss each time)."""
        return float(np.asarray(copy.deepcopy(self.loss).forward(z.copy(), target)).reshape(()))

    def gradient(self, z: np.ndarray, target: np.ndarray) -> np.ndarray:
        """dL/dz of the loss's forward: exact, else central differences (noted)."""
        if "loss" not in self.notes.fallbacks:
            loss, za, t = copy.deepcopy(self.loss), z.copy(), target.copy()
            try:
                return _differentiate(
                    lambda: loss.forward(za, t), {INPUT: za}, loss, [t], self.notes, "loss"
                )[INPUT]
            except _cannot_run() as exc:
                self.notes.fallbacks["loss"] = _fallback_reason(exc)
        return _numeric(lambda _, step: self.value(z + step, target), {INPUT: z})[INPUT]


class _LossOnTensors(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, own: OwnLoss, z: torch.Tensor, target: np.ndarray) -> torch.Tensor:
        ctx.own, ctx.target = own, target
        ctx.save_for_backward(z)
        return torch.tensor(own.value(z.detach().numpy(), target), dtype=z.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (z,) = ctx.saved_tensors
        grad = ctx.own.gradient(z.numpy(), ctx.target) * float(grad_out)
        return None, torch.as_tensor(grad).to(z.dtype), None


class OwnLossFunction:
    """The user's loss as a torch loss callable (output, target) -> scalar tensor, whose
    gradient is the exact gradient of the loss's own forward."""

    def __init__(self, loss: Any, notes: ReferenceNotes) -> None:
        self.own = OwnLoss(copy.deepcopy(loss), notes)

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``output`` (N, C) at ``target`` (a tensor, handed to the loss as the
        NumPy array the user passed)."""
        return _LossOnTensors.apply(self.own, output, target.detach().cpu().numpy())
