"""Train and eval modes: which reference modules behave differently in each, the mode each is
given (the reference runs in it, never forced), the mode ours' layers say they are in, and a
warning where the two sides disagree."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from gradparity.core.finding import Finding
from gradparity.core.labels import MODE_MISMATCH
from gradparity.sides.running_stats import state_owner

# Attributes in which NumPy frameworks keep a layer's mode: a flag true in training, or a word.
_FLAGS = ("training", "train_mode", "is_training")
_WORDS = {"train": "train", "training": "train", "eval": "eval", "test": "eval"}


def mode_dependent(module: nn.Module) -> bool:
    """Whether ``module`` itself computes something else in train and eval mode: batch norm,
    instance norm with running statistics, dropout, or a class that overrides ``train``."""
    if isinstance(module, _InstanceNorm):
        return bool(module.track_running_stats)
    if isinstance(module, (_BatchNorm, _DropoutNd)):
        return True
    return type(module).train is not nn.Module.train


def mode_word(training: bool) -> str:
    return "train" if training else "eval"


def reference_modes(model: nn.Module) -> dict[str, str]:
    """{module name: "train" or "eval"} for each mode-dependent module of ``model`` (the
    model itself is named "" when it is one), in the mode it was given."""
    return {
        name: mode_word(module.training)
        for name, module in model.named_modules()
        if mode_dependent(module)
    }


def ours_mode(layer: Any) -> str | None:
    """ "train" or "eval" as ours' layer states it (a ``training``/``train_mode``/``is_training``
    flag, or a ``mode`` of "train", "eval" or "test"); None when it does not say."""
    owner = state_owner(layer)
    for flag in _FLAGS:
        value = getattr(owner, flag, None)
        if isinstance(value, bool):
            return mode_word(value)
    word = getattr(owner, "mode", None)
    return _WORDS.get(word.lower()) if isinstance(word, str) else None


def modes_note(modes: dict[str, str]) -> list[str]:
    """One note listing the reference's mode-dependent modules and their modes; [] when none."""
    if not modes:
        return []
    listed = ", ".join(f"{name or 'the model'} {mode}" for name, mode in modes.items())
    return [f"the reference runs in the mode it was given: {listed}"]


def mode_warnings(pairs: list[Any], modes: dict[str, str]) -> list[Finding]:
    """A ``mode_mismatch`` warning for each layer whose mode ours states and that differs
    from the mode of the reference module it is paired with. ``pairs``: objects with
    ``name``, ``layer`` and ``module_name`` (``LayerPair``)."""
    found = []
    for pair in pairs:
        theirs, mine = modes.get(pair.module_name), ours_mode(pair.layer)
        if theirs is None or mine is None or theirs == mine:
            continue
        problem = (
            f"ours' {pair.name} is in {mine} mode but the reference's {pair.module_name} is in "
            f"{theirs} mode, so they compute different things"
        )
        fix = (
            f"put both in the same mode: reference.{'train' if mine == 'train' else 'eval'}() "
            "before the check, or switch ours' layer"
        )
        found.append(
            Finding(
                pair.name,
                "output",
                MODE_MISMATCH,
                {"ours_mode": mine, "reference_mode": theirs, "module": pair.module_name},
                f"{problem}; {fix}",
                problem=problem,
                fix=fix,
            )
        )
    return found
