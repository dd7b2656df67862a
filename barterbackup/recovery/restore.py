"""Restoring a stored revision's files into a directory of this machine.

The daemon runs as the user, on the user's machine, so it writes the files
itself: no byte crosses gRPC. Every byte comes through the content store's
verifying read path (each section checked against the tree, decrypted and
checked against its plaintext hash); a file is written under a temporary
name in its final directory, given its mode and mtime, and put in place
only once all of it was read and verified.

**Never outside the directory.** Names were validated when they were
stored, and are checked again here component by component (no empty
component, no ``.`` or ``..``, not absolute). The directory the user named
is opened once; every directory below it is opened relative to its parent
with ``O_NOFOLLOW | O_DIRECTORY`` (and created with ``mkdir`` relative to
its parent when missing), so a symbolic link planted anywhere inside the
directory is never followed: the file under it fails, clearly, and the
others go on. The final component is never opened: the temporary file is
created ``O_EXCL | O_NOFOLLOW`` and moved into place with ``link`` (which
fails if the name exists: no check-then-write race) or, with
``overwrite``, ``rename`` (which replaces a link itself, never its target).

**Existing files are kept** unless ``overwrite``: they are listed, nothing
of them is read or changed. A directory in the way of a file fails that
file.

**Modes and times.** The manifest records each file's permission bits and
mtime. They are applied, except the setuid and setgid bits, always: the
manifest records no owner, so the restored file belongs to the daemon's
user, and a setuid bit would make it run with rights it never had where it
was backed up (as root, with root's). The sticky bit and the rwx bits are
kept; the access time is set to the mtime. Directories the restore creates
are 0700: the manifest says nothing of them, and the content is private.

**Damage** in a file's sections (or the tree above them) fails that file,
naming it and the damaged part; its temporary file is removed, the restore
goes on with the others, and the outcome lists every failure. A damaged
manifest chunk fails the files it held, named by the range of names it
covered.

Files are not fsynced one by one (restic does not either): the restored
tree is durable after the next ``sync`` or writeback, and a crash leaves
at worst temporary ``.bb-restore-*`` files, never a partial file under
its real name.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from barterbackup.content.engine import CorruptContent, ManifestChunk
from barterbackup.content.manifest import PlacedRecord
from barterbackup.content.names import InvalidFileName, validate_name
from barterbackup.logs import get_logger
from barterbackup.progress import Progress
from barterbackup.revisions import VerifiedRevision

log = get_logger("barterbackup.recovery")

# Mode bits restored: rwx for all and the sticky bit, never setuid/setgid.
RESTORED_MODE_BITS = 0o1777
DIRECTORY_MODE = 0o700
TEMP_PREFIX = ".bb-restore-"
# A progress snapshot at most every this many bytes within a file.
PROGRESS_EVERY_BYTES = 4 * 1024 * 1024
# The outcome lists at most this many names of each kind (and counts all).
MAX_LISTED = 1000
# Directory descriptors kept open: files come in name order, so the last
# few directories are the ones the next files go to.
MAX_OPEN_DIRECTORIES = 32

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class RestoreRefused(ValueError):
    """The restore cannot start: a bad directory or selection (nothing is
    written)."""


class UnsafePath(Exception):
    """A file cannot be written without following a link or leaving the
    directory."""


class RestoreSource(Protocol):
    """What restoring needs of the content store."""

    def revision(self, number: int = 0) -> VerifiedRevision: ...

    def manifest_chunks(
        self, revision: VerifiedRevision
    ) -> Iterator[ManifestChunk]: ...

    def read_placed(
        self, revision: VerifiedRevision, placed: PlacedRecord
    ) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class FileFailure:
    """A file that could not be restored, and why."""

    name: str
    reason: str


@dataclass
class RestoreOutcome:
    """What one restore did. Lists hold at most MAX_LISTED names each;
    the counts are complete."""

    revision: int
    directory: str
    files_restored: int = 0
    bytes_restored: int = 0
    kept: list[str] = field(default_factory=list)
    kept_count: int = 0
    failed: list[FileFailure] = field(default_factory=list)
    failed_count: int = 0
    # not_found are the selected names that matched no file.
    not_found: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every selected file restored or kept as asked."""
        return not self.failed_count and not self.not_found

    def _keep(self, name: str) -> None:
        self.kept_count += 1
        if len(self.kept) < MAX_LISTED:
            self.kept.append(name)

    def _fail(self, name: str, reason: str) -> None:
        self.failed_count += 1
        if len(self.failed) < MAX_LISTED:
            self.failed.append(FileFailure(name, reason))


