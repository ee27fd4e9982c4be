"""The reference side of ``compare_function``: a copy of the torch model holding ours'
numbers, its inputs, and the run that the comparison reads (loss, parameter gradients, taps).

Which reference parameter holds which of ours (and in which layout) may only show once ours
has run: the side pairs them then, trying layouts until the forward taps (or the loss) agree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from gradparity.comparison.function_taps import aligned_tap
from gradparity.core.errors import InputError
from gradparity.core.metrics import tensor_diff
from gradparity.core.tolerance import Tolerance
from gradparity.pairing.function_align import depth_of, resolve_tap_map
from gradparity.pairing.params import ParamPair, sync_parameters
from gradparity.pairing.square import pair_function_params
from gradparity.pairing.structure import rebuild
from gradparity.sides.float64_twin import as_float64
from gradparity.sides.function_inputs import (
    as_array,
    checked_reference_target,
    default_reference_loss,
    is_columns,
)
from gradparity.sides.function_run import ReferenceRun, UserRun, call_loss_fn, run_reference
from gradparity.sides.preflight import check_filled
from gradparity.sides.run_torch import TORCH_DTYPES
from gradparity.sides.running_stats import kept_buffers
from gradparity.sides.setup import reference_copy
from gradparity.sides.taps import follow_map


class FunctionReference:
    """Everything fixed before the comparison (the reference copy, its inputs, taps and ours'
    loss value), and the side that pairs parameters and runs the reference (``__call__``)."""

    def __init__(
        self,
        *,
        fn: str,
        params: Any,
        flat: dict[str, np.ndarray],
        reference: nn.Module,
        x: np.ndarray,
        target: np.ndarray,
        reference_x: Any,
        reference_target: Any,
        reference_loss: Callable | None,
        param_map: dict[str, str] | None,
        tap_map: dict[str, str] | None,
        dtype: str,
        loss_fn: Callable | None,
        tol: Tolerance,
        device: str = "cpu",
    ) -> None:
        """Checks run here, before any call of ours' code (a dry run of the reference on its
        x among them)."""
        self.fn, self.params, self.flat, self.dtype, self.tol = fn, params, flat, dtype, tol
        self.x, self.target, self.loss_fn = x, target, loss_fn
        self.tdtype = TORCH_DTYPES[dtype]
        # Each module keeps the mode the user left it in (a new module trains: batch norm
        # uses the batch's statistics, as hand-written training code does).
        self.model, self.empty = reference_copy(reference, dtype, device=device)
        self.rx = x if reference_x is None else as_array("reference_x", reference_x, dtype)
        self.rt = (
            target if reference_target is None
            else as_array("reference_target", reference_target, dtype)
        )  # fmt: skip
        self.columns = is_columns(x, self.rx)
        self.default_loss = reference_loss is None
        self.reference_loss = reference_loss or default_reference_loss
        if not callable(self.reference_loss):
            raise InputError("reference_loss must be callable(output, target) -> scalar tensor")
        self.rt = checked_reference_target(
            self.model, self.rx, self.rt, dtype, self.reference_loss,
            given=(reference_x, reference_target), default_loss=self.default_loss,
        )  # fmt: skip
        self.tap_specs = resolve_tap_map(tap_map, self.model)
        self.param_map = param_map
        self.ours_loss = None if loss_fn is None else self._ours_loss()

    def _ours_loss(self) -> float:
        assert self.loss_fn is not None  # only called with a loss_fn
        copies = {n: a.copy() for n, a in self.flat.items()}
        value, precision = call_loss_fn(
            self.loss_fn, rebuild(self.params, copies), self.x.copy(), self.target.copy()
        )
        if self.dtype == "float64" and precision != "float64":
            raise InputError(
                f"loss_fn returned a {precision} value but the comparison runs in float64; "
                "compute and return the loss in float64, or pass dtype='float32'"
            )
        return value

    def sync(self, pairs: list[ParamPair]) -> None:
        """Copy ours' parameters into the reference copy, in each pair's layout."""
        sync_parameters(self.flat, self.model, pairs)

    def run(self, x: np.ndarray, specs: dict | None = None) -> ReferenceRun:
        """The reference on x (its layout), recording the taps of ``specs`` (default all).
        Its buffers are put back afterwards, so every run starts from the state given."""
        specs = self.tap_specs if specs is None else specs
        with kept_buffers(self.model):
            return run_reference(self.model, x, self.rt, self.reference_loss, specs, self.tdtype)

    def float64_run(self) -> ReferenceRun:
        """The reference run once more on a float64 copy of itself (parameters as synced),
        on float64 copies of its x and target: what its own float32 rounding is measured
        against. Every tap is recorded, as in ``run``."""
        model = copy.deepcopy(self.model).double()
        with kept_buffers(model):
            return run_reference(
                model, as_float64(self.rx), as_float64(self.rt), self.reference_loss,
                self.tap_specs, torch.float64,
            )  # fmt: skip

    def agree(self, pairs: list[ParamPair], run: UserRun) -> bool | None:
        """Do the forward taps (or, without any, the loss) agree under ``pairs``? The taps
        come first: a loss_fn may hold a term the reference's loss lacks (a penalty)."""
        forward = {t: s for t, s in self.tap_specs.items() if s[0] == "output" and t in run.taps}
        if self.ours_loss is None and not forward:
            return None
        self.sync(pairs)
        ref = self.run(self.rx, forward)
        if not forward:
            assert self.ours_loss is not None  # checked above: no forward tap means a loss_fn
            return bool(np.isclose(self.ours_loss, ref.loss, rtol=1e-6, atol=1e-12))
        aligned = {t: aligned_tap(run.taps[t], ref.taps[t], self.columns) for t in forward}
        return all(
            a is not None and tensor_diff(run.taps[t], a, self.tol).ok for t, a in aligned.items()
        )

    def __call__(self, captures: dict[str, Any]) -> None:
        """The side: reads ours' ``run`` and ``warm_run``; captures itself (``side``), the
        ``pairs``, their ``depth`` and the reference's ``reference`` run; leaves notes on
        taps and on modules run twice."""
        run, warm_run = captures["run"], captures["warm_run"]
        for record in (run, warm_run):
            record.taps = follow_map(record.taps, list(self.tap_specs))
            record.tap_sites = follow_map(record.tap_sites, list(self.tap_specs))
        run.bad_taps = follow_map(run.bad_taps, list(self.tap_specs))
        notes = captures.setdefault("notes", [])
        missing = [t for t in self.tap_specs if t not in run.taps and t not in run.bad_taps]
        if missing and all(t in warm_run.taps for t in missing):
            notes.append(
                f"taps {missing} were recorded on the first (warm-up) call of {self.fn} but not "
                "on the compared one: it returned without running that code (results cached "
                "from an earlier call?)"
            )
        elif missing and run.error is None:
            raise InputError(
                f"tap_map names taps {missing} that grads never recorded; it recorded "
                f"{list(run.taps) or 'none (call gp.tap(name, array) inside it)'}"
            )
        pairs = pair_function_params(
            self.flat, self.model, self.param_map, self.columns, lambda p: self.agree(p, run),
            notes,
        )  # fmt: skip
        self.sync(pairs)
        check_filled(self.empty, {p.torch_name for p in pairs})
        ref = self.run(self.rx)
        notes += [
            f"module {m!r} ran {ref.calls[m]} times in the reference's forward; tap {t} is "
            f"compared with its first call (name another as '{m}@k', k from 0)"
            for t, (_, m, c) in self.tap_specs.items()
            if c is None and ref.calls.get(m, 0) > 1
        ]
        captures["side"], captures["pairs"], captures["reference"] = self, pairs, ref
        captures["depth"] = depth_of(self.model, pairs)
