"""Recovery after a total loss, on the no-network swarm (docs/recovery.md).

Alice backs up to bob and carol (and dave in some tests) under contracts;
her node directory is deleted and her node started again with the same
password: she types no address, her replicas reach her, she picks the
newest validly signed revision, fetches it from all of them in parallel
and installs it; her peer table and contracts come back with it.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet.defer import Deferred

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.progress import Progress
from barterbackup.recovery.recoverer import RecoveryResult
from barterbackup.sync.fetch import live_blobs
from barterbackup.testing.swarm import SwarmNode
from tests.contract_swarm import MIB, ContractSwarmCase


class RecoveryCase(ContractSwarmCase):
    nodes = 3
    files: dict[str, bytes]

    def setUp(self) -> None:
        super().setUp()
        self.alice, self.bob, self.carol = self.swarm.nodes[:3]
        self.friends(*self.swarm.nodes)

    def back_up(self, replicas: list[SwarmNode], size: int = 300_000) -> None:
        """Alice commits files and forms a contract with each replica."""
        self.files = {
            "docs/a.txt": b"alpha " * 1000,
            "photos/b.jpg": os.urandom(size),
            "c.bin": os.urandom(size // 3),
        }
        self.alice.write_files(self.files)
        for replica in replicas:
            self.propose(self.alice, replica)
        self.settle()
        for replica in replicas:
            self.assertEqual(self.state(self.alice, replica), "active")

    def settle(self, seconds: float = 30.0) -> None:
        self.swarm.advance(seconds)

    def serve_flipped_bits(self, replica: SwarmNode) -> None:
        """``replica`` serves every blob with one bit flipped."""
        replicas = replica.session.replicas
        read_blob = replicas.read_blob

        def flipped(owner: bytes, sha256: bytes) -> bytes:
            data = bytearray(read_blob(owner, sha256))
            data[len(data) // 2] ^= 0x01
            return bytes(data)

        replicas.read_blob = flipped

    def hang_after(self, replica: SwarmNode, blobs: int) -> _Hang:
        """``replica``'s disk hangs once it has read ``blobs`` blobs for
        Download (every blob read before was sent)."""
        hang = _Hang(blobs)
        replicas = replica.session.replicas
        read_blob = replicas.read_blob

        def counted(owner: bytes, sha256: bytes) -> bytes:
            hang.delivered.append(sha256)
            data: bytes = read_blob(owner, sha256)
            return data

        replicas.read_blob = counted
        server = replica.session.pool.handler._server
        blocking = server._blocking

        def gated(work: Any) -> Any:
            if hang.hanging and len(hang.delivered) >= hang.after:
                return Deferred()  # Never fires: the read never ends.
            return blocking(work)

        server._blocking = gated
        return hang

    def lose_alice(self) -> SwarmNode:
        """Alice's machine is gone: directory deleted, node started again."""
        node_dir = self.alice.node_dir
        index = self.alice.index
        self.swarm.stop_node(self.alice)
        shutil.rmtree(node_dir)
        again = self.swarm.add_node(node_dir, index)
        self.swarm.nodes[self.swarm.nodes.index(self.alice)] = again
        self.alice = again
        return again

    def recover(
        self,
        member: SwarmNode,
        events: list[Progress],
        seconds: float = 900.0,
        report: Any = None,
        **kw: Any,
    ) -> RecoveryResult:
        result: RecoveryResult = self.swarm.wait(
            member.node.recover(
                kw.get("from_peers", []),
                kw.get("revision", 0),
                report or events.append,
            ),
            seconds,
        )
        return result

    def assert_files(self, member: SwarmNode, files: dict[str, bytes]) -> None:
        self.assertEqual(sorted(member.node.iter_files()), sorted(files))
        for name, data in files.items():
            self.assertEqual(member.read_file(name), data)


