"""Run the known-bug corpus: inject each bug, compare against the torch mirror, and score
whether gradparity found it at the right place (localized) with the right label (diagnosed).
The layer bugs (``all_bugs.ALL_BUGS``) and function bugs run once more against autodiff of
the user's own code (no torch model; the layer bugs of ``AUTODIFF_BUGS``): "NAME+autodiff",
"fn:NAME+autodiff", counted as their own corpus "autodiff"."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gradparity.core.address import Kind, kind_of
from gradparity.core.labels import UNEXPLAINED
from gradparity.corpus import parallel
from gradparity.corpus.all_bugs import ALL_BUGS, AUTODIFF_BUGS
from gradparity.corpus.function_bugs import FUNCTION_BUGS, FunctionBug, function_setup
from gradparity.corpus.layer_bugs import Bug
from gradparity.corpus.training_bugs import TRAINING_BUGS, TrainingBug
from gradparity.pipelines.function import compare_function
from gradparity.pipelines.layers import compare
from gradparity.pipelines.training import compare_training
from gradparity.reference import mirror, mirror_loss
from gradparity.report.report import Report

UNEXPLAINED_TARGET = 2  # layer-corpus bugs that may stay unexplained (issue 12)


@dataclass
class BugResult:
    """What one injected bug produced, in the ``--format json`` schema."""

    name: str
    layer: str
    quantity: str
    expected_diagnosis: str
    found: list[dict] = field(default_factory=list)
    localized: bool = False
    diagnosed: bool = False
    step: int | None = None  # training bugs: the step where it must be found
    label: str | None = None  # the label found at the expected place, None if not found there
    corpus: str = "layer"  # "layer", "training" or "function": which corpus the bug is from
    # "layer quantity [label]" of each minor finding: a corpus bug must never be one
    minor: list[str] = field(default_factory=list)
    # autodiff runs: the places judged by central differences instead, their code not running
    # on tensors (a layer, "loss", or the function's name)
    not_on_tensors: list[str] = field(default_factory=list)
    # a bug that gave no result: why, in one line (it raised, or its worker process died)
    error: str | None = None
    error_details: str = ""  # that error's traceback, kept out of the JSON (it names paths)

    def as_dict(self) -> dict:
        """The ``--format json`` entry: every field but ``error_details``."""
        entry = asdict(self)
        del entry["error_details"]
        return entry


def compare_setup(model, loss, x, target, seed: int = 0, name: str | None = None) -> Report:
    """``compare`` of an ours model against its torch mirror, with the mirrored loss."""
    return compare(
        model,
        mirror(model),
        x,
        target,
        ours_loss=loss,
        reference_loss=mirror_loss(loss),
        seed=seed,
        name=name,
    )


def minor_places(report: Report) -> list[str]:
    """Each minor finding of ``report`` as "layer quantity [label]"."""
    return [f"{f.layer} {f.quantity} [{f.diagnosis}]" for f in report.minor]


def not_on_tensors(report: Report) -> list[str]:
    """The places of an autodiff report whose reference fell back to central differences:
    each layer named by a "NAME: its forward cannot run on tensors" note, or the function
    whose report says central differences were used."""
    if report.meta.get("reference_used") == "central differences":
        return [str(report.meta["model"])]
    return [n.split(":", 1)[0] for n in report.notes if ": its forward cannot run on tensors" in n]


def run_bug(bug: Bug, seed: int = 0, autodiff: bool = False) -> BugResult:
    """Localized: the expected (layer, quantity) is a root cause and no other layer is blamed.
    Diagnosed: that root cause carries the expected label. ``autodiff``: each layer against
    the vector-Jacobian product of its own forward instead of the torch mirror."""
    model, loss, x, target = bug.build(seed)
    if autodiff:
        name = f"{bug.name}+autodiff"
        report = compare(model, "autodiff", x, target, ours_loss=loss, seed=seed, name=name)
    else:
        name = bug.name
        report = compare_setup(model, loss, x, target, seed=seed, name=bug.name)
    found = [
        {"layer": f.layer, "quantity": f.quantity, "diagnosis": f.diagnosis, "message": f.message}
        for f in report.root_causes
    ]
    hits = [f for f in found if (f["layer"], f["quantity"]) == (bug.layer, bug.quantity)]
    localized = bool(hits) and all(f["layer"] == bug.layer for f in found)
    diagnosed = any(f["diagnosis"] == bug.diagnosis for f in hits)
    return BugResult(
        name, bug.layer, bug.quantity, bug.diagnosis, found, localized, diagnosed,
        label=_label_of(hits, bug.diagnosis), corpus="autodiff" if autodiff else "layer",
        minor=minor_places(report), not_on_tensors=not_on_tensors(report) if autodiff else [],
    )  # fmt: skip


def training_batches(seed: int, n: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """The self-test's training data for ``bugs.base_network``: n batches x (8, 5), y (8,)."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8, 5)), rng.integers(0, 3, size=8)) for _ in range(n)]


