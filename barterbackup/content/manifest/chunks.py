"""The chunked manifest: records → sealed chunks → a chunk tree, and back.

Records (sorted by ``sort_key``) are cut into chunks where a keyed PRF of
a record's name falls below a threshold (on average every
``CHUNK_AVERAGE_RECORDS`` records), or before a record that would take the
chunk's plaintext past ``MAX_CHUNK_PLAINTEXT``. Each chunk is sealed
deterministically (``sealing``) and stored as a blob named by the SHA-256
of its sealed bytes, like a section. The chunk table is a second tree in
the section tree's format (``barterbackup.tree``; entries with ``private`` all
zero), so replicas store, sync and prove both trees the same way. An edit
re-seals only the chunks holding changed records (and at most a neighbour
where a cut moves); every other chunk keeps its bytes.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

from barterbackup.content.manifest.records import (
    CHUNK_HEADER_BYTES,
    MAX_CHUNK_PLAINTEXT,
    FileRecord,
    InvalidManifest,
    ManifestError,
    PlacedRecord,
    chunk_header,
    decode_chunk_keyed,
    encode_record,
    sort_key,
)
from barterbackup.content.manifest.sealing import ChunkSealer, ManifestKeys
from barterbackup.content.names import InvalidFileName, validate_name
from barterbackup.tree import (
    ZERO_PRIVATE,
    Entry,
    InvalidNode,
    NodeCache,
    NodeSink,
    NodeSource,
    TreeBuilder,
    TreeRoot,
    entry_at,
    iter_entries,
)

# Chosen for the 1,000,000-file case: ~16 k chunks of ~4-6 KB, so one
# changed file re-seals and re-sends a few KB, and the chunk tree stays
# ~1.5 MB. Smaller chunks shrink the per-edit cost further but add an
# 88-byte tree entry and a stored blob per chunk.
CHUNK_AVERAGE_RECORDS = 64
_CUT_THRESHOLD = 256 // CHUNK_AVERAGE_RECORDS


class ManifestIndex:
    """Each chunk's first sort key and first section: find a file by name.

    Also each chunk's record count (a commit that copies a chunk unread
    still knows how many files it holds). Built by the writer as it writes,
    or while the manifest is read in full; ~110 bytes a chunk, so about
    1.7 MB for 1,000,000 files (~16 k chunks).
    """

    def __init__(
        self,
        first_keys: list[bytes],
        first_sections: array[int],
        record_counts: array[int],
    ) -> None:
        if not len(first_keys) == len(first_sections) == len(record_counts):
            raise ManifestError("a name index needs one of each per chunk")
        self.first_keys = first_keys
        self.first_sections = first_sections
        self.record_counts = record_counts

    @property
    def chunk_count(self) -> int:
        return len(self.first_keys)

    def chunk_for(self, key: bytes) -> int:
        """The chunk that would hold ``key`` (-1: before the first)."""
        return bisect_right(self.first_keys, key) - 1


@dataclass(frozen=True)
class ManifestSummary:
    """What ``ManifestWriter.finish`` returns: the chunk tree, totals, index."""

    tree: TreeRoot
    file_count: int
    section_count: int
    index: ManifestIndex


class ManifestWriter:
    """Streams sorted records into sealed chunks and the chunk tree.

    ``chunk_sink`` receives each sealed chunk (``put(sha256, bytes)``),
    ``node_sink`` each node of the chunk tree. Records must come in
    ``sort_key`` order, each name once.
    """

    def __init__(
        self,
        keys: ManifestKeys,
        owner_pubkey: bytes,
        chunk_sink: NodeSink,
        node_sink: NodeSink,
    ) -> None:
        self._sealer = ChunkSealer(keys, owner_pubkey)
        self._chunk_sink = chunk_sink
        self._tree = TreeBuilder(node_sink)
        self._records: list[bytes] = []
        self._size = CHUNK_HEADER_BYTES
        self._previous_name = b""
        self._previous_key: bytes | None = None
        self._files = 0
        self._sections = 0
        self._first_keys: list[bytes] = []
        self._first_sections: array[int] = array("Q")
        self._record_counts: array[int] = array("L")
        # After copied chunks: the next record's key must be at least this.
        self._floor: bytes | None = None
        self._finished = False

    @property
    def in_step(self) -> bool:
        """Whether no chunk is open: the next record starts a chunk, as it
        did in any manifest cut at the same place (chunks can be copied)."""
        return not self._records

    def add(self, record: FileRecord) -> None:
        """Append the next file's record."""
        if self._finished:
            raise ManifestError("this manifest is already finished")
        key = sort_key(record.name)
        if (self._previous_key is not None and key <= self._previous_key) or (
            self._floor is not None and key < self._floor
        ):
            raise ManifestError(
                f"file {record.name!r} is out of order or repeated in the manifest"
            )
        self._floor = None
        encoded = encode_record(record, self._previous_name)
        if self._size + len(encoded) > MAX_CHUNK_PLAINTEXT:
            self._close_chunk()
            encoded = encode_record(record, b"")
        if not self._records:
            self._first_keys.append(key)
            self._first_sections.append(self._sections)
        self._records.append(encoded)
        self._size += len(encoded)
        self._previous_name = record.name.encode("utf-8")
        self._previous_key = key
        self._files += 1
        self._sections += record.section_count
        if self._sealer.cut_value(key) < _CUT_THRESHOLD:
            self._close_chunk()

    def copy_chunks(
        self,
        old_tree: TreeRoot,
        start: int,
        stop: int,
        source: NodeSource,
        old_index: ManifestIndex,
        old_section_count: int,
    ) -> None:
        """Append chunks [start, stop) of an old manifest without opening them.

        Only when ``in_step``: a chunk's bytes depend only on its records
        (cuts are a keyed function of names, and a chunk starts its name
        compression afresh), so an unchanged chunk following a cut is exactly
        what re-encoding its records would give. The old chunk tree is
        copied with ``copy_range`` (only nodes at the range's edges are
        read). The next record added must sort at or after the first name
        of old chunk ``stop``.
        """
        if self._finished:
            raise ManifestError("this manifest is already finished")
        if not self.in_step:
            raise ManifestError("chunks are copied only between chunks")
        if not 0 <= start <= stop <= old_index.chunk_count:
            raise ManifestError(f"chunks [{start}, {stop}) are not in the old index")
        if start == stop:
            return
        self._tree.copy_range(old_tree, start, stop, source)
        firsts = old_index.first_sections
        for number in range(start, stop):
            end = firsts[number + 1] if number + 1 < len(firsts) else old_section_count
            self._first_keys.append(old_index.first_keys[number])
            self._first_sections.append(self._sections)
            self._record_counts.append(old_index.record_counts[number])
            self._files += old_index.record_counts[number]
            self._sections += end - firsts[number]
        self._previous_key = None
        self._previous_name = b""
        self._floor = (
            old_index.first_keys[stop] if stop < old_index.chunk_count else None
        )

    def _close_chunk(self) -> None:
        if not self._records:
            return
        self._record_counts.append(len(self._records))
        plaintext = chunk_header(len(self._records)) + b"".join(self._records)
        sealed = self._sealer.seal(plaintext)
        digest = hashlib.sha256(sealed).digest()
        self._chunk_sink.put(digest, sealed)
        self._tree.add(Entry(len(sealed), digest, ZERO_PRIVATE))
        self._records = []
        self._size = CHUNK_HEADER_BYTES
        self._previous_name = b""

    def finish(self) -> ManifestSummary:
        """Seal the last chunk; the chunk tree's root and the totals."""
        if self._finished:
            raise ManifestError("this manifest is already finished")
        self._close_chunk()
        self._finished = True
        index = ManifestIndex(
            self._first_keys, self._first_sections, self._record_counts
        )
        return ManifestSummary(self._tree.finish(), self._files, self._sections, index)


