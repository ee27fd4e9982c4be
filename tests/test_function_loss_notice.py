"""compare_function names the loss each side ran: ours is the user's grads() with its own
loss, the reference its reference_loss (or gradparity's default) or central differences of
loss_fn. Without loss_fn the loss value itself was not compared: every channel says so once,
with how to pass it; with loss_fn its value is compared (a wrong one is a root cause)."""

from __future__ import annotations

import html

import pytest
from textbook_setup import HIDDEN_DERIVATIVE, quadratic_cost, setup

import gradparity as gp
from gradparity.report.terminal import render as render_terminal
from gradparity.testing.assertion import ParityError

NOTICE = "the loss value was not compared"
HOW = "pass loss_fn=lambda params, x, target:"


def _channels(report: gp.Report) -> dict[str, str]:
    """Each channel's text, Markdown and HTML escapes undone."""
    files = report.files()
    return {
        "summary": report.summary(),
        "terminal": render_terminal(report),
        "markdown": html.unescape(str(files["report.md"]).replace("\\", "")),
        "html": html.unescape(str(files["report.html"])),
    }


@pytest.fixture(scope="module")
def without_loss_fn() -> gp.Report:
    return gp.compare_function(**setup())


@pytest.fixture(scope="module")
def with_loss_fn() -> gp.Report:
    return gp.compare_function(**setup(loss_fn=quadratic_cost))


def test_meta_names_both_sides_and_whether_the_value_was_compared(without_loss_fn, with_loss_fn):
    assert without_loss_fn.meta["ours_loss"] == "your backprop() (its own loss, value not compared)"
    assert without_loss_fn.meta["reference_loss"] == "<lambda>"
    assert without_loss_fn.meta["loss_value_compared"] is False
    assert with_loss_fn.meta["ours_loss"] == (
        "your backprop() (its own loss, value: loss_fn quadratic_cost)"
    )
    assert with_loss_fn.meta["loss_value_compared"] is True
    defaulted = gp.compare_function(**setup(reference_loss=None))
    assert defaulted.meta["reference_loss"] == "softmax cross-entropy, batch mean (default)"


def test_without_loss_fn_every_channel_says_it_once_in_the_first_lines(without_loss_fn):
    assert without_loss_fn.ok
    for channel, text in _channels(without_loss_fn).items():
        assert text.count(NOTICE) == 1, channel
        assert HOW in text, channel
        assert "loss: ours your backprop() (its own loss, value not compared), reference" in text
    lines = without_loss_fn.summary().splitlines()
    assert lines[1].startswith("  loss: ours your backprop()") and NOTICE in lines[2]
    page = _channels(without_loss_fn)["html"]
    assert page.index(NOTICE) < page.index('id="layers"')


def test_with_loss_fn_the_value_is_compared_and_nothing_is_said_missing(with_loss_fn):
    assert with_loss_fn.ok
    loss_rows = [r for r in with_loss_fn.rows if (r.layer, r.quantity) == ("loss", "output")]
    assert len(loss_rows) == 1 and loss_rows[0].status == "ok"
    for channel, text in _channels(with_loss_fn).items():
        assert NOTICE not in text, channel
        assert "value: loss_fn quadratic_cost" in text, channel


def test_a_loss_fn_whose_value_differs_is_the_root_cause():
    report = gp.compare_function(**setup(loss_fn=lambda p, x, y: 2 * quadratic_cost(p, x, y)))
    assert [(f.layer, f.quantity, f.diagnosis) for f in report.root_causes] == [
        ("loss", "output", "scaled")
    ]


def test_the_failure_message_says_it_once():
    with pytest.raises(ParityError) as info:
        gp.assert_function_parity(**setup(HIDDEN_DERIVATIVE))
    message = str(info.value)
    assert message.splitlines()[0].startswith("gradparity: ")  # the fix stays first
    assert message.count(NOTICE) == 1 and HOW in message
    with pytest.raises(ParityError) as info:
        gp.assert_function_parity(**setup(HIDDEN_DERIVATIVE, loss_fn=quadratic_cost))
    assert NOTICE not in str(info.value)


def test_central_differences_name_loss_fn_as_the_reference_and_miss_nothing():
    report = gp.compare_function(**setup(numeric=True))
    assert report.meta["ours_loss"] == "your backprop() (its own loss)"
    assert report.meta["reference_loss"] == "central differences of loss_fn quadratic_cost"
    assert "loss_value_compared" not in report.meta
    for channel, text in _channels(report).items():
        assert NOTICE not in text, channel
        assert "reference central differences of loss_fn quadratic_cost" in text, channel


def test_reload_keeps_the_notice(tmp_path, without_loss_fn, with_loss_fn):
    for i, report in enumerate([without_loss_fn, with_loss_fn]):
        again = gp.Report.from_json(report.save(tmp_path / str(i)))
        assert again.meta["loss_value_compared"] is report.meta["loss_value_compared"]
        assert again.summary() == report.summary()
        assert render_terminal(again) == render_terminal(report)
