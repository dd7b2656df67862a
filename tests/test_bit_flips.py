"""Random bit flips anywhere in a node's stored files (issue 13, "Bit
flips"): every flip is detected — the store refuses to open, a read fails,
or `check --read-data` names the damage — and no read ever returns a wrong
byte. Owner side (content packs, tree nodes, manifest chunks, revision
files, pointer, Metadata) and replica side (packs and sealed records)."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content.engine import CorruptContent
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.recovery.check import check_store
from barterbackup.store.replicas import (
    BadBlob,
    ReplicaRecordError,
    ReplicaStore,
    UnknownRevision,
)
from barterbackup.store.sealed import SealedRecordError
from barterbackup.testing.fakes import BlobDict, make_revision
from barterbackup.testing.link import keys_for_test
from barterbackup.testing.stores import open_content_store
from tests.test_replicas_store import NAMES, SEAL, Budget, live

KEYS = node_keys_from_master(bytes(range(7, 39)))
FILES = {
    "docs/a.txt": random.Random(1).randbytes(300_000),
    "docs/b.txt": random.Random(2).randbytes(40_000),
    "small.bin": b"tiny",
}
OWNER = keys_for_test(5)
# What a damaged store may raise: typed errors that say what is wrong.
# (OSError for a name the flip made unreadable; ValueError subclasses are
# the stores' own record errors.)
DETECTED = (CorruptContent, SealedRecordError, ValueError, LookupError, OSError)


def flip(path: Path, bit: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[(bit // 8) % len(raw)] ^= 1 << (bit % 8)
    path.write_bytes(bytes(raw))


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size)


class OwnerBitFlipTests(SynchronousTestCase):
    def build(self) -> Path:
        node_dir = Path(self.mktemp())
        store = open_content_store(node_dir, KEYS)
        update = store.begin_update()
        for name, data in FILES.items():
            with update.add_file(name) as writer:
                writer.write(data)
        update.commit()
        store.close()
        return node_dir

    @settings(max_examples=40, deadline=None)
    @given(which=st.integers(0, 2**16), bit=st.integers(0, 2**40))
    def test_every_flip_is_detected_and_no_wrong_byte_is_read(
        self, which: int, bit: int
    ) -> None:
        node_dir = self.build()
        files = stored_files(node_dir)
        victim = files[which % len(files)]
        flip(victim, bit)
        flipped = victim.read_bytes()
        try:
            store = open_content_store(node_dir, KEYS)
        except DETECTED as error:
            self.assertTrue(str(error))
            return  # refused to open, with a reason
        try:
            detected = False
            for name, data in FILES.items():
                try:
                    read = b"".join(store.read_file(name))
                except DETECTED as error:
                    self.assertTrue(str(error), name)
                    detected = True
                    continue
                self.assertEqual(read, data, f"a wrong byte of {name} ({victim})")
            try:
                outcome = check_store(store, read_data=True)
            except DETECTED:
                detected = True
            else:
                detected = detected or outcome.damaged_count > 0
            # Derived data (a revision's name index) is rebuilt from the
            # authenticated manifest when it fails to open: detected, healed.
            healed = not victim.exists() or victim.read_bytes() != flipped
            detected = detected or healed
            self.assertTrue(detected, f"a flip in {victim.relative_to(node_dir)}")
        finally:
            store.close()


class ReplicaBitFlipTests(SynchronousTestCase):
    def build(self) -> tuple[Path, object, BlobDict, list[bytes]]:
        root = Path(self.mktemp())
        blobs = BlobDict()
        sections = [random.Random(i).randbytes(3000) for i in range(12)]
        revision = make_revision(OWNER.signing_key, sections, 1, blobs)
        store = ReplicaStore.open(root, Budget(), NAMES, SEAL)
        store.begin(OWNER.onion_pubkey, revision.signed)
        hashes = live(revision, blobs)
        store.store_blobs(
            OWNER.onion_pubkey, revision.content_id, [(h, blobs[h]) for h in hashes]
        )
        store.finish(OWNER.onion_pubkey, revision.content_id, lambda: hashes)
        store.close()
        return root, revision, blobs, hashes

    @settings(max_examples=40, deadline=None)
    @given(which=st.integers(0, 2**16), bit=st.integers(0, 2**40))
    def test_every_flip_is_detected_and_no_wrong_byte_is_served(
        self, which: int, bit: int
    ) -> None:
        root, revision, blobs, hashes = self.build()
        files = stored_files(root)
        victim = files[which % len(files)]
        flip(victim, bit)
        store = ReplicaStore.open(root, Budget(), NAMES, SEAL)
        try:
            held = store.held(OWNER.onion_pubkey)
            if held is None or held.held is None:
                # The damaged record (or index) put the owner in quarantine.
                self.assertTrue(store.quarantined, victim)
                return
            self.assertEqual(held.held.content_id, revision.content_id)  # type: ignore[attr-defined]
            detected = False
            for sha256 in hashes:
                try:
                    data = store.read_blob(OWNER.onion_pubkey, sha256)
                except (BadBlob, ReplicaRecordError, UnknownRevision) as error:
                    # A flipped index entry: the blob is "not stored here",
                    # never served from the wrong place.
                    self.assertTrue(str(error))
                    detected = True
                    continue
                self.assertEqual(data, blobs[sha256], f"a wrong byte ({victim})")
            self.assertTrue(detected, f"a flip in {victim.relative_to(root)}")
        finally:
            store.close()
