"""Dropout in training mode: both sides apply the same mask in every pass of a check.

torch's dropout modules (``nn.Dropout``, ``Dropout1d/2d/3d`` with torch's own forward) draw a
fresh mask at each call, and so does a NumPy dropout layer, so no two passes (chain, isolate,
probes, re-runs, warm-ups, the float64 twin, training steps) would drop the same units. Each
such module gets a forward hook that replaces its output by x * keep / (1 - p), torch's own
formula, with one shared ``keep`` mask, in one of two directions:

- reference -> ours, for an ours layer that takes a mask (``pinned_mask``, as ``ours.Dropout``):
  one setup forward of the reference draws each mask with the module's own forward run on
  ones, from torch's generator seeded by the check's seed. Kept units come out as 1 / (1 - p)
  and dropped ones as 0 whatever x holds, so the mask is exact; reading it from the real
  output (out != 0) would call a kept unit whose input is exactly 0 dropped. The mask is then
  pinned on ours' layer and on the hook for the whole check (one draw per training step).
- ours -> reference, for a layer that draws its own mask and keeps it (``self.mask``, bool or
  scaled, non-zero where kept: the book-style class): after each forward of that layer (any copy
  the harness runs) the mask it drew is handed to the hook, so the reference's next call of the
  module applies it. Ours runs before the reference in every pass (chain, isolate, step).

A layer that neither takes nor keeps a mask gets a ``dropout_mask_unshared`` warning. Torch's
own random draws are made inside ``torch.random.fork_rng``: the user's generator is untouched.
A module called several times in one forward applies the same mask at each call, where torch
draws one per call: a ``dropout_calls_share_mask`` warning says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from gradparity.core.finding import Finding
from gradparity.core.labels import DROPOUT_CALLS_SHARE_MASK, DROPOUT_MASK_UNSHARED
from gradparity.pairing.align import LayerPair
from gradparity.sides.running_stats import kept_buffers, state_owner

# The attribute through which an ours layer takes a mask for every training forward.
PIN_ATTRIBUTE = "pinned_mask"
# Attributes in which a layer that draws its own mask keeps it after forward.
MASK_ATTRIBUTES = ("mask", "dropout_mask", "keep_mask")
# torch's dropouts whose forward draws the mask; alpha dropout computes something else.
_TORCH_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
# Marks an ours layer (and the copies the harness makes of it) with its reference module.
_MARK = "_gradparity_dropout_module"


def draws_own_mask(module: nn.Module) -> bool:
    """Whether ``module`` is one of torch's dropouts, with torch's forward, in training mode
    and with 0 < p < 1 (p = 0 and p = 1 draw nothing that matters)."""
    own_forward = any(type(module).forward is cls.forward for cls in _TORCH_DROPOUTS)
    return own_forward and module.training and 0.0 < float(getattr(module, "p", 0.0)) < 1.0


def keep_of(mask: Any) -> np.ndarray:
    """A mask as ours holds it (bool, or floats scaled by 1 / (1 - p)) as bool: True where kept."""
    return np.asarray(mask) != 0


@dataclass
class MaskStore:
    """The keep mask (bool, like the module's input) each module applies, by module name;
    ``drawing`` while the setup forward draws them."""

    keep: dict[str, torch.Tensor] = field(default_factory=dict)
    drawing: bool = False


def _masking_hook(store: MaskStore, name: str) -> Callable:
    """A forward hook of module ``name``: its output replaced by x * keep / (1 - p) with the
    store's mask (drawn first while the store is drawing); left alone in eval mode or when the
    mask does not fit x (a batch of another size)."""

    def apply_mask(module: _DropoutNd, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or not args:
            return None
        x = args[0]
        if store.drawing:
            with torch.no_grad():  # the module's own kernel on ones: 1 / (1 - p) where kept
                store.keep[name] = module.forward(torch.ones_like(x)) != 0
        keep = store.keep.get(name)
        if keep is None or tuple(keep.shape) != tuple(x.shape):
            return None
        return x * (keep.to(device=x.device, dtype=x.dtype) / (1.0 - float(module.p)))

    return apply_mask


@dataclass
class DropoutSharing:
    """The dropout modules of one reference and the ours layers paired with them: ``pinned``
    take the reference's masks, ``followed`` hand theirs over (with the attribute that holds
    it), ``unshared`` do neither; ``repeated``: each module called several times in one
    forward, with ours' layers aligned with its calls (in call order)."""

    store: MaskStore
    pinned: list[LayerPair]
    followed: list[tuple[LayerPair, str]]
    unshared: list[LayerPair]
    repeated: dict[str, list[str]] = field(default_factory=dict)

    def draw(self, model: nn.Module, x: torch.Tensor, seed: int) -> None:
        """Draw every module's mask in one forward of ``model`` on x (running statistics put
        back, torch's generator seeded by ``seed`` and restored) and pin it on ours' layers."""
        if not self.pinned:
            return
        with torch.no_grad(), kept_buffers(model), _forked_rng():
            torch.manual_seed(seed)
            self.store.drawing = True
            try:
                model(x)
            finally:
                self.store.drawing = False
        for pair in self.pinned:
            keep = self.store.keep.get(pair.module_name)
            mask = None if keep is None else keep.detach().cpu().numpy()
            setattr(state_owner(pair.layer), PIN_ATTRIBUTE, mask)

    def notes(self) -> list[str]:
        """One note per shared mask, saying which way it went."""
        notes = [
            f"dropout masks shared, reference -> ours: {p.module_name} drew each mask (torch's "
            f"kernel, seeded by the check's seed) and {p.name} applied it through "
            f"{PIN_ATTRIBUTE}, in every pass"
            for p in self.pinned
        ]
        notes += [
            f"dropout masks shared, ours -> reference: {p.name} drew each mask ({p.name}.{attr} "
            f"after its forward) and {p.module_name} applied the one it drew last, in every pass"
            for p, attr in self.followed
        ]
        return notes

    def warnings(self) -> list[Finding]:
        """A ``dropout_mask_unshared`` warning per layer whose mask could not be shared."""
        found = []
        for pair in self.unshared:
            problem = (
                f"ours' {pair.name} draws its own dropout mask and neither takes nor keeps one, "
                f"so it cannot drop the same units as the reference's {pair.module_name}"
            )
            fix = (
                f"keep the mask in self.mask (non-zero where kept) after forward, or apply a "
                f"mask given in self.{PIN_ATTRIBUTE} when set; or compare both in eval mode"
            )
            found.append(
                Finding(
                    pair.name,
                    "output",
                    DROPOUT_MASK_UNSHARED,
                    {"module": pair.module_name, "attributes": [PIN_ATTRIBUTE, "mask"]},
                    f"{problem}; {fix}",
                    problem=problem,
                    fix=fix,
                )
            )
        return found + [_repeated_warning(m, layers) for m, layers in self.repeated.items()]