class TotalLossTests(RecoveryCase):
    def test_same_password_brings_everything_back(self) -> None:
        """No address typed: the replicas reach alice, everything returns."""
        self.back_up([self.bob, self.carol])
        before = self.alice.node.status().revision
        peers_before = sorted(p.onion_address for p in self.alice.node.peers())
        alice = self.lose_alice()
        self.assertEqual(alice.node.status().revision, 0)
        self.assertTrue(alice.session.recovery.running)
        events: list[Progress] = []
        result = self.recover(alice, events)
        self.assertEqual(result.revision.number, before)
        self.assertEqual(
            sorted(result.sources), sorted([self.bob.address, self.carol.address])
        )
        self.assert_files(alice, self.files)
        self.assertEqual(
            sorted(p.onion_address for p in alice.node.peers()), peers_before
        )
        states = {c.peer: c.state for c in alice.node.contracts()}
        self.assertEqual(
            states, {self.bob.address: "active", self.carol.address: "active"}
        )
        phases = [e.phase for e in events if not e.peer]
        for phase in ("fetching", "verifying", "installing", "done"):
            self.assertIn(phase, phases)
        self.assertFalse(alice.session.recovery.running)
        self.assertIsNone(alice.node.status().recovery)

    def test_node_state_revisions_settle(self) -> None:
        """Contracts cycling syncing -> active on every revision do not
        make each revision call for a state-only one."""
        self.back_up([self.bob, self.carol])
        self.settle(120)
        settled = self.alice.node.status().revision
        self.settle(900)
        self.assertEqual(self.alice.node.status().revision, settled)

    def test_replicas_told_alice_lost_their_data(self) -> None:
        """Alice kept bob's data too: bob re-syncs to her at once."""
        self.bob.write_files({"bob.txt": b"bob's own " * 500})
        self.back_up([self.bob, self.carol])
        self.settle(60)
        self.assertIsNotNone(self.alice.session.replicas.held(self.bob.pubkey))
        alice = self.lose_alice()
        self.recover(alice, [])
        self.settle(120)
        held = alice.session.replicas.held(self.bob.pubkey)
        self.assertIsNotNone(held)
        assert held is not None
        self.assertEqual(held.held, self.bob.session.content.current)

    def test_one_replica_names_the_others(self) -> None:
        """Only bob reachable at first: the node state names carol too."""
        self.back_up([self.bob, self.carol])
        self.swarm.stop_node(self.carol)
        alice = self.lose_alice()
        events: list[Progress] = []
        result = self.recover(alice, events)
        self.assertEqual(result.sources, (self.bob.address,))
        self.assert_files(alice, self.files)
        self.assertIn(self.carol.address, [p.onion_address for p in alice.node.peers()])

    def test_newest_valid_revision_wins(self) -> None:
        """Carol holds an older revision (she was away for the last one)."""
        self.back_up([self.bob, self.carol])
        self.swarm.stop_node(self.carol)
        newer = dict(self.files, **{"new.txt": b"written while carol was away"})
        self.alice.write_files({"new.txt": newer["new.txt"]})
        self.settle(60)
        newest = self.alice.node.status().revision
        carol = self.swarm.restart_node(self.carol)
        self.carol = carol
        # Carol cannot sync the newest before alice is gone.
        self.swarm.network.cut(self.alice.address)
        alice = self.lose_alice()
        result = self.recover(alice, [])
        self.assertEqual(result.revision.number, newest)
        self.assertEqual(result.sources, (self.bob.address,))
        self.assert_files(alice, newer)

    def test_bad_bytes_drop_the_replica(self) -> None:
        """Bob flips bits: he is dropped and scored down, carol finishes."""
        self.back_up([self.bob, self.carol], size=2 * MIB)
        self.serve_flipped_bits(self.bob)
        alice = self.lose_alice()
        events: list[Progress] = []
        result = self.recover(alice, events)
        self.assertEqual(result.sources, (self.carol.address,))
        self.assertIn(self.bob.address, [name for name, _ in result.dropped])
        self.assert_files(alice, self.files)
        bob = next(p for p in alice.node.peers() if p.onion_address == self.bob.address)
        self.assertEqual(bob.checks_failed, 1)

    def test_interrupted_recovery_resumes(self) -> None:
        """The only replica goes mid-fetch; nothing is fetched twice."""
        self.back_up([self.bob], size=3 * MIB)
        revision = self.alice.node.status().revision
        hang = self.hang_after(self.bob, 20)
        alice = self.lose_alice()
        done = alice.node.recover([], 0, lambda progress: None)
        recovery = alice.session.recovery
        # The offers' window (30 s), then the fetch until bob hangs.
        self.swarm.advance(45)
        self.assertGreaterEqual(len(hang.delivered), 20)
        self.swarm.stop_node(self.bob)
        self.swarm.advance(5)
        self.assertFalse(done.called)
        self.assertGreater(recovery.blobs_fetched, 0)
        first_attempt = recovery.blobs_fetched
        self.bob = self.swarm.restart_node(self.bob)
        result: RecoveryResult = self.swarm.wait(done, 900)
        self.assertEqual(result.revision.number, revision)
        self.assert_files(alice, self.files)
        # Every blob of the revision fetched exactly once over both attempts.
        needed = set(live_blobs(result.revision, _ContentSource(alice)))
        self.assertEqual(recovery.blobs_fetched, len(needed))
        self.assertLess(first_attempt, len(needed))


