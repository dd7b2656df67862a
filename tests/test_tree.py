"""The section tree: round trips, content-defined cuts, sync plans, proofs,
incremental builds, and decoders that refuse anything malformed."""

from __future__ import annotations

import hashlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.tree import (
    ENTRY_BYTES,
    MAX_SECTION_BYTES,
    SECTION_TREE_SHAPE,
    Entry,
    InvalidNode,
    InvalidProof,
    Proof,
    SyncPlan,
    TreeBuilder,
    TreeError,
    TreeRoot,
    TreeShape,
    build_tree,
    diff,
    entry_at,
    entry_at_offset,
    iter_entries,
    iter_nodes,
    missing,
    prove,
    prove_offset,
    verify_offset_proof,
    verify_proof,
)
from barterbackup.tree.nodes import (
    HEADER_BYTES,
    MAX_NODE_BYTES,
    MAX_NODE_ITEMS,
    NodeRef,
    decode_node,
    node_header,
)

# Small nodes, so that a few hundred entries make a tree four or five deep.
SMALL = TreeShape(leaf_average=4, leaf_max=8, internal_average=3, internal_max=6)
SHAPES = st.sampled_from([SMALL, TreeShape(2, 3, 2, 2), SECTION_TREE_SHAPE])
FLAGGED, UNFLAGGED = 0, 255  # last hash byte: always / never a cut candidate


