"""The packing pipeline's fast paths give the bytes of the simple definitions."""

from __future__ import annotations

import errno
import hashlib
import random
from pathlib import Path
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from pyfastcdc.cy import FastCDC
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content import engine, pipeline, sections
from barterbackup.content.engine import ContentStore
from barterbackup.content.sections import (
    NORMALIZED_CHUNKING,
    SECTION_AVERAGE_BYTES,
    SECTION_MAX_BYTES,
    SECTION_MIN_BYTES,
    SectionKeyDeriver,
    section_cipher,
    section_encryptor,
    section_key,
)
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.store.packs import PackWriter
from barterbackup.testing.stores import open_content_store
from barterbackup.tree import iter_entries

KEYS = node_keys_from_master(bytes(range(7, 39)))


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def reference_sections(
    content_key: bytes, data: bytes
) -> list[tuple[int, bytes, bytes]]:
    """(length, plaintext sha256, ciphertext sha256) per section, the slow way."""
    chunker = FastCDC(
        SECTION_AVERAGE_BYTES,
        min_size=SECTION_MIN_BYTES,
        max_size=SECTION_MAX_BYTES,
        normalized_chunking=NORMALIZED_CHUNKING,
    )
    sections = []
    for chunk in chunker.cut_buf(data):
        plain = bytes(chunk.data)
        plain_sha256 = hashlib.sha256(plain).digest()
        encryptor = section_cipher(section_key(content_key, plain_sha256)).encryptor()
        ciphertext = encryptor.update(plain) + encryptor.finalize()
        sections.append((len(plain), plain_sha256, hashlib.sha256(ciphertext).digest()))
    return sections


class SectionPrimitiveTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(content_key=st.binary(max_size=100), plain_sha256=st.binary(max_size=40))
    def test_key_deriver_is_the_hmac(
        self, content_key: bytes, plain_sha256: bytes
    ) -> None:
        deriver = SectionKeyDeriver(content_key)
        self.assertEqual(
            deriver.key(plain_sha256), section_key(content_key, plain_sha256)
        )
        # The precomputed pads are copied, never consumed.
        self.assertEqual(
            deriver.key(plain_sha256), section_key(content_key, plain_sha256)
        )

    def test_encryptor_is_the_section_cipher(self) -> None:
        key = bytes(range(32))
        plain = random_bytes(40_003, 1)
        reference = section_cipher(key).encryptor()
        expected = reference.update(plain) + reference.finalize()
        out = bytearray(len(plain) + 15)
        section_encryptor(key).update_into(plain, out)
        self.assertEqual(bytes(out[: len(plain)]), expected)

    def test_context_factory_uses_the_fast_path_here(self) -> None:
        """The pinned cryptography has the Rust constructor: packing uses it."""
        self.assertIsNot(sections._find_context_factory(), sections._public_encryptor)

    def test_context_factory_falls_back_to_the_public_api(self) -> None:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        self.patch(rust_openssl, "ciphers", SimpleNamespace())
        self.assertIs(sections._find_context_factory(), sections._public_encryptor)

    def test_context_factory_refuses_other_bytes(self) -> None:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        other_key = bytes(32)

        def wrong_key(algorithm: object, mode: object) -> object:
            return sections._public_encryptor(other_key)

        ciphers = SimpleNamespace(create_encryption_ctx=wrong_key)
        self.patch(rust_openssl, "ciphers", ciphers)
        self.assertIs(sections._find_context_factory(), sections._public_encryptor)