class OneOfThreeTests(RecoveryCase):
    nodes = 4

    def test_only_one_of_three_replicas_reachable(self) -> None:
        """Bob, carol and dave keep alice's content; only dave is up."""
        dave = self.swarm.nodes[3]
        self.back_up([self.bob, self.carol, dave])
        self.swarm.stop_node(self.bob)
        self.swarm.stop_node(self.carol)
        alice = self.lose_alice()
        result = self.recover(alice, [])
        self.assertEqual(result.sources, (dave.address,))
        self.assert_files(alice, self.files)
        self.assertEqual(
            {c.peer for c in alice.node.contracts()},
            {self.bob.address, self.carol.address, dave.address},
        )


class AutomaticRecoveryTests(RecoveryCase):
    def test_recovers_by_itself_after_unlock_create(self) -> None:
        """Nobody calls recover: the unlock on an empty directory does."""
        self.back_up([self.bob, self.carol])
        before = self.alice.node.status().revision
        alice = self.lose_alice()
        self.assertIsNotNone(alice.node.status().recovery)
        self.settle(300)
        self.assertEqual(alice.node.status().revision, before)
        self.assertIsNone(alice.node.status().recovery)
        self.assert_files(alice, self.files)
        self.assertFalse((alice.node_dir / "recovering").exists())

    def test_resumed_at_the_next_unlock_nothing_delivered_twice(self) -> None:
        """Alice's node restarts mid-recovery: it resumes by itself, and
        no blob bob delivered before is delivered again."""
        self.back_up([self.bob], size=3 * MIB)
        revision = self.alice.node.status().revision
        alice = self.lose_alice()
        hang = self.hang_after(self.bob, 20)
        self.settle(60)
        self.assertGreaterEqual(len(hang.delivered), 20)
        self.assertEqual(alice.node.status().revision, 0)
        self.assertTrue((alice.node_dir / "recovering").exists())
        alice = self.swarm.restart_node(alice)
        self.alice = alice
        hang.hanging = False
        self.settle(300)
        self.assertEqual(alice.node.status().revision, revision)
        self.assert_files(alice, self.files)
        self.assertEqual(len(hang.delivered), len(set(hang.delivered)))


class _Hang:
    def __init__(self, after: int) -> None:
        self.after = after
        self.hanging = True
        self.delivered: list[bytes] = []


class _ContentSource:
    def __init__(self, member: SwarmNode) -> None:
        self._content = member.session.content

    def get(self, node_hash: bytes) -> bytes:
        data: bytes = self._content.read_blob(node_hash)
        return data


def forged(signed: bytes) -> bytes:
    """Our signed root with its number raised: the signature no longer holds."""
    outer = storedpb_pb2.SignedRoot.FromString(signed)
    root = storedpb_pb2.RevisionRoot.FromString(outer.root)
    root.number += 5
    outer.root = root.SerializeToString(deterministic=True)
    return outer.SerializeToString(deterministic=True)


