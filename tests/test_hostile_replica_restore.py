"""Recovery after a total loss, and ``check --repair``, against a replica
that serves damaged data (issue 13), on the no-network swarm.

The hostile replica answers every ``Download`` of our content from its
store, but with some blobs replaced as a lying or failing disk would:
bytes flipped in a section, a section cut short, another section's bytes
under the hash asked for, a tree node of another revision; or it offers a
root we did not sign. For each: no wrong byte reaches our store or the
restored files; the damage is reported naming the replica and what was
bad; and when an honest replica also holds the data, the recovery or
repair completes from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from barterbackup._proto import bbrpc_pb2
from barterbackup.content.engine import CorruptContent
from barterbackup.progress import Progress
from barterbackup.recovery.recoverer import RecoveryResult
from barterbackup.testing import damage
from barterbackup.testing.swarm import SwarmNode
from barterbackup.tree import iter_entries
from tests.contract_swarm import MIB
from tests.test_recovery_swarm import RecoveryCase, forged
from tests.test_swarm_repair import FILES, RepairSwarmCase

# What the hostile replica does to a blob it serves: (hash, true bytes)
# → the bytes it sends.
Damage = Callable[[bytes, bytes], bytes]


def _flipped(sha256: bytes, data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x40
    return bytes(out)


def _truncated(sha256: bytes, data: bytes) -> bytes:
    return data[: len(data) // 2]


class _Source:
    def __init__(self, member: SwarmNode) -> None:
        self._content = member.session.content

    def get(self, node_hash: bytes) -> bytes:
        data: bytes = self._content.read_blob(node_hash)
        return data


def section_hashes(member: SwarmNode) -> list[bytes]:
    """Every section of ``member``'s current revision, in table order."""
    revision = member.session.content.current
    return [entry.sha256 for entry in iter_entries(revision.sections, _Source(member))]


def node_hashes(member: SwarmNode) -> list[bytes]:
    """Every node of ``member``'s current section tree, root first."""
    content = member.session.content
    return [ref.hash for ref in damage.tree_nodes(content.current, content)]


def serve_damaged(replica: SwarmNode, targets: dict[bytes, Damage]) -> list[bytes]:
    """``replica`` serves each blob of ``targets`` damaged; the hashes it
    served damaged, in order."""
    replicas = replica.session.replicas
    read_blob = replicas.read_blob
    served: list[bytes] = []

    def hostile(owner: bytes, sha256: bytes) -> bytes:
        data: bytes = read_blob(owner, sha256)
        change = targets.get(sha256)
        if change is None:
            return data
        served.append(sha256)
        return change(sha256, data)

    replicas.read_blob = hostile
    return served


def offer_root(replica: SwarmNode, signed: bytes) -> None:
    """``replica`` answers GetContentRevision with the root ``signed``."""
    service = replica.session.pool.handler._replica
    honest = service.get_content_revision

    def answer(conn: Any) -> bbrpc_pb2.GetContentRevisionResponse:
        response = honest(conn)
        response.signed_root = signed
        return response

    service.get_content_revision = answer


def replaced_by(data: bytes) -> Damage:
    """Whatever is asked, ``data`` is sent."""
    return lambda sha256, true: data


def swapped(
    hashes: list[bytes], data_of: Callable[[bytes], bytes]
) -> dict[bytes, Damage]:
    """Each hash served with the true bytes of the next one (a valid blob
    under the wrong name)."""
    following = hashes[1:] + hashes[:1]
    return {h: replaced_by(data_of(o)) for h, o in zip(hashes, following, strict=True)}


