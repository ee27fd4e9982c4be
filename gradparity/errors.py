"""The one exception type users see for bad input: its message is one line naming what to fix."""


class InputError(ValueError):
    """Bad input to gradparity (models, arrays, options). ``str(err)`` is a single line."""