def _repeated_warning(module: str, layers: list[str]) -> Finding:
    """The warning of a dropout module called once per layer of ``layers`` in one forward."""
    problem = (
        f"the reference's {module} is called {len(layers)} times in one forward (ours' "
        f"{', '.join(layers)}) and every call applies one mask, where torch draws one per call"
    )
    fix = (
        "give each call its own dropout module to compare a mask per call, or compare in eval mode"
    )
    return Finding(
        layers[0],
        "output",
        DROPOUT_CALLS_SHARE_MASK,
        {"module": module, "layers": layers},
        f"{problem}; {fix}",
        problem=problem,
        fix=fix,
    )


def unpin_unfit(layers: list[tuple[str, Any]], batch: int) -> None:
    """Unpin (``pinned_mask`` None) each of ``layers`` ((name, layer) pairs: copies the
    harness owns) whose pinned mask was drawn for a batch of another size than ``batch``, so
    that it draws its own mask as the reference's module then does (the hook leaves a mask
    that does not fit alone) instead of raising: a validation batch of another size."""
    for _, layer in layers:
        owner = state_owner(layer)
        mask = getattr(owner, PIN_ATTRIBUTE, None)
        if mask is not None and np.shape(mask)[:1] != (batch,):
            setattr(owner, PIN_ATTRIBUTE, None)


