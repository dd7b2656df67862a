"""Fuzzing what the stores read back from disk: sealed records, Metadata,
the identity file, pack indexes and packs, replica records and sections.

Each target writes real files with the real code, damages them (bit flips,
truncation, extension, random bytes, a length field of 2**40, a file grown
sparse past its bound), then reads them back with the real code. The
reader must return exactly what was written or raise the store's own error
(never a bare struct.error, IndexError, DecodeError or MemoryError), and
must not allocate what a damaged length field asks for. See
docs/wire-protocol.md, "Fuzzing".
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import nacl.signing
from hypothesis import example
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.store.identity import (
    CorruptIdentity,
    identity_path,
    read_identity,
    write_identity,
)
from barterbackup.store.metadata import METADATA_AD, MetadataError, MetadataStore
from barterbackup.store.packs import PackStore, SectionCorrupt, SectionMissing
from barterbackup.store.replicas import (
    MAX_RECORD_BYTES,
    ReplicaError,
    ReplicaRecordError,
    ReplicaStore,
)
from barterbackup.store.sealed import SealedRecordError, open_sealed, seal
from barterbackup.testing.fakes import make_revision
from barterbackup.testing.link import keys_for_test
from tests.fuzzing import INTERESTING_INTEGERS, fuzz_target, messages, mutated

KEY = bytes(range(32))
OTHER_KEY = bytes(32)


def _damage(path: Path, damage: Any, data: st.DataObject) -> None:
    kind = damage[0]
    if kind == "mutate":
        path.write_bytes(data.draw(mutated(path.read_bytes())))
    elif kind == "random":
        path.write_bytes(damage[1])
    elif kind == "sparse":
        os.truncate(path, damage[1])
    else:
        path.write_bytes(b"")


file_damage = st.one_of(
    st.tuples(st.just("mutate")),
    st.tuples(st.just("random"), st.binary(max_size=200)),
    st.tuples(st.just("empty")),
)


def sparse_damage(*sizes: int) -> st.SearchStrategy[Any]:
    return st.one_of(file_damage, st.tuples(st.just("sparse"), st.sampled_from(sizes)))


class _Workspace(SynchronousTestCase):
    """Each example works in a fresh directory; the last one's goes."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir()
        self.addCleanup(shutil.rmtree, self.base, True)
        self.examples = 0

    def fresh(self) -> Path:
        shutil.rmtree(self.base / str(self.examples), ignore_errors=True)
        self.examples += 1
        directory = self.base / str(self.examples)
        directory.mkdir()
        return directory


class SealedRecordFuzz(SynchronousTestCase):
    @fuzz_target(
        "store.sealed",
        plaintext=st.binary(max_size=300),
        associated=st.sampled_from([METADATA_AD, b"", b"other"]),
        damage=st.data(),
        key=st.sampled_from([KEY, OTHER_KEY]),
    )
    def test_a_damaged_sealed_record_never_opens(
        self, plaintext: bytes, associated: bytes, damage: Any, key: bytes
    ) -> None:
        sealed = seal(KEY, plaintext, METADATA_AD)
        damaged = damage.draw(st.one_of(mutated(sealed), st.just(sealed)))
        try:
            opened = open_sealed(key, damaged, associated, "a record")
        except SealedRecordError:
            return
        self.assertEqual(
            (damaged, key, associated, opened), (sealed, KEY, METADATA_AD, plaintext)
        )


class MetadataFuzz(_Workspace):
    @fuzz_target(
        "store.metadata",
        cost=3,
        record=messages(storedpb_pb2.Metadata.DESCRIPTOR, depth=2),
        damage=st.one_of(
            file_damage,
            # Sealed right, but not a Metadata inside (a bug, or an old
            # format): still MetadataError.
            st.tuples(st.just("resealed"), st.binary(max_size=64)),
        ),
        data=st.data(),
        key=st.sampled_from([KEY, OTHER_KEY]),
    )
    def test_damaged_metadata_is_refused_never_believed(
        self, record: Any, damage: Any, data: st.DataObject, key: bytes
    ) -> None:
        path = self.fresh() / "metadata.sealed"
        MetadataStore(path, KEY).update(lambda m: m.CopyFrom(record))
        before = path.read_bytes()
        if damage[0] == "resealed":
            path.write_bytes(seal(KEY, damage[1], METADATA_AD))
        else:
            _damage(path, damage, data)
        try:
            got = MetadataStore(path, key).get()
        except MetadataError:
            return
        if damage[0] == "resealed":
            self.assertEqual(got, storedpb_pb2.Metadata.FromString(damage[1]))
            return
        self.assertEqual((path.read_bytes(), key), (before, KEY))
        self.assertEqual(got, record)


