"""Building a tree: streamed entries → content-defined nodes → a small root.

The cut rule (prolly-tree style): a node closes after an item when it holds
at least two items and the last byte of the item's hash (the entry's
section hash in a leaf, the child node's hash above) is below the level's
threshold, or when it holds the level's maximum. A node's end therefore
depends only on the items from its start, so inserting or removing an
entry changes the nodes on its path and at most a neighbour or two before
the cuts fall back into step, never every node after it. The two-item
minimum makes every level at least halve, so the tree always ends in one
root; the maximum bounds a node (runs of one repeated hash, e.g. a
zero-filled file, have no cut of their own).

Speed: nothing is done in Python per entry. Items arrive in packed batches;
cut points come from a strided slice of the hash bytes, ``translate`` and
one regular expression; node bytes, hashes, sink calls and per-node counts
are chained ``map`` calls over slices (see ``nodes.digit_sums``). The one
Python-level step per node is the call of the sink's ``put``.

Memory: each level keeps its open node plus at most one batch of items
(``BATCH_ITEMS``), so a build holds O(levels x batch), whatever its size.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from barterbackup.tree.nodes import (
    CHILD_BYTES,
    CHILD_RECORD,
    ENTRY_BYTES,
    MAX_ENTRIES,
    MAX_LEVEL,
    MAX_NODE_ITEMS,
    Entry,
    Internal,
    NodeRef,
    TreeError,
    TreeRoot,
    check_packed_lengths,
    decode_node,
    digit_sums,
    node_header,
)

# The byte of a hash the cut rule looks at (the last one).
CUT_HASH_BYTE = 31
# Items a level cuts at once: big enough that the fixed Python cost of a
# batch is small per node, small enough to stay in the CPU's cache.
BATCH_ITEMS = 4096

_digest = type(hashlib.sha256()).digest
_sha256 = hashlib.sha256


class NodeSink(Protocol):
    """Where a builder puts each finished node (a content-addressed store).

    A node is put after every node it references. The same node may be put
    more than once (repeated content); the store keeps one copy.
    """

    def put(self, node_hash: bytes, node_bytes: bytes) -> None: ...


class NodeSource(Protocol):
    """Where readers get nodes by hash: the caller's store, or a peer.

    The bytes are never trusted: every reader verifies hash, level and
    counts. A source that lacks a node raises an exception of its own.
    """

    def get(self, node_hash: bytes) -> bytes: ...


@dataclass(frozen=True)
class TreeShape:
    """The cut rule's parameters: average and maximum items per node.

    A format constant (``SECTION_TREE_SHAPE``): trees built with another
    shape read fine but share fewer nodes with trees built with this one.
    """

    leaf_average: int
    leaf_max: int
    internal_average: int
    internal_max: int

    def __post_init__(self) -> None:
        for average, maximum in (
            (self.leaf_average, self.leaf_max),
            (self.internal_average, self.internal_max),
        ):
            if not 2 <= average <= maximum <= MAX_NODE_ITEMS:
                raise TreeError(
                    f"tree shape needs 2 <= average <= max <= {MAX_NODE_ITEMS}"
                )

    @staticmethod
    def threshold(average: int) -> int:
        """Cut-byte threshold giving ``average`` items per node.

        The first item of a node never cuts, then each item cuts with
        probability threshold/256: a node holds 1 + 256/threshold items on
        average (before the maximum cuts the rare long ones).
        """
        return max(1, min(256, round(256 / (average - 1))))


# Chosen by measurement (bench/tree_ops.py; the table is in the package
# docstring): see barterbackup.tree.
SECTION_TREE_SHAPE = TreeShape(
    leaf_average=8, leaf_max=64, internal_average=8, internal_max=64
)


class _Level:
    """One level being built: its open node and a batch of pending items."""

    def __init__(
        self, builder: TreeBuilder, level: int, average: int, maximum: int
    ) -> None:
        self.builder = builder
        self.level = level
        self.item = ENTRY_BYTES if level == 0 else CHILD_BYTES
        self.cut_offset = (8 if level == 0 else 0) + CUT_HASH_BYTE
        threshold = TreeShape.threshold(average)
        self.flag_table = bytes(1 if b < threshold else 0 for b in range(256))
        # First item: anything; then up to max-2 unflagged items and a flagged
        # one (possessive: no backtracking), or else exactly max items. The
        # tail that matches neither is the open node (see _cut_batch).
        self.pattern = re.compile(
            rb"(?s).[^\x01]{0,%d}+\x01|.{%d}" % (maximum - 2, maximum)
        )
        self.headers = [node_header(level, count) for count in range(maximum + 1)]
        self.batch_bytes = BATCH_ITEMS * self.item
        self.pending = bytearray()
        # Leaf level only: the pending entries' length fields (8 bytes each).
        self.pending_digits = bytearray()
        self.dirty = False

    def feed(self, items: memoryview | bytes, digits: bytes = b"") -> None:
        """Append items (and, for leaves, their length fields) in order."""
        size, position = len(items), 0
        room = self.batch_bytes - len(self.pending)
        while size - position >= room:
            batch = b"".join((self.pending, items[position : position + room]))
            batch_digits = b""
            if self.level == 0:
                first = position // ENTRY_BYTES * 8
                count = room // ENTRY_BYTES * 8
                batch_digits = b"".join(
                    (self.pending_digits, digits[first : first + count])
                )
            position += room
            self._cut_batch(batch, batch_digits)
            room = self.batch_bytes - len(self.pending)
        if position < size:
            self.pending += items[position:]
            if self.level == 0:
                self.pending_digits += digits[position // ENTRY_BYTES * 8 :]
            self.dirty = True

    def settle(self) -> None:
        """Close every complete node among the pending items."""
        if self.dirty:
            self._cut_batch(bytes(self.pending), bytes(self.pending_digits))

    def close_open_node(self) -> None:
        """Close the open node as it is (the end of the level)."""
        count = len(self.pending) // self.item
        if count:
            self._emit(bytes(self.pending), bytes(self.pending_digits), [count])
            self.pending = bytearray()
            self.pending_digits = bytearray()

    def _cut_batch(self, batch: bytes, digits: bytes) -> None:
        flags = batch[self.cut_offset :: self.item].translate(self.flag_table)
        lengths = list(map(len, self.pattern.findall(flags)))
        consumed = self._emit(batch, digits, lengths) if lengths else 0
        self.pending = bytearray(batch[consumed * self.item :])
        if self.level == 0:
            self.pending_digits = bytearray(digits[consumed * 8 :])
        self.dirty = False

    def _emit(self, batch: bytes, digits: bytes, lengths: list[int]) -> int:
        """Emit one node per run of ``lengths`` items; feed their records up."""
        bounds = [0, *accumulate(lengths)]
        item = self.item
        byte_bounds = list(map(item.__mul__, bounds))
        view = memoryview(batch)
        nodes = list(
            map(
                b"".join,
                zip(
                    map(self.headers.__getitem__, lengths),
                    map(view.__getitem__, map(slice, byte_bounds, byte_bounds[1:])),
                    strict=True,
                ),
            )
        )
        hashes = list(map(_digest, map(_sha256, nodes)))
        deque(map(self.builder.sink.put, hashes, nodes), maxlen=0)
        if self.level == 0:
            entry_counts = lengths
            byte_counts = digit_sums(digits, bounds)
        else:
            words = view.cast("Q")
            entry_counts = digit_sums(words[4::6].tobytes(), bounds)
            byte_counts = digit_sums(words[5::6].tobytes(), bounds)
        records = b"".join(map(CHILD_RECORD.pack, hashes, entry_counts, byte_counts))
        self.builder._level(self.level + 1).feed(records)
        return bounds[-1]


class TreeBuilder:
    """Builds one tree from entries given in order; ``finish`` gives its root.

    Entries come one at a time (``add``), packed in bulk (``add_packed``,
    the fast path), or as a range of an existing tree (``copy_range``,
    which reuses that tree's unchanged subtrees without reading them). The
    result depends only on the sequence of entries, never on how they were
    given. New nodes go to ``sink`` as they are finished.

    Bad input is refused before anything changes. If the sink or a source
    fails midway, the builder is left unusable (TreeError): start again.
    """

    def __init__(self, sink: NodeSink, shape: TreeShape = SECTION_TREE_SHAPE) -> None:
        self.sink = sink
        self.shape = shape
        self._levels: list[_Level] = []
        self._single = bytearray()
        self._entries = 0
        self._finished = False
        self._broken = False
        self.reused_nodes = 0
        self.nodes_read = 0

    @property
    def entry_count(self) -> int:
        """Entries added so far."""
        return self._entries

    def _level(self, level: int) -> _Level:
        while len(self._levels) <= level:
            number = len(self._levels)
            if number > MAX_LEVEL:
                raise TreeError(f"tree would be deeper than {MAX_LEVEL} levels")
            if number == 0:
                average, maximum = self.shape.leaf_average, self.shape.leaf_max
            else:
                average = self.shape.internal_average
                maximum = self.shape.internal_max
            self._levels.append(_Level(self, number, average, maximum))
        return self._levels[level]

    def _check_open(self) -> None:
        if self._finished:
            raise TreeError("this tree is already finished")
        if self._broken:
            raise TreeError("this builder failed earlier; build the tree again")

    def _count(self, entries: int) -> None:
        if self._entries + entries >= MAX_ENTRIES:
            raise TreeError(f"a tree holds fewer than {MAX_ENTRIES} entries")
        self._entries += entries

    def add(self, entry: Entry) -> None:
        """Append one entry."""
        self._check_open()
        self._single += entry.pack()
        if len(self._single) >= BATCH_ITEMS * ENTRY_BYTES:
            self._flush_single()

    def _flush_single(self) -> None:
        if self._single:
            single, self._single = bytes(self._single), bytearray()
            self._add_checked(single)

    def add_packed(self, entries: bytes | bytearray | memoryview) -> None:
        """Append many entries, packed (88 bytes each, ``Entry.pack``).

        Every length is checked first; on a bad one nothing is added.
        """
        self._check_open()
        self._flush_single()
        self._add_checked(entries)

    def _add_checked(self, entries: bytes | bytearray | memoryview) -> None:
        digits = check_packed_lengths(entries, "packed entries")
        if not digits:
            return
        self._count(len(digits) // 8)
        try:
            self._level(0).feed(memoryview(entries).cast("B"), digits)
        except BaseException:
            self._broken = True
            raise

    def copy_range(
        self, root: TreeRoot, start: int, stop: int, source: NodeSource
    ) -> None:
        """Append entries [start, stop) of the tree ``root`` (read from source).

        Wherever the new tree's cuts are in step with the old tree's, a
        whole old subtree inside the range is reused by its record without
        being read; only the nodes along the range's edges and where the
        cuts are out of step (just after an edit) are read, verified and
        re-cut. The old tree's nodes are not put to the sink again: the
        store must still hold them. If the old tree was built with this
        shape, the result is exactly what adding its entries would give.
        """
        self._check_open()
        if not 0 <= start <= stop <= root.entry_count:
            raise IndexError(
                f"range [{start}, {stop}) is outside a tree of {root.entry_count}"
            )
        if start == stop:
            return
        self._flush_single()
        try:
            self._copy(source, root.ref(), True, start, stop)
        except BaseException:
            self._broken = True
            raise

    def _copy(
        self, source: NodeSource, ref: NodeRef, is_last: bool, start: int, stop: int
    ) -> None:
        # A node that is not the last of its level ends where the cut rule
        # cut at every level below it (the old tree is canonical), so if the
        # new tree is at a node boundary on every level up to the node's own,
        # re-cutting its entries would give back exactly this subtree.
        if (
            not is_last
            and start <= ref.first_index
            and ref.stop_index <= stop
            and self._in_step(ref.level)
        ):
            self._count(ref.entry_count)
            self._level(ref.level + 1).feed(ref.record())
            self.reused_nodes += 1
            return
        node = decode_node(source.get(ref.hash), ref)
        self.nodes_read += 1
        if isinstance(node, Internal):
            last = len(node.children) - 1
            for position, child in enumerate(node.children):
                if child.stop_index <= start:
                    continue
                if child.first_index >= stop:
                    break
                self._copy(source, child, is_last and position == last, start, stop)
            return
        first = max(start, ref.first_index) - ref.first_index
        end = min(stop, ref.stop_index) - ref.first_index
        self._add_checked(node.packed(first, end))

    def _in_step(self, level: int) -> bool:
        """Whether every level up to ``level`` has no open node."""
        number = 0
        # Settling a level may create the next one, so the bound is re-read.
        while number <= level and number < len(self._levels):
            self._levels[number].settle()
            if self._levels[number].pending:
                return False
            number += 1
        return True

    def finish(self) -> TreeRoot:
        """Close every open node and return the root (the builder is done)."""
        self._check_open()
        self._flush_single()
        self._finished = True
        try:
            return self._close_levels()
        except BaseException:
            self._broken = True
            raise

    def _close_levels(self) -> TreeRoot:
        number = 0
        while True:
            level = self._level(number)
            level.settle()
            if len(self._levels) == number + 1:
                return self._top(level)
            level.close_open_node()
            number += 1

    def _top(self, level: _Level) -> TreeRoot:
        count = len(level.pending) // level.item
        if level.level > 0 and count == 1:
            # The level below closed exactly one node: that node is the root.
            record = bytes(level.pending)
            return TreeRoot(
                hash=record[:32],
                level=level.level - 1,
                entry_count=int.from_bytes(record[32:40]),
                byte_count=int.from_bytes(record[40:48]),
            )
        items = bytes(level.pending)
        node = node_header(level.level, count) + items
        node_hash = _sha256(node).digest()
        self.sink.put(node_hash, node)
        if level.level == 0:
            byte_count = digit_sums(bytes(level.pending_digits), [0, count])[0]
        else:
            words = memoryview(items).cast("Q")
            byte_count = digit_sums(words[5::6].tobytes(), [0, count])[0]
        return TreeRoot(node_hash, level.level, self._entries, byte_count)


def build_tree(
    entries: bytes | bytearray | memoryview,
    sink: NodeSink,
    shape: TreeShape = SECTION_TREE_SHAPE,
) -> TreeRoot:
    """The tree of packed ``entries`` (a convenience for tests and tools)."""
    builder = TreeBuilder(sink, shape)
    builder.add_packed(entries)
    return builder.finish()
