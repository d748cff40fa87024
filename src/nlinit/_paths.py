"""Output paths: check them before long work, lock a run directory, write files atomically.

* :func:`check_output` looks (without creating anything) whether a directory or file can be written where
  the user asked, so a bad ``--out`` is a one-line error before any work starts.
* :func:`claim_dir` creates a run directory and holds an exclusive lock on it (``fcntl.flock`` on
  ``<dir>/.nlinit.lock``) for as long as the run lasts; the kernel releases it when the process ends, also
  on a crash or SIGKILL. A second process gets :class:`RunLockedError`. If the work fails before it wrote
  anything, the directories the claim created are removed again, so a retry starts from a clean slate.
* :func:`atomic_write` writes to a temporary name beside the target and moves it into place with
  ``os.replace``: readers see the old file or the new one, never a partial one (also on a full disk).

POSIX only (``fcntl``). On a network file system the lock is as good as its ``flock`` support.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "LOCK_NAME",
    "RunLockedError",
    "atomic_write",
    "atomic_write_csv",
    "atomic_write_text",
    "check_output",
    "claim_dir",
    "exclusive",
]

LOCK_NAME = ".nlinit.lock"


class RunLockedError(OSError):
    """The directory is in use: another process holds its lock."""


def _existing_ancestor(path: Path) -> Path:
    """The deepest ancestor of ``path`` (or ``path`` itself) that exists (``lexists``: links count)."""
    current = Path(os.path.abspath(path))
    while not os.path.lexists(current) and current != current.parent:
        current = current.parent
    return current


def check_output(path: str | os.PathLike[str], *, name: str, kind: Literal["dir", "file"]) -> Path:
    """Raise unless a directory (``kind="dir"``) or a file can be created or written at ``path``.

    Creates nothing. ``name`` is the option's name for the message (``"out"``).

    Raises:
        IsADirectoryError: a file was asked for and ``path`` is an existing directory.
        NotADirectoryError: ``path`` (for a directory) or one of its parents is an existing file.
        PermissionError: the deepest existing directory on the way is not writable.
    """
    path = Path(path)
    if str(path) == "":
        raise ValueError(f"{name} must be a non-empty path, got {str(path)!r}")
    if kind == "file" and path.is_dir():
        raise IsADirectoryError(f"{name} {str(path)!r} is a directory; a file name is needed")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name} {str(path)!r} is a file; a directory is needed")
    anchor = _existing_ancestor(path if kind == "dir" else path.parent)
    if not anchor.is_dir():
        raise NotADirectoryError(f"{name} {str(path)!r} cannot be created: {str(anchor)!r} is a file")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise PermissionError(f"{name} {str(path)!r} is not writable: no write permission in {str(anchor)!r}")
    return path


def _missing_dirs(path: Path) -> list[Path]:
    """The directories ``path.mkdir(parents=True)`` would create, outermost first."""
    missing = []
    current = Path(os.path.abspath(path))
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing[::-1]


@contextlib.contextmanager
def claim_dir(path: str | os.PathLike[str], *, name: str = "out") -> Iterator[Path]:
    """Create directory ``path`` and hold its exclusive lock inside the ``with`` block.

    The lock file ``path/.nlinit.lock`` holds the owner's process id (for the message another process
    gets). When the block raises and the directory holds nothing but the lock file, the directories this
    call created are removed again; a directory that existed before is left as it was (its lock file stays).

    Raises:
        RunLockedError: another process holds the lock (one line, naming its process id when known).
        OSError: the directory cannot be created or written (see :func:`check_output`).
    """
    path = check_output(path, name=name, kind="dir")
    created = _missing_dirs(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            by = f"process {owner}" if owner.isdigit() else "another process"
            raise RunLockedError(
                f"{name} {str(path)!r} is in use by {by} (lock {LOCK_NAME}); wait for it to finish or use "
                "another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # also a first write: fails early on a full disk
        try:
            yield path
        except BaseException:
            if created and {p.name for p in path.iterdir()} == {LOCK_NAME}:
                lock.unlink()
                for directory in reversed(created):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            raise
    finally:
        os.close(fd)  # releases the lock


def _temporary(path: Path) -> Path:
    """A hidden name beside ``path``, same suffix (for writers that pick a format by the suffix)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then move it to ``path``; on any error the
    temporary file is removed and ``path`` is left as it was. Returns ``path``."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_csv(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None
) -> Path:
    """``rows`` (dicts) as CSV with a header (``fieldnames``, default the first row's keys; ["name"] for no
    rows), written atomically (:func:`atomic_write`). Returns ``path``."""
    names = list(fieldnames) if fieldnames is not None else list(rows[0]) if rows else ["name"]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) inside the block, waiting for it if
    another process holds it: for short read-modify-write sections shared by cooperating processes."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
