"""Shared fixtures, and the hypothesis profiles: ``ci`` (the default) draws the same examples
on every machine, so ``make test`` fails or passes alike everywhere; ``explore``
(``--hypothesis-profile=explore``, what ``make parity`` runs) draws fresh random examples, 20
times as many, to find new ones."""

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.register_profile(
    "explore", derandomize=False, max_examples=20 * settings.get_profile("ci").max_examples
)
settings.load_profile("ci")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module of many small models, which run faster so on a shared
    machine; use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
