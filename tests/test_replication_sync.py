"""Revision sync owner → replica over the real in-memory peer link."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError, PeerConnectionLost
from barterbackup.sync.push import PushFailed, push_revision
from barterbackup.sync.serve import PIECE_BYTES
from barterbackup.testing.link import connected_pair
from tests.sync_peers import SyncLink, SyncPeer


def sections(count: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


class SyncTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        base = Path(self.mktemp())
        self.owner = SyncPeer(base / "owner", self.clock, 1)
        self.replica = SyncPeer(base / "replica", self.clock, 2)
        self.link = SyncLink(self.owner, self.replica)
        self.progress: list[bbrpc_pb2.SetContentRevisionResponse] = []

    def push(self, data: list[bytes]) -> Any:
        revision = self.owner.content.commit(data)
        return revision, self.link.push(revision, self.progress)

    def wire_bytes(self) -> int:
        return self.link.wire_bytes

    def test_full_sync(self) -> None:
        data = [*sections(20, 300000), os.urandom(2500000)]
        revision, d = self.push(data)
        final = self.successResultOf(d)
        self.assertTrue(final.complete)
        self.assertEqual(final.revision, 1)
        self.assertEqual(final.bytes_done, final.bytes_total)
        self.assertEqual(final.bytes_fetched, sum(len(s) for s in data))
        held = self.replica.replicas.held(self.owner.pubkey)
        assert held is not None
        self.assertEqual((held.number, held.complete), (1, True))
        self.assertEqual(
            self.replica.replicas.read_section(
                self.owner.pubkey, revision.content_id, 20
            ),
            data[20],
        )
        # Progress is rate-limited: one item per MiB at most (no time passes).
        self.assertLessEqual(len(self.progress), 2 + 8_500_000 // (1024 * 1024))
        self.assertGreater(len(self.progress), 3)
        # All missing sections fit one Download batch.
        self.assertEqual(self.link.replica_calls, ["download_request"])

    def test_delta_sync_transfers_changed_sections_only(self) -> None:
        data = sections(50, 100_000)
        self.successResultOf(self.push(data)[1])
        before = self.wire_bytes()
        changed = list(data)
        for index in (3, 17, 41):
            changed[index] = os.urandom(100_000)
        changed.append(os.urandom(50_000))
        final = self.successResultOf(self.push(changed)[1])
        delta_wire = self.wire_bytes() - before
        changed_bytes = 3 * 100_000 + 50_000
        self.assertEqual(final.bytes_fetched, changed_bytes)
        self.assertGreater(delta_wire, changed_bytes)
        # Signed revision + request + progress overhead stays small.
        self.assertLess(delta_wire, changed_bytes * 1.1)
        held = self.replica.replicas.held(self.owner.pubkey)
        assert held is not None
        self.assertEqual(held.number, 2)
        self.assertEqual(held.stored_bytes, sum(len(s) for s in changed))

    def test_same_revision_again_fetches_nothing(self) -> None:
        data = sections(5, 10_000)
        revision, d = self.push(data)
        self.successResultOf(d)
        again = self.successResultOf(self.link.push(revision))
        self.assertTrue(again.complete)
        self.assertEqual(again.bytes_fetched, 0)

    def test_bad_bytes_refetched_once_then_fail_cleanly(self) -> None:
        old = sections(5, 10_000)
        self.successResultOf(self.push(old)[1])
        corrupt_sections: list[int] = []

        def corrupt(item: Any) -> Any:
            if item.section == 2:
                corrupt_sections.append(item.section)
                item.data = bytes(len(item.data))
                item.sha256 = hashlib.sha256(item.data).digest()
            return item

        self.link.tamper_downloads(corrupt)
        new = old[:2] + sections(3, 10_000)
        _, d = self.push(new)
        failure = self.failureResultOf(d, PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_BAD_REQUEST)
        self.assertIn("twice", failure.value.message)
        self.assertEqual(corrupt_sections, [2, 2])  # first try and one refetch
        held = self.replica.replicas.held(self.owner.pubkey)
        assert held is not None and held.readable is not None
        self.assertEqual(held.readable.number, 1)
        old_id = held.readable.content_id
        self.assertEqual(
            self.replica.replicas.read_section(self.owner.pubkey, old_id, 4), old[4]
        )

    def test_one_bad_piece_is_refetched_and_sync_succeeds(self) -> None:
        data = sections(4, 10_000)
        tampered: list[int] = []

        def corrupt_once(item: Any) -> Any:
            if item.section == 1 and not tampered:
                tampered.append(1)
                item.data = b"x" + item.data[1:]  # piece hash no longer matches
            return item

        self.link.tamper_downloads(corrupt_once)
        _revision, d = self.push(data)
        self.assertTrue(self.successResultOf(d).complete)
        self.assertEqual(
            self.link.replica_calls, ["download_request", "download_request"]
        )

    def test_drop_mid_transfer_then_resume_fetches_only_the_rest(self) -> None:
        data = sections(10, 100_000)
        self.link.cut_after_downloads(4)
        revision, d = self.push(data)
        self.failureResultOf(d, PeerConnectionLost)
        held = self.replica.replicas.held(self.owner.pubkey)
        assert held is not None
        self.assertFalse(held.complete)
        self.assertEqual(held.stored_bytes, 300_000)  # the 4th item was lost
        self.link = SyncLink(self.owner, self.replica)
        final = self.successResultOf(self.link.push(revision))
        self.assertTrue(final.complete)
        self.assertEqual(final.bytes_fetched, 700_000)

    def test_quota_exceeded_is_reported(self) -> None:
        self.replica.config.total_bytes = 100_000
        _, d = self.push(sections(3, 50_000))
        failure = self.failureResultOf(d, PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_QUOTA_EXCEEDED)
        self.assertIn("150000", failure.value.message)
        self.assertEqual(self.link.replica_calls, [])

    def test_stale_revision_is_reported(self) -> None:
        first, d = self.push(sections(2, 1000))
        self.successResultOf(d)
        self.successResultOf(self.push(sections(2, 1000))[1])
        failure = self.failureResultOf(self.link.push(first), PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_STALE)

    def test_invalid_revision_is_a_bad_request(self) -> None:
        request = bbrpc_pb2.SetContentRevisionRequest(signed_revision=b"nonsense")
        failure = self.failureResultOf(
            self.link.to_replica.call_stream(
                "set_content_revision_request", request, list().append
            ),
            PeerCallError,
        )
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_BAD_REQUEST)

    def test_delete(self) -> None:
        self.successResultOf(self.push(sections(2, 1000))[1])
        request = bbrpc_pb2.SetContentRevisionRequest(delete=True)
        items: list[Any] = []
        self.successResultOf(
            self.link.to_replica.call_stream(
                "set_content_revision_request", request, items.append
            )
        )
        self.assertTrue(items[-1].complete)
        self.assertIsNone(self.replica.replicas.held(self.owner.pubkey))

    def test_push_fails_if_stream_ends_short(self) -> None:
        class Silent:
            def set_content_revision(
                self, conn: object, req: object, send: object
            ) -> None:
                return None

        silent = SyncPeer(Path(self.mktemp()), self.clock, 3)
        to_silent, _, _ = connected_pair(
            self.clock, self.owner.keys, silent.keys, self.owner.handler, Silent()
        )
        revision = self.owner.content.commit(sections(1, 10))
        d = push_revision(to_silent, revision, self.progress.append)
        self.failureResultOf(d, PushFailed)

    def test_get_content_revision(self) -> None:
        response = self.successResultOf(
            self.link.to_replica.call(
                "get_content_revision_request", bbrpc_pb2.GetContentRevisionRequest()
            )
        )
        self.assertEqual(response.signed_revision, b"")
        self.assertEqual(response.granted_bytes, 50_000_000)
        revision, d = self.push(sections(3, 1000))
        self.successResultOf(d)
        response = self.successResultOf(
            self.link.to_replica.call(
                "get_content_revision_request", bbrpc_pb2.GetContentRevisionRequest()
            )
        )
        self.assertEqual(response.signed_revision, revision.signed)
        self.assertTrue(response.complete)
        self.assertEqual(response.stored_bytes, 3000)


def sync_pair(base: Path, clock: task.Clock) -> SyncLink:
    """An owner and a replica joined by the real in-memory peer link."""
    return SyncLink(SyncPeer(base / "o", clock, 1), SyncPeer(base / "r", clock, 2))


class ProgressRateTests(SynchronousTestCase):
    def test_progress_by_time_when_sections_are_small(self) -> None:
        clock = task.Clock()
        link = sync_pair(Path(self.mktemp()), clock)

        def tick(item: Any) -> Any:
            clock.advance(0.2)  # every section takes 0.2 s to arrive
            return item

        link.tamper_downloads(tick)
        progress: list[Any] = []
        revision = link.owner.content.commit(sections(10, 1000))
        self.successResultOf(link.push(revision, progress))
        # 10 sections at 0.2 s each = 2 s → about one report per 0.5 s, plus the
        # first and the final one; never one per section.
        self.assertGreaterEqual(len(progress), 4)
        self.assertLessEqual(len(progress), 7)
        self.assertEqual([p.complete for p in progress][-1], True)


class PieceTests(SynchronousTestCase):
    def test_large_section_comes_in_pieces(self) -> None:
        clock = task.Clock()
        link = sync_pair(Path(self.mktemp()), clock)
        pieces: list[tuple[int, int, int]] = []

        def record(item: Any) -> Any:
            pieces.append((item.section, item.offset, len(item.data)))
            return item

        link.tamper_downloads(record)
        revision = link.owner.content.commit([os.urandom(PIECE_BYTES * 2 + 5)])
        self.successResultOf(link.push(revision))
        self.assertEqual(
            pieces,
            [
                (0, 0, PIECE_BYTES),
                (0, PIECE_BYTES, PIECE_BYTES),
                (0, 2 * PIECE_BYTES, 5),
            ],
        )


class FloodTests(SynchronousTestCase):
    def test_owner_flooding_pieces_is_cut_off(self) -> None:
        clock = task.Clock()
        owner = SyncPeer(Path(self.mktemp()) / "o", clock, 1)
        replica = SyncPeer(Path(self.mktemp()) / "r", clock, 2)
        revision = owner.content.commit(sections(2, 1000))
        sent: list[int] = []

        class Flooder:
            def download(self, conn: object, req: object, send: Any) -> Any:
                async def flood() -> None:
                    for _ in range(100):  # bounded: the replica must stop first
                        piece = bbrpc_pb2.DownloadResponse(
                            section=7, data=b"z" * 65536, section_length=65536
                        )
                        sent.append(1)
                        await send(piece)

                return defer.Deferred.fromCoroutine(flood())

        to_replica, _, _ = connected_pair(
            clock, owner.keys, replica.keys, Flooder(), replica.handler
        )
        d = push_revision(to_replica, revision, list().append)
        failure = self.failureResultOf(d, PeerCallError)
        self.assertIn("far more bytes", failure.value.message)
        self.assertLess(len(sent), 100)
