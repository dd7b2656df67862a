"""Pack files: where encrypted sections live on disk, found by hash.

One file per section would cost ~70 µs of file creation per 16 KiB section
here (240 MB/s), far below the packing goal, so sections are appended to pack
files instead. Each pack ``<id>.pack`` (concatenated ciphertext sections) has
an index ``<id>.idx`` of fixed 48-byte entries: ciphertext SHA-256 (32) ‖
offset (u64 big-endian) ‖ length (u64 big-endian). A pack is visible only once
its index exists: the pack is written under a temp name, fsynced, renamed,
and only then its index is written atomically; a pack without an index is a
crash leftover and is deleted at open. Everything read back is checked
against its hash before it is returned.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from barterbackup.store.atomic import (
    TEMP_SUFFIX,
    atomic_delete,
    atomic_write,
    fsync_directory,
)

INDEX_ENTRY = struct.Struct(">32sQQ")
PACK_SUFFIX = ".pack"
INDEX_SUFFIX = ".idx"
# Packs roll over at this size so garbage collection rewrites bounded files.
PACK_TARGET_BYTES = 256 * 1024 * 1024
# A pack is rewritten by gc once this fraction of it is garbage; below that
# its dead sections are only dropped from its index (no longer served).
REPACK_DEAD_FRACTION = 0.25
# A location packs pack number, offset and length into one int (compact: the
# index holds one entry per section of every kept revision).
_OFFSET_SHIFT = 24
_PACK_SHIFT = 64


class SectionCorrupt(Exception):
    """A stored section does not match its hash (or cannot be read)."""


class SectionMissing(LookupError):
    """No stored section has this hash."""


class PackWriter:
    """Appends ciphertext sections to a new pack under a temp name."""

    def __init__(self, directory: Path) -> None:
        self.pack_id = secrets.token_hex(8)
        self.directory = directory
        self.final_path = directory / f"{self.pack_id}{PACK_SUFFIX}"
        self.temp_path = directory / f".{self.pack_id}{PACK_SUFFIX}{TEMP_SUFFIX}"
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self.size = 0
        self.entries = bytearray()

    def append(
        self, data: memoryview | bytes, hashes: Iterable[tuple[bytes, int]]
    ) -> None:
        """Write ``data``: consecutive sections given as (sha256, length)."""
        offset = self.size
        for sha256, length in hashes:
            self.entries += INDEX_ENTRY.pack(sha256, offset, length)
            offset += length
        self._file.write(data)
        self.size = offset

    def finish(self) -> None:
        """Make the pack's bytes durable (still under its temp name)."""
        if not self._file.closed:
            os.fsync(self._file.fileno())
            self._file.close()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.temp_path.unlink(missing_ok=True)


