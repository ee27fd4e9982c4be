"""A report folder is written whole or not at all: after a kill, after concurrent saves and
while being read, the folder holds exactly one run's files; leftovers are cleaned; a folder
holding anything else is refused before anything is written."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import stat
import time
from pathlib import Path

import pytest

from gradparity.core.errors import InputError
from gradparity.corpus import layer_bugs as bugs
from gradparity.corpus.selftest import compare_setup
from gradparity.report import folder
from gradparity.report.folder import write_folder

_FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def two_runs() -> tuple[dict, dict]:
    """The files of two different reports: a passing one and a diverging one."""
    ok = compare_setup(*bugs.base_network(0))
    ok.meta["model"] = "run-ok"
    bad = compare_setup(*bugs.softmax_network(0, softmax=bugs.SoftmaxDiagonalOnly))
    bad.meta["model"] = "run-bad"
    return ok.files(), bad.files()


def _contents(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _as_bytes(files: dict) -> dict[str, bytes]:
    return {k: v if isinstance(v, bytes) else v.encode("utf-8") for k, v in files.items()}


def _which_run(root: Path, runs: tuple[dict, dict]) -> int:
    """0 or 1: the run whose files ``root`` holds, exactly; fails on any mixture."""
    found = _contents(root)
    matches = [i for i, run in enumerate(runs) if found == _as_bytes(run)]
    assert matches, f"{root} holds a mixture: {sorted(found)}"
    return matches[0]


def _leftovers(target: Path) -> list[Path]:
    return list(target.parent.glob(f".{target.name}.gradparity-*"))


def _save_forever(target: Path, runs: tuple[dict, dict]) -> None:
    i = 0
    while True:
        write_folder(target, runs[i % 2])
        i += 1


def test_save_writes_exactly_the_report_files(tmp_path, two_runs):
    target = tmp_path / "out"
    write_folder(target, two_runs[0])
    assert _which_run(target, two_runs) == 0
    write_folder(target, two_runs[1])
    assert _which_run(target, two_runs) == 1
    assert _leftovers(target) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_files_are_readable_under_the_umask(tmp_path, two_runs):
    old = os.umask(0o022)
    try:
        target = write_folder(tmp_path / "out", two_runs[0])
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "report.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((target / "plots").stat().st_mode) == 0o755


def test_a_kill_during_saves_leaves_one_whole_report(tmp_path, two_runs):
    target = tmp_path / "out"
    write_folder(target, two_runs[0])
    rng = random.Random(0)
    for _ in range(12):
        writer = _FORK.Process(target=_save_forever, args=(target, two_runs))
        writer.start()
        time.sleep(rng.uniform(0.005, 0.15))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        _which_run(target, two_runs)  # never a mixture, never missing
    write_folder(target, two_runs[1])  # the next save removes what the kills left
    assert _which_run(target, two_runs) == 1
    assert _leftovers(target) == []


def test_concurrent_saves_end_with_one_whole_report(tmp_path, two_runs):
    target = tmp_path / "out"
    writers = [_FORK.Process(target=_save_n, args=(target, two_runs[i], 15)) for i in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
        assert w.exitcode == 0
    _which_run(target, two_runs)
    assert _leftovers(target) == []


def _save_n(target: Path, files: dict, n: int) -> None:
    for _ in range(n):
        write_folder(target, files)


def test_a_reader_holding_the_folder_never_sees_two_runs(tmp_path, two_runs):
    """A reader that opens the folder once and reads its files through that handle gets one
    run's files (or a vanished file once the old folder is removed), never a mixture."""
    target = tmp_path / "out"
    write_folder(target, two_runs[0])
    writer = _FORK.Process(target=_save_forever, args=(target, two_runs))
    writer.start()
    seen = set()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            fd = os.open(target, os.O_RDONLY)
            try:
                files = {}
                for name in ("report.json", "report.md", "report.html", "table.csv"):
                    opener = lambda path, flags, fd=fd: os.open(path, flags, dir_fd=fd)  # noqa: E731
                    with open(name, "rb", opener=opener) as fh:
                        files[name] = fh.read()
            except FileNotFoundError:
                continue  # the folder was swapped out and removed while being read
            finally:
                os.close(fd)
            runs = [
                i
                for i, run in enumerate(two_runs)
                if all(files[n] == _as_bytes(run)[n] for n in files)
            ]
            assert len(runs) == 1, "a reader saw files from two runs"
            seen.add(runs[0])
    finally:
        writer.kill()
        writer.join()
    assert seen  # the reader did read whole reports


