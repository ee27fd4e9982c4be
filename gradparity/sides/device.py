"""The device the torch reference runs on, and TF32 on CUDA.

``device="cuda"``: the reference's copy is moved to the GPU and torch creates every tensor of
the comparison there by default (``torch.device`` as a context), so inputs, upstream gradients
and probes follow it; ``to_numpy`` brings each result back to the CPU.

On Ampere and later GPUs torch may run float32 matrix products and cuDNN convolutions on TF32
inputs (10 mantissa bits: a unit round-off of 2**-11 = 4.9e-4, against float32's 6.0e-8).
Measured on an H100 with torch 2.11, a small CNN's input gradient drifted 13.5% from float64
with cuDNN's default TF32 and under 1e-5 with it off, far past any float32 budget. So TF32 is
switched off for the comparison and put back afterwards; a user who keeps it
(``keep_tf32=True``) gets wider float32 budgets and a note saying why.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from gradparity.core.errors import InputError
from gradparity.core.tolerance import Tolerance

# torch >= 2.9 sets TF32 per backend and operator; "none" inherits from the parents (nearest
# first). Reading the older allow_tf32 flags raises once these were set apart, so where they
# exist only they are read.
NEW_API_LEAVES = {
    "torch.backends.cuda.matmul.fp32_precision": ("torch.backends.fp32_precision",),
    "torch.backends.cudnn.conv.fp32_precision": (
        "torch.backends.cudnn.fp32_precision",
        "torch.backends.fp32_precision",
    ),
    "torch.backends.cudnn.rnn.fp32_precision": (
        "torch.backends.cudnn.fp32_precision",
        "torch.backends.fp32_precision",
    ),
}
NEW_API_PARENTS = ("torch.backends.fp32_precision", "torch.backends.cudnn.fp32_precision")
OLD_API_FLAGS = ("torch.backends.cuda.matmul.allow_tf32", "torch.backends.cudnn.allow_tf32")
MATMUL_PRECISION = "torch.get_float32_matmul_precision()"

# The float32 rtol while TF32 is kept: TF32 rounds each product's inputs to 2**-11, so sums of
# a few hundred terms drift by about 1e-2 of their scale (normwise). Provisional until
# benchmarks/cuda_zoo.py has measured the zoo on a GPU.
TF32_RTOL = 2e-2

_DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")


def check_device(device: Any) -> str:
    """The device name, "cpu", "cuda" or "cuda:N" (a ``torch.device`` by its name), checked:
    one line for an unknown name and for a CUDA device torch cannot see."""
    if isinstance(device, torch.device):
        device = str(device)
    match = _DEVICE.fullmatch(device) if isinstance(device, str) else None
    if match is None or device.startswith("cpu:"):
        raise InputError(
            f'device {device!r} is unknown; pass "cpu" or "cuda" (or "cuda:N" for the N-th GPU)'
        )
    if device == "cpu":
        return device
    if not torch.cuda.is_available():
        raise InputError(
            f"device={device!r} but torch sees no CUDA GPU (torch.cuda.is_available() is "
            "False); run where there is one with a CUDA build of torch, or leave device out"
        )
    index = int(match.group(2)[1:]) if match.group(2) else 0
    if index >= torch.cuda.device_count():
        raise InputError(
            f"device={device!r} but torch sees {torch.cuda.device_count()} CUDA GPU(s); "
            "pass cuda:0 up to the last one"
        )
    return device


def torch_device(name: str) -> torch.device:
    """The torch device the reference runs on for a checked name (tests stand a CPU in)."""
    return torch.device(name)


def _new_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision")


def _owner_and_attribute(path: str) -> tuple[Any, str]:
    owner, _, attribute = path.removeprefix("torch.").rpartition(".")
    return functools.reduce(getattr, owner.split("."), torch), attribute


def _read(path: str) -> Any:
    if path == MATMUL_PRECISION:
        return torch.get_float32_matmul_precision()
    return getattr(*_owner_and_attribute(path))


def _write(path: str, value: Any) -> None:
    if path == MATMUL_PRECISION:
        torch.set_float32_matmul_precision(value)
    else:
        setattr(*_owner_and_attribute(path), value)


def tf32_settings() -> dict[str, Any]:
    """Every TF32 setting of this torch, path -> value, in the order that restores them:
    the matmul precision first (it sets the matmul leaf), parents before their leaves."""
    paths = [*NEW_API_PARENTS, *NEW_API_LEAVES] if _new_api() else list(OLD_API_FLAGS)
    return {path: _read(path) for path in [MATMUL_PRECISION, *paths]}


def restore_tf32(settings: dict[str, Any]) -> None:
    """Write back ``settings`` as ``tf32_settings`` read them."""
    for path, value in settings.items():
        _write(path, value)


def switch_tf32_off() -> None:
    """float32 products and convolutions in full float32 precision on every backend."""
    _write(MATMUL_PRECISION, "highest")
    for path in NEW_API_LEAVES if _new_api() else OLD_API_FLAGS:
        _write(path, "ieee" if path in NEW_API_LEAVES else False)


def tf32_on(settings: dict[str, Any]) -> list[str]:
    """The settings of ``settings`` that let float32 run below full precision, as
    "name=value" (a leaf set to "none" shows the parent it inherits "tf32" from)."""
    on = []
    for path, value in settings.items():
        if path == MATMUL_PRECISION and value != "highest":
            on.append(f"{path}={value!r}")
        elif path in OLD_API_FLAGS and value:
            on.append(f"{path}=True")
        elif path in NEW_API_LEAVES:
            chain = [value, *(settings[p] for p in NEW_API_LEAVES[path])]
            effective = next((v for v in chain if v != "none"), "none")
            if effective == "tf32":
                on.append(f"{path}='tf32'" + ("" if value == "tf32" else " (inherited)"))
    return on


@dataclass(frozen=True)
class DeviceChoice:
    """Where the reference runs and what became of TF32: ``device`` "cpu", "cuda" or
    "cuda:N"; ``keep_tf32``: the user's choice; ``was_on``: the TF32 settings on when the
    comparison began (``tf32_on``)."""

    device: str
    keep_tf32: bool
    was_on: tuple[str, ...]

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"

    def widens(self, dtype: str) -> bool:
        """Whether kept TF32 touches this comparison: float32 on a GPU with some TF32 on."""
        return self.on_gpu and self.keep_tf32 and dtype == "float32" and bool(self.was_on)

    def tolerance(self, tol: Tolerance, rtol_given: bool) -> Tolerance:
        """``tol``, its rtol raised to ``TF32_RTOL`` where kept TF32 touches the comparison
        and the user set no rtol of their own."""
        if not self.widens(tol.dtype) or rtol_given or tol.rtol >= TF32_RTOL:
            return tol
        return Tolerance(rtol=TF32_RTOL, atol=tol.atol, dtype=tol.dtype)

    def meta(self) -> dict[str, str]:
        """The report's meta entries: none on the CPU (reports stay as they were)."""
        if not self.on_gpu:
            return {}
        tf32 = "off for the comparison"
        if self.keep_tf32:
            tf32 = "kept: " + (", ".join(self.was_on) or "no TF32 setting is on")
        return {"device": self.device, "tf32": tf32}

    def notes(self, dtype: str) -> list[str]:
        """What the report says about TF32, in words."""
        if not self.on_gpu or not self.was_on:
            return []
        on = ", ".join(self.was_on)
        if not self.keep_tf32 and dtype == "float32":
            return [
                f"TF32 was on ({on}): switched off for the comparison and restored afterwards, "
                "since its rounding (2**-11) would hide float32 errors; keep_tf32=True keeps it"
            ]
        if not self.keep_tf32:
            return []
        if dtype != "float32":
            return [f"TF32 kept ({on}); it does not touch {dtype}, so budgets are unchanged"]
        return [
            f"TF32 kept ({on}): float32 products round their inputs to 2**-11, so the float32 "
            f"rtol is widened to {TF32_RTOL:g} (unless rtol is given); errors below that are "
            "not seen, leave keep_tf32 out to judge in full float32"
        ]


def choose_device(device: Any, keep_tf32: Any) -> DeviceChoice:
    """The checked device and the TF32 settings as they are now (``keep_tf32`` is a bool the
    caller checked)."""
    name = check_device(device)
    return DeviceChoice(name, bool(keep_tf32), tuple(tf32_on(tf32_settings())))


@contextmanager
def reference_device(choice: DeviceChoice) -> Iterator[None]:
    """Inside: torch makes tensors on the chosen device by default and TF32 is off unless
    kept; the settings and the default device are put back afterwards, also after an error.
    Nothing changes on the CPU."""
    if not choice.on_gpu:
        yield
        return
    before = tf32_settings()
    try:
        if not choice.keep_tf32:
            switch_tf32_off()
        with torch_device(choice.device):
            yield
    finally:
        restore_tf32(before)