class MemoryStore(dict[bytes, bytes]):
    """A node store for tests: remembers what was put, counts reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def put(self, node_hash: bytes, node_bytes: bytes) -> None:
        assert hashlib.sha256(node_bytes).digest() == node_hash
        self[node_hash] = node_bytes

    def get(self, node_hash: bytes, default: object = None) -> bytes:  # type: ignore[override]
        self.reads += 1
        return self[node_hash]


def make_entries(rng: random.Random, count: int) -> list[Entry]:
    return [
        Entry(rng.randint(1, 70_000), rng.randbytes(32), rng.randbytes(48))
        for _ in range(count)
    ]


def entry_with_cut(rng: random.Random, cut_byte: int, length: int = 100) -> Entry:
    return Entry(length, rng.randbytes(31) + bytes([cut_byte]), rng.randbytes(48))


def pack(entries: list[Entry]) -> bytes:
    return b"".join(entry.pack() for entry in entries)


def build(
    entries: list[Entry], store: MemoryStore, shape: TreeShape = SMALL
) -> TreeRoot:
    return build_tree(pack(entries), store, shape)


def node_hashes(root: TreeRoot, store: MemoryStore) -> set[bytes]:
    return {node.ref.hash for node in iter_nodes(root, store)}


tables = st.builds(
    lambda seed, count: make_entries(random.Random(seed), count),
    st.integers(0, 2**32),
    st.integers(0, 300),
)


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(tables, SHAPES, st.data())
    def test_entries_come_back(
        self, entries: list[Entry], shape: TreeShape, data: st.DataObject
    ) -> None:
        store = MemoryStore()
        root = build(entries, store, shape)
        self.assertEqual(root.entry_count, len(entries))
        self.assertEqual(root.byte_count, sum(e.length for e in entries))
        self.assertEqual(list(iter_entries(root, store)), entries)
        if not entries:
            return
        start = data.draw(st.integers(0, len(entries)))
        stop = data.draw(st.integers(start, len(entries)))
        self.assertEqual(
            list(iter_entries(root, store, start, stop)), entries[start:stop]
        )
        index = data.draw(st.integers(0, len(entries) - 1))
        offset = sum(e.length for e in entries[:index])
        located = entry_at(root, index, store)
        self.assertEqual((located.index, located.offset), (index, offset))
        self.assertEqual(located.entry, entries[index])
        for byte in (offset, offset + entries[index].length - 1):
            at = entry_at_offset(root, byte, store)
            self.assertEqual(
                (at.index, at.offset, at.entry), (index, offset, located.entry)
            )

    @settings(max_examples=40, deadline=None)
    @given(tables, SHAPES, st.lists(st.integers(0, 300), max_size=6))
    def test_root_does_not_depend_on_how_entries_were_given(
        self, entries: list[Entry], shape: TreeShape, cuts: list[int]
    ) -> None:
        whole = build(entries, MemoryStore(), shape)
        builder = TreeBuilder(MemoryStore(), shape)
        previous = 0
        for cut in sorted(min(c, len(entries)) for c in cuts):
            builder.add_packed(pack(entries[previous:cut]))
            previous = cut
        for entry in entries[previous:]:
            builder.add(entry)
        self.assertEqual(builder.finish(), whole)

    def test_empty_tree(self) -> None:
        store = MemoryStore()
        root = TreeBuilder(store).finish()
        self.assertEqual((root.level, root.entry_count, root.byte_count), (0, 0, 0))
        self.assertEqual(store[root.hash], node_header(0, 0))
        self.assertEqual(list(iter_entries(root, store)), [])
        self.assertRaises(IndexError, entry_at, root, 0, store)
        self.assertRaises(IndexError, entry_at_offset, root, 0, store)
        self.assertEqual(
            missing(root, store, lambda h: False, lambda h: False).nodes[0].hash,
            root.hash,
        )

    def test_one_entry(self) -> None:
        store = MemoryStore()
        entry = Entry(5, bytes(32), bytes(48))
        root = build([entry], store)
        self.assertEqual(root.level, 0)
        self.assertEqual(store[root.hash], node_header(0, 1) + entry.pack())
        self.assertEqual(entry_at_offset(root, 4, store).entry, entry)
        self.assertRaises(IndexError, entry_at_offset, root, 5, store)

    def leaf_sizes(self, root: TreeRoot, store: MemoryStore) -> list[int]:
        return [n.count for n in iter_nodes(root, store) if n.ref.level == 0]

    def test_every_entry_a_candidate_cuts_pairs(self) -> None:
        rng = random.Random(1)
        entries = [entry_with_cut(rng, FLAGGED) for _ in range(9)]
        store = MemoryStore()
        root = build(entries, store)
        # The first item of a node never cuts: nodes of two, the rest alone.
        self.assertEqual(self.leaf_sizes(root, store), [2, 2, 2, 2, 1])

    def test_no_candidate_cuts_at_the_maximum(self) -> None:
        rng = random.Random(2)
        for count in (SMALL.leaf_max, SMALL.leaf_max + 1, 2 * SMALL.leaf_max):
            entries = [entry_with_cut(rng, UNFLAGGED) for _ in range(count)]
            store = MemoryStore()
            root = build(entries, store)
            sizes = self.leaf_sizes(root, store)
            self.assertEqual(sum(sizes), count)
            self.assertTrue(all(size == SMALL.leaf_max for size in sizes[:-1]))
            self.assertEqual(list(iter_entries(root, store)), entries)

    def test_a_cut_candidate_as_first_item_does_not_cut(self) -> None:
        rng = random.Random(3)
        entries = [entry_with_cut(rng, c) for c in (FLAGGED, UNFLAGGED, FLAGGED)]
        entries += [entry_with_cut(rng, UNFLAGGED), entry_with_cut(rng, FLAGGED)]
        store = MemoryStore()
        root = build(entries, store)
        self.assertEqual(self.leaf_sizes(root, store), [3, 2])

    def test_repeated_hash_run(self) -> None:
        """A zero-filled file: one section hash, thousands of times."""
        entry = Entry(65536, b"\x01" * 32, bytes(48))
        store = MemoryStore()
        root = build([entry] * 5000, store)
        self.assertEqual(root.entry_count, 5000)
        self.assertEqual(sum(1 for _ in iter_entries(root, store)), 5000)
        # Identical leaves are one node: the tree is a handful of nodes.
        self.assertLess(len(store), 20)
        plan = missing(root, store, lambda h: False, lambda h: False)
        self.assertEqual(len(plan.sections), 1)
        self.assertEqual(len({ref.hash for ref in plan.nodes}), len(plan.nodes))

    def test_bad_entries_are_refused_and_change_nothing(self) -> None:
        store = MemoryStore()
        builder = TreeBuilder(store)
        good = Entry(10, bytes(32)).pack()
        for length in (0, MAX_SECTION_BYTES + 1, 2**64 - 1):
            bad = length.to_bytes(8, "big") + bytes(80)
            with self.assertRaises(TreeError):
                builder.add_packed(good * 3 + bad + good)
        self.assertRaises(TreeError, builder.add_packed, good[:-1])
        self.assertEqual(builder.entry_count, 0)
        builder.add_packed(MAX_SECTION_BYTES.to_bytes(8, "big") + bytes(80))
        self.assertEqual(builder.finish().byte_count, MAX_SECTION_BYTES)
        self.assertRaises(TreeError, Entry, 0, bytes(32))
        self.assertRaises(TreeError, Entry, 1, bytes(31))
        self.assertRaises(TreeError, Entry, 1, bytes(32), bytes(47))
        self.assertRaises(TreeError, builder.add, Entry(1, bytes(32)))

    def test_bad_roots_are_refused(self) -> None:
        for args in (
            (bytes(31), 0, 0, 0),
            (bytes(32), -1, 1, 1),
            (bytes(32), 33, 1, 1),
            (bytes(32), 1, 0, 0),
            (bytes(32), 0, 2, 1),
            (bytes(32), 0, 1, MAX_SECTION_BYTES + 1),
        ):
            self.assertRaises(TreeError, TreeRoot, *args)


class ContentDefinedTests(SynchronousTestCase):
    """An edit changes the nodes on its path, not every node after it."""

    def changed_nodes(self, old: list[Entry], new: list[Entry]) -> tuple[int, int, int]:
        store = MemoryStore()
        old_root, new_root = build(old, store), build(new, store)
        before, after = node_hashes(old_root, store), node_hashes(new_root, store)
        return len(after - before), new_root.level + 1, len(after)

    @settings(max_examples=50, deadline=None)
    @given(st.integers(0, 2**32), st.integers(200, 500), st.floats(0, 1))
    def test_insert_changes_only_its_path(
        self, seed: int, count: int, where: float
    ) -> None:
        rng = random.Random(seed)
        old = make_entries(rng, count)
        position = int(where * count)
        new = old[:position] + make_entries(rng, 1) + old[position:]
        changed, depth, total = self.changed_nodes(old, new)
        self.assertLessEqual(changed, 4 * depth)
        self.assertLess(4 * depth, total / 2)  # the bound means something

    @settings(max_examples=50, deadline=None)
    @given(st.integers(0, 2**32), st.integers(200, 500), st.floats(0, 1))
    def test_remove_changes_only_its_path(
        self, seed: int, count: int, where: float
    ) -> None:
        rng = random.Random(seed)
        old = make_entries(rng, count)
        position = min(int(where * count), count - 1)
        new = old[:position] + old[position + 1 :]
        changed, depth, _ = self.changed_nodes(old, new)
        self.assertLessEqual(changed, 4 * depth)


edits = st.lists(
    st.tuples(st.sampled_from(["insert", "remove", "replace"]), st.floats(0, 1)),
    min_size=1,
    max_size=5,
)


class IncrementalBuildTests(SynchronousTestCase):
    """copy_range reuses old subtrees and gives exactly the fresh build."""

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(st.integers(0, 2**32), st.integers(1, 600), edits, SHAPES)
    def test_edited_tree_equals_fresh_build(
        self, seed: int, count: int, changes: list[tuple[str, float]], shape: TreeShape
    ) -> None:
        rng = random.Random(seed)
        old = make_entries(rng, count)
        store = MemoryStore()
        old_root = build(old, store, shape)
        # Apply the edits as (old range copied, new entries) pieces.
        positions = sorted({min(int(w * count), count - 1) for _, w in changes})
        kinds = dict(zip(positions, (kind for kind, _ in changes), strict=False))
        builder = TreeBuilder(store, shape)
        new: list[Entry] = []
        previous = 0
        for position in positions:
            builder.copy_range(old_root, previous, position, store)
            new += old[previous:position]
            kind = kinds[position]
            fresh = [] if kind == "remove" else make_entries(rng, rng.randint(1, 3))
            for entry in fresh:
                builder.add(entry)
            new += fresh
            previous = position if kind == "insert" else position + 1
        builder.copy_range(old_root, previous, count, store)
        new += old[previous:]
        self.assertEqual(builder.finish(), build(new, MemoryStore(), shape))

    def test_copy_reads_few_nodes(self) -> None:
        rng = random.Random(5)
        old = make_entries(rng, 20_000)
        store = MemoryStore()
        root = build(old, store, SECTION_TREE_SHAPE)
        builder = TreeBuilder(store)
        builder.copy_range(root, 0, 10_000, store)
        builder.add(make_entries(rng, 1)[0])
        builder.copy_range(root, 10_001, 20_000, store)
        builder.finish()
        self.assertLess(builder.nodes_read, 6 * (root.level + 1))
        self.assertGreater(builder.reused_nodes, 0)

    def test_a_failing_sink_or_source_leaves_the_builder_unusable(self) -> None:
        class FailingSink:
            def put(self, node_hash: bytes, node_bytes: bytes) -> None:
                raise OSError("disk full")

        entries = make_entries(random.Random(13), 100)
        builder = TreeBuilder(FailingSink(), SMALL)
        self.assertRaises(OSError, builder.add_packed, pack(entries) * 100)
        self.assertRaises(TreeError, builder.add, entries[0])
        self.assertRaises(TreeError, builder.finish)

        store = MemoryStore()
        root = build(entries, store)
        del store[root.hash]
        builder = TreeBuilder(MemoryStore(), SMALL)
        self.assertRaises(KeyError, builder.copy_range, root, 0, 100, store)
        self.assertRaises(TreeError, builder.finish)

    def test_bad_range_is_refused(self) -> None:
        store = MemoryStore()
        root = build(make_entries(random.Random(6), 10), store)
        builder = TreeBuilder(store)
        self.assertRaises(IndexError, builder.copy_range, root, 5, 11, store)
        self.assertRaises(IndexError, builder.copy_range, root, 6, 5, store)
        self.assertRaises(IndexError, builder.copy_range, root, -1, 5, store)


class DecodeTests(SynchronousTestCase):
    """Whatever bytes come in, decoding raises InvalidNode or decodes them."""

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.root = build(make_entries(random.Random(7), 200), self.store)
        self.nodes = list(iter_nodes(self.root, self.store))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600), st.integers(0, 3), st.integers(0, 2**20))
    def test_random_bytes(self, data: bytes, level: int, count: int) -> None:
        ref = NodeRef(hashlib.sha256(data).digest(), level, count, count * 10, 0, 0)
        try:
            decode_node(data, ref)
        except InvalidNode:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_mutated_nodes(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(self.nodes))
        raw = bytearray(node.data)
        for _ in range(data.draw(st.integers(1, 4))):
            choice = data.draw(st.sampled_from(["flip", "cut", "grow"]))
            if choice == "flip" and raw:
                position = data.draw(st.integers(0, len(raw) - 1))
                raw[position] ^= 1 << data.draw(st.integers(0, 7))
            elif choice == "cut":
                del raw[data.draw(st.integers(0, len(raw))) :]
            else:
                raw += data.draw(st.binary(min_size=1, max_size=100))
        mutated = bytes(raw)
        # The hash matches, so everything past the hash check is exercised.
        ref = NodeRef(
            hashlib.sha256(mutated).digest(),
            node.ref.level,
            node.ref.entry_count,
            node.ref.byte_count,
            0,
            0,
        )
        try:
            decoded = decode_node(mutated, ref)
        except InvalidNode:
            return
        self.assertEqual(decoded.data, mutated)

    def test_wrong_hash_level_and_counts(self) -> None:
        node = self.nodes[0]
        ref = node.ref
        for wrong in (
            NodeRef(bytes(32), ref.level, ref.entry_count, ref.byte_count, 0, 0),
            NodeRef(ref.hash, ref.level - 1, ref.entry_count, ref.byte_count, 0, 0),
            NodeRef(ref.hash, ref.level, ref.entry_count + 1, ref.byte_count, 0, 0),
            NodeRef(ref.hash, ref.level, ref.entry_count, ref.byte_count - 1, 0, 0),
        ):
            self.assertRaises(InvalidNode, decode_node, node.data, wrong)
        self.assertRaises(InvalidNode, decode_node, bytearray(node.data), ref)  # type: ignore[arg-type]

    def test_oversized_node(self) -> None:
        leaf = node_header(0, MAX_NODE_ITEMS + 1) + Entry(1, bytes(32)).pack() * (
            MAX_NODE_ITEMS + 1
        )
        self.assertGreater(len(leaf), MAX_NODE_BYTES)
        ref = NodeRef(hashlib.sha256(leaf).digest(), 0, MAX_NODE_ITEMS + 1, 0, 0, 0)
        with self.assertRaisesRegex(InvalidNode, "out of bounds"):
            decode_node(leaf, ref)
        header = node_header(1, MAX_NODE_ITEMS + 1)
        ref = NodeRef(hashlib.sha256(header).digest(), 1, 1, 1, 0, 0)
        with self.assertRaisesRegex(InvalidNode, "over"):
            decode_node(header, ref)

    def test_empty_internal_node_and_empty_child(self) -> None:
        empty = node_header(1, 0)
        ref = NodeRef(hashlib.sha256(empty).digest(), 1, 1, 1, 0, 0)
        self.assertRaises(InvalidNode, decode_node, empty, ref)
        child = node_header(1, 1) + bytes(32) + (0).to_bytes(8, "big") * 2
        ref = NodeRef(hashlib.sha256(child).digest(), 1, 0, 0, 0, 0)
        self.assertRaises(InvalidNode, decode_node, child, ref)


class SyncPlanTests(SynchronousTestCase):
    def setUp(self) -> None:
        rng = random.Random(8)
        self.old = make_entries(rng, 400)
        self.new = list(self.old)
        self.new[100:103] = make_entries(rng, 5)
        self.new[300:300] = make_entries(rng, 2)
        self.store = MemoryStore()
        self.old_root = build(self.old, self.store)
        self.new_root = build(self.new, self.store)
        self.held = node_hashes(self.old_root, self.store)
        self.sections = {e.sha256 for e in self.old}

    def test_fetches_exactly_the_missing_nodes_and_sections(self) -> None:
        asked: list[bytes] = []

        def have_subtree(node_hash: bytes) -> bool:
            asked.append(node_hash)
            return node_hash in self.held

        result = missing(
            self.new_root, self.store, have_subtree, self.sections.__contains__
        )
        expected = node_hashes(self.new_root, self.store) - self.held
        fetched = [ref.hash for ref in result.nodes]
        self.assertEqual(set(fetched), expected)
        self.assertEqual(len(fetched), len(expected))
        self.assertTrue(self.held.isdisjoint(fetched))
        self.assertEqual(
            [(w.index, w.entry) for w in result.sections],
            [(i, e) for i, e in enumerate(self.new) if e.sha256 not in self.sections],
        )
        offsets = [sum(e.length for e in self.new[: w.index]) for w in result.sections]
        self.assertEqual([w.offset for w in result.sections], offsets)
        # A held subtree is never entered, so its children are never asked.
        self.assertLess(len(asked), len(node_hashes(self.new_root, self.store)))

    def test_nothing_to_fetch_for_a_held_tree(self) -> None:
        plan = SyncPlan(self.old_root, self.held.__contains__, lambda h: True)
        self.assertTrue(plan.finished)
        self.assertIsNone(plan.next_node())

    def test_out_of_order_answers_with_several_in_flight(self) -> None:
        rng = random.Random(9)
        plan = SyncPlan(
            self.new_root, self.held.__contains__, self.sections.__contains__
        )
        in_flight: list[NodeRef] = []
        fetched, wanted = set(), []
        while not plan.finished:
            while len(in_flight) < 4 and (ref := plan.next_node()) is not None:
                in_flight.append(ref)
            ref = in_flight.pop(rng.randrange(len(in_flight)))
            wanted += plan.node_received(ref.hash, self.store[ref.hash])
            fetched.add(ref.hash)
        self.assertEqual(fetched, node_hashes(self.new_root, self.store) - self.held)
        self.assertEqual(len(wanted), 7)

    def test_bad_bytes_are_refused_and_can_be_retried(self) -> None:
        plan = SyncPlan(
            self.new_root, self.held.__contains__, self.sections.__contains__
        )
        ref = plan.next_node()
        assert ref is not None
        good = self.store[ref.hash]
        bad = bytearray(good)
        bad[-1] ^= 1
        self.assertRaises(InvalidNode, plan.node_received, ref.hash, bytes(bad))
        self.assertRaises(InvalidNode, plan.node_received, ref.hash, good + good)
        self.assertRaises(
            InvalidNode, plan.node_received, ref.hash, b"x" * (MAX_NODE_BYTES + 1)
        )
        self.assertEqual(plan.in_flight, 1)
        plan.node_failed(ref.hash)
        self.assertEqual(plan.next_node(), ref)
        plan.node_received(ref.hash, good)
        self.assertRaises(TreeError, plan.node_received, ref.hash, good)
        self.assertRaises(TreeError, plan.node_failed, ref.hash)

    def test_a_node_of_the_wrong_level_is_refused(self) -> None:
        leaf = next(
            n for n in iter_nodes(self.new_root, self.store) if n.ref.level == 0
        )
        claimed = TreeRoot(leaf.ref.hash, 1, leaf.ref.entry_count, leaf.ref.byte_count)
        plan = SyncPlan(claimed, lambda h: False, lambda h: False)
        ref = plan.next_node()
        assert ref is not None
        with self.assertRaisesRegex(InvalidNode, "level 0"):
            plan.node_received(ref.hash, leaf.data)

    @settings(max_examples=30, deadline=None)
    @given(st.integers(0, 2**32), st.integers(1, 300), st.integers(1, 6))
    def test_diff_is_exact(self, seed: int, count: int, edit_count: int) -> None:
        rng = random.Random(seed)
        old = make_entries(rng, count)
        new = list(old)
        for _ in range(edit_count):
            at = rng.randrange(len(new) + 1)
            new[at : at + rng.randint(0, 2)] = make_entries(rng, rng.randint(0, 3))
        store = MemoryStore()
        old_root, new_root = build(old, store), build(new, store)
        result = diff(old_root, new_root, store)
        expected = node_hashes(new_root, store) - node_hashes(old_root, store)
        self.assertEqual({ref.hash for ref in result.nodes}, expected)
        self.assertEqual(len(result.nodes), len(expected))
        old_sections = {e.sha256 for e in old}
        self.assertEqual(
            {w.entry.sha256 for w in result.sections},
            {e.sha256 for e in new} - old_sections,
        )


class ProofTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.entries = make_entries(random.Random(10), 300)
        self.store = MemoryStore()
        self.root = build(self.entries, self.store)

    @settings(max_examples=100, deadline=None)
    @given(st.data())
    def test_proofs_verify_and_any_flipped_bit_fails(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.entries) - 1))
        proof = prove(self.root, index, self.store)
        self.assertEqual(len(proof.nodes), self.root.level + 1)
        located = verify_proof(self.root, index, proof)
        self.assertEqual(located.entry, self.entries[index])
        self.assertEqual(located.offset, sum(e.length for e in self.entries[:index]))
        node = data.draw(st.integers(0, len(proof.nodes) - 1))
        bit = data.draw(st.integers(0, 8 * len(proof.nodes[node]) - 1))
        nodes = list(proof.nodes)
        flipped = bytearray(nodes[node])
        flipped[bit // 8] ^= 1 << (bit % 8)
        nodes[node] = bytes(flipped)
        self.assertRaises(
            InvalidProof, verify_proof, self.root, index, Proof(index, tuple(nodes))
        )

    def test_every_bit_of_one_proof(self) -> None:
        proof = prove(self.root, 123, self.store)
        for node in range(len(proof.nodes)):
            for bit in range(8 * len(proof.nodes[node])):
                nodes = list(proof.nodes)
                flipped = bytearray(nodes[node])
                flipped[bit // 8] ^= 1 << (bit % 8)
                nodes[node] = bytes(flipped)
                with self.assertRaises(InvalidProof):
                    verify_proof(self.root, 123, Proof(123, tuple(nodes)))

    def test_wrong_index_foreign_root_and_bad_shape(self) -> None:
        proof = prove(self.root, 10, self.store)
        far = prove(self.root, 250, self.store)
        self.assertRaises(InvalidProof, verify_proof, self.root, 250, proof)
        self.assertRaises(
            InvalidProof, verify_proof, self.root, 250, Proof(250, proof.nodes)
        )
        self.assertRaises(InvalidProof, verify_proof, self.root, 300, proof)
        other = build(make_entries(random.Random(11), 300), self.store)
        self.assertRaises(InvalidProof, verify_proof, other, 10, proof)
        lying = TreeRoot(self.root.hash, self.root.level, 301, self.root.byte_count)
        self.assertRaises(InvalidProof, verify_proof, lying, 10, proof)
        self.assertRaises(
            InvalidProof, verify_proof, self.root, 10, Proof(10, proof.nodes[:-1])
        )
        self.assertRaises(
            InvalidProof,
            verify_proof,
            self.root,
            10,
            Proof(10, proof.nodes + far.nodes[-1:]),
        )
        self.assertRaises(
            InvalidProof, verify_proof, self.root, 10, Proof(10, list(proof.nodes))
        )  # type: ignore[arg-type]

    def test_offset_proofs(self) -> None:
        offset = sum(e.length for e in self.entries[:77]) + 5
        proof = prove_offset(self.root, offset, self.store)
        self.assertEqual(proof.index, 77)
        located = verify_offset_proof(self.root, offset, proof)
        self.assertEqual(located.entry, self.entries[77])
        self.assertRaises(
            InvalidProof, verify_offset_proof, self.root, offset + 10**6, proof
        )
        self.assertRaises(
            InvalidProof, verify_offset_proof, self.root, self.root.byte_count, proof
        )

    def test_proof_is_small(self) -> None:
        entries = make_entries(random.Random(12), 20_000)
        store = MemoryStore()
        root = build(entries, store, SECTION_TREE_SHAPE)
        proof = prove(root, 12_345, store)
        self.assertLess(
            proof.size, (root.level + 1) * (HEADER_BYTES + 64 * ENTRY_BYTES)
        )
        self.assertEqual(verify_proof(root, 12_345, proof).entry, entries[12_345])
