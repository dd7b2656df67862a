"""An open update's changes, kept on disk so memory stays flat for any update.

An update may add a million small files or one 20 GiB file; holding every
file's record and every section's entry until commit would grow without
bound. The journal keeps both in two temp files under the content directory
(named with TEMP_SUFFIX, so a crash leaves nothing ``ContentStore.open``
does not remove):

* **entries**: the 88-byte tree entries of every section the pipeline
  stored, in the order it stored them (length, ciphertext hash, private
  field: what replicas see in the tree anyway, so stored plain). A file's
  sections are one or more *extents* (first entry, count) of this file; one
  when files are written one at a time.
* **runs**: the update's operations on names (write, remove, keep), in
  sorted runs. Names and file metadata are secret, so runs are written in
  blocks sealed with AES-256-GCM under a random key that exists only in
  this process's memory: a crash leaves bytes nobody can read, and the key
  never reaches the disk. Operations are buffered until ``RUN_OPERATIONS``
  of them, sorted by (sort key, sequence) and written as one run.

``changes`` merges the runs and the buffer (``heapq.merge``) into one
stream in manifest order, one ``Change`` per name: the last operation on a
name wins. Memory: the buffer (at most RUN_OPERATIONS operations), one
block per run while merging, a read window of entries.

Threads: the pipeline's worker appends entries while the caller adds
operations; the update serializes the worker's appends with garbage
collection's reads (``Update.claim_lock``), and commit reads after the
worker has stopped.
"""

from __future__ import annotations

import heapq
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from barterbackup.content.manifest import FileRecord, sort_key
from barterbackup.store.atomic import TEMP_SUFFIX
from barterbackup.tree import ENTRY_BYTES

# Operations buffered in memory before they are sorted and written as a run
# (~300-500 bytes each while buffered).
RUN_OPERATIONS = 16384
# A run's sealed blocks hold about this much plaintext (one operation may
# make a block longer).
BLOCK_BYTES = 64 * 1024
# Entries are written, and read back at commit, this many bytes at a time.
ENTRY_BUFFER_BYTES = 1024 * 1024
JOURNAL_AD = b"barterbackup v1 update journal\x00"
JOURNAL_KEY_BYTES = 32

_NAME_HEADER = struct.Struct(">H")
_OPERATION = struct.Struct(">QB")
_FIELDS = struct.Struct(">QIqqQQQI")
_EXTENT = struct.Struct(">QQ")
_BLOCK_HEADER = struct.Struct(">I")


class Operation(IntEnum):
    """What an update does to one name."""

    WRITE = 1
    REMOVE = 2
    KEEP = 3


@dataclass(slots=True)
class PendingFile:
    """A file being written: its metadata, and its sections as they land."""

    name: str
    mode: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int
    size: int = 0
    section_count: int = 0
    extents: list[list[int]] = field(default_factory=list)

    def add_extent(self, first: int, count: int) -> None:
        """Record ``count`` more sections at entry ``first`` (worker thread)."""
        last = self.extents[-1] if self.extents else None
        if last is not None and last[0] + last[1] == first:
            last[1] += count
        else:
            self.extents.append([first, count])
        self.section_count += count

    def record(self) -> FileRecord:
        return FileRecord(
            self.name,
            self.size,
            self.mode,
            self.mtime_ns,
            self.ctime_ns,
            self.inode,
            self.device,
            self.section_count,
        )


@dataclass(frozen=True, slots=True)
class Change:
    """The outcome of an update for one name (the last operation on it)."""

    name: str
    key: bytes
    operation: Operation
    # WRITE only: the new record and where its entries are.
    record: FileRecord | None = None
    extents: tuple[tuple[int, int], ...] = ()
    # Whether the name was written earlier in the update (a removal of a
    # name written in the same update is valid without a previous record).
    written_before: bool = False


# A journaled operation as merged: (sort key, sequence, operation, name,
# record fields or None, extents). Sequences are unique, so tuples order by
# (key, sequence) without looking further.
_Item = tuple[bytes, int, int, str, tuple[int, ...] | None, tuple[tuple[int, int], ...]]


