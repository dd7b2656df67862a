"""Self-repair on the no-network swarm: damage in our own packs is found by
``check`` and fetched back from the peers that keep our content, by
``check --repair`` and, after a read meets it, by itself."""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import globalLogPublisher

from barterbackup.content.engine import CorruptContent
from barterbackup.recovery.repair import AUTO_REPAIR_POLL_SECONDS, ContentCheckReport
from barterbackup.testing import damage
from barterbackup.testing.swarm import SwarmNode
from tests.contract_swarm import ContractSwarmCase

FILES = {f"album/{i:02d}.jpg": os.urandom(40_000 + 1000 * i) for i in range(12)}


class RepairSwarmCase(ContractSwarmCase):
    nodes = 3

    def setUp(self) -> None:
        super().setUp()
        self.owner, self.replica, self.other = self.swarm.nodes
        self.friends(self.owner, self.replica)
        self.owner.write_files(FILES)

    def keep_with_replica(self) -> None:
        """The replica keeps the owner's current revision under a contract."""
        self.propose(self.owner, self.replica)
        current = self.owner.session.content.current
        held = self.replica.session.replicas.held(self.owner.pubkey)
        self.assertEqual(held.held.number, current.number)

    def check(
        self, member: SwarmNode, read_data: bool = False, repair: bool = False
    ) -> ContentCheckReport:
        events: list[Any] = []
        report: ContentCheckReport = self.swarm.wait(
            member.node.check_content(read_data, repair, events.append), 60
        )
        return report

    def section(self, member: SwarmNode, name: str, index: int = 0) -> bytes:
        return damage.section_hashes(member.session.content, name)[index]

    def damaged_names(
        self, report: ContentCheckReport, final: bool = False
    ) -> list[str]:
        outcome = report.final if final else report.found
        return sorted(f.name for f in outcome.damaged_files)


class CheckRepairTests(RepairSwarmCase):
    def test_flipped_bits_found_by_read_data_and_repaired_from_a_replica(self) -> None:
        self.keep_with_replica()
        name = "album/03.jpg"
        damage.flip_bit(self.owner.session.content, self.section(self.owner, name), 5)
        self.assertTrue(self.check(self.owner).found.ok)
        report = self.check(self.owner, read_data=True)
        self.assertEqual(self.damaged_names(report), [name])
        self.assertFalse(report.ok)
        report = self.check(self.owner, read_data=True, repair=True)
        self.assertEqual(self.damaged_names(report), [name])
        self.assertEqual(report.blobs_repaired, 1)
        self.assertTrue(report.ok, report.final)
        self.assertEqual(self.owner.read_file(name), FILES[name])
        self.assertTrue(self.check(self.owner, read_data=True).ok)

    def test_a_missing_blob_found_by_the_plain_check_and_repaired(self) -> None:
        self.keep_with_replica()
        name = "album/07.jpg"
        content = self.owner.session.content
        sha256 = self.section(self.owner, name, -1)
        damage.remove_from_index(content.packs.directory, sha256)
        self.owner = self.swarm.restart_node(self.owner)
        report = self.check(self.owner)
        self.assertEqual(self.damaged_names(report), [name])
        self.assertIn("is missing", report.found.damaged[0].problem)
        report = self.check(self.owner, repair=True)
        self.assertTrue(report.ok, report)
        self.assertEqual(self.owner.read_file(name), FILES[name])

    def test_a_damaged_tree_node_and_what_it_hid(self) -> None:
        self.keep_with_replica()
        content = self.owner.session.content
        revision = content.current
        leaves = [r for r in damage.tree_nodes(revision, content) if r.level == 0]
        # A leaf and a section below it: the section's damage shows only
        # once the leaf is back, and the next round repairs it too.
        leaf = leaves[0]
        section = _first_section(content, revision)
        damage.flip_bit(content, section)
        damage.flip_bit(content, leaf.hash)
        found = self.check(self.owner, read_data=True)
        self.assertEqual([b.sha256 for b in found.found.damaged], [leaf.hash])
        report = self.check(self.owner, read_data=True, repair=True)
        self.assertTrue(report.ok, report.final)
        self.assertEqual(report.blobs_repaired, 2)
        for name, data in FILES.items():
            self.assertEqual(self.owner.read_file(name), data)

    def test_without_a_replica_the_damaged_files_are_named(self) -> None:
        name = "album/05.jpg"
        damage.flip_bit(self.owner.session.content, self.section(self.owner, name))
        report = self.check(self.owner, read_data=True, repair=True)
        self.assertFalse(report.ok)
        self.assertEqual(report.blobs_repaired, 0)
        self.assertEqual(self.damaged_names(report, final=True), [name])
        self.assertIn("no peer keeps our content", " ".join(report.notes))

    def test_a_replica_that_lacks_the_blob(self) -> None:
        self.keep_with_replica()
        name = "album/02.jpg"
        self.replica.lose_replica_of(self.owner)
        damage.flip_bit(self.owner.session.content, self.section(self.owner, name))
        report = self.check(self.owner, read_data=True, repair=True)
        self.assertFalse(report.ok)
        self.assertEqual(self.damaged_names(report, final=True), [name])
        self.assertTrue(report.notes, report)


