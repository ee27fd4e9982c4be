"""gradparity.reference: PyTorch mirrors of ours models and weight transfer (no harness imports)."""

from gradparity.reference.layout import candidate_conversions, to_ours_layout, to_torch_layout
from gradparity.reference.mirror import (
    copy_from_module,
    copy_into_module,
    copy_weights,
    mirror,
    mirror_layer,
    mirror_loss,
)

__all__ = [
    "candidate_conversions",
    "copy_from_module",
    "copy_into_module",
    "copy_weights",
    "mirror",
    "mirror_layer",
    "mirror_loss",
    "to_ours_layout",
    "to_torch_layout",
]
