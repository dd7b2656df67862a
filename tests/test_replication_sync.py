"""Tree sync owner → replica over the real in-memory peer link."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError, PeerConnectionLost
from barterbackup.sync import fetch
from barterbackup.sync.push import (
    PUSH_STALL_SECONDS,
    PushFailed,
    PushStalled,
    push_revision,
)
from barterbackup.sync.serve import PIECE_BYTES
from barterbackup.testing.fakes import make_revision
from barterbackup.testing.link import Direction, connected_pair
from tests.sync_peers import SyncLink, SyncPeer


def sections(count: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


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

    def held(self) -> Any:
        held = self.replica.replicas.held(self.owner.pubkey)
        assert held is not None
        return held

    def stored(self, data: bytes) -> bytes:
        return self.replica.replicas.read_blob(self.owner.pubkey, sha(data))

    def test_full_sync(self) -> None:
        data = [*sections(20, 300000), os.urandom(2500000)]
        revision, d = self.push(data)
        final = self.successResultOf(d)
        self.assertTrue(final.complete)
        self.assertEqual(final.revision, 1)
        self.assertEqual(final.bytes_done, final.bytes_total)
        section_bytes = sum(len(s) for s in data)
        # Sections plus the few tree nodes and the manifest chunk.
        self.assertGreater(final.bytes_fetched, section_bytes)
        self.assertLess(final.bytes_fetched, section_bytes + 8192)
        held = self.held()
        self.assertEqual(held.held.content_id, revision.content_id)
        self.assertIsNone(held.pending)
        for blob in (data[0], data[20]):
            self.assertEqual(self.stored(blob), blob)
        # Progress is rate-limited: one item per MiB at most (no time passes).
        self.assertLessEqual(len(self.progress), 3 + 8_500_000 // (1024 * 1024))
        self.assertGreater(len(self.progress), 3)
        # The root, then the leaves with nothing else to ask, then sections.
        self.assertLessEqual(len(self.link.replica_calls), 4)

    def test_sections_to_fetch_are_kept_to_a_bounded_backlog(self) -> None:
        """A large revision's leaves are not all fetched before its sections:
        the list of sections waiting to be asked for stays bounded."""
        self.patch(fetch, "MAX_SECTION_BACKLOG", 256)
        most = [0]
        real_found = fetch.RevisionFetcher._found_node

        def watching_found(
            fetcher: Any, plan: Any, node_hash: bytes, data: bytes
        ) -> None:
            real_found(fetcher, plan, node_hash, data)
            most[0] = max(most[0], len(fetcher._sections))

        self.patch(fetch.RevisionFetcher, "_found_node", watching_found)
        data = sections(3000, 40)
        _, d = self.push(data)
        self.assertTrue(self.successResultOf(d).complete)
        for blob in (data[0], data[1500], data[-1]):
            self.assertEqual(self.stored(blob), blob)
        # At most the backlog plus what the leaves of one round bring.
        self.assertGreater(most[0], 0)
        self.assertLessEqual(most[0], 256 + fetch.LEAF_MAX_ENTRIES * 4)
        self.assertLess(most[0], 3000)

    def test_delta_sync_transfers_changed_sections_and_paths_only(self) -> None:
        data = sections(400, 20_000)
        self.successResultOf(self.push(data)[1])
        before = self.link.wire_bytes
        changed = list(data)
        for index in (3, 170, 341):
            changed[index] = os.urandom(100_000)
        changed.insert(200, os.urandom(50_000))
        final = self.successResultOf(self.push(changed)[1])
        delta_wire = self.link.wire_bytes - before
        changed_bytes = 3 * 100_000 + 50_000
        self.assertGreater(final.bytes_fetched, changed_bytes)
        # The changed sections plus the nodes on their paths, the signed
        # root, requests and progress: a small fraction more.
        self.assertLess(delta_wire, changed_bytes * 1.05)
        self.assertEqual(self.held().held.number, 2)

    def test_same_revision_again_fetches_nothing(self) -> None:
        data = sections(5, 10_000)
        revision, d = self.push(data)
        self.successResultOf(d)
        calls = len(self.link.replica_calls)
        again = self.successResultOf(self.link.push(revision))
        self.assertTrue(again.complete)
        self.assertEqual(again.bytes_fetched, 0)
        self.assertEqual(len(self.link.replica_calls), calls)

    def test_unchanged_content_under_a_new_number_fetches_no_section(self) -> None:
        data = sections(30, 10_000)
        self.successResultOf(self.push(data)[1])
        final = self.successResultOf(self.push(data)[1])
        # Same trees: the root node is held whole, nothing is fetched.
        self.assertEqual(final.bytes_fetched, 0)
        self.assertEqual(self.held().held.number, 2)

    def test_bad_section_refetched_once_then_fail_cleanly(self) -> None:
        old = sections(5, 10_000)
        self.successResultOf(self.push(old)[1])
        new = old[:2] + sections(3, 10_000)
        target = sha(new[3])
        corrupted: list[bytes] = []

        def corrupt(item: Any) -> Any:
            if item.blob == target:
                corrupted.append(item.blob)
                item.data = bytes(len(item.data))
                item.sha256 = sha(item.data)
            return item

        self.link.tamper_downloads(corrupt)
        _, d = self.push(new)
        failure = self.failureResultOf(d, PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_BAD_REQUEST)
        self.assertIn("twice", failure.value.message)
        self.assertEqual(len(corrupted), 2)  # first try and one refetch
        held = self.held()
        self.assertEqual(held.held.number, 1)
        self.assertEqual(self.stored(old[4]), old[4])
        self.assertFalse(self.replica.replicas.has_blob(self.owner.pubkey, target))

    def test_bad_tree_node_is_refused(self) -> None:
        old = sections(5, 10_000)
        first, d = self.push(old)
        self.successResultOf(d)
        new = sections(100, 1_000)
        revision = self.owner.content.commit(new)
        root_hash = revision.sections.hash

        def corrupt_root(item: Any) -> Any:
            if item.blob == root_hash:
                data = bytearray(item.data)
                data[-1] ^= 1
                item.data = bytes(data)
                item.sha256 = sha(item.data)
            return item

        self.link.tamper_downloads(corrupt_root)
        failure = self.failureResultOf(self.link.push(revision), PeerCallError)
        self.assertIn("tree node", failure.value.message)
        self.assertEqual(self.held().held.content_id, first.content_id)

    def test_one_bad_piece_is_refetched_and_sync_succeeds(self) -> None:
        data = sections(4, 10_000)
        target = sha(data[1])
        tampered: list[int] = []

        def corrupt_once(item: Any) -> Any:
            if item.blob == target and not tampered:
                tampered.append(1)
                item.data = b"x" + item.data[1:]  # hash no longer matches
            return item

        self.link.tamper_downloads(corrupt_once)
        _revision, d = self.push(data)
        self.assertTrue(self.successResultOf(d).complete)
        self.assertEqual(tampered, [1])

    def test_drop_mid_transfer_then_resume_fetches_only_the_rest(self) -> None:
        data = sections(10, 100_000)
        revision = self.owner.content.commit(data)
        nodes = len(self.owner.content.blobs) - len(data) - 1  # less the chunk
        # The tree nodes' and a few sections' answers, then the link drops.
        self.link.cut_after_downloads(nodes + 4)
        d = self.link.push(revision)
        self.failureResultOf(d, PeerConnectionLost)
        held = self.held()
        self.assertIsNone(held.held)
        self.assertEqual(held.pending.content_id, revision.content_id)
        kept = self.replica.replicas.has_blob
        stored = [s for s in data if kept(self.owner.pubkey, sha(s))]
        self.assertGreaterEqual(len(stored), 2)
        self.link = SyncLink(self.owner, self.replica)
        self.owner.content.reads.clear()
        final = self.successResultOf(self.link.push(revision))
        self.assertTrue(final.complete)
        # Nothing stored before the cut was fetched again.
        fetched = [s for s in data if sha(s) in self.owner.content.reads]
        self.assertEqual(len(fetched), 10 - len(stored))
        for section in stored:
            self.assertNotIn(section, fetched)

    def test_resume_after_restart_reads_its_own_nodes(self) -> None:
        data = sections(200, 2_000)
        self.link.cut_after_downloads(40)
        revision, d = self.push(data)
        self.failureResultOf(d, PeerConnectionLost)
        # The replica restarts: what it stored is durable.
        self.replica.replicas.close()
        self.replica = SyncPeer(self.replica.root, self.clock, 2)
        self.link = SyncLink(self.owner, self.replica)
        self.owner.content.reads.clear()
        self.successResultOf(self.link.push(revision))
        before = len(self.owner.content.reads)
        self.assertLess(before, 200 + 40)  # not everything again
        self.assertEqual(self.held().held.content_id, revision.content_id)

    def test_a_replica_that_stops_reporting_is_given_up_on(self) -> None:
        # A replica that takes the push and then says nothing more holds the
        # owner's push slot forever (issue 13, finding 11): the Pusher
        # cancels a push silent for PUSH_STALL_SECONDS, and its offer ends.
        def silent(envelope: bbrpc_pb2.Envelope) -> bbrpc_pb2.Envelope | None:
            kind = envelope.WhichOneof("body")
            if kind in ("set_content_revision_response", "download_request"):
                return None
            return envelope

        self.link.link.tamper(Direction.to_client, silent)
        revision = self.owner.content.commit(sections(3, 1000))
        events: list[Any] = []
        d = self.link.push_reported(revision, events)
        self.clock.advance(PUSH_STALL_SECONDS - 1)
        self.assertNoResult(d)
        self.assertEqual(
            self.owner.offers.offered_to(self.replica.pubkey), [revision.content_id]
        )
        self.clock.advance(1)
        failure = self.failureResultOf(d, PushStalled)
        self.assertIn("reported nothing", str(failure.value))
        self.assertEqual(self.owner.offers.offered_to(self.replica.pubkey), [])

    def test_quota_exceeded_is_reported(self) -> None:
        self.replica.config.total_bytes = 100_000
        _, d = self.push(sections(3, 50_000))
        failure = self.failureResultOf(d, PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_QUOTA_EXCEEDED)
        self.assertIn("150", failure.value.message)
        self.assertEqual(self.link.replica_calls, [])
        self.assertEqual(self.replica.replicas.used_bytes, 0)

    def test_quota_counts_nodes_and_records(self) -> None:
        # Many tiny sections: the nodes and the record are most of what is
        # kept; a budget just above the section bytes is not enough.
        data = [os.urandom(64) for _ in range(2000)]
        self.replica.config.total_bytes = sum(len(s) for s in data) + 4096
        _, d = self.push(data)
        failure = self.failureResultOf(d, PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_QUOTA_EXCEEDED)
        self.assertLessEqual(
            self.replica.replicas.used_bytes, self.replica.config.total_bytes
        )

    def test_stale_revision_is_reported(self) -> None:
        first, d = self.push(sections(2, 1000))
        self.successResultOf(d)
        self.successResultOf(self.push(sections(2, 1000))[1])
        failure = self.failureResultOf(self.link.push(first), PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_STALE)

    def test_another_revision_under_the_same_number_is_stale(self) -> None:
        self.successResultOf(self.push(sections(2, 1000))[1])
        other = make_revision(self.owner.keys.signing_key, sections(2, 1000), 1)
        failure = self.failureResultOf(self.link.push(other), PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_STALE)

    def test_invalid_revision_is_a_bad_request(self) -> None:
        request = bbrpc_pb2.SetContentRevisionRequest(signed_root=b"nonsense")
        failure = self.failureResultOf(
            self.link.to_replica.call_stream(
                "set_content_revision_request", request, list().append
            ),
            PeerCallError,
        )
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_BAD_REQUEST)

    def test_someone_elses_revision_is_a_bad_request(self) -> None:
        foreign = make_revision(self.replica.keys.signing_key, sections(1, 10), 1)
        request = bbrpc_pb2.SetContentRevisionRequest(signed_root=foreign.signed)
        failure = self.failureResultOf(
            self.link.to_replica.call_stream(
                "set_content_revision_request", request, list().append
            ),
            PeerCallError,
        )
        self.assertIn("another node", failure.value.message)

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
        self.assertEqual(self.replica.replicas.used_bytes, 0)

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
        ask = bbrpc_pb2.GetContentRevisionRequest()
        response = self.successResultOf(
            self.link.to_replica.call("get_content_revision_request", ask)
        )
        self.assertEqual(response.signed_root, b"")
        self.assertEqual(response.granted_bytes, 50_000_000)
        revision, d = self.push(sections(3, 1000))
        self.successResultOf(d)
        response = self.successResultOf(
            self.link.to_replica.call("get_content_revision_request", ask)
        )
        self.assertEqual(response.signed_root, revision.signed)
        self.assertTrue(response.complete)
        self.assertGreater(response.stored_bytes, 3000)


def sync_pair(base: Path, clock: task.Clock) -> SyncLink:
    """An owner and a replica joined by the real in-memory peer link."""
    return SyncLink(SyncPeer(base / "o", clock, 1), SyncPeer(base / "r", clock, 2))


class CancelledWorkTests(SynchronousTestCase):
    """A cancelled SetContentRevision's disk work still runs on the worker
    thread; a delete sent right after must not run before it (and then be
    undone by it: a pending record left after the owner asked to delete)."""

    def test_a_delete_after_a_cancel_waits_for_the_work_still_running(
        self,
    ) -> None:
        clock = task.Clock()
        base = Path(self.mktemp())
        owner = SyncPeer(base / "owner", clock, 1)
        replica = SyncPeer(base / "replica", clock, 2)
        queued: list[tuple[Any, defer.Deferred[Any]]] = []

        def later(work: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            queued.append((work, d))
            return d

        service = replica.handler._replica
        service._blocking = later
        link = SyncLink(owner, replica)
        revision = owner.content.commit(sections(3, 1000))
        pushing = link.to_replica.call_stream(
            "set_content_revision_request",
            bbrpc_pb2.SetContentRevisionRequest(signed_root=revision.signed),
            lambda item: None,
        )
        self.assertEqual(len(queued), 1)  # the replica's begin, on the thread
        pushing.cancel()
        self.failureResultOf(pushing, defer.CancelledError)
        deleting = link.to_replica.call_stream(
            "set_content_revision_request",
            bbrpc_pb2.SetContentRevisionRequest(delete=True),
            lambda item: None,
        )
        failure = self.failureResultOf(deleting, PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_BUSY)
        work, d = queued.pop()
        d.callback(work())  # the begin finishes: a pending record
        # Now idle: the delete runs, and nothing is left.
        deleting = link.to_replica.call_stream(
            "set_content_revision_request",
            bbrpc_pb2.SetContentRevisionRequest(delete=True),
            lambda item: None,
        )
        work, d = queued.pop()
        d.callback(work())
        self.successResultOf(deleting)
        self.assertIsNone(replica.replicas.held(owner.pubkey))
        self.assertEqual(replica.replicas.owners(), [])


class ProgressRateTests(SynchronousTestCase):
    def test_progress_by_time_when_sections_are_small(self) -> None:
        clock = task.Clock()
        link = sync_pair(Path(self.mktemp()), clock)

        def tick(item: Any) -> Any:
            clock.advance(0.2)  # every blob takes 0.2 s to arrive
            return item

        link.tamper_downloads(tick)
        progress: list[Any] = []
        revision = link.owner.content.commit(sections(10, 1000))
        self.successResultOf(link.push(revision, progress))
        # ~13 blobs at 0.2 s each → about one report per 0.5 s, plus the
        # first and the final one; never one per blob.
        self.assertGreaterEqual(len(progress), 4)
        self.assertLessEqual(len(progress), 9)
        self.assertEqual([p.complete for p in progress][-1], True)


class PieceTests(SynchronousTestCase):
    def test_large_section_comes_in_pieces(self) -> None:
        clock = task.Clock()
        link = sync_pair(Path(self.mktemp()), clock)
        big = os.urandom(PIECE_BYTES * 2 + 5)
        pieces: list[tuple[int, int]] = []

        def record(item: Any) -> Any:
            if item.blob == sha(big):
                pieces.append((item.offset, len(item.data)))
            return item

        link.tamper_downloads(record)
        revision = link.owner.content.commit([big])
        self.successResultOf(link.push(revision))
        self.assertEqual(
            pieces, [(0, PIECE_BYTES), (PIECE_BYTES, PIECE_BYTES), (2 * PIECE_BYTES, 5)]
        )


class FloodTests(SynchronousTestCase):
    def test_owner_flooding_pieces_is_cut_off(self) -> None:
        clock = task.Clock()
        owner = SyncPeer(Path(self.mktemp()) / "o", clock, 1)
        replica = SyncPeer(Path(self.mktemp()) / "r", clock, 2)
        revision = owner.content.commit(sections(2, 1000))
        sent: list[int] = []

        class Flooder:
            def download(self, conn: object, req: Any, send: Any) -> Any:
                async def flood() -> None:
                    for _ in range(100):  # bounded: the replica must stop first
                        piece = bbrpc_pb2.DownloadResponse(
                            blob=bytes(req.blobs[0]),
                            data=b"z" * 65536,
                            blob_length=65536,
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
