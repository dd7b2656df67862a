"""Several nodes in one process over plain TCP on 127.0.0.1, through the
Node API the gRPC servicer uses: connect, replicate, delta sync, quotas."""

from __future__ import annotations

import os
import queue
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from barterbackup import errors
from barterbackup._proto import bbrpc_pb2, clirpc_pb2
from barterbackup.node import Node, NodeConfig
from tests.util import short_tempdir

PASSWORDS = [
    "quartz-lantern-ember-violet-harbor-cobalt-meadow",
    "saffron-glacier-tundra-orchid-beacon-falcon-pebble",
    "walnut-prism-meteor-canyon-thimble-juniper-sonnet",
]


def write_files(node: Node, files: dict[str, bytes]) -> Any:
    """Commit ``files`` as one revision (disk work in a thread, like gRPC)."""

    @inlineCallbacks
    def run():  # type: ignore[no-untyped-def]
        update = yield node.begin_update()

        def work() -> Any:
            try:
                for name, data in files.items():
                    update.add_file(name)
                    update.write(data)
                return update.commit()
            finally:
                update.abort()

        try:
            result = yield deferToThread(work)
        finally:
            update.finish()
        return result

    return run()


def drain(events: queue.Queue[object]) -> Any:
    """Collect replication events until the end marker (polling the queue
    from the reactor, as the gRPC thread would block on it)."""

    @inlineCallbacks
    def run():  # type: ignore[no-untyped-def]
        seen = []
        for _ in range(1200):
            while not events.empty():
                item = events.get()
                if item is None:
                    return seen
                seen.append(item)
            yield deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("replication did not finish in 60 s")

    return run()


class NodeNetworkTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        tmp = short_tempdir(self)
        self.nodes = []
        for i, password in enumerate(PASSWORDS):
            node = Node(reactor, NodeConfig(node_dir=tmp / f"n{i}", transport="tcp"))
            yield node.unlock(password, create_if_missing=True)
            yield node._peers().wait_ready()
            self.addCleanup(node.shutdown)
            self.nodes.append(node)

    def endpoint(self, node: Node) -> str:
        return node.status().peer_endpoint

    @inlineCallbacks
    def connect(self, a: Node, b: Node, share: bool = False):  # type: ignore[no-untyped-def]
        info = yield a.connect_peer(
            clirpc_pb2.ConnectPeerRequest(
                onion_address=b.keys.onion_address,
                endpoint=self.endpoint(b),
                share_in_exchange=share,
            )
        )
        return info

    @inlineCallbacks
    def replicate(self, a: Node, peers: list[str]):  # type: ignore[no-untyped-def]
        events: queue.Queue[object] = queue.Queue()
        a.replicate_content(peers, events)
        seen = yield drain(events)
        return seen

    @inlineCallbacks
    def test_connect_and_list(self):  # type: ignore[no-untyped-def]
        a, b, _ = self.nodes
        info = yield self.connect(a, b)
        self.assertTrue(info.connected)
        self.assertEqual(info.onion_address, b.keys.onion_address)
        self.assertGreater(info.first_seen, 0)
        yield deferLater(reactor, 0.2, lambda: None)  # the first ping
        [listed] = a.connected_peers()
        self.assertTrue(listed.connected)
        # b learned a from the inbound handshake.
        [seen_by_b] = b.connected_peers()
        self.assertEqual(seen_by_b.onion_address, a.keys.onion_address)
        self.assertTrue(seen_by_b.connected)

    @inlineCallbacks
    def test_connect_errors(self):  # type: ignore[no-untyped-def]
        a, b, c = self.nodes
        with self.assertRaises(errors.InvalidArgument):
            yield a.connect_peer(
                clirpc_pb2.ConnectPeerRequest(onion_address="nonsense.onion")
            )
        with self.assertRaises(errors.InvalidArgument):
            yield a.connect_peer(
                clirpc_pb2.ConnectPeerRequest(onion_address=a.keys.onion_address)
            )
        # c's endpoint answers, but it is not b: authentication fails.
        with self.assertRaises(errors.PermissionDenied):
            yield a.connect_peer(
                clirpc_pb2.ConnectPeerRequest(
                    onion_address=b.keys.onion_address, endpoint=self.endpoint(c)
                )
            )

    @inlineCallbacks
    def test_replicate_then_delta(self):  # type: ignore[no-untyped-def]
        a, b, c = self.nodes
        yield self.connect(a, b)
        yield self.connect(a, c)
        big = os.urandom(3 * 1024 * 1024)
        yield write_files(a, {"big.bin": big, "notes.txt": b"hello\n" * 1000})
        events = yield self.replicate(a, [])
        done = [e for e in events if e.phase == "done"]
        self.assertEqual(
            sorted(e.peer for e in done),
            sorted([b.keys.onion_address, c.keys.onion_address]),
        )
        first_total = done[0].bytes_total
        self.assertGreater(first_total, len(big))
        held = b.get_storage_config().obligations
        self.assertEqual(len(held), 1)
        self.assertEqual(held[0].onion_address, a.keys.onion_address)
        self.assertEqual(held[0].revision, 1)
        # Change 64 KiB in the middle: only a few sections travel.
        changed = bytearray(big)
        changed[1_500_000 : 1_500_000 + 65536] = os.urandom(65536)
        yield write_files(a, {"big.bin": bytes(changed)})
        events = yield self.replicate(a, [b.keys.onion_address])
        [final] = [e for e in events if e.phase == "done"]
        self.assertEqual(final.revision, 2)
        fetched = int(final.message.split()[0])
        self.assertLess(fetched, 4 * 65536, final.message)
        self.assertGreater(fetched, 0)
        [record] = [
            p for p in a.connected_peers() if p.onion_address == b.keys.onion_address
        ]
        self.assertEqual(record.held_revision, 2)

    @inlineCallbacks
    def test_quota_refused_cleanly(self):  # type: ignore[no-untyped-def]
        a, b, _ = self.nodes
        b.set_storage_config(
            clirpc_pb2.SetStorageConfigRequest(
                total_bytes=1024 * 1024, per_peer_bytes=512 * 1024, min_replicas=2
            )
        )
        yield self.connect(a, b)
        yield write_files(a, {"big.bin": os.urandom(2 * 1024 * 1024)})
        events = yield self.replicate(a, [])
        [failed] = [e for e in events if e.phase == "failed"]
        self.assertIn("quota", failed.message.lower())
        config = b.get_storage_config()
        self.assertEqual(config.used_bytes, 0)
        self.assertEqual(config.total_bytes, 1024 * 1024)
        self.assertEqual(config.free_bytes, 1024 * 1024)

    @inlineCallbacks
    def test_storage_config_validation(self):  # type: ignore[no-untyped-def]
        a = self.nodes[0]
        with self.assertRaises(errors.InvalidArgument):
            a.set_storage_config(
                clirpc_pb2.SetStorageConfigRequest(total_bytes=10, per_peer_bytes=20)
            )
        config = a.set_storage_config(
            clirpc_pb2.SetStorageConfigRequest(
                total_bytes=10**9, per_peer_bytes=10**8, min_replicas=3
            )
        )
        self.assertEqual(
            (config.total_bytes, config.per_peer_bytes, config.min_replicas),
            (10**9, 10**8, 3),
        )
        yield None

    @inlineCallbacks
    def test_replicate_preconditions(self):  # type: ignore[no-untyped-def]
        a, b, _ = self.nodes
        events: queue.Queue[object] = queue.Queue()
        with self.assertRaises(errors.FailedPrecondition):
            a.replicate_content([], events)  # no content yet
        yield write_files(a, {"x": b"x"})
        with self.assertRaises(errors.FailedPrecondition):
            a.replicate_content([], events)  # no peers
        with self.assertRaises(errors.FailedPrecondition):
            a.replicate_content([b.keys.onion_address], events)  # not connected

    @inlineCallbacks
    def test_peer_exchange_shares_only_allowed_peers(self):  # type: ignore[no-untyped-def]
        a, b, c = self.nodes
        yield self.connect(a, b, share=True)
        yield self.connect(a, c, share=False)
        conn = c._peers().connection(a.keys.onion_address)
        response = yield conn.call(
            "peer_exchange_request", bbrpc_pb2.PeerExchangeRequest()
        )
        self.assertEqual(list(response.onion_addresses), [b.keys.onion_address])

    @inlineCallbacks
    def test_new_revisions_sync_automatically_to_holders(self):  # type: ignore[no-untyped-def]
        import barterbackup.peers as peers_module

        self.patch(peers_module, "AUTO_SYNC_DELAY", 0.1)
        a, b, c = self.nodes
        yield self.connect(a, b)
        yield self.connect(a, c)
        yield write_files(a, {"f.bin": os.urandom(200_000)})
        yield self.replicate(a, [b.keys.onion_address])  # b holds revision 1
        yield write_files(a, {"g.bin": os.urandom(100_000)})
        a.revision_committed()  # what SetFile does after a commit
        for _ in range(200):
            yield deferLater(reactor, 0.05, lambda: None)
            held = b.get_storage_config().obligations
            if held and held[0].revision == 2:
                break
        self.assertEqual(b.get_storage_config().obligations[0].revision, 2)
        # c never held our content: no automatic first push to it.
        self.assertEqual(list(c.get_storage_config().obligations), [])

    @inlineCallbacks
    def test_concurrent_pushes_to_one_peer_are_serialized(self):  # type: ignore[no-untyped-def]
        a, b, _ = self.nodes
        yield self.connect(a, b)
        yield write_files(a, {"f.bin": os.urandom(1_000_000)})
        first: queue.Queue[object] = queue.Queue()
        second: queue.Queue[object] = queue.Queue()
        a.replicate_content([b.keys.onion_address], first)
        a.replicate_content([b.keys.onion_address], second)
        one = yield drain(first)
        two = yield drain(second)
        self.assertEqual([e.phase for e in one if e.phase != "syncing"], ["done"])
        self.assertEqual([e.phase for e in two if e.phase != "syncing"], ["done"])

    @inlineCallbacks
    def test_reconnects_after_drop(self):  # type: ignore[no-untyped-def]
        import barterbackup.peers as peers_module

        self.patch(peers_module, "RECONNECT_FIRST_DELAY", 0.1)
        a, b, _ = self.nodes
        yield self.connect(a, b)
        manager = a._peers()
        manager._reconnects[b.keys.onion_pubkey].delay = 0.1
        manager.connection(b.keys.onion_address).close()
        for _ in range(100):
            yield deferLater(reactor, 0.05, lambda: None)
            infos = a.connected_peers()
            if infos and infos[0].connected:
                break
        self.assertTrue(a.connected_peers()[0].connected)


