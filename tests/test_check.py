"""Checking the content store and naming damaged files (recovery.check), and
putting good copies back (ContentStore.replace_blobs)."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content.engine import ContentStore, CorruptContent
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.progress import Progress
from barterbackup.recovery.check import (
    CHUNK,
    SECTION,
    SECTION_NODE,
    CheckOutcome,
    check_store,
    locate,
)
from barterbackup.store.packs import INDEX_ENTRY, INDEX_SUFFIX
from barterbackup.testing import damage
from barterbackup.testing.stores import open_content_store

KEYS = node_keys_from_master(bytes(range(4, 36)))


def files(count: int = 40, size: int = 30_000) -> dict[str, bytes]:
    return {f"dir{i % 4}/file{i:03d}.bin": os.urandom(size) for i in range(count)}


class CheckCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.node_dir = Path(self.mktemp())
        self.files = files()
        self.store = self.open()
        self.commit(self.store, self.files)

    def open(self) -> ContentStore:
        store = open_content_store(self.node_dir, KEYS)
        self.addCleanup(store.close)
        return store

    def reopen(self) -> ContentStore:
        self.store.close()
        self.store = self.open()
        return self.store

    @staticmethod
    def commit(store: ContentStore, contents: dict[str, bytes]) -> None:
        update = store.begin_update()
        for name, data in contents.items():
            writer = update.add_file(name)
            writer.write(data)
            writer.close()
        update.commit()

    def check(self, read_data: bool = False) -> CheckOutcome:
        return check_store(self.store, read_data)

    def damaged_names(self, outcome: CheckOutcome) -> list[tuple[int, str]]:
        return sorted((f.revision, f.name) for f in outcome.damaged_files)


class CheckTests(CheckCase):
    def test_a_sound_store(self) -> None:
        events: list[Progress] = []
        for read_data in (False, True):
            outcome = check_store(self.store, read_data, events.append)
            self.assertTrue(outcome.ok, outcome)
            self.assertEqual(outcome.revisions, [1])
            self.assertEqual(outcome.sections, self.store.current.section_count)  # type: ignore[union-attr]
            self.assertEqual(outcome.section_bytes, sum(map(len, self.files.values())))
            self.assertGreater(outcome.tree_nodes, 1)
            self.assertGreaterEqual(outcome.manifest_chunks, 1)
            self.assertEqual(outcome.damaged_files, [])
        # Only --read-data reads the sections' bytes.
        self.assertEqual(check_store(self.store).bytes_read, 0)
        self.assertEqual(
            check_store(self.store, True).bytes_read, sum(map(len, self.files.values()))
        )
        self.assertEqual(events[-1].phase, "done")

    def test_flipped_bits_are_found_by_read_data_only(self) -> None:
        name = "dir1/file005.bin"
        sha256 = damage.section_hashes(self.store, name)[0]
        damage.flip_bit(self.store, sha256, 77)
        # Present with the right length: the plain check cannot tell.
        self.assertTrue(self.check().ok)
        outcome = self.check(read_data=True)
        self.assertFalse(outcome.ok)
        [blob] = outcome.damaged
        self.assertEqual((blob.kind, blob.sha256, blob.revision), (SECTION, sha256, 1))
        self.assertIn("does not match its hash", blob.problem)
        self.assertEqual(self.damaged_names(outcome), [(1, name)])
        self.assertEqual(outcome.damaged_files_count, 1)

    def test_a_missing_section_is_found_by_the_plain_check(self) -> None:
        name = "dir2/file010.bin"
        sha256 = damage.section_hashes(self.store, name)[-1]
        self.assertEqual(
            damage.remove_from_index(self.store.packs.directory, sha256), 1
        )
        self.reopen()
        outcome = self.check()
        [blob] = outcome.damaged
        self.assertEqual(blob.sha256, sha256)
        self.assertIn("is missing", blob.problem)
        self.assertEqual(self.damaged_names(outcome), [(1, name)])

    def test_a_cut_pack_is_found_by_the_plain_check(self) -> None:
        name = "dir3/file039.bin"
        sha256 = damage.section_hashes(self.store, name)[-1]
        damage.truncate_pack_of(self.store, sha256)
        outcome = self.check()
        # The commit's tree nodes follow its sections in the pack: the cut
        # takes the roots with it, and with them every name.
        self.assertFalse(outcome.ok)
        self.assertEqual(
            {b.kind for b in outcome.damaged}, {SECTION_NODE, "manifest tree node"}
        )
        self.assertTrue(all("cannot be listed" in u for u in outcome.unlisted))

    def test_a_section_past_the_end_of_its_pack(self) -> None:
        name = "dir3/file039.bin"
        sha256 = damage.section_hashes(self.store, name)[-1]
        pack_id, offset, length = self.store.packs.extent(sha256)  # type: ignore[misc]
        outcome = check_store(_ShortPack(self.store, pack_id, offset + length - 1))
        self.assertEqual(self.damaged_names(outcome), [(1, name)])
        self.assertIn("past the end of pack", outcome.damaged[0].problem)

    def test_an_index_entry_claiming_a_huge_length_is_read_no_further(
        self,
    ) -> None:
        """Found by tests/test_bit_flips.py: read_data read the run the entry
        claimed (2**40 bytes) and raised MemoryError."""
        name = "dir1/file005.bin"
        sha256 = damage.section_hashes(self.store, name)[0]
        for index_path in self.store.packs.directory.glob("*.idx"):
            raw = bytearray(index_path.read_bytes())
            for position in range(0, len(raw), INDEX_ENTRY.size):
                entry_hash, offset, _ = INDEX_ENTRY.unpack_from(raw, position)
                if entry_hash == sha256:
                    INDEX_ENTRY.pack_into(raw, position, entry_hash, offset, 2**40)
                    index_path.write_bytes(bytes(raw))
        self.reopen()
        outcome = self.check(read_data=True)
        self.assertFalse(outcome.ok)
        self.assertIn(sha256, [b.sha256 for b in outcome.damaged])
        self.assertIn((1, name), self.damaged_names(outcome))

    def test_a_damaged_tree_node_names_every_file_under_it(self) -> None:
        revision = self.store.current
        assert revision is not None
        leaves = [
            ref for ref in damage.tree_nodes(revision, self.store) if ref.level == 0
        ]
        leaf = leaves[1]
        damage.flip_bit(self.store, leaf.hash, 9)
        outcome = self.check()
        [blob] = outcome.damaged
        self.assertEqual((blob.kind, blob.sha256), (SECTION_NODE, leaf.hash))
        self.assertEqual(
            (blob.first_index, blob.stop_index), (leaf.first_index, leaf.stop_index)
        )
        expected = []
        for chunk in self.store.manifest_chunks(revision):
            for placed in chunk.records:
                if (
                    placed.first_section < leaf.stop_index
                    and placed.stop_section > leaf.first_index
                ):
                    expected.append((1, placed.record.name))
        self.assertEqual(self.damaged_names(outcome), sorted(expected))
        self.assertTrue(expected)

    def test_a_damaged_manifest_chunk_names_its_range(self) -> None:
        revision = self.store.current
        assert revision is not None
        chunks = damage.chunk_hashes(revision, self.store)
        damage.flip_bit(self.store, chunks[0], 20)
        outcome = self.check()
        self.assertFalse(outcome.ok)
        self.assertEqual([b.kind for b in outcome.damaged], [CHUNK])
        self.assertEqual(outcome.damaged[0].sha256, chunks[0])
        [unlisted] = outcome.unlisted
        self.assertIn("from 'dir0/file000.bin'", unlisted)
        self.assertIn("cannot be listed", unlisted)

    def test_both_stored_revisions_are_checked(self) -> None:
        old_name = "dir0/file000.bin"
        old_section = damage.section_hashes(self.store, old_name)[0]
        self.commit(self.store, {old_name: b"rewritten"})
        outcome = self.check()
        self.assertEqual(outcome.revisions, [2, 1])
        self.assertTrue(outcome.ok)
        damage.flip_bit(self.store, old_section)
        outcome = self.check(read_data=True)
        # Only the old revision references that section.
        self.assertEqual(self.damaged_names(outcome), [(1, old_name)])

    def test_locate_names_the_files_of_given_blobs(self) -> None:
        name = "dir1/file001.bin"
        sha256 = damage.section_hashes(self.store, name)[0]
        located = locate(self.store, {sha256})
        self.assertEqual(self.damaged_names(located), [(1, name)])
        self.assertEqual(located.bytes_read, 0)


class ReplaceBlobsTests(CheckCase):
    def test_a_good_copy_replaces_the_damaged_one(self) -> None:
        name = "dir1/file005.bin"
        sha256 = damage.section_hashes(self.store, name)[0]
        good = self.store.read_blob(sha256)
        damage.flip_bit(self.store, sha256)
        with self.assertRaises(CorruptContent):
            b"".join(self.store.read_file(name))
        self.assertEqual(self.store.replace_blobs([(sha256, good)]), 1)
        self.assertEqual(b"".join(self.store.read_file(name)), self.files[name])
        self.assertTrue(self.check(read_data=True).ok)
        # The damaged copy is out of every index: one entry is left.
        self.assertEqual(self.index_entries(sha256), 1)
        # And it stays repaired after a restart.
        self.reopen()
        self.assertTrue(check_store(self.store, True).ok)
        self.assertEqual(b"".join(self.store.read_file(name)), self.files[name])

    def test_a_missing_blob_is_put_back(self) -> None:
        name = "dir2/file002.bin"
        sha256 = damage.section_hashes(self.store, name)[0]
        good = self.store.read_blob(sha256)
        damage.remove_from_index(self.store.packs.directory, sha256)
        self.reopen()
        self.assertFalse(self.check().ok)
        self.store.replace_blobs([(sha256, good)])
        self.assertTrue(self.check(read_data=True).ok)

    def test_bytes_that_do_not_match_are_refused(self) -> None:
        sha256 = damage.section_hashes(self.store, "dir0/file000.bin")[0]
        packs = sorted(self.store.packs.directory.iterdir())
        with self.assertRaises(ValueError):
            self.store.replace_blobs([(sha256, b"not it")])
        self.assertEqual(sorted(self.store.packs.directory.iterdir()), packs)

    def test_gc_keeps_the_repaired_copy(self) -> None:
        name = "dir1/file005.bin"
        sha256 = damage.section_hashes(self.store, name)[0]
        good = self.store.read_blob(sha256)
        damage.flip_bit(self.store, sha256)
        self.store.replace_blobs([(sha256, good)])
        self.store.gc()
        self.assertEqual(b"".join(self.store.read_file(name)), self.files[name])

    def index_entries(self, sha256: bytes) -> int:
        count = 0
        for path in self.store.packs.directory.glob(f"*{INDEX_SUFFIX}"):
            count += sum(
                e[0] == sha256 for e in INDEX_ENTRY.iter_unpack(path.read_bytes())
            )
        return count


class _ShortPack:
    """A store whose pack ``pack_id`` says it is ``size`` bytes long (a pack
    cut short, without losing the tree nodes that follow in a real one)."""

    def __init__(self, store: ContentStore, pack_id: str, size: int) -> None:
        self._store = store
        self._pack_id = pack_id
        self._size = size
        self.packs = self

    def __getattr__(self, name: str) -> object:
        store_attr = getattr(self._store, name, None)
        if store_attr is not None:
            return store_attr
        return getattr(self._store.packs, name)

    def pack_size(self, pack_id: str) -> int:
        if pack_id == self._pack_id:
            return self._size
        return self._store.packs.pack_size(pack_id)
