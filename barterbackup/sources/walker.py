"""Walk source folders in the exact order of the manifest.

A file of a source folder is named ``PREFIX/relative/path`` and the walk
yields every file of every source in the order of the manifest
(``content.manifest.sort_key``: path components compared one by one, so
``a/b`` < ``a-b``): a backup run merge-joins the walk with the previous
manifest in one pass.

That order is exactly a depth-first walk over each directory's entries
sorted by name: every name under directory ``d`` starts with the component
``d``, and a component that is a proper prefix of another sorts first, as
the separator sorts below every character. (Sorting by whole UTF-8 names
would not do: ``a-c`` < ``a/b`` bytewise, but ``a/b`` comes first in the
manifest.) Sources are merged the same way, by prefix. Python compares
strings by code point, and code point order is UTF-8 byte order; names that
are not valid UTF-8 (surrogate escapes) are refused by ``validate_name`` and
never yielded, so they cannot break the order.

Cost per file: the ``scandir`` entry (name and type come with the listing)
and one ``lstat``; excluded entries are never stat'ed, excluded directories
never listed. Memory is the listings of the directories on the current path
(O(depth * directory size)), whatever the number of files.

Nothing one entry does stops the walk: unreadable directories, entries that
vanish between listing and ``lstat``, symbolic links, sockets, FIFOs and
devices, and names ``validate_name`` refuses are recorded in the
``WalkReport`` (path and reason) and skipped. A source folder that cannot be
listed at all is recorded in ``WalkReport.unavailable_sources``: its files
are absent from the walk, and a run must not read that as "deleted" (the
lead's merge keeps the previous manifest's range of that prefix).

File contents are not opened here; ``open_entry`` opens one for reading and
checks it is still the file that was walked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import BinaryIO, NamedTuple

from barterbackup.content.names import (
    MAX_COMPONENT_BYTES,
    MAX_NAME_BYTES,
    InvalidFileName,
    validate_name,
)
from barterbackup.logs import get_logger
from barterbackup.sources.excludes import NO_EXCLUDES, Excludes

log = get_logger("barterbackup.sources.walker")

# How many skipped entries a report keeps with their reasons (all are
# counted): a tree of a million sockets must not fill the run's report.
MAX_KEPT_SKIPPED = 1000


class FileEntry(NamedTuple):
    """One regular file found by the walk.

    ``name`` is the manifest name (``PREFIX/relative/path``); ``path`` the
    absolute path it was found at; ``mode`` the permission bits
    (``stat.S_IMODE``); the rest come from the same ``lstat``. The files
    cache treats (size, mtime_ns, ctime_ns, inode, device) as "unchanged".
    (A NamedTuple: a third of the cost of a frozen dataclass per file.)
    """

    name: str
    path: str
    size: int
    mode: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """An entry the walk (or the reader) left out, and why."""

    path: str
    reason: str


@dataclass
class WalkReport:
    """What a walk skipped; the reader of file contents adds to it too."""

    skipped: list[SkippedEntry] = field(default_factory=list)
    skipped_count: int = 0
    unavailable_sources: list[str] = field(default_factory=list)
    # Manifest names (ending in "/") of directories that could not be
    # opened or listed: like an unavailable source, a run keeps what the
    # previous revision has under them instead of reading them as deleted.
    unreadable_directories: list[str] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        """Record that ``path`` was left out of the backup because ``reason``."""
        # A name that is not UTF-8 (surrogate escapes) is shown escaped: the
        # report goes into protobuf strings.
        path = path.encode("utf-8", "surrogateescape").decode(
            "utf-8", "backslashreplace"
        )
        self.skipped_count += 1
        if len(self.skipped) < MAX_KEPT_SKIPPED:
            self.skipped.append(SkippedEntry(path, reason))
        log.debug("skipped {path}: {reason}", path=path, reason=reason)


@dataclass(frozen=True)
class WalkRoot:
    """One source folder to walk: its absolute path, prefix and excludes."""

    path: str
    name: str
    excludes: Excludes = NO_EXCLUDES


# A directory's children: (sort key, entry, is a directory).
_Child = tuple[str, os.DirEntry[str], bool]
_by_key = itemgetter(0)
_OPEN_DIRECTORY = (
    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link (not followed)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISDIR(mode):
        return "became a directory during the walk"
    return "not a regular file"


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def _list_directory(fd: int) -> list[_Child]:
    with os.scandir(fd) as listing:
        entries = list(listing)
    children = []
    for entry in entries:
        try:
            # From the listing's d_type: no system call on Linux file systems.
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False  # the lstat below reports what it is
        children.append((entry.name, entry, is_dir))
    children.sort(key=_by_key)
    return children


def _open_directory(
    name: str, parent_fd: int | None, path: str, report: WalkReport
) -> tuple[int, list[_Child]] | None:
    """Open and list a directory, relative to its parent's descriptor.

    Walking by descriptors means a directory renamed or swapped for a
    symbolic link after its parent was listed is refused (``O_NOFOLLOW``),
    never followed out of the source, and each ``lstat`` resolves one name
    instead of a whole path.
    """
    try:
        fd = os.open(name, _OPEN_DIRECTORY, dir_fd=parent_fd)
    except OSError as e:
        report.skip(path, f"cannot open directory: {_reason(e)}")
        return None
    try:
        return fd, _list_directory(fd)
    except OSError as e:
        os.close(fd)
        report.skip(path, f"cannot list directory: {_reason(e)}")
        return None


def _skip_set(directories: Collection[str]) -> frozenset[tuple[int, int]]:
    identities = set()
    for directory in directories:
        try:
            info = os.stat(directory)
        except OSError:
            continue
        identities.add((info.st_dev, info.st_ino))
    return frozenset(identities)


def _unavailable(root: WalkRoot, report: WalkReport, error: OSError) -> None:
    report.skip(root.path, f"source folder cannot be read: {_reason(error)}")
    report.unavailable_sources.append(root.name)


def walk_root(
    root: WalkRoot,
    report: WalkReport,
    skip_directories: frozenset[tuple[int, int]] = frozenset(),
) -> Iterator[FileEntry]:
    """The files of one source folder, in manifest order.

    ``skip_directories`` holds (device, inode) pairs of directories never
    entered (the node directory, when a source contains it).
    """
    # The source folder itself may be a symbolic link the user chose.
    try:
        top_fd = os.open(root.path, _OPEN_DIRECTORY & ~os.O_NOFOLLOW)
    except OSError as e:
        _unavailable(root, report, e)
        return
    try:
        top = _list_directory(top_fd)
    except OSError as e:
        os.close(top_fd)
        _unavailable(root, report, e)
        return
    excludes = root.excludes if root.excludes else None
    skip_inodes = {inode for _device, inode in skip_directories}
    prefix = root.name + "/"
    top_path = root.path.rstrip("/") + "/"
    # One frame per open directory: its descriptor, its path and relative
    # path (each ending in "/", the relative one "" at the top), and its
    # children not visited yet.
    stack: list[tuple[int, str, str, Iterator[_Child]]] = [
        (top_fd, top_path, "", iter(top))
    ]
    try:
        while stack:
            fd, dir_path, relative_dir, remaining = stack[-1]
            for _key, entry, is_dir in remaining:
                name = entry.name
                relative = relative_dir + name
                if excludes is not None and excludes.excluded(relative, name, is_dir):
                    continue
                path = dir_path + name
                full_name = prefix + relative
                if is_dir:
                    if skip_inodes and entry.inode() in skip_inodes:
                        try:
                            info = entry.stat(follow_symlinks=False)
                        except OSError:
                            pass
                        else:
                            if (info.st_dev, info.st_ino) in skip_directories:
                                continue
                    if not (
                        name.isascii()
                        and "\\" not in name
                        and len(name) <= MAX_COMPONENT_BYTES
                        and len(full_name) <= MAX_NAME_BYTES
                    ):
                        try:
                            validate_name(full_name)
                        except InvalidFileName as e:
                            report.skip(path, str(e))
                            continue
                    opened = _open_directory(name, fd, path, report)
                    if opened is None:
                        report.unreadable_directories.append(full_name + "/")
                    else:
                        child_fd, children = opened
                        stack.append(
                            (child_fd, path + "/", relative + "/", iter(children))
                        )
                        break
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError as e:
                    report.skip(path, f"cannot stat: {_reason(e)}")
                    continue
                mode = info.st_mode
                if not stat.S_ISREG(mode):
                    report.skip(path, _kind(mode))
                    continue
                # Inline, as it runs per file: an exact fast test that
                # validate_name accepts full_name (the directory part was
                # accepted already; an ASCII component has bytes =
                # characters); anything else goes to validate_name itself.
                if not (
                    name.isascii()
                    and "\\" not in name
                    and len(name) <= MAX_COMPONENT_BYTES
                    and len(full_name) <= MAX_NAME_BYTES
                ):
                    try:
                        validate_name(full_name)
                    except InvalidFileName as e:
                        report.skip(path, str(e))
                        continue
                yield FileEntry(
                    full_name,
                    path,
                    info.st_size,
                    stat.S_IMODE(mode),
                    info.st_mtime_ns,
                    info.st_ctime_ns,
                    info.st_ino,
                    info.st_dev,
                )
            else:
                stack.pop()
                os.close(fd)
    finally:
        # Reached when the consumer stops early (or an error escapes).
        for fd, *_rest in stack:
            os.close(fd)


def walk_sources(
    roots: Iterable[WalkRoot],
    report: WalkReport,
    skip_directories: Collection[str] = (),
) -> Iterator[FileEntry]:
    """The files of every source, in one sequence in manifest order.

    The prefixes must be distinct single names (``sources.config`` checks
    it); ``skip_directories`` are paths of directories never entered.
    """
    ordered = sorted(roots, key=lambda root: root.name)
    names = [root.name for root in ordered]
    if len(set(names)) != len(names):
        raise ValueError(f"source names are not unique: {names}")
    for root in ordered:
        if "/" in root.name:
            raise ValueError(f"source name {root.name!r} contains '/'")
    skip = _skip_set(skip_directories)
    for root in ordered:
        yield from walk_root(root, report, skip)


class FileChanged(OSError):
    """The file at an entry's path is no longer the file that was walked."""


def open_entry(entry: FileEntry) -> BinaryIO:
    """Open the walked file for reading, refusing a swapped-in replacement.

    ``O_NOFOLLOW`` refuses a symbolic link put in its place, ``O_NONBLOCK``
    keeps a FIFO put in its place from blocking the open, and the inode and
    device must still be the entry's. The caller records an ``OSError``
    (``FileChanged`` included) with ``WalkReport.skip`` and goes on.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(entry.path, flags)
    try:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_ino != entry.inode
            or info.st_dev != entry.device
        ):
            raise FileChanged(f"{entry.path} was replaced during the backup")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
