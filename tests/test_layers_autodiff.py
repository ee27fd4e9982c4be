"""Issue 13 items 3 and 4: layered code checked with no torch twin. ``gp.compare(model,
"autodiff", ...)`` compares each layer's backward with the exact vector-Jacobian product of its
own forward; ``gp.layer``/``gp.check_layer`` do the same for course-style function pairs.
The networks are written as users write them (plain ``import numpy as np``, no torch)."""

from __future__ import annotations

import contextlib
import io
import sys
import types
from collections import OrderedDict
from pathlib import Path

import book_layers
import book_verbatim
import numpy as np
import pytest
from autodiff_networks import conv_backward_naive, conv_forward_naive
from book_verbatim import Affine, Relu, SoftmaxWithLoss

import gradparity as gp
from gradparity.corpus.layer_bugs import BUGS, inject
from gradparity.ours import mlp
from gradparity.sides import layer_autodiff

HERE = Path(__file__).resolve().relative_to(Path.cwd().resolve()).as_posix()


CLOSE = 1e-12  # exact gradients: float64 rounding only


# --- a book-style network: layer objects in an OrderedDict, a loss layer ---------------------


class AffineBiasMean(Affine):
    """The book's Affine whose bias gradient is a mean over the batch."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.db = np.mean(dout, axis=0)  # the bug: a mean where the sum belongs
        return dx


class ReluInvertedMask(Relu):
    """The book's Relu whose backward blocks where the forward passed."""

    def backward(self, dout):
        dx = dout.copy()
        dx[~self.mask] = 0  # the bug: the mask inverted
        return dx


class TwoLayerNet(book_verbatim.TwoLayerNet):
    """The book's two-layer net; ``bias_mean`` and ``inverted`` switch in the variants above."""

    def __init__(self, bias_mean=False, inverted=False, seed=0):
        rng = np.random.default_rng(seed)
        params = {
            "W1": 0.5 * rng.standard_normal((5, 6)),
            "b1": 0.1 * rng.standard_normal(6),
            "W2": 0.5 * rng.standard_normal((6, 3)),
            "b2": 0.1 * rng.standard_normal(3),
        }
        relu = ReluInvertedMask() if inverted else Relu()
        super().__init__(params, relu, affine2=AffineBiasMean if bias_mean else Affine)


def book_model(net):
    """The book's layers through gp.wrap, as the README shows it."""
    return [
        (name, gp.wrap(layer, params=["W", "b"], grads=["dW", "db"]))
        if isinstance(layer, Affine)
        else (name, gp.wrap(layer, params=None, grads=None))
        for name, layer in net.layers.items()
    ]


def book_data(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 5))
    t = np.eye(3)[rng.integers(0, 3, size=8)]
    return x, t


def _source_text(finding):
    """The lines a finding's source entry names, read from its file."""
    src = finding.source
    assert src is not None and src["file"] == HERE
    lines = Path(src["file"]).read_text().splitlines()
    return "\n".join(lines[src["first_line"] - 1 : src["last_line"]])


def _gradient_rows(report):
    return [r for r in report.rows if r.mode == "isolate"]


def test_correct_book_network_is_ok_and_exact():
    net = TwoLayerNet()
    before = {k: v.copy() for k, v in net.params.items()}
    x, t = book_data()
    report = gp.compare(book_model(net), "autodiff", x, t, ours_loss=net.lastLayer)
    assert report.ok, report.root_causes
    rows = _gradient_rows(report)
    assert {(r.layer, r.quantity) for r in rows} == {
        ("Affine1", "grad_input"), ("Affine1", "grad:W"), ("Affine1", "grad:b"),
        ("Relu1", "grad_input"), ("Affine2", "grad_input"), ("Affine2", "grad:W"),
        ("Affine2", "grad:b"), ("loss", "grad_input"),
    }  # fmt: skip
    assert all(r.max_abs <= CLOSE for r in rows), [(r.layer, r.quantity, r.max_abs) for r in rows]
    assert not [r for r in report.rows if r.quantity == "output" or r.mode == "chain"]
    assert report.meta["reference"] == "autodiff (each layer's own forward)"
    assert any("forward outputs are not compared" in n for n in report.notes)
    for key, value in net.params.items():  # nothing the user holds is changed
        assert np.array_equal(value, before[key])
        assert net.layers["Affine1" if key.endswith("1") else "Affine2"].__dict__[key[0]] is value


