"""The chunked manifest: round trips, deterministic sealing, lookups, and
refusal of tampered, foreign or malformed chunks and records."""

from __future__ import annotations

import hashlib
import random
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content.manifest import (
    MAX_CHUNK_PLAINTEXT,
    ChunkSealer,
    FileRecord,
    InvalidManifest,
    ManifestError,
    ManifestIndex,
    ManifestKeys,
    ManifestReader,
    ManifestWriter,
    decode_chunk,
    sort_key,
)
from barterbackup.content.manifest.records import chunk_header, encode_record
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.tree import Entry, TreeBuilder, TreeRoot, iter_entries

KEYS = ManifestKeys.from_node_keys(node_keys_from_master(bytes(32)))
OTHER_KEYS = ManifestKeys.from_node_keys(node_keys_from_master(bytes([1]) * 32))
OWNER = bytes(range(32))


class BlobStore(dict[bytes, bytes]):
    def put(self, digest: bytes, data: bytes) -> None:
        assert hashlib.sha256(data).digest() == digest
        self[digest] = data

    def get(self, digest: bytes, default: object = None) -> bytes:  # type: ignore[override]
        return self[digest]


def make_record(name: str, rng: random.Random) -> FileRecord:
    size = rng.choice([0, 1, rng.randint(1, 10**7)])
    sections = 0 if size == 0 else rng.randint(max(1, -(-size // 2**22)), min(size, 50))
    return FileRecord(
        name=name,
        size=size,
        mode=rng.randint(0, 0o7777),
        mtime_ns=rng.randint(-(2**63), 2**63 - 1),
        ctime_ns=rng.randint(0, 2**62),
        inode=rng.randint(0, 2**64 - 1),
        device=rng.randint(0, 2**64 - 1),
        section_count=sections,
    )


def make_records(rng: random.Random, count: int) -> list[FileRecord]:
    names: set[str] = set()
    while len(names) < count:
        depth = rng.randint(1, 4)
        names.add(
            "/".join(f"d{rng.randint(0, 30)}é" for _ in range(depth))
            + f"-{rng.random()}"
        )
    return [make_record(n, rng) for n in sorted(names, key=sort_key)]


def write(
    records: list[FileRecord], store: BlobStore, keys: ManifestKeys = KEYS
) -> TreeRoot:
    writer = ManifestWriter(keys, OWNER, store, store)
    for record in records:
        writer.add(record)
    summary = writer.finish()
    assert summary.file_count == len(records)
    assert summary.section_count == sum(r.section_count for r in records)
    return summary.tree


def reader(
    tree: TreeRoot, store: BlobStore, sections: int, keys: ManifestKeys = KEYS
) -> ManifestReader:
    return ManifestReader(tree, keys, OWNER, store, store, sections)


def chunk_hashes(tree: TreeRoot, store: BlobStore) -> list[bytes]:
    return [entry.sha256 for entry in iter_entries(tree, store)]


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=40, deadline=None)
    @given(st.integers(0, 2**32), st.integers(0, 600))
    def test_records_come_back_with_positions(self, seed: int, count: int) -> None:
        records = make_records(random.Random(seed), count)
        store = BlobStore()
        tree = write(records, store)
        total = sum(r.section_count for r in records)
        placed = list(reader(tree, store, total).records())
        self.assertEqual([p.record for p in placed], records)
        firsts = [sum(r.section_count for r in records[:i]) for i in range(count)]
        self.assertEqual([p.first_section for p in placed], firsts)

    def test_find_by_name(self) -> None:
        records = make_records(random.Random(1), 2000)
        store = BlobStore()
        tree = write(records, store)
        total = sum(r.section_count for r in records)
        manifest = reader(tree, store, total)
        for index in (0, 1, 999, 1999):
            found = manifest.find(records[index].name)
            assert found is not None
            self.assertEqual(found.record, records[index])
            self.assertEqual(
                found.first_section, sum(r.section_count for r in records[:index])
            )
        self.assertIsNone(manifest.find("not/in/the/set"))
        self.assertIsNone(manifest.find("\U0010ffff"))
        self.assertIsNone(manifest.find("!"))
        self.assertRaises(ManifestError, manifest.find, "../escape")
        self.assertGreater(len(manifest.index().first_keys), 10)

    def test_writer_builds_the_readers_index(self) -> None:
        """The index a commit keeps equals the one a full read builds, and a
        reader given it finds names without reading the whole manifest."""
        records = make_records(random.Random(2), 1500)
        store = BlobStore()
        writer = ManifestWriter(KEYS, OWNER, store, store)
        for record in records:
            writer.add(record)
        summary = writer.finish()
        total = summary.section_count
        full = reader(summary.tree, store, total).index()
        self.assertEqual(summary.index.first_keys, full.first_keys)
        self.assertEqual(summary.index.first_sections, full.first_sections)
        self.assertEqual(summary.index.record_counts, full.record_counts)
        self.assertEqual(sum(summary.index.record_counts), len(records))
        opened: list[bytes] = []

        class Counting(BlobStore):
            def get(self, digest: bytes, default: object = None) -> bytes:
                opened.append(digest)
                return super().get(digest)

        counting = Counting(store)
        manifest = ManifestReader(
            summary.tree, KEYS, OWNER, counting, counting, total, summary.index
        )
        for record in records[100:140]:  # neighbours: one chunk or two
            found = manifest.find(record.name)
            assert found is not None
            self.assertEqual(found.record, record)
        chunks = set(chunk_hashes(summary.tree, store))
        self.assertLessEqual(len([d for d in opened if d in chunks]), 3)
        # An index of another manifest is refused.
        with self.assertRaises(InvalidManifest):
            ManifestReader(
                summary.tree,
                KEYS,
                OWNER,
                store,
                store,
                total,
                ManifestIndex([], array("Q"), array("L")),
            )

    def test_empty_manifest(self) -> None:
        store = BlobStore()
        tree = write([], store)
        self.assertEqual(tree.entry_count, 0)
        self.assertEqual(list(reader(tree, store, 0).records()), [])
        self.assertIsNone(reader(tree, store, 0).find("a"))

    def test_order_is_by_components(self) -> None:
        self.assertLess(sort_key("a/b"), sort_key("a-b"))
        self.assertLess(sort_key("a/b/c"), sort_key("a/ba"))
        rng = random.Random(2)
        records = [make_record(n, rng) for n in ("a/b", "a/c", "a-b", "ab")]
        store = BlobStore()
        tree = write(records, store)
        total = sum(r.section_count for r in records)
        self.assertEqual(
            [p.record.name for p in reader(tree, store, total).records()],
            ["a/b", "a/c", "a-b", "ab"],
        )

    def test_big_records_respect_the_chunk_bound(self) -> None:
        rng = random.Random(3)
        names = sorted(
            {
                "/".join(f"{i:03d}" + "x" * 250 for _ in range(15)) + f"{i}"
                for i in range(60)
            },
            key=sort_key,
        )
        records = [make_record(n, rng) for n in names]
        store = BlobStore()
        tree = write(records, store)
        for digest in chunk_hashes(tree, store):
            self.assertLessEqual(len(store[digest]), MAX_CHUNK_PLAINTEXT + 16)
        total = sum(r.section_count for r in records)
        self.assertEqual(
            [p.record for p in reader(tree, store, total).records()], records
        )


class DeterministicSealingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.rng = random.Random(4)
        self.records = make_records(self.rng, 3000)
        self.store = BlobStore()
        self.tree = write(self.records, self.store)
        self.chunks = chunk_hashes(self.tree, self.store)

    def test_same_records_same_bytes(self) -> None:
        again = BlobStore()
        self.assertEqual(write(self.records, again), self.tree)
        self.assertEqual(again, self.store)

    def test_one_changed_record_changes_only_its_chunk(self) -> None:
        for index in (0, 1500, 2999):
            changed = list(self.records)
            old = changed[index]
            changed[index] = FileRecord(
                old.name,
                old.size,
                old.mode,
                old.mtime_ns + 1,
                old.ctime_ns,
                old.inode,
                old.device,
                old.section_count,
            )
            store = BlobStore()
            new_chunks = chunk_hashes(write(changed, store), store)
            self.assertEqual(len(new_chunks), len(self.chunks))
            self.assertEqual(len(set(new_chunks) - set(self.chunks)), 1)

    def test_an_inserted_file_changes_at_most_two_chunks(self) -> None:
        names = {r.name for r in self.records}
        for _ in range(20):
            record = make_records(self.rng, 1)[0]
            if record.name in names:
                continue
            changed = sorted([*self.records, record], key=lambda r: sort_key(r.name))
            store = BlobStore()
            new_chunks = chunk_hashes(write(changed, store), store)
            self.assertLessEqual(len(set(new_chunks) - set(self.chunks)), 2)
            self.assertLessEqual(len(set(self.chunks) - set(new_chunks)), 1)


class RefusalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.records = make_records(random.Random(5), 500)
        self.total = sum(r.section_count for r in self.records)
        self.store = BlobStore()
        self.tree = write(self.records, self.store)

    def read_all(self, manifest: ManifestReader) -> None:
        for _ in manifest.records():
            pass

    def test_foreign_key_or_owner_is_refused(self) -> None:
        with self.assertRaisesRegex(InvalidManifest, "authentication"):
            self.read_all(reader(self.tree, self.store, self.total, OTHER_KEYS))
        other_owner = ManifestReader(
            self.tree, KEYS, bytes(32), self.store, self.store, self.total
        )
        self.assertRaises(InvalidManifest, self.read_all, other_owner)

    def test_tampered_chunk_is_refused(self) -> None:
        digest = chunk_hashes(self.tree, self.store)[3]
        tampered = bytearray(self.store[digest])
        tampered[20] ^= 4
        self.store[digest] = bytes(tampered)
        with self.assertRaisesRegex(InvalidManifest, "not the one named"):
            self.read_all(reader(self.tree, self.store, self.total))

    def test_validly_sealed_but_wrong_chunk_is_refused(self) -> None:
        # The tree names a chunk that opens, but holds records out of order.
        a, b = self.records[10], self.records[5]
        bad = (
            chunk_header(2) + encode_record(a, b"") + encode_record(b, a.name.encode())
        )
        sealed = ChunkSealer(KEYS, OWNER).seal(bad)
        digest = hashlib.sha256(sealed).digest()
        store = BlobStore()
        store.put(digest, sealed)
        builder = TreeBuilder(store)
        builder.add(Entry(len(sealed), digest))
        tree = builder.finish()
        sections = a.section_count + b.section_count
        manifest = ManifestReader(tree, KEYS, OWNER, store, store, sections)
        with self.assertRaisesRegex(InvalidManifest, "out of order"):
            self.read_all(manifest)

    def test_chunk_entry_with_private_data_is_refused(self) -> None:
        digest = chunk_hashes(self.tree, self.store)[0]
        store = BlobStore()
        store.put(digest, self.store[digest])
        builder = TreeBuilder(store)
        builder.add(Entry(len(self.store[digest]), digest, b"\x01" * 48))
        manifest = ManifestReader(builder.finish(), KEYS, OWNER, store, store, 1)
        with self.assertRaisesRegex(InvalidManifest, "private"):
            self.read_all(manifest)

    def test_tampered_chunk_tree_is_refused(self) -> None:
        root_node = bytearray(self.store[self.tree.hash])
        root_node[-1] ^= 1
        self.store[self.tree.hash] = bytes(root_node)
        with self.assertRaisesRegex(InvalidManifest, "chunk tree"):
            self.read_all(reader(self.tree, self.store, self.total))

    def test_section_count_must_add_up(self) -> None:
        self.assertRaises(
            InvalidManifest,
            self.read_all,
            reader(self.tree, self.store, self.total + 1),
        )
        self.assertRaises(
            InvalidManifest,
            self.read_all,
            reader(self.tree, self.store, self.total - 1),
        )

    def test_bad_records_are_refused(self) -> None:
        good = dict(
            name="a",
            size=10,
            mode=0o644,
            mtime_ns=0,
            ctime_ns=0,
            inode=1,
            device=1,
            section_count=1,
        )
        for change in (
            {"name": "/abs"},
            {"name": "a//b"},
            {"name": ""},
            {"size": -1},
            {"mode": 0o10000},
            {"mtime_ns": 2**63},
            {"inode": 2**64},
            {"section_count": 0},
            {"size": 0},
            {"section_count": 11},
            {"size": 2**23, "section_count": 1},
            {"device": "1"},
        ):
            with self.assertRaises(ManifestError, msg=str(change)):
                FileRecord(**{**good, **change})  # type: ignore[arg-type]
        writer = ManifestWriter(KEYS, OWNER, BlobStore(), BlobStore())
        writer.add(FileRecord(**good))  # type: ignore[arg-type]
        self.assertRaises(ManifestError, writer.add, FileRecord(**good))  # type: ignore[arg-type]
        self.assertRaises(
            ManifestError, writer.add, FileRecord(**{**good, "name": "0"})
        )  # type: ignore[arg-type]
        writer.finish()
        self.assertRaises(ManifestError, writer.finish)
        self.assertRaises(ManifestError, ManifestKeys, bytes(63), bytes(32))
        self.assertRaises(ManifestError, ChunkSealer, KEYS, bytes(31))
        self.assertEqual(repr(KEYS), "<ManifestKeys>")


class DecodeChunkTests(SynchronousTestCase):
    def setUp(self) -> None:
        rng = random.Random(6)
        records = make_records(rng, 40)
        previous = b""
        parts = [chunk_header(len(records))]
        for record in records:
            parts.append(encode_record(record, previous))
            previous = record.name.encode()
        self.plaintext = b"".join(parts)
        self.records = records

    def test_round_trip(self) -> None:
        self.assertEqual(list(decode_chunk(self.plaintext)), self.records)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400))
    def test_random_bytes(self, data: bytes) -> None:
        try:
            list(decode_chunk(data))
        except InvalidManifest:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_mutated_chunks(self, data: st.DataObject) -> None:
        raw = bytearray(self.plaintext)
        for _ in range(data.draw(st.integers(1, 4))):
            kind = data.draw(st.sampled_from(["flip", "cut", "grow", "byte"]))
            if kind == "flip":
                position = data.draw(st.integers(0, len(raw) - 1)) if raw else 0
                if raw:
                    raw[position] ^= 1 << data.draw(st.integers(0, 7))
            elif kind == "byte" and raw:
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(
                    st.integers(0, 255)
                )
            elif kind == "cut":
                del raw[data.draw(st.integers(0, len(raw))) :]
            else:
                raw += data.draw(st.binary(min_size=1, max_size=50))
        try:
            decoded = list(decode_chunk(bytes(raw)))
        except InvalidManifest:
            return
        # Whatever decodes is sorted, unique and valid.
        keys = [sort_key(r.name) for r in decoded]
        self.assertEqual(keys, sorted(set(keys)))

    def test_limits(self) -> None:
        self.assertRaises(InvalidManifest, list, decode_chunk(b""))
        self.assertRaises(InvalidManifest, list, decode_chunk(chunk_header(0)))
        self.assertRaises(
            InvalidManifest, list, decode_chunk(b"\x02" + self.plaintext[1:])
        )
        self.assertRaises(InvalidManifest, list, decode_chunk(self.plaintext + b"\x00"))
        self.assertRaises(InvalidManifest, list, decode_chunk(self.plaintext[:-1]))
        self.assertRaises(
            InvalidManifest,
            list,
            decode_chunk(self.plaintext + bytes(MAX_CHUNK_PLAINTEXT)),
        )
