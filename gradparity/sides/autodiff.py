"""The autodiff reference: the exact gradient of the user's own NumPy forward code.

``exact_gradients`` runs the user's unmodified code with ``np`` bound to ``torch._numpy`` (the
NumPy-compatible module on top of tensors) in the user's modules, with float64 leaf tensors in
place of the parameter arrays wherever they are referenced, and differentiates the loss with
autograd; then puts everything back. Torch is imported only while a gradient is taken.
"""

from __future__ import annotations

import time
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import numpy as np

from gradparity.core.errors import InputError, first_line
from gradparity.sides import taps
from gradparity.sides.rebinding import NotOnTensors, Rebinding, module_files, user_modules

__all__ = ["ExactRun", "NotOnTensors", "exact_gradients", "unavailable", "user_modules"]

# torch._numpy is private: pyproject pins the torch range this is tested on (2.13), and
# ``unavailable`` checks for what the engine uses, so a changed module is named, not crashed on.


@dataclass
class ExactRun:
    """The exact gradients of one loss: ``grads`` by the flat parameter names; ``taps``: the
    forward taps recorded in the tensor run; ``tap_grads``: dL/d(tap) for those the loss
    depends on; ``cut_notes``: one line per place a value left the graph; ``kink_probe``:
    the notes on kinks met exactly (ReLU at 0, a tie), computed when first asked for."""

    loss: float
    grads: dict[str, np.ndarray]
    taps: dict[str, np.ndarray]
    tap_grads: dict[str, np.ndarray]
    seconds: float
    cut_notes: list[str] = field(default_factory=list)
    kink_probe: Callable[[], list[str]] = field(default=list, repr=False)

    @cached_property
    def kink_notes(self) -> list[str]:
        """One line per call site where the loss's gradient passes an exact kink whose operands
        move with a parameter. Deciding that costs a second backward pass through the
        operands' history (a third of a naive-loop conv net's reference), so front ends ask
        only where a gradient diverges; until then the run keeps its graph."""
        return self.kink_probe()

    @property
    def notes(self) -> list[str]:
        """Every note: the cuts, then the kinks (which runs the kink probe)."""
        return self.cut_notes + self.kink_notes


def unavailable() -> str | None:
    """Why the autodiff reference cannot run with this torch (torch or ``torch._numpy`` missing
    or not the tested kind), or None when it can."""
    try:
        import torch
        import torch._numpy as tnp
        from torch._numpy import _normalizations  # noqa: F401  (tensor_numpy patches it)
    except ImportError as exc:
        return f"the autodiff reference needs torch with torch._numpy ({exc})"
    for name in ("ndarray", "asarray", "zeros", "pad", "maximum"):
        if not hasattr(tnp, name):
            return (
                f"torch {torch.__version__}'s torch._numpy lacks {name}: the autodiff "
                "reference is tested on torch 2.13"
            )
    if not isinstance(getattr(tnp.asarray(torch.zeros(1)), "tensor", None), torch.Tensor):
        return (
            f"torch {torch.__version__}'s torch._numpy arrays changed: the autodiff "
            "reference is tested on torch 2.13"
        )
    return None


def exact_gradients(
    loss_call: Callable[[], Any],
    params: Mapping[str, np.ndarray],
    callables: Sequence[Any],
    *,
    inputs: Sequence[np.ndarray] = (),
    modules: Sequence[str | types.ModuleType] | None = None,
) -> ExactRun:
    """Run ``loss_call()`` on tensors and differentiate its loss (float64).

    ``params``: flat name -> the user's live array (any shape); each is replaced wherever
    ``loss_call`` and ``callables`` reach it (and in the user's module globals) by a leaf
    tensor that requires grad; each of ``inputs`` likewise, without grad. ``loss_call``
    returns the loss or a tuple/list whose first element is it. Everything is put back after
    the call, also after an error. Raises ``NotOnTensors`` for code that cannot run on
    tensors and ``InputError`` (a ``ValueError``, one line) for an integer parameter, a loss
    that is not a scalar or does not depend on a parameter. ``ExactRun.notes`` says where the
    run met a kink that changes a gradient (ReLU at 0, a tie) or a value left the graph.
    """
    why = unavailable()
    if why is not None:
        raise NotOnTensors("torch._numpy", "", why)
    for name, array in params.items():
        _check_parameter(name, array)
    from gradparity.sides import tensor_numpy as tn
    from gradparity.sides.tensor_speed import fast_paths

    started = time.perf_counter()
    roots = [loss_call, *callables]
    mods = user_modules(roots, modules)
    session = tn.TensorSession(module_files(mods, roots))
    leaves = {id(a): tn.as_tensor_array(a, grad=True) for a in params.values()}
    stand_ins = {id(a): tn.as_tensor_array(a, grad=False) for a in inputs}
    stand_ins.update(leaves)
    rebinding = Rebinding(stand_ins, [*params.values(), *inputs])
    log = TensorTaps()
    try:
        # the fast paths first: the run's patches (kinks of a.max()) wrap them
        with fast_paths(), tn.ArrayClassPatch(session), taps.recording(log):
            proxy = tn.TensorNumpy(session)
            for module in mods:
                rebound = {
                    n: tn.tensor_binding(v, n, session, proxy) for n, v in tn.numpy_bindings(module)
                }
                rebinding.replace_globals(module, rebound)
            rebinding.replace_in(roots)
            out = _run(loss_call, session)
    finally:
        rebinding.restore()
    loss = _loss_tensor(out, session)
    return _differentiate(loss, params, leaves, log, session, started)


