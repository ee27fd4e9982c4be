"""The shape of a refusal, shared by the hostile-input tests: one InputError line naming what
to fix."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import gradparity as gp


def refused(call: Callable[[], object], *names: str) -> str:
    """The message of the InputError ``call()`` raises: one line, naming each of ``names``."""
    with pytest.raises(gp.InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.strip(), message
    for name in names:
        assert name in message, message
    return message
