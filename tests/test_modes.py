"""Issue 14, item 1: the reference runs in the mode it is given (compare, compare_function,
compare_training), the report states each mode-dependent module's mode and warns when ours
says otherwise, and batch norm in training mode reaches parity, its running statistics
compared as ``buffer:<name>`` rows (a wrong momentum or a biased running variance found).

The NumPy layers are small stand-ins written the way NumPy frameworks write them."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import gradparity as gp
from gradparity.core.labels import BIASED_RUNNING_VAR, MODE_MISMATCH, RUNNING_MOMENTUM
from gradparity.pairing.align import LayerPair
from gradparity.sides import run_torch


class Dense:
    """ML-From-Scratch style: W (in, out), b (1, out)."""

    def __init__(self, n_in, n_out, rng):
        self.params = {
            "W": rng.standard_normal((n_in, n_out)) * 0.5,
            "b": rng.normal(size=(1, n_out)),
        }
        self.grads = {}

    def forward(self, X):
        self.X = X
        return X @ self.params["W"] + self.params["b"]

    def backward(self, accum_grad):
        self.grads["W"] = self.X.T @ accum_grad
        self.grads["b"] = accum_grad.sum(axis=0, keepdims=True)
        return accum_grad @ self.params["W"].T


class ReLU:
    params, grads = {}, {}

    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


class Flatten:
    params, grads = {}, {}

    def forward(self, x):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return dout.reshape(self.shape)


class BatchNorm:
    """Batch norm over axis 1 of (N, C) or (N, C, H, W), torch's conventions: the new batch
    weighs ``momentum`` in the running averages, whose variance is unbiased (N - 1);
    normalising uses the biased one. ``ddof`` and ``momentum`` let a test plant a bug."""

    MEAN, VAR = "running_mean", "running_var"  # the attribute names of the running averages
    FLAG = "training"  # the attribute that holds the mode

    def __init__(self, n, momentum=0.1, eps=1e-5, ddof=1, training=True, rng=None):
        rng = rng or np.random.default_rng(0)
        self.params = {"gamma": 1 + 0.1 * rng.normal(size=n), "beta": rng.normal(size=n)}
        self.grads = {}
        self.momentum, self.eps, self.ddof = momentum, eps, ddof
        setattr(self, self.FLAG, training)
        setattr(self, self.MEAN, rng.normal(size=n) * 0.3)
        setattr(self, self.VAR, 1 + rng.uniform(size=n))

    def _shape(self, x):
        return (1, -1) + (1,) * (x.ndim - 2)

    def forward(self, x):
        axes = (0, *range(2, x.ndim))
        shape = self._shape(x)
        if getattr(self, self.FLAG):
            mu, var = x.mean(axis=axes), x.var(axis=axes)
            count = x.size // x.shape[1]
            running = x.var(axis=axes) * count / (count - self.ddof)
            m = self.momentum
            setattr(self, self.MEAN, (1 - m) * getattr(self, self.MEAN) + m * mu)
            setattr(self, self.VAR, (1 - m) * getattr(self, self.VAR) + m * running)
        else:
            mu, var = getattr(self, self.MEAN), getattr(self, self.VAR)
        self.inv_std = 1 / np.sqrt(var + self.eps).reshape(shape)
        self.xhat = (x - mu.reshape(shape)) * self.inv_std
        return self.params["gamma"].reshape(shape) * self.xhat + self.params["beta"].reshape(shape)

    def backward(self, dout):
        axes = (0, *range(2, dout.ndim))
        shape = self._shape(dout)
        self.grads["gamma"] = (dout * self.xhat).sum(axis=axes)
        self.grads["beta"] = dout.sum(axis=axes)
        dxhat = dout * self.params["gamma"].reshape(shape)
        if not getattr(self, self.FLAG):
            return dxhat * self.inv_std
        count = dout.size // dout.shape[1]
        total = dxhat.sum(axis=axes).reshape(shape)
        along = (dxhat * self.xhat).sum(axis=axes).reshape(shape)
        return self.inv_std * (count * dxhat - total - self.xhat * along) / count


class ChainerBatchNorm(BatchNorm):
    """Chainer's names and convention: avg_mean/avg_var, ``decay`` weighs the old average."""

    MEAN, VAR = "avg_mean", "avg_var"

    def __init__(self, n, decay=0.9, **kwargs):
        super().__init__(n, momentum=1 - decay, **kwargs)