def run_training_bug(bug: TrainingBug, seed: int = 0) -> BugResult:
    """Localized: the first divergent step is the expected one and a finding there is of the
    expected quantity kind (the optimiser touches every layer, so no single layer is expected).
    Diagnosed: such a finding carries the expected label."""
    model, ours_opt, ref_opt = bug.build(seed)
    report = compare_training(
        model,
        mirror(model),
        training_batches(seed),
        ours_optimizer=ours_opt,
        reference_optimizer=ref_opt,
        seed=seed,
        name=bug.name,
    )
    found: list[dict[str, Any]] = [
        {
            "layer": f.layer,
            "quantity": f.quantity,
            "diagnosis": f.diagnosis,
            "step": f.step,
            "message": f.message,
        }
        for f in report.root_causes
    ]
    hits = [f for f in found if f["quantity"].startswith(f"{bug.kind}:")]
    localized = report.first_divergent_step == bug.step and bool(hits)
    diagnosed = localized and any(f["diagnosis"] == bug.diagnosis for f in hits)
    return BugResult(
        bug.name, "*", f"{bug.kind}:*", bug.diagnosis, found, localized, diagnosed, bug.step,
        label=_label_of(hits, bug.diagnosis) if localized else None, corpus="training",
        minor=minor_places(report),
    )  # fmt: skip


def run_function_bug(
    bug: FunctionBug, seed: int = 0, numeric: bool = False, autodiff: bool = False
) -> BugResult:
    """``compare_function`` on the one-function network with ``bug``: against its torch twin,
    against central differences of its loss (``numeric``), or against the exact gradient of
    that loss run on tensors (``autodiff``).

    Localized: the first root cause, where the report says to look, is the expected place (a
    gradient tap or a parameter). Diagnosed: it carries the expected label. Without torch the
    corpus's gradient taps have no forward value to pair with, so the expected place is the
    parameter (``numeric_param``) for central differences. Against autodiff the loss runs the
    same function without the bug on tensors, so its taps, gradients included, are recorded
    there too and pair by name: a bug at a tap is expected at that tap's value (``output``)."""
    without_torch = numeric or autodiff
    kwargs = function_setup(bug, seed, numeric=without_torch)
    if autodiff:
        kwargs["reference"] = "autodiff"
    report = compare_function(**kwargs, seed=seed)
    fn = "backprop"
    if autodiff and kind_of(bug.place) is not Kind.GRAD:
        layer, quantity, label = bug.place, "output", bug.diagnosis
    elif without_torch:
        layer, quantity, label = fn, f"grad:{bug.numeric_param}", bug.numeric_diagnosis
    elif kind_of(bug.place) is Kind.GRAD:
        layer, quantity, label = fn, bug.place, bug.diagnosis
    else:
        layer, quantity, label = bug.place, "grad_output", bug.diagnosis
    found = [
        {"layer": f.layer, "quantity": f.quantity, "diagnosis": f.diagnosis, "message": f.message}
        for f in report.root_causes
    ]
    first = found[0] if found else {}
    localized = (first.get("layer"), first.get("quantity")) == (layer, quantity)
    diagnosed = localized and first["diagnosis"] == label
    mode = "+autodiff" if autodiff else "+numeric" if numeric else ""
    return BugResult(
        f"fn:{bug.name}{mode}", layer, quantity, label, found, localized, diagnosed,
        label=first["diagnosis"] if localized else None,
        corpus="autodiff" if autodiff else "function", minor=minor_places(report),
        not_on_tensors=not_on_tensors(report) if autodiff else [],
    )  # fmt: skip


def corpus_runners() -> dict[str, tuple[str, Callable[[int], BugResult]]]:
    """Every bug of the corpora by name, in the corpus order (``run_corpus``): its corpus and
    the function of the seed that runs it."""
    runners: dict[str, tuple[str, Callable[[int], BugResult]]] = {
        b.name: ("layer", functools.partial(run_bug, b)) for b in ALL_BUGS
    }
    runners |= {b.name: ("training", functools.partial(run_training_bug, b)) for b in TRAINING_BUGS}
    for fb in FUNCTION_BUGS:
        runners[f"fn:{fb.name}"] = ("function", functools.partial(run_function_bug, fb))
        numeric = functools.partial(run_function_bug, fb, numeric=True)
        runners[f"fn:{fb.name}+numeric"] = ("function", numeric)
    for b in AUTODIFF_BUGS:
        runners[f"{b.name}+autodiff"] = ("autodiff", functools.partial(run_bug, b, autodiff=True))
    for fb in FUNCTION_BUGS:
        autodiff = functools.partial(run_function_bug, fb, autodiff=True)
        runners[f"fn:{fb.name}+autodiff"] = ("autodiff", autodiff)
    return runners


def run_named(name: str, seed: int) -> BugResult:
    """The bug called ``name`` run with ``seed``: what a worker process of ``run_corpus`` is
    sent (a name crosses the process boundary; a model or a closure need not pickle)."""
    return corpus_runners()[name][1](seed)


