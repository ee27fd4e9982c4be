"""The known-bug corpus: every injected bug is found at its exact place with its exact label; the
scoring rules on known cases; the unmutated models give no finding at all over many seeds;
``gradparity selftest`` on the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from gradparity.cli.main import main
from gradparity.core.tolerance import tolerance_for
from gradparity.corpus import layer_bugs as bugs
from gradparity.corpus import selftest
from gradparity.corpus.all_bugs import ALL_BUGS, AUTODIFF_BUGS, NOT_THROUGH_AUTODIFF
from gradparity.corpus.function_bugs import FUNCTION_BUGS
from gradparity.corpus.training_bugs import TRAINING_BUGS

TOL = tolerance_for("float64")

# Mistakes the corpus must contain, by their names in bugs.BUGS.
REQUIRED = {
    "sigmoid_derivative_of_output",
    "tanh_derivative_of_input",
    "relu_mask_ignored",
    "bias_not_summed",
    "bias_averaged",
    "loss_sum_not_mean",  # mean vs sum
    "loss_grad_sign",
    "weight_grad_transposed",
    "weight_grad_transposed_square",
    "input_grad_dy_W",
    "softmax_diagonal_only",
    "softmax_kronecker_inverted",
    "loss_times_softmax_prime",
    "binary_ce_derivative",
    "upstream_ignored",
    "weight_grad_zero",
    "weight_grad_scaled",
    "input_mutated_in_place",
    "stale_cached_input",
}
SCHEMA = {"name", "layer", "quantity", "expected_diagnosis", "found", "localized", "diagnosed"}


@pytest.fixture(scope="module")
def corpus() -> list[selftest.BugResult]:
    return selftest.run_corpus()


# --- the corpus itself ----------------------------------------------------------------------


def test_corpus_covers_the_required_bugs():
    names = [b.name for b in bugs.BUGS]
    assert len(names) == len(set(names)), "bug names must be unique"
    missing = REQUIRED - set(names)
    assert not missing, f"corpus lacks {sorted(missing)}"
    assert len(bugs.BUGS) >= 20


# The mistakes issue 15 asks of the new layers, by name in ALL_BUGS: (layer, quantity, label).
REQUIRED_NEW_LAYERS = {
    "conv_input_grad_not_flipped": ("conv2", "grad_input", "flipped_kernel"),
    "conv_padding_ignored_in_backward": ("conv2", "grad_input", "padding_not_removed"),
    "conv_stride_ignored_in_backward": ("conv2", "grad_input", "stride_ignored"),
    "batch_norm_no_mean_term": ("bn", "grad_input", "missing_mean_term"),
    "running_momentum_inverted": ("bn", "buffer:running_mean", "running_momentum"),
    "dropout_not_scaled": ("drop", "output", "scaled"),
    "embedding_grad_overwritten": ("emb", "grad:weight", "repeats_overwritten"),
    "lstm_forget_gate_derivative": ("lstm", "grad_input", "gate_derivative"),
    "residual_skip_grad_dropped": ("res", "grad_input", "skip_path_missing"),
    "rnn_bptt_truncated": ("rnn", "grad:weight_hh", "truncated_bptt"),
}


def test_all_bugs_registers_every_layer_bug_once():
    names = [b.name for b in ALL_BUGS]
    assert len(names) == len(set(names)), "bug names must be unique across the layer corpora"
    assert names[: len(bugs.BUGS)] == [b.name for b in bugs.BUGS]
    by_name = {b.name: b for b in ALL_BUGS}
    for name, place in REQUIRED_NEW_LAYERS.items():
        bug = by_name[name]
        assert (bug.layer, bug.quantity, bug.diagnosis) == place, name
    assert set(NOT_THROUGH_AUTODIFF) <= set(names)
    assert all(NOT_THROUGH_AUTODIFF.values())  # each says why
    assert [b.name for b in AUTODIFF_BUGS] == [n for n in names if n not in NOT_THROUGH_AUTODIFF]


def test_required_bugs_sit_where_expected():
    by_name = {b.name: b for b in bugs.BUGS}
    where = {
        "sigmoid_derivative_of_output": ("act1", "grad_input"),
        "tanh_derivative_of_input": ("act1", "grad_input"),
        "relu_mask_ignored": ("act1", "grad_input"),
        "upstream_ignored": ("act1", "grad_input"),
        "input_mutated_in_place": ("act1", "output"),
        "bias_not_summed": ("fc2", "grad:b"),
        "bias_averaged": ("fc2", "grad:b"),
        "weight_grad_transposed": ("fc1", "grad:W"),
        "weight_grad_transposed_square": ("fc2", "grad:W"),
        "input_grad_dy_W": ("fc2", "grad_input"),
        "weight_grad_zero": ("fc2", "grad:W"),
        "weight_grad_scaled": ("fc1", "grad:W"),
        "stale_cached_input": ("fc1", "grad:W"),
        "softmax_diagonal_only": ("softmax", "grad_input"),
        "softmax_kronecker_inverted": ("softmax", "grad_input"),
        "loss_sum_not_mean": ("loss", "grad_input"),
        "loss_grad_sign": ("loss", "grad_input"),
        "loss_times_softmax_prime": ("loss", "grad_input"),
        "binary_ce_derivative": ("loss", "grad_input"),
    }
    for name, (layer, quantity) in where.items():
        bug = by_name[name]
        assert (bug.layer, bug.quantity) == (layer, quantity), name


def test_square_transposed_bug_really_is_square():
    """The square variant keeps the shape, so only the values can give it away."""
    bug = next(b for b in bugs.BUGS if b.name == "weight_grad_transposed_square")
    model, _, _, _ = bug.build(0)
    w = model[bug.layer].params["W"]
    assert w.shape[0] == w.shape[1]
    bug = next(b for b in bugs.BUGS if b.name == "weight_grad_transposed")
    model, _, _, _ = bug.build(0)
    w = model[bug.layer].params["W"]
    assert w.shape[0] != w.shape[1]


def test_corpus_sizes_and_scores(corpus):
    n = len(corpus)
    assert n >= 20
    # layer and function bugs once more through autodiff: layer bugs those autodiff can run
    assert n == len(ALL_BUGS) + len(AUTODIFF_BUGS) + len(TRAINING_BUGS) + 3 * len(FUNCTION_BUGS)
    assert [r.name for r in corpus if not r.localized] == []
    assert [r.name for r in corpus if not r.diagnosed] == []
    for r in corpus:
        assert all(f["message"] for f in r.found), r.name


def test_no_corpus_bug_is_minor(corpus):
    """Every bug of the three corpora stays a root cause: none is (or adds) a minor finding,
    which would leave ``ok`` True."""
    assert {r.name: r.minor for r in corpus if r.minor} == {}


# --- every bug keeps its exact place and label ----------------------------------------------


@pytest.mark.parametrize("bug", ALL_BUGS, ids=lambda b: b.name)
def test_layer_bug_is_the_one_root_cause_with_its_label(bug):
    """Found in isolation, at its layer and quantity, with its label, and nothing else blamed."""
    model, loss, x, target = bug.build(0)
    report = selftest.compare_setup(model, loss, x, target)
    found = [(f.layer, f.quantity, f.diagnosis, f.mode) for f in report.root_causes]
    assert found == [(bug.layer, bug.quantity, bug.diagnosis, "isolate")]
    assert not report.ok


@pytest.mark.parametrize("bug", TRAINING_BUGS, ids=lambda b: b.name)
def test_training_bug_is_found_at_its_step_with_its_label(bug):
    """Every finding is on the bug's step; every finding of the bug's kind carries its label."""
    result = selftest.run_training_bug(bug)
    assert result.found, bug.name
    assert {f["step"] for f in result.found} == {bug.step}
    of_kind = [f for f in result.found if f["quantity"].startswith(f"{bug.kind}:")]
    assert of_kind and {f["diagnosis"] for f in of_kind} == {bug.diagnosis}, result.found


@pytest.mark.parametrize("numeric", [False, True], ids=["torch", "numeric"])
@pytest.mark.parametrize("bug", FUNCTION_BUGS, ids=lambda b: b.name)
def test_function_bug_is_the_first_root_cause_with_its_label(bug, numeric):
    """The first root cause, where the report sends the reader, is the expected tap or
    parameter with the expected label."""
    result = selftest.run_function_bug(bug, numeric=numeric)
    if numeric:
        place = ("backprop", f"grad:{bug.numeric_param}", bug.numeric_diagnosis)
    elif bug.place.startswith("grad:"):
        place = ("backprop", bug.place, bug.diagnosis)
    else:
        place = (bug.place, "grad_output", bug.diagnosis)
    first = result.found[0]
    assert (first["layer"], first["quantity"], first["diagnosis"]) == place


# --- the scoring rules, on known cases ------------------------------------------------------


def _layer_bug(name: str) -> bugs.Bug:
    return next(b for b in bugs.BUGS if b.name == name)


def test_layer_bug_with_another_label_is_localized_not_diagnosed():
    result = selftest.run_bug(replace(_layer_bug("bias_not_summed"), diagnosis="zero"))
    assert (result.localized, result.diagnosed) == (True, False)
    assert [f["diagnosis"] for f in result.found] == ["not_reduced"]


@pytest.mark.parametrize(("field", "value"), [("layer", "fc1"), ("quantity", "grad:W")])
def test_layer_bug_expected_elsewhere_is_neither_localized_nor_diagnosed(field, value):
    result = selftest.run_bug(replace(_layer_bug("bias_not_summed"), **{field: value}))
    assert (result.localized, result.diagnosed) == (False, False)


def test_a_second_blamed_layer_spoils_localization_not_the_label():
    """Two bugs, the expected one in fc2: fc1 is blamed too, so the place is not pinned down,
    though the root cause at the expected place carries the expected label."""
    two = bugs.Bug(
        "two_bugs",
        "fc1's bias gradient negated and fc2's not summed",
        "fc2",
        "grad:b",
        "not_reduced",
        bugs.BiasNotSummed,
        lambda s: bugs.base_network(s, fc1=bugs.BiasGradSign, fc2=bugs.BiasNotSummed),
    )
    result = selftest.run_bug(two)
    assert {(f["layer"], f["diagnosis"]) for f in result.found} == {
        ("fc1", "sign_flipped"),
        ("fc2", "not_reduced"),
    }
    assert (result.localized, result.diagnosed) == (False, True)


def test_a_correct_model_scores_nothing():
    clean = replace(_layer_bug("bias_not_summed"), build=bugs.base_network)
    result = selftest.run_bug(clean)
    assert result.found == []
    assert (result.localized, result.diagnosed) == (False, False)


def _training_bug(name: str):
    return next(b for b in TRAINING_BUGS if b.name == name)


@pytest.mark.parametrize(
    ("change", "localized", "diagnosed"),
    [
        ({"step": 2}, False, False),  # found on step 1, expected on step 2
        ({"kind": "state"}, False, False),  # plain SGD has no state to blame
        ({"diagnosis": "zero"}, True, False),
        ({}, True, True),
    ],
    ids=["other-step", "other-kind", "other-label", "as-is"],
)
def test_training_bug_scoring(change, localized, diagnosed):
    result = selftest.run_training_bug(replace(_training_bug("wrong_learning_rate"), **change))
    assert (result.localized, result.diagnosed) == (localized, diagnosed)
    assert result.step == (change.get("step", 1))


@pytest.mark.parametrize(
    ("change", "numeric", "localized", "diagnosed"),
    [
        ({"place": "grad:W1"}, False, False, False),
        ({"diagnosis": "zero"}, False, True, False),
        ({"numeric_param": "W1"}, True, False, False),
        ({"numeric_diagnosis": "zero"}, True, True, False),
        ({}, True, True, True),
    ],
    ids=["other-place", "other-label", "numeric-other-param", "numeric-other-label", "as-is"],
)
def test_function_bug_scoring(change, numeric, localized, diagnosed):
    bug = next(b for b in FUNCTION_BUGS if b.name == "bias_not_summed")
    result = selftest.run_function_bug(replace(bug, **change), numeric=numeric)
    assert (result.localized, result.diagnosed) == (localized, diagnosed)


def test_format_table_totals_count_localized_and_diagnosed():
    results = [
        selftest.BugResult("a", "fc1", "grad:W", "scaled", localized=True, diagnosed=True),
        selftest.BugResult("b", "fc1", "grad:W", "scaled", localized=True, diagnosed=False),
        selftest.BugResult("c", "fc1", "grad:W", "scaled", localized=False, diagnosed=False),
    ]
    text = selftest.format_table(results)
    assert text.splitlines()[-1] == "3 bugs: 2 localized (67%), 1 diagnosed (33%)"
    rows = {line.split()[0]: line.split()[-2:] for line in text.splitlines()[1:4]}
    assert rows == {"a": ["yes", "yes"], "b": ["yes", "no"], "c": ["NO", "no"]}


def test_run_corpus_named_subset_and_unknown():
    (only,) = selftest.run_corpus(["bias_not_summed"])
    assert only.name == "bias_not_summed"
    assert only.localized and only.diagnosed
    (fn,) = selftest.run_corpus(["fn:transposed_square_weight_grad+numeric"])
    assert (fn.layer, fn.quantity, fn.expected_diagnosis) == ("backprop", "grad:W2", "transposed")
    assert fn.localized and fn.diagnosed
    with pytest.raises(KeyError, match="no_such_bug"):
        selftest.run_corpus(["no_such_bug"])


def test_every_layer_and_function_bug_is_found_through_autodiff_too(corpus):
    """No torch model: each layer against autodiff of its own forward, each function bug
    against the exact gradient of its loss; localized and diagnosed, counted as "autodiff"."""
    through = {r.name: r for r in corpus if r.corpus == "autodiff"}
    expected = [f"{b.name}+autodiff" for b in AUTODIFF_BUGS]
    expected += [f"fn:{b.name}+autodiff" for b in FUNCTION_BUGS]
    assert list(through) == expected
    for bug in AUTODIFF_BUGS:
        r = through[f"{bug.name}+autodiff"]
        assert (r.layer, r.quantity, r.label) == (bug.layer, bug.quantity, bug.diagnosis)
    for fbug in FUNCTION_BUGS:
        r = through[f"fn:{fbug.name}+autodiff"]
        # the loss runs the same function (bug off) on tensors: its taps pair by name
        at_tap = not fbug.place.startswith("grad:")
        place = (
            (fbug.place, "output", fbug.diagnosis)
            if at_tap
            else ("backprop", f"grad:{fbug.numeric_param}", fbug.numeric_diagnosis)
        )
        assert (r.found[0]["layer"], r.found[0]["quantity"], r.label) == place
        assert r.not_on_tensors == []
    assert all(r.localized and r.diagnosed for r in through.values())


def test_format_table_counts_autodiff_separately(corpus):
    lines = selftest.format_table(corpus).splitlines()
    n = len(AUTODIFF_BUGS) + len(FUNCTION_BUGS)
    by_label = [ln for ln in lines if ln.startswith(f"{n} bugs by label (autodiff): ")]
    assert len(by_label) == 1
    counts = dict(part.rsplit(" ", 1) for part in by_label[0].split(": ", 1)[1].split(", "))
    assert sum(int(c) for c in counts.values()) == n
    assert counts["transposed"] == "4"  # 2 layer + fn W2 + input_grad_dy_W
    assert f"{n} bugs through autodiff: {n} localized (100%), {n} diagnosed (100%)" in lines
    # what fell back to central differences is said, never passed off as autodiff
    fallback = {p for r in corpus for p in r.not_on_tensors}
    said = [ln for ln in lines if "judged in part by central differences" in ln]
    assert len(said) == bool(fallback)
    assert all(p in said[0] for p in fallback)
    total = len(corpus)
    assert lines[-1] == f"{total} bugs: {total} localized (100%), {total} diagnosed (100%)"
    assert any(ln.startswith(f"{len(ALL_BUGS)} bugs by label (layer): ") for ln in lines)


def test_autodiff_layer_bug_with_another_label_is_localized_not_diagnosed():
    result = selftest.run_bug(
        replace(_layer_bug("bias_not_summed"), diagnosis="zero"), autodiff=True
    )
    assert (result.name, result.corpus) == ("bias_not_summed+autodiff", "autodiff")
    assert (result.localized, result.diagnosed, result.label) == (True, False, "not_reduced")
    assert set(result.not_on_tensors) <= {"fc1", "act1", "fc2", "softmax", "loss"}


def test_autodiff_function_bug_expected_elsewhere_is_not_localized():
    bug = next(b for b in FUNCTION_BUGS if b.name == "bias_not_summed")
    result = selftest.run_function_bug(replace(bug, numeric_param="W1"), autodiff=True)
    assert result.name == "fn:bias_not_summed+autodiff"
    assert (result.localized, result.diagnosed) == (False, False)
    assert result.found[0]["quantity"] == "grad:b3"


def test_format_table_lists_bugs_and_totals(corpus):
    text = selftest.format_table(corpus)
    for r in corpus:
        assert r.name in text
    assert f"{len(corpus)} bugs" in text
    assert "100%" in text


# --- no false alarms ------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", sorted(bugs.UNMUTATED))
def test_unmutated_models_never_flagged(model_name):
    build = bugs.UNMUTATED[model_name]
    flagged = []
    for seed in range(200):
        model, loss, x, target = build(seed)
        report = selftest.compare_setup(model, loss, x, target, seed=seed)
        if not report.ok or report.root_causes or report.warnings:
            flagged.append(
                (
                    seed,
                    [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes],
                    [w.message for w in report.warnings],
                )
            )
        assert report.tolerance.rtol == TOL.rtol
    assert flagged == [], flagged[:5]


# --- command line ---------------------------------------------------------------------------


def test_cli_selftest_json_schema(capsys):
    code = main(["selftest", "--format", "json"])
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert set(doc) == {"bugs"}
    expected = [b.name for b in ALL_BUGS] + [b.name for b in TRAINING_BUGS]
    expected += [f"fn:{b.name}{mode}" for b in FUNCTION_BUGS for mode in ("", "+numeric")]
    expected += [f"{b.name}+autodiff" for b in AUTODIFF_BUGS]
    expected += [f"fn:{b.name}+autodiff" for b in FUNCTION_BUGS]
    assert [b["name"] for b in doc["bugs"]] == expected
    for entry in doc["bugs"]:
        assert set(entry) >= SCHEMA, entry
        assert isinstance(entry["name"], str)
        assert isinstance(entry["layer"], str)
        assert isinstance(entry["quantity"], str)
        assert isinstance(entry["expected_diagnosis"], str)
        assert isinstance(entry["found"], list)
        assert isinstance(entry["localized"], bool)
        assert isinstance(entry["diagnosed"], bool)
        for f in entry["found"]:
            assert {"layer", "quantity", "diagnosis"} <= set(f)
    assert all(b["localized"] for b in doc["bugs"])
    assert code == 0


def test_cli_selftest_one_bug_table(capsys):
    code = main(["selftest", "--bug", "bias_not_summed"])
    captured = capsys.readouterr()
    assert code == 0
    lines = [ln for ln in captured.out.splitlines() if ln.strip()]
    assert lines[0].split()[:2] == ["bug", "expected"]
    body = [ln for ln in lines[1:] if not ln.startswith("1 bugs")]
    assert len(body) == 1
    assert body[0].startswith("bias_not_summed")
    assert "not_reduced" in body[0]
    assert "1 bugs" in captured.out
    for other in ALL_BUGS:
        if other.name != "bias_not_summed":
            assert other.name not in captured.out


def test_cli_selftest_unknown_bug_is_usage_error(capsys):
    code = main(["selftest", "--bug", "no_such_bug"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("gradparity: error:")
    assert "no_such_bug" in err
    assert "Traceback" not in captured.err
