"""Fuzz (issue 10): random stacks of ``gradparity.ours`` layers and their torch mirrors, run
through the public entry points with random option values and inputs, valid and invalid.

Each field's values fall in three groups, and the property checks each case against them:

- ``refused``: invalid (a NaN or negative tolerance, a negative seed, complex or ragged x, a
  class beyond the output, ...). The case must end in one ``InputError`` line that names a
  field holding such a value: accepting it silently fails the test.
- ``edge``: unusual but legitimate (a tolerance of 0, an x of 1e300): refused naming that
  field, or accepted.
- ``valid``: never refused (apart from the front end's own rules, see ``expected_refusals``).

Whatever is accepted must mean what was passed: the report's dtype, rtol, atol and seed are
the ones given (or the dtype's defaults), a correct stack compared in float64 with valid input
is in parity, and ``gp.lint`` finds nothing wrong with a correct stack. No RuntimeWarning and
no other exception gets out.

``GRADPARITY_FUZZ_EXAMPLES`` sets the number of examples (200 in the suite); the test prints
its tally, so the figures of a long run come from::

    GRADPARITY_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/test_fuzz.py -q -s
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradparity as gp
from gradparity.core.tolerance import tolerance_for
from gradparity.core.validate import check_dtype
from gradparity.ours import (
    MSE,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    SoftmaxCrossEntropy,
    Tanh,
)
from gradparity.reference import mirror

settings.register_profile(
    "gradparity-fuzz",
    max_examples=int(os.environ.get("GRADPARITY_FUZZ_EXAMPLES", "200")),
    deadline=None,
    derandomize=True,  # the same examples on every run: a suite test, not a search
    database=None,  # and no replayed examples from earlier runs: the tally is reproducible
    suppress_health_check=[HealthCheck.too_slow],
)
FUZZ = settings.get_profile("gradparity-fuzz")

ACTIVATIONS = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU, "softmax": Softmax}
FRONT_ENDS = ["compare", "assert_parity", "compare_function", "compare_training", "lint"]
FLOAT64 = ("float64", np.float64, torch.float64)
NAN, INF = float("nan"), float("inf")
# Per field: {group: values}, groups as the module docstring says; "valid" first, so that
# hypothesis shrinks towards it.
CHOICES: dict[str, dict[str, list]] = {
    "dtype": {
        "valid": ["float64", "float32", *FLOAT64[1:]],
        "refused": ["float16", None, "int8", torch.int32],
    },
    "rtol": {
        "valid": [None, 1e-6],
        "refused": [NAN, INF, -1e-3, "big", True, [1e-7]],
        "edge": [0.0],
    },
    "atol": {
        "valid": [None, 1e-6],
        "refused": [NAN, -INF, -1.0, "1e-9", np.bool_(True)],
        "edge": [0.0],
    },
    "seed": {
        "valid": [0, 7, np.int64(3), np.uint8(200)],
        "refused": [-1, 1.5, "a", True, None, np.bool_(False), np.int8(-2)],
    },
    "x": {
        "valid": ["normal", "int", "bool", "one example", "tensor", "bfloat16"],
        "refused": ["complex", "strings", "nan", "inf", "empty", "None", "object", "ragged",
                    "meta", "wide", "narrow", "3-d"],
        "edge": ["huge", "beyond float32"],
    },
    "target": {
        "valid": ["valid", "one-hot", "one-hot ints", "probabilities"],
        "refused": ["out of range", "negative", "float labels", "None", "rows", "wrong shape",
                    "complex", "meta"],
    },
}  # fmt: skip
# The fields each front end takes (lint takes no dtype or tolerance).
FIELDS = {front_end: list(CHOICES) for front_end in FRONT_ENDS}
FIELDS["lint"] = ["seed", "x", "target"]
# x of the wrong shape for the stack: lint has no reference to judge it by, so it may instead
# report the forward that cannot run as a ``raised`` finding.
WRONG_SHAPE_X = ("wide", "narrow", "3-d")


@dataclass
class Case:
    """One fuzz example: a network, a front end, and per field a group and a value."""

    widths: list[int]
    activations: list[str | None]
    loss: str
    batch: int
    weight_seed: int
    front_end: str
    group: dict[str, str]
    value: dict[str, Any]

    @property
    def float64(self) -> bool:
        return any(self.value["dtype"] is d for d in FLOAT64)

    @property
    def hostile(self) -> list[str]:
        """The fields this front end takes that hold a refused or edge value."""
        return [f for f in FIELDS[self.front_end] if self.group[f] != "valid"]

    def expected_refusals(self) -> tuple[set[str], set[str]]:
        """(fields whose value must be refused, fields whose value may be refused)."""
        must = {f for f in FIELDS[self.front_end] if self.group[f] == "refused"}
        may = {f for f in FIELDS[self.front_end] if self.group[f] == "edge"}
        in_float32 = "dtype" in FIELDS[self.front_end] and self.group["dtype"] == "valid"
        in_float32 = in_float32 and not self.float64
        if self.value["x"] in ("huge", "beyond float32") and in_float32:
            must.add("x")  # beyond float32's range
        if self.value["x"] == "3-d" and self.widths[0] == 1:
            must.discard("x")  # (N, 1, 1): features last, as a first layer of width 1 takes
            may.update({"x", "target"})  # and then an output (N, 1, C) the target may not fit
        if self.value["x"] == "huge":
            may.add("loss_fn")  # compare_function: the user's own loss overflows on it
        if self.loss == "ce" and self.widths[-1] == 1 and self.front_end != "lint":
            must.add("loss")  # a softmax over one class is constant: no gradient to compare
        if self.front_end == "assert_parity" and self.value["target"] == "None":
            must.discard("target")  # assert_parity then makes random classes of the output,
            may.add("target")  # which an MSE loss refuses
        if self.front_end == "compare_function":
            # Handed to the user's code as they are: integer x are indices there (the torch
            # reference takes no integers), a 1-D x gives a 1-D output that a target of one
            # row does not match; whole-float labels are classes for the default reference
            # loss; integer one-hot rows no loss takes.
            if self.value["x"] in ("int", "bool", "one example"):
                may.add("x")
            if self.value["x"] == "one example":
                may.add("target")
            if self.value["target"] in ("one-hot ints", "float labels"):
                must.discard("target")
                may.add("target")
        return must, may

    @property
    def must_be_in_parity(self) -> bool:
        """A correct stack with valid options and input, compared in float64."""
        must, may = self.expected_refusals()
        return not self.hostile and not must and not may and self.float64


@st.composite
def cases(draw) -> Case:
    widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    # At most two hostile fields: a single one is what tells whether that value is refused.
    hostile = draw(st.frozensets(st.sampled_from(list(CHOICES)), max_size=2))
    group = {
        field: draw(st.sampled_from([g for g in groups if g != "valid"]))
        if field in hostile
        else "valid"
        for field, groups in CHOICES.items()
    }
    return Case(
        widths=widths,
        activations=[draw(st.sampled_from([*ACTIVATIONS, None])) for _ in widths[1:]],
        loss=draw(st.sampled_from(["ce", "mse"])),
        batch=draw(st.integers(1, 5)),
        weight_seed=draw(st.integers(0, 2**16)),
        front_end=draw(st.sampled_from(FRONT_ENDS)),
        group=group,
        value={f: draw(st.sampled_from(CHOICES[f][g])) for f, g in group.items()},
    )


def build(case: Case) -> tuple[Sequential, Any]:
    """The ours stack: Linear layers of ``widths``, each followed by its activation (if any)."""
    rng = np.random.default_rng(case.weight_seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(case.widths, case.widths[1:])):
        layers.append((f"fc{i}", Linear(n_in, n_out, rng=rng)))
        if case.activations[i] is not None:
            layers.append((f"act{i}", ACTIVATIONS[case.activations[i]]()))
    return Sequential(*layers), SoftmaxCrossEntropy() if case.loss == "ce" else MSE()


def _with_first(a: np.ndarray, value: float) -> np.ndarray:
    """``a`` with its first element set to ``value`` (so every such x holds one)."""
    out = a.copy()
    out.flat[0] = value
    return out


def make_x(case: Case, rng: np.random.Generator) -> Any:
    n, features = case.batch, case.widths[0]
    normal = rng.standard_normal((n, features))
    return {
        "normal": normal,
        "int": rng.integers(-3, 4, (n, features)),
        "bool": normal > 0,
        "one example": normal[0],
        "tensor": torch.tensor(normal, requires_grad=True),
        "bfloat16": torch.tensor(normal, dtype=torch.bfloat16),
        "huge": normal * 1e300,
        "beyond float32": _with_first(normal, 1.0) * 1e39,
        "complex": normal + 1j,
        "strings": normal.astype(str),
        "nan": _with_first(normal, np.nan),
        "inf": _with_first(normal, -np.inf),
        "empty": normal[:0],
        "None": None,
        "object": normal.astype(object),
        "ragged": [list(row) for row in normal] + [[0.0] * (features + 1)],
        "meta": torch.empty((n, features), device="meta"),
        "wide": rng.standard_normal((n, features + 1)),
        "narrow": rng.standard_normal((n, features - 1)) if features > 1 else normal[:, :0],
        "3-d": normal[:, :, None],
    }[case.value["x"]]


def make_target(case: Case, rng: np.random.Generator) -> Any:
    n, width = (1 if case.value["x"] == "one example" else case.batch), case.widths[-1]
    classes = rng.integers(0, width, n)
    valid = classes if case.loss == "ce" else rng.standard_normal((n, width))
    return {
        "valid": valid,
        "one-hot": np.eye(width)[classes],
        "one-hot ints": np.eye(width, dtype=int)[classes],
        "probabilities": rng.dirichlet(np.ones(width), n),
        "out of range": classes + width,
        "negative": classes - width,
        "float labels": classes.astype(float),
        "None": None,
        "rows": np.concatenate([valid, valid]),
        "wrong shape": valid[..., None],
        "complex": valid + 1j,
        "meta": torch.empty(n, device="meta"),
    }[case.value["target"]]


def _function_of(model: Sequential, loss: Any) -> tuple[dict, Any, Any]:
    """compare_function's view of the stack: params {layer.key: live array}, grads(x, target)
    and loss_fn(params, x, target) (which decides the layout of square weights)."""
    params = {f"{n}.{k}": v for n, layer in model.named_layers() for k, v in layer.params.items()}

    def grads(x, target):
        for _, layer in model.named_layers():
            layer.grads.clear()
        loss.forward(model.forward(x), target)
        model.backward(loss.backward())
        return {
            f"{n}.{k}": layer.grads[k] for n, layer in model.named_layers() for k in layer.params
        }

    def loss_fn(given, x, target):
        clone = copy.deepcopy(model)
        for n, layer in clone.named_layers():
            layer.params.update({k: given[f"{n}.{k}"] for k in layer.params})
        return copy.deepcopy(loss).forward(clone.forward(x), target)

    return params, grads, loss_fn


def run(case: Case) -> Any:
    """The case through its front end: a report, a finding list, or an exception."""
    rng = np.random.default_rng(case.weight_seed + 1)
    model, loss = build(case)
    reference, x, target = mirror(model), make_x(case, rng), make_target(case, rng)
    options = {f: case.value[f] for f in ("dtype", "rtol", "atol", "seed")}
    if case.front_end == "lint":
        return gp.lint(model, x, target, ours_loss=loss, seed=case.value["seed"])
    if case.front_end == "compare_function":
        params, grads, loss_fn = _function_of(model, loss)
        reference_loss = None if case.loss == "ce" else F.mse_loss
        return gp.compare_function(grads, params, reference, x, target, loss_fn=loss_fn,
                                   reference_loss=reference_loss, **options)  # fmt: skip
    if case.front_end == "compare_training":
        return gp.compare_training(model, reference, [(x, target)] * 2, ours_loss=loss, **options)
    call = gp.assert_parity if case.front_end == "assert_parity" else gp.compare
    return call(model, reference, x, target, ours_loss=loss, **options)


def names(message: str, field: str) -> bool:
    """True when ``message`` names ``field`` (x and target as words: "x has 5 features")."""
    return re.search(rf"\b{field}\b", message) is not None


def check_meaning(case: Case, report: Any) -> None:
    """An accepted report holds the dtype, tolerances and seed that were passed."""
    dtype = check_dtype(case.value["dtype"])
    default = tolerance_for(dtype)
    rtol, atol = case.value["rtol"], case.value["atol"]
    assert report.dtype == dtype, (report.dtype, case)
    assert report.tolerance.rtol == (default.rtol if rtol is None else float(rtol)), case
    assert report.tolerance.atol == (default.atol if atol is None else float(atol)), case
    assert report.meta["seed"] == int(case.value["seed"]), case


def outcome(case: Case) -> str:
    """What ``case`` gave, checked against what its fields' groups allow: "refused", "in
    parity", "diverged", "clean" or "findings" (lint); AssertionError when not allowed."""
    must, may = case.expected_refusals()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = run(case)
        except gp.InputError as exc:
            message = str(exc)
            assert "\n" not in message and message.strip(), ("several lines", message, case)
            named = [f for f in must | may if names(message, f)]
            assert named, ("a refusal naming none of", sorted(must | may), message, case)
            return "refused"
        except gp.ParityError as exc:
            result = exc.report
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not runtime, (f"RuntimeWarning {runtime[0].message}", case)
    if case.front_end == "lint":
        if "x" in must and case.value["x"] in WRONG_SHAPE_X:  # so the target is never judged
            assert any(f.diagnosis == "raised" for f in result), ("lint accepted", result, case)
            return "findings"
        assert not must, ("accepted", sorted(must), case)
        assert result == [] or case.hostile, ("findings on a correct stack", result, case)
        return "clean" if result == [] else "findings"
    assert not must, ("accepted", sorted(must), case)
    check_meaning(case, result)
    assert result.ok or not case.must_be_in_parity, ("not in parity", result.summary(), case)
    return "in parity" if result.ok else "diverged"