def run_corpus(
    names: list[str] | None = None, seed: int = 0, jobs: int | str = 1
) -> list[BugResult]:
    """Every bug of the corpora, layer bugs first (or the named ones); unknown names raise
    KeyError. Function bugs run twice: "fn:NAME" against torch, "fn:NAME+numeric" without.
    Last, the layer bugs of ``AUTODIFF_BUGS`` and the function bugs through autodiff:
    "NAME+autodiff", "fn:NAME+autodiff".

    ``jobs``: how many bugs run at once, each in a worker process (0 or "auto": one per CPU);
    the results come in the order above whatever order they finish in. A bug that raises, or
    whose worker dies, is a result with ``error`` set and nothing found. With ``jobs`` > 1 a
    script must call this under ``if __name__ == "__main__":`` (workers are spawned)."""
    workers = parallel.resolve_jobs(jobs)
    runners = corpus_runners()
    unknown = [n for n in names or [] if n not in runners]
    if unknown:
        raise KeyError(f"unknown bug(s) {unknown}; choose from {', '.join(runners)}")
    chosen = names or list(runners)
    outcomes = parallel.run_tasks(run_named, chosen, seed, workers)
    return [
        _crashed(name, runners[name][0], outcome)
        if isinstance(outcome, parallel.Crash)
        else outcome
        for name, outcome in zip(chosen, outcomes)
    ]


def _crashed(name: str, corpus: str, crash: parallel.Crash) -> BugResult:
    """The result of a bug that gave none: nothing found, ``error`` saying why."""
    return BugResult(
        name, "-", "-", "-", corpus=corpus, error=crash.reason, error_details=crash.details
    )


def _label_of(hits: list[dict], expected: str) -> str | None:
    """The label a bug got where it sits: the expected one if any finding there has it, else
    the first finding's there; None when nothing was found there."""
    labels = [f["diagnosis"] for f in hits]
    return expected if expected in labels else next(iter(labels), None)


def label_distribution(results: list[BugResult]) -> dict[str, int]:
    """How many bugs got each label at their expected place, most frequent first (ties by
    name); "not found" counts bugs with no finding there. ``unexplained`` is always a key:
    the layer corpus aims at ``UNEXPLAINED_TARGET`` at most."""
    counts: dict[str, int] = {UNEXPLAINED: 0}
    for r in results:
        key = r.label or "not found"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def format_labels(results: list[BugResult]) -> str:
    """One line per corpus among ``results``, in corpus order:
    'N bugs by label (layer): transposed 4, ..., unexplained 1 (target: at most 2)'."""
    lines = []
    for corpus in dict.fromkeys(r.corpus for r in results):
        group = [r for r in results if r.corpus == corpus]
        counts = label_distribution(group)
        unexplained = f"{UNEXPLAINED} {counts.pop(UNEXPLAINED)}"
        if corpus == "layer":
            unexplained += f" (target: at most {UNEXPLAINED_TARGET})"
        parts = [*(f"{label} {n}" for label, n in counts.items()), unexplained]
        lines.append(f"{len(group)} bugs by label ({corpus}): {', '.join(parts)}")
    return "\n".join(lines)


def _found_text(result: BugResult, limit: int = 2) -> str:
    if result.error is not None:
        return f"NOT RUN: {result.error}"
    parts = [
        ("" if f.get("step") is None else f"step {f['step']} ")
        + f"{f['layer']} {f['quantity']} [{f['diagnosis']}]"
        for f in result.found
    ]
    more = f" +{len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def format_table(results: list[BugResult]) -> str:
    """Plain-text table: bug, expected, found, localized, diagnosed; then how many bugs got
    each label (``format_labels``), and the totals last."""
    header = ("bug", "expected", "found", "localized", "diagnosed")
    lines = []
    for r in results:
        lines.append(
            (
                r.name,
                ("" if r.step is None else f"step {r.step} ")
                + f"{r.layer} {r.quantity} [{r.expected_diagnosis}]",
                _found_text(r) or "-",
                "yes" if r.localized else "NO",
                "yes" if r.diagnosed else "no",
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    text = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *lines]
    ]
    text.append(f"\n{format_labels(results)}")
    autodiff = [r for r in results if r.corpus == "autodiff"]
    if autodiff:
        text.append(_totals(autodiff, "through autodiff"))
        fallback = sorted({p for r in autodiff for p in r.not_on_tensors})
        if fallback:
            n = sum(bool(r.not_on_tensors) for r in autodiff)
            text.append(
                f"  of which {n} judged in part by central differences (code not on tensors: "
                f"{', '.join(fallback)})"
            )
    text.append(_totals(results))
    return "\n".join(text)


def _totals(results: list[BugResult], which: str = "") -> str:
    """'N bugs[ which]: L localized (P%), D diagnosed (Q%)'."""
    n = len(results)
    loc = sum(r.localized for r in results)
    diag = sum(r.diagnosed for r in results)
    return (
        f"{n} bugs{' ' + which if which else ''}: {loc} localized ({100 * loc / n:.0f}%), "
        f"{diag} diagnosed ({100 * diag / n:.0f}%)"
    )
