"""``make bench``'s driver (benchmarks/bench.py): what it writes, not how fast anything is.

One ``--quick`` run (tiny sizes, 2 repeats, one thread) into a temporary folder feeds the
checks on results.json, results.md and scaling.png; the README rewriter is checked alone.
No timing threshold is asserted: the figures depend on the machine and its load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
README = BENCHMARKS.parent / "README.md"
sys.path.insert(0, str(BENCHMARKS))

from bench_common import Figure, Section, interleaved_medians  # noqa: E402  (not a package)
from bench_output import (  # noqa: E402
    END_MARKER,
    START_MARKER,
    MarkerError,
    replace_between_markers,
    results_markdown,
)

SECTIONS = {"speed", "overhead", "memory", "scaling", "report"}
QUICK_REPEATS = 2


def run_bench(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCHMARKS / "bench.py"), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """The folder a quick run wrote (with a copy of the README it rewrote, README.md), and
    the real README's bytes from before it."""
    out = tmp_path_factory.mktemp("bench")
    readme_before = README.read_bytes()
    (out / "README.md").write_bytes(readme_before)
    done = run_bench(
        "--quick", "--threads", "1", "--out", str(out), "--readme", str(out / "README.md")
    )
    assert done.returncode == 0, done.stderr
    return out, readme_before


def figures(results: dict) -> list[tuple[str, dict]]:
    return [
        (key, figure)
        for key, section in results["sections"].items()
        for figure in section["figures"]
    ]


def test_quick_run_has_every_section_with_figures(quick_run: tuple[Path, bytes]) -> None:
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    assert set(results["sections"]) == SECTIONS
    assert all(results["sections"][key]["figures"] for key in SECTIONS)
    assert results["repeats"] == QUICK_REPEATS and results["quick"] is True


def test_figures_are_medians_of_the_stated_repeats(quick_run: tuple[Path, bytes]) -> None:
    results = json.loads((quick_run[0] / "results.json").read_text())
    for key, figure in figures(results):
        # the memory section's default-mode compare runs once, as its note says
        once = key == "memory" and figure["name"].endswith("default")
        assert figure["repeats"] == (1 if once else QUICK_REPEATS), figure["name"]


def test_ratios_are_numerator_over_denominator(quick_run: tuple[Path, bytes]) -> None:
    results = json.loads((quick_run[0] / "results.json").read_text())
    for _, figure in figures(results):
        assert figure["numerator"] > 0 and figure["denominator"] > 0, figure["name"]
        assert figure["ratio"] == pytest.approx(figure["numerator"] / figure["denominator"])
        if figure["target"] is None:
            assert figure["met"] is None
        else:
            assert figure["met"] == (figure["ratio"] <= figure["target"])


def test_machine_block_names_the_threads(quick_run: tuple[Path, bytes]) -> None:
    out, _ = quick_run
    machine = json.loads((out / "results.json").read_text())["machine"]
    assert machine["threads"]["torch.set_num_threads"] == 1
    assert machine["threads"]["OMP_NUM_THREADS"] == "1"
    assert {"cpu", "cores", "ram_bytes", "os", "python", "numpy", "torch"} <= set(machine)
    markdown = (out / "results.md").read_text()
    assert "torch.set_num_threads=1" in markdown and "OMP_NUM_THREADS=1" in markdown
    assert markdown.index("CPU:") < markdown.index("### 1.")


def test_markdown_has_a_table_per_section_and_the_plot_exists(
    quick_run: tuple[Path, bytes],
) -> None:
    out, _ = quick_run
    markdown = (out / "results.md").read_text()
    for number in range(1, len(SECTIONS) + 1):
        assert f"### {number}. " in markdown
    assert markdown.count("| figure |") == len(SECTIONS)
    assert (out / "scaling.png").read_bytes().startswith(b"\x89PNG")


def test_a_run_with_out_leaves_the_readme_alone(quick_run: tuple[Path, bytes]) -> None:
    assert README.read_bytes() == quick_run[1]


def test_readme_option_rewrites_only_between_the_markers(quick_run: tuple[Path, bytes]) -> None:
    out, original = quick_run
    rewritten = (out / "README.md").read_bytes().decode()
    before, after = original.decode(), (out / "results.md").read_text()
    start, end = before.index(START_MARKER), before.index(END_MARKER)
    assert rewritten.startswith(before[: start + len(START_MARKER)])
    assert rewritten.endswith(before[end:])
    assert after.strip() in rewritten and "Not measured yet" not in rewritten


def test_the_readme_has_the_markers_in_order() -> None:
    text = README.read_text()
    assert text.index(START_MARKER) < text.index(END_MARKER) < text.index("\n## Layout")


def test_rewriter_keeps_the_text_outside_the_markers_byte_for_byte() -> None:
    head = "# Title\r\n\r\ntext before, CRLF kept \u00e9\n"
    tail = f"{END_MARKER}\n\n## Layout\n  trailing spaces  \n"
    readme = f"{head}{START_MARKER}\nold tables\n{tail}"
    rewritten = replace_between_markers(readme, "| new | table |\n")
    assert rewritten == f"{head}{START_MARKER}\n| new | table |\n{tail}"
    assert rewritten.startswith(head + START_MARKER) and rewritten.endswith(tail)


@pytest.mark.parametrize(
    "readme",
    ["no markers at all\n", f"{START_MARKER}\nonly the start\n", f"{END_MARKER}\n{START_MARKER}\n"],
)
def test_rewriter_refuses_without_both_markers(readme: str) -> None:
    with pytest.raises(MarkerError, match="markers"):
        replace_between_markers(readme, "tables")


def test_driver_refuses_a_readme_without_markers_in_one_line(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no Performance section\n")
    done = run_bench("--quick", "--out", str(tmp_path), "--readme", str(readme))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and START_MARKER in done.stderr
    assert readme.read_text() == "# no Performance section\n"
    assert not (tmp_path / "results.json").exists()


def test_interleaved_medians_time_each_call_repeats_times_after_warmup() -> None:
    calls: list[str] = []
    medians = interleaved_medians(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=5, warmups=2
    )
    assert calls == ["a", "b"] * 7  # taking turns: two warm-up rounds, then five timed
    assert set(medians) == {"a", "b"} and all(value >= 0 for value in medians.values())


def test_a_section_keeps_its_number_when_run_alone() -> None:
    figure = Figure("report.save", "save s", 0.5, "budget s", 1.0, 1.0, repeats=5)
    meta = {"date": "today", "command": "make bench", "wall_s": 1.0, "repeats": 5, "quick": False}
    machine = {
        "cpu": "cpu",
        "cores": 2,
        "ram_bytes": 2**30,
        "os": "os",
        "python": "3",
        "numpy": "2",
        "torch": "2",
        "threads": {"OMP_NUM_THREADS": "2"},
    }
    markdown = results_markdown(machine, [Section("report", "report writing", [figure])], meta)
    assert "### 5. report writing" in markdown
    assert "| report.save | 500 ms | 1 s | 0.50 | <= 1 | yes | 5 |" in markdown
