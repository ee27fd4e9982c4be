"""Every layer bug of the corpus in one list: ``layer_bugs``'s (dense networks) first, then
those of the convolution, normalisation, embedding and activation, and recurrent and residual
layers (issue 15). The self-test and its tests run ``ALL_BUGS``."""

from __future__ import annotations

from gradparity.corpus import conv_bugs, layer_bugs, misc_bugs, norm_bugs, recurrent_bugs
from gradparity.corpus.layer_bugs import Bug

ALL_BUGS: list[Bug] = [
    *layer_bugs.BUGS,
    *conv_bugs.BUGS,
    *norm_bugs.NORM_BUGS,
    *misc_bugs.BUGS,
    *recurrent_bugs.BUGS,
]