class KerasStyleBatchNorm(BatchNorm):
    """Keras's names and convention behind other method names: moving_mean/moving_var,
    ``momentum`` weighs the old average (0.99), ``call``/``grad`` for forward/backward."""

    MEAN, VAR = "moving_mean", "moving_var"

    def __init__(self, n, momentum=0.99, **kwargs):
        super().__init__(n, momentum=1 - momentum, **kwargs)

    def call(self, x):
        return self.forward(x)

    def grad(self, dy):
        return self.backward(dy)


class Dropout:
    """ML-From-Scratch style: ``training`` switches the mask off."""

    params, grads = {}, {}

    def __init__(self, p=0.5, training=True):
        self.p, self.training = p, training

    def forward(self, X):
        self.mask = np.random.uniform(size=X.shape) > self.p if self.training else 1.0
        return X * self.mask

    def backward(self, accum_grad):
        return accum_grad * self.mask


def _mlp(norm, seed=0):
    rng = np.random.default_rng(seed)
    return [("fc", Dense(4, 6, rng)), ("bn", norm), ("relu", ReLU()), ("out", Dense(6, 3, rng))]


def _torch_mlp(norm: nn.Module) -> nn.Sequential:
    modules = OrderedDict(fc=nn.Linear(4, 6), bn=norm, relu=nn.ReLU(), out=nn.Linear(6, 3))
    return nn.Sequential(modules).double()


def _batch(n=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)) * 2 + 1, rng.integers(0, 3, n)


def _rows(report, quantity):
    return [r for r in report.rows if r.quantity == quantity]


def test_train_mode_batch_norm_reaches_parity_and_its_running_statistics_are_compared():
    norm = BatchNorm(6)
    model, reference = _mlp(norm), _torch_mlp(nn.BatchNorm1d(6))
    before = (norm.running_mean.copy(), norm.running_var.copy())
    x, y = _batch()
    report = gp.compare(model, reference, x, y)
    assert report.ok, report.root_causes
    assert report.meta["reference_modes"] == {"bn": "train"}
    assert "the reference runs in the mode it was given: bn train" in report.notes
    for name in ("running_mean", "running_var"):
        rows = _rows(report, f"buffer:{name}")
        assert {r.mode for r in rows} == {"chain", "isolate"}
        assert all(r.status == "ok" and r.layer == "bn" for r in rows)
    # Nothing the user holds moved: ours' statistics and the reference's buffers.
    np.testing.assert_array_equal(norm.running_mean, before[0])
    np.testing.assert_array_equal(norm.running_var, before[1])
    assert reference.bn.training and int(reference.bn.num_batches_tracked) == 0
    assert torch.equal(reference.bn.running_mean, torch.zeros(6, dtype=torch.float64))


def test_eval_mode_batch_norm_uses_ours_running_statistics_on_both_sides():
    norm = BatchNorm(6, training=False)
    report = gp.compare(_mlp(norm), _torch_mlp(nn.BatchNorm1d(6)).eval(), *_batch())
    assert report.ok, report.root_causes
    assert report.meta["reference_modes"] == {"bn": "eval"}
    assert _rows(report, "buffer:running_mean") == []  # eval mode updates nothing


def test_batch_norm_2d_in_training_mode_reaches_parity():
    rng = np.random.default_rng(3)
    model = [("bn", BatchNorm(3, rng=rng)), ("flat", Flatten()), ("out", Dense(12, 2, rng))]
    modules = OrderedDict(bn=nn.BatchNorm2d(3), flat=nn.Flatten(), out=nn.Linear(12, 2))
    x = rng.standard_normal((5, 3, 2, 2))
    report = gp.compare(model, nn.Sequential(modules).double(), x, rng.integers(0, 2, 5))
    assert report.ok, report.root_causes
    assert {r.status for r in _rows(report, "buffer:running_var")} == {"ok"}