class ManifestReader:
    """Reads one revision's manifest from untrusted sources, verifying all.

    Chunks must match their tree entries (length and SHA-256), open under
    the owner's keys, decode strictly, be sorted across chunks, and their
    section counts must add up to ``section_count`` (the section tree's
    entry count). Everything that is wrong raises InvalidManifest.
    """

    def __init__(
        self,
        tree: TreeRoot,
        keys: ManifestKeys,
        owner_pubkey: bytes,
        node_source: NodeSource,
        chunk_source: NodeSource,
        section_count: int,
        index: ManifestIndex | None = None,
    ) -> None:
        if index is not None and index.chunk_count != tree.entry_count:
            raise InvalidManifest(
                f"name index of {index.chunk_count} chunks for a manifest of "
                f"{tree.entry_count}"
            )
        self._tree = tree
        self._sealer = ChunkSealer(keys, owner_pubkey)
        self._nodes = node_source
        self._chunks = chunk_source
        self._section_count = section_count
        self._index = index
        # The last chunk ``find`` opened: lookups in name order (a run of
        # removals, a files cache) open each chunk once.
        self._cached: tuple[int, dict[bytes, PlacedRecord]] | None = None
        self._node_cache = NodeCache(node_source, 64)

    def _open(self, number: int, entry: Entry) -> Iterator[tuple[FileRecord, bytes]]:
        if entry.private != ZERO_PRIVATE:
            raise InvalidManifest(f"manifest chunk {number} has private data")
        sealed = self._chunks.get(entry.sha256)
        if len(sealed) != entry.length or (
            hashlib.sha256(sealed).digest() != entry.sha256
        ):
            raise InvalidManifest(f"manifest chunk {number} is not the one named")
        return decode_chunk_keyed(self._sealer.open(sealed))

    def records(self) -> Iterator[PlacedRecord]:
        """Every record in order, with its absolute first section.

        The stream is only valid once it has ended without an error: the
        totals are checked after the last record. A complete pass also
        builds the name index (``index``).
        """
        first_keys: list[bytes] = []
        first_sections: array[int] = array("Q")
        record_counts: array[int] = array("L")
        position = 0
        previous: bytes | None = None
        try:
            for number, entry in enumerate(iter_entries(self._tree, self._nodes)):
                for count, (record, key) in enumerate(self._open(number, entry)):
                    if previous is not None and key <= previous:
                        raise InvalidManifest(
                            f"manifest record {record.name!r} is out of order"
                        )
                    if count == 0:
                        first_keys.append(key)
                        first_sections.append(position)
                        record_counts.append(0)
                    record_counts[-1] += 1
                    previous = key
                    if position + record.section_count > self._section_count:
                        raise InvalidManifest("manifest names more sections than exist")
                    yield PlacedRecord(record, position)
                    position += record.section_count
        except InvalidNode as error:
            raise InvalidManifest(f"manifest chunk tree: {error}") from None
        if position != self._section_count:
            raise InvalidManifest(
                f"manifest files hold {position} sections, the table "
                f"{self._section_count}"
            )
        self._index = ManifestIndex(first_keys, first_sections, record_counts)

    def index(self) -> ManifestIndex:
        """The name index, reading the whole manifest once if needed."""
        if self._index is None:
            for _ in self.records():
                pass
        assert self._index is not None
        return self._index

    def find(self, name: str) -> PlacedRecord | None:
        """The record of ``name``, opening one chunk (after the index).

        Not thread-safe (the one-chunk cache): callers serialize lookups.
        """
        try:
            validate_name(name)
        except InvalidFileName as error:
            raise ManifestError(str(error)) from None
        index = self.index()
        key = sort_key(name)
        number = index.chunk_for(key)
        if number < 0:
            return None
        if self._cached is None or self._cached[0] != number:
            placed: dict[bytes, PlacedRecord] = {}
            position = index.first_sections[number]
            for record, record_key in self.chunk_records(number):
                placed[record_key] = PlacedRecord(record, position)
                position += record.section_count
            self._cached = (number, placed)
        return self._cached[1].get(key)

    def chunk_records(self, number: int) -> list[tuple[FileRecord, bytes]]:
        """The records of chunk ``number`` with their sort keys, checked
        against the name index (opens one chunk)."""
        index = self.index()
        if not 0 <= number < index.chunk_count:
            raise IndexError(f"manifest chunk {number} does not exist")
        try:
            entry = entry_at(self._tree, number, self._nodes, self._node_cache).entry
        except InvalidNode as error:
            raise InvalidManifest(f"manifest chunk tree: {error}") from None
        records = list(self._open(number, entry))
        if (
            records[0][1] != index.first_keys[number]
            or len(records) != index.record_counts[number]
        ):
            raise InvalidManifest(
                f"manifest chunk {number} is not the one its index describes"
            )
        return records