class TensorTaps(taps.TapLog):
    """The forward taps of the tensor run, (name, tensor array or NumPy value), call order;
    gradient taps are not recorded (the run computes the exact ones)."""

    def record(self, name: str, value: Any, grad: bool, site: tuple[str, int]) -> None:
        if not grad:
            self.append((name, value))
            self.sites.append(site)


def _check_parameter(name: str, array: Any) -> None:
    if not isinstance(array, np.ndarray):
        raise InputError(f"parameter {name!r} is a {type(array).__name__}, not a NumPy array")
    if array.dtype.kind != "f":
        raise InputError(
            f"parameter {name!r} holds {array.dtype} values: autodiff needs floating-point "
            "parameters (make it with dtype=np.float64)"
        )


def _run(loss_call: Callable[[], Any], session: Any) -> Any:
    """``loss_call()``; an error on tensors becomes ``NotOnTensors`` at the user's line."""
    try:
        return loss_call()
    except NotOnTensors:
        raise
    except Exception as exc:
        where, call = _failing_user_line(exc, session.user_files)
        text = first_line(exc)
        raise NotOnTensors(
            call,
            where,
            f"{call} at {where or 'the forward'} fails on tensors ({type(exc).__name__}: {text})",
        ) from exc


def _failing_user_line(exc: BaseException, user_files: set[str]) -> tuple[str, str]:
    """("path:line" of the innermost user frame of ``exc``'s traceback, the call made there)."""
    from gradparity.core.source import shown_path

    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if frame.filename in user_files:
            call = (frame.line or frame.name).strip()
            return f"{shown_path(frame.filename)}:{frame.lineno}", call
    return "", type(exc).__name__


def _loss_tensor(out: Any, session: Any) -> Any:
    """The loss tensor of ``loss_call``'s result; the first element of a tuple or list."""
    import torch

    if isinstance(out, tuple | list) and out:
        out = out[0]
    tensor = getattr(out, "tensor", out)
    if not isinstance(tensor, torch.Tensor):
        tensor = _returned_as_number(out, session)
    if tensor is None:
        _cut_or_independent(session, "the loss")
        raise AssertionError("unreachable")
    if tensor.numel() != 1:
        raise InputError(
            f"the loss has shape {tuple(tensor.shape)}, not one number: return its sum or mean"
        )
    if not tensor.requires_grad:
        _cut_or_independent(session, "the loss")
    return tensor.reshape(())


def _returned_as_number(out: Any, session: Any) -> Any:
    """The tensor behind a loss returned as a number (``return float(loss)``, as a loss
    protocol may ask): the last float()/.item() that gave exactly this number, whose cut is
    then no cut; None when the number came from nowhere on the graph."""
    if isinstance(out, np.ndarray) and out.size == 1:
        out = out.item()
    if not isinstance(out, float | np.floating):
        return None
    for number, tensor, cut in reversed(session.scalars):
        if number == float(out):
            del session.cuts[cut]
            return tensor
    return None


def _cut_or_independent(session: Any, what: str, parameter: str | None = None) -> None:
    """Raise: ``NotOnTensors`` at the first place a value left the graph, else ``ValueError``
    saying the loss does not depend on the parameters (or on ``parameter``)."""
    if session.cuts:
        call, where = session.cuts[0]
        raise NotOnTensors(
            call,
            where,
            f"{call} at {where or 'the forward'} takes a value out of the tensor graph, so "
            f"{what} gets no gradient: keep it as an array until the loss",
        )
    if parameter is None:
        raise InputError(
            "the loss does not depend on any parameter: check that loss_fn uses the "
            "params it is given"
        )
    raise InputError(
        f"the loss does not depend on parameter {parameter!r}: leave it out of params or "
        "use it in the forward"
    )


