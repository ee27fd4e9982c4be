"""pytest plugin: the ``parity`` fixture, ``--parity-report DIR``, ``--parity-strict`` and a
"gradparity" summary.

Loaded through the ``pytest11`` entry point. Importing it costs nothing beyond pytest: the
harness (and with it torch) is imported only when a test calls ``parity.check``.

Failing checks are recorded in the test's ``user_properties``, which pytest-xdist ships from
the workers to the controller, so the summary also works under ``pytest -n N``.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gradparity.core import escape
from gradparity.core.address import place
from gradparity.core.errors import InputError

if TYPE_CHECKING:
    from gradparity.report.report import Report

_PROPERTY = "gradparity"
_MAX_DIR_NAME = 150


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradparity")
    group.addoption(
        "--parity-report",
        metavar="DIR",
        default=None,
        help="gradparity: write the full report of each failing parity check to "
        "DIR/<test id>[-<n>]/ (n: the check's number within the test, from the second on)",
    )
    group.addoption(
        "--parity-strict",
        action="store_true",
        default=None,
        help="gradparity: fail parity checks on minor differences too (an epsilon, a clipping "
        "bound); a check's own strict= wins",
    )
    parser.addini(
        "parity_strict", type="bool", default=False, help="gradparity: as --parity-strict"
    )


def strict_default(config: pytest.Config) -> bool:
    """Whether checks are strict unless they say: ``--parity-strict``, else the ini setting."""
    given = config.getoption("parity_strict")
    return bool(config.getini("parity_strict")) if given is None else bool(given)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("parity_report") == "":
        raise pytest.UsageError("--parity-report needs a folder name, e.g. --parity-report reports")
    config.pluginmanager.register(_Summary(), "gradparity-summary")


def report_dir_name(nodeid: str) -> str:
    """A folder name for a test id, unique per id: characters outside [A-Za-z0-9_.-] become
    "_", and then the name ends in a hash of the whole id (``a/b`` and ``a_b`` would otherwise
    share a folder); a very long id is cut before the hash, so names stay within limits."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", nodeid).lstrip(".") or "_"
    if name == nodeid and len(name) <= _MAX_DIR_NAME:
        return name
    digest = hashlib.sha1(nodeid.encode()).hexdigest()[:10]
    return f"{name[: _MAX_DIR_NAME - 11]}-{digest}"


class ParityChecker:
    """What the ``parity`` fixture returns: ``check`` compares and fails the test on
    divergence."""

    def __init__(self, node: pytest.Item, report_root: Path | None, strict: bool = False) -> None:
        self._node = node
        self._report_root = report_root
        self._strict = strict
        self._calls = 0

    def check(
        self, ours: Any, reference: Any, x: Any, target: Any = None, **options: Any
    ) -> Report:
        """``gradparity.testing.assertion.assert_parity(ours, reference, x, target, **options)``.

        Returns the Report when ours matches the reference. Otherwise the test fails with
        the root cause on the first line of its message, the failing places go into the
        "gradparity" summary, and with ``--parity-report DIR`` the full report is saved.
        """
        __tracebackhide__ = True
        from gradparity.testing.assertion import assert_parity  # the harness: torch

        return self._run(assert_parity, (ours, reference, x, target), options, "check")

    def check_function(
        self, grads: Any, params: Any, reference: Any, x: Any, target: Any, **options: Any
    ) -> Report:
        """``gradparity.compare_function(grads, params, reference, x, target, **options)`` as
        a check: the Report when every gradient matches, else the test fails as ``check`` does
        (``reference="autodiff"``: the exact gradient of ``loss_fn``, your own NumPy code run
        on tensors, no torch model; ``reference=None``: central differences of ``loss_fn``)."""
        __tracebackhide__ = True
        from gradparity.testing.assertion import assert_function_parity  # the harness: torch

        args = (grads, params, reference, x, target)
        return self._run(assert_function_parity, args, options, "check_function")

    def _run(self, assertion: Any, args: tuple, options: dict, what: str) -> Report:
        __tracebackhide__ = True
        from gradparity.testing.assertion import ParityError  # the harness: torch

        self._calls += 1
        if self._strict:
            options.setdefault("strict", True)
        caller = sys._getframe(2)
        where = f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"
        if self._report_root is not None and "report_dir" not in options:
            suffix = "" if self._calls == 1 else f"-{self._calls}"
            name = report_dir_name(self._node.nodeid) + suffix
            options["report_dir"] = self._report_root / name
        # pytest.fail is called outside the except blocks: inside, pytest would print the
        # caught error as well ("During handling of the above exception ...").
        try:
            return assertion(*args, **options)
        except ParityError as err:
            self._node.user_properties.append(
                (
                    _PROPERTY,
                    [
                        {"place": place(f.layer, f.quantity), "diagnosis": f.diagnosis}
                        for f in err.report.root_causes
                        or (err.report.minor if err.report.strict else [])
                    ],
                )
            )
            message = f"{err}\n(parity.{what} at {where})"
        except InputError as err:
            message = escape.terminal(f"gradparity: error: {err} (parity.{what} at {where})")
        pytest.fail(message, pytrace=False)


