"""File records of the manifest and the plaintext format of a chunk.

A record describes one file: its name, size, mode, mtime and ctime in full
nanoseconds, inode and device (so the manifest doubles as the files cache:
a backup run re-reads only files whose ``stat_key`` changed), and how many
sections it has. Section counts are relative: a file's first section is
the sum of the counts before it, computed while reading, so inserting a
file changes no later record.

Records are sorted by ``sort_key``: path components compared one by one
(the UTF-8 name with "/" mapped to NUL, which no component contains). That
is the order of a directory walk that lists each directory sorted and
descends in place, so a walk merge-joins with the previous manifest.

Chunk plaintext (format 1)::

    u8 format ‖ u16 record count ‖ records
    record = u16 shared ‖ u16 suffix length ‖ suffix ‖ u64 size ‖ u32 mode
             ‖ i64 mtime_ns ‖ i64 ctime_ns ‖ u64 inode ‖ u64 device
             ‖ u64 section_count

``shared`` is the length of the UTF-8 prefix the name shares with the
previous record's name in the same chunk (0 for the first): sorted paths
share long prefixes, and a chunk decodes on its own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from barterbackup.content.names import (
    MAX_NAME_BYTES,
    InvalidFileName,
    validate_name,
)
from barterbackup.tree import MAX_SECTION_BYTES

CHUNK_FORMAT = 1
# A chunk's plaintext is at most this long (a record is at most ~4.2 KB).
MAX_CHUNK_PLAINTEXT = 64 * 1024
MAX_MODE = 0o7777
_U64 = 2**64 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

_CHUNK_HEADER = struct.Struct(">BH")
_NAME_HEADER = struct.Struct(">HH")
_FIELDS = struct.Struct(">QIqqQQQ")
MAX_RECORD_BYTES = _NAME_HEADER.size + MAX_NAME_BYTES + _FIELDS.size


class ManifestError(ValueError):
    """A manifest record or chunk is not acceptable."""


class InvalidManifest(ManifestError):
    """Stored or received manifest data is malformed, tampered or foreign."""


def sort_key(name: str) -> bytes:
    """The manifest's order: component by component (``"a/b" < "a-b"``)."""
    return name.encode("utf-8").replace(b"/", b"\x00")


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One file of the manifest."""

    name: str
    size: int
    mode: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int
    section_count: int

    def __post_init__(self) -> None:
        try:
            validate_name(self.name)
        except InvalidFileName as error:
            raise ManifestError(str(error)) from None
        size, sections = self.size, self.section_count
        # Plain comparisons (no loop over field names): records are decoded
        # by the million. A non-int fails the comparison or the type check.
        if not (
            type(size) is int
            and type(self.mode) is int
            and type(self.mtime_ns) is int
            and type(self.ctime_ns) is int
            and type(self.inode) is int
            and type(self.device) is int
            and type(sections) is int
            and 0 <= size <= _I64_MAX
            and 0 <= self.mode <= MAX_MODE
            and _I64_MIN <= self.mtime_ns <= _I64_MAX
            and _I64_MIN <= self.ctime_ns <= _I64_MAX
            and 0 <= self.inode <= _U64
            and 0 <= self.device <= _U64
            and 0 <= sections <= _I64_MAX
        ):
            raise ManifestError(f"file {self.name!r}: a field is out of range")
        if (size == 0) != (sections == 0) or sections > size:
            raise ManifestError(
                f"file {self.name!r}: {sections} sections cannot hold {size} bytes"
            )
        if size > sections * MAX_SECTION_BYTES:
            raise ManifestError(
                f"file {self.name!r}: {sections} sections cannot hold {size} bytes"
            )

    @property
    def stat_key(self) -> tuple[int, int, int, int, int]:
        """(size, mtime_ns, ctime_ns, inode, device): equal means unchanged."""
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode, self.device)


@dataclass(frozen=True, slots=True)
class PlacedRecord:
    """A record with the absolute index of its first section."""

    record: FileRecord
    first_section: int

    @property
    def stop_section(self) -> int:
        return self.first_section + self.record.section_count


def encode_record(record: FileRecord, previous_name: bytes) -> bytes:
    """A record's bytes, its name sharing a prefix with ``previous_name``."""
    name = record.name.encode("utf-8")
    shared = min(len(name), len(previous_name))
    # The common prefix's length: leading zero bytes of the XOR of the two
    # (C-level big-integer operations, not a Python loop over bytes).
    difference = int.from_bytes(name[:shared]) ^ int.from_bytes(previous_name[:shared])
    shared -= (difference.bit_length() + 7) // 8
    suffix = name[shared:]
    return b"".join(
        (
            _NAME_HEADER.pack(shared, len(suffix)),
            suffix,
            _FIELDS.pack(
                record.size,
                record.mode,
                record.mtime_ns,
                record.ctime_ns,
                record.inode,
                record.device,
                record.section_count,
            ),
        )
    )


def chunk_header(record_count: int) -> bytes:
    return _CHUNK_HEADER.pack(CHUNK_FORMAT, record_count)


CHUNK_HEADER_BYTES = _CHUNK_HEADER.size


def decode_chunk(plaintext: bytes) -> Iterator[FileRecord]:
    """The records of one chunk's plaintext, each checked; InvalidManifest.

    Checks the format, every bound before using it, strictly increasing
    names within the chunk, and that the bytes end exactly after the last
    record.
    """
    for record, _ in decode_chunk_keyed(plaintext):
        yield record


def decode_chunk_keyed(plaintext: bytes) -> Iterator[tuple[FileRecord, bytes]]:
    """``decode_chunk``, each record with its ``sort_key``."""
    size = len(plaintext)
    if size < _CHUNK_HEADER.size or size > MAX_CHUNK_PLAINTEXT:
        raise InvalidManifest(f"manifest chunk of {size} bytes is out of bounds")
    chunk_format, count = _CHUNK_HEADER.unpack_from(plaintext)
    if chunk_format != CHUNK_FORMAT:
        raise InvalidManifest(f"unknown manifest chunk format {chunk_format}")
    if count == 0:
        raise InvalidManifest("manifest chunk holds no record")
    position = _CHUNK_HEADER.size
    previous = b""
    previous_key = b""
    for number in range(count):
        if position + _NAME_HEADER.size > size:
            raise InvalidManifest(f"manifest chunk ends inside record {number}")
        shared, suffix_length = _NAME_HEADER.unpack_from(plaintext, position)
        position += _NAME_HEADER.size
        if shared > len(previous) or (number == 0 and shared):
            raise InvalidManifest(f"manifest record {number} shares a missing prefix")
        if shared + suffix_length > MAX_NAME_BYTES:
            raise InvalidManifest(f"manifest record {number} name is too long")
        end = position + suffix_length
        if end + _FIELDS.size > size:
            raise InvalidManifest(f"manifest chunk ends inside record {number}")
        name = previous[:shared] + plaintext[position:end]
        fields = _FIELDS.unpack_from(plaintext, end)
        position = end + _FIELDS.size
        try:
            text = name.decode("utf-8")
            record = FileRecord(text, *fields)
        except (UnicodeDecodeError, ManifestError) as error:
            raise InvalidManifest(f"manifest record {number}: {error}") from None
        key = sort_key(text)
        if number and key <= previous_key:
            raise InvalidManifest(f"manifest record {text!r} is out of order")
        previous, previous_key = name, key
        yield record, key
    if position != size:
        raise InvalidManifest("manifest chunk has bytes after its last record")
