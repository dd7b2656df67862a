"""MetadataStore: sealed, atomic, lock-protected updates."""

from __future__ import annotations

import threading
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.store.metadata import MetadataError, MetadataStore
from barterbackup.store.sealed import SealedRecordError

KEY = bytes(range(32))


class MetadataStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.path = directory / "metadata.sealed"

    def test_empty_then_round_trip(self) -> None:
        store = MetadataStore(self.path, KEY)
        self.assertEqual(store.get(), storedpb_pb2.Metadata())
        self.assertFalse(self.path.exists())

        def change(metadata: storedpb_pb2.Metadata) -> None:
            metadata.revision = 7
            metadata.storage.min_replicas = 3
            metadata.peers.add(onion_pubkey=b"p" * 32, audit_score=0.5)

        returned = store.update(change)
        self.assertEqual(returned.revision, 7)
        reopened = MetadataStore(self.path, KEY).get()
        self.assertEqual(reopened, returned)
        self.assertNotIn(b"p" * 32, self.path.read_bytes())

    def test_get_returns_a_copy(self) -> None:
        store = MetadataStore(self.path, KEY)
        copy = store.get()
        copy.revision = 99
        self.assertEqual(store.get().revision, 0)

    def test_failed_change_writes_nothing(self) -> None:
        store = MetadataStore(self.path, KEY)
        store.update(lambda m: setattr(m, "revision", 1))
        before = self.path.read_bytes()

        def broken(metadata: storedpb_pb2.Metadata) -> None:
            metadata.revision = 2
            raise RuntimeError("no")

        self.assertRaises(RuntimeError, store.update, broken)
        self.assertEqual(self.path.read_bytes(), before)
        self.assertEqual(store.get().revision, 1)

    def test_concurrent_updates_all_land(self) -> None:
        store = MetadataStore(self.path, KEY)

        def bump(metadata: storedpb_pb2.Metadata) -> None:
            metadata.revision += 1

        threads = [
            threading.Thread(target=lambda: [store.update(bump) for _ in range(10)])
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(MetadataStore(self.path, KEY).get().revision, 40)

    def test_tampered_or_foreign(self) -> None:
        MetadataStore(self.path, KEY).update(lambda m: setattr(m, "revision", 1))
        with self.assertRaises(MetadataError) as caught:
            MetadataStore(self.path, bytes(32)).get()
        self.assertIn(str(self.path), str(caught.exception))
        self.assertIsInstance(caught.exception, SealedRecordError)
        raw = bytearray(self.path.read_bytes())
        raw[-1] ^= 1
        self.path.write_bytes(bytes(raw))
        self.assertRaises(MetadataError, MetadataStore(self.path, KEY).get)
        self.path.write_bytes(b"short")
        self.assertRaises(MetadataError, MetadataStore(self.path, KEY).get)