def check_selection(names: list[str]) -> list[str]:
    """The selected names (files or directory prefixes), checked and
    without trailing slashes; RestoreRefused for a name that could not be
    in any file set."""
    selection = []
    for name in names:
        trimmed = name.rstrip("/")
        try:
            validate_name(trimmed)
        except InvalidFileName as error:
            raise RestoreRefused(f"cannot select {name!r}: {error}") from None
        selection.append(trimmed)
    return selection


class _Selection:
    """Which files a restore writes: all, or those named or under a name."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.matched = [False] * len(names)

    def __contains__(self, name: str) -> bool:
        if not self.names:
            return True
        found = False
        for number, selected in enumerate(self.names):
            if name == selected or name.startswith(selected + "/"):
                self.matched[number] = True
                found = True
        return found

    def unmatched(self) -> list[str]:
        return [n for n, hit in zip(self.names, self.matched, strict=True) if not hit]

    def may_hold(self, chunk: ManifestChunk, next_name: str | None) -> bool:
        """Whether a damaged chunk (its files unknown) may hold selected files.

        Without the records only the chunk's name range is known: from its
        first name to the next chunk's. The test is loose on purpose (a
        selection sorting anywhere near the range counts).
        """
        if not self.names:
            return True
        for number, selected in enumerate(self.names):
            key = selected.encode().replace(b"/", b"\x00")
            first = chunk.first_name.encode().replace(b"/", b"\x00")
            stop = next_name.encode().replace(b"/", b"\x00") if next_name else None
            if (stop is None or key < stop) and (
                key >= first or first.startswith(key + b"\x00")
            ):
                self.matched[number] = True
                return True
        return False


def safe_mode(mode: int) -> int:
    """The permission bits a restored file gets (see the module doc)."""
    return mode & RESTORED_MODE_BITS


def split_name(name: str) -> list[str]:
    """The components of a stored name, each checked (UnsafePath)."""
    if not name or name.startswith("/") or "\x00" in name or "\\" in name:
        raise UnsafePath(f"{name!r} is not a relative path")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"{name!r} has a {part!r} component")
    return parts


class TargetDirectory:
    """The directory files are restored into; nothing is written outside."""

    def __init__(self, path: Path) -> None:
        if not path.is_absolute():
            raise RestoreRefused(f"the directory {str(path)!r} is not absolute")
        try:
            # The path the user named is theirs to choose, links and all.
            path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise RestoreRefused(f"cannot restore into {path}: {_why(error)}") from None
        self.path = path
        self._open: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()
        os.close(self._fd)

    def _directory(self, parts: list[str]) -> int:
        """The descriptor of the directory ``parts`` below the target,
        created as needed, never through a link."""
        key = tuple(parts)
        if not parts:
            return self._fd
        cached = self._open.pop(key, None)
        if cached is not None:
            self._open[key] = cached  # most recently used last
            return cached
        parent = self._directory(parts[:-1])
        name = parts[-1]
        try:
            fd = os.open(name, _NOFOLLOW_DIR, dir_fd=parent)
        except FileNotFoundError:
            try:
                os.mkdir(name, DIRECTORY_MODE, dir_fd=parent)
            except FileExistsError:
                pass  # made meanwhile: opened (without following) below
            fd = self._open_existing(parent, parts)
        except OSError as error:
            raise self._unsafe(parent, parts, error) from None
        while len(self._open) >= MAX_OPEN_DIRECTORIES:
            os.close(self._open.pop(next(iter(self._open))))
        self._open[key] = fd
        return fd

    def _open_existing(self, parent: int, parts: list[str]) -> int:
        try:
            return os.open(parts[-1], _NOFOLLOW_DIR, dir_fd=parent)
        except OSError as error:
            raise self._unsafe(parent, parts, error) from None

    @staticmethod
    def _unsafe(parent: int, parts: list[str], error: OSError) -> UnsafePath:
        where = "/".join(parts)
        try:
            info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except OSError:
            info = None
        if info is not None and stat.S_ISLNK(info.st_mode):
            return UnsafePath(
                f"{where!r} in the directory is a symbolic link (not followed)"
            )
        if error.errno in (errno.ENOTDIR, errno.ELOOP):
            return UnsafePath(f"{where!r} in the directory is not a directory")
        return UnsafePath(f"cannot open {where!r}: {error.strerror or error}")

    def write(
        self,
        name: str,
        chunks: Callable[[], Iterator[bytes]],
        mode: int,
        mtime_ns: int,
        overwrite: bool,
        on_bytes: Callable[[int], None],
    ) -> bool:
        """Write one file; False if it exists and was kept (nothing read).

        ``chunks()`` opens the verified reader (only once we know the file
        will be written); ``on_bytes`` is told of each chunk written.
        Raises UnsafePath, CorruptContent or OSError for this file alone.
        """
        parts = split_name(name)
        parent = self._directory(parts[:-1])
        leaf = parts[-1]
        existing = _lstat(leaf, parent)
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                raise UnsafePath(f"a directory {name!r} is in the way")
            if not overwrite:
                return False
        temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(temp, _NEW_FILE, 0o600, dir_fd=parent)
        try:
            try:
                for chunk in chunks():
                    _write_all(fd, chunk)
                    on_bytes(len(chunk))
                os.fchmod(fd, safe_mode(mode))
                if mtime_ns:
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
            return self._place(temp, leaf, parent, overwrite)
        finally:
            try:
                os.unlink(temp, dir_fd=parent)
            except FileNotFoundError:
                pass

    @staticmethod
    def _place(temp: str, leaf: str, parent: int, overwrite: bool) -> bool:
        """Move the complete file to its name; False if it exists now and
        ``overwrite`` is off."""
        if overwrite:
            os.replace(temp, leaf, src_dir_fd=parent, dst_dir_fd=parent)
            return True
        try:
            # link fails if the name exists: no window between a check and
            # the write for another writer's file to be replaced.
            os.link(
                temp, leaf, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False
            )
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # A file system without hard links: check, then rename.
            if _lstat(leaf, parent) is not None:
                return False
            os.rename(temp, leaf, src_dir_fd=parent, dst_dir_fd=parent)
        return True


def _why(error: OSError) -> str:
    """An OSError in words, with what to do about a read-only directory."""
    text = error.strerror or str(error)
    if error.errno == errno.EROFS:
        text += (
            " (the daemon may write only where its service allows: under the "
            "systemd unit, add the directory to ReadWritePaths with "
            "`systemctl --user edit barterbackup`)"
        )
    return text


def _lstat(name: str, parent: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Restorer:
    """One restore: a revision's selected files into a directory.

    Runs in a worker thread. ``report`` gets Progress snapshots (phase
    "restoring", bytes and files done of the totals, the current file in
    ``message``), then "done" or "failed" with the outcome's summary.
    """

    def __init__(
        self,
        source: RestoreSource,
        directory: Path,
        names: list[str],
        revision: int = 0,
        overwrite: bool = False,
        report: Callable[[Progress], None] = lambda progress: None,
    ) -> None:
        self._source = source
        self._directory = Path(directory)
        self._selection = _Selection(check_selection(names))
        self._revision_number = revision
        self._overwrite = overwrite
        self._report = report
        self._files_total = 0
        self._bytes_total = 0
        self._files_done = 0
        self._bytes_done = 0
        self._reported_bytes = 0

    def run(self) -> RestoreOutcome:
        revision = self._source.revision(self._revision_number)
        target = TargetDirectory(self._directory)
        outcome = RestoreOutcome(revision.number, str(self._directory))
        try:
            self._count(revision)
            self._restore_all(revision, target, outcome)
        finally:
            target.close()
        outcome.not_found = self._selection.unmatched()
        self._progress(
            "done" if outcome.ok else "failed", revision.number, summary(outcome)
        )
        log.info(
            "restored {files} files ({size} bytes) of revision {revision} into "
            "{directory}; {kept} kept, {failed} failed",
            files=outcome.files_restored,
            size=outcome.bytes_restored,
            revision=revision.number,
            directory=str(self._directory),
            kept=outcome.kept_count,
            failed=outcome.failed_count,
        )
        return outcome

    def _count(self, revision: VerifiedRevision) -> None:
        """The totals for progress (a first pass over the manifest)."""
        selection = _Selection(self._selection.names)
        for chunk in self._source.manifest_chunks(revision):
            for placed in chunk.records:
                if placed.record.name in selection:
                    self._files_total += 1
                    self._bytes_total += placed.record.size

    def _restore_all(
        self,
        revision: VerifiedRevision,
        target: TargetDirectory,
        outcome: RestoreOutcome,
    ) -> None:
        chunks = self._source.manifest_chunks(revision)
        chunk = next(chunks, None)
        while chunk is not None:
            following = next(chunks, None)
            if chunk.error:
                next_name = following.first_name if following is not None else None
                if self._selection.may_hold(chunk, next_name):
                    until = f" up to {next_name!r}" if next_name else " on"
                    outcome._fail(
                        f"{chunk.first_name}…" if chunk.first_name else "(every file)",
                        f"the files from {chunk.first_name!r}{until} cannot be "
                        f"listed: {chunk.error}",
                    )
            for placed in chunk.records:
                if placed.record.name in self._selection:
                    self._restore_one(revision, target, placed, outcome)
            chunk = following

    def _restore_one(
        self,
        revision: VerifiedRevision,
        target: TargetDirectory,
        placed: PlacedRecord,
        outcome: RestoreOutcome,
    ) -> None:
        record = placed.record
        start = self._bytes_done
        self._progress("restoring", revision.number, record.name)
        try:
            written = target.write(
                record.name,
                lambda: self._source.read_placed(revision, placed),
                record.mode,
                record.mtime_ns,
                self._overwrite,
                lambda count: self._wrote(count, revision.number, record.name),
            )
        except (CorruptContent, UnsafePath) as error:
            outcome._fail(record.name, str(error))
            log.warn(
                "restore: {name!r} failed: {error}", name=record.name, error=str(error)
            )
        except OSError as error:
            outcome._fail(record.name, f"cannot write it: {_why(error)}")
        else:
            if written:
                outcome.files_restored += 1
                outcome.bytes_restored += record.size
            else:
                outcome._keep(record.name)
        # A file kept or failed still counts as done, so the totals add up.
        self._bytes_done = start + record.size
        self._files_done += 1

    def _wrote(self, count: int, revision: int, name: str) -> None:
        self._bytes_done += count
        if self._bytes_done - self._reported_bytes >= PROGRESS_EVERY_BYTES:
            self._progress("restoring", revision, name)

    def _progress(self, phase: str, revision: int, message: str) -> None:
        self._reported_bytes = self._bytes_done
        self._report(
            Progress(
                phase=phase,
                bytes_done=self._bytes_done,
                bytes_total=self._bytes_total,
                message=message,
                revision=revision,
                files_done=self._files_done,
                files_total=self._files_total,
            )
        )


def summary(outcome: RestoreOutcome) -> str:
    """One line for people: what the restore did."""
    parts = [f"{outcome.files_restored} files restored of revision {outcome.revision}"]
    if outcome.kept_count:
        parts.append(f"{outcome.kept_count} existing kept")
    if outcome.failed_count:
        parts.append(f"{outcome.failed_count} failed")
    if outcome.not_found:
        parts.append(f"{len(outcome.not_found)} names matched nothing")
    return ", ".join(parts)
