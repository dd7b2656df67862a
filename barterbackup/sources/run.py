"""One backup run: the walk of the source folders joined with the files cache.

The previous revision's manifest is the files cache: its records carry each
file's (size, mtime_ns, ctime_ns, inode, device). The run merge-joins the
walk of the sources (``walker``, in manifest order) with those records
(``ContentStore.records()``, the same order) in one pass, and for each name:

* walked and unchanged (equal stat key): nothing is read and nothing is
  said to the update, which keeps files it is not told about as the
  previous revision has them (``Update``'s contract; cheaper than a
  ``keep_file`` per file, and a run where nothing changed then commits
  nothing at all);
* walked and new or changed: the file is opened, checked to be the walked
  file, read and written to the update with the stat taken at open;
* in the previous revision under a source's prefix but no longer walked:
  removed, unless its source folder or one of its directories could not be
  read this time (then it is kept: an unmounted disk is not a deletion);
* in the previous revision outside every source (``files add``, or a source
  since removed): kept.

Nothing one file does fails the run: a file that cannot be opened or read
is skipped with a warning in the report (its previous version, if any,
stays in the file set); a file that changes while it is read (its size,
mtime or ctime differ after the read) is read once more, and if it changes
again it is skipped the same way. The caller commits the update: one
revision per run, none when nothing changed.

``add_paths`` is the same files cache for ``files add PATH``: it adds what
the walk finds under the named paths and removes nothing.

Runs on a worker thread (it blocks on the disk); ``cancelled`` is checked
between files, so a stopping daemon does not wait for a whole run.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from barterbackup.content.manifest import FileRecord, sort_key
from barterbackup.logs import get_logger
from barterbackup.sources.schedule import RunProgress
from barterbackup.sources.walker import (
    FileEntry,
    WalkReport,
    WalkRoot,
    walk_sources,
)

log = get_logger("barterbackup.sources.run")

# Files are read in pieces of this size (the engine's batch size).
READ_BYTES = 1024 * 1024
# A progress event at most every this many files or bytes: deterministic
# (no clock on the worker thread) and rare enough to cost nothing.
PROGRESS_EVERY_FILES = 256
PROGRESS_EVERY_BYTES = 16 * 1024 * 1024
PHASE_SCANNING = "scanning"
PHASE_READING = "reading"

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class RunCancelled(Exception):
    """The run was asked to stop (the daemon is stopping or locking)."""


class FileSetChanges(Protocol):
    """What a run tells the update (``node.facade.FileSetUpdate``).

    ``add_file`` starts a file whose bytes follow with ``write``; the next
    call of any method ends it. The last operation on a name wins.
    """

    def add_file(
        self,
        name: str,
        *,
        mode: int = 0o644,
        mtime_ns: int = 0,
        ctime_ns: int = 0,
        inode: int = 0,
        device: int = 0,
    ) -> None: ...

    def write(self, data: bytes) -> None: ...

    def remove_file(self, name: str) -> None: ...

    def keep_file(self, name: str) -> None: ...


@dataclass
class ScanCounts:
    """What a run found and did (before its commit)."""

    files_seen: int = 0
    bytes_seen: int = 0
    files_unchanged: int = 0
    files_read: int = 0
    bytes_read: int = 0
    files_removed: int = 0
    files_kept_outside: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.files_read or self.files_removed)


class _FileChangedWhileRead(Exception):
    pass


class _Reader:
    """Reads walked files into the update, checking they hold still."""

    def __init__(
        self,
        changes: FileSetChanges,
        report: WalkReport,
        counts: ScanCounts,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._changes = changes
        self._report = report
        self._counts = counts
        self._on_bytes = on_bytes
        self._view = memoryview(bytearray(READ_BYTES))

    def read(self, entry: FileEntry, previous: bool) -> bool:
        """Write ``entry``'s bytes to the update; False if it was skipped.

        ``previous`` says whether the previous revision holds the name: a
        skipped file then keeps that version, else it stays out.
        """
        for attempt in (1, 2):
            try:
                self._read_once(entry, previous)
                self._counts.files_read += 1
                return True
            except _FileChangedWhileRead as changed:
                if attempt == 2:
                    self._skip(entry, "changed while being read, twice", previous)
                    return False
                (entry,) = changed.args
            except OSError as error:
                self._skip(entry, _describe(error), previous)
                return False
        raise AssertionError("unreachable")

    def _skip(self, entry: FileEntry, reason: str, previous: bool) -> None:
        kept = "; the previous version is kept" if previous else ""
        self._report.skip(entry.path, reason + kept)

    def _read_once(self, entry: FileEntry, previous: bool) -> None:
        fd = os.open(entry.path, _OPEN_FLAGS)
        started = False
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(0, f"became a {_kind(info.st_mode)} during the backup")
            if info.st_ino != entry.inode or info.st_dev != entry.device:
                # Replaced since the walk (renamed over): read the new one.
                raise _FileChangedWhileRead(_entry_from(entry, info))
            os.set_blocking(fd, True)
            changes = self._changes
            changes.add_file(
                entry.name,
                mode=stat.S_IMODE(info.st_mode),
                mtime_ns=info.st_mtime_ns,
                ctime_ns=info.st_ctime_ns,
                inode=info.st_ino,
                device=info.st_dev,
            )
            started = True
            size = info.st_size
            total = 0
            view = self._view
            # Read exactly the size fstat gave; a file that grew or shrank
            # meanwhile shows in the fstat after (one read call less a file).
            while total < size:
                count = os.readv(fd, [view[: min(READ_BYTES, size - total)]])
                if not count:
                    break
                changes.write(view[:count])  # type: ignore[arg-type]
                total += count
                self._on_bytes(count)
            self._counts.bytes_read += total
            after = os.fstat(fd)
            if total != size or _stat_moved(info, after):
                raise _FileChangedWhileRead(_entry_from(entry, after))
        except BaseException:
            if started:
                # Undo the partial write: the previous version (if any) wins.
                if previous:
                    self._changes.keep_file(entry.name)
                else:
                    self._changes.remove_file(entry.name)
            raise
        finally:
            os.close(fd)


def _stat_moved(before: os.stat_result, after: os.stat_result) -> bool:
    return (
        before.st_size != after.st_size
        or before.st_mtime_ns != after.st_mtime_ns
        or before.st_ctime_ns != after.st_ctime_ns
    )


def _entry_from(entry: FileEntry, info: os.stat_result) -> FileEntry:
    return entry._replace(
        size=info.st_size,
        mode=stat.S_IMODE(info.st_mode),
        mtime_ns=info.st_mtime_ns,
        ctime_ns=info.st_ctime_ns,
        inode=info.st_ino,
        device=info.st_dev,
    )


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _describe(error: OSError) -> str:
    if error.strerror:
        return f"cannot read: {error.strerror}"
    return f"cannot read: {error}"


def _unchanged(entry: FileEntry, record: FileRecord) -> bool:
    return (
        entry.size == record.size
        and entry.mtime_ns == record.mtime_ns
        and entry.ctime_ns == record.ctime_ns
        and entry.inode == record.inode
        and entry.device == record.device
    )


class _Progress:
    """Counts for progress events, sent every so many files or bytes."""

    def __init__(
        self,
        listener: Callable[[RunProgress], None] | None,
        counts: ScanCounts,
        estimate: tuple[int, int],
    ) -> None:
        self._listener = listener
        self._counts = counts
        self._files_total, self._bytes_total = estimate
        self._files_at = 0
        self._bytes_at = 0
        # Bytes of the files done (read or unchanged), and of the one being
        # read: a large file moves the count on before it is done.
        self._completed = 0
        self._current = 0

    def send(self, phase: str = PHASE_READING) -> None:
        if self._listener is None:
            return
        counts = self._counts
        done = self._completed + self._current
        self._files_at, self._bytes_at = counts.files_seen, done
        files_total, bytes_total = self._files_total, self._bytes_total
        # An estimate the run outgrew says nothing any more.
        if counts.files_seen > files_total or done > bytes_total:
            files_total = bytes_total = 0
        self._listener(
            RunProgress(
                phase,
                files_done=counts.files_seen,
                files_total=files_total,
                bytes_done=done,
                bytes_total=bytes_total,
                message=f"{counts.files_read:,} files read",
            )
        )

    def file_done(self, size: int) -> None:
        self._completed += size
        self._current = 0
        if (
            self._counts.files_seen - self._files_at >= PROGRESS_EVERY_FILES
            or self._completed - self._bytes_at >= PROGRESS_EVERY_BYTES
        ):
            self.send()

    def bytes_read(self, count: int) -> None:
        self._current += count
        if self._completed + self._current - self._bytes_at >= PROGRESS_EVERY_BYTES:
            self.send()


def _check(cancelled: threading.Event | None) -> None:
    if cancelled is not None and cancelled.is_set():
        raise RunCancelled("the backup run was stopped")


def back_up(
    changes: FileSetChanges,
    roots: Sequence[WalkRoot],
    previous: Iterable[FileRecord],
    report: WalkReport,
    *,
    skip_directories: Sequence[str] = (),
    progress: Callable[[RunProgress], None] | None = None,
    estimate: tuple[int, int] = (0, 0),
    cancelled: threading.Event | None = None,
) -> ScanCounts:
    """Tell ``changes`` what changed in ``roots`` since ``previous``.

    ``previous`` is the previous revision's records in manifest order;
    ``estimate`` (files, bytes) the expected totals for progress (the last
    run's), ``(0, 0)`` when unknown. Warnings go to ``report``. Raises
    RunCancelled when ``cancelled`` is set; the caller aborts the update.
    """
    counts = ScanCounts()
    meter = _Progress(progress, counts, estimate)
    reader = _Reader(changes, report, counts, meter.bytes_read)
    prefixes = frozenset(root.name for root in roots)
    meter.send(PHASE_SCANNING)
    walk = walk_sources(roots, report, skip_directories)
    records: Iterator[FileRecord] = iter(previous)
    entry = next(walk, None)
    entry_key = sort_key(entry.name) if entry is not None else b""
    record = next(records, None)
    record_key = sort_key(record.name) if record is not None else b""
    while entry is not None or record is not None:
        _check(cancelled)
        if record is None or (entry is not None and entry_key < record_key):
            assert entry is not None
            _walked(entry, None, reader, counts, meter)
            entry = next(walk, None)
            entry_key = sort_key(entry.name) if entry is not None else b""
        elif entry is None or entry_key > record_key:
            if _gone(record.name, prefixes, report):
                changes.remove_file(record.name)
                counts.files_removed += 1
            elif not _under(record.name, prefixes):
                counts.files_kept_outside += 1
            record = next(records, None)
            record_key = sort_key(record.name) if record is not None else b""
        else:
            _walked(entry, record, reader, counts, meter)
            entry = next(walk, None)
            entry_key = sort_key(entry.name) if entry is not None else b""
            record = next(records, None)
            record_key = sort_key(record.name) if record is not None else b""
    meter.send()
    return counts


def _walked(
    entry: FileEntry,
    record: FileRecord | None,
    reader: _Reader,
    counts: ScanCounts,
    meter: _Progress,
) -> None:
    counts.files_seen += 1
    counts.bytes_seen += entry.size
    if record is not None and _unchanged(entry, record):
        counts.files_unchanged += 1
    else:
        reader.read(entry, previous=record is not None)
    meter.file_done(entry.size)


def _under(name: str, prefixes: frozenset[str]) -> bool:
    first, slash, _ = name.partition("/")
    return bool(slash) and first in prefixes


def _gone(name: str, prefixes: frozenset[str], report: WalkReport) -> bool:
    """Whether a previous file no walk found was deleted (not just unread)."""
    if not _under(name, prefixes):
        return False
    if name.partition("/")[0] in report.unavailable_sources:
        return False
    unreadable = report.unreadable_directories
    return not (unreadable and name.startswith(tuple(unreadable)))


def add_paths(
    changes: FileSetChanges,
    roots: Sequence[WalkRoot],
    files: Sequence[FileEntry],
    lookup: Callable[[str], FileRecord | None],
    report: WalkReport,
    *,
    progress: Callable[[RunProgress], None] | None = None,
    estimate: tuple[int, int] = (0, 0),
    cancelled: threading.Event | None = None,
) -> ScanCounts:
    """``files add``: the files under ``roots`` and the single ``files``.

    Each is compared with its previous record (``lookup``, one chunk read
    for names in order) and read only when new or changed; nothing is
    removed. ``files`` are entries the caller stat'ed (``entry_for_file``).
    """
    counts = ScanCounts()
    meter = _Progress(progress, counts, estimate)
    reader = _Reader(changes, report, counts, meter.bytes_read)
    meter.send(PHASE_SCANNING)
    single = sorted(files, key=lambda e: sort_key(e.name))
    for entry in _merged(walk_sources(roots, report), single):
        _check(cancelled)
        _walked(entry, lookup(entry.name), reader, counts, meter)
    meter.send()
    return counts


def _merged(first: Iterable[FileEntry], second: list[FileEntry]) -> Iterator[FileEntry]:
    """Two sorted entry sequences in one (names in order: lookups stay cheap)."""
    pending = iter(second)
    other = next(pending, None)
    for entry in first:
        key = sort_key(entry.name)
        while other is not None and sort_key(other.name) < key:
            yield other
            other = next(pending, None)
        yield entry
    while other is not None:
        yield other
        other = next(pending, None)


def entry_for_file(path: str, name: str) -> FileEntry:
    """The walk entry of one regular file given by path (``files add FILE``);
    OSError if it cannot be stat'ed or is not a regular file."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(0, f"{path} is not a regular file ({_kind(info.st_mode)})")
    return FileEntry(
        name,
        path,
        info.st_size,
        stat.S_IMODE(info.st_mode),
        info.st_mtime_ns,
        info.st_ctime_ns,
        info.st_ino,
        info.st_dev,
    )
