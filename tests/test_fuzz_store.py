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
from barterbackup.store.metadata import (
    MAX_METADATA_BYTES,
    METADATA_AD,
    MetadataError,
    MetadataStore,
)
from barterbackup.store.packs import (
    INDEX_ENTRY,
    PACK_MAX_ENTRIES,
    PackStore,
    SectionCorrupt,
    SectionMissing,
)
from barterbackup.store.replicas import (
    MAX_RECORD_BYTES,
    RECORD_AD,
    RECORD_FILENAME,
    ReplicaError,
    ReplicaStore,
)
from barterbackup.store.sealed import SealedRecordError, open_sealed, seal
from barterbackup.testing.fakes import BlobDict, make_revision
from barterbackup.testing.link import keys_for_test
from barterbackup.tree.nodes import entry_hashes
from barterbackup.tree.read import iter_nodes
from tests.fuzzing import (
    INTERESTING_INTEGERS,
    fuzz_target,
    messages,
    mutated,
    without_fsync,
)

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
        without_fsync(self)

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
            sparse_damage(MAX_METADATA_BYTES + 1, 2**40),
            # Sealed right, but not a Metadata inside (a bug, or an old
            # format): still MetadataError.
            st.tuples(st.just("resealed"), st.binary(max_size=64)),
        ),
        data=st.data(),
        key=st.sampled_from([KEY, OTHER_KEY]),
    )
    # Found by fuzzing (the content store target): a Metadata file grown
    # to 2**40 bytes was read whole (MemoryError at unlock).
    @example(
        record=storedpb_pb2.Metadata(revision=1),
        damage=("sparse", 2**40),
        data=None,
        key=KEY,
    )
    def test_damaged_metadata_is_refused_never_believed(
        self, record: Any, damage: Any, data: st.DataObject, key: bytes
    ) -> None:
        path = self.fresh() / "metadata.sealed"
        try:
            MetadataStore(path, KEY).update(lambda m: m.CopyFrom(record))
        except MetadataError:
            # Too large to be read back: refused, and nothing written.
            self.assertGreater(record.ByteSize(), MAX_METADATA_BYTES - 64)
            self.assertFalse(path.exists())
            return
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
        damage=st.one_of(
            sparse_damage(PACK_MAX_ENTRIES * INDEX_ENTRY.size + 48, 2**40),
            st.tuples(st.just("field"), length_fields),
        ),
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
        damage=("field", (0, 32, 2**63)),  # a live section's offset, in a sweep
        data=None,
    )
    @example(
        sections=[b"hello"],
        packs=1,
        victim=1,  # the index, grown sparse: read whole before its size check
        damage=("sparse", 2**40),
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
            assert data is not None or damage[0] != "mutate"
            _damage(path, damage, data)  # type: ignore[arg-type]
        try:
            store = PackStore(directory)
        except SectionCorrupt:
            return
        try:
            self.check_reads(store, sections)
            # Collecting garbage around the damage (marks, then a sweep)
            # keeps the rest intact, or says which pack is damaged.
            marks = store.new_marks()
            for section in sections[::2]:
                try:
                    store.mark(marks, hashlib.sha256(section).digest())
                except SectionCorrupt:
                    pass
            try:
                store.sweep(marks)
            except SectionCorrupt:
                pass
            self.check_reads(store, sections[::2])
        finally:
            store.close()
        # What a sweep left reopens, and reads right or refuses again.
        try:
            reopened = PackStore(directory)
        except SectionCorrupt:
            return
        try:
            self.check_reads(reopened, sections[::2])
        finally:
            reopened.close()

    def check_reads(self, store: PackStore, sections: list[bytes]) -> None:
        for section in sections:
            digest = hashlib.sha256(section).digest()
            try:
                self.assertEqual(store.read(digest), section)
            except (SectionCorrupt, SectionMissing):
                pass
            try:
                store.has(digest)
            except SectionCorrupt:
                pass


# -- replicas -----------------------------------------------------------

NAMES = bytes(range(32))
SEAL = bytes(range(32, 64))
VICTIM_KEY = nacl.signing.SigningKey(bytes([1]) * 32)
BYSTANDER_KEY = nacl.signing.SigningKey(bytes([2]) * 32)
VICTIM = bytes(VICTIM_KEY.verify_key)
BYSTANDER = bytes(BYSTANDER_KEY.verify_key)
NEWER_SECTION = b"newer section"


def _grant(owner: bytes) -> int:
    return 10_000_000


def _live(revision: Any, blobs: BlobDict) -> list[bytes]:
    found = []
    for root in (revision.sections, revision.manifest):
        for node in iter_nodes(root, blobs):
            found.append(node.ref.hash)
            if node.ref.level == 0:
                found += entry_hashes(node.packed())
    return found


def _store_revision(
    store: ReplicaStore, key: Any, sections: list[bytes], number: int
) -> tuple[Any, BlobDict]:
    blobs = BlobDict()
    revision = make_revision(key, sections, number, blobs)
    owner = bytes(key.verify_key)
    store.begin(owner, revision.signed)
    wanted = [(h, blobs[h]) for h in _live(revision, blobs)]
    store.store_blobs(owner, revision.content_id, wanted)
    store.finish(owner, revision.content_id, lambda: _live(revision, blobs))
    return revision, blobs


# The bystander's one section: longer than any section the fuzz draws for
# the victim (at most 200 bytes), so the victim never holds it too (b"b"
# was drawn as the victim's own section, and then rightly served).
BYSTANDER_SECTION = b"b" * 201


def _write_replicas(root: Path, sections: list[bytes], pending: bool) -> Any:
    """The victim's complete revision and (if ``pending``) a newer one half
    fetched; a bystander's complete revision beside it."""
    store = ReplicaStore.open(root, _grant, NAMES, SEAL)
    current, blobs = _store_revision(store, VICTIM_KEY, sections, 1)
    newer = None
    if pending:
        newer = make_revision(VICTIM_KEY, [*sections, NEWER_SECTION], 2, blobs)
        store.begin(VICTIM, newer.signed)
        digest = hashlib.sha256(NEWER_SECTION).digest()
        store.store_blobs(VICTIM, newer.content_id, [(digest, NEWER_SECTION)])
        store.checkpoint(VICTIM)
    bystander, bystander_blobs = _store_revision(
        store, BYSTANDER_KEY, [BYSTANDER_SECTION], 5
    )
    directories = {owner: store._owners[owner].directory for owner in store.owners()}
    store.close()
    return current, newer, blobs, bystander, bystander_blobs, directories


def _lying_record(draw: Any, revisions: dict[str, bytes]) -> bytes:
    """A ReplicaRecord sealed right for the victim's directory, whose
    fields come from anywhere (a bug, an old format, a restored backup)."""
    choice = st.sampled_from(sorted(revisions))
    record = storedpb_pb2.ReplicaRecord(
        owner_pubkey=draw(st.sampled_from([VICTIM, BYSTANDER, b"", bytes(33)])),
        held=revisions[draw(choice)],
        pending=revisions[draw(choice)],
        complete_packs=draw(st.lists(st.sampled_from(["", "x", "../x"]), max_size=2)),
    )
    return record.SerializeToString()


class ReplicaFuzz(_Workspace):
    @fuzz_target(
        "store.replicas",
        cost=6,
        sections=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=5),
        pending=st.booleans(),
        victim=st.integers(0, 100),
        damage=st.one_of(
            sparse_damage(MAX_RECORD_BYTES + 1, 2**40),
            st.tuples(st.just("record")),
            st.tuples(st.just("swap")),
        ),
        stray=st.sampled_from([None, "file", "dir", "badname", "symlink"]),
        data=st.data(),
    )
    @example(
        sections=[b"x"],
        pending=False,
        victim=-1,  # record.sealed (.sealed sorts last)
        damage=("sparse", 2**40),  # read whole before its size check
        stray=None,
        data=None,
    )
    # Found by fuzzing: a pack index grown to 2**40 bytes was read whole
    # at open (MemoryError escaped ReplicaStore.open).
    @example(
        sections=[b"x"],
        pending=False,
        victim=0,  # packs/<id>.idx (.idx sorts first)
        damage=("sparse", 2**40),
        stray=None,
        data=None,
    )
    def test_a_damaged_replica_is_quarantined_or_read_right(
        self,
        sections: list[bytes],
        pending: bool,
        victim: int,
        damage: Any,
        stray: str | None,
        data: st.DataObject | None,
    ) -> None:
        root = self.fresh() / "replicas"
        current, newer, blobs, bystander, _, directories = _write_replicas(
            root, sections, pending
        )
        victim_dir = directories[VICTIM]
        # Pack ids are random: ordered by kind and size, so the same example
        # damages the same kind of file (and draws the same) every run.
        files = sorted(
            (p for p in victim_dir.rglob("*") if p.is_file()),
            key=lambda p: (p.suffix, p.stat().st_size),
        )
        victim_path = files[victim % len(files)]
        record_path = victim_dir / RECORD_FILENAME
        if damage[0] == "record":
            assert data is not None
            revisions = {
                "none": b"",
                "current": current.signed,
                "newer": newer.signed if newer else b"",
                "bystander": bystander.signed,
                "garbage": b"\x0a\x03abc",
            }
            plain = _lying_record(data.draw, revisions)
            ad = RECORD_AD + victim_dir.name.encode("ascii")
            record_path.write_bytes(seal(SEAL, plain, ad))
        elif damage[0] == "swap":
            # The bystander's own record, sealed right, in the victim's place.
            shutil.copy(directories[BYSTANDER] / RECORD_FILENAME, record_path)
        else:
            _damage(victim_path, damage, data)  # type: ignore[arg-type]
        if stray == "file":
            (root / "stray-file").write_bytes(b"x")
        elif stray == "dir":
            (root / ("00" * 16)).mkdir()
        elif stray == "badname":
            (
                root
                / "not-an-owner\udcff".encode("utf-8", "surrogateescape").decode(
                    "utf-8", "replace"
                )
            ).mkdir()
        elif stray == "symlink":
            (root / ("11" * 16)).symlink_to(directories[BYSTANDER])
        bystander_before = _tree_bytes(directories[BYSTANDER])
        victim_before = _tree_bytes(victim_dir)

        # Opening never fails: a damaged owner is moved aside and named.
        store = ReplicaStore.open(root, _grant, NAMES, SEAL)
        self.addCleanup(store.close)
        quarantined = {q.path.name.split(".")[0] for q in store.quarantined}
        for entry in store.quarantined:
            self.assertTrue(entry.path.exists() or entry.path.is_symlink())
            self.assertTrue(entry.reason)
        # The bystander is untouched and served whatever happened beside it.
        self.assertEqual(_tree_bytes(directories[BYSTANDER]), bystander_before)
        held = store.held(BYSTANDER)
        assert held is not None and held.held is not None
        self.assertEqual(held.held.signed, bystander.signed)
        self.assertEqual(
            store.read_blob(BYSTANDER, hashlib.sha256(BYSTANDER_SECTION).digest()),
            BYSTANDER_SECTION,
        )
        if victim_dir.name in quarantined:
            # Moved aside whole, for the user to inspect: nothing deleted.
            self.assertFalse(victim_dir.exists())
            [moved] = [
                q.path
                for q in store.quarantined
                if q.path.name.startswith(victim_dir.name)
            ]
            self.assertEqual(_tree_bytes(moved), victim_before)
            self.assertIsNone(store.held(VICTIM))
            self.assertEqual(set(store.owners()), {BYSTANDER})
            return
        # Loaded: only revisions the victim signed, in their order, and
        # every blob read is the true one or a ReplicaError.
        # (A record naming no revision is an empty owner: held is None.)
        held = store.held(VICTIM)
        truth = {current.signed}
        if newer is not None:
            truth.add(newer.signed)
        if held is not None:
            for revision in (held.held, held.pending):
                if revision is not None:
                    self.assertIn(revision.signed, truth)
            if held.held is not None and held.pending is not None:
                self.assertGreater(held.pending.number, held.held.number)
        for digest, blob in blobs.items():
            try:
                self.assertEqual(store.read_blob(VICTIM, digest), blob)
            except ReplicaError:
                pass
        # A blob it never had is never served.
        with self.assertRaises(ReplicaError):
            store.read_blob(VICTIM, hashlib.sha256(BYSTANDER_SECTION).digest())


def _tree_bytes(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each file's size, mtime and first bytes (a file may be 2**40 sparse
    bytes: never read whole)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                status = os.fstat(handle.fileno())
                head = handle.read(1 << 20)
            found[str(path.relative_to(directory))] = (
                status.st_size,
                status.st_mtime_ns,
                head,
            )
    return found
