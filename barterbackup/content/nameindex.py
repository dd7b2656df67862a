"""A revision's name index and file count, kept beside its signed root.

Finding one file by name needs each manifest chunk's first name (and first
section); building that from the manifest reads every chunk, seconds for a
million files. The commit knows both as it writes the chunks, so it keeps
them in ``revisions/<n>.names`` with the file count (``status`` shows it
without reading the manifest):

    sealed = nonce (12) ‖ AES-256-GCM(name index key, nonce, plaintext,
             ad = "barterbackup v1 name index\\0" ‖ content_id)
    plaintext = u8 format (1) ‖ u64 file count ‖ u64 chunk count
                ‖ per chunk: u64 first section ‖ u16 record count
                             ‖ u16 key length ‖ sort key

The names are secret, hence sealed; the associated data binds the index to
the exact revision it describes. It is derived data: if it is missing or
fails to open, the store rebuilds it from the manifest (every chunk is
authenticated there) and writes it again.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

from barterbackup.content.manifest import ManifestIndex
from barterbackup.keys import NodeKeys
from barterbackup.store.atomic import atomic_write
from barterbackup.store.sealed import SealedRecordError, open_sealed, seal

NAME_INDEX_KEY_LABEL = "revision name index aead"
NAME_INDEX_AD_LABEL = b"barterbackup v1 name index\x00"
NAME_INDEX_FORMAT = 1
_HEADER = struct.Struct(">BQQ")
_CHUNK = struct.Struct(">QHH")


class InvalidNameIndex(ValueError):
    """A name index file is missing, tampered, foreign or malformed."""


@dataclass(frozen=True)
class NameIndex:
    """What ``revisions/<n>.names`` holds."""

    file_count: int
    index: ManifestIndex


def name_index_key_of(keys: NodeKeys) -> bytes:
    return keys.subkey(NAME_INDEX_KEY_LABEL)


def encode_name_index(names: NameIndex) -> bytes:
    index = names.index
    parts = [_HEADER.pack(NAME_INDEX_FORMAT, names.file_count, index.chunk_count)]
    for key, first, count in zip(
        index.first_keys, index.first_sections, index.record_counts, strict=True
    ):
        parts.append(_CHUNK.pack(first, count, len(key)))
        parts.append(key)
    return b"".join(parts)


def decode_name_index(plain: bytes) -> NameIndex:
    if len(plain) < _HEADER.size:
        raise InvalidNameIndex("name index is truncated")
    index_format, file_count, chunk_count = _HEADER.unpack_from(plain)
    if index_format != NAME_INDEX_FORMAT:
        raise InvalidNameIndex(f"unknown name index format {index_format}")
    if chunk_count > len(plain) // _CHUNK.size:
        raise InvalidNameIndex("name index counts more chunks than it holds")
    keys: list[bytes] = []
    firsts: array[int] = array("Q")
    counts: array[int] = array("L")
    position = _HEADER.size
    for _ in range(chunk_count):
        if position + _CHUNK.size > len(plain):
            raise InvalidNameIndex("name index is truncated")
        first, count, length = _CHUNK.unpack_from(plain, position)
        position += _CHUNK.size
        key = plain[position : position + length]
        if len(key) != length:
            raise InvalidNameIndex("name index is truncated")
        position += length
        if (keys and key <= keys[-1]) or (firsts and first < firsts[-1]):
            raise InvalidNameIndex("name index is out of order")
        if count == 0:
            raise InvalidNameIndex("name index names an empty chunk")
        keys.append(key)
        firsts.append(first)
        counts.append(count)
    if position != len(plain):
        raise InvalidNameIndex("name index has bytes after its last chunk")
    if sum(counts) != file_count:
        raise InvalidNameIndex("name index chunks do not hold its file count")
    return NameIndex(file_count, ManifestIndex(keys, firsts, counts))


def write_name_index(
    path: Path, key: bytes, content_id: bytes, names: NameIndex
) -> None:
    """Seal and atomically write the index of the revision ``content_id``."""
    sealed = seal(key, encode_name_index(names), NAME_INDEX_AD_LABEL + content_id)
    atomic_write(path, sealed)


def max_name_index_bytes(chunk_count: int) -> int:
    """The most a sealed index of ``chunk_count`` chunks can take."""
    sealing = 12 + 16  # nonce and tag
    return sealing + _HEADER.size + chunk_count * (_CHUNK.size + 0xFFFF)


def read_name_index(
    path: Path, key: bytes, content_id: bytes, chunk_count: int | None = None
) -> NameIndex:
    """The index of the revision ``content_id``; InvalidNameIndex if it is
    missing or fails any check.

    With ``chunk_count`` (the signed manifest's), a file longer than an
    index of that many chunks can be is refused unread: one grown to 2**40
    bytes must not be read into memory (it is rebuilt instead).
    """
    try:
        with path.open("rb") as handle:
            if chunk_count is None:
                sealed = handle.read()
            else:
                most = max_name_index_bytes(chunk_count)
                sealed = handle.read(most + 1)
                if len(sealed) > most:
                    raise InvalidNameIndex(f"name index {path} is too large")
    except FileNotFoundError:
        raise InvalidNameIndex(f"name index {path} is missing") from None
    try:
        plain = open_sealed(
            key, sealed, NAME_INDEX_AD_LABEL + content_id, f"name index {path}"
        )
    except SealedRecordError as error:
        raise InvalidNameIndex(str(error)) from None
    try:
        return decode_name_index(plain)
    except InvalidNameIndex as error:
        raise InvalidNameIndex(f"name index {path}: {error}") from None