class HostileRecoveryTests(RecoveryCase):
    """Bob serves damaged blobs; carol is honest."""

    def back_up_twice(self) -> dict[bytes, bytes]:
        """Two revisions; the first one's tree nodes, by hash."""
        self.back_up([self.bob, self.carol], size=2 * MIB)
        content = self.alice.session.content
        old_nodes = {h: content.read_blob(h) for h in node_hashes(self.alice)}
        self.files["photos/b.jpg"] = os.urandom(2 * MIB)
        self.alice.write_files({"photos/b.jpg": self.files["photos/b.jpg"]})
        self.settle(60)
        for replica in (self.bob, self.carol):
            held = replica.session.replicas.held(self.alice.pubkey)
            self.assertEqual(held.held.number, content.current.number)
        return old_nodes

    def recover_around(self, targets: dict[bytes, Damage], *faults: str) -> None:
        """Recover with bob serving ``targets`` damaged: carol is down
        until bob was caught (so bob is surely asked), then comes back."""
        served = serve_damaged(self.bob, targets)
        self.swarm.stop_node(self.carol)
        alice = self.lose_alice()
        events: list[Progress] = []
        done = alice.node.recover([], 0, events.append)
        self.swarm.advance(120)
        # Bob served something damaged and was caught; nothing installed.
        self.assertTrue(served)
        self.assertFalse(done.called)
        self.assertEqual(alice.node.status().revision, 0)
        told = [
            e.message
            for e in events
            if e.peer == self.bob.address and "dropped" in e.message
        ]
        self.assertEqual(len(told), 1, "the user is not told about bob")
        self.assertIn(served[0].hex()[:16], told[0])
        self.assertTrue(any(fault in told[0] for fault in faults), told)
        # Carol comes back: everything comes from her.
        self.carol = self.swarm.restart_node(self.carol)
        result: RecoveryResult = self.swarm.wait(done, 900)
        self.assertEqual(result.sources, (self.carol.address,))
        reasons = [why for name, why in result.dropped if name == self.bob.address]
        self.assertEqual(len(reasons), 1, result.dropped)
        self.assertIn(reasons[0], told[0])
        bob = next(p for p in alice.node.peers() if p.onion_address == self.bob.address)
        self.assertEqual(bob.checks_failed, 1)
        # Carol's true bytes, every one: the files, the store as a whole,
        # and the files a restore writes to disk.
        self.assert_files(alice, self.files)
        report = self.swarm.wait(alice.node.check_content(True, False, lambda e: None))
        self.assertTrue(report.ok, report.final)
        self.assert_restored(alice)

    def assert_restored(self, member: SwarmNode) -> None:
        target = Path(self.mktemp()).absolute()
        target.mkdir()
        outcome = self.swarm.wait(
            member.node.restore_files(str(target), [], 0, False, lambda e: None), 60
        )
        self.assertEqual(outcome.failed, [])
        self.assertEqual(outcome.files_restored, len(self.files))
        on_disk = {
            str(path.relative_to(target)): path.read_bytes()
            for path in target.rglob("*")
            if path.is_file()
        }
        self.assertEqual(on_disk, self.files)

    def test_flipped_bytes_in_sections(self) -> None:
        self.back_up_twice()
        targets = {h: _flipped for h in section_hashes(self.alice)}
        self.recover_around(targets, "failed its hash check")

    def test_truncated_sections(self) -> None:
        self.back_up_twice()
        targets = {h: _truncated for h in section_hashes(self.alice)}
        self.recover_around(targets, "has length")

    def test_a_section_under_another_hash(self) -> None:
        self.back_up_twice()
        content = self.alice.session.content
        targets = swapped(section_hashes(self.alice), content.read_blob)
        self.recover_around(targets, "failed its hash check", "has length")

    def test_tree_nodes_of_another_revision(self) -> None:
        old_nodes = self.back_up_twice()
        current = node_hashes(self.alice)
        olds = [old_nodes[h] for h in old_nodes if h not in current]
        self.assertTrue(olds)
        targets = {h: replaced_by(olds[i % len(olds)]) for i, h in enumerate(current)}
        self.recover_around(targets, "failed its hash check", "has length")

    def test_the_only_replica_hostile_leaves_nothing_wrong_behind(self) -> None:
        """Bob alone keeps alice's content and damages it: nothing is
        installed and the recovery waits (a replica caught lying is not
        asked again in the same run); once bob serves the true bytes, the
        recovery resumed at alice's next start finishes."""
        self.back_up([self.bob], size=2 * MIB)
        revision = self.alice.node.status().revision
        serve_damaged(self.bob, {h: _flipped for h in section_hashes(self.alice)})
        alice = self.lose_alice()
        events: list[Progress] = []
        done = alice.node.recover([], 0, events.append)
        self.swarm.advance(300)
        self.assertFalse(done.called)
        self.assertEqual(alice.node.status().revision, 0)
        self.assertEqual(list(alice.node.iter_files()), [])
        dropped = [e.message for e in events if e.peer == self.bob.address]
        self.assertTrue(any("hash check" in m for m in dropped), dropped)
        self.assertTrue((alice.node_dir / "recovering").exists())
        # Bob's disk is mended (a restart serves from the store again), and
        # alice's node starts again: the recovery resumes by itself.
        self.bob = self.swarm.restart_node(self.bob)
        self.alice = alice = self.swarm.restart_node(alice)
        # The call made before the restart ends, saying it resumes later.
        self.assertIn("resumes later", str(self.failureResultOf(done).value))
        self.settle(300)
        self.assertEqual(alice.node.status().revision, revision)
        self.assert_files(alice, self.files)
        self.assert_restored(alice)