def _differentiate(
    loss: Any,
    params: Mapping[str, np.ndarray],
    leaves: dict,
    log: TensorTaps,
    session: Any,
    started: float,
) -> ExactRun:
    """The gradients of ``loss`` for every parameter, tap and kink, as an ``ExactRun``."""
    import torch

    tapped = taps.named([(name, getattr(v, "tensor", v)) for name, v in log])
    tap_tensors = {n: t for n, t in tapped.items() if _on_graph(t)}
    kinks = [k for k in session.kinks if k.output.requires_grad]
    wanted = [leaf.tensor for leaf in leaves.values()]
    wanted += list(tap_tensors.values()) + [k.output for k in kinks]
    wanted += [c.leaf for c in session.numpy_cuts]
    try:
        found = torch.autograd.grad(loss, wanted, allow_unused=True, retain_graph=True)
    except RuntimeError as exc:
        raise NotOnTensors(
            "an in-place write", "", f"autograd cannot differentiate the run: {first_line(exc)}"
        ) from exc
    _refuse_cuts(session.numpy_cuts, found[len(found) - len(session.numpy_cuts) :])
    by_leaf = dict(zip(leaves, found[: len(leaves)], strict=True))
    grads = {}
    for name, array in params.items():
        grad = by_leaf[id(array)]
        if grad is None:
            _cut_or_independent(session, f"parameter {name!r}", name)
        grads[name] = grad.detach().numpy().reshape(array.shape).copy()
    tap_found = found[len(leaves) : len(leaves) + len(tap_tensors)]
    return ExactRun(
        loss=float(loss.detach()),
        grads=grads,
        taps={n: a for n, t in tapped.items() if (a := _numpy(t)) is not None},
        tap_grads={
            n: g.detach().numpy().copy() for n, g in zip(tap_tensors, tap_found) if g is not None
        },
        seconds=time.perf_counter() - started,
        cut_notes=_cut_notes(session.cuts),
        kink_probe=_kink_probe(
            _kinks_met(kinks, found[len(leaves) + len(tap_tensors) :][: len(kinks)]),
            [leaf.tensor for leaf in leaves.values()],
        ),
    )


def _refuse_cuts(cuts: Sequence[Any], grads: Sequence[Any]) -> None:
    """``NotOnTensors`` for the first value computed by NumPy that the loss depends on."""
    for cut, grad in zip(cuts, grads, strict=True):
        if grad is not None:
            reason = cut.reason or "has no tensor version"
            raise NotOnTensors(cut.call, cut.where, f"{cut.call} at {cut.where} {reason}")


def _on_graph(value: Any) -> bool:
    return getattr(value, "requires_grad", False)


def _numpy(value: Any) -> np.ndarray | None:
    """A tapped value as a float64 NumPy copy; None for a value that is not real numbers (the
    NumPy run reports it)."""
    detach = getattr(value, "detach", None)
    try:
        array = detach().numpy() if detach is not None else np.asarray(value)
        return np.array(array, dtype=np.float64, copy=True)
    except (TypeError, ValueError):
        return None


def _cut_notes(cuts: Sequence[tuple[str, str]]) -> list[str]:
    """One line per place a value that depends on a parameter left the graph as a number: the
    gradient through it is not counted (harmless where it only feeds a printout)."""
    return [
        f"{call} at {where or 'the forward'} takes a value that depends on a parameter out of "
        "the tensor graph: any gradient through it is missing from the exact gradients"
        for call, where in dict.fromkeys(cuts)
    ]


def _kinks_met(kinks: Sequence[Any], grads: Sequence[Any]) -> dict[tuple[str, str], list[Any]]:
    """The kinks the loss's gradient passes, by call site (call, where): a kink (a tie of max
    or min, abs or ReLU at 0) whose output's gradient is not 0 at the kink."""
    sites: dict[tuple[str, str], list[Any]] = {}
    for kink, grad in zip(kinks, grads, strict=True):
        if grad is not None and bool((kink.at & (grad != 0)).any()):
            sites.setdefault((kink.call, kink.where), []).append(kink)
    return sites


def _kink_probe(
    sites: dict[tuple[str, str], list[Any]], leaves: Sequence[Any]
) -> Callable[[], list[str]]:
    """The kink notes of ``sites``, to compute when asked; nothing kept when no kink was met
    (the run's graph is then freed with it)."""
    return partial(_kink_notes, sites, leaves) if sites else list


def _kink_notes(sites: dict[tuple[str, str], list[Any]], leaves: Sequence[Any]) -> list[str]:
    """One line per call site of ``sites`` whose operands at the kink move with a parameter:
    only there can the choice of derivative (autograd's or the user's backward's) change a
    gradient."""
    notes = []
    for (call, where), met in sites.items():
        if _moves_with_parameters(met, leaves):
            notes.append(
                f"{call} at {where or 'the forward'}: values exactly at a kink (a tie, or ReLU "
                "at 0) where the derivative is not defined; autodiff's choice there may "
                "differ from your backward's"
            )
    return notes


def _moves_with_parameters(kinks: Sequence[Any], leaves: Sequence[Any]) -> bool:
    """Whether an operand element at one of ``kinks`` depends on a parameter (a random
    combination of them has a non-zero gradient)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    total = 0
    for kink in kinks:
        for operand, at in kink.touched:
            if operand.requires_grad:
                weights = torch.rand(at.shape, generator=generator, dtype=operand.dtype)
                total = total + (operand.expand(at.shape) * at * weights).sum()
    if not isinstance(total, torch.Tensor) or not total.requires_grad:
        return False
    found = torch.autograd.grad(total, list(leaves), allow_unused=True)
    return any(g is not None and bool(g.any()) for g in found)
