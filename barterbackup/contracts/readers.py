"""The readers spot checks use, over a revision's section tree and its blobs.

Both sides of a check read the same way: the revision's signed root names
the section tree; ``entry_at_offset`` over the tree nodes finds the section
holding a content byte, and the section's ciphertext comes from the blob
store (ours for the owner, the replica store for the replica). Everything
read is verified: tree nodes by the tree readers, blobs by the store.

``TreeContent`` implements all three protocols of ``heldcontent``
(``ContentReader``, ``SectionReader``, ``SectionIndex``) for one revision.
It is made for one check and thrown away (the owner may hand it a longer
lived ``CachedNodes`` of its current revision, shared by the checks of all
its contracts): it caches the tree nodes it read,
decoded and verified once (bounded by bytes), and the last section,
because a check's positions are sorted and neighbouring positions share
their path and often their section. Without the cache every position
would hash and decode its whole path again: 460 positions over a 4-level
tree made 1,840 node decodes per side and check.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from itertools import accumulate

from barterbackup.contracts.heldcontent import SectionEntry
from barterbackup.contracts.samplecheck import audit_samples_of_private
from barterbackup.revisions import VerifiedRevision
from barterbackup.tree import Entry, NodeRef
from barterbackup.tree.nodes import Internal, Leaf, decode_node

# Tree nodes kept per check: a path is a handful of nodes of ~1 KiB; 4 MiB
# holds the upper levels of any tree and bounds what a check can hold.
NODE_CACHE_BYTES = 4 * 1024 * 1024

# read_blob(sha256) -> the blob's verified bytes; raises when it is missing.
ReadBlob = Callable[[bytes], bytes]


class DataMissing(Exception):
    """A blob the revision needs is not held (or is damaged)."""


class CachedNodes:
    """Decoded, verified tree nodes over ``read_blob``, bounded by bytes.

    Keyed by the whole reference (hash and position): a node is verified
    against what its parent promised, and equal subtrees can sit at several
    positions.
    """

    def __init__(
        self, read_blob: ReadBlob, limit_bytes: int = NODE_CACHE_BYTES
    ) -> None:
        self._read_blob = read_blob
        self._limit = limit_bytes
        self._nodes: OrderedDict[NodeRef, Leaf | Internal] = OrderedDict()
        self._bytes = 0
        self.reads = 0

    def node(self, ref: NodeRef) -> Leaf | Internal:
        cached = self._nodes.get(ref)
        if cached is not None:
            self._nodes.move_to_end(ref)
            return cached
        node = decode_node(_read(self._read_blob, ref.hash), ref)
        self.reads += 1
        self._nodes[ref] = node
        self._bytes += len(node.data)
        while self._bytes > self._limit and len(self._nodes) > 1:
            _, dropped = self._nodes.popitem(last=False)
            self._bytes -= len(dropped.data)
        return node


def _read(read_blob: ReadBlob, sha256: bytes) -> bytes:
    try:
        return read_blob(sha256)
    except Exception as error:
        # Whatever the store raises for a lost or damaged blob, the check
        # sees one kind of failure; the text never holds a secret.
        raise DataMissing(
            f"blob {sha256.hex()[:16]} is not held: {type(error).__name__}"
        ) from None


class TreeContent:
    """One revision's content, read through its section tree."""

    def __init__(
        self,
        revision: VerifiedRevision,
        read_blob: ReadBlob,
        node_cache_bytes: int = NODE_CACHE_BYTES,
        nodes: CachedNodes | None = None,
    ) -> None:
        self._root = revision.sections
        self._read_blob = read_blob
        self._nodes = nodes or CachedNodes(read_blob, node_cache_bytes)
        self._leaf: Leaf | None = None
        # The current leaf's entry start offsets (as Leaf.locate_offset
        # computes them, once per leaf instead of once per position).
        self._starts: list[int] = []
        self._section: tuple[bytes, bytes] | None = None
        # What the check read, for the benchmarks.
        self.section_reads = 0
        self.section_bytes_read = 0

    @property
    def node_reads(self) -> int:
        return self._nodes.reads

    def _leaf_for(
        self, inside: Callable[[NodeRef], bool], pick: Callable[[Internal], int]
    ) -> Leaf:
        leaf = self._leaf
        if leaf is not None and inside(leaf.ref):
            return leaf
        node = self._nodes.node(self._root.ref())
        while isinstance(node, Internal):
            node = self._nodes.node(node.children[pick(node)])
        self._leaf = node
        self._starts = list(accumulate(node.lengths(), initial=node.ref.first_offset))
        del self._starts[-1]
        return node

    def _at_offset(self, offset: int) -> tuple[int, int, Entry]:
        """(index, start offset, entry) of the section holding ``offset``."""
        if not 0 <= offset < self._root.byte_count:
            raise IndexError(
                f"offset {offset} is outside {self._root.byte_count} bytes"
            )
        leaf = self._leaf_for(
            lambda ref: ref.first_offset <= offset < ref.stop_offset,
            lambda node: node.child_for_offset(offset),
        )
        position = bisect_right(self._starts, offset) - 1
        return (
            leaf.ref.first_index + position,
            self._starts[position],
            leaf.entry(position),
        )

    def _at_index(self, index: int) -> Entry:
        if not 0 <= index < self._root.entry_count:
            raise IndexError(f"entry {index} is outside {self._root.entry_count}")
        leaf = self._leaf_for(
            lambda ref: ref.first_index <= index < ref.stop_index,
            lambda node: node.child_for_index(index),
        )
        return leaf.entry(index - leaf.ref.first_index)

    def _section_bytes(self, sha256: bytes) -> bytes:
        if self._section is not None and self._section[0] == sha256:
            return self._section[1]
        data = _read(self._read_blob, sha256)
        self.section_reads += 1
        self.section_bytes_read += len(data)
        self._section = (sha256, data)
        return data

    # ContentReader

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` content bytes from ``offset`` (short only at the end)."""
        end = min(offset + length, self._root.byte_count)
        parts = []
        while offset < end:
            _, start, entry = self._at_offset(offset)
            data = self._section_bytes(entry.sha256)
            within = offset - start
            take = min(end - offset, len(data) - within)
            parts.append(data[within : within + take])
            offset += take
        return b"".join(parts)

    # SectionReader

    def section_count(self) -> int:
        return self._root.entry_count

    def section_length(self, index: int) -> int:
        return self._at_index(index).length

    def read_section(self, index: int, offset: int, length: int) -> bytes:
        entry = self._at_index(index)
        return self._section_bytes(entry.sha256)[offset : offset + length]

    # SectionIndex (the owner's side of a sample check: no section data)

    def content_length(self) -> int:
        return self._root.byte_count

    def locate(self, offset: int) -> int:
        return self._at_offset(offset)[0]

    def entry(self, index: int) -> SectionEntry:
        entry = self._at_index(index)
        return SectionEntry(
            entry.length, entry.sha256, audit_samples_of_private(entry.private)
        )