def tree_size(root: Any) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class GarbageCollectionTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_old_sections_are_collected_but_in_flight_ones_kept(self):  # type: ignore[no-untyped-def]
        tmp = short_tempdir(self)
        node = Node(reactor, NodeConfig(node_dir=tmp / "n", transport="tcp"))
        yield node.unlock(PASSWORDS[0], create_if_missing=True)
        self.addCleanup(node.shutdown)
        size = 2 * 1024 * 1024
        first = yield write_files(node, {"f.bin": os.urandom(size)})
        in_flight = first.revision
        # Pretend revision 1 is being pushed to a peer while we move on.
        node._peers()._pushing[in_flight.content_id] = (in_flight, 1)
        for _ in range(3):
            yield write_files(node, {"f.bin": os.urandom(size)})
        yield node.collect_garbage()
        # Revision 1 (in flight) and 3, 4 (kept) survive; 2 is gone.
        for ref in in_flight.revision.sections:
            self.assertTrue(node.content.has_section(ref.sha256))
        content_dir = tmp / "n" / "content"
        self.assertLess(tree_size(content_dir), 3.5 * size)
        # Once the push is over, revision 1's sections go too.
        del node._peers()._pushing[in_flight.content_id]
        freed = yield node.collect_garbage()
        self.assertGreater(freed, size // 2)
        self.assertFalse(
            any(node.content.has_section(r.sha256) for r in in_flight.revision.sections)
        )
        self.assertLess(tree_size(content_dir), 2.5 * size)
