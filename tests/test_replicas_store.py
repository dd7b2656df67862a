"""The replica store: peers' blobs in packs, sealed records, quotas,
quarantine, and crash safety at every numbered write point."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.store.packs import PackWriter
from barterbackup.store.replicas import (
    DEFAULT_TOTAL_BYTES,
    BadBlob,
    NoContract,
    QuotaExceeded,
    ReplicaStore,
    StaleRevision,
    UnknownRevision,
    effective_total_bytes,
)
from barterbackup.testing.fakes import BlobDict, make_revision
from barterbackup.testing.link import keys_for_test
from barterbackup.tree.nodes import entry_hashes
from barterbackup.tree.read import iter_nodes

OWNER = keys_for_test(1)
OTHER = keys_for_test(2)
NAMES = bytes(range(32))
SEAL = bytes(range(32, 64))


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Budget:
    """What each owner's contract grants: ``default`` unless set."""

    def __init__(self, default: int = 10_000_000) -> None:
        self.default = default
        self.grants: dict[bytes, int] = {}

    def __call__(self, owner: bytes) -> int:
        return self.grants.get(owner, self.default)


def live(revision: object, blobs: BlobDict) -> list[bytes]:
    found = []
    for tree in (revision.sections, revision.manifest):  # type: ignore[attr-defined]
        for node in iter_nodes(tree, blobs):
            found.append(node.ref.hash)
            if node.ref.level == 0:
                found += entry_hashes(node.packed())  # type: ignore[union-attr]
    return found


class ReplicaStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.budget = Budget()
        self.store = self.open()
        self.blobs = BlobDict()

    def open(self) -> ReplicaStore:
        return ReplicaStore.open(self.root, self.budget, NAMES, SEAL)

    def revision(
        self, sections: list[bytes], number: int, key: object = OWNER
    ) -> object:
        return make_revision(key.signing_key, sections, number, self.blobs)  # type: ignore[attr-defined]

    def store_all(self, revision: object, owner: bytes = OWNER.onion_pubkey) -> None:
        """What a complete sync does: every blob, then finish."""
        blobs = [(h, self.blobs[h]) for h in live(revision, self.blobs)]
        self.store.store_blobs(owner, revision.content_id, blobs)  # type: ignore[attr-defined]
        self.store.finish(
            owner,
            revision.content_id,
            lambda: live(revision, self.blobs),  # type: ignore[attr-defined]
        )

    def test_stores_and_serves_a_revision(self) -> None:
        data = [os.urandom(1000) for _ in range(30)]
        revision = self.revision(data, 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)
        held = self.store.held(OWNER.onion_pubkey)
        assert held is not None
        self.assertIsNone(held.held)
        self.store_all(revision)
        held = self.store.held(OWNER.onion_pubkey)
        assert held is not None and held.held is not None
        self.assertEqual(held.held.content_id, revision.content_id)
        self.assertEqual(
            self.store.read_blob(OWNER.onion_pubkey, sha(data[7])), data[7]
        )
        self.assertTrue(
            self.store.holds_subtree(OWNER.onion_pubkey, revision.sections.hash)
        )
        # Every byte counts: blobs, their index entries, the record.
        self.assertGreater(held.stored_bytes, sum(len(d) for d in data) + 30 * 48)

    def test_reads_do_not_wait_for_a_blob_write_in_progress(self) -> None:
        """The reactor asks has_blob/read_blob while the worker thread writes
        a batch: the disk write runs outside the store's lock."""
        data = [os.urandom(1000) for _ in range(4)]
        old = self.revision(data[:2], 1)
        self.store.begin(OWNER.onion_pubkey, old.signed)
        self.store_all(old)
        new = self.revision(data, 2)
        self.store.begin(OWNER.onion_pubkey, new.signed)
        writing, release = threading.Event(), threading.Event()
        real_append = PackWriter.append

        def slow_append(writer: PackWriter, *args: object) -> int:
            writing.set()
            release.wait(30)
            return real_append(writer, *args)  # type: ignore[arg-type]

        self.patch(PackWriter, "append", slow_append)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                blobs = [(sha(d), d) for d in data[2:]]
                self.store.store_blobs(OWNER.onion_pubkey, new.content_id, blobs)  # type: ignore[attr-defined]
            except BaseException as error:
                errors.append(error)

        worker = threading.Thread(target=write)
        worker.start()
        try:
            self.assertTrue(writing.wait(30))
            answered = threading.Event()

            def read() -> None:
                self.store.has_blob(OWNER.onion_pubkey, sha(data[0]))
                self.store.read_blob(OWNER.onion_pubkey, sha(data[1]))
                self.store.held(OWNER.onion_pubkey)
                answered.set()

            reader = threading.Thread(target=read)
            reader.start()
            self.assertTrue(answered.wait(30), "a read waited for the write")
            reader.join()
        finally:
            release.set()
            worker.join()
        self.assertEqual(errors, [])
        self.assertTrue(self.store.has_blob(OWNER.onion_pubkey, sha(data[0])))

    def test_reads_do_not_wait_for_a_finish_walking_the_tree(self) -> None:
        """finish's tree walk, sweep and pack fsync run outside the store's
        lock: the reactor keeps answering for this and other owners."""
        data = [os.urandom(1000) for _ in range(4)]
        other = self.revision(data[:1], 1, key=OTHER)
        self.store.begin(OTHER.onion_pubkey, other.signed)  # type: ignore[attr-defined]
        self.store_all(other, owner=OTHER.onion_pubkey)
        revision = self.revision(data, 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)  # type: ignore[attr-defined]
        blobs = [(h, self.blobs[h]) for h in live(revision, self.blobs)]
        self.store.store_blobs(OWNER.onion_pubkey, revision.content_id, blobs)  # type: ignore[attr-defined]
        walking, release = threading.Event(), threading.Event()

        def slow_live() -> list[bytes]:
            walking.set()
            release.wait(30)
            return live(revision, self.blobs)

        errors: list[BaseException] = []

        def finish() -> None:
            try:
                self.store.finish(OWNER.onion_pubkey, revision.content_id, slow_live)  # type: ignore[attr-defined]
            except BaseException as error:
                errors.append(error)

        worker = threading.Thread(target=finish)
        worker.start()
        try:
            self.assertTrue(walking.wait(30))
            answered = threading.Event()

            def read() -> None:
                self.store.read_blob(OTHER.onion_pubkey, sha(data[0]))
                self.store.has_blob(OWNER.onion_pubkey, sha(data[0]))
                self.store.held(OWNER.onion_pubkey)
                answered.set()

            reader = threading.Thread(target=read)
            reader.start()
            self.assertTrue(answered.wait(30), "a read waited for finish")
            reader.join()
        finally:
            release.set()
            worker.join()
        self.assertEqual(errors, [])
        held = self.store.held(OWNER.onion_pubkey)
        assert held is not None and held.held is not None
        self.assertEqual(held.held.content_id, revision.content_id)  # type: ignore[attr-defined]

    def test_directory_names_and_records_reveal_nothing(self) -> None:
        revision = self.revision([b"secret-section"], 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)
        self.store_all(revision)
        [directory] = [p for p in self.root.iterdir()]
        self.assertNotIn(OWNER.onion_pubkey.hex(), directory.name)
        record = (directory / "record.sealed").read_bytes()
        self.assertNotIn(OWNER.onion_pubkey, record)
        self.assertNotIn(revision.signed[:40], record)

    def test_refuses_over_the_contract_size_writing_nothing(self) -> None:
        self.budget.grants[OWNER.onion_pubkey] = 5000
        revision = self.revision([os.urandom(4000), os.urandom(4000)], 1)
        with self.assertRaises(QuotaExceeded) as caught:
            self.store.begin(OWNER.onion_pubkey, revision.signed)
        self.assertIn("lets you store at most 5000", str(caught.exception))
        self.assertEqual(list(self.root.iterdir()), [])

    def test_refuses_an_owner_without_a_contract(self) -> None:
        # Only a contract grants storage: an owner granted nothing stores
        # nothing, however small its revision.
        self.budget.grants[OWNER.onion_pubkey] = 0
        revision = self.revision([b"tiny"], 1)
        with self.assertRaises(NoContract):
            self.store.begin(OWNER.onion_pubkey, revision.signed)
        self.assertEqual(list(self.root.iterdir()), [])
        self.assertEqual(self.store.granted_bytes(OWNER.onion_pubkey), 0)

    def test_every_write_rechecks_the_quota(self) -> None:
        # The root's claim is small, the blobs are not: writes stop at the cap.
        self.budget.default = 20_000
        revision = self.revision([os.urandom(100) for _ in range(10)], 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)
        with self.assertRaises(QuotaExceeded):
            self.store.store_blobs(
                OWNER.onion_pubkey,
                revision.content_id,
                [(sha(b), b) for b in [os.urandom(9000) for _ in range(3)]],
            )
        self.assertLessEqual(self.store.used_bytes, 20_000)

    def test_stale_and_conflicting_revisions_refused(self) -> None:
        newer = self.revision([b"b"], 2)
        self.store.begin(OWNER.onion_pubkey, newer.signed)
        with self.assertRaises(StaleRevision):
            self.store.begin(OWNER.onion_pubkey, self.revision([b"a"], 1).signed)
        with self.assertRaises(StaleRevision):
            self.store.begin(OWNER.onion_pubkey, self.revision([b"c"], 2).signed)

    def test_revision_of_another_owner_refused(self) -> None:
        from barterbackup.revisions import InvalidRevision

        foreign = self.revision([b"x"], 1, OTHER)
        with self.assertRaises(InvalidRevision):
            self.store.begin(OWNER.onion_pubkey, foreign.signed)

    def test_bad_blob_refused_and_not_written(self) -> None:
        revision = self.revision([b"good"], 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)
        with self.assertRaises(BadBlob):
            self.store.store_blobs(
                OWNER.onion_pubkey, revision.content_id, [(sha(b"good"), b"evil")]
            )
        self.store.checkpoint(OWNER.onion_pubkey)
        self.assertFalse(self.store.has_blob(OWNER.onion_pubkey, sha(b"good")))

    def test_blobs_only_for_the_pending_revision(self) -> None:
        with self.assertRaises(UnknownRevision):
            self.store.store_blobs(
                OWNER.onion_pubkey, os.urandom(32), [(sha(b"a"), b"a")]
            )

    def test_finish_drops_what_the_new_revision_does_not_need(self) -> None:
        old = [os.urandom(1000) for _ in range(20)]
        first = self.revision(old, 1)
        self.store.begin(OWNER.onion_pubkey, first.signed)
        self.store_all(first)
        new = old[:10] + [os.urandom(1000) for _ in range(5)]
        second = self.revision(new, 2)
        self.store.begin(OWNER.onion_pubkey, second.signed)
        self.store_all(second)
        for data in old[10:]:
            self.assertFalse(self.store.has_blob(OWNER.onion_pubkey, sha(data)))
        for data in new:
            self.assertTrue(self.store.has_blob(OWNER.onion_pubkey, sha(data)))

    def test_fetched_blobs_survive_a_reopen_but_are_not_whole_subtrees(self) -> None:
        revision = self.revision([os.urandom(500) for _ in range(100)], 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)
        root = revision.sections.hash
        self.store.store_blobs(
            OWNER.onion_pubkey, revision.content_id, [(root, self.blobs[root])]
        )
        self.store.checkpoint(OWNER.onion_pubkey)
        self.store.close()
        self.store = self.open()
        self.assertTrue(self.store.has_blob(OWNER.onion_pubkey, root))
        # Its children are not all there: a sync must not skip this subtree.
        self.assertFalse(self.store.holds_subtree(OWNER.onion_pubkey, root))
        held = self.store.held(OWNER.onion_pubkey)
        assert held is not None and held.pending is not None
        self.assertEqual(held.pending.content_id, revision.content_id)

    def test_a_bad_directory_is_quarantined_and_the_rest_opens(self) -> None:
        revision = self.revision([b"kept"], 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)
        self.store_all(revision)
        self.store.close()
        (self.root / "stray").mkdir()
        (self.root / "not-a-directory").write_bytes(b"x")
        reopened = self.open()
        self.assertEqual(
            sorted(q.path.name.split(".")[0] for q in reopened.quarantined),
            ["not-a-directory", "stray"],
        )
        self.assertEqual(reopened.read_blob(OWNER.onion_pubkey, sha(b"kept")), b"kept")

    def test_the_same_name_quarantined_twice_keeps_both(self) -> None:
        """Two stray entries of one name (in one second, or across restarts)
        do not collide in quarantine: the second no longer failed the open."""
        self.store.close()
        for content in (b"first", b"second"):
            (self.root / "stray").mkdir()
            (self.root / "stray" / "f").write_bytes(content)
            reopened = self.open()
            reopened.close()
        kept = sorted((self.root / "quarantine").iterdir())
        self.assertEqual([p.name for p in kept], ["stray.1", "stray.2"])
        self.assertEqual([(p / "f").read_bytes() for p in kept], [b"first", b"second"])

    def test_a_tampered_record_is_quarantined(self) -> None:
        revision = self.revision([b"x"], 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)
        self.store_all(revision)
        self.store.close()
        [directory] = [p for p in self.root.iterdir()]
        record = directory / "record.sealed"
        data = bytearray(record.read_bytes())
        data[20] ^= 1
        record.write_bytes(bytes(data))
        reopened = self.open()
        [bad] = reopened.quarantined
        self.assertIn("failed authentication", bad.reason)
        self.assertIsNone(reopened.held(OWNER.onion_pubkey))
        self.assertTrue((self.root / "quarantine").is_dir())

    def test_a_record_moved_to_another_owners_directory_is_refused(self) -> None:
        a = self.revision([b"a"], 1)
        self.store.begin(OWNER.onion_pubkey, a.signed)
        self.store_all(a)
        b = self.revision([b"b"], 1, OTHER)
        self.store.begin(OTHER.onion_pubkey, b.signed)
        self.store_all(b, OTHER.onion_pubkey)
        self.store.close()
        first, second = sorted(self.root.iterdir())
        (second / "record.sealed").write_bytes((first / "record.sealed").read_bytes())
        reopened = self.open()
        self.assertEqual(len(reopened.quarantined), 1)

    def test_corrupted_blob_on_disk_not_served(self) -> None:
        revision = self.revision([b"A" * 5000], 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)
        self.store_all(revision)
        self.store.close()
        [directory] = [p for p in self.root.iterdir()]
        for pack in (directory / "packs").glob("*.pack"):
            data = bytearray(pack.read_bytes())
            at = data.find(b"A" * 100)
            if at >= 0:
                data[at] ^= 1
                pack.write_bytes(bytes(data))
        reopened = self.open()
        with self.assertRaises(BadBlob):
            reopened.read_blob(OWNER.onion_pubkey, sha(b"A" * 5000))

    def test_delete_removes_everything(self) -> None:
        revision = self.revision([b"x" * 100], 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)
        self.store_all(revision)
        self.store.delete(OWNER.onion_pubkey)
        self.assertIsNone(self.store.held(OWNER.onion_pubkey))
        self.assertEqual(list(self.root.iterdir()), [])
        self.assertEqual(self.store.used_bytes, 0)

    def test_queries_do_not_wait_for_a_delete_to_remove_files(self) -> None:
        """Deleting a large replica removes its files outside the store's
        lock: another owner's queries (the reactor's), and the same owner
        storing again, go on meanwhile."""
        kept = self.revision([b"k" * 100], 1, OTHER)
        self.store.begin(OTHER.onion_pubkey, kept.signed)
        self.store_all(kept, OTHER.onion_pubkey)
        doomed = self.revision([b"d" * 100], 1)
        self.store.begin(OWNER.onion_pubkey, doomed.signed)
        self.store_all(doomed)
        removing, release = threading.Event(), threading.Event()
        real_rmtree = shutil.rmtree

        def slow_rmtree(path: object, *args: object, **kwargs: object) -> None:
            removing.set()
            release.wait(30)
            real_rmtree(path, *args, **kwargs)  # type: ignore[arg-type]

        self.patch(shutil, "rmtree", slow_rmtree)
        deleting = threading.Thread(
            target=self.store.delete, args=(OWNER.onion_pubkey,)
        )
        deleting.start()
        try:
            self.assertTrue(removing.wait(30))
            answered = threading.Event()

            def query() -> None:
                self.store.held(OTHER.onion_pubkey)
                self.store.read_blob(OTHER.onion_pubkey, sha(b"k" * 100))
                self.assertIsNone(self.store.held(OWNER.onion_pubkey))
                answered.set()

            querying = threading.Thread(target=query)
            querying.start()
            self.assertTrue(answered.wait(30), "a query waited for the delete")
            querying.join()
            again = self.revision([b"a" * 100], 1)
            self.store.begin(OWNER.onion_pubkey, again.signed)
            self.store_all(again)
        finally:
            release.set()
            deleting.join()
        self.assertEqual(
            self.store.read_blob(OWNER.onion_pubkey, sha(b"a" * 100)), b"a" * 100
        )
        reopened = self.open()
        self.assertEqual(reopened.quarantined, [])
        held = reopened.held(OWNER.onion_pubkey)
        assert held is not None and held.held is not None
        self.assertEqual(held.held.content_id, again.content_id)  # type: ignore[attr-defined]

    def test_a_delete_cut_short_is_finished_at_open(self) -> None:
        """A crash after the rename (the commit point) and before the files
        are gone: the next open removes them; nothing is quarantined."""
        revision = self.revision([b"x" * 100], 1)
        self.store.begin(OWNER.onion_pubkey, revision.signed)
        self.store_all(revision)

        def crash(path: object, *args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt("killed while removing")

        crashing = self.patch(shutil, "rmtree", crash)
        with self.assertRaises(KeyboardInterrupt):
            self.store.delete(OWNER.onion_pubkey)
        [left] = self.root.iterdir()
        self.assertTrue(left.name.startswith(".deleting-"), left)
        crashing.restore()
        reopened = self.open()
        self.assertIsNone(reopened.held(OWNER.onion_pubkey))
        self.assertEqual(reopened.quarantined, [])
        self.assertEqual(list(self.root.iterdir()), [])

    def test_default_total(self) -> None:
        self.assertEqual(
            effective_total_bytes(storedpb_pb2.StorageConfig()), DEFAULT_TOTAL_BYTES
        )
        self.assertEqual(
            effective_total_bytes(storedpb_pb2.StorageConfig(total_bytes=5)), 5
        )


# The child run for each crash point: store revision 1 (no crash armed),
# reopen with the crash points armed, store revision 2: the armed point
# kills the child (SIGKILL) in the middle of it.
CHILD = """
import sys
from pathlib import Path
from barterbackup._proto import storedpb_pb2
from barterbackup.store.replicas import ReplicaStore
from barterbackup.store.crash import crash_point
from tests.test_replicas_store import NAMES, SEAL, OWNER, live
from barterbackup.store.packs import PackWriter
from barterbackup.testing.fakes import BlobDict, make_revision
root, install_every = Path(sys.argv[1]), int(sys.argv[2])
def budget(owner):
    return 10**9
blobs = BlobDict()
def sync(store, sections, number):
    revision = make_revision(OWNER.signing_key, sections, number, blobs)
    store.begin(OWNER.onion_pubkey, revision.signed)
    for h in live(revision, blobs):  # one by one: installs fall mid-sync
        store.store_blobs(OWNER.onion_pubkey, revision.content_id, [(h, blobs[h])])
    store.finish(OWNER.onion_pubkey, revision.content_id, lambda: live(revision, blobs))
store = ReplicaStore.open(root, budget, NAMES, SEAL)
sync(store, [bytes([1]) * 3000, bytes([2]) * 3000], 1)
store.close()
store = ReplicaStore.open(
    root, budget, NAMES, SEAL, crash_point=crash_point,
    install_every_bytes=install_every,
)
sync(store, [bytes([1]) * 3000, bytes([3]) * 3000, bytes([4]) * 3000], 2)
"""

FIRST = [bytes([1]) * 3000, bytes([2]) * 3000]
SECOND = [bytes([1]) * 3000, bytes([3]) * 3000, bytes([4]) * 3000]


class CrashTests(SynchronousTestCase):
    """kill -9 at every numbered write point of the replica store."""

    def run_child(self, root: Path, crash_at: int) -> int:
        env = dict(os.environ, BARTERBACKUP_CRASH_AT=str(crash_at))
        return subprocess.run(
            # Mid-sync installs only for their own points (101-103), so the
            # others find a pack still open when the sync finishes.
            [
                sys.executable,
                "-c",
                CHILD,
                str(root),
                "4000" if crash_at < 104 else str(10**9),
            ],
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            timeout=120,
        ).returncode

    def test_every_crash_point_leaves_the_last_complete_revision(self) -> None:
        # 101-103: a pack installed mid-sync; 104-106: the last pack
        # installed at finish; 107: the record written (commit point); 108:
        # what only the old revision used dropped.
        for point in range(101, 109):
            # Absolute: the child runs in the repository root.
            root = Path(self.mktemp()).resolve()
            code = self.run_child(root, point)
            self.assertEqual(code, -9, f"crash point {point} was not reached")
            store = ReplicaStore.open(root, Budget(), NAMES, SEAL)
            self.assertEqual(store.quarantined, [])
            held = store.held(OWNER.onion_pubkey)
            assert held is not None and held.held is not None
            number = 2 if point >= 107 else 1
            self.assertEqual(held.held.number, number, f"crash point {point}")
            for section in SECOND if number == 2 else FIRST:
                self.assertEqual(
                    store.read_blob(OWNER.onion_pubkey, sha(section)), section
                )
            if number == 1:
                self.assertEqual(held.pending.number, 2)
            leftovers = [p for p in root.rglob("*") if ".tmp" in p.name]
            self.assertEqual(leftovers, [], f"crash point {point}")
            store.close()
