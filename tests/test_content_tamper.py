"""Tampered sections, revisions and pointers: clear errors, never wrong bytes."""

from __future__ import annotations

import random
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content.engine import ContentStore, CorruptContent
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.store.metadata import MetadataError
from barterbackup.store.packs import INDEX_ENTRY
from barterbackup.testing.stores import open_content_store

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

    def section_location(
        self, store: ContentStore, name: str, index: int
    ) -> tuple[Path, int]:
        entry = store.file_entry(name)
        assert store.current is not None
        sha256 = store.current.revision.sections[entry.first_section + index].sha256
        for index_path in self.content.glob("packs/*.idx"):
            for entry_hash, offset, _ in INDEX_ENTRY.iter_unpack(
                index_path.read_bytes()
            ):
                if entry_hash == sha256:
                    return index_path.with_suffix(".pack"), offset
        raise AssertionError("section not found")

    def test_flipped_section_bit(self) -> None:
        store = self.reopen()
        pack, offset = self.section_location(store, "victim.bin", 2)
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
        assert store.current is not None
        entry = store.file_entry("victim.bin")
        bad = store.current.revision.sections[entry.first_section + 2].sha256
        self.assertRaises(CorruptContent, store.read_section, bad)

    def test_truncated_pack(self) -> None:
        store = self.reopen()
        pack, _ = self.section_location(store, "victim.bin", 0)
        pack.write_bytes(pack.read_bytes()[:1000])
        with self.assertRaises(CorruptContent) as caught:
            b"".join(store.read_file("victim.bin"))
        self.assertIn("victim.bin", str(caught.exception))

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