def test_leftovers_of_an_earlier_writer_and_desktop_files_are_replaced(tmp_path, two_runs):
    target = tmp_path / "out"
    write_folder(target, two_runs[0])
    (target / ".report.json.k2j3_x.tmp").write_text("{")
    (target / "plots" / ".error_chart.png.abc123.tmp").write_bytes(b"")
    (target / ".DS_Store").write_bytes(b"")
    write_folder(target, two_runs[1])
    assert _which_run(target, two_runs) == 1


def test_leftovers_are_found_for_names_with_glob_characters(tmp_path, two_runs):
    target = tmp_path / "a[1]*"
    (tmp_path / ".a[1]*.gradparity-tmp-dead").mkdir()
    (tmp_path / ".a1.gradparity-tmp-other").mkdir()  # another folder's: not touched
    write_folder(target, two_runs[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a1.gradparity-tmp-other", "a[1]*"]


def test_check_target_refuses_before_anything_is_written(tmp_path):
    from gradparity.report.folder import check_target

    (tmp_path / "mine.txt").write_text("mine")
    with pytest.raises(InputError, match=r"holds files that are not a report's \(mine.txt\)"):
        check_target(tmp_path)
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_target(tmp_path / "mine.txt" / "out")
    assert check_target(tmp_path / "new") == tmp_path / "new" and not (tmp_path / "new").exists()


def test_leftovers_of_a_killed_save_are_removed(tmp_path, two_runs):
    target = tmp_path / "out"
    stale = tmp_path / ".out.gradparity-tmp-dead"
    (stale / "plots").mkdir(parents=True)
    (stale / "report.json").write_text("{}")
    write_folder(target, two_runs[0])
    assert not stale.exists() and _which_run(target, two_runs) == 0


def test_a_swap_stopped_between_its_renames_is_completed(tmp_path, two_runs):
    """Without renameat2 the swap takes two renames; a kill between them leaves the previous
    report beside the target, and the next save first puts it back."""
    target = tmp_path / "out"
    write_folder(target, two_runs[0])
    target.rename(tmp_path / ".out.gradparity-old-x")
    folder._remove_leftovers(tmp_path, "out")
    assert _which_run(target, two_runs) == 0 and _leftovers(target) == []


def test_the_fallback_swap_replaces_the_folder(tmp_path, two_runs, monkeypatch):
    monkeypatch.setattr(folder, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    write_folder(target, two_runs[0])
    write_folder(target, two_runs[1])
    assert _which_run(target, two_runs) == 1 and _leftovers(target) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda d: (d / "notes.txt").write_text("mine"),
        lambda d: (d / "report.json").mkdir(),
        lambda d: (d / "plots" / "sub").mkdir(parents=True),
        lambda d: (d / "table.csv").symlink_to(d.parent / "elsewhere.csv"),
        lambda d: (d / "child").mkdir(),
        lambda d: (d / ".my-notes.tmp").write_text("mine"),
        lambda d: ((d / "plots").mkdir(), (d / "plots" / "thesis.docx").write_text("mine")),
        lambda d: (d / "report.md").write_text("MY NOTES - do not delete"),
        lambda d: (d / "report.json").write_text('{"mine": true}'),
        lambda d: ((d / "part").mkdir(), (d / "part" / "report.json").write_text("{}")),
    ],
    ids=[
        "foreign file",
        "report.json is a folder",
        "folder in plots",
        "symlink",
        "empty dir",
        "hidden tmp file",
        "non-png in plots",
        "a user's report.md",
        "a report.json gradparity did not write",
        "a subfolder with a user's report.json",
    ],
)
def test_a_folder_with_anything_else_is_refused_untouched(tmp_path, two_runs, make):
    target = tmp_path / "out"
    target.mkdir()
    make(target)
    before = sorted(str(p) for p in target.rglob("*"))
    with pytest.raises(InputError, match="holds files that are not a report's"):
        write_folder(target, two_runs[0])
    assert sorted(str(p) for p in target.rglob("*")) == before
    assert _leftovers(target) == []


def test_a_file_in_place_of_the_folder_is_refused(tmp_path, two_runs):
    blocker = tmp_path / "out"
    blocker.write_text("mine")
    with pytest.raises(InputError, match="is a file, not a folder"):
        write_folder(blocker, two_runs[0])
    assert blocker.read_text() == "mine"


def test_a_symlinked_folder_is_written_where_it_points(tmp_path, two_runs):
    real = tmp_path / "real"
    write_folder(real, two_runs[0])
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    write_folder(link, two_runs[1])
    assert link.is_symlink() and _which_run(real, two_runs) == 1


def test_paths_outside_the_folder_are_refused(tmp_path):
    with pytest.raises(ValueError, match="outside the report folder"):
        write_folder(tmp_path / "out", {"../escaped.txt": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_merged_report_saves_its_parts_whole(tmp_path):
    from gradparity.report.merge import merge_reports

    first = compare_setup(*bugs.base_network(0))
    second = compare_setup(*bugs.base_network(1))
    first.meta["model"], second.meta["model"] = "../../up", "same/name"
    merged = merge_reports([first, second])
    target = merged.save(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    parts = sorted(p.name for p in target.iterdir() if p.is_dir() and p.name != "plots")
    assert parts == ["same_name", "up"]
    for part in parts:
        assert (target / part / "report.html").is_file()
    merged.save(target)  # a folder with report parts is a report folder: replaced whole


def test_the_current_folder_and_its_parents_are_refused(tmp_path, two_runs, monkeypatch):
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    for target in (".", here, tmp_path):
        with pytest.raises(InputError, match="is the current folder or holds it"):
            write_folder(target, two_runs[0])
    assert list(here.iterdir()) == []
    assert write_folder("reports", two_runs[0]) == here / "reports"


def test_a_folder_that_cannot_take_a_report_is_refused_before_the_run(
    tmp_path, capsys, monkeypatch
):
    from gradparity.cli.main import main
    from gradparity.reference import mirror
    from gradparity.testing import assertion

    (tmp_path / "mine.txt").write_text("mine")
    ran = []
    monkeypatch.setattr(assertion, "compare", lambda *a, **k: ran.append(a))
    model, _, x, target = bugs.base_network(0)
    with pytest.raises(InputError, match="holds files that are not a report's"):
        assertion.assert_parity(model, mirror(model), x, target, report_dir=tmp_path)
    assert ran == []  # refused before the comparison ran
    assert main(["train", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "holds files that are not a report's (mine.txt)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_a_failed_save_does_not_hide_the_divergence(tmp_path, monkeypatch):
    from gradparity.report.report import Report
    from gradparity.testing.assertion import ParityError, assert_parity

    def unwritable(self, directory):
        raise InputError(f"cannot write the report into {directory}: Read-only file system")

    monkeypatch.setattr(Report, "save", unwritable)
    model, loss, x, target = bugs.softmax_network(0, softmax=bugs.SoftmaxDiagonalOnly)
    from gradparity.reference import mirror

    with pytest.raises(ParityError) as err:
        assert_parity(model, mirror(model), x, target, ours_loss=loss, report_dir=tmp_path / "r")
    first, *rest = str(err.value).splitlines()
    assert "softmax grad_input" in first
    assert rest[-1].startswith("report not saved: cannot write the report into")


@pytest.mark.parametrize("target", [None, 3, b"out", "", "x" * 300, "a\x00b"])
def test_paths_that_cannot_be_a_folder_are_refused_in_one_line(tmp_path, two_runs, target):
    with pytest.raises(InputError) as err:
        write_folder(target, two_runs[0])
    assert "report folder" in str(err.value) and "\n" not in str(err.value)
