"""Datasets for training runs: synthetic blobs, scikit-learn digits and MNIST (IDX files).

Everything is deterministic for a given seed and nothing is downloaded: ``digits`` ships
inside scikit-learn and MNIST is read from a folder the user already has. Features are
float64 of shape ``(N, features)``; labels are int64 class indices of shape ``(N,)``.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradparity.core.errors import InputError, first_line
from gradparity.core.validate import check_count, check_seed

VALID_SPECS = "synth, digits, mnist:DIR"

# IDX type code -> big-endian dtype on disk.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# (prefix, kind) of the four MNIST files; each may be dashed or dotted, plain or gzipped.
_MNIST_FILES = {
    "train-images": "idx3",
    "train-labels": "idx1",
    "t10k-images": "idx3",
    "t10k-labels": "idx1",
}


@dataclass(frozen=True)
class Dataset:
    """A train/validation split: ``x_*`` float64 ``(N, features)``, ``y_*`` int64 ``(N,)``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        """Number of input features (columns of ``x_train``)."""
        return int(self.x_train.shape[1])


def synth(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two noisy Gaussian blobs around (1, -1) (class 0) and (-1, 1) (class 1).

    Returns ``x`` float64 ``(n, 2)`` and ``y`` int64 ``(n,)`` with ``n // 2`` zeros and the
    rest ones, in shuffled order. The blobs overlap slightly (a few percent of points lie
    on the wrong side of the best line), so the data is learnable but not trivially so.
    """
    n = check_count(n, "n", minimum=2)  # one example of each class at least
    rng = np.random.default_rng(check_seed(seed))
    y = np.zeros(n, dtype=np.int64)
    y[n // 2 :] = 1
    y = y[rng.permutation(n)]
    centers = np.array([[1.0, -1.0], [-1.0, 1.0]])
    x = centers[y] + 0.8 * rng.standard_normal((n, 2))
    return x.astype(np.float64), y


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: ``x`` float64 ``(1797, 64)`` in [0, 1]; ``y`` int64 ``(1797,)``.

    Ships inside scikit-learn, so nothing is downloaded.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise InputError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    x, y = load_digits(return_X_y=True)
    return np.asarray(x, dtype=np.float64) / 16.0, np.asarray(y, dtype=np.int64)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), plain or gzipped, into a native-endian array.

    The shape is the one in the header (e.g. ``(N, rows, cols)`` for images, ``(N,)`` for
    labels); the dtype follows the type code (0x08 -> uint8 ... 0x0E -> float64).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({first_line(exc.strerror or exc)})") from None
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path} is not a valid gzip file ({first_line(exc)})") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise InputError(
            f"{path} is not an IDX file (magic {raw[:4].hex() or 'empty'}; expected 0000, "
            "a type code 08/09/0b/0c/0d/0e and the number of dimensions)"
        )
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path} is truncated: header needs {header} bytes, file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(int(d) for d in shape)  # Python ints: huge headers must not wrap
    have = (len(raw) - header) // dtype.itemsize
    if (len(raw) - header) != expected * dtype.itemsize:
        problem = "is truncated" if have < expected else "has trailing data"
        raise InputError(f"{path} {problem}: header says {expected} values, file has {have}")
    data = np.frombuffer(raw, dtype=dtype, count=expected, offset=header)
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _find_mnist_file(directory: Path, prefix: str) -> Path:
    kind = _MNIST_FILES[prefix]
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            candidate = directory / f"{prefix}{sep}{kind}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    expected = ", ".join(f"{p}-{k}-ubyte" for p, k in _MNIST_FILES.items())
    raise InputError(
        f"{directory} has no {prefix}-{kind}-ubyte[.gz]; an MNIST folder needs "
        f"{expected} (each optionally .gz)"
    )


def _load_mnist_pair(directory: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_mnist_file(directory, f"{part}-images")
    labels_path = _find_mnist_file(directory, f"{part}-labels")
    images, labels = read_idx(images_path), read_idx(labels_path)
    for path, array in ((images_path, images), (labels_path, labels)):
        if 0 in array.shape:
            raise InputError(
                f"{path} has a zero dimension (shape {array.shape}); it holds no data: pass "
                "the MNIST files as released"
            )
    if images.ndim != 3:
        raise InputError(f"{images_path} should hold images (N, rows, cols), has {images.shape}")
    if labels.ndim != 1:
        raise InputError(f"{labels_path} should hold labels (N,), has shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{labels_path} should hold integer labels, has {labels.dtype}")
    if len(images) != len(labels):
        raise InputError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    return x, labels.astype(np.int64)


def load_mnist(
    directory: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load MNIST from ``directory``: ``x_train, y_train, x_test, y_test``.

    Images become float64 ``(N, rows * cols)`` divided by 255; labels int64 ``(N,)``.
    File names follow the original release (``train-images-idx3-ubyte`` etc., or the dotted
    ``train-images.idx3-ubyte``), plain or ``.gz``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: MNIST folder not found")
    x_train, y_train = _load_mnist_pair(directory, "train")
    x_test, y_test = _load_mnist_pair(directory, "t10k")
    return x_train, y_train, x_test, y_test


def _check_fraction(val_fraction: float) -> float:
    try:
        value = float(val_fraction)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise InputError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    return value


def _listing(values: list[int], limit: int = 6) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"{shown}, ... {values[-1]}" if len(values) > limit else shown


def _check_labels(y: np.ndarray, what: str) -> None:
    """Class labels 0..K-1 with every class present and K >= 2: a gap (labels {0, 1, 255})
    would train a model with classes no example has, a single class a model with nothing
    to learn."""
    found = [int(v) for v in np.unique(y)]
    if len(found) < 2:
        raise InputError(
            f"{what} holds only the label {found[0]}; a classifier needs at least 2 classes"
        )
    missing = sorted(set(range(found[-1] + 1)) - set(found))
    if found[0] < 0 or missing:
        gap = f"{_listing(missing)} missing" if missing else "negative labels"
        raise InputError(
            f"{what} holds the labels {_listing(found)} ({gap}); classes must be 0, 1, ..., "
            "K-1 with every one present: relabel them (np.unique(y, return_inverse=True))"
        )


def _check_xy(x: np.ndarray, y: np.ndarray, what: str) -> None:
    if len(x) != len(y):
        raise InputError(f"{what}: x has {len(x)} examples but y has {len(y)}")
    if len(x) == 0:
        raise InputError(f"{what}: the dataset is empty")


def split(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle by ``seed`` and split into ``x_train, y_train, x_val, y_val``.

    The validation part has ``round(N * val_fraction)`` examples, kept between 1 and N - 1.
    Not stratified; the same seed always gives the same split.
    """
    x, y = np.asarray(x), np.asarray(y)
    fraction = _check_fraction(val_fraction)
    check_seed(seed)
    _check_xy(x, y, "split")
    n = len(x)
    if n < 2:
        raise InputError(f"split needs at least 2 examples to make a validation set, got {n}")
    n_val = min(max(round(n * fraction), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def load_dataset(
    spec: str, seed: int = 0, val_fraction: float = 0.2, limit: int | None = None
) -> Dataset:
    """Load ``spec`` ("synth", "digits" or "mnist:DIR") and split it into train/validation.

    ``seed`` drives the synthetic data and the split; ``limit`` keeps at most that many
    training examples (the first ones of the seeded shuffle). MNIST uses its training
    files only; the t10k test set stays out of both parts.
    """
    fraction = _check_fraction(val_fraction)
    check_seed(seed)
    limit = None if limit is None else check_count(limit, "limit")
    spec_text = str(spec).strip()
    if spec_text == "synth":
        x, y = synth(seed=seed)
    elif spec_text == "digits":
        x, y = digits()
    elif spec_text.startswith("mnist:") and spec_text[len("mnist:") :].strip():
        directory = Path(spec_text[len("mnist:") :].strip()).expanduser()
        if not directory.is_dir():
            raise InputError(f"{directory}: MNIST folder not found (dataset spec {spec_text!r})")
        x, y = _load_mnist_pair(directory, "train")
    else:
        raise InputError(f"unknown dataset {spec_text!r}; valid specs: {VALID_SPECS}")
    _check_xy(x, y, f"dataset {spec_text!r}")
    _check_labels(y, f"dataset {spec_text!r}")
    x_train, y_train, x_val, y_val = split(x, y, fraction, seed)
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    name = "mnist" if spec_text.startswith("mnist:") else spec_text
    return Dataset(name, x_train, y_train, x_val, y_val, n_classes=int(y.max()) + 1)


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int = 0,
    epochs: int | None = None,
    steps: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield shuffled mini-batches ``(x[idx], y[idx])`` of shapes ``(B, ...)`` and ``(B,)``.

    Each epoch is a fresh permutation from ``default_rng([seed, epoch])``; the last, smaller
    batch of an epoch is kept. With ``steps`` it stops after that many batches (running as
    many epochs as needed; ``epochs`` is then ignored), otherwise after ``epochs`` epochs
    (default 1). Arguments are checked at the call, before the first batch.
    """
    x, y = np.asarray(x), np.asarray(y)
    batch_size = check_count(batch_size, "batch_size")
    epochs = 1 if epochs is None else check_count(epochs, "epochs")
    steps = None if steps is None else check_count(steps, "steps")
    check_seed(seed)
    _check_xy(x, y, "batches")
    return _batch_stream(x, y, batch_size, seed, epochs, steps)


def _batch_stream(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epochs: int, steps: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    done, epoch = 0, 0
    while steps is not None or epoch < epochs:
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for start in range(0, len(x), batch_size):
            if steps is not None and done >= steps:
                return
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
            done += 1
        epoch += 1
