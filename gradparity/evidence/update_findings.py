"""Findings for a layer whose backward updates its own parameters and keeps no gradient
(frameworks such as ML-From-Scratch step each weight's optimiser inside backward).

Where the step was a plain SGD's, ``sides.backward_updates`` read the gradient from it: a
warning says how, and the gradient is compared like any other. Otherwise the gradient cannot be
read, and the error says how to expose it. A layer that updates a parameter and also keeps its
gradient is the ordinary ``mutation`` lint (a training loop would apply the step twice).
"""

from __future__ import annotations

from gradparity.core.finding import Finding
from gradparity.core.labels import MUTATES_INPUT
from gradparity.core.records import LayerRecord


def updated_without_gradient(rec: LayerRecord) -> set[str]:
    """The parameters backward updated without keeping their gradient: this module's
    findings speak for them, in place of the mutation and missing-gradient lints."""
    return {key for key, info in rec.backward_updates.items() if info["read"] != "grads"}


def backward_update_findings(
    owner: str, rec: LayerRecord, mode: str
) -> tuple[list[Finding], list[Finding]]:
    """(errors, warnings) for the parameters ``owner``'s backward updated without keeping
    their gradient: a warning where the gradient was read from a plain SGD step, an error
    saying how to expose it where it could not be read."""
    errors, warnings = [], []
    for key in sorted(updated_without_gradient(rec)):
        info = rec.backward_updates[key]
        if info["read"] == "update":
            warnings.append(_read_from_step(owner, key, info, mode))
        else:
            errors.append(_unreadable(owner, key, info, mode))
    return errors, warnings


def _via(info: dict) -> str:
    return f" through {info['optimiser']} ({info['kind']})" if info["optimiser"] else ""


def _read_from_step(owner: str, key: str, info: dict, mode: str) -> Finding:
    rate = f"{info['learning_rate']:g}"
    problem = (
        f"backward updates {key} itself{_via(info)}, a plain SGD step with learning rate "
        f"{rate}; gradparity read the gradient as ({key} before - {key} after) / {rate} and "
        f"put {key} back"
    )
    fix = "nothing to do if that is the framework's design; the gradient was checked"
    return Finding(
        owner, f"grad:{key}", MUTATES_INPUT,
        {"phase": "backward", "array": f"param {key}", **info}, mode=mode,
        problem=problem, fix=fix, message=f"{owner}.{key}: {problem}",
    )  # fmt: skip


def unreadable_words(key: str, info: dict) -> tuple[str, str]:
    """(problem, fix) for parameter ``key`` updated in backward (``info`` as
    ``sides.backward_updates`` describes it) whose gradient could not be read."""
    if info["optimiser"]:
        why = f"{_via(info)}, whose step is not learning rate x gradient (momentum, moments)"
    else:
        why = " (no optimiser with a learning rate found on the layer)"
    problem = (
        f"backward updates {key} itself{why} and keeps no gradient, so dL/d{key} cannot be read "
        f"(gradparity put {key} back)"
    )
    fix = (
        f"expose the gradient: keep it on the layer (self.grad_{key} = ...) and name it in "
        f"gradparity.wrap(..., grads=...), or give the layer, for the check, a plain SGD "
        f"optimiser (learning_rate, no momentum) or one whose update(w, grad) stores grad and "
        f"returns w"
    )
    return problem, fix


def _unreadable(owner: str, key: str, info: dict, mode: str) -> Finding:
    problem, fix = unreadable_words(key, info)
    return Finding(
        owner, f"grad:{key}", MUTATES_INPUT,
        {"phase": "backward", "array": f"param {key}", **info}, mode=mode,
        problem=problem, fix=fix, message=f"{owner}.{key}: {problem}; {fix}",
    )  # fmt: skip