def test_chainer_names_and_decay_convention_pair_with_torch_buffers():
    model = _mlp(ChainerBatchNorm(6, decay=0.9))
    report = gp.compare(model, _torch_mlp(nn.BatchNorm1d(6)), *_batch())
    assert report.ok, report.root_causes
    assert {r.quantity for r in report.rows if r.quantity.startswith("buffer:")} == {
        "buffer:avg_mean",
        "buffer:avg_var",
    }


def test_a_wrapped_layer_keeps_its_statistics_and_mode_on_the_wrapped_object():
    norm = KerasStyleBatchNorm(6)
    before = norm.moving_var.copy()
    layer = gp.wrap(norm, forward="call", backward="grad")
    report = gp.compare(_mlp(layer), _torch_mlp(nn.BatchNorm1d(6, momentum=0.01)), *_batch())
    assert report.ok, report.root_causes
    assert {r.status for r in _rows(report, "buffer:moving_var")} == {"ok"}
    np.testing.assert_array_equal(norm.moving_var, before)
    warned = gp.compare(_mlp(layer), _torch_mlp(nn.BatchNorm1d(6, momentum=0.01)).eval(), *_batch())
    assert [w.layer for w in warned.warnings if w.diagnosis == MODE_MISMATCH] == ["bn"]


def test_inverted_momentum_is_found_on_the_running_mean():
    """Keras's momentum 0.99 read as torch's: ours keeps 1 % of the old average."""
    model = _mlp(BatchNorm(6, momentum=0.9))
    report = gp.compare(model, _torch_mlp(nn.BatchNorm1d(6)), *_batch())
    assert not report.ok
    found = {(f.layer, f.quantity): f for f in report.root_causes}
    finding = found[("bn", "buffer:running_mean")]
    assert finding.diagnosis == RUNNING_MOMENTUM
    assert finding.detail["momentum"] == pytest.approx(0.9)
    assert finding.detail["reference_momentum"] == pytest.approx(0.1)
    assert "convention is inverted" in finding.message
    assert {r.status for r in report.rows if r.quantity == "output"} == {"ok"}


def test_biased_running_variance_is_found():
    model = _mlp(BatchNorm(6, ddof=0))
    report = gp.compare(model, _torch_mlp(nn.BatchNorm1d(6)), *_batch())
    assert not report.ok
    (finding,) = report.root_causes
    assert (finding.layer, finding.quantity) == ("bn", "buffer:running_var")
    assert finding.diagnosis == BIASED_RUNNING_VAR
    assert "N - 1" in finding.message and "ddof=1" in finding.message


def test_dropout_given_in_eval_mode_is_compared_in_eval_mode():
    rng = np.random.default_rng(0)
    model = [("fc", Dense(4, 6, rng)), ("drop", Dropout(training=False)), ("out", Dense(6, 3, rng))]
    modules = OrderedDict(fc=nn.Linear(4, 6), drop=nn.Dropout(0.5), out=nn.Linear(6, 3))
    reference = nn.Sequential(modules).double().eval()
    report = gp.compare(model, reference, *_batch())
    assert report.ok, report.root_causes
    assert report.meta["reference_modes"] == {"drop": "eval"}
    assert report.warnings == []


def test_ours_in_training_against_a_reference_in_eval_is_warned_by_name():
    norm = BatchNorm(6, training=True)
    report = gp.compare(_mlp(norm), _torch_mlp(nn.BatchNorm1d(6)).eval(), *_batch())
    (warning,) = [w for w in report.warnings if w.diagnosis == MODE_MISMATCH]
    assert warning.layer == "bn"
    assert warning.detail == {"ours_mode": "train", "reference_mode": "eval", "module": "bn"}
    assert "ours' bn is in train mode but the reference's bn is in eval mode" in warning.message


