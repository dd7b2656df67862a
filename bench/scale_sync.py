"""The replication half of ``make bench-scale``: a packed node replicated
over loopback TCP, owner and replica each in its own process.

``bench.scale`` packs a workload into a node directory, then runs the two
steps here as children at the same time, so each one's peak RSS (VmHWM) is
its own: ``replica`` (a ReplicaStore behind the node's bbrpc handler,
listening on 127.0.0.1, exiting once it holds a complete revision) and
``push`` (the owner: opens the packed node's ContentStore and pushes its
current revision with the node's real push/serve path). Disk work runs on
the reactor's thread pool as in the daemon.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory

from barterbackup.bbrpc.factory import PeerServerFactory, connect_peer
from barterbackup.node.handler import NodePeerHandler
from barterbackup.store.replicas import ReplicaStore
from barterbackup.sync.offers import OfferedContent
from barterbackup.sync.push import push_revision
from barterbackup.sync.replica import ReplicaService
from barterbackup.sync.serve import ContentServer
from barterbackup.testing.link import keys_for_test
from barterbackup.testing.stores import open_content_store

REPLICA_KEYS = keys_for_test(2)
# Generous: the figure is memory, not the quota.
REPLICA_BUDGET = 1 << 46
WAIT_LIMIT_SECONDS = 6 * 3600


def _blocking(work: Any) -> Any:
    return deferToThread(work)


async def serve_replica(
    reactor: Any, replica_dir: Path, port_file: Path, measure: Any
) -> dict[str, Any]:
    """Listen until an owner's revision is held complete; the figures."""
    replicas = ReplicaStore.open(
        replica_dir,
        lambda owner: REPLICA_BUDGET,
        naming_key=b"\x11" * 32,
        sealing_key=b"\x22" * 32,
    )
    handler = NodePeerHandler(
        shareable_peers=list,
        replica=ReplicaService(replicas, reactor, _blocking),
        server=ContentServer(None, replicas, OfferedContent(), _blocking),
    )
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    factory = WrappingFactory(PeerServerFactory(reactor, REPLICA_KEYS, handler))
    port = await endpoint.listen(factory)
    port_file.write_text(str(port.getHost().port))
    began = time.monotonic()

    def check() -> None:
        # Done once a revision is held and the owner has hung up (it does
        # after the push's final answer).
        for owner in replicas.owners():
            held = replicas.held(owner)
            if held is not None and held.held is not None and not factory.protocols:
                poll.stop()
                return
        if time.monotonic() - began > WAIT_LIMIT_SECONDS:
            poll.stop()
            raise TimeoutError("no complete revision arrived")

    poll = LoopingCall(check)
    poll.clock = reactor
    await poll.start(0.5)
    stored = replicas.used_bytes
    await port.stopListening()
    replicas.close()
    figures: dict[str, Any] = measure()
    figures.update(seconds=time.monotonic() - began, stored_bytes=stored)
    return figures


async def push_node(
    reactor: Any, node_dir: Path, keys: Any, port: int, measure: Any
) -> dict[str, Any]:
    """Push the node's current revision to the replica at ``port``."""
    content = open_content_store(node_dir, keys)
    revision = content.current
    if revision is None:
        raise SystemExit(f"{node_dir} has no revision to push")
    offers = OfferedContent()
    # The owner holds no one's replica here: an empty store stands in.
    replicas = ReplicaStore.open(
        node_dir / "bench-no-replicas",
        lambda owner: 0,
        naming_key=b"\x33" * 32,
        sealing_key=b"\x44" * 32,
    )
    handler = NodePeerHandler(
        shareable_peers=list,
        replica=ReplicaService(replicas, reactor, _blocking),
        server=ContentServer(content, replicas, offers, _blocking),
    )
    client = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    conn = await connect_peer(
        reactor, client, keys, REPLICA_KEYS.onion_address, handler
    )
    began = time.monotonic()
    final = await push_revision(conn, revision, lambda _: None, offers)
    seconds = time.monotonic() - began
    closed = conn.when_closed()
    conn.close()
    await closed
    content.close()
    replicas.close()
    figures: dict[str, Any] = measure()
    figures.update(
        seconds=seconds,
        bytes=revision.content_length,
        fetched_bytes=final.bytes_fetched,
    )
    return figures
