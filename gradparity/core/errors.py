"""The one exception type users see for bad input: its message is one line naming what to fix.

``first_line`` and ``describe_error`` turn someone else's exception (torch's, the user's code's)
into the part of such a line that quotes it.
"""


class InputError(ValueError):
    """Bad input to gradparity (models, arrays, options). ``str(err)`` is a single line."""


def first_line(message: BaseException | str) -> str:
    """The first non-empty line of an exception's message (or of a text); "" when it has none.
    Torch and NumPy errors often add hints or tracebacks on later lines."""
    return next((line.strip() for line in str(message).splitlines() if line.strip()), "")


def describe_error(exc: BaseException) -> str:
    """``"TypeName: first line"`` of ``exc`` (only the type's name when its message is empty)."""
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