def test_two_bugs_in_two_layers_are_both_named_with_source_lines():
    net = TwoLayerNet(bias_mean=True, inverted=True)
    x, t = book_data()
    report = gp.compare(book_model(net), "autodiff", x, t, ours_loss=net.lastLayer)
    assert not report.ok
    found = {(f.layer, f.quantity): f for f in report.root_causes}
    assert set(found) == {("Relu1", "grad_input"), ("Affine2", "grad:b")}
    assert found[("Relu1", "grad_input")].diagnosis == "mask_inverted"
    assert found[("Affine2", "grad:b")].diagnosis == "batch_reduction"
    bias_line = "self.db = np.mean(dout, axis=0)"
    mask_line = "dx[~self.mask] = 0"
    assert bias_line in _source_text(found[("Affine2", "grad:b")])
    assert mask_line in _source_text(found[("Relu1", "grad_input")])


# --- ours models and the layer corpus ----------------------------------------------------------


def test_ours_model_correct_is_ok():
    model = mlp([5, 4, 3], seed=0)
    rng = np.random.default_rng(0)
    x, target = rng.standard_normal((6, 5)), rng.integers(0, 3, size=6)
    report = gp.compare(model, "autodiff", x, target)
    assert report.ok, report.root_causes
    # ours' loss returns float() of its value (the loss protocol): still exact, on tensors.
    assert not [n for n in report.notes if "central differences" in n]
    for row in _gradient_rows(report):
        assert row.max_abs <= CLOSE, row


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name)
def test_every_layer_corpus_bug_is_found_with_its_label(bug):
    model, loss, x, target = bug.build(0)
    model, loss = inject(model, loss, bug)
    report = gp.compare(model, "autodiff", x, target, ours_loss=loss)
    assert not report.ok
    found = {(f.layer, f.quantity): f.diagnosis for f in report.root_causes}
    assert found.get((bug.layer, bug.quantity)) == bug.diagnosis, found


def test_options_of_a_torch_reference_are_refused():
    net = TwoLayerNet()
    x, t = book_data()
    with pytest.raises(gp.InputError, match="needs a torch reference"):
        gp.compare(book_model(net), "autodiff", x, t, reference_loss=lambda o, t: o.sum())
    with pytest.raises(gp.InputError, match="unknown"):
        gp.compare(book_model(net), "autograd", x, t)


# --- course-style layer functions -------------------------------------------------------------


def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1).dot(w) + b
    cache = (x, w, b)
    return out, cache


def affine_backward(dout, cache):
    x, w, _ = cache
    dx = dout.dot(w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T.dot(dout)
    db = np.sum(dout, axis=0)
    return dx, dw, db


def affine_backward_one_example_bias(dout, cache):
    x, w, _ = cache
    dx = dout.dot(w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T.dot(dout)
    db = dout[0] * x.shape[0]  # the bug: one example's gradient, times N
    return dx, dw, db


def relu_forward(x):
    out = np.maximum(0, x)
    cache = x
    return out, cache


def relu_backward(dout, cache):
    x = cache
    dx = dout * (x > 0)
    return dx


def relu_backward_unmasked(dout, cache):
    dx = dout  # the bug: the mask forgotten
    return dx


def course_data(seed=2):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, 2, 3)), rng.standard_normal((6, 5)), rng.standard_normal(5)


def test_check_layer_of_a_correct_pair_is_ok():
    x, w, b = course_data()
    report = gp.check_layer(affine_forward, affine_backward, x, w=w, b=b)
    assert report.ok, report.root_causes
    rows = _gradient_rows(report)
    assert {r.quantity for r in rows} == {"grad_input", "grad:w", "grad:b"}
    assert all(r.max_abs <= CLOSE for r in rows)
    assert gp.check_layer(relu_forward, relu_backward, x).ok


def test_check_layer_names_the_bug_and_its_line():
    x, w, b = course_data()
    report = gp.check_layer(affine_forward, affine_backward_one_example_bias, x, w=w, b=b)
    assert not report.ok
    (finding,) = report.root_causes
    assert (finding.layer, finding.quantity) == ("affine", "grad:b")
    assert "db = dout[0] * x.shape[0]" in _source_text(finding)
    (unmasked,) = gp.check_layer(relu_forward, relu_backward_unmasked, x).root_causes
    assert (unmasked.quantity, unmasked.diagnosis) == ("grad_input", "missing_local_derivative")


