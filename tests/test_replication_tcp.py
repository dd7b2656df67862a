"""Revision sync over the real bbrpc connection on 127.0.0.1 TCP."""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.connection import PeerConnection, PeerLimits
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.bbrpc.factory import PeerServerFactory, connect_peer
from barterbackup.sync.push import push_revision
from tests.sync_peers import SyncPeer


class TcpSyncTests(TestCase):
    timeout = 30

    async def setUp(self) -> Any:
        base = Path(self.mktemp())
        self.owner = SyncPeer(base / "owner", reactor, 1, budget=100_000_000)
        self.replica = SyncPeer(base / "replica", reactor, 2, budget=100_000_000)
        self.accepted: list[PeerConnection] = []
        factory = PeerServerFactory(
            reactor,
            self.replica.keys,
            self.replica.handler,
            on_authenticated=self.accepted.append,
        )
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        self.addCleanup(port.stopListening)
        self.endpoint = endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port
        )
        self.conn = await connect_peer(
            reactor,
            endpoint,
            self.owner.keys,
            self.replica.keys.onion_address,
            self.owner.handler,
        )
        self.addCleanup(self.close)

    def close(self) -> Any:
        closed = [self.conn.when_closed()] + [c.when_closed() for c in self.accepted]
        self.conn.close()
        return defer.gatherResults(closed)

    async def test_full_then_delta_sync(self) -> Any:
        data = [os.urandom(200_000) for _ in range(20)] + [os.urandom(3_000_000)]
        first = self.owner.content.commit(data)
        progress: list[bbrpc_pb2.SetContentRevisionResponse] = []
        push = partial(push_revision, offers=self.owner.offers)
        final = await push(self.conn, first, progress.append)
        self.assertTrue(final.complete)
        # Sections, then a few hundred bytes of tree nodes and manifest.
        self.assertGreater(final.bytes_fetched, 7_000_000)
        self.assertLess(final.bytes_fetched, 7_010_000)
        self.assertGreater(len(progress), 2)

        changed = list(data)
        changed[5] = os.urandom(200_000)
        second = self.owner.content.commit(changed)
        final = await push(self.conn, second, progress.append)
        self.assertEqual(final.revision, 2)
        self.assertGreater(final.bytes_fetched, 200_000)
        self.assertLess(final.bytes_fetched, 205_000)
        held = self.replica.replicas.held(self.owner.keys.onion_pubkey)
        assert held is not None and held.held is not None
        self.assertEqual(held.held.number, 2)

        # The owner gets its content back from the replica (recovery path).
        pieces: list[bbrpc_pb2.DownloadResponse] = []
        wanted = hashlib.sha256(changed[5]).digest()
        request = bbrpc_pb2.DownloadRequest(
            content_id=second.content_id, blobs=[wanted]
        )
        await self.conn.call_stream("download_request", request, pieces.append)
        self.assertEqual(b"".join(p.data for p in pieces), changed[5])

    async def test_quota_error_crosses_the_wire(self) -> Any:
        self.replica.config.total_bytes = 1000
        revision = self.owner.content.commit([os.urandom(5000)])
        with self.assertRaises(PeerCallError) as caught:
            await push_revision(self.conn, revision, list().append, self.owner.offers)
        self.assertEqual(caught.exception.code, bbrpc_pb2.ERROR_CODE_QUOTA_EXCEEDED)

    async def test_a_large_table_syncs_in_small_frames(self) -> Any:
        # 120 k sections (what ~2 GiB of content makes) over a connection
        # whose frames may be at most 4 MiB: the signed root is a few hundred
        # bytes and the tree travels node by node, blob by blob.
        limited = await connect_peer(
            reactor,
            self.endpoint,
            self.owner.keys,
            self.replica.keys.onion_address,
            self.owner.handler,
            limits=PeerLimits(max_frame_length=4 * 1024 * 1024 + 64 * 1024),
        )
        self.addCleanup(limited.close)
        # The sections repeat, so the replica stores only a few of them.
        tiny = [(i % 16).to_bytes(4, "big") for i in range(120_000)]
        revision = self.owner.content.commit(tiny)
        self.assertLess(len(revision.signed), 512)
        final = await push_revision(limited, revision, list().append, self.owner.offers)
        self.assertTrue(final.complete)
