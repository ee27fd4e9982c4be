"""The known-bug corpus: every injected bug is localized and (nearly) every one diagnosed; the
unmutated models give no finding at all over many seeds; ``gradparity selftest`` on the CLI."""

from __future__ import annotations

import json

import pytest

from gradparity import bugs, selftest
from gradparity.cli import main
from gradparity.function_bugs import FUNCTION_BUGS
from gradparity.tolerance import tolerance_for
from gradparity.training_bugs import TRAINING_BUGS

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
    assert n == len(bugs.BUGS) + len(TRAINING_BUGS) + 2 * len(FUNCTION_BUGS)
    not_localized = [r.name for r in corpus if not r.localized]
    assert not_localized == [], not_localized
    diagnosed = sum(r.diagnosed for r in corpus)
    assert diagnosed / n >= 0.90, [r.name for r in corpus if not r.diagnosed]


def test_every_bug_result_is_consistent(corpus):
    for r in corpus:
        if r.name.startswith("fn:"):  # a function bug: judged by the first root cause
            hits = r.found[:1]
            assert r.localized == (
                bool(hits) and (hits[0]["layer"], hits[0]["quantity"]) == (r.layer, r.quantity)
            )
            assert r.diagnosed == (r.localized and hits[0]["diagnosis"] == r.expected_diagnosis)
            continue
        if r.step is None:  # a layer bug: judged by its exact place
            hits = [f for f in r.found if (f["layer"], f["quantity"]) == (r.layer, r.quantity)]
            assert r.localized == (bool(hits) and all(f["layer"] == r.layer for f in r.found))
        else:  # a training bug: judged by its step and quantity kind
            kind = r.quantity.split(":")[0] + ":"
            hits = [f for f in r.found if f["quantity"].startswith(kind)]
            assert r.localized == (bool(hits) and all(f["step"] == r.step for f in r.found))
        assert r.diagnosed == any(f["diagnosis"] == r.expected_diagnosis for f in hits)
        for f in r.found:
            assert f["message"], r.name


def test_run_corpus_named_subset_and_unknown():
    (only,) = selftest.run_corpus(["bias_not_summed"])
    assert only.name == "bias_not_summed"
    assert only.localized and only.diagnosed
    (fn,) = selftest.run_corpus(["fn:transposed_square_weight_grad+numeric"])
    assert (fn.layer, fn.quantity, fn.expected_diagnosis) == ("backprop", "grad:W2", "transposed")
    assert fn.localized and fn.diagnosed
    with pytest.raises(KeyError, match="no_such_bug"):
        selftest.run_corpus(["no_such_bug"])


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
        assert report.tolerance["rtol"] == TOL.rtol
    assert flagged == [], flagged[:5]


# --- command line ---------------------------------------------------------------------------


def test_cli_selftest_json_schema(capsys):
    code = main(["selftest", "--format", "json"])
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert set(doc) == {"bugs"}
    expected = [b.name for b in bugs.BUGS] + [b.name for b in TRAINING_BUGS]
    expected += [f"fn:{b.name}{mode}" for b in FUNCTION_BUGS for mode in ("", "+numeric")]
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
    for other in bugs.BUGS:
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