def test_layer_pairs_in_a_network():
    _, w, b = course_data()
    rng = np.random.default_rng(3)
    w2, b2 = rng.standard_normal((5, 3)), rng.standard_normal(3)
    x, y = rng.standard_normal((4, 6)), rng.integers(0, 3, size=4)
    model = [
        ("fc1", gp.layer(affine_forward, affine_backward, w=w, b=b)),
        ("relu", gp.layer(relu_forward, relu_backward_unmasked)),
        ("fc2", gp.layer(affine_forward, affine_backward, {"w": w2, "b": b2})),
    ]
    report = gp.compare(model, "autodiff", x, y)
    (finding,) = report.root_causes
    assert (finding.layer, finding.quantity) == ("relu", "grad_input")
    assert report.table.query("layer == 'relu'")["type"].iloc[0] == "relu_forward"
    assert "dx = dout" in _source_text(finding)


def test_a_backward_returning_too_few_gradients_is_a_finding():
    x, w, b = course_data()

    def short_backward(dout, cache):
        dx, dw, _ = affine_backward(dout, cache)
        return dx, dw

    (finding,) = gp.check_layer(affine_forward, short_backward, x, w=w, b=b).root_causes
    assert finding.diagnosis == "raised"
    assert "expected dx then one gradient for each of ['w', 'b']" in finding.message


# --- a forward that cannot run on tensors -----------------------------------------------------


class SeededDropout:
    """Dropout whose mask comes from the global generator, seeded in forward."""

    def __init__(self):
        self.params, self.grads = {}, {}

    def forward(self, x):
        np.random.seed(0)
        self.mask = np.random.rand(*x.shape) > 0.5
        return x * self.mask / 0.5

    def backward(self, dout):
        return dout * self.mask / 0.5


def test_a_forward_using_np_random_falls_back_to_central_differences():
    rng = np.random.default_rng(4)
    model = [("drop", SeededDropout())]
    report = gp.compare(model, "autodiff", rng.standard_normal((4, 3)), rng.integers(0, 3, 4))
    assert report.ok, report.root_causes
    (note,) = [n for n in report.notes if n.startswith("drop:")]
    assert "central differences" in note
    assert "np.random" in note


def test_readme_example_prints_what_the_readme_says():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Layers without a torch twin") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n\nprints")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip() == "[('affine', 'grad:b', 'batch_reduction')]"


def test_a_layer_pair_against_a_torch_module():
    import torch

    _, w, b = course_data()
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((4, 6)), rng.integers(0, 5, size=4)
    linear = torch.nn.Linear(6, 5).double()
    fc = gp.layer(affine_forward, affine_backward_one_example_bias, w=w, b=b)
    report = gp.compare([("fc", fc)], linear, x, y)
    (finding,) = report.root_causes
    assert (finding.layer, finding.quantity) == ("fc", "grad:b")
    assert "db = dout[0] * x.shape[0]" in _source_text(finding)
    assert gp.compare(
        [("fc", gp.layer(affine_forward, affine_backward, w=w, b=b))], linear, x, y
    ).ok


# --- naive-loop convolution and pooling, course style ------------------------------------------


def conv_backward_bias_averaged(dout, cache):
    dx, dw, _ = conv_backward_naive(dout, cache)
    db = np.mean(dout, axis=(0, 2, 3))  # the bug: a mean over the batch and positions
    return dx, dw, db


def test_naive_loop_convolution_through_layer_functions():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 5, 5))
    w, b = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    conv_param = {"stride": 1, "pad": 1}
    good = gp.check_layer(
        conv_forward_naive, conv_backward_naive, x, w=w, b=b, conv_param=conv_param
    )
    assert good.ok, good.root_causes
    assert all(r.max_abs <= 1e-11 for r in _gradient_rows(good))
    assert not [n for n in good.notes if "central differences" in n]  # exact, on tensors
    bad = gp.check_layer(
        conv_forward_naive, conv_backward_bias_averaged, x, w=w, b=b, conv_param=conv_param
    )
    (finding,) = bad.root_causes
    assert (finding.layer, finding.quantity) == ("conv_naive", "grad:b")
    assert "db = np.mean(dout, axis=(0, 2, 3))" in _source_text(finding)
    assert conv_param == {"stride": 1, "pad": 1}