def test_random_stacks_and_options_are_refused_by_name_or_accepted_as_given():
    tally: Counter = Counter()  # (kind of case, outcome) -> cases

    @FUZZ
    @given(case=cases())
    def check(case: Case) -> None:
        must, may = case.expected_refusals()
        kind = "invalid" if must else "edge" if may else "valid"
        tally[kind, outcome(case)] += 1  # outcome raises when the case allows no such outcome

    check()
    print("\n" + summary(tally))
    # Both outcomes occur: a fuzz whose every case is refused (or accepted) checks one side only.
    assert tally["invalid", "refused"] and tally["valid", "in parity"], tally


def summary(tally: Counter) -> str:
    """The figures of a run, one line: cases of each kind and what became of them. A leak
    (an exception other than InputError, a RuntimeWarning) fails the test before this."""
    total = {kind: sum(n for (k, _), n in tally.items() if k == kind) for kind in
             ("invalid", "edge", "valid")}  # fmt: skip
    refused = {kind: tally[kind, "refused"] for kind in total}
    outcomes: Counter = Counter()
    for (_, result), n in tally.items():
        outcomes[result] += n
    raised = tally["invalid", "findings"]  # lint: an x the forward cannot take
    return (
        f"fuzz: {sum(total.values())} cases. {total['invalid']} with an invalid value: "
        f"{refused['invalid']} refused by name, {raised} reported by lint as a forward that "
        f"cannot run, {total['invalid'] - refused['invalid'] - raised} accepted. "
        f"{total['edge']} with an edge value: {refused['edge']} refused by name, "
        f"{total['edge'] - refused['edge']} accepted. {total['valid']} valid: "
        f"{refused['valid']} refused. Accepted in all: {outcomes['in parity']} in parity, "
        f"{outcomes['diverged']} diverged, lint {outcomes['clean']} clean. Leaks: 0."
    )
