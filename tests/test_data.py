"""Datasets: IDX/MNIST reading and its errors, digits, synth, split and mini-batches."""

import dataclasses
import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradparity.core.errors import InputError
from gradparity.data import (
    Dataset,
    batches,
    digits,
    load_dataset,
    load_mnist,
    read_idx,
    split,
    synth,
)

CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
IMAGES = np.arange(60, dtype=np.uint8).reshape(3, 4, 5) * 4
LABELS = np.array([7, 0, 3], dtype=np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: magic, dims, then big-endian data."""
    code = CODES[array.dtype.str[1:]]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array: np.ndarray, gz: bool = False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist(directory, gz=False, dotted=False, with_test=True, n_labels=3):
    sep = "." if dotted else "-"
    ext = ".gz" if gz else ""
    directory.mkdir(exist_ok=True)
    parts = ("train", "t10k") if with_test else ("train",)
    for part in parts:
        write_idx(directory / f"{part}-images{sep}idx3-ubyte{ext}", IMAGES, gz)
        write_idx(directory / f"{part}-labels{sep}idx1-ubyte{ext}", LABELS[:n_labels], gz)
    return directory


def raises_one_line(match: str, func, *args, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_images_and_labels(tmp_path, gz):
    name = "img.idx.gz" if gz else "img.idx"
    images = read_idx(write_idx(tmp_path / name, IMAGES, gz))
    labels = read_idx(str(write_idx(tmp_path / ("lab" + name), LABELS, gz)))
    assert images.dtype == np.uint8 and images.shape == (3, 4, 5)
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(labels, LABELS)


def test_gzip_is_detected_by_magic_bytes_without_suffix(tmp_path):
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "plain", IMAGES, gz=True)), IMAGES)


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "f4", "f8"])
def test_read_idx_handles_every_type_code_in_native_byte_order(tmp_path, dtype):
    array = (np.arange(-6, 6).reshape(3, 4) * 3).astype(dtype)
    out = read_idx(write_idx(tmp_path / "a.idx", array))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope-idx3-ubyte"
    assert str(path) in raises_one_line("not found", read_idx, path)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x01\x02\x08\x01" + b"\x00" * 8, b"\x00\x00\x07\x01\x00\x00\x00\x01\x05"],
    ids=["empty", "short", "bad-magic", "bad-type-code"],
)
def test_wrong_magic_or_type_code_is_not_an_idx_file(tmp_path, data):
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    assert str(path) in raises_one_line("is not an IDX file \\(magic", read_idx, path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data_reports_both_counts(tmp_path, gz):
    path = tmp_path / ("t.idx.gz" if gz else "t.idx")
    data = idx_bytes(IMAGES)[:-1]
    path.write_bytes(gzip.compress(data) if gz else data)
    message = raises_one_line("is truncated: header says 60 values, file has 59", read_idx, path)
    assert str(path) in message


def test_truncated_header_and_trailing_data(tmp_path):
    path = tmp_path / "h.idx"
    path.write_bytes(idx_bytes(IMAGES)[:9])
    assert str(path) in raises_one_line("is truncated: header needs 16 bytes", read_idx, path)
    path.write_bytes(idx_bytes(LABELS) + b"\x01")
    assert str(path) in raises_one_line(
        "trailing data: header says 3 values, file has 4", read_idx, path
    )


@pytest.mark.parametrize(
    "data",
    [b"\x1f\x8b garbage not a deflate stream", gzip.compress(idx_bytes(IMAGES))[:-12], b"plain"],
    ids=["garbage", "cut-stream", "not-gzip"],
)
def test_corrupt_gzip_is_an_input_error(tmp_path, data):
    path = tmp_path / "c.idx.gz"
    path.write_bytes(data)
    assert str(path) in raises_one_line("gzip", read_idx, path)


def test_a_directory_is_not_readable_as_idx(tmp_path):
    assert str(tmp_path) in raises_one_line("cannot read", read_idx, tmp_path)


@pytest.mark.parametrize(("gz", "dotted"), [(False, False), (True, False), (False, True)])
def test_load_mnist_flattens_and_scales(tmp_path, gz, dotted):
    x_train, y_train, x_test, y_test = load_mnist(write_mnist(tmp_path / "m", gz, dotted))
    assert x_train.shape == (3, 20) and x_train.dtype == np.float64
    np.testing.assert_allclose(x_train, IMAGES.reshape(3, 20) / 255.0)
    assert y_train.dtype == np.int64 and y_train.tolist() == [7, 0, 3]
    np.testing.assert_array_equal(x_test, x_train)
    np.testing.assert_array_equal(y_test, y_train)


def test_load_mnist_missing_file_lists_what_is_expected(tmp_path):
    directory = write_mnist(tmp_path / "m", with_test=False)
    message = raises_one_line("t10k-images-idx3-ubyte", load_mnist, directory)
    assert str(directory) in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message
    raises_one_line("MNIST folder not found", load_mnist, tmp_path / "absent")


def test_load_mnist_count_mismatch(tmp_path):
    directory = write_mnist(tmp_path / "m", n_labels=2)
    message = raises_one_line("3 images but .* 2 labels", load_mnist, directory)
    assert "train-images-idx3-ubyte" in message


def test_load_mnist_rejects_labels_file_in_place_of_images(tmp_path):
    directory = write_mnist(tmp_path / "m")
    write_idx(directory / "train-images-idx3-ubyte", LABELS)
    raises_one_line("should hold images", load_mnist, directory)


def test_load_dataset_mnist_uses_train_files_only(tmp_path):
    directory = write_mnist(tmp_path / "m", gz=True, with_test=False)
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.array([2, 0, 1], np.uint8), gz=True)
    data = load_dataset(f"mnist:{directory}", val_fraction=0.34)
    assert isinstance(data, Dataset) and data.name == "mnist"
    assert len(data.x_train) == 2 and len(data.x_val) == 1 and data.n_features == 20
    assert sorted([*data.y_train, *data.y_val]) == [0, 1, 2] and data.n_classes == 3


@pytest.mark.parametrize("spec", ["mnist", "mnist:", "foo", "", "Digits"])
def test_bad_spec_lists_the_valid_ones(spec):
    assert "synth, digits, mnist:DIR" in raises_one_line("unknown dataset", load_dataset, spec)


def test_mnist_spec_with_missing_folder(tmp_path):
    assert "absent" in raises_one_line("not found", load_dataset, f"mnist:{tmp_path / 'absent'}")


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), "x"])
def test_val_fraction_outside_zero_one(fraction):
    raises_one_line("val_fraction", load_dataset, "synth", val_fraction=fraction)
    raises_one_line("val_fraction", split, np.zeros((4, 1)), np.zeros(4), fraction, 0)


def test_load_dataset_synth_and_limit():
    data = load_dataset("synth", seed=3, val_fraction=0.25)
    assert (len(data.x_train), len(data.x_val), data.n_features, data.n_classes) == (300, 100, 2, 2)
    limited = load_dataset("synth", seed=3, val_fraction=0.25, limit=50)
    np.testing.assert_array_equal(limited.x_train, data.x_train[:50])
    np.testing.assert_array_equal(limited.x_val, data.x_val)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.name = "x"
    for bad in (0, -1, 2.5, True):
        raises_one_line("limit", load_dataset, "synth", limit=bad)


def test_digits_shape_range_and_dataset():
    x, y = digits()
    assert x.shape == (1797, 64) and x.dtype == np.float64 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0 and set(y.tolist()) == set(range(10))
    data = load_dataset("digits", limit=100)
    assert data.n_features == 64 and data.n_classes == 10 and len(data.x_train) == 100


def test_synth_is_seeded_balanced_and_learnable_but_not_separable():
    x, y = synth(400, seed=0)
    assert x.shape == (400, 2) and x.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_array_equal(x, synth(400, seed=0)[0])
    assert not np.array_equal(x, synth(400, seed=1)[0])
    assert np.bincount(y).tolist() == [200, 200] and np.bincount(synth(7)[1]).tolist() == [3, 4]
    np.testing.assert_allclose(x[y == 0].mean(axis=0), [1, -1], atol=0.2)
    accuracy = np.mean((x[:, 1] > x[:, 0]) == (y == 1))
    assert 0.85 < accuracy < 0.995
    raises_one_line("n must be an integer >= 2, got 1", synth, 1)


def test_split_is_deterministic_disjoint_and_sized():
    x, y = np.arange(50.0).reshape(25, 2), np.arange(25)
    x_tr, y_tr, x_va, y_va = split(x, y, 0.2, seed=4)
    assert (len(x_tr), len(x_va)) == (20, 5)
    assert set(y_tr.tolist()).isdisjoint(y_va.tolist())
    assert sorted([*y_tr, *y_va]) == list(range(25))
    np.testing.assert_array_equal(x_tr[:, 0], 2 * y_tr)
    np.testing.assert_array_equal(split(x, y, 0.2, seed=4)[3], y_va)
    assert not np.array_equal(split(x, y, 0.2, seed=5)[3], y_va)
    assert [len(p) for p in split(x[:2], y[:2], 0.01, 0)] == [1, 1, 1, 1]
    raises_one_line("x has 25 examples but y has 24", split, x, y[:-1], 0.2, 0)
    raises_one_line("at least 2", split, x[:1], y[:1], 0.5, 0)


def test_batches_cover_each_example_once_per_epoch_keeping_the_partial_batch():
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
    out = list(batches(x, y, 4, seed=1, epochs=2))
    assert [len(b) for b, _ in out] == [4, 4, 2, 4, 4, 2]
    for b_x, b_y in out:
        np.testing.assert_array_equal(b_x[:, 0], 2 * b_y)
    first = np.concatenate([b for _, b in out[:3]])
    second = np.concatenate([b for _, b in out[3:]])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(10))
    assert not np.array_equal(first, second)  # reshuffled per epoch
    assert len(list(batches(x, y, 4))) == 3  # default: one epoch


def test_batches_are_deterministic_by_seed_and_stop_after_steps():
    x, y = np.zeros((10, 1)), np.arange(10)
    labels = [b.tolist() for _, b in batches(x, y, 3, seed=2, steps=7)]
    assert len(labels) == 7 and [len(b) for b in labels] == [3, 3, 3, 1, 3, 3, 3]
    assert labels == [b.tolist() for _, b in batches(x, y, 3, seed=2, steps=7)]
    assert labels != [b.tolist() for _, b in batches(x, y, 3, seed=3, steps=7)]
    assert labels[:4] == [b.tolist() for _, b in batches(x, y, 3, seed=2)]
    assert len(list(batches(x, y, 3, seed=2, epochs=5, steps=2))) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"batch_size": 2, "epochs": 0}, "epochs"),
        ({"batch_size": 2, "steps": -1}, "steps"),
        ({"batch_size": 2, "seed": -1}, "seed"),
    ],
)
def test_batches_bad_arguments_fail_at_the_call(kwargs, match):
    raises_one_line(match, batches, np.zeros((4, 1)), np.zeros(4), **kwargs)


def test_batches_length_mismatch_and_empty():
    raises_one_line("x has 4 examples but y has 3", batches, np.zeros((4, 1)), np.zeros(3), 2)
    raises_one_line("empty", batches, np.zeros((0, 1)), np.zeros(0), 2)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 12), st.integers(0, 2**31), st.integers(1, 3))
def test_batches_property_every_epoch_is_a_permutation(n, batch_size, seed, epochs):
    y = np.arange(n)
    out = [b for _, b in batches(np.zeros((n, 1)), y, batch_size, seed=seed, epochs=epochs)]
    per_epoch = -(-n // batch_size)
    assert len(out) == per_epoch * epochs
    for e in range(epochs):
        chunk = out[e * per_epoch : (e + 1) * per_epoch]
        assert all(len(b) == batch_size for b in chunk[:-1]) and 1 <= len(chunk[-1]) <= batch_size
        assert sorted(np.concatenate(chunk).tolist()) == list(range(n))
