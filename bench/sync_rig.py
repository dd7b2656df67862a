"""An owner and a replica in one process, joined by real bbrpc over
loopback TCP, for the sync benchmarks.

Both sides are the node's real parts: the owner's ContentStore (packs,
trees, manifest), the replica's ReplicaStore (packs), the node's bbrpc
handler, ``push_revision`` and the replica's RevisionFetcher. Disk work runs
on a thread pool as in the daemon. A wrapping factory counts every byte the
connection carries, both directions, framing included.

The replica grants the owner ``budget`` bytes (what a contract would).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from barterbackup.bbrpc.connection import PeerConnection
from barterbackup.bbrpc.factory import PeerServerFactory, connect_peer
from barterbackup.content.engine import ContentStore
from barterbackup.node.handler import NodePeerHandler
from barterbackup.revisions import VerifiedRevision
from barterbackup.store.replicas import ReplicaStore
from barterbackup.sync.offers import OfferedContent
from barterbackup.sync.push import push_revision
from barterbackup.sync.replica import ReplicaService
from barterbackup.sync.serve import ContentServer
from barterbackup.testing.link import keys_for_test
from barterbackup.testing.stores import open_content_store

OWNER_KEYS = keys_for_test(1)
REPLICA_KEYS = keys_for_test(2)


class _CountingProtocol(ProtocolWrapper):
    def write(self, data: bytes) -> None:
        self.factory.bytes += len(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def dataReceived(self, data: bytes) -> None:
        self.factory.bytes += len(data)
        super().dataReceived(data)


class CountingFactory(WrappingFactory):
    """Counts every byte the wrapped server protocols send and receive."""

    protocol = _CountingProtocol

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.bytes = 0


def blocking(work: Any) -> Any:
    return deferToThread(work)


@dataclass
class PushFigures:
    seconds: float
    wire_bytes: int
    fetched_bytes: int


class SyncRig:
    """Owner content in ``workdir/owner``, the replica in ``workdir/replica``."""

    def __init__(self, reactor: Any, workdir: Path, budget: int) -> None:
        self.reactor = reactor
        self.content: ContentStore = open_content_store(workdir / "owner", OWNER_KEYS)
        self.replicas = ReplicaStore.open(
            workdir / "replica" / "replicas",
            lambda owner: budget if owner == OWNER_KEYS.onion_pubkey else 0,
            naming_key=b"\x11" * 32,
            sealing_key=b"\x22" * 32,
        )
        self.offers = OfferedContent()
        self.owner_handler = NodePeerHandler(
            shareable_peers=list,
            replica=ReplicaService(self.replicas, reactor, blocking),
            server=ContentServer(self.content, self.replicas, self.offers, blocking),
        )
        self.replica_handler = NodePeerHandler(
            shareable_peers=list,
            replica=ReplicaService(self.replicas, reactor, blocking),
            server=ContentServer(None, self.replicas, OfferedContent(), blocking),
        )
        self.counting = CountingFactory(
            PeerServerFactory(reactor, REPLICA_KEYS, self.replica_handler)
        )
        self._port: Any = None
        self.conn: PeerConnection | None = None

    async def connect(self) -> None:
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._port = await endpoint.listen(self.counting)
        client = TCP4ClientEndpoint(
            self.reactor, "127.0.0.1", self._port.getHost().port
        )
        self.conn = await connect_peer(
            self.reactor,
            client,
            OWNER_KEYS,
            REPLICA_KEYS.onion_address,
            self.owner_handler,
        )

    async def push(self, revision: VerifiedRevision) -> PushFigures:
        assert self.conn is not None, "connect() first"
        began, wire_before = time.monotonic(), self.counting.bytes
        final = await push_revision(self.conn, revision, lambda _: None, self.offers)
        return PushFigures(
            seconds=time.monotonic() - began,
            wire_bytes=self.counting.bytes - wire_before,
            fetched_bytes=final.bytes_fetched,
        )

    async def close(self) -> None:
        if self.conn is not None:
            closed = self.conn.when_closed()
            self.conn.close()
            await closed
        if self._port is not None:
            await self._port.stopListening()
        self.replicas.close()
        self.content.close()


def run_on_reactor(coroutine_function: Any, *args: Any) -> Any:
    """Run ``await coroutine_function(reactor, *args)`` on the global
    reactor and return its result (bench entry points only)."""
    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import Deferred

    reactor: Any = global_reactor
    result: list[Any] = []

    def go() -> None:
        d = Deferred.fromCoroutine(coroutine_function(reactor, *args))
        d.addBoth(result.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    outcome = result[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome
