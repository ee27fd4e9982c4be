"""``compare(..., device="cuda")`` without a GPU: CUDA is mocked (``torch.cuda.is_available``
says yes and the device the reference goes to is the CPU), so the CUDA branch runs whole: the
reference copy moved, TF32 switched off inside and restored after, the meta and notes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from textbook_setup import setup as textbook_setup
from torch import nn

import gradparity as gp
from gradparity.core.errors import InputError
from gradparity.ours import Linear, Sequential, Tanh
from gradparity.reference import mirror
from gradparity.sides import device as devices
from gradparity.sides.device import (
    MATMUL_PRECISION,
    NEW_API_LEAVES,
    OLD_API_FLAGS,
    TF32_RTOL,
    restore_tf32,
    tf32_on,
    tf32_settings,
)


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA "available", its device the CPU; the list of devices the reference was moved to."""
    moved: list[str] = []

    def to_cpu_standing_in(name: str) -> torch.device:
        moved.append(name)
        return torch.device("cpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(devices, "torch_device", to_cpu_standing_in)
    return moved


@pytest.fixture
def tf32_everywhere():
    """TF32 on in every setting this torch has (as a user might set it); put back after."""
    before = tf32_settings()
    on = {MATMUL_PRECISION: "high"}
    for path in before:
        if path in NEW_API_LEAVES:
            on[path] = "tf32"
        elif path in OLD_API_FLAGS:
            on[path] = True
    restore_tf32(on)
    yield tf32_settings()
    restore_tf32(before)


def _setup(dtype=np.float64):
    rng = np.random.default_rng(0)
    ours = Sequential(
        ("fc1", Linear(5, 4, rng=rng)), ("act", Tanh()), ("fc2", Linear(4, 3, rng=rng))
    )
    x = rng.standard_normal((6, 5)).astype(dtype)
    return ours, mirror(ours), x, rng.integers(0, 3, 6)


class SettingsSpy(nn.Module):
    """Wraps a reference; records the TF32 settings on at each forward in ``seen``."""

    seen: ClassVar[list[list[str]]] = []

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        SettingsSpy.seen.append(tf32_on(tf32_settings()))
        return self.inner(x)


def test_cuda_runs_the_reference_on_the_device_with_tf32_off_and_restores_it(
    fake_cuda, tf32_everywhere
):
    ours, ref, x, target = _setup(np.float32)
    SettingsSpy.seen.clear()
    names = {"fc1": "inner.fc1", "act": "inner.act", "fc2": "inner.fc2"}
    spy = SettingsSpy(ref)
    report = gp.compare(ours, spy, x, target, dtype="float32", device="cuda", layer_map=names)
    assert report.ok
    assert fake_cuda == ["cuda", "cuda"]  # the reference copy went there, and new tensors
    assert SettingsSpy.seen and all(on == [] for on in SettingsSpy.seen)
    assert tf32_settings() == tf32_everywhere  # restored, every setting as it was
    assert report.meta["device"] == "cuda"
    assert report.meta["tf32"] == "off for the comparison"
    assert any("TF32 was on" in note and "restored" in note for note in report.notes)
    assert report.tolerance.rtol < TF32_RTOL


def test_tf32_settings_come_back_after_an_error(fake_cuda, tf32_everywhere):
    ours, ref, x, _ = _setup(np.float32)
    with pytest.raises(InputError):
        gp.compare(ours, ref, x, np.array([0, 1, 2, 9, 0, 1]), dtype="float32", device="cuda")
    assert tf32_settings() == tf32_everywhere


def test_kept_tf32_widens_float32_budgets_and_says_why(fake_cuda, tf32_everywhere):
    ours, ref, x, target = _setup(np.float32)
    report = gp.compare(ours, ref, x, target, dtype="float32", device="cuda", keep_tf32=True)
    assert report.tolerance.rtol == TF32_RTOL
    assert report.meta["tf32"].startswith("kept: ")
    assert MATMUL_PRECISION in report.meta["tf32"]
    assert any("TF32 kept" in note and "widened" in note for note in report.notes)
    assert tf32_settings() == tf32_everywhere


def test_kept_tf32_leaves_a_given_rtol_and_float64_alone(fake_cuda, tf32_everywhere):
    ours, ref, x, target = _setup(np.float32)
    given = gp.compare(ours, ref, x, target, dtype="float32", device="cuda", keep_tf32=True,
                       rtol=1e-3)  # fmt: skip
    assert given.tolerance.rtol == 1e-3
    ours, ref, x, target = _setup()
    wide = gp.compare(ours, ref, x, target, device="cuda", keep_tf32=True)
    assert wide.tolerance.rtol == gp.tolerance_for("float64").rtol
    assert any("does not touch float64" in note for note in wide.notes)


def test_the_cpu_adds_nothing_to_the_report():
    ours, ref, x, target = _setup()
    report = gp.compare(ours, ref, x, target, device="cpu")
    assert "device" not in report.meta and "tf32" not in report.meta
    assert not any("TF32" in note for note in report.notes)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0", 0, "mps"])
def test_an_unknown_device_is_one_line(device):
    ours, ref, x, target = _setup()
    with pytest.raises(InputError, match='unknown; pass "cpu" or "cuda"') as info:
        gp.compare(ours, ref, x, target, device=device)
    assert "\n" not in str(info.value)


def test_a_torch_device_is_taken_by_its_name(fake_cuda):
    ours, ref, x, target = _setup()
    assert "device" not in gp.compare(ours, ref, x, target, device=torch.device("cpu")).meta
    assert (
        gp.compare(ours, ref, x, target, device=torch.device("cuda", 0)).meta["device"] == "cuda:0"
    )


def test_cuda_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ours, ref, x, target = _setup()
    with pytest.raises(InputError, match="sees no CUDA GPU") as info:
        gp.compare(ours, ref, x, target, device="cuda")
    assert "\n" not in str(info.value)


def test_a_gpu_index_past_the_last_is_one_line(fake_cuda):
    ours, ref, x, target = _setup()
    with pytest.raises(InputError, match="sees 1 CUDA GPU"):
        gp.compare(ours, ref, x, target, device="cuda:3")


def test_autodiff_refuses_a_device(fake_cuda):
    ours, _, x, target = _setup()
    with pytest.raises(InputError, match="device= needs a torch reference"):
        gp.compare(ours, "autodiff", x, target, device="cuda")


def test_keep_tf32_must_be_a_flag():
    ours, ref, x, target = _setup()
    with pytest.raises(InputError, match="keep_tf32 must be True or False"):
        gp.compare(ours, ref, x, target, keep_tf32="yes")


def test_inherited_tf32_is_named():
    settings = {
        "torch.backends.fp32_precision": "none",
        "torch.backends.cudnn.fp32_precision": "tf32",
        "torch.backends.cuda.matmul.fp32_precision": "ieee",
        "torch.backends.cudnn.conv.fp32_precision": "none",
        "torch.backends.cudnn.rnn.fp32_precision": "ieee",
        MATMUL_PRECISION: "highest",
    }
    assert tf32_on(settings) == ["torch.backends.cudnn.conv.fp32_precision='tf32' (inherited)"]


def _cuda_zoo():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_zoo.py"
    spec = importlib.util.spec_from_file_location("cuda_zoo", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_zoo_says_so_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["cuda_zoo.py"])
    assert _cuda_zoo().main() == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err


def test_cuda_zoo_runs_with_the_cpu_standing_in(fake_cuda, monkeypatch, capsys):
    zoo = _cuda_zoo()
    monkeypatch.setattr(zoo, "GPU", "cpu")
    monkeypatch.setattr(zoo, "MODELS", {"assignment": zoo.MODELS["assignment"]})
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "stand-in")
    monkeypatch.setattr(sys, "argv", ["cuda_zoo.py"])
    assert zoo.main() == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        ("assignment", dtype, tf32, "ok")
        for dtype in ("float32", "float64")
        for tf32 in ("off", "on")
    ]
    assert float(rows[2][3]) == 0.0  # float64 on the same CPU: no drift at all


def test_compare_function_runs_its_reference_on_the_device(fake_cuda, tf32_everywhere):
    report = gp.compare_function(**textbook_setup(), device="cuda")
    assert report.ok
    assert fake_cuda == ["cuda", "cuda"]
    assert report.meta["device"] == "cuda"
    assert report.meta["tf32"] == "off for the comparison"
    assert tf32_settings() == tf32_everywhere


def test_compare_function_refuses_a_device_without_a_torch_reference(fake_cuda):
    with pytest.raises(InputError, match="needs a torch reference module") as info:
        gp.compare_function(**textbook_setup(numeric=True), device="cuda")
    assert "\n" not in str(info.value)
