"""How the command line fails: every refusal is one line on stderr with exit status 2.

Exit 1 means "divergence found", so neither a bad option nor a crash may end with it: argparse
errors become one line naming the option, and an unexpected exception becomes one line naming
a file that holds its traceback.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from gradparity import __version__
from gradparity.core.errors import InputError, describe_error

# The exit statuses: the verdict (parity, divergence found), or a refusal.
EXIT_OK, EXIT_DIVERGED, EXIT_USAGE = 0, 1, 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the option (no usage block)."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(EXIT_USAGE, f"gradparity: error: {text}; see {self.prog} --help\n")


def option_type(check: Callable[[Any, str], int], flag: str) -> Callable[[str], int]:
    """An argparse ``type`` for an integer option, judged by one of ``gradparity.core.validate``'s
    checks (``check_seed``, ``check_count``), so the command line refuses a value as the API
    does; argparse puts "argument FLAG:" before the check's message."""

    def parse(text: str) -> int:
        try:
            value: Any = int(text)
        except ValueError:
            value = text  # not a whole number: the check refuses it, quoting the text
        try:
            return check(value, flag)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag} ")) from None

    return parse


def write_traceback(details: str, argv: list[str]) -> str:
    """Write ``details`` (a traceback) with the command line and versions to a new file in the
    system's temporary folder; its path."""
    fd, path = tempfile.mkstemp(prefix="gradparity-crash-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"gradparity {__version__}, Python {platform.python_version()}\n")
        out.write(f"command: gradparity {' '.join(argv)}\n\n")
        out.write(details)
    return path


def internal_failure(what: str, details: str, argv: list[str]) -> int:
    """Report an internal failure in one line naming the file that holds ``details`` (its
    traceback); exit status 2."""
    try:
        where = f"the traceback is in {write_traceback(details, argv)}"
    except OSError as write_error:
        where = f"its traceback could not be written ({write_error.strerror})"
    print(f"gradparity: internal error {what}; {where}; please report it", file=sys.stderr)
    return EXIT_USAGE


def internal_error(exc: BaseException, argv: list[str]) -> int:
    """Report an unexpected exception in one line naming its traceback file; exit status 2."""
    details = "".join(traceback.format_exception(exc))
    return internal_failure(describe_error(exc), details, argv)


def say(text: str = "", end: str = "\n") -> None:
    """Print ``text`` to stdout. A reader that stops early (``| head``) closes the pipe: that
    is not an error, and the exit status must still carry the verdict, so the rest of the
    output goes to the null device (the idiom of Python's signal documentation)."""
    try:
        print(text, end=end, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def user_exit(exc: SystemExit) -> int:
    """Code under check that calls ``sys.exit`` must not end the check with its own status
    (0 would read as parity, 1 as a divergence): one line, exit status 2."""
    print(
        f"gradparity: error: the code under check called sys.exit({exc.code!r}); a model, "
        "factory or module must not exit the process: remove the call (or guard it with "
        "if __name__ == '__main__')",
        file=sys.stderr,
    )
    return EXIT_USAGE
