"""PackStore: its compact index, and garbage collection by marks (a bit per
entry, no hash set)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.store.packs import PackStore, _StoredIndex


def blob(number: int, size: int = 3000) -> tuple[bytes, bytes]:
    data = random.Random(number).randbytes(size)
    return hashlib.sha256(data).digest(), data


def no_crash(point: int) -> None:
    pass


class MarkTests(SynchronousTestCase):
    def store_with(self, counts: list[int]) -> tuple[PackStore, list[list[bytes]]]:
        """A store with one pack per count, of that many distinct blobs."""
        directory = Path(self.mktemp())
        directory.mkdir()
        store = PackStore(directory)
        self.addCleanup(store.close)
        hashes: list[list[bytes]] = []
        number = 0
        for count in counts:
            writer_number, writer = store.new_writer()
            blobs = [blob(number + i) for i in range(count)]
            number += count
            writer.append(
                b"".join(d for _, d in blobs), [(h, len(d)) for h, d in blobs]
            )
            store.install(writer_number, no_crash)
            hashes.append([h for h, _ in blobs])
        return store, hashes

    def test_sweep_keeps_marked_and_drops_the_rest(self) -> None:
        store, packs = self.store_with([10, 10, 10])
        marks = store.new_marks()
        keep = packs[0] + packs[1][:9] + packs[2][:2]
        for sha256 in keep:
            self.assertIs(store.mark(marks, sha256), True)
        self.assertIs(store.mark(marks, keep[0]), False)  # already marked
        self.assertIsNone(store.mark(marks, b"\x00" * 32))  # not stored
        freed = store.sweep(marks)
        for group in packs:
            for sha256 in group:
                self.assertEqual(store.has(sha256), sha256 in keep)
        for sha256 in keep:
            self.assertEqual(hashlib.sha256(store.read(sha256)).digest(), sha256)
        # Pack 2 was mostly dead: repacked; pack 1 only lost its index entry.
        self.assertEqual(freed, 8 * 3000)
        reopened = PackStore(store.directory)
        self.addCleanup(reopened.close)
        for sha256 in keep:
            self.assertTrue(reopened.has(sha256))

    def test_unmarked_packs_vanish_and_full_ones_are_not_read(self) -> None:
        store, packs = self.store_with([5, 5])
        marks = store.new_marks()
        for sha256 in packs[0]:
            store.mark(marks, sha256)
        self.assertEqual(len(marks.fully_marked()), 1)
        self.assertEqual(store.sweep(marks), 5 * 3000)
        self.assertEqual(len(list(store.directory.glob("*.pack"))), 1)
        self.assertTrue(all(store.has(sha256) for sha256 in packs[0]))

    def test_pack_installed_after_marking_is_kept(self) -> None:
        store, _ = self.store_with([3])
        marks = store.new_marks()
        writer_number, writer = store.new_writer()
        sha256, data = blob(1000)
        writer.append(data, [(sha256, len(data))])
        self.assertIsNone(store.mark(marks, sha256))  # being written: not stored
        store.install(writer_number, no_crash)
        store.sweep(marks)
        self.assertTrue(store.has(sha256))


class StoredIndexTests(SynchronousTestCase):
    """The compact index finds every registered entry (and only live ones)."""

    @settings(max_examples=40, deadline=None)
    @given(
        packs=st.lists(st.integers(0, 300), min_size=1, max_size=8),
        dropped=st.sets(st.integers(0, 7)),
        seed=st.integers(0, 2**16),
    )
    def test_matches_a_model(
        self, packs: list[int], dropped: set[int], seed: int
    ) -> None:
        rng = random.Random(seed)
        index = _StoredIndex()
        model: dict[bytes, set[int]] = {}
        for number, count in enumerate(packs):
            # Few distinct leading bytes: shards fill and fragments collide.
            hashes = [
                bytes([rng.randrange(3), rng.randrange(2)]) + rng.randbytes(30)
                for _ in range(count)
            ]
            if count and rng.random() < 0.5:
                hashes[-1] = hashes[0]  # a repeated hash within a pack
            index.add_pack(number, hashes)
            for entry, sha256 in enumerate(hashes):
                model.setdefault(sha256, set()).add(number << 32 | entry)
        index.drop_packs(dropped)
        for sha256, locations in model.items():
            live = {loc for loc in locations if loc >> 32 not in dropped}
            found = set(index.candidates(sha256))
            # Every live location is found; the rest share 24 bits only.
            self.assertLessEqual(live, found)
            for location in found - live:
                self.assertNotIn(location >> 32, dropped)

    def test_reopened_store_finds_everything(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        store = PackStore(directory)
        blobs = [blob(i, 100) for i in range(2000)]
        for start in range(0, 2000, 500):
            number, writer = store.new_writer()
            part = blobs[start : start + 500]
            writer.append(b"".join(d for _, d in part), [(h, len(d)) for h, d in part])
            store.install(number, no_crash)
        store.close()
        reopened = PackStore(directory)
        self.addCleanup(reopened.close)
        for sha256, data in blobs:
            self.assertEqual(reopened.read(sha256), data)
        self.assertFalse(reopened.has(hashlib.sha256(b"absent").digest()))
        # Ordinals running out rebuilds the index, losing nothing.
        reopened._reindex()
        for sha256, data in blobs[::97]:
            self.assertEqual(reopened.read(sha256), data)
