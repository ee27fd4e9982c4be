"""The zoo on CUDA: how far TF32 moves the reference, and whether parity holds with it off.

For every model of ``gradparity.cli.zoo.MODELS``, in float32 and float64, with TF32 switched
off and with TF32 on in every setting (``keep_tf32=True``), prints:
- drift: max |dL/dx on the GPU - dL/dx in float64 on the CPU| / max |dL/dx in float64|, the
  reference's own input-gradient error (normwise);
- parity: whether ``gp.compare(..., device="cuda")`` finds ours and the reference in parity,
  and the rtol it judged with (widened while TF32 is kept).
TF32 touches float32 only: float64 rows show the same drift either way.

Run (on a machine with a CUDA GPU): .venv/bin/python benchmarks/cuda_zoo.py [--seed N]
Without one it says so and exits 2.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from gradparity.cli.zoo import MODELS, Setup, build
from gradparity.ours import SoftmaxCrossEntropy
from gradparity.pipelines.layers import compare
from gradparity.reference import mirror_loss
from gradparity.sides.device import (
    MATMUL_PRECISION,
    NEW_API_LEAVES,
    OLD_API_FLAGS,
    restore_tf32,
    switch_tf32_off,
    tf32_settings,
)

GPU = "cuda"  # the device measured (a test stands the CPU in)


@contextmanager
def tf32(on: bool) -> Iterator[None]:
    """TF32 on in every setting (or off in all), put back afterwards."""
    before = tf32_settings()
    if on:
        everywhere: dict[str, object] = {MATMUL_PRECISION: "high"}
        everywhere.update({p: "tf32" for p in NEW_API_LEAVES if p in before})
        everywhere.update({p: True for p in OLD_API_FLAGS if p in before})
        restore_tf32(everywhere)
    else:
        switch_tf32_off()
    try:
        yield
    finally:
        restore_tf32(before)


def input_gradient(setup: Setup, dtype: torch.dtype, device: str) -> np.ndarray:
    """dL/dx of the setup's reference (a copy in ``dtype`` on ``device``) under its loss,
    as float64 NumPy, x's shape."""
    model = copy.deepcopy(setup.reference).to(device=device, dtype=dtype)
    loss_fn = mirror_loss(getattr(setup, "loss", None) or SoftmaxCrossEntropy())
    x = torch.as_tensor(setup.x, device=device).to(dtype).requires_grad_(True)
    target = torch.as_tensor(setup.target, device=device)
    if target.is_floating_point():
        target = target.to(dtype)
    (grad,) = torch.autograd.grad(loss_fn(model(x), target), [x])
    return grad.detach().cpu().double().numpy()


def drift(grad: np.ndarray, exact: np.ndarray) -> float:
    """Normwise relative error of ``grad`` against ``exact`` (same shape)."""
    scale = float(np.abs(exact).max())
    return float(np.abs(grad - exact).max()) / scale if scale else float(np.abs(grad).max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "cuda_zoo: torch sees no CUDA GPU (torch.cuda.is_available() is False); run this "
            "on a machine with one and a CUDA build of torch",
            file=sys.stderr,
        )
        return 2
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"{'model':<12} {'dtype':<8} {'tf32':<5} {'drift':>10}  parity  rtol")
    for name in MODELS:
        setup = build(name, args.seed)
        exact = input_gradient(setup, torch.float64, "cpu")
        for dtype in ("float32", "float64"):
            for on in (False, True):
                with tf32(on):
                    moved = drift(input_gradient(setup, getattr(torch, dtype), GPU), exact)
                    report = compare(setup.ours, setup.reference, setup.x, setup.target,
                                     ours_loss=getattr(setup, "loss", None), dtype=dtype,
                                     device=GPU, keep_tf32=on)  # fmt: skip
                verdict = "ok" if report.ok else "FAILS"
                tf = "on" if on else "off"
                print(
                    f"{name:<12} {dtype:<8} {tf:<5} {moved:>10.3g}  {verdict:<6}  "
                    f"{report.tolerance.rtol:g}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
