"""What a replica must fetch to hold a tree: the sync planner and ``diff``.

``SyncPlan`` is driven by the fetcher (synchronous or asynchronous): it
hands out node hashes to fetch in depth-first order, verifies each node's
bytes when they come back, queues the node's children that the replica
does not hold, and returns a leaf's entries whose sections the replica
lacks. Subtrees the replica already holds are never entered: identical
subtrees have identical hashes, so after an edit only the changed paths
are fetched. The frontier stays small (about depth x fanout, plus what the
fetcher has in flight) because the deepest pending nodes go first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

from barterbackup.tree.build import NodeSource
from barterbackup.tree.nodes import (
    Internal,
    Leaf,
    NodeRef,
    TreeError,
    TreeRoot,
    decode_node,
)
from barterbackup.tree.read import Located, read_node

# How many recently handed-out hashes a plan remembers (~300 KB at most).
RECENT = 4096


def _leaf_located(leaf: Leaf) -> list[Located]:
    lengths = leaf.lengths()
    offsets = accumulate(lengths, initial=leaf.ref.first_offset)
    return [
        Located(leaf.ref.first_index + position, offset, leaf.entry(position))
        for position, offset in zip(range(leaf.count), offsets, strict=False)
    ]


class SyncPlan:
    """Fetch plan for one tree root, fed by the fetcher node by node.

    ``have_subtree(hash)`` must answer True only when the replica holds
    that node *and everything under it* (its nodes and sections), e.g.
    because the node belongs to a revision the replica has committed. A
    node stored by an unfinished sync does not qualify: the plan would skip
    the parts of its subtree not fetched yet. To resume without fetching
    twice, the fetcher looks for each wanted node in its own store before
    asking a peer, and feeds those bytes just the same (they are verified).

    ``have_section(hash)`` answers whether a section is held; each leaf's
    wanted sections are returned by ``node_received``. A node or section
    met again within the last ``RECENT`` of them is not handed out again
    (runs of repeated content); one repeated farther apart may be, and the
    fetcher skips what it has stored meanwhile.

    Usage::

        plan = SyncPlan(root, have_subtree, have_section)
        while not plan.finished:
            ref = plan.next_node()          # None: wait for nodes in flight
            ...fetch ref.hash...
            for want in plan.node_received(ref.hash, data):
                ...fetch want.entry.sha256...
    """

    def __init__(
        self,
        root: TreeRoot,
        have_subtree: Callable[[bytes], bool],
        have_section: Callable[[bytes], bool],
    ) -> None:
        self._have_subtree = have_subtree
        self._have_section = have_section
        self._pending: list[NodeRef] = []
        self._queued: set[bytes] = set()
        self._recent: dict[bytes, None] = {}
        self._outstanding: dict[bytes, NodeRef] = {}
        self.nodes_received = 0
        self.node_bytes_received = 0
        # held_bytes: content bytes the replica already holds, in subtrees
        # it skipped and in held sections of the leaves it received (for
        # progress: bytes held so far = held_bytes + what was fetched).
        self.held_bytes = 0
        self._queue(root.ref())

    def _queue(self, ref: NodeRef) -> None:
        # A subtree queued twice (repeated content) is fetched once.
        if ref.hash in self._queued or ref.hash in self._recent:
            return
        if self._have_subtree(ref.hash):
            self.held_bytes += ref.byte_count
            return
        self._queued.add(ref.hash)
        self._pending.append(ref)

    def _remember(self, digest: bytes) -> None:
        """Keep the last RECENT node and section hashes handed out."""
        self._recent[digest] = None
        if len(self._recent) > RECENT:
            del self._recent[next(iter(self._recent))]

    @property
    def finished(self) -> bool:
        """Nothing left to hand out and nothing in flight."""
        return not self._pending and not self._outstanding

    @property
    def in_flight(self) -> int:
        """Nodes handed out by ``next_node`` and not received yet."""
        return len(self._outstanding)

    def next_node(self) -> NodeRef | None:
        """The next node to fetch (now in flight), or None if none is ready."""
        if not self._pending:
            return None
        ref = self._pending.pop()
        self._outstanding[ref.hash] = ref
        return ref

    def node_failed(self, node_hash: bytes) -> None:
        """A fetch of an in-flight node failed: hand it out again later."""
        ref = self._outstanding.pop(node_hash, None)
        if ref is None:
            raise TreeError("that node is not in flight")
        self._pending.append(ref)

    def node_received(self, node_hash: bytes, data: bytes) -> list[Located]:
        """Verify an in-flight node's bytes; the sections its leaf lacks.

        Raises InvalidNode if the bytes are not the node (it stays in
        flight: feed bytes from elsewhere, or call ``node_failed``).
        """
        ref = self._outstanding.get(node_hash)
        if ref is None:
            raise TreeError("that node was not asked for")
        node = decode_node(data, ref)
        del self._outstanding[node_hash]
        self._queued.discard(node_hash)
        self._remember(node_hash)
        self.nodes_received += 1
        self.node_bytes_received += len(data)
        if isinstance(node, Internal):
            for child in reversed(node.children):
                self._queue(child)
            return []
        wanted: list[Located] = []
        for located in _leaf_located(node):
            sha256 = located.entry.sha256
            if sha256 in self._recent:
                continue
            if self._have_section(sha256):
                self.held_bytes += located.entry.length
                continue
            self._remember(sha256)
            wanted.append(located)
        return wanted


@dataclass
class Missing:
    """What a replica lacks of a tree (the synchronous ``missing`` result)."""

    nodes: list[NodeRef] = field(default_factory=list)
    node_bytes: int = 0
    sections: list[Located] = field(default_factory=list)

    @property
    def section_bytes(self) -> int:
        return sum(located.entry.length for located in self.sections)


def missing(
    root: TreeRoot,
    source: NodeSource,
    have_subtree: Callable[[bytes], bool],
    have_section: Callable[[bytes], bool],
) -> Missing:
    """Drive a ``SyncPlan`` from ``source`` to the end (tests, benchmarks)."""
    plan = SyncPlan(root, have_subtree, have_section)
    result = Missing()
    while (ref := plan.next_node()) is not None:
        data = source.get(ref.hash)
        result.sections.extend(plan.node_received(ref.hash, data))
        result.nodes.append(ref)
        result.node_bytes += len(data)
    return result


def diff(old: TreeRoot, new: TreeRoot, source: NodeSource) -> Missing:
    """Nodes of ``new`` not in ``old``, and entries of those leaves whose
    section is in none of ``old``'s changed leaves.

    Walks both trees level by level from the top, reading only nodes that
    differ: O(changed nodes x fanout). Exact when no subtree appears twice;
    with repeated subtrees the result can include nodes that ``old`` also
    holds elsewhere (a superset, never less). ``source`` holds both trees.
    """
    result = Missing()
    new_level: list[NodeRef] = []
    old_level: list[NodeRef] = []
    for level in range(max(old.level, new.level), -1, -1):
        if level == new.level:
            new_level.append(new.ref())
        if level == old.level:
            old_level.append(old.ref())
        old_hashes = {ref.hash for ref in old_level}
        new_hashes = {ref.hash for ref in new_level}
        new_nodes = [read_node(source, ref) for ref in _unique(new_level, old_hashes)]
        old_nodes = [read_node(source, ref) for ref in _unique(old_level, new_hashes)]
        for node in new_nodes:
            result.nodes.append(node.ref)
            result.node_bytes += len(node.data)
        if level == 0:
            old_sections = {
                located.entry.sha256
                for leaf in old_nodes
                if isinstance(leaf, Leaf)
                for located in _leaf_located(leaf)
            }
            for leaf in new_nodes:
                assert isinstance(leaf, Leaf)
                result.sections.extend(
                    located
                    for located in _leaf_located(leaf)
                    if located.entry.sha256 not in old_sections
                )
            break
        new_level = [
            c for n in new_nodes if isinstance(n, Internal) for c in n.children
        ]
        old_level = [
            c for n in old_nodes if isinstance(n, Internal) for c in n.children
        ]
    return result


def _unique(refs: list[NodeRef], exclude: set[bytes]) -> list[NodeRef]:
    seen: set[bytes] = set()
    kept = []
    for ref in refs:
        if ref.hash not in exclude and ref.hash not in seen:
            seen.add(ref.hash)
            kept.append(ref)
    return kept
