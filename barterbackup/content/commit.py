"""A commit's merge-join: the previous revision and an update's changes → trees.

The previous manifest is streamed in manifest order (``ManifestReader``),
the update's changes too (``UpdateJournal.changes``), and the two are
joined name by name:

* a file the update does not touch (or keeps) keeps its record, and its
  sections are copied from the old section tree with
  ``TreeBuilder.copy_range``; consecutive kept files make one range, so a
  run of unchanged files costs one call, and the builder reuses the old
  tree's subtrees without reading them: only nodes near an edit are read;
* a written file's record is new and its entries come from the journal
  (``add_packed``);
* a removed file is left out.

Records carry relative section counts, so a kept record is unchanged
whatever moves around it. Memory: the builders' open nodes, one old
manifest chunk, the journal's merge buffers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from barterbackup.content.journal import Change, Operation, UpdateJournal
from barterbackup.content.manifest import ManifestWriter, PlacedRecord, sort_key
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

    def keep(self, placed: PlacedRecord) -> None:
        if placed.record.section_count == 0:
            return
        self._flush_new()
        first, stop = placed.first_section, placed.stop_section
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


def merge(
    *,
    old_records: Iterator[PlacedRecord],
    old_sections: TreeRoot | None,
    changes: Iterator[Change],
    journal: UpdateJournal,
    source: NodeSource,
    sections: TreeBuilder,
    manifest: ManifestWriter,
) -> MergeCounts:
    """Feed the new revision's section tree and manifest; the counts.

    Raises NotInPreviousRevision for a removal or keep of a name that is
    neither in the previous revision nor (for a removal) written by the
    update. Old data is read through ``source`` and verified as it goes.
    """
    counts = MergeCounts()
    stream = _SectionStream(sections, old_sections, source)

    def keep(placed: PlacedRecord) -> None:
        stream.keep(placed)
        manifest.add(placed.record)
        counts.files += 1

    old = next(old_records, None)
    old_key = sort_key(old.record.name) if old is not None else b""
    for change in changes:
        while old is not None and old_key < change.key:
            keep(old)
            old = next(old_records, None)
            old_key = sort_key(old.record.name) if old is not None else b""
        previous = None
        if old is not None and old_key == change.key:
            previous = old
            old = next(old_records, None)
            old_key = sort_key(old.record.name) if old is not None else b""
        if change.operation is Operation.WRITE:
            assert change.record is not None
            for first, count in change.extents:
                # In pieces: a 20 GiB file has 1.2 million entries (106 MB).
                for start in range(first, first + count, ADD_BATCH_ENTRIES):
                    piece = min(ADD_BATCH_ENTRIES, first + count - start)
                    stream.add(journal.read_entries(start, piece))
            manifest.add(change.record)
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
            keep(previous)
    while old is not None:
        keep(old)
        old = next(old_records, None)
    stream.finish()
    return counts
