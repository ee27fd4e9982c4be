"""The user's factories on the command line: ``MODULE:FACTORY`` or ``FILE.py:FACTORY`` loaded
and called (``--ours``, ``--reference``, ``--function``), and the keyword arguments of
``compare`` / ``compare_function`` made from what they return, a torch twin or ``autodiff``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradparity.core.errors import InputError, describe_error
from gradparity.sides.rebinding import is_user_module

if TYPE_CHECKING:
    from gradparity.report.report import Report


AUTODIFF = "autodiff"  # --reference autodiff: the exact gradient of the user's own code
# compare_function's arguments that describe a torch reference
TORCH_ONLY = ("reference", "tap_map", "param_map", "reference_loss", "reference_x",
              "reference_target", "reference_inputs", "maps")  # fmt: skip


def load_factory(spec: str) -> Any:
    """``module:callable`` or ``path/file.py:callable`` -> the callable."""
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise InputError(f"expected MODULE:FACTORY or FILE.py:FACTORY, got {spec!r}")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise InputError(f"no such file: {path}")
            # As when running it as a script: modules next to the file can be imported.
            if str(path.resolve().parent) not in sys.path:
                sys.path.insert(0, str(path.resolve().parent))
            spec_of_file = importlib.util.spec_from_file_location(path.stem, path)
            if spec_of_file is None or spec_of_file.loader is None:
                raise InputError(f"cannot import {path}: not a Python source file")
            module = importlib.util.module_from_spec(spec_of_file)
            # Registered as an import would register it (never over a library's module of
            # that name): the autodiff reference finds the user's code by its classes' modules.
            held = sys.modules.get(path.stem)
            if held is None or is_user_module(held):
                sys.modules[path.stem] = module
            spec_of_file.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except InputError:
        raise
    except Exception as exc:  # a SyntaxError or an error at import time is the user's to fix
        raise InputError(f"cannot import {mod_name!r}: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"{mod_name!r} has no callable {attr!r}")
    return factory


def call_factory(spec: str) -> Any:
    factory = load_factory(spec)
    try:
        return factory()
    except Exception as exc:
        raise InputError(f"{spec} raised {describe_error(exc)}") from exc


def custom_setup(ours_spec: str, ref_spec: str, seed: int) -> tuple[dict, str]:
    """compare() keyword arguments from user factories.

    The ours factory returns a model, or a dict with "model" and optionally "x", "target",
    "loss", "layer_map"; the reference factory a torch module or a dict with "model" and
    optionally "loss". Without x, a random batch of 8 is made from the reference's first
    weight; without target, random classes of its output width.
    """
    import torch

    from gradparity.testing.assertion import default_target

    ours, ref = call_factory(ours_spec), call_factory(ref_spec)
    ours = ours if isinstance(ours, dict) else {"model": ours}
    ref = ref if isinstance(ref, dict) else {"model": ref}
    if not isinstance(ref.get("model"), torch.nn.Module):
        raise InputError(
            f"{ref_spec} must return a torch.nn.Module (or a dict with 'model'), "
            f"got {type(ref.get('model')).__name__}"
        )
    kwargs = {
        "ours_model": ours["model"],
        "reference_model": ref["model"],
        "ours_loss": ours.get("loss"),
        "reference_loss": ref.get("loss"),
        "layer_map": ours.get("layer_map"),
    }
    rng = np.random.default_rng(seed)
    x = ours.get("x")
    if x is None:
        first = next((p for p in ref["model"].parameters() if p.ndim == 2), None)
        if first is None:
            raise InputError("cannot infer the input width: return 'x' from the ours factory")
        x = rng.standard_normal((8, first.shape[1]))
    target = ours.get("target")
    if target is None:
        target = default_target(ref["model"], x, seed)
    kwargs.update(x=x, target=target)
    return kwargs, ours_spec.rpartition(":")[2]


def autodiff_setup(ours_spec: str) -> tuple[dict, str]:
    """compare() keyword arguments for ``--ours FACTORY --reference autodiff``: each layer
    against autodiff of its own forward. The factory returns a dict with "model", "x" and
    "target" (no torch model to guess them from) and optionally "loss"."""
    ours = call_factory(ours_spec)
    if not isinstance(ours, dict) or any(ours.get(k) is None for k in ("model", "x", "target")):
        raise InputError(
            f"with --reference autodiff, {ours_spec} must return a dict with 'model', 'x' and "
            "'target' (and optionally 'loss')"
        )
    kwargs = {
        "ours_model": ours["model"],
        "reference_model": AUTODIFF,
        "ours_loss": ours.get("loss"),
        "x": ours["x"],
        "target": ours["target"],
    }
    return kwargs, ours_spec.rpartition(":")[2]


def function_report(
    spec: str, dtype: str | None, seed: int | None, reference: str | None = None
) -> Report:
    """``check --function``: the factory returns compare_function's keyword arguments. With no
    "reference" among them, or with ``--reference autodiff``, the reference is "autodiff"."""
    from gradparity.pipelines.function import compare_function

    kwargs = call_factory(spec)
    required = ("grads", "params", "x", "target")
    if not isinstance(kwargs, dict) or any(k not in kwargs for k in required):
        got = sorted(kwargs) if isinstance(kwargs, dict) else type(kwargs).__name__
        raise InputError(
            f"{spec} must return a dict of compare_function arguments with {', '.join(required)} "
            f"(and reference: a torch model, None or 'autodiff'), got {got}"
        )
    # No torch twin written: the exact gradient of the factory's own loss code. --reference
    # autodiff sets a factory's torch reference aside, with the options only it takes.
    if reference is not None:
        kwargs = {k: v for k, v in kwargs.items() if k not in TORCH_ONLY}
    if "reference" not in kwargs:
        kwargs = {**kwargs, "reference": AUTODIFF}
    module, _, attr = spec.rpartition(":")
    # The command line's --dtype and --seed win where given; else the factory's, else defaults.
    kwargs = {**kwargs, **({"dtype": dtype} if dtype else {})}
    kwargs = {**kwargs, **({"seed": seed} if seed is not None else {})}
    kwargs.setdefault("name", f"{Path(module).stem}:{attr}")
    try:
        return compare_function(**kwargs)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise InputError(
            f"{spec} returned an argument compare_function does not take: {exc}"
        ) from exc
