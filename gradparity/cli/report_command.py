"""``gradparity report DIR``: a saved report rendered again from its report.json.

Nothing runs again: report.md, report.html and table.csv are written anew from report.json,
and the plots are kept (``Report.from_json``), in place or into ``--out``. The exit status is
the saved verdict (0 parity, 1 divergence), or 2 for a folder that holds no readable report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradparity.cli.errors import EXIT_DIVERGED, EXIT_OK, say
from gradparity.core.errors import InputError
from gradparity.report.terminal import render, use_colour


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``report`` command's options, added to the command line's subcommands."""
    report = commands.add_parser(
        "report", help="render a saved report again from its report.json (no re-run)"
    )
    report.add_argument("dir", metavar="DIR", help="a report folder (or its report.json)")
    report.add_argument("--out", metavar="OUT", help="write there instead of into DIR")
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Read DIR's report.json, write the report folder again, print the verdict."""
    from gradparity.report.report import Report

    if not args.dir:
        raise InputError("DIR needs a folder name")
    if args.out is not None and not args.out:
        raise InputError("--out needs a folder name")
    report = Report.from_json(args.dir)
    source = Path(args.dir)
    folder = source if source.is_dir() else source.parent
    out = Path(args.out) if args.out else folder
    report.save(out)
    colour = use_colour(sys.stdout)
    for part in report.parts or [report]:
        say(render(part, colour))
    say(f"report: {out / 'report.md'}")
    return EXIT_OK if report.ok else EXIT_DIVERGED