def test_a_relu_input_exactly_at_zero_is_minor_not_a_root_cause():
    x = np.array([[0.0, 1.5, -2.0], [0.0, -0.5, 3.0]])
    report = gp.check_layer(relu_forward, relu_backward, x)
    assert report.ok and not report.root_causes
    (minor,) = report.minor
    assert (minor.layer, minor.quantity, minor.diagnosis) == ("relu", "grad_input", "tied_maxima")
    assert any("np.maximum at " + HERE in n and "kink" in n for n in report.notes)
    # off the kink, the same bug is a root cause still
    (found,) = gp.check_layer(relu_forward, relu_backward_unmasked, x).root_causes
    assert found.quantity == "grad_input"


class Broken:
    """A layer whose forward raises: a finding, and the layers before it are still checked."""

    def __init__(self):
        self.params, self.grads = {}, {}

    def forward(self, x):
        raise ValueError("shapes do not align")

    def backward(self, dout):
        return dout


def test_a_forward_that_raises_is_a_finding_and_the_layers_before_it_are_checked():
    net = TwoLayerNet(bias_mean=True)
    x, t = book_data()
    model = book_model(net)
    report = gp.compare([*model, ("broken", Broken())], "autodiff", x, t)
    found = {(f.layer, f.quantity): f.diagnosis for f in report.root_causes}
    assert found[("broken", "output")] == "raised"
    assert found[("Affine2", "grad:b")] == "batch_reduction"
    assert any("chain run stopped at broken" in n for n in report.notes)


def test_an_autodiff_report_saves_and_reloads(tmp_path):
    net = TwoLayerNet(inverted=True)
    x, t = book_data()
    report = gp.compare(book_model(net), "autodiff", x, t, ours_loss=net.lastLayer)
    report.save(tmp_path / "out")
    again = gp.Report.from_json(tmp_path / "out" / "report.json")
    assert [(f.layer, f.quantity, f.diagnosis) for f in again.root_causes] == [
        ("Relu1", "grad_input", "mask_inverted")
    ]
    assert again.meta["reference"] == "autodiff (each layer's own forward)"
    assert "autodiff (each layer's own forward)" in (tmp_path / "out" / "report.md").read_text()


def torch_affine(x, w, b):
    return x.reshape(x.shape[0], -1) @ w + b


def test_check_layer_against_a_torch_function():
    x, w, b = course_data()
    report = gp.check_layer(affine_forward, affine_backward, x, w=w, b=b, reference=torch_affine)
    assert report.ok, report.root_causes
    assert report.meta["reference"] == "torch function torch_affine"
    bad = gp.check_layer(
        affine_forward, affine_backward_one_example_bias, x, w=w, b=b, reference=torch_affine
    )
    (finding,) = bad.root_causes
    assert (finding.layer, finding.quantity) == ("affine", "grad:b")
    with pytest.raises(gp.InputError, match="torch function"):
        gp.check_layer(affine_forward, affine_backward, x, w=w, b=b, reference="torch")


class DictAffine(book_layers.Affine):
    """The book's later style (parameters and gradients in dicts, so no gp.wrap is needed)
    with a stray factor 2 in the input gradient."""

    def backward(self, dout):
        return super().backward(dout) * 2  # the bug: a stray factor 2


def test_an_ordered_dicts_items_are_a_model():
    rng = np.random.default_rng(7)
    layers = OrderedDict()
    layers["Affine1"] = DictAffine(rng.standard_normal((5, 4)), rng.standard_normal(4))
    layers["Relu1"] = Relu()
    layers["Affine2"] = DictAffine(rng.standard_normal((4, 3)), rng.standard_normal(3))
    x, t = book_data()
    report = gp.compare(layers.items(), "autodiff", x, t, ours_loss=SoftmaxWithLoss())
    found = {(f.layer, f.quantity): f.diagnosis for f in report.root_causes}
    assert found == {("Affine1", "grad_input"): "scaled", ("Affine2", "grad_input"): "scaled"}


def test_the_loaded_ours_modules_are_rescanned_when_a_module_is_loaded_or_gone(monkeypatch):
    before = layer_autodiff._loaded_ours()
    assert "gradparity.ours.layers" in before
    extra = types.ModuleType("gradparity.ours.extra_for_test")
    monkeypatch.setitem(sys.modules, extra.__name__, extra)
    assert layer_autodiff._loaded_ours() == before | {extra.__name__}
    monkeypatch.delitem(sys.modules, extra.__name__)
    monkeypatch.setitem(sys.modules, "unrelated_module_for_test", extra)  # the same count
    assert layer_autodiff._loaded_ours() == before
