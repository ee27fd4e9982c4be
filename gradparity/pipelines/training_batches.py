"""What ``compare_training`` is fed, checked before each step: the batch stream, each (x, target)
pair against the reference's output on the first batch, and the validation pair."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from torch import nn

from gradparity.core.errors import InputError
from gradparity.core.validate import class_target, prepare_input, prepare_target, raw_array
from gradparity.sides.preflight import check_target, dry_run
from gradparity.sides.run_torch import TORCH_DTYPES

_PAIRS_HINT = "e.g. zip(xs, targets) or gradparity.data.batches(x, y, batch_size=32)"


def _describe(batch: Any) -> str:
    if isinstance(batch, np.ndarray):
        return f"an array of shape {batch.shape}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)} items"
    return f"a {type(batch).__name__}"


def batch_pairs(batches: Iterable, steps: int | None) -> Iterator[tuple[Any, Any]]:
    """(x, target) of each batch, at most ``steps`` of them; one line for a stream that is not
    iterable (at the call) or a batch that is not a pair (at that batch)."""
    try:
        iterator = iter(batches)
    except TypeError:
        raise InputError(
            f"batches must be an iterable of (x, target) pairs ({_PAIRS_HINT}), got "
            f"{type(batches).__name__}"
        ) from None
    return _pairs(itertools.islice(iterator, steps))


def _pairs(iterator: Iterator) -> Iterator[tuple[Any, Any]]:
    for step, batch in enumerate(iterator, start=1):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise InputError(
                f"batch {step} is {_describe(batch)}, not an (x, target) pair; the batches must "
                f"yield pairs, {_PAIRS_HINT}"
            )
        yield batch[0], batch[1]


class BatchCheck:
    """Checks one batch before its step: x and target as ``compare`` checks them, the width of
    x against the first batch's, the target against the reference's output on the first
    batch (classes beyond its width, float labels, one-hot rows). Refusals name the step."""

    def __init__(
        self,
        model: nn.Module,
        ours_loss: Any,
        reference_loss: Any,
        dtype: str,
        names: dict[str, list[str]] | None = None,
    ) -> None:
        """``names``: reference module name -> ours' layer names aligned with its calls."""
        self.model, self.dtype, self.names = model, dtype, names
        self.ours_loss, self.reference_loss = ours_loss, reference_loss
        self.features: tuple[int, ...] | None = None
        self.output_tail: tuple[int, ...] = ()

    def __call__(self, step: int, x: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
        """(x, target) as the step takes them, or InputError naming ``step``."""
        try:
            x = prepare_input(x, self.dtype)
            target = prepare_target(target, x.shape[0], self.dtype)
            if self.features is None:
                output = dry_run(self.model, x, TORCH_DTYPES[self.dtype], names=self.names)
                assert output is not None  # dry_run needs a tensor by default, so returns one
                self.features, self.output_tail = x.shape[1:], output.shape[1:]
            elif x.shape[1:] != self.features:
                earlier = ", ".join(str(d) for d in self.features)
                raise InputError(
                    f"x has shape {x.shape}, earlier batches had (N, {earlier}); give every "
                    "batch the same features"
                )
            else:  # only the output's shape matters for the target's checks
                output = np.zeros((x.shape[0], *self.output_tail), dtype=self.dtype)
            target = check_target(
                target,
                output,
                self.dtype,
                ours_loss=self.ours_loss,
                reference_loss=self.reference_loss,
            )
        except InputError as exc:
            raise InputError(f"batch {step}: {exc}") from exc
        return x, target

    def validation(self, x: np.ndarray, classes: np.ndarray) -> None:
        """The validation pair against the reference: x's width, classes beyond the output's
        (the messages name "validation x" and "validation classes")."""
        output = dry_run(self.model, x, TORCH_DTYPES[self.dtype], "validation x", names=self.names)
        assert output is not None  # dry_run needs a tensor by default, so returns one
        if output.ndim == 2:
            class_target(classes, output.shape[1], self.dtype, "validation classes")


def check_validation(validation: Any, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The validation pair (x as ``compare`` takes it, integer classes (N,))."""
    if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
        raise InputError(f"validation must be an (x, classes) pair, got {_describe(validation)}")
    try:
        x = prepare_input(validation[0], dtype)
    except InputError as exc:
        raise InputError(f"validation: {exc}") from exc
    y = np.atleast_1d(raw_array("validation classes", validation[1]))
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise InputError(
            f"validation classes must be integers of shape ({x.shape[0]},), one per example, "
            f"got {y.dtype} {y.shape}"
        )
    return x, y
