"""Tampered packs, tree nodes, manifest chunks, revision files, name indexes,
pointers and Metadata: clear errors, never a wrong byte."""

from __future__ import annotations

import random
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content.engine import ContentStore, CorruptContent
from barterbackup.content.nameindex import name_index_key_of, read_name_index
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.store.metadata import MetadataError
from barterbackup.store.packs import INDEX_ENTRY
from barterbackup.testing.stores import open_content_store
from barterbackup.tree import iter_entries, iter_nodes

KEYS = node_keys_from_master(bytes(range(3, 35)))
OTHER_KEYS = node_keys_from_master(bytes(range(4, 36)))
DATA = random.Random(5).randbytes(512_000)  # several sections


def flip_bit(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


class TamperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node_dir = Path(self.mktemp())
        store = open_content_store(self.node_dir, KEYS)
        update = store.begin_update()
        for name in ("victim.bin", "other.bin"):
            writer = update.add_file(name)
            writer.write(DATA if name == "victim.bin" else DATA[::-1])
            writer.close()
        update.commit()
        store.close()
        self.content = self.node_dir / "content"

    def reopen(self) -> ContentStore:
        store = open_content_store(self.node_dir, KEYS)
        self.addCleanup(store.close)
        return store

    def blob_location(self, sha256: bytes) -> tuple[Path, int]:
        for index_path in self.content.glob("packs/*.idx"):
            for entry_hash, offset, _ in INDEX_ENTRY.iter_unpack(
                index_path.read_bytes()
            ):
                if entry_hash == sha256:
                    return index_path.with_suffix(".pack"), offset
        raise AssertionError("blob not found")

    def section_hash(self, store: ContentStore, name: str, index: int) -> bytes:
        assert store.current is not None
        record = store.file_entry(name)
        first = sorted(["other.bin", "victim.bin"]).index(name)
        start = 0 if first == 0 else store.file_entry("other.bin").section_count
        entries = list(iter_entries(store.current.sections, store._source))
        self.assertEqual(
            sum(e.length for e in entries[start : start + record.section_count]),
            record.size,
        )
        return entries[start + index].sha256

    def test_flipped_section_bit(self) -> None:
        store = self.reopen()
        bad = self.section_hash(store, "victim.bin", 2)
        pack, offset = self.blob_location(bad)
        flip_bit(pack, offset + 100)
        chunks = []
        with self.assertRaises(CorruptContent) as caught:
            for chunk in store.read_file("victim.bin"):
                chunks.append(chunk)
        self.assertIn("victim.bin", str(caught.exception))
        self.assertIn("section 2 of the file", str(caught.exception))
        # What was released before the bad section is exactly right.
        self.assertEqual(len(chunks), 2)
        self.assertTrue(DATA.startswith(b"".join(chunks)))
        # The other file is unaffected; the bad ciphertext is not served.
        self.assertEqual(b"".join(store.read_file("other.bin")), DATA[::-1])
        self.assertRaises(CorruptContent, store.read_blob, bad)

    def test_truncated_pack(self) -> None:
        store = self.reopen()
        pack, _ = self.blob_location(self.section_hash(store, "victim.bin", 0))
        pack.write_bytes(pack.read_bytes()[:1000])
        with self.assertRaises(CorruptContent) as caught:
            b"".join(store.read_file("victim.bin"))
        self.assertIn("victim.bin", str(caught.exception))

    def test_flipped_tree_node_bit(self) -> None:
        store = self.reopen()
        assert store.current is not None
        for node in iter_nodes(store.current.sections, store._source):
            pack, offset = self.blob_location(node.ref.hash)
            flip_bit(pack, offset + len(node.data) - 5)
        with self.assertRaises(CorruptContent) as caught:
            b"".join(store.read_file("victim.bin"))
        self.assertIn("victim.bin", str(caught.exception))
        self.assertIn("section tree", str(caught.exception))
        self.assertRaises(CorruptContent, store.gc)

    def test_flipped_manifest_chunk_bit(self) -> None:
        store = self.reopen()
        assert store.current is not None
        for entry in iter_entries(store.current.manifest, store._source):
            pack, offset = self.blob_location(entry.sha256)
            flip_bit(pack, offset + 20)
        with self.assertRaises(CorruptContent) as caught:
            list(store.list_files())
        self.assertIn("manifest of revision 1", str(caught.exception))
        self.assertRaises(CorruptContent, store.read_file, "victim.bin")
        self.assertRaises(CorruptContent, store.file_entry, "other.bin")
        update = store.begin_update()
        with update.add_file("new") as writer:
            writer.write(b"n")
        self.assertRaises(CorruptContent, update.commit)
        assert store.current is not None
        self.assertEqual(store.current.number, 1)

    def test_flipped_revision_bit(self) -> None:
        revision_file = next(self.content.glob("revisions/*.rev"))
        for offset in (5, 40, len(revision_file.read_bytes()) - 3):
            original = revision_file.read_bytes()
            flip_bit(revision_file, offset)
            with self.assertRaises(CorruptContent) as caught:
                open_content_store(self.node_dir, KEYS)
            self.assertIn(str(revision_file), str(caught.exception))
            revision_file.write_bytes(original)
        self.assertEqual(b"".join(self.reopen().read_file("victim.bin")), DATA)

    def test_damaged_name_index_is_rebuilt(self) -> None:
        store = self.reopen()
        update = store.begin_update()
        with update.add_file("third") as writer:
            writer.write(b"3")
        current = update.commit().revision
        store.close()
        first_names, names_file = sorted(self.content.glob("revisions/*.names"))
        for damage in ("flip", "delete", "another revision's"):
            if damage == "flip":
                flip_bit(names_file, 30)
            elif damage == "delete":
                names_file.unlink()
            else:
                names_file.write_bytes(first_names.read_bytes())
            store = self.reopen()
            self.assertEqual(store.file_count, 3, damage)
            self.assertEqual(b"".join(store.read_file("victim.bin")), DATA)
            store.close()
            # Rewritten: it opens as this revision's index again.
            names = read_name_index(
                names_file, name_index_key_of(KEYS), current.content_id
            )
            self.assertEqual(names.file_count, 3)

    def test_foreign_keys_refused(self) -> None:
        with self.assertRaises(CorruptContent) as caught:
            open_content_store(self.node_dir, OTHER_KEYS)
        self.assertIn("another node", str(caught.exception))

    def test_bad_current_pointer(self) -> None:
        (self.content / "current").write_bytes(b"1; rm -rf")
        self.assertRaises(CorruptContent, open_content_store, self.node_dir, KEYS)

    def test_flipped_metadata_bit(self) -> None:
        metadata = self.node_dir / "metadata.sealed"
        flip_bit(metadata, 20)
        with self.assertRaises(MetadataError) as caught:
            open_content_store(self.node_dir, KEYS)
        self.assertIn(str(metadata), str(caught.exception))

    def test_rolled_back_pointer_detected(self) -> None:
        store = self.reopen()
        update = store.begin_update()
        update.remove_file("other.bin")
        update.commit()
        store.close()
        (self.content / "current").write_bytes(b"1")
        with self.assertRaises(CorruptContent) as caught:
            open_content_store(self.node_dir, KEYS)
        self.assertIn("metadata records revision 2", str(caught.exception))

    def test_nothing_plain_on_disk(self) -> None:
        marker = DATA[1000:1100]
        for path in self.node_dir.rglob("*"):
            if path.is_file():
                raw = path.read_bytes()
                self.assertNotIn(marker, raw)
                self.assertNotIn(b"victim.bin", raw)

    def test_nothing_plain_in_an_open_update_journal(self) -> None:
        store = self.reopen()
        update = store.begin_update()
        for number in range(50):
            with update.add_file(f"secret-name-{number}.txt") as writer:
                writer.write(DATA[:1000])
        update.journal._write_run()  # force a run onto disk
        journal_files = list(self.content.glob(".update-*"))
        self.assertEqual(len(journal_files), 2)
        for path in journal_files:
            raw = path.read_bytes()
            self.assertNotIn(b"secret-name", raw)
            self.assertNotIn(DATA[:100], raw)
        update.abort()
        self.assertEqual(list(self.content.glob(".update-*")), [])
