"""What ``make bench`` writes: the machine block, ``results.json``, ``results.md`` and the
README's Performance section (only the text between its two marker comments changes)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the driver checks the README with this module before torch loads
    from bench_common import Figure, Section

# The sections in the order the driver runs them; a section's number in results.md is its place
# here, also when a run measures only some of them.
SECTIONS = ("speed", "overhead", "memory", "scaling", "report")
START_MARKER = "<!-- bench:start -->"
END_MARKER = "<!-- bench:end -->"


class MarkerError(ValueError):
    """The README lacks the Performance section's marker comments (or has them out of order)."""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def ram_bytes() -> int:
    """Physical memory in bytes (0 where sysconf cannot say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def machine(threads: int, thread_variables: tuple[str, ...]) -> dict:
    """Where the figures were measured, and the thread counts they used (torch's, and the
    environment variables named)."""
    import numpy
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": ram_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "threads": {
            "torch.set_num_threads": torch.get_num_threads(),
            **{name: os.environ.get(name) for name in thread_variables},
        },
        "requested_threads": threads,
    }


def results_dict(machine_info: dict, sections: list[Section], meta: dict) -> dict:
    """The JSON document: machine, run details, and each section's figures by key."""
    return {
        "machine": machine_info,
        **meta,
        "sections": {section.key: section.to_dict() for section in sections},
    }


def machine_markdown(machine_info: dict, meta: dict) -> str:
    """The machine block: CPU, cores, RAM, OS, versions, threads, date and command."""
    threads = machine_info["threads"]
    thread_words = ", ".join(f"{name}={value}" for name, value in threads.items())
    return "\n".join(
        [
            f"Measured on {meta['date']} by `{meta['command']}` ({meta['wall_s']:.0f} s in all,"
            f" {meta['repeats']} repeats after warm-up{', quick sizes' if meta['quick'] else ''}):",
            "",
            f"- CPU: {machine_info['cpu']}, {machine_info['cores']} cores, "
            f"{machine_info['ram_bytes'] / 2**30:.1f} GiB RAM",
            f"- OS: {machine_info['os']}; Python {machine_info['python']}, "
            f"NumPy {machine_info['numpy']}, torch {machine_info['torch']}",
            f"- threads: {thread_words}",
        ]
    )


def format_value(value: float, unit: str) -> str:
    """Bytes in MiB; seconds with 3 significant digits, under a second in ms."""
    if unit == "bytes":
        return f"{value / 2**20:.0f} MiB"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def figure_row(figure: Figure) -> str:
    """One Markdown table row of a figure."""
    target = "-" if figure.target is None else f"<= {figure.target:g}"
    met = {None: "info", True: "yes", False: "**no**"}[figure.met]
    return (
        f"| {figure.name} | {format_value(figure.numerator, figure.unit)} "
        f"| {format_value(figure.denominator, figure.unit)} | {figure.ratio:.2f} | {target} "
        f"| {met} | {figure.repeats} |"
    )


def section_markdown(section: Section) -> str:
    """A section's numbered heading, its table, its further table and its notes."""
    first = section.figures[0] if section.figures else None
    left = first.numerator_label if first else "numerator"
    right = first.denominator_label if first else "denominator"
    lines = [
        f"### {SECTIONS.index(section.key) + 1}. {section.title}",
        "",
        f"| figure | {left} | {right} | ratio | target | met | repeats |",
        "|---|---:|---:|---:|---:|---|---:|",
        *(figure_row(figure) for figure in section.figures),
    ]
    if section.markdown_extra:
        lines += ["", section.markdown_extra]
    if section.notes:
        lines += ["", *(f"- {note}" for note in section.notes)]
    return "\n".join(lines)


def results_markdown(machine_info: dict, sections: list[Section], meta: dict) -> str:
    """results.md: the machine block, then one table per section."""
    parts = [machine_markdown(machine_info, meta)]
    parts += [section_markdown(section) for section in sections]
    return "\n\n".join(parts) + "\n"


def replace_between_markers(readme: str, body: str) -> str:
    """``readme`` with the text between START_MARKER and END_MARKER replaced by ``body``;
    everything else kept byte for byte. MarkerError when the markers are missing."""
    start = readme.find(START_MARKER)
    end = readme.find(END_MARKER)
    if start < 0 or end < start:
        raise MarkerError(
            f"README has no Performance section markers: add a line {START_MARKER} and a line "
            f"{END_MARKER} after it where the tables belong"
        )
    head = readme[: start + len(START_MARKER)]
    return f"{head}\n{body.strip()}\n{readme[end:]}"


def write_all(
    out: Path, machine_info: dict, sections: list[Section], meta: dict, readme: Path | None
) -> None:
    """results.json and results.md into ``out``; the README's section too when given."""
    document = results_dict(machine_info, sections, meta)
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    markdown = results_markdown(machine_info, sections, meta)
    (out / "results.md").write_text(markdown)
    if readme is not None:  # bytes, not text: line endings outside the markers stay as they are
        text = readme.read_bytes().decode("utf-8")
        readme.write_bytes(replace_between_markers(text, markdown).encode("utf-8"))


def check_markers(readme: Path) -> None:
    """MarkerError now, before minutes of measuring, when the README cannot be rewritten."""
    replace_between_markers(readme.read_bytes().decode("utf-8"), "")
