"""The update journal: sorted sealed runs, last write wins, entry extents."""

from __future__ import annotations

import os
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content import journal
from barterbackup.content.journal import Operation, PendingFile, UpdateJournal
from barterbackup.content.manifest import sort_key
from barterbackup.tree import ENTRY_BYTES

NAMES = st.sampled_from(["a", "a/b", "a-b", "b", "c/d", "é", "z/z/z"])
OPERATIONS = st.lists(st.tuples(st.sampled_from(list(Operation)), NAMES), max_size=60)


def entry(number: int) -> bytes:
    return (1 + number % 1000).to_bytes(8, "big") + number.to_bytes(80, "big")


class JournalTests(SynchronousTestCase):
    def open_journal(self) -> UpdateJournal:
        directory = Path(self.mktemp())
        directory.mkdir()
        runs: list[int] = []
        opened = UpdateJournal(directory, os.urandom, before_run=lambda: runs.append(1))
        self.addCleanup(opened.close)
        self.runs = runs
        return opened

    @settings(max_examples=60, deadline=None)
    @given(operations=OPERATIONS, run_size=st.integers(1, 9))
    def test_changes_follow_the_last_operation(
        self, operations: list[tuple[Operation, str]], run_size: int
    ) -> None:
        self.patch(journal, "RUN_OPERATIONS", run_size)
        update = self.open_journal()
        expected: dict[str, tuple[Operation, int, bool]] = {}
        written: set[str] = set()
        for number, (operation, name) in enumerate(operations):
            if operation is Operation.WRITE:
                pending = PendingFile(name, 0o644, number, 0, 0, 0)
                first = update.append_entries(entry(number))
                pending.size = 5
                pending.add_extent(first, 1)
                update.write(pending)
            elif operation is Operation.REMOVE:
                update.remove(name)
            else:
                update.keep(name)
            expected[name] = (operation, number, name in written)
            if operation is Operation.WRITE:
                written.add(name)
        changes = list(update.changes())
        self.assertEqual([c.name for c in changes], sorted(expected, key=sort_key))
        for change in changes:
            operation, number, written_before = expected[change.name]
            self.assertEqual(change.operation, operation)
            self.assertEqual(change.written_before, written_before)
            if operation is Operation.WRITE:
                assert change.record is not None
                self.assertEqual(change.record.mtime_ns, number)
                ((first, count),) = change.extents
                self.assertEqual(update.read_entries(first, count), entry(number))
        self.assertEqual(len(self.runs), len(operations) // run_size)

    def test_extents_coalesce_and_read_back_through_the_window(self) -> None:
        update = self.open_journal()
        pending = PendingFile("big", 0o644, 0, 0, 0, 0)
        other = PendingFile("other", 0o644, 0, 0, 0, 0)
        count = 3 * journal.ENTRY_BUFFER_BYTES // ENTRY_BYTES
        for number in range(count):
            first = update.append_entries(entry(number))
            (other if number % 1000 == 999 else pending).add_extent(first, 1)
        self.assertEqual(len(pending.extents), count // 1000 + 1)
        data = b"".join(update.read_entries(f, c) for f, c in pending.extents)
        self.assertEqual(len(data), pending.section_count * ENTRY_BYTES)
        self.assertEqual(data[:ENTRY_BYTES], entry(0))
        self.assertRaises(ValueError, update.read_entries, count, 1)
        hashes = list(update.iter_entry_hashes())
        self.assertEqual(len(hashes), count)
        self.assertEqual(hashes[7], entry(7)[8:40])

    def test_runs_are_sealed_and_the_files_go_at_close(self) -> None:
        self.patch(journal, "RUN_OPERATIONS", 10)
        update = self.open_journal()
        for number in range(25):
            update.remove(f"secret/name-{number}")
        files = list(update._runs_path.parent.iterdir())
        self.assertEqual(len(files), 2)
        self.assertNotIn(b"secret", update._runs_path.read_bytes())
        self.assertGreater(update._runs_path.stat().st_size, 0)
        update.close()
        self.assertEqual(list(update._runs_path.parent.iterdir()), [])
        self.assertRaises(ValueError, update.remove, "x")

    def test_a_tampered_run_is_refused(self) -> None:
        self.patch(journal, "RUN_OPERATIONS", 4)
        update = self.open_journal()
        for number in range(8):
            update.remove(f"n{random.Random(number).random()}")
        raw = bytearray(update._runs_path.read_bytes())
        raw[10] ^= 1
        update._runs_path.write_bytes(bytes(raw))
        with self.assertRaises(OSError) as caught:
            list(update.changes())
        self.assertIn("changed on disk", str(caught.exception))
