"""Recurrent layers (``RNN``, ``LSTM``) and the ``Residual`` container.

The recurrent layers use torch's parameter names and layouts (``weight_ih`` (G*H, D),
``weight_hh`` (G*H, H), ``bias_ih`` and ``bias_hh`` (G*H,), G = 1 for RNN, 4 for LSTM with
torch's gate order i, f, g, o), so weights cross to ``torch.nn.RNN``/``nn.LSTM`` unconverted.
Sequences are batch first: x (N, T, D) -> the hidden state at every step (N, T, H), starting
from a zero state; an unbatched sequence (T, D) gives (T, H), as torch's modules take it.
Backward runs backprop through time over the whole sequence.

As in ``layers``, the maths sits in pure ``_fwd``/``_bwd`` functions; the classes only cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping

import numpy as np
import numpy.typing as npt

from gradparity.ours.containers import Sequential
from gradparity.ours.layers import Layer, _sigmoid_fwd


def _recurrent_params(
    input_size: int, hidden_size: int, gates: int, rng: np.random.Generator, dtype: npt.DTypeLike
) -> dict[str, np.ndarray]:
    """torch's init: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)) (biases non-zero on purpose)."""
    bound = 1.0 / np.sqrt(hidden_size)
    shapes = {
        "weight_ih": (gates * hidden_size, input_size),
        "weight_hh": (gates * hidden_size, hidden_size),
        "bias_ih": (gates * hidden_size,),
        "bias_hh": (gates * hidden_size,),
    }
    return {k: rng.uniform(-bound, bound, s).astype(dtype) for k, s in shapes.items()}


def _batched(x: np.ndarray, input_size: int, kind: str) -> np.ndarray:
    """x as (N, T, D): an unbatched (T, D) sequence gets a batch axis of one."""
    if x.ndim not in (2, 3) or x.shape[-1] != input_size:
        raise ValueError(
            f"{kind} input must be (N, T, {input_size}) or (T, {input_size}), got shape {x.shape}"
        )
    return x if x.ndim == 3 else x[None]


def _like_input(batched: np.ndarray, x_ndim: int) -> np.ndarray:
    """An (N, T, ...) result without its batch axis when the input came unbatched."""
    return batched if x_ndim == 3 else batched[0]


def _check_options(kind: str, num_layers: int, bidirectional: bool, batch_first: bool) -> None:
    """One-line refusal of the torch options this layer does not implement."""
    if num_layers != 1:
        raise ValueError(f"{kind}: num_layers={num_layers} is not supported (only 1)")
    if bidirectional:
        raise ValueError(f"{kind}: bidirectional=True is not supported")
    if not batch_first:
        raise ValueError(f"{kind}: batch_first=False is not supported (sequences are (N, T, D))")


# --- RNN ------------------------------------------------------------------------------------


def _rnn_fwd(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), h_{-1} = 0.

    x (N, T, D) -> hs (N, T, H).
    """
    n, steps, _ = x.shape
    h = np.zeros((n, p["weight_hh"].shape[1]), dtype=x.dtype)
    hs = np.empty((n, steps, h.shape[1]), dtype=x.dtype)
    from_input = x @ p["weight_ih"].T + p["bias_ih"]  # (N, T, H): no time dependence
    for t in range(steps):
        h = np.tanh(from_input[:, t] + h @ p["weight_hh"].T + p["bias_hh"])
        hs[:, t] = h
    return hs


def _previous_states(hs: np.ndarray) -> np.ndarray:
    """h_{t-1} for every t (zeros before the first step). hs (N, T, H) -> (N, T, H)."""
    return np.concatenate([np.zeros_like(hs[:, :1]), hs[:, :-1]], axis=1)


def _rnn_bwd(
    x: np.ndarray, hs: np.ndarray, p: dict[str, np.ndarray], grad_out: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Backprop through time. grad_out (N, T, H) -> (grad_x (N, T, D), {param: grad})."""
    dz = np.empty_like(hs)  # dL/d(pre-activation) per step
    dh = np.zeros_like(hs[:, 0])  # gradient reaching h_t from later steps
    for t in reversed(range(hs.shape[1])):
        dz[:, t] = (dh + grad_out[:, t]) * (1.0 - hs[:, t] * hs[:, t])
        dh = dz[:, t] @ p["weight_hh"]
    grads = {
        "weight_ih": np.einsum("nth,ntd->hd", dz, x),
        "weight_hh": np.einsum("nth,ntk->hk", dz, _previous_states(hs)),
        "bias_ih": dz.sum(axis=(0, 1)),
        "bias_hh": dz.sum(axis=(0, 1)),
    }
    return dz @ p["weight_ih"], grads


