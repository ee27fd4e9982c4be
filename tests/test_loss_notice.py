"""Nothing substituted silently: every report names the loss each side ran, and says, once, in
the summary, the terminal output, report.md, the HTML headline and a failing test's message,
when ours' loss was gradparity's default (the user's own loss backward then went unchecked)."""

from __future__ import annotations

import html

import numpy as np
import pytest
import torch

from gradparity.core.losses import UNCHECKED, loss_name
from gradparity.corpus import layer_bugs as bugs
from gradparity.ours import MSE, SoftmaxCrossEntropy, mlp
from gradparity.pipelines.layers import compare
from gradparity.pipelines.training import compare_training
from gradparity.reference import mirror
from gradparity.report.report import Report
from gradparity.report.terminal import render as render_terminal
from gradparity.sides.adapt import wrap
from gradparity.testing.assertion import ParityError, assert_parity

NOTICE = "your own loss was not checked"
HOW = "ours_loss=your_loss_layer"


def _run(**losses) -> Report:
    model = mlp((4, 5, 3))
    rng = np.random.default_rng(0)
    return compare(model, mirror(model), rng.normal(size=(6, 4)), [0, 1, 2, 0, 1, 2], **losses)


@pytest.fixture(scope="module")
def defaulted() -> Report:
    return _run()


@pytest.fixture(scope="module")
def given() -> Report:
    return _run(ours_loss=SoftmaxCrossEntropy())


def _channels(report: Report) -> dict[str, str]:
    """Each channel's text, Markdown and HTML escapes undone."""
    files = report.files()
    return {
        "summary": report.summary(),
        "terminal": render_terminal(report),
        "markdown": html.unescape(str(files["report.md"]).replace("\\", "")),
        "html": html.unescape(str(files["report.html"])),
    }


def test_meta_names_both_losses_and_which_gradparity_chose(defaulted, given):
    assert defaulted.meta["ours_loss"] == "SoftmaxCrossEntropy (default)"
    assert defaulted.meta["reference_loss"] == "CrossEntropyLoss (default)"
    assert given.meta["ours_loss"] == "SoftmaxCrossEntropy"
    assert given.meta["reference_loss"] == "CrossEntropyLoss (default)"  # the mirror, chosen
    both = _run(ours_loss=SoftmaxCrossEntropy(), reference_loss=torch.nn.functional.cross_entropy)
    assert both.meta["ours_loss"] == "SoftmaxCrossEntropy"
    assert both.meta["reference_loss"] == "cross_entropy"


def test_a_defaulted_loss_is_said_once_in_every_channel_on_a_passing_run(defaulted):
    assert defaulted.ok
    for channel, text in _channels(defaulted).items():
        assert text.count(NOTICE) == 1, channel
        assert HOW in text, channel
        assert "forward(logits, target) -> float" in text, channel
    # in the first lines: right under the verdict
    assert NOTICE in defaulted.summary().splitlines()[2]
    assert "loss: ours SoftmaxCrossEntropy (default)" in defaulted.summary().splitlines()[1]
    html = _channels(defaulted)["html"]
    assert html.index(NOTICE) < html.index('id="layers"')
    markdown = _channels(defaulted)["markdown"]
    assert markdown.index(NOTICE) < markdown.index("## isolate rows")


def test_a_given_loss_is_named_and_no_notice_is_shown(given):
    for channel, text in _channels(given).items():
        assert NOTICE not in text, channel
        assert "ours SoftmaxCrossEntropy, reference CrossEntropyLoss (default)" in text, channel


def test_a_diverging_run_says_it_once_in_the_terminal_and_the_failure_message():
    model, _, x, target = bugs.base_network(0, fc2=bugs.BiasNotSummed)
    with pytest.raises(ParityError) as info:
        assert_parity(model, mirror(model), x, target)
    message = str(info.value)
    assert message.splitlines()[0].startswith("gradparity: fc2.b:")  # the fix stays first
    assert message.count(NOTICE) == 1 and HOW in message
    report = info.value.report
    assert render_terminal(report).count(NOTICE) == 1
    assert report.summary().count(NOTICE) == 1

    model, loss, x, target = bugs.base_network(0, fc2=bugs.BiasNotSummed)
    with pytest.raises(ParityError) as info:
        assert_parity(model, mirror(model), x, target, ours_loss=loss)
    assert NOTICE not in str(info.value)
    assert NOTICE not in render_terminal(info.value.report)


def test_the_default_hides_a_loss_bug_that_passing_the_loss_finds():
    """The issue's case: a user loss without the division by the batch size."""

    class Loss(SoftmaxCrossEntropy):
        def backward(self):
            return super().backward() * 6  # the batch of _run: no "/ batch_size"

    assert _run().ok
    report = _run(ours_loss=Loss(), reference_loss=torch.nn.CrossEntropyLoss())
    assert not report.ok
    assert report.root_causes[0].layer == "loss"
    assert NOTICE not in report.summary()


def test_reload_keeps_the_losses_and_renders_the_same(tmp_path, defaulted, given):
    for i, report in enumerate([defaulted, given]):
        folder = report.save(tmp_path / str(i))
        again = Report.from_json(folder)
        assert again.meta["ours_loss"] == report.meta["ours_loss"]
        assert again.meta["reference_loss"] == report.meta["reference_loss"]
        assert again.summary() == report.summary()
        assert render_terminal(again) == render_terminal(report)
        assert again.files() == {
            name: (folder / name).read_bytes()
            if isinstance(data, bytes)
            else (folder / name).read_text()
            for name, data in again.files().items()
        }


def test_compare_training_names_both_losses():
    model = mlp((5, 4, 3))
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(8, 5)), rng.integers(0, 3, size=8)) for _ in range(2)]
    report = compare_training(model, mirror(model), batches)
    assert report.meta["ours_loss"] == "SoftmaxCrossEntropy (default)"
    assert report.meta["reference_loss"] == "CrossEntropyLoss (default)"
    assert report.summary().count(UNCHECKED) == 1
    report = compare_training(model, mirror(model), batches, ours_loss=SoftmaxCrossEntropy())
    assert report.meta["ours_loss"] == "SoftmaxCrossEntropy"
    assert UNCHECKED not in report.summary()


def test_loss_names():
    assert loss_name(MSE()) == "MSE"
    assert loss_name(torch.nn.MSELoss()) == "MSELoss"
    assert loss_name(torch.nn.functional.mse_loss) == "mse_loss"

    class MyLoss:
        def f(self, z, t):
            return 0.0

        def b(self):
            return None

    assert loss_name(wrap(MyLoss(), forward="f", backward="b")) == "MyLoss"
