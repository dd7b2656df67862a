"""ReplicaStore: quotas, deltas, crash-safe finish, resume and tampering."""

from __future__ import annotations

import os
from pathlib import Path

import nacl.signing
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.revisions import InvalidRevision
from barterbackup.store.replicas import (
    CURRENT_RECORD,
    DEFAULT_TOTAL_BYTES,
    PENDING_RECORD,
    SECTIONS_DIR,
    BadSection,
    IncompleteRevision,
    QuotaExceeded,
    ReplicaRecordError,
    ReplicaStore,
    StaleRevision,
    UnknownRevision,
    effective_budget,
)
from barterbackup.testing.fakes import make_revision


def sections(count: int, size: int = 1000) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


class Budget:
    def __init__(self, total: int, per_peer: int) -> None:
        self.config = storedpb_pb2.StorageConfig(
            total_bytes=total, per_peer_bytes=per_peer
        )

    def __call__(self) -> storedpb_pb2.StorageConfig:
        return self.config


class ReplicaStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "replicas"
        self.budget = Budget(total=100_000, per_peer=50_000)
        self.store = ReplicaStore.open(self.root, self.budget)
        self.key = nacl.signing.SigningKey.generate()
        self.owner = bytes(self.key.verify_key)

    def sync(self, store: ReplicaStore, data: list[bytes], number: int) -> None:
        revision = make_revision(self.key, data, number)
        plan = store.begin(self.owner, revision.signed)
        for index, _ref in plan.missing:
            store.store_section(self.owner, revision.content_id, index, data[index])
        store.finish(self.owner, revision.content_id)

    def disk_files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def test_accepts_within_budget(self) -> None:
        data = sections(10)
        revision = make_revision(self.key, data, 1)
        plan = self.store.begin(self.owner, revision.signed)
        self.assertEqual([i for i, _ in plan.missing], list(range(10)))
        self.assertEqual((plan.bytes_total, plan.bytes_done), (10_000, 0))
        for index, _ in plan.missing:
            self.store.store_section(
                self.owner, revision.content_id, index, data[index]
            )
        held = self.store.finish(self.owner, revision.content_id)
        self.assertEqual(
            (held.number, held.complete, held.stored_bytes), (1, True, 10_000)
        )
        self.assertEqual(self.store.usage(), {self.owner: 10_000})
        self.assertEqual(
            self.store.read_section(self.owner, revision.content_id, 3), data[3]
        )

    def test_refuses_over_per_peer_quota_writing_nothing(self) -> None:
        revision = make_revision(self.key, sections(51), 1)
        error = self.assertRaises(
            QuotaExceeded, self.store.begin, self.owner, revision.signed
        )
        self.assertIn("51000", str(error))
        self.assertIn("50000", str(error))
        self.assertEqual(self.disk_files(), [])
        self.assertIsNone(self.store.held(self.owner))

    def test_refuses_over_total_quota_writing_nothing(self) -> None:
        other_key = nacl.signing.SigningKey.generate()
        other = bytes(other_key.verify_key)
        for key in (other_key,):
            data = sections(45)
            revision = make_revision(key, data, 1)
            self.store.begin(other, revision.signed)
            for index, _ in enumerate(data):
                self.store.store_section(other, revision.content_id, index, data[index])
            self.store.finish(other, revision.content_id)
        self.budget.config.total_bytes = 80_000
        before = self.disk_files()
        revision = make_revision(self.key, sections(40), 1)
        error = self.assertRaises(
            QuotaExceeded, self.store.begin, self.owner, revision.signed
        )
        self.assertIn("40000", str(error))
        self.assertIn("35000", str(error))
        self.assertEqual(self.disk_files(), before)

    def test_store_section_rechecks_quota(self) -> None:
        data = sections(10)
        revision = make_revision(self.key, data, 1)
        self.store.begin(self.owner, revision.signed)
        self.budget.config.per_peer_bytes = 2_500
        self.store.store_section(self.owner, revision.content_id, 0, data[0])
        self.store.store_section(self.owner, revision.content_id, 1, data[1])
        self.assertRaises(
            QuotaExceeded,
            self.store.store_section,
            self.owner,
            revision.content_id,
            2,
            data[2],
        )
        self.assertEqual(self.store.used_bytes, 2_000)

    def test_stale_revision_refused(self) -> None:
        self.sync(self.store, sections(3), 5)
        older = make_revision(self.key, sections(3), 4)
        self.assertRaises(StaleRevision, self.store.begin, self.owner, older.signed)
        fork = make_revision(self.key, sections(3), 5)
        self.assertRaises(StaleRevision, self.store.begin, self.owner, fork.signed)

    def test_same_complete_revision_is_nothing_to_do(self) -> None:
        data = sections(3)
        self.sync(self.store, data, 1)
        plan = self.store.begin(self.owner, make_revision(self.key, data, 1).signed)
        self.assertEqual(plan.missing, [])
        self.assertEqual(plan.bytes_done, plan.bytes_total)

    def test_revision_of_another_owner_refused(self) -> None:
        stranger = nacl.signing.SigningKey.generate()
        revision = make_revision(stranger, sections(2), 1)
        self.assertRaises(
            InvalidRevision, self.store.begin, self.owner, revision.signed
        )

    def test_bad_section_refused_and_not_written(self) -> None:
        data = sections(2)
        revision = make_revision(self.key, data, 1)
        self.store.begin(self.owner, revision.signed)
        flipped = bytes([data[0][0] ^ 1]) + data[0][1:]
        self.assertRaises(
            BadSection,
            self.store.store_section,
            self.owner,
            revision.content_id,
            0,
            flipped,
        )
        self.assertEqual(self.store.used_bytes, 0)
        self.assertEqual(
            list((self.root / self.owner.hex() / SECTIONS_DIR).iterdir()), []
        )
        self.assertRaises(
            IncompleteRevision, self.store.finish, self.owner, revision.content_id
        )

    def test_delta_plan_and_finish_drops_old_only_sections(self) -> None:
        old = sections(10)
        self.sync(self.store, old, 1)
        new = list(old)
        new[2], new[7] = os.urandom(1000), os.urandom(1500)
        revision = make_revision(self.key, new, 2)
        plan = self.store.begin(self.owner, revision.signed)
        self.assertEqual([i for i, _ in plan.missing], [2, 7])
        self.assertEqual(plan.bytes_done, 8_000)
        self.assertEqual(len(plan.reference), 10)
        for index, _ in plan.missing:
            self.store.store_section(self.owner, revision.content_id, index, new[index])
        # Until finish, both revisions are on disk and the old is readable.
        self.assertEqual(self.store.used_bytes, 12_500)
        old_id = make_revision(self.key, old, 1).content_id
        self.assertEqual(self.store.read_section(self.owner, old_id, 2), old[2])
        held = self.store.finish(self.owner, revision.content_id)
        self.assertEqual((held.number, held.stored_bytes), (2, 10_500))
        self.assertEqual(len(self.disk_files()), 11)  # 10 sections + current.pb
        self.assertRaises(
            UnknownRevision, self.store.read_section, self.owner, old_id, 2
        )

    def test_quota_counts_union_of_old_and_new(self) -> None:
        self.budget.config.per_peer_bytes = 15_000
        old = sections(10)
        self.sync(self.store, old, 1)
        # 10 kB new content shares nothing with the old: 20 kB during sync.
        revision = make_revision(self.key, sections(10), 2)
        error = self.assertRaises(
            QuotaExceeded, self.store.begin, self.owner, revision.signed
        )
        self.assertIn("20000", str(error))
        shared = make_revision(self.key, old[:6] + sections(4), 2)
        plan = self.store.begin(self.owner, shared.signed)
        self.assertEqual(len(plan.missing), 4)

    def test_resume_after_partial_store_and_reopen(self) -> None:
        old = sections(4)
        self.sync(self.store, old, 1)
        new = old[:2] + sections(6)
        revision = make_revision(self.key, new, 2)
        plan = self.store.begin(self.owner, revision.signed)
        for index, _ in plan.missing[:3]:
            self.store.store_section(self.owner, revision.content_id, index, new[index])
        # A crash here: reopen from disk.
        reopened = ReplicaStore.open(self.root, self.budget)
        held = reopened.held(self.owner)
        assert held is not None and held.readable is not None
        self.assertEqual(
            (held.number, held.complete, held.readable.number), (2, False, 1)
        )
        self.assertEqual(reopened.used_bytes, 7_000)
        old_id = make_revision(self.key, old, 1).content_id
        self.assertEqual(reopened.read_section(self.owner, old_id, 3), old[3])
        resumed = reopened.begin(self.owner, revision.signed)
        self.assertEqual([i for i, _ in resumed.missing], [5, 6, 7])
        for index, _ in resumed.missing:
            reopened.store_section(self.owner, revision.content_id, index, new[index])
        self.assertEqual(
            reopened.finish(self.owner, revision.content_id).stored_bytes, 8_000
        )

    def test_newer_revision_replaces_unfinished_one(self) -> None:
        data = sections(4)
        revision = make_revision(self.key, data, 1)
        self.store.begin(self.owner, revision.signed)
        self.store.store_section(self.owner, revision.content_id, 0, data[0])
        self.store.store_section(self.owner, revision.content_id, 1, data[1])
        newer_data = data[:1] + sections(2)
        newer = make_revision(self.key, newer_data, 2)
        plan = self.store.begin(self.owner, newer.signed)
        self.assertEqual([i for i, _ in plan.missing], [1, 2])
        self.assertEqual(self.store.used_bytes, 1_000)

    def test_crash_after_current_written_is_repaired(self) -> None:
        old = sections(3)
        self.sync(self.store, old, 1)
        new = old[:1] + sections(2)
        revision = make_revision(self.key, new, 2)
        plan = self.store.begin(self.owner, revision.signed)
        for index, _ in plan.missing:
            self.store.store_section(self.owner, revision.content_id, index, new[index])
        owner_dir = self.root / self.owner.hex()
        pending = (owner_dir / PENDING_RECORD).read_bytes()
        self.store.finish(self.owner, revision.content_id)
        # Simulate a crash after current.pb was replaced but before the old
        # pending record and old-only sections went.
        (owner_dir / PENDING_RECORD).write_bytes(pending)
        (owner_dir / SECTIONS_DIR / os.urandom(32).hex()).write_bytes(b"x" * 10)
        (owner_dir / "leftover.tmp-bb").write_bytes(b"partial")
        reopened = ReplicaStore.open(self.root, self.budget)
        held = reopened.held(self.owner)
        assert held is not None
        self.assertEqual(
            (held.number, held.complete, held.stored_bytes), (2, True, 3_000)
        )
        self.assertFalse((owner_dir / PENDING_RECORD).exists())
        self.assertFalse((owner_dir / "leftover.tmp-bb").exists())

    def test_tampered_record_is_a_clear_error(self) -> None:
        self.sync(self.store, sections(2), 1)
        path = self.root / self.owner.hex() / CURRENT_RECORD
        record = storedpb_pb2.ReplicaRecord.FromString(path.read_bytes())
        signed = storedpb_pb2.SignedRevision.FromString(record.signed_revision)
        revision = storedpb_pb2.ContentRevision.FromString(signed.revision)
        revision.number = 99
        signed.revision = revision.SerializeToString()
        record.signed_revision = signed.SerializeToString()
        path.write_bytes(record.SerializeToString())
        error = self.assertRaises(
            ReplicaRecordError, ReplicaStore.open, self.root, self.budget
        )
        self.assertIn("tampered", str(error))
        path.write_bytes(b"\xff\xff garbage")
        error = self.assertRaises(
            ReplicaRecordError, ReplicaStore.open, self.root, self.budget
        )
        self.assertIn("not a valid record", str(error))

    def test_complete_record_with_missing_sections_is_a_clear_error(self) -> None:
        self.sync(self.store, sections(2), 1)
        section_dir = self.root / self.owner.hex() / SECTIONS_DIR
        next(section_dir.iterdir()).unlink()
        error = self.assertRaises(
            ReplicaRecordError, ReplicaStore.open, self.root, self.budget
        )
        self.assertIn("1 of its sections are missing", str(error))

    def test_corrupted_section_on_disk_not_served(self) -> None:
        data = sections(2)
        self.sync(self.store, data, 1)
        content_id = make_revision(self.key, data, 1).content_id
        section_dir = self.root / self.owner.hex() / SECTIONS_DIR
        for path in section_dir.iterdir():
            path.write_bytes(b"\x00" * 1000)
        self.assertRaises(
            BadSection, self.store.read_section, self.owner, content_id, 0
        )

    def test_delete_removes_everything(self) -> None:
        self.sync(self.store, sections(3), 1)
        self.store.delete(self.owner)
        self.assertIsNone(self.store.held(self.owner))
        self.assertEqual(self.disk_files(), [])
        self.assertEqual(self.store.used_bytes, 0)

    def test_default_budget(self) -> None:
        self.assertEqual(
            effective_budget(storedpb_pb2.StorageConfig()),
            (DEFAULT_TOTAL_BYTES, DEFAULT_TOTAL_BYTES),
        )
        self.assertEqual(
            effective_budget(
                storedpb_pb2.StorageConfig(total_bytes=10, per_peer_bytes=50)
            ),
            (10, 10),
        )

    def test_torn_pending_section_is_dropped_on_reopen(self) -> None:
        data = sections(3)
        revision = make_revision(self.key, data, 1)
        self.store.begin(self.owner, revision.signed)
        self.store.store_section(self.owner, revision.content_id, 0, data[0])
        self.store.store_section(self.owner, revision.content_id, 1, data[1])
        # A crash before the flush: one section's bytes never reached disk.
        ref = revision.revision.sections[1]
        torn = self.root / self.owner.hex() / SECTIONS_DIR / ref.sha256.hex()
        torn.write_bytes(bytes(1000))
        reopened = ReplicaStore.open(self.root, self.budget)
        self.assertEqual(reopened.used_bytes, 1000)
        plan = reopened.begin(self.owner, revision.signed)
        self.assertEqual([i for i, _ in plan.missing], [1, 2])