class RNN(Layer):
    """Elman RNN with tanh, one layer, batch first, zero initial state (torch.nn.RNN's maths).

    Shapes: x (N, T, D) -> y (N, T, H), the hidden state at every step; (T, D) -> (T, H).
    Params (torch's names and layouts): weight_ih (H, D), weight_hh (H, H), bias_ih (H,),
    bias_hh (H,). Options beyond torch's defaults other than ``batch_first=True`` (several
    layers, bidirectional, relu) are refused at construction.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        rng: np.random.Generator | None = None,
        dtype: npt.DTypeLike = np.float64,
        *,
        nonlinearity: str = "tanh",
        num_layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        if nonlinearity != "tanh":
            raise ValueError(f"RNN: nonlinearity={nonlinearity!r} is not supported (only tanh)")
        _check_options("RNN", num_layers, bidirectional, batch_first)
        rng = rng if rng is not None else np.random.default_rng(0)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.params.update(_recurrent_params(input_size, hidden_size, 1, rng, dtype))

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = _batched(x, self.input_size, "RNN")
        self._hs = _rnn_fwd(self._x, self.params)
        return _like_input(self._hs, x.ndim)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_x, grads = _rnn_bwd(self._x, self._hs, self.params, grad_out.reshape(self._hs.shape))
        self._accumulate(**grads)
        return _like_input(grad_x, grad_out.ndim)


# --- LSTM -----------------------------------------------------------------------------------


def _lstm_step(z: np.ndarray, c_prev: np.ndarray) -> tuple[np.ndarray, ...]:
    """One step from the gates' pre-activations z (N, 4H) in torch's order i, f, g, o and
    the previous cell (N, H). Returns (i, f, g, o, c, h), each (N, H)."""
    zi, zf, zg, zo = np.split(z, 4, axis=1)
    i, f, g, o = _sigmoid_fwd(zi), _sigmoid_fwd(zf), np.tanh(zg), _sigmoid_fwd(zo)
    c = f * c_prev + i * g
    return i, f, g, o, c, o * np.tanh(c)


def _lstm_fwd(x: np.ndarray, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """x (N, T, D) -> (hs (N, T, H), cache (6, N, T, H): i, f, g, o, c, h per step)."""
    n, steps, _ = x.shape
    hidden = p["weight_hh"].shape[1]
    cache = np.empty((6, n, steps, hidden), dtype=x.dtype)
    h = c = np.zeros((n, hidden), dtype=x.dtype)
    from_input = x @ p["weight_ih"].T + p["bias_ih"]
    for t in range(steps):
        cache[:, :, t] = _lstm_step(from_input[:, t] + h @ p["weight_hh"].T + p["bias_hh"], c)
        c, h = cache[4, :, t], cache[5, :, t]
    return cache[5].copy(), cache


def _lstm_gate_grads(
    d_c: np.ndarray, d_h: np.ndarray, gates: np.ndarray, c_prev: np.ndarray, tanh_c: np.ndarray
) -> np.ndarray:
    """dL/dz (N, 4H) for one step, from dL/dc and dL/dh at that step (N, H), the gates
    (4, N, H: i, f, g, o) and the previous cell and tanh of the cell (N, H)."""
    i, f, g, o = gates
    return np.concatenate(
        [
            d_c * g * i * (1.0 - i),
            d_c * c_prev * f * (1.0 - f),
            d_c * i * (1.0 - g * g),
            d_h * tanh_c * o * (1.0 - o),
        ],
        axis=1,
    )


def _lstm_bwd(
    x: np.ndarray,
    cache: np.ndarray,
    p: dict[str, np.ndarray],
    grad_out: np.ndarray,
    gate_grads: Callable[..., np.ndarray],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Backprop through time. grad_out (N, T, H) -> (grad_x (N, T, D), {param: grad}).

    ``gate_grads``: the local derivative of one step, ``_lstm_gate_grads``'s signature.
    """
    n, steps, hidden = grad_out.shape
    cells, hs = cache[4], cache[5]
    c_prevs, h_prevs = _previous_states(cells), _previous_states(hs)
    dz = np.empty((n, steps, 4 * hidden), dtype=grad_out.dtype)
    dh_later = np.zeros((n, hidden), dtype=grad_out.dtype)
    dc_later = np.zeros_like(dh_later)
    for t in reversed(range(steps)):
        d_h = dh_later + grad_out[:, t]
        tanh_c = np.tanh(cells[:, t])
        d_c = dc_later + d_h * cache[3, :, t] * (1.0 - tanh_c * tanh_c)
        dz[:, t] = gate_grads(d_c, d_h, cache[:4, :, t], c_prevs[:, t], tanh_c)
        dh_later, dc_later = dz[:, t] @ p["weight_hh"], d_c * cache[1, :, t]
    grads = {
        "weight_ih": np.einsum("ntg,ntd->gd", dz, x),
        "weight_hh": np.einsum("ntg,ntk->gk", dz, h_prevs),
        "bias_ih": dz.sum(axis=(0, 1)),
        "bias_hh": dz.sum(axis=(0, 1)),
    }
    return dz @ p["weight_ih"], grads