class PipelineTests(SynchronousTestCase):
    def open_store(self) -> ContentStore:
        store = open_content_store(Path(self.mktemp()), KEYS)
        self.addCleanup(store.close)
        return store

    def test_revision_matches_reference(self) -> None:
        """Section table, plaintext hashes and stored bytes equal the slow way."""
        repeated = random_bytes(300_000, 2)
        files = {
            "a": random_bytes(3 * engine.BATCH_BYTES + 4321, 3),
            # The same content twice in one file and again in another file:
            # stored once, listed every time.
            "b": repeated + repeated,
            "c": repeated,
            "empty": b"",
            "tiny": b"x",
            # Around the minimum, where the writer skips the chunker.
            "under_min": random_bytes(SECTION_MIN_BYTES - 1, 7),
            "at_min": random_bytes(SECTION_MIN_BYTES, 8),
            "over_min": random_bytes(SECTION_MIN_BYTES + 1, 9),
        }
        store = self.open_store()
        update = store.begin_update()
        for name, data in files.items():
            writer = update.add_file(name)
            for start in range(0, len(data), 99_991):
                writer.write(data[start : start + 99_991])
            writer.close()
        result = update.commit()
        expected = [
            section
            for name in sorted(files)
            for section in reference_sections(KEYS.content_key, files[name])
        ]
        assert store.current is not None
        table = list(iter_entries(store.current.sections, store._source))
        self.assertEqual(
            [(e.length, e.sha256) for e in table],
            [(length, sha256) for length, _, sha256 in expected],
        )
        self.assertEqual(
            [store._private.plaintext_sha256(e.sha256, e.private) for e in table],
            [plain_sha256 for _, plain_sha256, _ in expected],
        )
        distinct = {sha256: length for length, _, sha256 in expected}
        self.assertEqual(result.new_section_bytes, sum(distinct.values()))
        for sha256 in distinct:
            self.assertEqual(hashlib.sha256(store.read_blob(sha256)).digest(), sha256)

    def test_packs_are_synced_while_packing(self) -> None:
        self.patch(pipeline, "SYNC_EVERY_BYTES", 256 * 1024)
        synced: list[int] = []
        original = PackWriter.sync_data

        def counting_sync(writer: PackWriter) -> None:
            synced.append(writer.size)
            original(writer)

        self.patch(PackWriter, "sync_data", counting_sync)
        store = self.open_store()
        update = store.begin_update()
        with update.add_file("f") as writer:
            writer.write(random_bytes(4 * engine.BATCH_BYTES, 4))
        update.commit()
        self.assertTrue(synced)

    def test_failed_pack_sync_fails_the_commit(self) -> None:
        """A write error seen by the background sync is never lost."""
        self.patch(pipeline, "SYNC_EVERY_BYTES", 256 * 1024)

        def failing_sync(writer: PackWriter) -> None:
            raise OSError(errno.EIO, "simulated disk error")

        self.patch(PackWriter, "sync_data", failing_sync)
        store = self.open_store()
        update = store.begin_update()
        with update.add_file("f") as writer:
            writer.write(random_bytes(4 * engine.BATCH_BYTES, 5))
        error = self.assertRaises(OSError, update.commit)
        self.assertEqual(error.errno, errno.EIO)
        self.assertIsNone(store.current)
        self.assertEqual(list(store._packs_dir.iterdir()), [])
        self.assertEqual(list(store._dir.glob(".update-*")), [])
        # The store takes a new update afterwards.
        store.begin_update().abort()

    def test_failure_after_the_commit_point_keeps_the_filled_packs(self) -> None:
        """Packs installed while the update ran belong to the revision once
        `current` is written, even if the Metadata write then fails."""
        self.patch(pipeline, "PACK_TARGET_BYTES", 512 * 1024)
        data = random_bytes(4 * engine.BATCH_BYTES, 7)
        node_dir = Path(self.mktemp())
        store = open_content_store(node_dir, KEYS)
        update = store.begin_update()
        with update.add_file("f") as writer:
            writer.write(data)

        def failing_record(verified: object) -> None:
            raise OSError(errno.ENOSPC, "simulated full disk")

        self.patch(store, "_record_in_metadata", failing_record)
        self.assertRaises(OSError, update.commit)
        store.close()
        reopened = open_content_store(node_dir, KEYS)
        self.addCleanup(reopened.close)
        assert reopened.current is not None
        self.assertEqual(reopened.current.number, 1)
        self.assertEqual(reopened.metadata.get().revision, 1)
        self.assertEqual(b"".join(reopened.read_file("f")), data)

    def test_an_aborted_update_deletes_the_packs_it_filled(self) -> None:
        self.patch(pipeline, "PACK_TARGET_BYTES", 512 * 1024)
        store = self.open_store()
        update = store.begin_update()
        with update.add_file("f") as writer:
            writer.write(random_bytes(4 * engine.BATCH_BYTES, 8))
        update._drain()
        self.assertTrue(list(store._packs_dir.glob("*.pack")))
        update.abort()
        self.assertEqual(list(store._packs_dir.iterdir()), [])

    def test_many_packs_installed_together(self) -> None:
        """A commit of several packs installs them all, readable and deduped."""
        self.patch(pipeline, "PACK_TARGET_BYTES", 512 * 1024)
        data = random_bytes(4 * engine.BATCH_BYTES, 6)
        node_dir = Path(self.mktemp())
        store = open_content_store(node_dir, KEYS)
        update = store.begin_update()
        with update.add_file("f") as writer:
            writer.write(data)
        update.commit()
        packs = list((node_dir / "content" / "packs").glob("*.pack"))
        self.assertGreater(len(packs), 2)
        self.assertEqual(b"".join(store.read_file("f")), data)
        again = store.begin_update()
        with again.add_file("g") as writer:
            writer.write(data)
        self.assertEqual(again.commit().new_section_bytes, 0)
        store.close()
        reopened = open_content_store(node_dir, KEYS)
        self.addCleanup(reopened.close)
        self.assertEqual(b"".join(reopened.read_file("g")), data)
