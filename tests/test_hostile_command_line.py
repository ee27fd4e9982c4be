"""Hostile input on the command line and in data sets (issue 10): every refusal is exit 2 and
one stderr line naming the option or file to fix; an internal error never exits 1."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from refusal import refused

from gradparity.cli import main as cli
from gradparity.core import tolerance
from gradparity.core.validate import DTYPES
from gradparity.data import load_dataset
from gradparity.sides.run_torch import TORCH_DTYPES

# --- data sets --------------------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _mnist(folder: Path, images: np.ndarray, labels: np.ndarray) -> str:
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx(labels))
    return f"mnist:{folder}"


IMAGES = np.arange(6 * 2 * 2).reshape(6, 2, 2) % 255
BAD_MNIST = [
    ("no images", np.zeros((0, 28, 28)), np.zeros(0), "zero dimension (shape (0, 28, 28))"),
    ("no pixels", np.zeros((6, 0, 28)), np.arange(6) % 2, "zero dimension (shape (6, 0, 28))"),
    ("label gaps", IMAGES, np.array([0, 1, 255, 0, 1, 255]), "labels 0, 1, 255 (2, 3, 4"),
    ("one class", IMAGES, np.zeros(6), "only the label 0"),
]


@pytest.mark.parametrize(("images", "labels", "names"), [c[1:] for c in BAD_MNIST],
                         ids=[c[0] for c in BAD_MNIST])  # fmt: skip
def test_bad_mnist_files_are_refused(tmp_path, capsys, images, labels, names):
    spec = _mnist(tmp_path / "m", images, labels)
    refused(lambda: load_dataset(spec), names)
    assert cli.main(["train", "--dataset", spec, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and names in err


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["check", "--seed", "-1"], "argument --seed: must be a non-negative integer"),
        (["--seed", "x"], "argument --seed"),
        (["train", "--seed", "-3"], "argument --seed"),
        (["selftest", "--seed", "1.5"], "argument --seed"),
        (["check", "--format", "xml"], "argument --format"),
        (["check", "--dtype", "float16"], "argument --dtype"),
        (["train", "--steps", "many"], "argument --steps"),
        (["check", "--no-such-flag"], "--no-such-flag"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_command_line_option_errors_exit_2_with_one_line(capsys, argv, names):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and names in captured.err, captured.err


def test_help_still_works(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["check", "--help"])
    assert info.value.code == 0 and "--seed" in capsys.readouterr().out


def test_an_internal_error_exits_2_with_one_line_naming_its_traceback_file(monkeypatch, capsys):
    def crash(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_check", crash)
    assert cli.main(["check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "RuntimeError: boom" in err
    path = Path(re.search(r"the traceback is in (\S+?);", err).group(1))
    try:
        text = path.read_text()
        assert "Traceback" in text and "second line" in text and "command: gradparity check" in text
    finally:
        path.unlink()


def test_every_dtype_has_one_tolerance_and_one_torch_type():
    """validate.DTYPES is the list; the torch side, the tolerances and --dtype follow it."""
    assert list(TORCH_DTYPES) == list(DTYPES)
    assert all(TORCH_DTYPES[name] is getattr(torch, name) for name in DTYPES)
    assert sorted(tolerance._DEFAULTS) == sorted(DTYPES)
    parser = cli.build_parser()
    for command in ("check", "train"):
        assert [parser.parse_args([command, "--dtype", d]).dtype for d in DTYPES] == list(DTYPES)