@pytest.fixture
def parity(request: pytest.FixtureRequest) -> ParityChecker:
    """Check a hand-written NumPy network against a torch reference, layer by layer.

    Usage::

        def test_my_network(parity):
            model = my_numpy_mlp()                 # layer protocol: forward/backward/params/grads
            reference = my_torch_mlp()             # torch.nn.Module with the same layers
            x = np.random.default_rng(0).standard_normal((8, 5))
            parity.check(model, reference, x)      # target: random classes by default
            parity.check(model, reference, x, target, dtype="float32")  # any compare() option

        def test_my_backprop(parity):             # backprop written as one function
            net = Network([4, 5, 3])
            parity.check_function(net.backprop, {"b": net.biases, "w": net.weights},
                                  "autodiff", x, y, loss_fn=my_cost)  # no torch twin needed
            # None instead of "autodiff": central differences of my_cost (approximate)

        def test_my_layers(parity):               # no torch twin: each layer against
            parity.check(model, "autodiff", x, y, ours_loss=my_loss)  # its own forward

    ``check`` returns the ``gradparity.Report``; on divergence the test fails with the root
    cause (layer, what is wrong, how to fix it) on the first line. ``--parity-report DIR``
    saves the full report of each failing check under DIR.

    Minor differences (an epsilon inside a log, another variance epsilon, a clipping bound:
    ``report.minor``) pass by default. To fail on them too, pass ``strict=True`` to one
    check (``parity.check(model, reference, x, strict=True)``), or make every check strict
    with ``pytest --parity-strict`` or ``parity_strict = true`` in the ini file.
    """
    root = request.config.getoption("parity_report")
    if root is not None:
        # Relative to where pytest was started, whatever the test does to the cwd.
        root = request.config.invocation_params.dir / root
    return ParityChecker(request.node, root, strict_default(request.config))


class _Summary:
    """Collects failing checks from test reports (on the xdist controller: from the workers')
    and lists them at the end of the run."""

    def __init__(self) -> None:
        self.failed: dict[str, list[list[dict[str, str]]]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Each phase's report carries every property recorded so far, so the latest replaces
        # the earlier: nothing is counted twice, and a check failing inside a fixture (which
        # leaves no call phase) is still listed.
        checks = [  # a list, or a tuple after a trip from an xdist worker
            list(value)
            for key, value in report.user_properties
            if key == _PROPERTY and isinstance(value, (list, tuple))
        ]
        if checks:
            self.failed[report.nodeid] = checks

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.failed:
            return
        terminalreporter.write_sep("=", "gradparity")
        for nodeid, checks in self.failed.items():
            for findings in checks:
                places = ", ".join(f"{f['place']} [{f['diagnosis']}]" for f in findings)
                line = f"{nodeid} -> {places or 'no root cause named'}"
                terminalreporter.write_line(escape.terminal(line))