class HostileRepairTests(RepairSwarmCase):
    """``check --repair`` of a damaged section of ours, the replica lying."""

    name = "album/03.jpg"

    def setUp(self) -> None:
        super().setUp()
        self.keep_with_replica()
        self.damaged = self.section(self.owner, self.name, 1)

    def damage_ours(self) -> None:
        damage.flip_bit(self.owner.session.content, self.damaged, 7)

    def honest_second_replica(self) -> None:
        self.friends(self.owner, self.other)
        self.propose(self.owner, self.other)
        held = self.other.session.replicas.held(self.owner.pubkey)
        self.assertEqual(held.held.number, self.owner.session.content.current.number)

    def assert_still_damaged(self, report: Any) -> None:
        """Nothing wrong was written: the damage is still exactly ours."""
        self.assertFalse(report.ok)
        self.assertEqual(report.blobs_repaired, 0)
        self.assertEqual(self.damaged_names(report, final=True), [self.name])
        with self.assertRaises(CorruptContent):
            self.owner.read_file(self.name)
        again = self.check(self.owner, read_data=True)
        self.assertEqual([b.sha256 for b in again.found.damaged], [self.damaged])

    def repair_against(self, change: Damage) -> Any:
        self.damage_ours()
        served = serve_damaged(self.replica, {self.damaged: change})
        report = self.check(self.owner, read_data=True, repair=True)
        self.assertEqual(served, [self.damaged])
        return report

    def assert_named(self, report: Any, *faults: str) -> None:
        """A note names the replica, the blob and what was wrong with it."""
        notes = [n for n in report.notes if self.replica.address in n]
        self.assertEqual(len(notes), 1, report.notes)
        self.assertIn(self.damaged.hex()[:16], notes[0])
        self.assertTrue(any(fault in notes[0] for fault in faults), notes)

    def test_flipped_bytes(self) -> None:
        report = self.repair_against(_flipped)
        self.assert_still_damaged(report)
        self.assert_named(report, "hash")

    def test_a_truncated_section(self) -> None:
        report = self.repair_against(_truncated)
        self.assert_still_damaged(report)
        self.assert_named(report, "hash check")

    def test_a_section_under_another_hash(self) -> None:
        other = self.section(self.owner, self.name, 0)
        true_other = self.owner.session.content.read_blob(other)
        report = self.repair_against(replaced_by(true_other))
        self.assert_still_damaged(report)
        self.assert_named(report, "hash check", "length")

    def test_a_forged_root(self) -> None:
        current = self.owner.session.content.current
        offer_root(self.replica, forged(current.signed))
        self.damage_ours()
        report = self.check(self.owner, read_data=True, repair=True)
        self.assert_still_damaged(report)
        notes = [n for n in report.notes if self.replica.address in n]
        self.assertTrue(any("did not sign" in n for n in notes), report.notes)

    def test_an_honest_replica_also_holding_it_repairs(self) -> None:
        self.honest_second_replica()
        self.damage_ours()
        served = serve_damaged(self.replica, {self.damaged: _flipped})
        report = self.check(self.owner, read_data=True, repair=True)
        self.assertTrue(report.ok, report.final)
        self.assertEqual(report.blobs_repaired, 1)
        self.assertEqual(self.owner.read_file(self.name), FILES[self.name])
        if served:
            # The liar was asked first: it is named for what it sent.
            self.assert_named(report, "hash")
        self.assertTrue(self.check(self.owner, read_data=True).ok)
