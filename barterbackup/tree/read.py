"""Reading a tree from an untrusted node source, verifying every node.

Every function takes the ``TreeRoot`` (from a signed revision root) and a
``NodeSource``; each node read is checked against its hash, level and the
counts its parent promised (``decode_node``), so a source that lies raises
``InvalidNode`` before any of its bytes are returned. Memory is one node
per level at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from barterbackup.tree.build import NodeSource
from barterbackup.tree.nodes import (
    Entry,
    Internal,
    Leaf,
    NodeRef,
    TreeRoot,
    decode_node,
    unpack_entries,
)


@dataclass(frozen=True, slots=True)
class Located:
    """An entry with its position: index in the table, content byte offset."""

    index: int
    offset: int
    entry: Entry


def read_node(source: NodeSource, ref: NodeRef) -> Leaf | Internal:
    """Get one node from ``source`` and verify it is the node ``ref`` names."""
    return decode_node(source.get(ref.hash), ref)


class NodeReader(Protocol):
    """Anything that gives verified nodes by reference (a NodeCache)."""

    def read(self, ref: NodeRef) -> Leaf | Internal: ...


class NodeCache:
    """The last ``size`` verified nodes read from a trusted local source.

    Readers that descend the same tree again and again (a file at a time)
    re-read the nodes near the root every time; decoding an internal node
    costs ~70 µs (one NodeRef per child). Nodes are kept by their NodeRef
    (hash *and* position, since a repeated subtree decodes to other
    positions), so a cached node is exactly what decoding would give.
    Not thread-safe: one cache per reader thread, or a lock around it.
    """

    def __init__(self, source: NodeSource, size: int = 256) -> None:
        self.source = source
        self._size = size
        self._nodes: dict[NodeRef, Leaf | Internal] = {}

    def read(self, ref: NodeRef) -> Leaf | Internal:
        node = self._nodes.pop(ref, None)
        if node is None:
            node = read_node(self.source, ref)
            if len(self._nodes) >= self._size:
                del self._nodes[next(iter(self._nodes))]
        self._nodes[ref] = node  # most recently used last
        return node


def _check_range(root: TreeRoot, start: int, stop: int | None) -> int:
    stop = root.entry_count if stop is None else stop
    if not 0 <= start <= stop <= root.entry_count:
        raise IndexError(
            f"range [{start}, {stop}) is outside a tree of {root.entry_count} entries"
        )
    return stop


def iter_packed(
    root: TreeRoot,
    source: NodeSource,
    start: int = 0,
    stop: int | None = None,
    cache: NodeReader | None = None,
) -> Iterator[bytes]:
    """Entries [start, stop) in order, as packed runs (one per leaf touched).

    The fast path for streaming a table: no Python object per entry. With
    ``cache`` (over ``source``), nodes are read through it.
    """
    stop = _check_range(root, start, stop)
    if start < stop:
        reader = cache.read if cache is not None else partial(read_node, source)
        yield from _walk(reader, root.ref(), start, stop)


def _walk(
    reader: Callable[[NodeRef], Leaf | Internal], ref: NodeRef, start: int, stop: int
) -> Iterator[bytes]:
    node = reader(ref)
    if isinstance(node, Leaf):
        yield node.packed(
            max(start, ref.first_index) - ref.first_index,
            min(stop, ref.stop_index) - ref.first_index,
        )
        return
    for child in node.children[node.child_for_index(max(start, ref.first_index)) :]:
        if child.first_index >= stop:
            break
        yield from _walk(reader, child, start, stop)


def iter_entries(
    root: TreeRoot, source: NodeSource, start: int = 0, stop: int | None = None
) -> Iterator[Entry]:
    """Entries [start, stop) in order, one ``Entry`` at a time."""
    for packed in iter_packed(root, source, start, stop):
        yield from unpack_entries(packed)


def _descend_to_index(
    root: TreeRoot, source: NodeSource, index: int, cache: NodeReader | None = None
) -> Iterator[Leaf | Internal]:
    """The verified nodes on the path from the root to entry ``index``."""
    if not 0 <= index < root.entry_count:
        raise IndexError(f"entry {index} is outside a tree of {root.entry_count}")
    reader = cache.read if cache is not None else partial(read_node, source)
    node = reader(root.ref())
    while isinstance(node, Internal):
        yield node
        node = reader(node.children[node.child_for_index(index)])
    yield node


def _descend_to_offset(
    root: TreeRoot, source: NodeSource, offset: int
) -> Iterator[Leaf | Internal]:
    """The verified nodes on the path from the root to content byte ``offset``."""
    if not 0 <= offset < root.byte_count:
        raise IndexError(f"offset {offset} is outside {root.byte_count} bytes")
    node = read_node(source, root.ref())
    while isinstance(node, Internal):
        yield node
        node = read_node(source, node.children[node.child_for_offset(offset)])
    yield node


def entry_at(
    root: TreeRoot, index: int, source: NodeSource, cache: NodeReader | None = None
) -> Located:
    """The entry at ``index`` (reads depth + 1 nodes, through ``cache`` if
    given)."""
    *_, leaf = _descend_to_index(root, source, index, cache)
    assert isinstance(leaf, Leaf)
    position = index - leaf.ref.first_index
    offset = leaf.ref.first_offset + sum(leaf.lengths()[:position])
    return Located(index, offset, leaf.entry(position))


def entry_at_offset(root: TreeRoot, offset: int, source: NodeSource) -> Located:
    """The entry whose bytes hold content byte ``offset``, with its start."""
    *_, leaf = _descend_to_offset(root, source, offset)
    assert isinstance(leaf, Leaf)
    position, start = leaf.locate_offset(offset)
    return Located(leaf.ref.first_index + position, start, leaf.entry(position))


def iter_nodes(root: TreeRoot, source: NodeSource) -> Iterator[Leaf | Internal]:
    """Every node of the tree, verified, parents before children (DFS)."""
    stack = [root.ref()]
    while stack:
        node = read_node(source, stack.pop())
        yield node
        if isinstance(node, Internal):
            stack.extend(reversed(node.children))
