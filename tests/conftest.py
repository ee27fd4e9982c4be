"""Hypothesis profiles: ``ci`` (the default) draws the same examples on every machine, so
``make test`` fails or passes alike everywhere; ``explore`` (``--hypothesis-profile=explore``,
what ``make parity`` runs) draws fresh random examples, 20 times as many, to find new ones."""

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.register_profile(
    "explore", derandomize=False, max_examples=20 * settings.get_profile("ci").max_examples
)
settings.load_profile("ci")
