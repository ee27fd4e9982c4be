"""The Jacobian probe on tiny hand-written layers whose bugs we know."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from gradparity.core.tolerance import tolerance_for
from gradparity.evidence.jacobian import (
    MAX_JACOBIAN_ELEMENTS,
    JacobianProbe,
    describe_jacobian_difference,
    numpy_jacobian,
    probe,
    too_large,
    torch_jacobian,
)

TOL = tolerance_for("float64")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Softmax:
    """Correct: dL/dx = s * (g - <g, s>), the full Jacobian diag(s) - s s^T applied to g."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.s = _softmax(x)
        return self.s

    def backward(self, g: np.ndarray) -> np.ndarray:
        return self.s * (g - (g * self.s).sum(axis=1, keepdims=True))


class DiagonalSoftmax(Softmax):
    """Bug: the elementwise derivative s * (1 - s), as if softmax were a sigmoid."""

    def backward(self, g: np.ndarray) -> np.ndarray:
        return g * self.s * (1 - self.s)


class KroneckerSignSoftmax(Softmax):
    """Bug: the Kronecker-delta term with the wrong sign, J = -s_i delta_ij - s_i s_j."""

    def backward(self, g: np.ndarray) -> np.ndarray:
        return -self.s * g - self.s * (g * self.s).sum(axis=1, keepdims=True)


class OneMinusDeltaSoftmax(Softmax):
    """Bug: delta_ij replaced by (1 - delta_ij), J = s_i (1 - delta_ij) - s_i s_j."""

    def backward(self, g: np.ndarray) -> np.ndarray:
        gs = (g * self.s).sum(axis=1, keepdims=True)
        return self.s * (g.sum(axis=1, keepdims=True) - g) - self.s * gs


class ZeroSoftmax(Softmax):
    """Bug: backward returns zeros."""

    def backward(self, g: np.ndarray) -> np.ndarray:
        return np.zeros_like(g)


class Sigmoid:
    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign  # -1.0 plants a sign error

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.y = 1 / (1 + np.exp(-x))
        return self.y

    def backward(self, g: np.ndarray) -> np.ndarray:
        return self.sign * g * self.y * (1 - self.y)


class Linear:
    """y = x @ W + b with W (in, out); ``backward_w`` lets a test plant a wrong weight."""

    def __init__(self, w: np.ndarray, b: np.ndarray, backward_w: np.ndarray | None = None) -> None:
        self.params = {"W": w, "b": b}
        self.grads = {"W": np.zeros_like(w), "b": np.zeros_like(b)}
        self.backward_w = w if backward_w is None else backward_w

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, g: np.ndarray) -> np.ndarray:
        self.grads["W"] = self.x.T @ g
        self.grads["b"] = g.sum(axis=0)
        return g @ self.backward_w.T


class StatefulLinear(Linear):
    """Correct maths, hostile state: a list cache popped by backward, grads accumulated."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        super().__init__(w, b)
        self.cache: list[np.ndarray] = []

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.cache.append(x.copy())
        out = x @ self.params["W"] + self.params["b"]
        x[...] = np.nan  # clobbers its input on purpose: the probe must hand it a copy
        return out

    def backward(self, g: np.ndarray) -> np.ndarray:
        x = self.cache.pop()
        self.grads["W"] += x.T @ g
        self.grads["b"] += g.sum(axis=0)
        return g @ self.params["W"].T


class GeneratorCacheSigmoid(Sigmoid):
    """Forward leaves a generator behind, which cannot be deep-copied."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.rows = (row for row in x)
        return super().forward(x)


