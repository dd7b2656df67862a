"""Download authorisation, request validation, and peer exchange."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.bbrpc.framing import ACCEPTS_DOWNLOAD_PIECES, DownloadPiece
from barterbackup.sync.serve import (
    MAX_BLOBS_PER_REQUEST,
    PIECE_BYTES,
    STREAMS_PER_CONNECTION,
    ContentServer,
    send_blobs,
)
from barterbackup.testing.link import connected_pair, keys_for_test
from tests.sync_peers import SyncLink, SyncPeer
from tests.test_replication_sync import sections


class DownloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        clock = task.Clock()
        base = Path(self.mktemp())
        self.owner = SyncPeer(base / "owner", clock, 1)
        self.replica = SyncPeer(base / "replica", clock, 2)
        self.stranger = SyncPeer(base / "stranger", clock, 3)
        link = SyncLink(self.owner, self.replica)
        self.owner_to_replica, self.replica_to_owner = link.to_replica, link.to_owner
        self.stranger_to_owner, _, _ = connected_pair(
            clock,
            self.stranger.keys,
            self.owner.keys,
            self.stranger.handler,
            self.owner.handler,
        )
        self.stranger_to_replica, _, _ = connected_pair(
            clock,
            self.stranger.keys,
            self.replica.keys,
            self.stranger.handler,
            self.replica.handler,
        )
        self.data = sections(4, 5000)
        self.revision = self.owner.content.commit(self.data)
        self.successResultOf(link.push(self.revision))

    def download(self, conn: Any, request: bbrpc_pb2.DownloadRequest) -> Any:
        items: list[bbrpc_pb2.DownloadResponse] = []
        d = conn.call_stream("download_request", request, items.append)
        return d, items

    def request(self, **kwargs: Any) -> bbrpc_pb2.DownloadRequest:
        return bbrpc_pb2.DownloadRequest(content_id=self.revision.content_id, **kwargs)

    def assertCode(self, d: Any, code: int) -> None:
        failure = self.failureResultOf(d, PeerCallError)
        self.assertEqual(failure.value.code, code)

    def blobs(self, *indexes: int) -> list[bytes]:
        return [hashlib.sha256(self.data[i]).digest() for i in indexes]

    def offer(self) -> None:
        """What a push in flight does: the replica may download meanwhile."""
        self.owner.offers.offer(self.replica.pubkey, self.revision)

    def test_no_download_of_our_content_once_the_push_is_over(self) -> None:
        # The replica holds the revision: it never needs our bytes again,
        # and a replica that lost some must not fetch them back from us
        # while we spot-check it.
        d, items = self.download(
            self.replica_to_owner, self.request(blobs=self.blobs(0))
        )
        self.assertCode(d, bbrpc_pb2.ERROR_CODE_PERMISSION_DENIED)
        self.assertEqual(items, [])
        self.assertEqual(self.owner.offers.offered_to(self.replica.pubkey), [])

    def test_offered_peer_downloads_our_content(self) -> None:
        self.offer()
        d, items = self.download(
            self.replica_to_owner, self.request(blobs=self.blobs(2, 0))
        )
        self.successResultOf(d)
        self.assertEqual(
            [(i.blob, i.data) for i in items],
            list(zip(self.blobs(2, 0), [self.data[2], self.data[0]], strict=True)),
        )

    def test_a_blob_named_many_times_is_sent_once(self) -> None:
        self.offer()
        asked = self.blobs(1) * 1000 + self.blobs(0) + self.blobs(1)
        d, items = self.download(self.replica_to_owner, self.request(blobs=asked))
        self.successResultOf(d)
        self.assertEqual([i.blob for i in items], self.blobs(1, 0))

    def test_tree_nodes_are_blobs_too(self) -> None:
        self.offer()
        root = self.revision.sections.hash
        d, items = self.download(self.replica_to_owner, self.request(blobs=[root]))
        self.successResultOf(d)
        [item] = items
        self.assertEqual(hashlib.sha256(item.data).digest(), root)

    def test_stranger_cannot_download_our_content(self) -> None:
        d, items = self.download(
            self.stranger_to_owner, self.request(blobs=self.blobs(0))
        )
        self.assertCode(d, bbrpc_pb2.ERROR_CODE_PERMISSION_DENIED)
        self.assertEqual(items, [])

    def test_owner_downloads_its_replica_back(self) -> None:
        d, items = self.download(
            self.owner_to_replica, self.request(blobs=self.blobs(3))
        )
        self.successResultOf(d)
        self.assertEqual([i.data for i in items], [self.data[3]])

    def test_a_connection_is_served_two_downloads_at_once(self) -> None:
        """A peer that opens 32 Downloads and reads nothing is served two of
        them (the rest wait holding only their request), and what they read
        counts as held until sent or dropped (docs/wire-protocol.md §4)."""
        conn = CountingConn(self.owner.pubkey)
        server = ContentServer(
            self.replica.content, self.replica.replicas, self.replica.offers
        )
        waiting: list[defer.Deferred[None]] = []

        def send(item: Any) -> defer.Deferred[None]:
            waiting.append(defer.Deferred())
            return waiting[-1]

        calls = [
            defer.Deferred.fromCoroutine(
                server.download(conn, self.request(blobs=self.blobs(0, 1, 2)), send)
            )
            for _ in range(32)
        ]
        self.assertEqual(len(waiting), STREAMS_PER_CONNECTION)
        # Each of the two read its first batch (all three blobs, 15 KB).
        self.assertEqual(conn.held, STREAMS_PER_CONNECTION * 3 * 5000)
        # Refusals do not wait their turn.
        refused = defer.Deferred.fromCoroutine(
            server.download(conn, self.request(blobs=[b"x"]), send)
        )
        self.assertCode(refused, bbrpc_pb2.ERROR_CODE_BAD_REQUEST)
        # The peer goes away: each stream fails, the next two start, and
        # in the end nothing is held.
        while not all(call.called for call in calls):
            for wait in list(waiting):
                if not wait.called:
                    wait.errback(ConnectionError("peer went away"))
            self.assertLessEqual(conn.held, STREAMS_PER_CONNECTION * 3 * 5000)
        for call in calls:
            self.failureResultOf(call, ConnectionError)
        self.assertEqual(conn.held, 0)
        self.assertEqual(len(waiting), 32)  # no stream sent past its failure

    def test_stranger_cannot_download_someone_elses_replica(self) -> None:
        d, items = self.download(
            self.stranger_to_replica, self.request(blobs=self.blobs(0))
        )
        self.assertCode(d, bbrpc_pb2.ERROR_CODE_NOT_FOUND)
        self.assertEqual(items, [])

    def test_unknown_content_id_is_not_found(self) -> None:
        request = bbrpc_pb2.DownloadRequest(content_id=os.urandom(32))
        d, _ = self.download(self.replica_to_owner, request)
        self.assertCode(d, bbrpc_pb2.ERROR_CODE_NOT_FOUND)

    def test_malformed_and_oversized_requests_are_bad_requests(self) -> None:
        for blobs in ([b"short"], [os.urandom(32)] * (MAX_BLOBS_PER_REQUEST + 1)):
            d, items = self.download(self.replica_to_owner, self.request(blobs=blobs))
            self.assertCode(d, bbrpc_pb2.ERROR_CODE_BAD_REQUEST)
            self.assertEqual(items, [])

    def test_blob_gone_from_owner_is_not_found(self) -> None:
        self.offer()
        [gone] = self.blobs(1)
        self.owner.content.forget_blob(gone)
        d, _ = self.download(self.replica_to_owner, self.request(blobs=[gone]))
        self.assertCode(d, bbrpc_pb2.ERROR_CODE_NOT_FOUND)


class PeerExchangeTests(SynchronousTestCase):
    def test_shares_only_allowed_peers_never_the_caller(self) -> None:
        clock = task.Clock()
        base = Path(self.mktemp())
        a, b = SyncPeer(base / "a", clock, 1), SyncPeer(base / "b", clock, 2)
        b.shareable = [keys_for_test(9).onion_address, a.address]
        a_to_b, _, _ = connected_pair(clock, a.keys, b.keys, a.handler, b.handler)
        response = self.successResultOf(
            a_to_b.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
        )
        self.assertEqual(
            list(response.onion_addresses), [keys_for_test(9).onion_address]
        )


class CountingConn:
    """A connection of ``pubkey`` that counts the bytes held for it."""

    peer_onion_address = "counting.onion"

    def __init__(self, pubkey: bytes) -> None:
        self.peer_pubkey = pubkey
        self.held = 0

    def call(self, request_field: str, message: Any) -> defer.Deferred[Any]:
        raise AssertionError("not called")

    def call_stream(self, request_field: str, message: Any, on_item: Any) -> Any:
        raise AssertionError("not called")

    def hold_answer_bytes(self, count: int) -> None:
        self.held += count

    def release_answer_bytes(self, count: int) -> None:
        self.held -= count
        assert self.held >= 0, "released more than was held"


class MostHeld(CountingConn):
    """Also remembers the most it held at once."""

    most = 0

    def hold_answer_bytes(self, count: int) -> None:
        super().hold_answer_bytes(count)
        self.most = max(self.most, self.held)


class SendBlobsTests(SynchronousTestCase):
    """send_blobs cuts the same pieces for either kind of sender."""

    def _sent(self, accepts_pieces: bool) -> tuple[list[Any], list[bytes]]:
        sent: list[Any] = []

        def send(item: Any) -> defer.Deferred[None]:
            sent.append(item)
            return defer.succeed(None)

        if accepts_pieces:
            setattr(send, ACCEPTS_DOWNLOAD_PIECES, True)
        data = [os.urandom(2 * PIECE_BYTES + 7), os.urandom(3)]
        by_hash = {hashlib.sha256(d).digest(): d for d in data}
        order = [hashlib.sha256(data[1]).digest(), hashlib.sha256(data[0]).digest()]
        d = defer.Deferred.fromCoroutine(send_blobs(send, order, by_hash.__getitem__))
        self.successResultOf(d)
        return sent, order

    def test_pieces_for_a_real_connection_messages_otherwise(self) -> None:
        pieces, _ = self._sent(accepts_pieces=True)
        messages, order = self._sent(accepts_pieces=False)
        self.assertTrue(all(isinstance(p, DownloadPiece) for p in pieces))
        # Views into the blob read from disk: cutting pieces copies nothing.
        self.assertTrue(all(isinstance(p.data, memoryview) for p in pieces))
        self.assertTrue(
            all(isinstance(m, bbrpc_pb2.DownloadResponse) for m in messages)
        )
        self.assertEqual(
            [(m.blob, m.offset, len(m.data)) for m in messages],
            [
                (order[0], 0, 3),
                (order[1], 0, PIECE_BYTES),
                (order[1], PIECE_BYTES, PIECE_BYTES),
                (order[1], 2 * PIECE_BYTES, 7),
            ],
        )
        for message in messages:
            self.assertEqual(message.sha256, hashlib.sha256(message.data).digest())
        for piece in pieces:
            self.assertEqual(piece.sha256, hashlib.sha256(piece.data).digest())
        # A piece that is the whole blob carries the blob's own hash.
        self.assertEqual(pieces[0].sha256, pieces[0].blob)

    def test_the_next_batch_is_read_while_this_one_is_sent(self) -> None:
        """One read ahead, never more: disk and wire overlap, memory bounded."""
        blobs = [os.urandom(600 * 1024) for _ in range(5)]
        by_hash = {hashlib.sha256(b).digest(): b for b in blobs}
        reads: list[defer.Deferred[Any]] = []

        def blocking(work: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            d.addCallback(lambda _: work())
            reads.append(d)
            return d

        waiting: list[defer.Deferred[None]] = []
        sent: list[Any] = []

        def send(item: Any) -> defer.Deferred[None]:
            sent.append(item)
            waiting.append(defer.Deferred())
            return waiting[-1]

        order = list(by_hash)
        holder = MostHeld(b"")
        done = defer.Deferred.fromCoroutine(
            send_blobs(send, order, by_hash.__getitem__, blocking, holder)
        )
        reads[0].callback(None)  # the first batch (two blobs: over 1 MiB)
        # Sending its first blob, the second batch is already being read.
        self.assertEqual((len(sent), len(reads)), (1, 2))
        while not done.called:
            for read in reads:
                if not read.called:
                    read.callback(None)
            for wait in waiting:
                if not wait.called:
                    wait.callback(None)
        self.successResultOf(done)
        self.assertEqual([bytes(m.data) for m in sent], [by_hash[h] for h in order])
        self.assertEqual(len(reads), 3)
        self.assertEqual(holder.held, 0)
        # Held at most: the batch being sent and the one read ahead.
        self.assertEqual(holder.most, 4 * 600 * 1024)

    def test_a_send_failing_with_a_read_in_flight_reports_one_error(self) -> None:
        blobs = [os.urandom(700 * 1024) for _ in range(4)]
        by_hash = {hashlib.sha256(b).digest(): b for b in blobs}
        reads: list[defer.Deferred[Any]] = []

        def blocking(work: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            d.addCallback(lambda _: work())
            reads.append(d)
            return d

        def send(item: Any) -> defer.Deferred[None]:
            return defer.fail(ConnectionError("peer went away"))

        def read(blob: bytes) -> bytes:
            if len(reads) > 1:
                raise PeerCallError(bbrpc_pb2.ERROR_CODE_NOT_FOUND, "gone")
            return by_hash[blob]

        holder = CountingConn(b"")
        done = defer.Deferred.fromCoroutine(
            send_blobs(send, list(by_hash), read, blocking, holder)
        )
        reads[0].callback(None)
        self.failureResultOf(done, ConnectionError)
        self.assertEqual(holder.held, 0)
        reads[1].callback(None)  # the read ahead fails too: not reported
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_read_ahead_arriving_after_a_failure_is_not_held(self) -> None:
        blobs = [os.urandom(700 * 1024) for _ in range(4)]
        by_hash = {hashlib.sha256(b).digest(): b for b in blobs}
        reads: list[defer.Deferred[Any]] = []

        def blocking(work: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            d.addCallback(lambda _: work())
            reads.append(d)
            return d

        def send(item: Any) -> defer.Deferred[None]:
            return defer.fail(ConnectionError("peer went away"))

        holder = CountingConn(b"")
        done = defer.Deferred.fromCoroutine(
            send_blobs(send, list(by_hash), by_hash.__getitem__, blocking, holder)
        )
        reads[0].callback(None)
        self.failureResultOf(done, ConnectionError)
        reads[1].callback(None)  # read after the failure: dropped, not held
        self.assertEqual(holder.held, 0)