class AutomaticRepairTests(RepairSwarmCase):
    def setUp(self) -> None:
        super().setUp()
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def test_a_corrupt_read_is_repaired_in_the_background(self) -> None:
        self.keep_with_replica()
        name = "album/09.jpg"
        content = self.owner.session.content
        damage.flip_bit(content, self.section(self.owner, name, 0))
        # The read that meets the damage fails, clearly, naming the file...
        with self.assertRaises(CorruptContent) as raised:
            self.owner.read_file(name)
        self.assertIn(name, str(raised.exception))
        # ...and queues one repair, however many reads meet it.
        with self.assertRaises(CorruptContent):
            self.owner.read_file(name)
        repair = self.owner.session.repair
        self.assertEqual(repair.pending, 1)
        self.swarm.advance(AUTO_REPAIR_POLL_SECONDS + 1)
        self.assertEqual(repair.pending, 0)
        self.assertEqual(self.owner.read_file(name), FILES[name])
        self.assertTrue(self.check(self.owner, read_data=True).ok)

    def test_serving_a_replica_a_corrupt_blob_queues_a_repair(self) -> None:
        content = self.owner.session.content
        sha256 = self.section(self.owner, "album/01.jpg")
        damage.flip_bit(content, sha256)
        with self.assertRaises(CorruptContent):
            content.read_blob(sha256)
        self.assertEqual(self.owner.session.repair.pending, 1)

    def test_without_a_replica_the_log_names_the_damaged_file(self) -> None:
        name = "album/04.jpg"
        damage.flip_bit(self.owner.session.content, self.section(self.owner, name))
        with self.assertRaises(CorruptContent):
            self.owner.read_file(name)
        self.swarm.advance(AUTO_REPAIR_POLL_SECONDS + 1)
        errors = self.unrepaired()
        self.assertEqual(len(errors), 1)
        self.assertIn(name, errors[0]["names"])
        # Tried once: later reads do not start a repair every few seconds.
        with self.assertRaises(CorruptContent):
            self.owner.read_file(name)
        self.swarm.advance(3 * AUTO_REPAIR_POLL_SECONDS)
        self.assertEqual(len(self.unrepaired()), 1)

    def unrepaired(self) -> list[dict[str, Any]]:
        return [
            event
            for event in self.logged
            if "could not be repaired" in str(event.get("log_format", ""))
        ]


def _first_section(content: Any, revision: Any) -> bytes:
    """The first section of the revision's table."""
    from barterbackup.tree import iter_entries

    for entry in iter_entries(revision.sections, damage._Source(content)):
        return entry.sha256
    raise AssertionError("empty table")