class NoisySigmoid(GeneratorCacheSigmoid):
    """Uncopyable forward state and a different output on every forward."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return super().forward(x) + np.random.default_rng().normal(size=x.shape)


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 5))


def _linear_pair(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, torch.nn.Linear]:
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(n_in, n_out)), rng.normal(size=n_out)
    module = torch.nn.Linear(n_in, n_out, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w.T))  # torch keeps W as (out, in)
        module.bias.copy_(torch.from_numpy(b))
    return w, b, module


def _probe(layer, module, x: np.ndarray) -> JacobianProbe:
    result = probe(layer, module, x, TOL)
    assert isinstance(result, JacobianProbe), result
    return result


@pytest.mark.parametrize(
    ("layer", "module"),
    [(Softmax(), torch.nn.Softmax(dim=-1)), (Sigmoid(), torch.nn.Sigmoid())],
)
def test_correct_elementwise_and_mixing_layers_match(layer, module, x: np.ndarray) -> None:
    result = _probe(layer, module, x)
    assert result.ours.shape == (3, 5, 5)
    assert result.pattern["mismatch_entries"] == 0
    assert result.pattern["entries"] == 75
    assert np.allclose(result.ours, result.reference, rtol=TOL.rtol, atol=TOL.atol)
    assert "matches" in result.message


def test_softmax_jacobian_is_diag_s_minus_s_st(x: np.ndarray) -> None:
    s = _softmax(x)
    expected = np.stack([np.diag(row) - np.outer(row, row) for row in s])
    assert np.allclose(numpy_jacobian(Softmax(), x), expected, rtol=0, atol=1e-15)
    assert np.allclose(torch_jacobian(torch.nn.Softmax(dim=-1), x), expected, rtol=0, atol=1e-15)


def test_non_square_linear_matches_and_has_no_diagonal_keys() -> None:
    w, b, module = _linear_pair(4, 3)
    x = np.random.default_rng(2).normal(size=(2, 4))
    result = _probe(Linear(w, b), module, x)
    assert result.pattern["mismatch_entries"] == 0
    assert np.allclose(result.reference, np.broadcast_to(w.T, (2, 3, 4)), rtol=0, atol=1e-15)
    assert result.pattern["diagonal_match"] is None
    assert result.pattern["diagonal_only"] is None


def test_diagonal_only_softmax_is_named(x: np.ndarray) -> None:
    p = _probe(DiagonalSoftmax(), torch.nn.Softmax(dim=-1), x)
    pat = p.pattern
    assert pat["diagonal_match"] and not pat["off_diagonal_match"]
    assert pat["off_diagonal_only"] and pat["ours_offdiag_zero"]
    assert pat["mismatch_entries"] == pat["off_diagonal_mismatches"] == 3 * 20
    assert p.message.startswith("ours' Jacobian is diagonal only")


def test_kronecker_sign_softmax_differs_on_the_diagonal_only(x: np.ndarray) -> None:
    p = _probe(KroneckerSignSoftmax(), torch.nn.Softmax(dim=-1), x)
    assert p.pattern["diagonal_only"] and p.pattern["off_diagonal_match"]
    assert p.pattern["mismatch_entries"] == 3 * 5
    assert "only on the diagonal" in p.message and "Kronecker" in p.message


def test_one_minus_delta_softmax_differs_on_and_off_the_diagonal(x: np.ndarray) -> None:
    # (1 - delta_ij) moves s_i from the diagonal to every off-diagonal entry: both parts differ.
    p = _probe(OneMinusDeltaSoftmax(), torch.nn.Softmax(dim=-1), x)
    assert not p.pattern["diagonal_match"] and not p.pattern["off_diagonal_match"]
    assert p.pattern["mismatch_entries"] == p.pattern["entries"]
    assert p.pattern["sign_flipped_entries"] == 75 and not p.pattern["negated"]
    assert "75 of them with the opposite sign, diagonal differs, off-diagonal differs" in p.message


def test_all_ones_upstream_gradient_is_blind_where_the_jacobian_is_not(x: np.ndarray) -> None:
    ones = np.ones_like(x)

    def backward_of_ones(layer: Softmax) -> np.ndarray:
        layer.forward(x.copy())
        return layer.backward(ones)

    # Softmax outputs sum to 1, so the correct backward of ones is zero: a backward that
    # returns zeros passes that check, while the Jacobian probe exposes it.
    assert np.allclose(backward_of_ones(Softmax()), 0, atol=1e-15)
    assert np.array_equal(backward_of_ones(ZeroSoftmax()), np.zeros_like(x))
    zero = _probe(ZeroSoftmax(), torch.nn.Softmax(dim=-1), x)
    assert zero.pattern["ours_zero"] and zero.pattern["mismatch_entries"] == 75
    assert zero.message.startswith("ours' Jacobian is zero everywhere")
    # The diagonal-only bug, by contrast, is visible even to ones: it returns s * (1 - s).
    s = _softmax(x)
    assert np.allclose(backward_of_ones(DiagonalSoftmax()), s * (1 - s))


def test_sign_error_is_named(x: np.ndarray) -> None:
    p = _probe(Sigmoid(sign=-1.0), torch.nn.Sigmoid(), x)
    assert p.pattern["negated"] and p.pattern["diagonal_only"]
    assert p.pattern["sign_flipped_entries"] == p.pattern["mismatch_entries"] == 15
    assert "negated" in p.message


def test_transposed_weight_is_named() -> None:
    w, b, module = _linear_pair(4, 4)
    x = np.random.default_rng(3).normal(size=(2, 4))
    p = _probe(Linear(w, b, backward_w=w.T), module, x)
    assert p.pattern["transposed"] and p.pattern["off_diagonal_only"]
    assert "transposed" in p.message


def test_wrong_weight_column_fills_a_whole_row() -> None:
    w, b, module = _linear_pair(4, 3)
    wrong = w.copy()
    wrong[:, 1] *= 2.0  # output 1's weights doubled in backward only
    x = np.random.default_rng(4).normal(size=(2, 4))
    p = _probe(Linear(w, b, backward_w=wrong), module, x)
    assert p.pattern["whole_rows"] == [1] and p.pattern["whole_cols"] == []
    assert "whole rows only (outputs [1])" in p.message


def test_pattern_is_json_serialisable(x: np.ndarray) -> None:
    for layer in (Softmax(), DiagonalSoftmax()):
        pattern = _probe(layer, torch.nn.Softmax(dim=-1), x).pattern
        assert json.loads(json.dumps(pattern)) == pattern


def test_too_large_notes() -> None:
    assert too_large((2, 784), (2, 10)) == "skipped: 784 inputs per sample > 256"
    assert too_large((2, 10), (2, 300)) == "skipped: 300 outputs per sample > 256"
    assert too_large((2, MAX_JACOBIAN_ELEMENTS), (2, MAX_JACOBIAN_ELEMENTS)) is None
    w, b, module = _linear_pair(784, 10)
    x = np.random.default_rng(5).normal(size=(2, 784))
    assert probe(Linear(w, b), module, x, TOL) == "skipped: 784 inputs per sample > 256"


def test_probe_notes_other_ranks() -> None:
    x = np.zeros((2, 3, 4))
    note = probe(Sigmoid(), torch.nn.Sigmoid(), x, TOL)
    assert isinstance(note, str) and note.startswith("skipped: ") and "(2, 3, 4)" in note


def test_stateful_layer_gives_the_clean_jacobian_and_nothing_is_mutated(x: np.ndarray) -> None:
    w, b, module = _linear_pair(5, 3)
    layer = StatefulLinear(w, b)
    before, x_before = copy.deepcopy(layer.__dict__), x.copy()
    first = numpy_jacobian(layer, x)
    assert np.array_equal(first, numpy_jacobian(Linear(w, b), x))
    assert np.array_equal(first, numpy_jacobian(layer, x))  # a second run sees the same state
    assert _probe(layer, module, x).pattern["mismatch_entries"] == 0
    assert np.array_equal(x, x_before)
    assert layer.cache == [] and before["cache"] == []
    for key in ("W", "b"):
        assert np.array_equal(layer.grads[key], before["grads"][key])
        assert np.array_equal(layer.params[key], before["params"][key])


def test_torch_module_is_not_mutated() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).float()
    state = copy.deepcopy(module.state_dict())
    x = np.random.default_rng(6).normal(size=(4, 3))
    jac = torch_jacobian(module, x)
    # Batch norm mixes samples; the probe compares the same-sample blocks of the full Jacobian.
    full = torch.autograd.functional.jacobian(copy.deepcopy(module).double(), torch.from_numpy(x))
    assert np.allclose(jac, np.stack([full[b, :, b, :].numpy() for b in range(4)]), atol=1e-14)
    for key, value in module.state_dict().items():
        assert value.dtype == state[key].dtype and torch.equal(value, state[key]), key


def test_uncopyable_forward_state_falls_back_to_reforwarding(x: np.ndarray) -> None:
    assert np.array_equal(numpy_jacobian(GeneratorCacheSigmoid(), x), numpy_jacobian(Sigmoid(), x))
    with pytest.raises(ValueError, match="different output"):
        numpy_jacobian(NoisySigmoid(), x)


def test_bad_backward_shape_and_mismatched_jacobians_raise(x: np.ndarray) -> None:
    class Summing(Sigmoid):
        def backward(self, g: np.ndarray) -> np.ndarray:
            return g.sum(axis=0)

    with pytest.raises(ValueError, match="backward returned shape"):
        numpy_jacobian(Summing(), x)
    with pytest.raises(ValueError, match="need two"):
        describe_jacobian_difference(np.zeros((1, 2, 3)), np.zeros((1, 3, 2)), TOL)
