"""PackStore garbage collection by marks: a bit per entry, no hash set."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.store.packs import PackStore


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