class UpdateJournal:
    """The temp files of one update (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        random_bytes: Callable[[int], bytes],
        before_run: Callable[[], None] = lambda: None,
    ) -> None:
        token = random_bytes(8).hex()
        self._entries_path = directory / f".update-{token}.entries{TEMP_SUFFIX}"
        self._runs_path = directory / f".update-{token}.runs{TEMP_SUFFIX}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        self._entries_fd = os.open(self._entries_path, flags, 0o600)
        try:
            self._runs_fd = os.open(self._runs_path, flags, 0o600)
        except BaseException:
            os.close(self._entries_fd)
            self._entries_path.unlink(missing_ok=True)
            raise
        self._aead = AESGCM(random_bytes(JOURNAL_KEY_BYTES))
        self._before_run = before_run
        self._entry_buffer = bytearray()
        self._entries_written = 0  # entries on disk
        self._window_first = 0
        self._window = b""
        self._buffer: list[tuple[bytes, int, Operation, str, PendingFile | None]] = []
        self._runs: list[tuple[int, int]] = []  # (offset, blocks)
        self._runs_size = 0
        self._blocks_sealed = 0
        self._sequence = 0
        self.operations = 0
        self.closed = False

    # -- entries ----------------------------------------------------------

    @property
    def entry_count(self) -> int:
        return self._entries_written + len(self._entry_buffer) // ENTRY_BYTES

    def append_entries(self, packed: bytes | bytearray | memoryview) -> int:
        """Append packed entries; the index of the first."""
        first = self.entry_count
        self._entry_buffer += packed
        if len(self._entry_buffer) >= ENTRY_BUFFER_BYTES:
            self._flush_entries()
        return first

    def _flush_entries(self) -> None:
        if self._entry_buffer:
            _write_all(self._entries_fd, self._entry_buffer)
            self._entries_written += len(self._entry_buffer) // ENTRY_BYTES
            self._entry_buffer = bytearray()

    def read_entries(self, first: int, count: int) -> bytes:
        """Packed entries [first, first + count), through a read window.

        Files written in name order are read back in order, so consecutive
        calls mostly slice the window (one pread per ENTRY_BUFFER_BYTES).
        """
        self._flush_entries()
        if not 0 <= first <= first + count <= self._entries_written:
            raise ValueError(f"entries [{first}, {first + count}) are not journaled")
        start = (first - self._window_first) * ENTRY_BYTES
        end = start + count * ENTRY_BYTES
        if start < 0 or end > len(self._window):
            available = (self._entries_written - first) * ENTRY_BYTES
            size = min(max(count * ENTRY_BYTES, ENTRY_BUFFER_BYTES), available)
            self._window = _read_exact(self._entries_fd, size, first * ENTRY_BYTES)
            self._window_first = first
            start, end = 0, count * ENTRY_BYTES
        return self._window[start:end]

    def iter_entry_hashes(self) -> Iterator[bytes]:
        """The ciphertext hash of every journaled entry (for gc marking)."""
        self._flush_entries()
        chunk = ENTRY_BUFFER_BYTES // ENTRY_BYTES * ENTRY_BYTES
        total = self._entries_written * ENTRY_BYTES
        for offset in range(0, total, chunk):
            data = _read_exact(self._entries_fd, min(chunk, total - offset), offset)
            for start in range(8, len(data), ENTRY_BYTES):
                yield data[start : start + 32]

    # -- operations -------------------------------------------------------

    def write(self, pending: PendingFile) -> None:
        """A file was written (its entries may still be on their way)."""
        self._add(Operation.WRITE, pending.name, pending)

    def remove(self, name: str) -> None:
        self._add(Operation.REMOVE, name, None)

    def keep(self, name: str) -> None:
        self._add(Operation.KEEP, name, None)

    def _add(
        self, operation: Operation, name: str, pending: PendingFile | None
    ) -> None:
        self._check_open()
        self._sequence += 1
        self.operations += 1
        self._buffer.append((sort_key(name), self._sequence, operation, name, pending))
        if len(self._buffer) >= RUN_OPERATIONS:
            self._write_run()

    def _write_run(self) -> None:
        # Entries of buffered files must have landed: their extents are
        # written into the run.
        self._before_run()
        self._buffer.sort(key=lambda item: (item[0], item[1]))
        start, blocks = self._runs_size, 0
        block = bytearray()
        for item in self._buffer:
            block += _encode(item)
            if len(block) >= BLOCK_BYTES:
                self._seal_block(block)
                blocks += 1
                block = bytearray()
        if block:
            self._seal_block(block)
            blocks += 1
        self._runs.append((start, blocks))
        self._buffer = []

    def _seal_block(self, block: bytearray) -> None:
        nonce = self._blocks_sealed.to_bytes(12, "big")
        self._blocks_sealed += 1
        sealed = self._aead.encrypt(nonce, bytes(block), JOURNAL_AD)
        data = _BLOCK_HEADER.pack(len(sealed)) + sealed
        _write_all(self._runs_fd, data)
        self._runs_size += len(data)

    def _read_run(self, offset: int, blocks: int, first_block: int) -> Iterator[_Item]:
        for number in range(first_block, first_block + blocks):
            (size,) = _BLOCK_HEADER.unpack(
                _read_exact(self._runs_fd, _BLOCK_HEADER.size, offset)
            )
            sealed = _read_exact(self._runs_fd, size, offset + _BLOCK_HEADER.size)
            offset += _BLOCK_HEADER.size + size
            try:
                plain = self._aead.decrypt(
                    number.to_bytes(12, "big"), sealed, JOURNAL_AD
                )
            except InvalidTag:
                raise OSError(
                    f"update journal {self._runs_path} was changed on disk"
                ) from None
            yield from _decode(plain)

    def _buffered(self) -> Iterator[_Item]:
        self._buffer.sort(key=lambda item: (item[0], item[1]))
        for key, sequence, operation, name, pending in self._buffer:
            fields, extents = _fields_of(pending)
            yield key, sequence, int(operation), name, fields, extents

    def changes(self) -> Iterator[Change]:
        """One Change per name, in manifest order; call once, at commit
        (after every file's entries have landed)."""
        self._check_open()
        streams: list[Iterator[_Item]] = []
        block = 0
        for offset, blocks in self._runs:
            streams.append(self._read_run(offset, blocks, block))
            block += blocks
        streams.append(self._buffered())
        group: list[_Item] = []
        for item in heapq.merge(*streams):
            if group and item[0] != group[0][0]:
                yield _change_of(group)
                group = []
            group.append(item)
        if group:
            yield _change_of(group)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("this update journal is closed")

    def close(self) -> None:
        """Delete the temp files (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._buffer = []
        self._window = b""
        os.close(self._entries_fd)
        os.close(self._runs_fd)
        self._entries_path.unlink(missing_ok=True)
        self._runs_path.unlink(missing_ok=True)


def _fields_of(
    pending: PendingFile | None,
) -> tuple[tuple[int, ...] | None, tuple[tuple[int, int], ...]]:
    if pending is None:
        return None, ()
    fields = (
        pending.size,
        pending.mode,
        pending.mtime_ns,
        pending.ctime_ns,
        pending.inode,
        pending.device,
        pending.section_count,
    )
    return fields, tuple((first, count) for first, count in pending.extents)


def _encode(item: tuple[bytes, int, Operation, str, PendingFile | None]) -> bytes:
    _, sequence, operation, name, pending = item
    encoded = name.encode("utf-8")
    parts = [
        _NAME_HEADER.pack(len(encoded)),
        encoded,
        _OPERATION.pack(sequence, operation),
    ]
    fields, extents = _fields_of(pending)
    if fields is not None:
        parts.append(_FIELDS.pack(*fields, len(extents)))
        parts.extend(_EXTENT.pack(first, count) for first, count in extents)
    return b"".join(parts)


def _decode(plain: bytes) -> Iterator[_Item]:
    position, size = 0, len(plain)
    while position < size:
        (length,) = _NAME_HEADER.unpack_from(plain, position)
        position += _NAME_HEADER.size
        name_bytes = plain[position : position + length]
        position += length
        sequence, operation = _OPERATION.unpack_from(plain, position)
        position += _OPERATION.size
        fields: tuple[int, ...] | None = None
        extents: tuple[tuple[int, int], ...] = ()
        if operation == Operation.WRITE:
            *values, extent_count = _FIELDS.unpack_from(plain, position)
            position += _FIELDS.size
            fields = tuple(values)
            extents = tuple(
                _EXTENT.unpack_from(plain, position + _EXTENT.size * number)
                for number in range(extent_count)
            )
            position += _EXTENT.size * extent_count
        name = name_bytes.decode("utf-8")
        yield sort_key(name), sequence, operation, name, fields, extents


def _change_of(group: list[_Item]) -> Change:
    key, _, operation, name, fields, extents = group[-1]
    written_before = any(item[2] == Operation.WRITE for item in group[:-1])
    if operation == Operation.WRITE:
        assert fields is not None
        return Change(
            name,
            key,
            Operation.WRITE,
            FileRecord(name, *fields),
            extents,
            written_before,
        )
    return Change(name, key, Operation(operation), written_before=written_before)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"update journal is truncated at byte {offset + len(data)}")
    return data
