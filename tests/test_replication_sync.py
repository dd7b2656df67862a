"""Revision sync owner → replica over the fake peer link."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import nacl.signing
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.peer.errors import PeerCallError, PeerConnectionLost
from barterbackup.peer.replication import PIECE_BYTES, PushFailed
from barterbackup.peer.service import NodePeerService
from barterbackup.store.replicas import ReplicaStore
from barterbackup.testing.fakes import (
    FakeContentStore,
    FakePeerConnection,
    connect_fake_peers,
)

OWNER_ONION = "owner.onion"
REPLICA_ONION = "replica.onion"


def sections(count: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


class Node:
    """One side: its key, its own content, its replica store, its service."""

    def __init__(self, root: Path, clock: task.Clock, budget: int = 50_000_000) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.pubkey = bytes(self.key.verify_key)
        self.content = FakeContentStore(self.key)
        self.config = storedpb_pb2.StorageConfig(total_bytes=budget)
        self.replicas = ReplicaStore.open(root, lambda: self.config)
        self.shareable: list[str] = []
        self.service = NodePeerService(
            reactor=clock,
            content=self.content,
            replicas=self.replicas,
            shareable_peers=lambda: list(self.shareable),
        )


class SyncTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        base = Path(self.mktemp())
        self.owner = Node(base / "owner", self.clock)
        self.replica = Node(base / "replica", self.clock)
        self.to_replica, self.to_owner = self.link()
        self.progress: list[bbrpc_pb2.SetContentRevisionResponse] = []

    def link(self) -> tuple[FakePeerConnection, FakePeerConnection]:
        return connect_fake_peers(
            self.owner.service,
            self.owner.pubkey,
            OWNER_ONION,
            self.replica.service,
            self.replica.pubkey,
            REPLICA_ONION,
        )

    def push(self, data: list[bytes]) -> Any:
        revision = self.owner.content.commit(data)
        d = self.owner.service.push_revision(
            self.to_replica, revision, self.progress.append
        )
        return revision, d

    def wire_bytes(self) -> int:
        return self.to_replica.counter.bytes + self.to_owner.counter.bytes

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
        self.assertEqual(self.to_owner.calls, ["download_request"])

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
        again = self.successResultOf(
            self.owner.service.push_revision(
                self.to_replica, revision, self.progress.append
            )
        )
        self.assertTrue(again.complete)
        self.assertEqual(again.bytes_fetched, 0)

    def test_bad_bytes_refetched_once_then_fail_cleanly(self) -> None:
        old = sections(5, 10_000)
        self.successResultOf(self.push(old)[1])
        corrupt_sections: list[int] = []

        def corrupt(field: str, item: Any) -> Any:
            if field == "download_response" and item.section == 2:
                corrupt_sections.append(item.section)
                item.data = bytes(len(item.data))
                item.sha256 = hashlib.sha256(item.data).digest()
            return item

        self.to_owner.tamper = corrupt
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

        def corrupt_once(field: str, item: Any) -> Any:
            if item.section == 1 and not tampered:
                tampered.append(1)
                item.data = b"x" + item.data[1:]  # piece hash no longer matches
            return item

        self.to_owner.tamper = corrupt_once
        _revision, d = self.push(data)
        self.assertTrue(self.successResultOf(d).complete)
        self.assertEqual(self.to_owner.calls, ["download_request", "download_request"])

    def test_drop_mid_transfer_then_resume_fetches_only_the_rest(self) -> None:
        data = sections(10, 100_000)
        self.to_owner.drop_after_items = 4
        revision, d = self.push(data)
        self.failureResultOf(d, PeerConnectionLost)
        held = self.replica.replicas.held(self.owner.pubkey)
        assert held is not None
        self.assertFalse(held.complete)
        self.assertEqual(held.stored_bytes, 300_000)  # the 4th item was lost
        self.to_replica, self.to_owner = self.link()
        final = self.successResultOf(
            self.owner.service.push_revision(
                self.to_replica, revision, self.progress.append
            )
        )
        self.assertTrue(final.complete)
        self.assertEqual(final.bytes_fetched, 700_000)

    def test_quota_exceeded_is_reported(self) -> None:
        self.replica.config.total_bytes = 100_000
        _, d = self.push(sections(3, 50_000))
        failure = self.failureResultOf(d, PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_QUOTA_EXCEEDED)
        self.assertIn("150000", failure.value.message)
        self.assertEqual(self.to_owner.calls, [])

    def test_stale_revision_is_reported(self) -> None:
        first, d = self.push(sections(2, 1000))
        self.successResultOf(d)
        self.successResultOf(self.push(sections(2, 1000))[1])
        failure = self.failureResultOf(
            self.owner.service.push_revision(
                self.to_replica, first, self.progress.append
            ),
            PeerCallError,
        )
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_STALE)

    def test_invalid_revision_is_a_bad_request(self) -> None:
        request = bbrpc_pb2.SetContentRevisionRequest(signed_revision=b"nonsense")
        failure = self.failureResultOf(
            self.to_replica.call_stream(
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
            self.to_replica.call_stream(
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

        to_silent, _ = connect_fake_peers(
            self.owner.service,
            self.owner.pubkey,
            OWNER_ONION,
            Silent(),
            b"s" * 32,
            "s.onion",
        )
        revision = self.owner.content.commit(sections(1, 10))
        d = self.owner.service.push_revision(to_silent, revision, self.progress.append)
        self.failureResultOf(d, PushFailed)

    def test_get_content_revision(self) -> None:
        response = self.successResultOf(
            self.to_replica.call(
                "get_content_revision_request", bbrpc_pb2.GetContentRevisionRequest()
            )
        )
        self.assertEqual(response.signed_revision, b"")
        self.assertEqual(response.granted_bytes, 50_000_000)
        revision, d = self.push(sections(3, 1000))
        self.successResultOf(d)
        response = self.successResultOf(
            self.to_replica.call(
                "get_content_revision_request", bbrpc_pb2.GetContentRevisionRequest()
            )
        )
        self.assertEqual(response.signed_revision, revision.signed)
        self.assertTrue(response.complete)
        self.assertEqual(response.stored_bytes, 3000)


def fake_pair(
    base: Path, clock: task.Clock
) -> tuple[Node, Node, FakePeerConnection, FakePeerConnection]:
    """An owner and a replica node joined by a fake peer link."""
    owner, replica = Node(base / "o", clock), Node(base / "r", clock)
    to_replica, to_owner = connect_fake_peers(
        owner.service, owner.pubkey, OWNER_ONION, replica.service, replica.pubkey, "r"
    )
    return owner, replica, to_replica, to_owner


class ProgressRateTests(SynchronousTestCase):
    def test_progress_by_time_when_sections_are_small(self) -> None:
        clock = task.Clock()
        owner, _replica, to_replica, to_owner = fake_pair(Path(self.mktemp()), clock)
        original = to_owner.tamper

        def tick(field: str, item: Any) -> Any:
            clock.advance(0.2)  # every section takes 0.2 s to arrive
            return item if original is None else original(field, item)

        to_owner.tamper = tick
        progress: list[Any] = []
        revision = owner.content.commit(sections(10, 1000))
        self.successResultOf(
            owner.service.push_revision(to_replica, revision, progress.append)
        )
        # 10 sections at 0.2 s each = 2 s → about one report per 0.5 s, plus the
        # first and the final one; never one per section.
        self.assertGreaterEqual(len(progress), 4)
        self.assertLessEqual(len(progress), 7)
        self.assertEqual([p.complete for p in progress][-1], True)


class PieceTests(SynchronousTestCase):
    def test_large_section_comes_in_pieces(self) -> None:
        clock = task.Clock()
        owner, _replica, to_replica, to_owner = fake_pair(Path(self.mktemp()), clock)
        pieces: list[tuple[int, int, int]] = []

        def record(field: str, item: Any) -> Any:
            pieces.append((item.section, item.offset, len(item.data)))
            return item

        to_owner.tamper = record
        revision = owner.content.commit([os.urandom(PIECE_BYTES * 2 + 5)])
        self.successResultOf(
            owner.service.push_revision(to_replica, revision, list().append)
        )
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
        owner, replica, to_replica, to_owner = fake_pair(Path(self.mktemp()), clock)
        revision = owner.content.commit(sections(2, 1000))
        owner.service.offers.offer(replica.pubkey, revision)

        class Flooder:
            def download(self, conn: object, req: object, send: Any) -> Any:
                async def flood() -> None:
                    for _ in range(100):  # bounded: the replica must stop first
                        piece = bbrpc_pb2.DownloadResponse(
                            section=7, data=b"z" * 65536, section_length=65536
                        )
                        await send(piece)

                return defer.Deferred.fromCoroutine(flood())

        to_owner.remote_handler = Flooder()
        d = owner.service.push_revision(to_replica, revision, list().append)
        failure = self.failureResultOf(d, PeerCallError)
        self.assertIn("far more bytes", failure.value.message)
        self.assertLess(to_owner.items_received, 100)
