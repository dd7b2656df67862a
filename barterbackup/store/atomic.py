"""Crash-safe file writes: temp file → fsync → rename → fsync directory.

A reader (or a restart after a crash at any instant) sees either the old file
or the new one, never a mix. Temp files carry TEMP_SUFFIX so start-up can
remove the leftovers of a crash (``remove_leftovers``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from barterbackup.store.crash import crash_point

TEMP_SUFFIX = ".tmp-bb"


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Crash points of every atomic write (store/crash.py): the new bytes are
# durable in the temp file but not renamed; renamed but the directory not
# synced. Metadata, contract files, identity and replica records all write
# this way.
ATOMIC_BEFORE_RENAME = 201
ATOMIC_BEFORE_DIRECTORY_SYNC = 202


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def atomic_write(path: Path, data: bytes | Iterable[bytes], mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves old or new."""
    path = Path(path)
    temp = temp_path_for(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb", closefd=True) as handle:
            if isinstance(data, bytes | bytearray | memoryview):
                handle.write(data)
            else:
                for chunk in data:
                    handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point(ATOMIC_BEFORE_RENAME)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    crash_point(ATOMIC_BEFORE_DIRECTORY_SYNC)
    fsync_directory(path.parent)


def atomic_delete(path: Path) -> None:
    """Remove ``path`` (if present) and make the removal durable."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_directory(path.parent)


def unused_path(directory: Path, name: str) -> Path:
    """``directory/name.N`` for the smallest N not taken: where a damaged
    entry goes in a quarantine directory (two in one second, or the same
    name again after a restart, never collide; the entry's mtime says
    when)."""
    number = 1
    while (candidate := Path(directory) / f"{name}.{number}").exists():
        number += 1
    return candidate


def make_private_directory(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the owner only."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def remove_leftovers(root: Path) -> list[Path]:
    """Delete temp files a crash left under ``root``; return what went."""
    removed = []
    for temp in Path(root).rglob(f"*{TEMP_SUFFIX}"):
        if temp.is_file():
            temp.unlink()
            removed.append(temp)
    return removed
