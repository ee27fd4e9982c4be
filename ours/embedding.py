"""Embedding: a lookup table of learned vectors indexed by integer tokens.

Follows the layer protocol of ``gradparity.ours.layers``; the maths sits in pure
``_embedding_fwd``/``_embedding_bwd`` functions, the class only caches.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gradparity.ours.layers import Layer


def _embedding_fwd(indices: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Rows of ``weight`` picked by ``indices``: (N,) or (N, T) -> (N, D) or (N, T, D)."""
    return weight[indices]


def _embedding_bwd(indices: np.ndarray, grad_out: np.ndarray, num_embeddings: int) -> np.ndarray:
    """dL/dweight (V, D): each row gets the sum of the upstream rows of every position that
    looked it up. ``np.add.at`` because a plain ``grad[indices] += g`` keeps only one
    contribution of a repeated index."""
    dim = grad_out.shape[-1]
    grad_weight = np.zeros((num_embeddings, dim), dtype=grad_out.dtype)
    np.add.at(grad_weight, indices.reshape(-1), grad_out.reshape(-1, dim))
    return grad_weight


class Embedding(Layer):
    """y = weight[x] (torch.nn.Embedding).

    Shapes: x integer indices (N,) or (N, T) in [0, num_embeddings); weight
    (num_embeddings, embedding_dim); y (N, embedding_dim) or (N, T, embedding_dim).
    Init: weight ~ N(0, 1) like torch. The input is integer, so it has no gradient:
    ``backward`` returns zeros of x's shape in the weight's dtype (a gradient nobody uses,
    but an array, as the layer protocol asks).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rng: np.random.Generator | None = None,
        dtype: npt.DTypeLike = np.float64,
    ) -> None:
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(
                f"Embedding needs num_embeddings and embedding_dim >= 1, got "
                f"{num_embeddings} and {embedding_dim}"
            )
        rng = rng if rng is not None else np.random.default_rng(0)
        self.num_embeddings = num_embeddings
        self.params["weight"] = rng.standard_normal((num_embeddings, embedding_dim)).astype(dtype)
        self._indices: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        indices = _checked_indices(x, self.num_embeddings)
        self._indices = indices
        return _embedding_fwd(indices, self.params["weight"])

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._indices is None:
            raise RuntimeError("Embedding.backward called before forward")
        self._accumulate(weight=_embedding_bwd(self._indices, grad_out, self.num_embeddings))
        return np.zeros(self._indices.shape, dtype=grad_out.dtype)


def _checked_indices(x: np.ndarray, num_embeddings: int) -> np.ndarray:
    """x as integer indices, or a one-line ValueError naming what is wrong. Whole-valued
    floats are accepted: a harness may hand the indices over in a float array."""
    x = np.asarray(x)
    if x.dtype.kind == "f" and np.array_equal(x, np.round(x)):
        x = x.astype(np.int64)
    if x.dtype.kind not in "iu":
        raise ValueError(f"Embedding input must be integer indices, got {x.dtype}")
    if x.size and (x.min() < 0 or x.max() >= num_embeddings):
        raise ValueError(
            f"Embedding indices must lie in [0, {num_embeddings}), got {x.min()}..{x.max()}"
        )
    return x