class HostileOfferTests(RecoveryCase):
    def offer(self, member: SwarmNode, signed: bytes, pending: bytes = b"") -> None:
        """``member`` answers GetContentRevision with these roots."""
        service = member.session.pool.handler._replica
        honest = service.get_content_revision

        def answer(conn: Any) -> bbrpc_pb2.GetContentRevisionResponse:
            response = honest(conn)
            response.signed_root = signed
            response.complete = True
            response.pending_signed_root = pending
            return response

        service.get_content_revision = answer

    def carol_score(self, alice: SwarmNode) -> Any:
        return next(
            p for p in alice.node.peers() if p.onion_address == self.carol.address
        )

    def test_forged_root_is_ignored_and_scored_down(self) -> None:
        self.back_up([self.bob, self.carol])
        current = self.alice.session.content.current
        self.offer(self.carol, forged(current.signed))
        alice = self.lose_alice()
        result = self.recover(alice, [])
        self.assertEqual(result.revision.number, current.number)
        self.assertEqual(result.sources, (self.bob.address,))
        self.assertIn(self.carol.address, [name for name, _ in result.dropped])
        self.assert_files(alice, self.files)
        self.assertEqual(self.carol_score(alice).checks_failed, 1)

    def test_older_root_is_ignored_and_scored_down(self) -> None:
        self.back_up([self.bob, self.carol])
        old = self.alice.session.content.current
        self.alice.write_files({"later.txt": b"later"})
        self.settle(60)
        newest = self.alice.session.content.current
        self.offer(self.carol, old.signed)
        alice = self.lose_alice()
        result = self.recover(alice, [])
        self.assertEqual(result.revision.number, newest.number)
        self.assertEqual(result.sources, (self.bob.address,))
        self.assert_files(alice, dict(self.files, **{"later.txt": b"later"}))
        self.assertEqual(self.carol_score(alice).checks_failed, 1)

    def test_newest_incomplete_everywhere_falls_back(self) -> None:
        """Both replicas only started fetching the newest: the newest
        complete one is recovered, and the user is told."""
        self.back_up([self.bob, self.carol])
        complete = self.alice.session.content.current
        self.swarm.stop_node(self.bob)
        self.swarm.stop_node(self.carol)
        self.alice.write_files({"unsynced.txt": b"never reached a replica"})
        newest = self.alice.session.content.current
        self.bob = self.swarm.restart_node(self.bob)
        self.carol = self.swarm.restart_node(self.carol)
        self.swarm.stop_node(self.alice)
        for replica in (self.bob, self.carol):
            self.offer(replica, complete.signed, pending=newest.signed)
        alice = self.lose_alice()
        events: list[Progress] = []
        result = self.recover(alice, events)
        self.assertEqual(result.revision.number, complete.number)
        self.assertIn(
            f"revision {newest.number} is held completely by no replica", result.note
        )
        self.assertTrue(any(result.note in e.message for e in events))
        self.assert_files(alice, self.files)
        # Catching up is not a fault: nobody was scored down.
        self.assertEqual(result.dropped, ())


class NodeWithContentTests(RecoveryCase):
    def test_newer_revision_fetched_without_touching_current(self) -> None:
        self.back_up([self.bob, self.carol])
        kept = self.alice.node_dir.with_name("alice-old")
        shutil.copytree(self.alice.node_dir, kept)
        old = self.alice.session.content.current
        self.alice.write_files({"newer.txt": b"only the replicas have this"})
        self.settle(60)
        newest = self.alice.session.content.current
        node_dir, index = self.alice.node_dir, self.alice.index
        self.swarm.stop_node(self.alice)
        shutil.rmtree(node_dir)
        shutil.copytree(kept, node_dir)
        alice = self.swarm.add_node(node_dir, index)
        self.assertEqual(alice.node.status().revision, old.number)
        self.assertFalse(alice.session.recovery.running)
        seen: list[int] = []

        def report(progress: Progress) -> None:
            if progress.phase == "fetching":
                seen.append(alice.node.status().revision)

        result = self.recover(alice, [], report=report)
        self.assertEqual(result.revision.number, newest.number)
        self.assertTrue(seen)
        self.assertEqual(set(seen), {old.number})
        self.assert_files(
            alice, dict(self.files, **{"newer.txt": b"only the replicas have this"})
        )