class LSTM(Layer):
    """LSTM, one layer, batch first, zero initial state and cell (torch.nn.LSTM's maths).

    Shapes: x (N, T, D) -> y (N, T, H), the hidden state at every step; (T, D) -> (T, H).
    Params (torch's names and layouts, gates stacked i, f, g, o): weight_ih (4H, D),
    weight_hh (4H, H), bias_ih (4H,), bias_hh (4H,). Several layers, bidirectional,
    ``proj_size`` and ``batch_first=False`` are refused at construction.
    """

    # The local derivative of one step, a seam of its own so each gate's term reads alone.
    _gate_grads = staticmethod(_lstm_gate_grads)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        rng: np.random.Generator | None = None,
        dtype: npt.DTypeLike = np.float64,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = True,
        proj_size: int = 0,
    ) -> None:
        super().__init__()
        if proj_size != 0:
            raise ValueError(f"LSTM: proj_size={proj_size} is not supported (only 0)")
        _check_options("LSTM", num_layers, bidirectional, batch_first)
        rng = rng if rng is not None else np.random.default_rng(0)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.params.update(_recurrent_params(input_size, hidden_size, 4, rng, dtype))

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = _batched(x, self.input_size, "LSTM")
        hs, self._cache = _lstm_fwd(self._x, self.params)
        return _like_input(hs, x.ndim)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        batched = grad_out.reshape(self._cache.shape[1:])
        grad_x, grads = _lstm_bwd(self._x, self._cache, self.params, batched, self._gate_grads)
        self._accumulate(**grads)
        return _like_input(grad_x, grad_out.ndim)


# --- Residual -------------------------------------------------------------------------------


class _DottedView(MutableMapping):
    """The ``params`` or ``grads`` of the layers of a block, one dict keyed "layer.key".

    Live: reading, assigning and deleting reach the layers' own dicts, so an optimiser or a
    weight copy that rebinds ``view["0.W"]`` changes the block itself.
    """

    def __init__(self, block: Sequential, role: str) -> None:
        self._block, self._role = block, role

    def _dicts(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        for name, layer in self._block.named_layers():
            yield name, getattr(layer, self._role)

    def _owner(self, key: str) -> tuple[dict[str, np.ndarray], str]:
        name, _, inner = key.partition(".")
        for layer_name, d in self._dicts():
            if layer_name == name:
                return d, inner
        raise KeyError(key)

    def __getitem__(self, key: str) -> np.ndarray:
        d, inner = self._owner(key)
        return d[inner]

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        d, inner = self._owner(key)
        d[inner] = value

    def __delitem__(self, key: str) -> None:
        d, inner = self._owner(key)
        del d[inner]

    def __iter__(self) -> Iterator[str]:
        return (f"{name}.{k}" for name, d in self._dicts() for k in d)

    def __len__(self) -> int:
        return sum(len(d) for _, d in self._dicts())


class Residual(Layer):
    """y = block(x) + x; backward adds the skip path's gradient to the block's input gradient.

    ``block``: one layer (named "0", as in torch's ``nn.Sequential``) or an ours
    ``Sequential``. Shapes: x (N, ...) -> y like x (the block must keep the shape).
    ``params``/``grads`` are the block's, keyed "<layer name>.<key>" ("0.W", "fc1.b").
    """

    def __init__(self, block: Layer | Sequential) -> None:
        self.block = block if isinstance(block, Sequential) else Sequential(block)

    # Properties, not dicts: the block's layers own the arrays (Layer.__init__ is not run).
    @property
    def params(self) -> MutableMapping[str, np.ndarray]:  # type: ignore[override]
        return _DottedView(self.block, "params")

    @property
    def grads(self) -> MutableMapping[str, np.ndarray]:  # type: ignore[override]
        return _DottedView(self.block, "grads")

    def named_layers(self) -> Iterator[tuple[str, Layer]]:
        """The block's layers, so a comparison reaches each of them (``block1.fc1``)."""
        yield from self.block.named_layers()

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = self.block.forward(x)
        if y.shape != x.shape:
            raise ValueError(f"Residual block changed the shape {x.shape} to {y.shape}")
        return y + x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return self.block.backward(grad_out) + grad_out

    def __repr__(self) -> str:
        return f"Residual({self.block!r})"
