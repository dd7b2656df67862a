"""Several full nodes on the no-network swarm: connect, replicate under
contracts, delta sync, contract sizes, peer exchange, automatic sync,
reconnection, garbage collection — through the Node API the gRPC servicer
uses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from barterbackup import errors
from barterbackup._proto import bbrpc_pb2
from barterbackup.peers.pool import RECONNECT_FIRST_DELAY
from barterbackup.progress import Progress
from barterbackup.testing.swarm import Swarm, SwarmNode
from barterbackup.tree.read import iter_entries
from tests.contract_swarm import MIB, SWARM_CONTENT


class SwarmTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.swarm = Swarm(Path(self.mktemp()), 3, content=SWARM_CONTENT)
        self.addCleanup(self.swarm.stop)
        self.a, self.b, self.c = self.swarm.nodes
        for member in self.swarm.nodes:
            self.swarm.wait(member.node.set_storage_config(min_replicas=0))

    def replicate(self, node: SwarmNode, peers: list[str]) -> list[Progress]:
        events: list[Progress] = []
        self.swarm.wait(node.node.replicate(peers, events.append), 30)
        return events

    def under_contract(
        self, owner: SwarmNode, replica: SwarmNode, size: int = 64 * MIB
    ) -> list[Progress]:
        """The users connect both ways and ``owner`` proposes a contract;
        its progress events (the first push among them)."""
        self.swarm.connect(owner, replica)
        self.swarm.connect(replica, owner)
        events: list[Progress] = []
        self.swarm.wait(
            owner.node.propose_contract(replica.address, size, size, events.append),
            30,
        )
        return events

    def test_connect_and_list(self) -> None:
        a, b = self.a, self.b
        info = self.swarm.connect(a, b)
        self.assertTrue(info.connected)
        self.assertEqual(info.onion_address, b.address)
        self.assertEqual(info.first_seen, int(self.swarm.clock.seconds()))
        [listed] = a.node.peers()
        self.assertTrue(listed.connected)
        # The first ping came back at once: no time passed on the swarm.
        self.assertEqual(listed.rtt_ms, 0)
        # b did not record a: a stranger that authenticates is not a peer
        # (issue 13, finding 6) until b's user connects it or a contract
        # binds them.
        self.assertEqual(b.node.peers(), [])

    def test_connect_errors(self) -> None:
        a, b = self.a, self.b
        with self.assertRaises(errors.InvalidArgument):
            self.swarm.wait(a.node.connect_peer("nonsense.onion"))
        with self.assertRaises(errors.InvalidArgument):
            self.swarm.wait(a.node.connect_peer(a.address))
        self.swarm.wait(b.node.stopService())
        with self.assertRaises(errors.Unavailable):
            self.swarm.wait(a.node.connect_peer(b.address))

    def test_replicate_then_delta(self) -> None:
        a, b, c = self.a, self.b, self.c
        big = os.urandom(3 * 1024 * 1024)
        a.write_files({"big.bin": big, "notes.txt": b"hello\n" * 1000})
        events = self.under_contract(a, b) + self.under_contract(a, c)
        done = [e for e in events if e.phase == "done"]
        self.assertEqual(sorted(e.peer for e in done), sorted([b.address, c.address]))
        self.assertGreater(done[0].bytes_total, len(big))
        [held] = b.node.storage_report().obligations
        self.assertEqual((held.onion_address, held.revision), (a.address, 1))
        # Change 64 KiB in the middle: only a few sections travel.
        changed = bytearray(big)
        changed[1_500_000 : 1_500_000 + 65536] = os.urandom(65536)
        a.write_files({"big.bin": bytes(changed)})
        events = self.replicate(a, [b.address])
        self.swarm.advance(1)
        [final] = [e for e in events if e.phase == "done"]
        self.assertEqual(final.revision, 2)
        fetched = int(final.message.split()[0])
        self.assertLess(fetched, 4 * 65536, final.message)
        self.assertGreater(fetched, 0)
        [record] = [p for p in a.node.peers() if p.onion_address == b.address]
        self.assertEqual(record.held_revision, 2)

    def test_a_revision_over_the_contract_size_is_refused_cleanly(self) -> None:
        a, b = self.a, self.b
        a.write_files({"big.bin": os.urandom(2 * 1024 * 1024)})
        events = self.under_contract(a, b, size=1 * MIB)
        [retrying] = [e for e in events if e.phase == "retrying"]
        self.assertIn("contract lets you store at most", retrying.message)
        report = b.node.storage_report()
        self.assertEqual(report.used_bytes, 0)
        self.assertEqual(report.obligated_bytes, 1 * MIB)

    def test_storage_config_validation(self) -> None:
        node = self.a.node
        with self.assertRaises(errors.InvalidArgument):
            node.set_storage_config(-1)
        with self.assertRaises(errors.InvalidArgument):
            node.set_storage_config(min_replicas=65)
        with self.assertRaises(errors.InvalidArgument):
            node.set_storage_config(acceptance_policy="everyone")
        report = self.swarm.wait(node.set_storage_config(10**9, 3, "open"))
        self.assertEqual(
            (report.total_bytes, report.min_replicas, report.acceptance_policy),
            (10**9, 3, "open"),
        )
        # Unset values stay.
        report = self.swarm.wait(node.set_storage_config(min_replicas=0))
        self.assertEqual((report.total_bytes, report.min_replicas), (10**9, 0))

    def test_replicate_preconditions(self) -> None:
        a, b = self.a, self.b
        with self.assertRaises(errors.FailedPrecondition):
            a.node.replicate([], list().append)  # no content yet
        a.write_files({"x": b"x"})
        with self.assertRaises(errors.FailedPrecondition):
            a.node.replicate([], list().append)  # no contract
        self.swarm.connect(a, b)
        with self.assertRaises(errors.FailedPrecondition):
            a.node.replicate([b.address], list().append)  # connected, no contract

    def test_peer_exchange_shares_only_allowed_peers(self) -> None:
        a, b, c = self.a, self.b, self.c
        self.swarm.connect(a, b, share=True)
        self.swarm.connect(a, c, share=False)
        conn: Any = c.session.pool.connection(a.pubkey)
        response = self.swarm.wait(
            conn.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
        )
        self.assertEqual(list(response.onion_addresses), [b.address])

    def test_new_revisions_sync_by_themselves_to_peers_under_contract(self) -> None:
        a, b, c = self.a, self.b, self.c
        a.write_files({"f.bin": os.urandom(200_000)})
        self.under_contract(a, b)  # b holds revision 1
        self.swarm.connect(a, c)
        a.write_files({"g.bin": os.urandom(100_000)})  # commits revision 2
        self.swarm.advance(0.1)
        self.assertEqual(b.node.storage_report().obligations[0].revision, 2)
        # c has no contract: it never gets our content.
        self.assertEqual(c.node.storage_report().obligations, [])

    def test_strangers_reconnecting_do_not_postpone_a_sync(self) -> None:
        a, b, c = self.a, self.b, self.c
        a.write_files({"f.bin": os.urandom(10_000)})
        self.under_contract(a, b)
        a.write_files({"g.bin": os.urandom(10_000)})
        # A peer reconnecting every second cannot push the sync back.
        for _ in range(5):
            self.swarm.connect(c, a)
            c.session.pool.connection(a.pubkey).close()
            self.swarm.advance(1)
        self.assertEqual(b.node.storage_report().obligations[0].revision, 2)

    def test_concurrent_replicates_wait_for_the_one_push(self) -> None:
        a, b = self.a, self.b
        a.write_files({"f.bin": os.urandom(10_000)})
        self.under_contract(a, b)
        a.write_files({"g.bin": os.urandom(1_000_000)})
        first: list[Progress] = []
        second: list[Progress] = []
        one = a.node.replicate([b.address], first.append)
        two = a.node.replicate([b.address], second.append)
        self.swarm.wait(one, 30)
        self.swarm.wait(two, 30)
        self.assertEqual([e.phase for e in first if e.phase != "syncing"], ["done"])
        self.assertEqual([e.phase for e in second if e.phase != "syncing"], ["done"])
        self.assertEqual(b.node.storage_report().obligations[0].revision, 2)

    def test_reconnects_after_drop(self) -> None:
        a, b = self.a, self.b
        self.swarm.connect(a, b)
        self.swarm.network.cut(b.address)
        self.assertFalse(a.node.peers()[0].connected)
        # The first retry comes within the first delay plus its jitter.
        self.swarm.advance(RECONNECT_FIRST_DELAY * 1.3)
        self.assertTrue(a.node.peers()[0].connected)

    def test_peer_table_survives_a_restart(self) -> None:
        a, b = self.a, self.b
        self.swarm.connect(a, b, share=True)
        again = self.swarm.restart_node(a)
        [record] = again.node.peers()
        self.assertEqual(
            (record.onion_address, record.shared_in_exchange), (b.address, True)
        )
        # And it dials the peers it knows by itself, at once.
        self.assertFalse(record.connected)
        self.swarm.advance(0.1)
        self.assertTrue(again.node.peers()[0].connected)


class BlobsOf:
    """A content store as a tree NodeSource."""

    def __init__(self, content: Any) -> None:
        self.get = content.read_blob


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class GarbageCollectionTests(SynchronousTestCase):
    def test_old_sections_are_collected_but_in_flight_ones_kept(self) -> None:
        swarm = Swarm(Path(self.mktemp()), 1)
        self.addCleanup(swarm.stop)
        [member] = swarm.nodes
        node = member.node
        size = 2 * 1024 * 1024
        in_flight = member.write_files({"f.bin": os.urandom(size)}).revision
        assert in_flight is not None
        content = member.session.content
        sections = [
            entry.sha256 for entry in iter_entries(in_flight.sections, BlobsOf(content))
        ]
        self.assertGreater(len(sections), 10)
        # Revision 1 is being pushed to a peer while we move on.
        member.session.pusher._pin(in_flight)
        for _ in range(3):
            member.write_files({"f.bin": os.urandom(size)})
        swarm.wait(node.collect_garbage())
        # Revision 1 (in flight) and 3, 4 (kept) survive; 2 is gone.
        self.assertTrue(all(content.has_blob(sha256) for sha256 in sections))
        content_dir = node.node_dir / "content"
        self.assertLess(tree_size(content_dir), 3.5 * size)
        # Once the push is over, revision 1's sections go too.
        member.session.pusher._unpin(in_flight)
        freed = swarm.wait(node.collect_garbage())
        self.assertGreater(freed, size // 2)
        self.assertFalse(any(content.has_blob(sha256) for sha256 in sections))
        self.assertLess(tree_size(content_dir), 2.5 * size)


class FiveNodeTests(SynchronousTestCase):
    def test_one_node_replicates_to_four_and_each_reads_back(self) -> None:
        swarm = Swarm(Path(self.mktemp()), 5)
        self.addCleanup(swarm.stop)
        owner, *replicas = swarm.nodes
        swarm.wait(owner.node.set_storage_config(min_replicas=0))
        data = os.urandom(1024 * 1024)
        owner.write_files({"a.bin": data, "b.txt": b"five\n" * 100})
        for replica in replicas:
            swarm.connect(owner, replica)
            swarm.connect(replica, owner)
            swarm.wait(
                owner.node.propose_contract(
                    replica.address, 64 * MIB, 64 * MIB, list().append
                ),
                30,
            )
        latest = owner.write_files({"c.txt": b"one more\n"}).revision
        assert latest is not None
        events: list[Progress] = []
        results = swarm.wait(owner.node.replicate([], events.append), 30)
        self.assertEqual(
            sorted(r.peer for r in results), sorted(r.address for r in replicas)
        )
        content_id = latest.content_id
        for replica in replicas:
            held = replica.session.replicas.held(owner.pubkey)
            assert held is not None and held.held is not None
            self.assertEqual(held.held.content_id, content_id)
            self.assertIsNone(held.pending)
        self.assertEqual(owner.read_file("a.bin"), data)
