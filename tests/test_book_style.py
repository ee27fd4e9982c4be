"""Issue 12's first example, as "Deep Learning from Scratch" writes a network: an
``OrderedDict`` of ``Affine``/``Relu`` layer objects with ``forward(x)``/``backward(dout)``
and a ``SoftmaxWithLoss`` last layer, whose backward forgets ``/ batch_size``. Checked as the
README's first example shows: layers adapted with ``gp.wrap``, the loss passed as
``ours_loss`` with its torch twin as ``reference_loss``."""

from __future__ import annotations

import html
import inspect
from pathlib import Path

import book_verbatim as book
import numpy as np
import pytest
import torch
from book_verbatim import Affine

import gradparity as gp
from gradparity.report.terminal import render as render_terminal
from gradparity.testing.assertion import ParityError

HERE = Path(__file__).resolve().relative_to(Path.cwd().resolve()).as_posix()
NOTICE = "your own loss was not checked"
HOW = "ours_loss=your_loss_layer"


class AffineMeanBias(Affine):
    """A second, independent bug: the bias gradient averaged over the batch."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.db = np.sum(dout, axis=0) / dout.shape[0]
        return dx


class SoftmaxWithLoss(book.SoftmaxWithLoss):
    """The book's loss layer with the bug of issue 12's first example: its backward forgets
    ``/ batch_size``."""

    def backward(self, dout=1):
        dx = (self.y - self.t) * dout  # the bug: the book divides by batch_size here
        return dx


class TwoLayerNet(book.TwoLayerNet):
    """The book's two-layer net with the loss layer above; ``affine2`` a test's variant."""

    def __init__(self, input_size, hidden_size, output_size, seed=0, affine2=Affine):
        rng = np.random.default_rng(seed)
        params = {
            "W1": 0.5 * rng.normal(size=(input_size, hidden_size)),
            "b1": 0.1 * rng.normal(size=hidden_size),
            "W2": 0.5 * rng.normal(size=(hidden_size, output_size)),
            "b2": 0.1 * rng.normal(size=output_size),
        }
        super().__init__(params, affine2=affine2, last_layer=SoftmaxWithLoss())


def _checked(net: TwoLayerNet) -> list[tuple[str, object]]:
    """The layers as gradparity takes them: Affine's W, b, dW, db named with gp.wrap."""
    return [
        (name, gp.wrap(layer, params=["W", "b"], grads=["dW", "db"]))
        if isinstance(layer, Affine)
        else (name, layer)
        for name, layer in net.layers.items()
    ]


def _data(batch: int = 6):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch, 4))
    t = np.eye(3)[rng.integers(0, 3, size=batch)]  # one-hot, as the book's labels
    return x, t


def _reference() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _channels(report: gp.Report) -> dict[str, str]:
    files = report.files()
    return {
        "summary": report.summary(),
        "terminal": render_terminal(report),
        "html": html.unescape(str(files["report.html"])),
    }


def test_without_ours_loss_the_report_says_the_loss_was_not_checked():
    net = TwoLayerNet(4, 5, 3)
    x, t = _data()
    report = gp.compare(_checked(net), _reference(), x, t)
    assert report.ok  # the default loss hides the missing / batch_size
    for channel, text in _channels(report).items():
        assert text.count(NOTICE) == 1, channel
        assert HOW in text, channel
    headline = _channels(report)["html"]
    assert headline.index(NOTICE) < headline.index('id="layers"')


def test_without_ours_loss_a_failing_test_says_it_too():
    net = TwoLayerNet(4, 5, 3, affine2=AffineMeanBias)
    x, t = _data()
    with pytest.raises(ParityError) as info:
        gp.assert_parity(_checked(net), _reference(), x, t)
    message = str(info.value)
    assert message.splitlines()[0].startswith("gradparity: Affine2.b")  # the other bug
    assert message.count(NOTICE) == 1 and HOW in message


@pytest.fixture(scope="module")
def with_loss() -> gp.Report:
    net = TwoLayerNet(4, 5, 3)
    x, t = _data()
    return gp.compare(
        _checked(net), _reference(), x, t,
        ours_loss=net.lastLayer, reference_loss=torch.nn.CrossEntropyLoss(),
    )  # fmt: skip


def test_with_ours_loss_the_missing_division_is_found_at_the_loss_backward(with_loss):
    assert not with_loss.ok
    first = with_loss.root_causes[0]
    assert (first.layer, first.quantity, first.diagnosis) == (
        "loss", "grad_input", "batch_reduction"
    )  # fmt: skip
    assert "6 times" in first.message  # the batch size
    lines, start = inspect.getsourcelines(SoftmaxWithLoss.backward)
    assert first.source == {
        "file": HERE, "first_line": start, "last_line": start + len(lines) - 1
    }  # fmt: skip
    assert len(with_loss.root_causes) == 1  # every layer below only inherits it
    for channel, text in _channels(with_loss).items():
        assert NOTICE not in text, channel
        assert "loss: ours SoftmaxWithLoss, reference CrossEntropyLoss" in text, channel


def test_with_ours_loss_every_channel_shows_where_to_look(with_loss):
    start = inspect.getsourcelines(SoftmaxWithLoss.backward)[1]
    assert f"at {HERE}:{start}" in render_terminal(with_loss)
    assert "the bug: the book divides by batch_size here" in _channels(with_loss)["html"]
    net = TwoLayerNet(4, 5, 3)
    x, t = _data()
    with pytest.raises(ParityError) as info:
        gp.assert_parity(
            _checked(net), _reference(), x, t,
            ours_loss=net.lastLayer, reference_loss=torch.nn.CrossEntropyLoss(),
        )  # fmt: skip
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith("gradparity: ") and f"(at {HERE}:{start}" in first_line
    assert NOTICE not in str(info.value)


def test_the_fixed_loss_reaches_parity():
    class FixedSoftmaxWithLoss(SoftmaxWithLoss):
        def backward(self, dout=1):
            batch_size = self.t.shape[0]
            return (self.y - self.t) * dout / batch_size

    net = TwoLayerNet(4, 5, 3)
    x, t = _data()
    report = gp.compare(
        _checked(net), _reference(), x, t,
        ours_loss=FixedSoftmaxWithLoss(), reference_loss=torch.nn.CrossEntropyLoss(),
    )  # fmt: skip
    assert report.ok, report.summary()


def test_an_ordered_dict_of_layers_is_refused_with_the_call_that_works():
    net = TwoLayerNet(4, 5, 3)
    x, t = _data()
    with pytest.raises(gp.InputError, match=r"pass list\(layers\.items\(\)\)"):
        gp.compare(net.layers, _reference(), x, t)