class IdentityFuzz(_Workspace):
    @fuzz_target(
        "store.identity",
        address=st.sampled_from([keys_for_test(n).onion_address for n in range(4)]),
        damage=sparse_damage(2**20, 2**40),
        data=st.data(),
    )
    @example(
        address=keys_for_test(0).onion_address,
        damage=("sparse", 2**40),  # read whole: MemoryError
        data=None,
    )
    def test_a_damaged_identity_file_is_refused(
        self, address: str, damage: Any, data: st.DataObject
    ) -> None:
        node_dir = self.fresh()
        write_identity(node_dir, address)
        _damage(identity_path(node_dir), damage, data)
        try:
            found = read_identity(node_dir)
        except CorruptIdentity:
            return
        self.assertEqual(found, address)


def _write_packs(directory: Path, sections: list[bytes], packs: int) -> list[Path]:
    """Sections in ``packs`` pack files; the files, in the order written
    (pack ids are random, so names say nothing of the order)."""
    store = PackStore(directory)
    files: list[Path] = []
    per_pack = max(1, -(-len(sections) // packs))
    for start in range(0, len(sections), per_pack):
        batch = sections[start : start + per_pack]
        number, writer = store.new_writer()
        hashes = [(hashlib.sha256(s).digest(), len(s)) for s in batch]
        first = writer.append(b"".join(batch), hashes)
        store.reserve(number, first, [h for h, _ in hashes])
        files += [writer.final_path, writer.final_index_path]
        store.install(number, lambda point: None)
    store.close()
    return files


# An index entry's offset or length field overwritten with a huge value.
length_fields = st.tuples(
    st.integers(0, 10), st.sampled_from([32, 40]), st.sampled_from(INTERESTING_INTEGERS)
)


class PackFuzz(_Workspace):
    @fuzz_target(
        "store.packs",
        cost=3,
        sections=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8),
        packs=st.integers(1, 3),
        victim=st.integers(0, 100),
        damage=st.one_of(file_damage, st.tuples(st.just("field"), length_fields)),
        data=st.data(),
    )
    @example(
        sections=[b"hello"],
        packs=1,
        victim=1,  # the index
        damage=("field", (0, 40, 2**40)),  # entry 0's length: 1 TiB (MemoryError)
        data=None,
    )
    @example(
        sections=[b"hello"],
        packs=1,
        victim=1,
        damage=("field", (0, 32, 2**63)),  # entry 0's offset (OverflowError)
        data=None,
    )
    @example(
        sections=[b"a" * 10, b"b" * 100],
        packs=1,
        victim=1,
        damage=("field", (0, 32, 2**63)),  # a live section's offset, in gc
        data=None,
    )
    def test_a_damaged_pack_or_index_never_returns_wrong_bytes(
        self,
        sections: list[bytes],
        packs: int,
        victim: int,
        damage: Any,
        data: st.DataObject | None,
    ) -> None:
        directory = self.fresh()
        files = _write_packs(directory, sections, packs)
        path = files[victim % len(files)]
        if damage[0] == "field":
            entry, field_offset, value = damage[1]
            raw = bytearray(path.read_bytes())
            start = entry * 48 + field_offset
            raw[start : start + 8] = (value % 2**64).to_bytes(8, "big")
            path.write_bytes(raw)
        else:
            assert data is not None
            _damage(path, damage, data)
        try:
            store = PackStore(directory)
        except SectionCorrupt:
            return
        try:
            self.check_reads(store, sections)
            # Collecting garbage around the damage keeps the rest intact.
            live = {hashlib.sha256(s).digest() for s in sections[::2]}
            try:
                store.gc(live)
            except SectionCorrupt:
                pass
            self.check_reads(store, sections[::2])
        finally:
            store.close()

    def check_reads(self, store: PackStore, sections: list[bytes]) -> None:
        for section in sections:
            digest = hashlib.sha256(section).digest()
            try:
                self.assertEqual(store.read(digest), section)
            except (SectionCorrupt, SectionMissing):
                pass
            store.has(digest)


def _owner(index: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([index + 1]) * 32)


def _budget() -> storedpb_pb2.StorageConfig:
    return storedpb_pb2.StorageConfig()


def _write_replica(root: Path, sections: list[bytes], pending: bool) -> Any:
    """One owner's complete revision, and (if ``pending``) a newer one
    half fetched: current.pb, pending.pb and section files."""
    key = _owner(0)
    owner = bytes(key.verify_key)
    store = ReplicaStore.open(root, _budget)
    current = make_revision(key, sections, 1)
    plan = store.begin(owner, current.signed)
    for index, _ in plan.missing:
        store.store_section(owner, current.content_id, index, sections[index])
    store.finish(owner, current.content_id)
    newer = None
    if pending:
        newer = make_revision(key, [*sections, b"newer section"], 2)
        store.begin(owner, newer.signed)
        store.store_section(owner, newer.content_id, len(sections), b"newer section")
    return owner, current, newer


class ReplicaFuzz(_Workspace):
    @fuzz_target(
        "store.replicas",
        cost=3,
        sections=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=5),
        pending=st.booleans(),
        victim=st.integers(0, 100),
        damage=st.one_of(
            sparse_damage(MAX_RECORD_BYTES + 1, 2**40),
            # A well-formed record that lies: another owner, the wrong
            # completeness, another owner's or a garbled revision.
            st.tuples(
                st.just("record"),
                st.sampled_from(["owner", "other"]),
                st.sampled_from(["current", "newer", "foreign", "garbage"]),
                st.booleans(),
            ),
        ),
        stray=st.sampled_from([None, "file", "dir", "badname"]),
        data=st.data(),
    )
    @example(
        sections=[b"x"],
        pending=False,
        victim=0,  # current.pb
        damage=("sparse", 2**40),  # read whole before its size check
        stray=None,
        data=None,
    )
    @example(
        sections=[b"x"],
        pending=False,
        victim=1,  # the section file
        damage=("sparse", 2**40),  # read whole before its hash check
        stray=None,
        data=None,
    )
    def test_a_damaged_replica_is_refused_never_believed(
        self,
        sections: list[bytes],
        pending: bool,
        victim: int,
        damage: Any,
        stray: str | None,
        data: st.DataObject,
    ) -> None:
        root = self.fresh() / "replicas"
        owner, current, newer = _write_replica(root, sections, pending)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        victim_path = files[victim % len(files)]
        if damage[0] == "record":
            _, who, which, complete = damage
            signed = {
                "current": current.signed,
                "newer": newer.signed if newer else current.signed,
                "foreign": make_revision(_owner(1), sections, 3).signed,
                "garbage": b"\x0a\x03abc",
            }[which]
            record = storedpb_pb2.ReplicaRecord(
                owner_pubkey=owner if who == "owner" else bytes(_owner(1).verify_key),
                signed_revision=signed,
                complete=complete,
            )
            victim_path.write_bytes(record.SerializeToString())
        else:
            _damage(victim_path, damage, data)
        owner_dir = root / owner.hex()
        if stray == "file":
            (owner_dir / "sections" / "not-a-hash").write_bytes(b"x")
        elif stray == "dir":
            (owner_dir / "sections" / ("00" * 32)).mkdir()
        elif stray == "badname":
            (root / "not-an-owner").mkdir()
        try:
            store = ReplicaStore.open(root, _budget)
        except ReplicaRecordError:
            return
        held = store.held(owner)
        if held is None:
            return
        # Only revisions the owner signed (a record copied from pending.pb
        # to current.pb is still one, and served only if all of it is here).
        truth = {current.signed: sections}
        if newer is not None:
            truth[newer.signed] = [*sections, b"newer section"]
        self.assertIn(held.signed_revision, truth)
        readable = held.readable
        if readable is None:
            return
        self.assertIn(readable.signed, truth)
        for index, section in enumerate(truth[readable.signed]):
            try:
                got = store.read_section(owner, readable.content_id, index)
            except ReplicaError:
                continue
            self.assertEqual(got, section)
