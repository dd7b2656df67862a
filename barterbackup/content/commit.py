"""A commit's merge-join: the previous revision and an update's changes → trees.

The previous manifest is walked chunk by chunk in manifest order, the
update's changes (``UpdateJournal.changes``) too, and the two are joined:

* a run of old chunks whose name ranges hold no change is copied unread
  (``ManifestWriter.copy_chunks``) whenever the writer is between chunks,
  and their files' sections with one ``TreeBuilder.copy_range``: a small
  change in a million files opens only the chunks it touches;
* a chunk a change falls in is opened and merged record by record: a file
  the update does not touch (or keeps) keeps its record and its section
  range (consecutive ranges coalesce into one ``copy_range``, which reuses
  the old tree's subtrees and reads only nodes near an edit); a written
  file's record is new and its entries come from the journal
  (``add_packed``); a removed file is left out.

Which chunk a name falls in is known from the name index (each chunk's
first name, first section and record count), kept with the revision.
Records carry relative section counts, so a kept record is unchanged
whatever moves around it. Memory: the builders' open nodes, one old chunk,
the journal's merge buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from barterbackup.content.journal import Change, Operation, UpdateJournal
from barterbackup.content.manifest import (
    FileRecord,
    InvalidManifest,
    ManifestIndex,
    ManifestWriter,
    PlacedRecord,
)
from barterbackup.tree import ENTRY_BYTES, NodeSource, TreeBuilder, TreeRoot

# New entries are handed to the tree builder in runs of about this many.
ADD_BATCH_ENTRIES = 4096


class NotInPreviousRevision(LookupError):
    """An update removed or kept a name the previous revision lacks."""


@dataclass
class MergeCounts:
    """What the merge did, for the commit's result."""

    files_written: int = 0
    files_removed: int = 0
    bytes_written: int = 0
    files: int = 0
    chunks_opened: int = 0
    chunks_copied: int = 0


@dataclass(frozen=True)
class OldRevision:
    """What the merge needs of the previous revision."""

    sections: TreeRoot
    manifest: TreeRoot
    index: ManifestIndex
    section_count: int
    # The records of one chunk with their sort keys (verified).
    open_chunk: Callable[[int], list[tuple[FileRecord, bytes]]]


class _SectionStream:
    """Feeds the section builder: old ranges coalesced, new entries batched."""

    def __init__(
        self, builder: TreeBuilder, old: TreeRoot | None, source: NodeSource
    ) -> None:
        self._builder = builder
        self._old = old
        self._source = source
        self._copy: tuple[int, int] | None = None
        self._new = bytearray()

    def keep(self, first: int, stop: int) -> None:
        """Sections [first, stop) of the old tree come next."""
        if first == stop:
            return
        self._flush_new()
        if self._copy is not None and self._copy[1] == first:
            self._copy = (self._copy[0], stop)
            return
        self._flush_copy()
        self._copy = (first, stop)

    def add(self, packed: bytes) -> None:
        self._flush_copy()
        self._new += packed
        if len(self._new) >= ADD_BATCH_ENTRIES * ENTRY_BYTES:
            self._flush_new()

    def _flush_copy(self) -> None:
        if self._copy is not None:
            assert self._old is not None
            self._builder.copy_range(self._old, *self._copy, self._source)
            self._copy = None

    def _flush_new(self) -> None:
        if self._new:
            self._builder.add_packed(self._new)
            self._new = bytearray()

    def finish(self) -> None:
        self._flush_copy()
        self._flush_new()


