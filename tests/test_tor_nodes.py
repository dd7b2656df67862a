"""Nodes over real onion services on the private Tor network (127.0.0.1).

Three in-process nodes, each launching its own tor joined to the shared test
network, publish onions under their password-derived keys, connect by onion
address only, form contracts, sync a delta and download back through Tor.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from barterbackup.tree import entry_at
from tests.contract_swarm import SWARM_CONTENT
from tests.test_transport_tor_network import SHARED
from tests.util import PASSWORDS, replicate, short_tempdir, start_node, write_files


class NodesOverTorTests(TestCase):
    # Network start (~15 s, shared), three tors (~10 s), transfers over Tor.
    timeout = 300

    async def test_replicate_delta_and_download_over_onions(self) -> None:
        network = await SHARED.get()
        tmp = short_tempdir(self)
        options = tuple((k, v) for k, v in network.client_torrc_options())
        nodes = []
        for i, password in enumerate(PASSWORDS):
            node = start_node(
                reactor,
                NodeConfig(
                    node_dir=tmp / f"n{i}", transport="tor", extra_torrc=options
                ),
                content=SWARM_CONTENT,
            )
            self.addCleanup(node.stopService)
            await node.unlock(password, create_if_missing=True)
            nodes.append(node)
        for node in nodes:
            # Fails (OnionAddressMismatch) unless Tor published exactly the
            # address derived from the password.
            await node.session.network.ready()
            status = node.status()
            self.assertEqual(status.peer_network, "ready")
            self.assertEqual(status.peer_endpoint, status.onion_address)
            published = node.session.transport._onion  # type: ignore[attr-defined]
            self.assertEqual(published.hostname, status.onion_address)
        a, b, c = nodes

        # Connect by onion address alone: Tor's SOCKS port, no endpoint hint.
        for peer, share in ((b, True), (c, False)):
            info = await a.connect_peer(address(peer), share=share)
            self.assertTrue(info.connected)

        # Peer exchange: c asks a and learns b (shared), not itself. (c sees
        # a's connection once a's Auth has arrived, a moment after a's side.)
        for _ in range(100):
            if c.session.pool.is_connected(pubkey(a)):
                break
            await deferLater(reactor, 0.1, lambda: None)
        conn_c = c.session.pool.connection(pubkey(a))
        exchange = await conn_c.call(
            "peer_exchange_request", bbrpc_pb2.PeerExchangeRequest()
        )
        self.assertEqual(list(exchange.onion_addresses), [address(b)])

        # Only a contract grants storage: b and c know a too, and a
        # proposes; accepting pushes a's content to each.
        for peer in (b, c):
            await peer.set_storage_config(min_replicas=0)
            await peer.connect_peer(address(a))
        await a.set_storage_config(min_replicas=0)
        big = os.urandom(2 * 1024 * 1024)
        await write_files(a, {"big.bin": big, "small.txt": b"tor\n" * 100})
        seen = []
        for peer in (b, c):
            info = await a.propose_contract(address(peer), 2**26, 2**26, seen.append)
            self.assertEqual(info.state, "active")
        done = {e.peer: e for e in seen if e.phase == "done"}
        self.assertEqual(set(done), {address(b), address(c)})

        before = a.session.content.current
        assert before is not None
        changed = bytearray(big)
        changed[1_000_000 : 1_000_000 + 32768] = os.urandom(32768)
        await write_files(a, {"big.bin": bytes(changed)})
        seen = await replicate(a, [address(b)])
        [final] = [e for e in seen if e.phase == "done"]
        # The edit's revision (or a later one: the node state, which names
        # the new contracts, is committed as revisions of its own).
        self.assertGreater(final.revision, before.number)
        current_now = a.session.content.current
        assert current_now is not None
        self.assertEqual(final.revision, current_now.number)
        fetched = int(final.message.split()[0])
        self.assertLess(fetched, 4 * 32768)

        # Recovery path: a downloads a section back from b's replica and
        # checks it against its own copy.
        current = a.session.content.current
        assert current is not None
        first = entry_at(current.sections, 0, OwnBlobs(a)).entry
        conn_b = a.session.pool.connection(pubkey(b))
        pieces: list[Any] = []
        await conn_b.call_stream(
            "download_request",
            bbrpc_pb2.DownloadRequest(
                content_id=current.content_id, blobs=[first.sha256]
            ),
            pieces.append,
        )
        data = b"".join(p.data for p in pieces)
        self.assertEqual(len(data), first.length)
        self.assertEqual(data, a.session.content.read_blob(first.sha256))

        for node in nodes:
            await node.stopService()
        # txtorcon logs every exit of a tor it launched as an error, even a
        # clean one after quit(); anything else is a real failure.
        exits = [str(f.value) for f in self.flushLoggedErrors(RuntimeError)]
        self.assertEqual(exits, ["Tor exited with error-code 0"] * len(exits))


class OwnBlobs:
    """A node's own blobs as a tree source."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def get(self, sha256: bytes) -> bytes:
        data: bytes = self._node.session.content.read_blob(sha256)
        return data


def address(node: Node) -> str:
    return node.session.keys.onion_address


def pubkey(node: Node) -> bytes:
    return node.session.keys.onion_pubkey
