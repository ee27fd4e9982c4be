"""The minor tier (issue 12, items 2, 5 and 8): differences small against the tensor's scale
and consistent with a small constant are named, listed after root causes, and leave ``ok``
True unless ``strict``; a difference with no effect on the gradients is minor too."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from book_style import TwoLayerNet, batch, torch_twin

import gradparity as gp
from gradparity.cli.main import main
from gradparity.core.labels import EPSILON, NO_EFFECT, TIED_MAXIMA
from gradparity.core.row import Row
from gradparity.core.status import Status
from gradparity.core.tolerance import tolerance_for
from gradparity.corpus import layer_bugs
from gradparity.corpus.selftest import compare_setup
from gradparity.evidence import epsilon_fits
from gradparity.locate.minor import layer_without_effect, tap_without_effect
from gradparity.ours import Linear

pytest_plugins = ["pytester"]
TOL = tolerance_for("float64")


def _compare(net, reference, **options):
    x, t = batch()
    return gp.compare(
        list(net.layers.items()),
        reference,
        x,
        t,
        ours_loss=net.lastLayer,
        reference_loss=F.cross_entropy,
        **options,
    )


@pytest.fixture(scope="module")
def loss_eps_report():
    return _compare(TwoLayerNet(loss_eps=1e-7), torch_twin())


@pytest.fixture(scope="module")
def batchnorm_report():
    return _compare(TwoLayerNet(batchnorm_eps=2e-5, loss_eps=0), torch_twin(batchnorm=True))


def test_loss_epsilon_is_minor_with_its_size(loss_eps_report):
    report = loss_eps_report
    assert report.ok and report.root_causes == []
    (found,) = report.minor
    assert (found.layer, found.quantity, found.diagnosis) == ("loss", "output", EPSILON)
    assert found.detail["minor"]["epsilon"] == pytest.approx(1e-7, rel=1e-3)
    assert 1e-7 < found.detail["minor"]["scale_relative"] < 1e-6
    assert "epsilon of about 1e-07 inside the log" in found.message
    assert found.source is not None  # SoftmaxWithLoss.forward
    statuses = {(r.mode, r.quantity): r.status for r in report.rows if r.layer == "loss"}
    assert statuses[("isolate", "output")] == statuses[("chain", "output")] == Status.MINOR
    assert all(r.status in (Status.OK, Status.MINOR) for r in report.rows)


def test_loss_epsilon_in_every_rendering(loss_eps_report, tmp_path):
    report = loss_eps_report
    assert report.verdict().startswith("Parity, with 1 minor difference")
    assert "minor 1. [epsilon] loss output" in report.summary()
    assert "## Minor differences" in report.to_markdown()
    assert "Parity, with 1 minor difference" in report._repr_html_()
    saved = json.loads(report.to_json())
    assert saved["ok"] is True and saved["strict"] is False
    assert saved["minor"][0]["diagnosis"] == EPSILON
    back = gp.Report.from_json(report.save(tmp_path / "r"))
    assert back.ok and [f.message for f in back.minor] == [f.message for f in report.minor]
    assert back.to_json() == report.to_json()


def test_strict_makes_minor_count(tmp_path):
    report = _compare(TwoLayerNet(loss_eps=1e-7), torch_twin(), strict=True)
    assert not report.ok and report.root_causes == [] and len(report.minor) == 1
    assert "strict" in report.verdict()
    back = gp.Report.from_json(report.save(tmp_path / "strict"))
    assert back.strict and not back.ok


def test_batchnorm_epsilon_is_fitted(batchnorm_report):
    report = batchnorm_report
    assert report.ok and report.root_causes == []
    (found,) = report.minor
    assert (found.layer, found.diagnosis) == ("BatchNorm1", EPSILON)
    assert found.detail["minor"]["epsilon"] == pytest.approx(2e-5, rel=1e-3)
    assert found.detail["minor"]["reference_epsilon"] == 1e-5
    assert "ours' variance epsilon is about 2e-05, the reference's 1e-05" in found.message


def test_a_one_percent_error_is_not_minor():
    """Near miss: a variance epsilon of 0.02 moves the output by 1%: a root cause."""
    report = _compare(TwoLayerNet(batchnorm_eps=2e-2, loss_eps=0), torch_twin(batchnorm=True))
    assert not report.ok and report.minor == []
    assert ("BatchNorm1", "output") in {(f.layer, f.quantity) for f in report.root_causes}


def _weight_grad(change):
    class ChangedWeightGrad(Linear):
        def backward(self, grad_out):
            grad_x = super().backward(grad_out)
            self.grads["W"] = change(self.grads["W"])
            return grad_x

    return ChangedWeightGrad


def test_a_small_uneven_difference_without_a_form_gets_the_generic_hint():
    """A guard constant added to a gradient: small, smooth, uneven, no form to fit."""
    guard = _weight_grad(lambda g: g + 3e-6 * np.abs(g).max())
    report = compare_setup(*layer_bugs.base_network(0, fc1=guard))
    assert report.ok and report.root_causes == []
    (found,) = report.minor
    assert (found.layer, found.quantity, found.diagnosis) == ("fc1", "grad:W", EPSILON)
    assert "no size could be fitted" in found.message
    assert "epsilon" not in found.detail["minor"]


def test_a_small_uniform_factor_is_not_minor():
    """ours = (1 + 1e-6) * reference moves every element alike: a factor, not an epsilon."""
    report = compare_setup(*layer_bugs.base_network(0, fc1=_weight_grad(lambda g: g * 1.000001)))
    assert report.minor == [] and not report.ok


def test_epsilon_fits_refuse_what_they_cannot_reproduce():
    rng = np.random.default_rng(0)
    logits, t = rng.standard_normal((8, 3)), rng.integers(0, 3, 8)
    p = epsilon_fits._softmax(logits)[np.arange(8), t]
    ref = -np.mean(np.log(p))
    assert epsilon_fits.loss_epsilon(logits, t, -np.mean(np.log(p + 1e-7)), ref, TOL) == (
        pytest.approx(1e-7, rel=1e-3)
    )
    assert epsilon_fits.loss_epsilon(logits, t, ref * 1.01, ref, TOL) is None
    x = rng.standard_normal((16, 4)) * [1, 2, 3, 4]
    var = x.var(axis=0)
    ref_out = (x - x.mean(0)) / np.sqrt(var + 1e-5)
    ours_out = (x - x.mean(0)) / np.sqrt(var + 2e-5)
    assert epsilon_fits.variance_epsilon(var, ours_out, ref_out, 1e-5, (0,), TOL) == (
        pytest.approx(2e-5, rel=1e-6)
    )
    assert epsilon_fits.variance_epsilon(var, ours_out * 1.01, ref_out, 1e-5, (0,), TOL) is None


def test_clip_bound_is_found_only_on_the_bound():
    probabilities = np.array([[1e-9, 0.3, 1 - 1e-9], [0.2, 0.5, 0.3]])
    clipped = np.clip(probabilities, 1e-5, 1 - 1e-5)
    bound = epsilon_fits.clip_bound(clipped, probabilities, TOL)
    assert bound == {"side": "ours", "low": 1e-5, "high": 1 - 1e-5}
    assert epsilon_fits.clip_bound(probabilities, clipped, TOL)["side"] == "the reference"
    assert epsilon_fits.clip_bound(clipped * 1.01, probabilities, TOL) is None


def _tap(layer, quantity, diverged, diagnosis=None):
    status = Status.ROOT_CAUSE if diverged else Status.OK
    return Row("chain", layer, "tap", quantity, [2], [2], status=status, diagnosis=diagnosis)


class _Ctx:
    def __init__(self, rows):
        self.rows = rows

    def rows_of(self, mode):
        return [r for r in self.rows if r.mode == mode]


@pytest.mark.parametrize("label", [None, TIED_MAXIMA])
def test_a_tap_whose_difference_vanishes_is_minor(label):
    rows = [
        _tap("pool", "grad_output", True, label),
        _tap("conv", "grad_output", False),
        Row("chain", "backprop", "parameter", "grad:W", [2], [2]),
    ]
    tap_without_effect(_Ctx(rows))
    assert rows[0].detail["minor"] == {"no_effect": True}
    assert rows[0].diagnosis == (label or NO_EFFECT)
    assert "no effect on the gradients" in rows[0].message


def test_a_tap_whose_difference_reaches_a_gradient_is_not_minor():
    rows = [
        _tap("pool", "grad_output", True),
        _tap("conv", "grad_output", False),
        Row("chain", "backprop", "parameter", "grad:W", [2], [2], status=Status.INHERITED),
    ]
    tap_without_effect(_Ctx(rows))
    assert "minor" not in rows[0].detail


@pytest.mark.parametrize("below_diverges", [False, True])
def test_a_layer_gradient_without_effect_in_the_chain(below_diverges):
    """compare: an isolated dL/dx that differs is minor only where, in the chain, the input
    gradient of the layer below and every parameter gradient agree (its own may differ)."""
    below_status = Status.INHERITED if below_diverges else Status.OK
    rows = [
        Row("isolate", "pool", "MaxPool", "grad_input", [2], [2], status=Status.ROOT_CAUSE),
        Row("chain", "relu", "ReLU", "output", [2], [2]),
        Row("chain", "pool", "MaxPool", "output", [2], [2]),
        Row("chain", "fc", "Linear", "output", [2], [2]),
        Row("chain", "fc", "Linear", "grad:W", [2], [2]),
        Row("chain", "fc", "Linear", "grad_input", [2], [2]),
        Row("chain", "pool", "MaxPool", "grad_input", [2], [2], status=Status.INHERITED),
        Row("chain", "relu", "ReLU", "grad_input", [2], [2], status=below_status),
    ]
    layer_without_effect(_Ctx(rows))
    assert ("minor" in rows[0].detail) is not below_diverges
    assert (rows[0].diagnosis == NO_EFFECT) is not below_diverges


def test_a_first_layer_gradient_is_never_without_effect():
    rows = [
        Row("isolate", "fc", "Linear", "grad_input", [2], [2], status=Status.ROOT_CAUSE),
        Row("chain", "fc", "Linear", "output", [2], [2]),
        Row("chain", "fc", "Linear", "grad:W", [2], [2]),
        Row("chain", "fc", "Linear", "grad_input", [2], [2], status=Status.INHERITED),
    ]
    layer_without_effect(_Ctx(rows))
    assert "minor" not in rows[0].detail


def test_cli_strict_exit_code(tmp_path, capsys):
    here = __file__.rsplit("/", 1)[0]
    ours, ref = f"{here}/book_style.py:ours_setup", f"{here}/book_style.py:reference_setup"
    assert main(["check", "--ours", ours, "--reference", ref, "--out", str(tmp_path / "a")]) == 0
    assert "minor 1. [epsilon] loss output" in capsys.readouterr().out
    argv = ["check", "--ours", ours, "--reference", ref, "--out", str(tmp_path / "b"), "--strict"]
    assert main(argv) == 1
    assert json.loads((tmp_path / "b/report.json").read_text())["strict"] is True


def test_fixture_strict_option(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("PYTHONPATH", __file__.rsplit("/", 1)[0])  # book_style, in the child
    pytester.makepyfile(
        test_eps=textwrap.dedent(
            """
            import torch.nn.functional as F
            from book_style import TwoLayerNet, batch, torch_twin

            def test_loss_eps(parity):
                net = TwoLayerNet()
                x, t = batch()
                parity.check(list(net.layers.items()), torch_twin(), x, t,
                             ours_loss=net.lastLayer, reference_loss=F.cross_entropy)
            """
        )
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    strict = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--parity-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["gradparity: minor difference (strict): loss output: *"])


def test_readme_minor_section_shows_what_the_command_prints(tmp_path, capsys, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    section = (root / "README.md").read_text().split("## Minor differences and `strict`")[1]
    block = section.split("```\n")[1]
    command, *shown = block.splitlines()
    assert command.startswith("$ gradparity check ")
    monkeypatch.chdir(root)  # the command names tests/book_style.py from the repository root
    assert main([*command.split()[2:], "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.replace(str(tmp_path), "reports/latest")
    assert printed.splitlines() == shown
