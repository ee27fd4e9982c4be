"""A report folder written whole or not at all.

The new folder is built as a hidden sibling (``.NAME.gradparity-tmp-*``) and swapped in with one
atomic ``renameat2(RENAME_EXCHANGE)`` on Linux (elsewhere: two renames), so a reader sees the
previous report or the new one, never files from two runs; a process killed while writing
leaves the previous report intact, and its leftover is removed by the next save. Saves into one
folder are serialised by a lock on the parent folder, so concurrent saves end with one complete
report. Only folders that hold nothing but what a save writes are replaced (report files,
plots, a merged run's report subfolders, leftovers of earlier saves, a desktop's metadata
file): a folder with anything else in it is refused before anything is written, so a save
never deletes a user's files. ``check_target`` runs those checks alone, for callers that
should refuse a folder before a long run rather than after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from gradparity.core.errors import InputError

REPORT_FILES = frozenset({"report.json", "report.md", "report.html", "table.csv"})
_MARK = ".gradparity-"  # in the names of this module's temporaries: ".NAME.gradparity-tmp-..."
# Per-file temporaries an earlier version of the writer left (".report.json.ab12cd.tmp"), and
# the files a desktop adds to any folder it shows.
_OLD_TEMP = re.compile(
    r"\.(report\.json|report\.md|report\.html|table\.csv|[\w.-]+\.png)\.\w+\.tmp"
)
_DESKTOP_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it, even
    for an instant, would affect files other threads create meanwhile)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    current = os.umask(0o022)
    os.umask(current)
    return current


def _holds_a_report(folder: Path) -> bool:
    """Whether ``folder`` has a report.json that a save wrote (read, not guessed from the
    name: a user's own notes called report.md are not a report)."""
    try:
        head = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(head, dict) and {"ok", "dtype", "rows"} <= head.keys()


def _is_report_entry(entry: Path, in_plots: bool = False) -> bool:
    """Whether one entry of a report folder is something a save writes (or a desktop adds):
    a report file, the plots folder of PNGs, a report subfolder (a merged run's part), a
    leftover of an earlier writer."""
    name = entry.name
    if entry.is_symlink():
        return False
    if entry.is_file() and (name in _DESKTOP_FILES or _OLD_TEMP.fullmatch(name)):
        return True
    if in_plots:
        return entry.is_file() and name.endswith(".png")
    if name == "plots":
        return entry.is_dir() and all(_is_report_entry(p, in_plots=True) for p in entry.iterdir())
    if name in REPORT_FILES:
        return entry.is_file()
    return entry.is_dir() and _holds_a_report(entry) and not _foreign(entry)


def _foreign(folder: Path) -> list[str]:
    """Names of the entries of ``folder`` that a save did not write: all but a desktop's
    files when the folder holds no report, else those that are not a report's."""
    entries = [p for p in folder.iterdir() if p.name not in _DESKTOP_FILES]
    if entries and not _holds_a_report(folder):
        return sorted(p.name for p in entries)
    return sorted(p.name for p in entries if not _is_report_entry(p))


def check_target(target: str | os.PathLike) -> Path:
    """The report folder ``target`` as an absolute path, refused (InputError, one line) when a
    save could not replace it: a file system root, the current folder or one holding it (the
    shell would be left in a removed folder), a file, or a folder holding anything a save did
    not write. Nothing is written; the contents are read under the saves' lock, so a save
    running meanwhile is not mistaken for foreign files."""
    path = _resolve(target)
    if path.parent.is_dir():
        with _locked(path.parent):
            _refuse_foreign(path)
    return path


def _resolve(target: object) -> Path:
    """``target`` as an absolute path that a folder could be swapped in at (no contents read)."""
    if not isinstance(target, (str, os.PathLike)) or not os.fspath(target):
        raise InputError(f"report folder must be a non-empty path, got {target!r}")
    try:
        path = Path(target).resolve()  # "." has no name to build a sibling from; a link too
        here = Path.cwd()
        blocked = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a folder not readable
        raise InputError(f"report folder {target!r} cannot be used: {exc}") from exc
    if not path.name:
        raise InputError(f"report folder {path} is a file system root; pick a folder inside")
    if path == here or path in here.parents:
        raise InputError(
            f"report folder {path} is the current folder or holds it; pick a subfolder such "
            "as reports/latest"
        )
    if blocked is not None:
        raise InputError(f"report folder {path}: {blocked} is a file, not a folder; pick another")
    return path


def _refuse_foreign(path: Path) -> None:
    """InputError when the folder ``path`` holds anything a save did not write (hold the
    lock: a concurrent swap would make a report look foreign for an instant)."""
    try:
        foreign = _foreign(path) if path.is_dir() else []
    except OSError as exc:
        raise InputError(f"report folder {path} cannot be read: {exc.strerror or exc}") from exc
    if foreign:
        raise InputError(
            f"report folder {path} holds files that are not a report's "
            f"({', '.join(foreign[:3])}); pick an empty or new folder"
        )


@contextlib.contextmanager
def _locked(parent: Path) -> Iterator[None]:
    """An exclusive lock on ``parent`` (a folder) for the duration; none where ``fcntl`` is
    missing (there, concurrent saves still never mix files, but the last rename wins)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is unavailable."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


def _leftovers(parent: Path, name: str) -> list[Path]:
    prefix = f".{name}{_MARK}"
    return sorted(p for p in parent.iterdir() if p.name.startswith(prefix))


def _remove_leftovers(parent: Path, name: str) -> None:
    """Temporaries of earlier saves into ``parent/name`` (a killed save leaves one behind);
    an earlier fallback swap that stopped between its two renames is completed first."""
    leftovers = _leftovers(parent, name)
    target = parent / name
    if not target.exists():
        old = [p for p in leftovers if p.name.startswith(f".{name}{_MARK}old-")]
        if old:
            old[-1].rename(target)
            leftovers.remove(old[-1])
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def _write_tree(root: Path, files: Mapping[str, str | bytes], umask: int) -> None:
    dir_mode, file_mode = 0o777 & ~umask, 0o666 & ~umask
    os.chmod(root, dir_mode)  # mkdtemp makes 0700; a report is for reading
    for relative, data in files.items():
        path = root / relative
        if root.resolve() not in path.resolve().parents:
            raise ValueError(f"refusing to write outside the report folder: {relative}")
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
            os.chmod(path.parent, dir_mode)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
        os.chmod(path, file_mode)


def write_folder(target: str | os.PathLike, files: Mapping[str, str | bytes]) -> Path:
    """Make ``target`` a folder holding exactly ``files`` (relative path -> text or bytes),
    replacing an earlier report folder there in one step.

    Raises InputError when ``target`` is a file, holds files that are not a report's, or
    cannot be written.
    """
    target = _resolve(target)
    parent, name = target.parent, target.name
    umask = _umask()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with _locked(parent):
            _remove_leftovers(parent, name)
            _refuse_foreign(target)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}{_MARK}tmp-", dir=parent))
            try:
                _write_tree(staging, files, umask)
                _swap_in(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise InputError(f"cannot write the report into {target}: {exc.strerror or exc}") from exc
    return target


def _swap_in(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target``; an earlier folder there ends up at ``staging``."""
    if not target.exists():
        staging.rename(target)
        return
    if _exchange(staging, target):
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}{_MARK}old-", dir=target.parent))
    old.rmdir()
    target.rename(old)
    staging.rename(target)
    old.rename(staging)  # removed with the staging folder