@contextlib.contextmanager
def _forked_rng() -> Iterator[None]:
    """torch's generators (the CPU's, and each CUDA device's once CUDA is in use) put back
    after the block."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


def _mask_attribute(owner: Any) -> str | None:
    return next((a for a in MASK_ATTRIBUTES if hasattr(owner, a)), None)


def _classify(pairs: list[LayerPair], modules: dict[str, nn.Module]) -> DropoutSharing:
    sharing = DropoutSharing(MaskStore(), [], [], [])
    for pair in pairs:
        if pair.module_name not in modules:
            continue
        owner = state_owner(pair.layer)
        attr = _mask_attribute(owner)
        if hasattr(owner, PIN_ATTRIBUTE):
            sharing.pinned.append(pair)
        elif attr is not None:
            sharing.followed.append((pair, attr))
        else:
            sharing.unshared.append(pair)
    for pair in sorted(pairs, key=lambda p: p.call):
        if pair.module_name in modules:
            sharing.repeated.setdefault(pair.module_name, []).append(pair.name)
    sharing.repeated = {m: names for m, names in sharing.repeated.items() if len(names) > 1}
    return sharing


@contextlib.contextmanager
def _following(sharing: DropoutSharing) -> Iterator[None]:
    """While inside, each forward of a followed layer (or of any copy of it) hands the mask it
    drew to the store: its class's forward is wrapped, and the layer marked with its module
    (copies keep the mark); both undone after."""
    owners = [(state_owner(p.layer), p.module_name, attr) for p, attr in sharing.followed]
    classes = {type(owner) for owner, _, _ in owners}
    originals = {cls: cls.__dict__.get("forward") for cls in classes}
    try:
        for owner, module_name, attr in owners:
            setattr(owner, _MARK, (module_name, attr))
        for cls in classes:
            cls.forward = _handing_over(cls.forward, sharing.store)
        yield
    finally:
        for cls, original in originals.items():
            if original is None:
                delattr(cls, "forward")
            else:
                cls.forward = original
        for owner, _, _ in owners:
            owner.__dict__.pop(_MARK, None)


def _handing_over(forward: Callable, store: MaskStore) -> Callable:
    """``forward`` followed by handing the mask the layer drew to ``store``."""

    def forward_and_hand_over(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = forward(self, *args, **kwargs)
        mark = getattr(self, _MARK, None)
        mask = None if mark is None else getattr(self, mark[1], None)
        if mark is not None and mask is not None:
            store.keep[mark[0]] = torch.as_tensor(keep_of(mask))
        return out

    return forward_and_hand_over


@contextlib.contextmanager
def shared_dropout_masks(pairs: list[LayerPair], model: nn.Module) -> Iterator[DropoutSharing]:
    """Inside: ``model``'s dropout modules in training mode apply the masks shared with their
    ours layers (``draw`` them for the pinned ones). ``pairs``: ours layers against ``model``'s
    modules. Everything is put back after: hooks, ours' ``pinned_mask``, wrapped classes, and
    torch's generators (the passes' own dropout draws leave them as they were)."""
    modules = {name: m for name, m in model.named_modules() if draws_own_mask(m)}
    sharing = _classify(pairs, modules)
    owners = [state_owner(p.layer) for p in sharing.pinned]
    before = [getattr(owner, PIN_ATTRIBUTE) for owner in owners]
    handles = [
        m.register_forward_hook(_masking_hook(sharing.store, name)) for name, m in modules.items()
    ]
    try:
        with _forked_rng(), _following(sharing):
            yield sharing
    finally:
        for handle in handles:
            handle.remove()
        for owner, value in zip(owners, before):
            setattr(owner, PIN_ATTRIBUTE, value)