class _Merge:
    def __init__(
        self,
        old: OldRevision | None,
        changes: Iterator[Change],
        journal: UpdateJournal,
        source: NodeSource,
        sections: TreeBuilder,
        manifest: ManifestWriter,
    ) -> None:
        self.old = old
        self.changes = changes
        self.journal = journal
        self.source = source
        self.manifest = manifest
        self.stream = _SectionStream(
            sections, old.sections if old is not None else None, source
        )
        self.counts = MergeCounts()
        self.next: Change | None = next(changes, None)

    def advance(self) -> Change:
        change = self.next
        assert change is not None
        self.next = next(self.changes, None)
        return change

    def keep(self, placed: PlacedRecord) -> None:
        self.stream.keep(placed.first_section, placed.stop_section)
        self.manifest.add(placed.record)
        self.counts.files += 1

    def apply(self, change: Change, previous: PlacedRecord | None) -> None:
        counts = self.counts
        if change.operation is Operation.WRITE:
            assert change.record is not None
            for first, count in change.extents:
                # In pieces: a 20 GiB file has 1.2 million entries (106 MB).
                for start in range(first, first + count, ADD_BATCH_ENTRIES):
                    piece = min(ADD_BATCH_ENTRIES, first + count - start)
                    self.stream.add(self.journal.read_entries(start, piece))
            self.manifest.add(change.record)
            counts.files += 1
            counts.files_written += 1
            counts.bytes_written += change.record.size
        elif change.operation is Operation.REMOVE:
            if previous is None and not change.written_before:
                raise NotInPreviousRevision(change.name)
            counts.files_removed += previous is not None
        else:
            if previous is None:
                raise NotInPreviousRevision(change.name)
            self.keep(previous)

    def apply_new_below(self, bound: bytes | None) -> None:
        """Apply the changes of names before ``bound`` (None: all), which no
        old record has."""
        while self.next is not None and (bound is None or self.next.key < bound):
            self.apply(self.advance(), None)

    def run(self) -> MergeCounts:
        old = self.old
        if old is None:
            self.apply_new_below(None)
        else:
            self.merge_chunks(old)
        self.stream.finish()
        return self.counts

    def merge_chunks(self, old: OldRevision) -> None:
        index = old.index
        chunks = index.chunk_count
        keys = index.first_keys

        def bound(number: int) -> bytes | None:
            return keys[number] if number < chunks else None

        def first_section(number: int) -> int:
            if number < chunks:
                return index.first_sections[number]
            return old.section_count

        def untouched(number: int) -> bool:
            upper = bound(number + 1)
            return self.next is None or (upper is not None and self.next.key >= upper)

        self.apply_new_below(bound(0))
        number = 0
        while number < chunks:
            if self.manifest.in_step and untouched(number):
                stop = number + 1
                while stop < chunks and untouched(stop):
                    stop += 1
                self.manifest.copy_chunks(
                    old.manifest, number, stop, self.source, index, old.section_count
                )
                self.stream.keep(first_section(number), first_section(stop))
                self.counts.files += sum(index.record_counts[number:stop])
                self.counts.chunks_copied += stop - number
                number = stop
                continue
            end = self.merge_chunk(old, number, first_section(number))
            if end != first_section(number + 1):
                raise InvalidManifest(
                    f"manifest chunk {number} holds other sections than its index says"
                )
            self.apply_new_below(bound(number + 1))
            number += 1

    def merge_chunk(self, old: OldRevision, number: int, position: int) -> int:
        """Merge one old chunk's records with the changes among them; the
        section index after its last record."""
        self.counts.chunks_opened += 1
        for record, key in old.open_chunk(number):
            placed = PlacedRecord(record, position)
            position += record.section_count
            while self.next is not None and self.next.key < key:
                self.apply(self.advance(), None)
            if self.next is not None and self.next.key == key:
                self.apply(self.advance(), placed)
            else:
                self.keep(placed)
        return position


def merge(
    *,
    old: OldRevision | None,
    changes: Iterator[Change],
    journal: UpdateJournal,
    source: NodeSource,
    sections: TreeBuilder,
    manifest: ManifestWriter,
) -> MergeCounts:
    """Feed the new revision's section tree and manifest; the counts.

    Raises NotInPreviousRevision for a removal or keep of a name that is
    neither in the previous revision nor (for a removal) written by the
    update, and InvalidManifest if the old manifest disagrees with its
    index. Old data is read through ``source`` and verified as it goes.
    """
    return _Merge(old, changes, journal, source, sections, manifest).run()
