"""The peer table: kept in memory, written off the reactor, coalesced."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.peers.records import WRITE_DELAY, PeerRecords
from barterbackup.store.metadata import MetadataStore

KEY = bytes(range(32))


class RecordingRunner:
    """A `blocking` runner that records each piece of work it is given and
    runs it only when the test says so (as a thread pool would, later)."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []
        self.runs = 0

    def __call__(self, work: Callable[[], Any]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.queued.append((work, d))
        return d

    def run_all(self) -> None:
        while self.queued:
            work, d = self.queued.pop(0)
            self.runs += 1
            d.callback(work())


class PeerRecordsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.path = Path(self.mktemp())
        self.metadata = MetadataStore(self.path, KEY)
        self.runner = RecordingRunner()
        self.records = PeerRecords(self.metadata, self.clock, self.runner)

    def test_a_burst_of_changes_is_one_write_off_the_reactor(self) -> None:
        for rtt in range(100):
            self.records.remember(b"a" * 32, 1000 + rtt, seen=True, rtt_ms=rtt)
        self.records.remember(b"b" * 32, 2000, share=True)
        # Nothing touched the disk on the caller's thread.
        self.assertFalse(self.path.exists())
        self.assertEqual(self.runner.queued, [])
        self.clock.advance(WRITE_DELAY)
        self.assertEqual(len(self.runner.queued), 1)
        self.runner.run_all()
        peers = {bytes(p.onion_pubkey): p for p in self.metadata.get().peers}
        self.assertEqual(peers[b"a" * 32].rtt_ms, 99)
        self.assertEqual(peers[b"a" * 32].first_seen, 1000)
        self.assertEqual(peers[b"a" * 32].last_seen, 1099)
        self.assertTrue(peers[b"b" * 32].share_in_exchange)
        self.assertEqual(self.runner.runs, 1)

    def test_changes_during_a_write_go_out_right_after_it(self) -> None:
        self.records.remember(b"a" * 32, 1, rtt_ms=1)
        self.clock.advance(WRITE_DELAY)
        self.records.remember(b"a" * 32, 2, rtt_ms=2)
        flushed = self.records.flush()
        self.runner.run_all()
        self.successResultOf(flushed)
        self.assertEqual(self.runner.runs, 2)
        self.assertEqual(self.metadata.get().peers[0].rtt_ms, 2)

    def test_table_loads_back(self) -> None:
        self.records.remember(b"a" * 32, 5, endpoint="tcp:127.0.0.1:1", held_revision=3)
        d = self.records.flush()
        self.runner.run_all()
        self.successResultOf(d)
        again = PeerRecords(MetadataStore(self.path, KEY), self.clock)
        again.load()
        self.assertEqual(again.endpoint(b"a" * 32), "tcp:127.0.0.1:1")
        self.assertEqual(again.held_revision(b"a" * 32), 3)
        self.assertEqual(again.held_revision(b"z" * 32), 0)

    def test_a_failed_write_keeps_the_changes_for_the_next(self) -> None:
        def failing(work: Callable[[], Any]) -> defer.Deferred[Any]:
            return defer.fail(OSError("disk full"))

        records = PeerRecords(self.metadata, self.clock, failing)
        records.remember(b"a" * 32, 1, rtt_ms=7)
        self.successResultOf(records.flush())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        records._blocking = self.runner
        d = records.flush()
        self.runner.run_all()
        self.successResultOf(d)
        self.assertEqual(self.metadata.get().peers[0].rtt_ms, 7)


class ChatKeyRecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.path = Path(self.mktemp())
        self.metadata = MetadataStore(self.path, KEY)
        self.records = PeerRecords(self.metadata, self.clock)

    def test_set_creates_the_record_seals_it_and_clear_removes_the_key(self) -> None:
        peer = b"c" * 32
        self.assertIsNone(self.records.aead_key(peer))
        self.records.set_aead_key(peer, b"k" * 32, now=1234)
        self.assertEqual(self.records.aead_key(peer), b"k" * 32)
        self.successResultOf(self.records.flush())
        # The key is inside the sealed Metadata, never in the clear on disk.
        self.assertNotIn(b"k" * 32, self.path.read_bytes())
        reloaded = PeerRecords(MetadataStore(self.path, KEY), self.clock)
        reloaded.load()
        self.assertEqual(reloaded.aead_key(peer), b"k" * 32)
        record = reloaded.get(peer)
        assert record is not None
        self.assertEqual(record.first_seen, 1234)
        self.records.set_aead_key(peer, None, now=1300)
        self.assertIsNone(self.records.aead_key(peer))
        self.successResultOf(self.records.flush())
        reloaded = PeerRecords(MetadataStore(self.path, KEY), self.clock)
        reloaded.load()
        self.assertIsNone(reloaded.aead_key(peer))

    def test_a_key_of_another_length_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            self.records.set_aead_key(b"c" * 32, b"short", now=1)
        self.assertIsNone(self.records.get(b"c" * 32))