class PackStore:
    """All packs of one directory, with an in-memory hash → location index."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._pack_ids: dict[int, str] = {}
        self._next_pack_number = 0
        self._index: dict[bytes, int] = {}
        self._fds: dict[int, int] = {}
        self.bytes_read = 0
        for index_path in sorted(directory.glob(f"*{INDEX_SUFFIX}")):
            pack_id = index_path.name[: -len(INDEX_SUFFIX)]
            if not (directory / f"{pack_id}{PACK_SUFFIX}").exists():
                raise SectionCorrupt(f"pack index {index_path} has no pack file")
            self._load_index(pack_id, index_path.read_bytes())
        for pack_path in directory.glob(f"*{PACK_SUFFIX}"):
            if not (directory / f"{pack_path.stem}{INDEX_SUFFIX}").exists():
                # Renamed but its index never written: a crash leftover that
                # no revision can reference.
                atomic_delete(pack_path)

    def _load_index(self, pack_id: str, raw: bytes) -> None:
        if len(raw) % INDEX_ENTRY.size:
            raise SectionCorrupt(f"pack index {pack_id}{INDEX_SUFFIX} is truncated")
        number = self._next_pack_number
        self._next_pack_number += 1
        self._pack_ids[number] = pack_id
        for sha256, offset, length in INDEX_ENTRY.iter_unpack(raw):
            self._index.setdefault(
                sha256, (number << _PACK_SHIFT) | (offset << _OFFSET_SHIFT) | length
            )

    def has(self, sha256: bytes) -> bool:
        return sha256 in self._index

    def claim(self, sha256: bytes, pins: set[bytes]) -> bool:
        """If stored, add ``sha256`` to ``pins`` (which gc keeps) atomically.

        Check and pin happen under the lock gc holds, so a section found
        here cannot be collected before the update that reuses it commits.
        """
        with self._lock:
            if sha256 in self._index:
                pins.add(sha256)
                return True
            return False

    def __len__(self) -> int:
        return len(self._index)

    def install(self, writer: PackWriter, crash_point: Callable[[int], None]) -> None:
        """Rename a finished pack into place, then publish its index."""
        os.replace(writer.temp_path, writer.final_path)
        fsync_directory(self.directory)
        crash_point(2)
        atomic_write(
            self.directory / f"{writer.pack_id}{INDEX_SUFFIX}", bytes(writer.entries)
        )
        crash_point(3)
        with self._lock:
            self._load_index(writer.pack_id, bytes(writer.entries))

    def _fd(self, number: int) -> int:
        fd = self._fds.get(number)
        if fd is None:
            fd = os.open(
                self.directory / f"{self._pack_ids[number]}{PACK_SUFFIX}", os.O_RDONLY
            )
            self._fds[number] = fd
        return fd

    def read(self, sha256: bytes) -> bytes:
        """The section's ciphertext, checked against ``sha256``."""
        with self._lock:
            location = self._index.get(sha256)
            if location is None:
                raise SectionMissing(f"section {sha256.hex()} is not stored")
            number = location >> _PACK_SHIFT
            fd = self._fd(number)
            pack_path = self.directory / f"{self._pack_ids[number]}{PACK_SUFFIX}"
        offset = (location >> _OFFSET_SHIFT) & (
            (1 << (_PACK_SHIFT - _OFFSET_SHIFT)) - 1
        )
        length = location & ((1 << _OFFSET_SHIFT) - 1)
        data = os.pread(fd, length, offset)
        self.bytes_read += len(data)
        if len(data) != length or hashlib.sha256(data).digest() != sha256:
            raise SectionCorrupt(
                f"section {sha256.hex()} in {pack_path} does not match its hash"
            )
        return data

    def gc(self, live: set[bytes], pins: Iterable[set[bytes]] = ()) -> int:
        """Drop every section not in ``live`` or ``pins``; return bytes freed."""
        freed = 0
        with self._lock:
            live = live.union(*pins)
            for number, pack_id in list(self._pack_ids.items()):
                pack_path = self.directory / f"{pack_id}{PACK_SUFFIX}"
                index_path = self.directory / f"{pack_id}{INDEX_SUFFIX}"
                entries = list(INDEX_ENTRY.iter_unpack(index_path.read_bytes()))
                kept = [entry for entry in entries if entry[0] in live]
                if len(kept) == len(entries):
                    continue
                pack_size = pack_path.stat().st_size
                dead_bytes = pack_size - sum(length for _, _, length in kept)
                self._forget(number)
                if kept and dead_bytes < REPACK_DEAD_FRACTION * pack_size:
                    atomic_write(
                        index_path, b"".join(INDEX_ENTRY.pack(*e) for e in kept)
                    )
                    self._reload(pack_id, index_path)
                    continue
                if kept:
                    self._repack(pack_path, kept)
                # Index first: a pack without an index is an ignored leftover.
                atomic_delete(index_path)
                atomic_delete(pack_path)
                freed += pack_size - (pack_size - dead_bytes if kept else 0)
        return freed

    def _forget(self, number: int) -> None:
        fd = self._fds.pop(number, None)
        if fd is not None:
            os.close(fd)
        del self._pack_ids[number]
        stale = [
            sha256
            for sha256, loc in self._index.items()
            if loc >> _PACK_SHIFT == number
        ]
        for sha256 in stale:
            del self._index[sha256]

    def _reload(self, pack_id: str, index_path: Path) -> None:
        self._load_index(pack_id, index_path.read_bytes())

    def _repack(self, pack_path: Path, kept: list[tuple[bytes, int, int]]) -> None:
        """Copy the live sections of a pack into a new installed pack."""
        writer = PackWriter(self.directory)
        try:
            fd = os.open(pack_path, os.O_RDONLY)
            try:
                for sha256, offset, length in kept:
                    data = os.pread(fd, length, offset)
                    if hashlib.sha256(data).digest() != sha256:
                        raise SectionCorrupt(
                            f"section {sha256.hex()} in {pack_path} is bad"
                        )
                    writer.append(data, [(sha256, length)])
            finally:
                os.close(fd)
            writer.finish()
        except BaseException:
            writer.discard()
            raise
        os.replace(writer.temp_path, writer.final_path)
        fsync_directory(self.directory)
        index_path = self.directory / f"{writer.pack_id}{INDEX_SUFFIX}"
        atomic_write(index_path, bytes(writer.entries))
        self._reload(writer.pack_id, index_path)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
