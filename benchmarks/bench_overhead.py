"""Section 2 of ``make bench``: what the harness costs over running both sides once.

``gp.compare(model, twin, x, t)`` (float64, the default) over (bare ours forward+backward +
bare torch forward+backward, float64) for the 784-300-10 MLP, the ``cnn`` zoo model and a
64-layer MLP (32 blocks Linear(256, 256) + Tanh): target 1.2 when nothing diverges, 1.7 with
one seeded bug from ``gradparity.corpus.layer_bugs`` in the middle of the network. The MLP and
the CNN again in float32, as information: there ``compare`` also runs a float64 twin to
measure each tensor's rounding budget. With
``stop_at_first`` once ``gp.compare`` takes it. Then ``gp.compare_function`` on a course-style
``grads(x, t)`` of the MLP, against the torch twin and against ``"autodiff"``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
from bench_common import (
    Figure,
    Section,
    both_sides_figure,
    compare_accepts,
    interleaved_medians,
    ours_step,
    torch_step,
)
from bench_speed import Workload, cnn32, linear_twin32, mlp32

import gradparity as gp
from gradparity.corpus.layer_bugs import InputGradUsesW, ReLUMaskIgnored
from gradparity.ours import Linear, Sequential, Tanh

CLEAN_TARGET = 1.2
BUG_TARGET = 1.7


def deep_mlp32(
    blocks: int, width: int, batch: int, seed: int = 0, dtype: type = np.float32
) -> Workload:
    """``blocks`` x (Linear(width, width) + Tanh) in ``dtype``, ``width`` classes."""
    rng = np.random.default_rng(seed)
    layers: list[tuple[str, object]] = []
    for i in range(blocks):
        layers += [(f"fc{i}", Linear(width, width, rng=rng, dtype=dtype)), (f"act{i}", Tanh())]
    model = Sequential(*layers)  # type: ignore[arg-type]
    x = rng.standard_normal((batch, width)).astype(dtype)
    target = rng.integers(0, width, size=batch)
    name = f"{2 * blocks}-layer MLP ({blocks} x Linear({width}, {width}) + Tanh), batch {batch}"
    name += f", {np.dtype(dtype).name}"
    return Workload(name, model, linear_twin32(model), x, target)


def with_bug(work: Workload, layer_name: str, mutant: type) -> Workload:
    """The workload with layer ``layer_name`` turned into ``mutant`` (a buggy subclass of its
    class, same state); the twin stays correct."""
    layers = []
    for name, layer in work.model.named_layers():
        if name == layer_name:
            buggy = mutant.__new__(mutant)
            buggy.__dict__.update(copy.deepcopy(layer.__dict__))
            layer = buggy
        layers.append((name, layer))
    bug_name = f"{work.name}, {mutant.__name__} in {layer_name}"
    return Workload(bug_name, Sequential(*layers), work.twin, work.x, work.target)


def compare_call(work: Workload, **options: object) -> Callable[[], object]:
    """One ``gp.compare`` of the workload, in its dtype."""
    dtype = work.x.dtype.name
    return lambda: gp.compare(work.model, work.twin, work.x, work.target, dtype=dtype, **options)


def compare_figures(work: Workload, target: float | None, repeats: int) -> list[Figure]:
    """``compare`` (and ``compare(stop_at_first=True)`` when it exists) over both bare sides."""
    calls = {
        "compare": compare_call(work),
        "ours": ours_step(work.model, work.x, work.target),
        "torch": torch_step(work.twin, work.x, work.target),  # type: ignore[arg-type]
    }
    if compare_accepts("stop_at_first"):
        calls["stop_at_first"] = compare_call(work, stop_at_first=True)
    medians = interleaved_medians(calls, repeats)
    bare = (medians["ours"], medians["torch"])
    figures = [both_sides_figure(work.name, medians["compare"], bare, target, repeats)]
    if "stop_at_first" in medians:
        name = f"{work.name}, stop_at_first=True"
        figures.append(both_sides_figure(name, medians["stop_at_first"], bare, target, repeats))
    return figures


def mlp_grads_function(params: dict[str, np.ndarray]) -> Callable:
    """Course-style backprop of the Linear-ReLU-Linear MLP: a forward keeping its caches, a
    backward by hand, the gradients as a dict keyed like ``params`` (W (in, out), b (out,))."""

    def grads(x: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        z1 = x @ params["W1"] + params["b1"]
        a1 = np.maximum(z1, 0)
        z2 = a1 @ params["W2"] + params["b2"]
        exp = np.exp(z2 - z2.max(axis=1, keepdims=True))
        dz2 = exp / exp.sum(axis=1, keepdims=True)
        dz2[np.arange(len(target)), target] -= 1
        dz2 /= len(target)
        dz1 = (dz2 @ params["W2"].T) * (z1 > 0)
        return {
            "W1": x.T @ dz1,
            "b1": dz1.sum(axis=0),
            "W2": a1.T @ dz2,
            "b2": dz2.sum(axis=0),
        }

    return grads


def mlp_loss(params: dict[str, np.ndarray], x: np.ndarray, target: np.ndarray) -> float:
    """The mean softmax cross-entropy of the MLP (the ``loss_fn`` autodiff differentiates)."""
    a1 = np.maximum(x @ params["W1"] + params["b1"], 0)
    z2 = a1 @ params["W2"] + params["b2"]
    shifted = z2 - z2.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1))
    return float((log_sum - shifted[np.arange(len(target)), target]).mean())


def function_figures(work: Workload, repeats: int) -> list[Figure]:
    """``compare_function`` against the twin and against autodiff, over bare grads + torch."""
    fc1, fc2 = work.model["fc1"], work.model["fc2"]
    params = {"W1": fc1.params["W"], "b1": fc1.params["b"]}
    params |= {"W2": fc2.params["W"], "b2": fc2.params["b"]}
    grads = mlp_grads_function(params)
    x, target, dtype = work.x, work.target, work.x.dtype.name
    medians = interleaved_medians(
        {
            "twin": lambda: gp.compare_function(grads, params, work.twin, x, target, dtype=dtype),
            "autodiff": lambda: gp.compare_function(
                grads, params, "autodiff", x, target, dtype=dtype, loss_fn=mlp_loss
            ),
            "grads": lambda: grads(x, target),
            "torch": torch_step(work.twin, x, target),  # type: ignore[arg-type]
        },
        repeats,
    )
    bare = (medians["grads"], medians["torch"])
    return [
        both_sides_figure(
            f"compare_function, {work.name}, torch twin",
            medians["twin"],
            bare,
            CLEAN_TARGET,
            repeats,
        ),
        both_sides_figure(
            f"compare_function, {work.name}, autodiff",
            medians["autodiff"],
            bare,
            CLEAN_TARGET,
            repeats,
            note="baseline: bare grads + the torch twin's forward+backward",
        ),
    ]


def run(repeats: int, quick: bool) -> Section:
    """Section 2's figures (tiny batches and an 8-layer deep MLP with ``quick``)."""
    batch = 8 if quick else None
    mlp = mlp32((784, 300, 10), batch or 128, dtype=np.float64)
    conv = cnn32(batch or 64, dtype=np.float64)
    deep = deep_mlp32(4 if quick else 32, 32 if quick else 256, batch or 64, dtype=np.float64)
    middle_block = f"fc{(4 if quick else 32) // 2}"
    figures: list[Figure] = []
    for work in (mlp, conv, deep):
        figures += compare_figures(work, CLEAN_TARGET, repeats)
    buggy = (
        with_bug(mlp, "act1", ReLUMaskIgnored),
        with_bug(conv, "act2", ReLUMaskIgnored),
        with_bug(deep, middle_block, InputGradUsesW),
    )
    for work in buggy:
        figures += compare_figures(work, BUG_TARGET, repeats)
    figures += function_figures(mlp, repeats)
    for work in (mlp32((784, 300, 10), batch or 128), cnn32(batch or 64)):
        figures += compare_figures(work, None, repeats)  # float32: information
    notes = [
        "harness = one `gp.compare(...)` in the workload's dtype (float64, the default, for"
        " the targeted rows); bare both sides = ours clear grads, forward, loss, backward +"
        " torch zero_grad, forward, loss, backward (input requiring grad), medians taken in"
        " the same run, interleaved.",
        "float32 rows (no target): compare also runs a float64 twin of the reference to"
        " measure each tensor's rounding budget, and runs every layer alone.",
        "compare_function's baseline is the bare `grads(x, t)` plus the torch twin's"
        " forward+backward, also for the autodiff row (which runs no twin).",
    ]
    if not compare_accepts("stop_at_first"):
        notes.append("the installed `gp.compare` has no `stop_at_first` yet: no such rows.")
    return Section("overhead", "harness overhead", figures, notes=notes)