@pytest.mark.parametrize(
    ("attribute", "value", "warned"),
    [("mode", "test", True), ("is_training", False, True), ("mode", "train", False)],
)
def test_ours_mode_is_read_from_the_common_attributes(attribute, value, warned):
    class Stated(BatchNorm):
        FLAG = "use_batch_statistics"  # computes in training mode whatever it states

    norm = Stated(6)
    setattr(norm, attribute, value)
    report = gp.compare(_mlp(norm), _torch_mlp(nn.BatchNorm1d(6)), *_batch())
    assert report.ok, report.root_causes
    assert any(w.diagnosis == MODE_MISMATCH for w in report.warnings) == warned


def test_a_layer_without_a_stated_mode_gets_no_warning():
    """The book's ``train_flg`` is no attribute gradparity reads: the mode is unknown."""

    class BookBatchNorm(BatchNorm):
        FLAG = "train_flg"

    report = gp.compare(_mlp(BookBatchNorm(6)), _torch_mlp(nn.BatchNorm1d(6)).eval(), *_batch())
    assert report.warnings == [] and not report.ok


def _bn_grads(params, x, target):
    """Linear (torch layout) -> batch norm in training mode -> softmax cross-entropy."""
    z = x @ params["0.weight"].T + params["0.bias"]
    layer = BatchNorm(3)
    layer.params = {"gamma": params["1.weight"], "beta": params["1.bias"]}
    h = layer.forward(z)
    p = np.exp(h - h.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dh = p.copy()
    dh[np.arange(len(target)), target] -= 1
    dz = layer.backward(dh / len(target))
    return {
        "0.weight": dz.T @ x,
        "0.bias": dz.sum(axis=0),
        "1.weight": layer.grads["gamma"],
        "1.bias": layer.grads["beta"],
    }


def test_compare_function_keeps_each_module_in_the_mode_given():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double()
    params = {k: v.detach().numpy().copy() for k, v in reference.named_parameters()}
    params["1.bias"] += 0.3
    grads = lambda x, y: _bn_grads(params, x, y)  # noqa: E731
    report = gp.compare_function(grads, params, reference, *_batch())
    assert report.ok, report.root_causes
    assert report.meta["reference_modes"] == {"1": "train"}
    assert "the reference runs in the mode it was given: 1 train" in report.notes
    eval_report = gp.compare_function(grads, params, reference.eval(), *_batch())
    assert not eval_report.ok and eval_report.meta["reference_modes"] == {"1": "eval"}


def test_compare_training_keeps_a_dropout_given_in_eval_mode():
    rng = np.random.default_rng(0)
    model = [("fc", Dense(4, 6, rng)), ("drop", Dropout(training=False)), ("out", Dense(6, 3, rng))]
    modules = OrderedDict(fc=nn.Linear(4, 6), drop=nn.Dropout(0.5), out=nn.Linear(6, 3))
    reference = nn.Sequential(modules).double().eval()
    report = gp.compare_training(model, reference, [_batch(seed=s) for s in range(3)])
    assert report.ok, report.root_causes
    assert report.meta["reference_modes"] == {"drop": "eval"}
    assert not reference.training


def test_compare_training_keeps_batch_norm_in_training_mode():
    model = _mlp(BatchNorm(6))
    report = gp.compare_training(
        model, _torch_mlp(nn.BatchNorm1d(6)), [_batch(seed=s) for s in range(3)]
    )
    assert report.ok, report.root_causes
    assert report.meta["reference_modes"] == {"bn": "train"}


def test_a_reference_probe_reports_the_updated_statistics_and_puts_the_buffers_back():
    module = nn.BatchNorm1d(3).double()
    x = np.random.default_rng(0).standard_normal((5, 3))
    rec = run_torch.probe_module(LayerPair("bn", None, "bn", module), x, x, torch.float64)
    np.testing.assert_allclose(rec.buffers["running_mean"], 0.1 * x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rec.buffers["running_var"], 0.9 + 0.1 * x.var(axis=0, ddof=1))
    assert not module.running_mean.any() and int(module.num_batches_tracked) == 0
