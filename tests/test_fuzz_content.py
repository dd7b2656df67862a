"""Fuzzing what the content layer reads from replicas, peers and disk:
section tree nodes and proofs, sealed manifest chunks and their records,
signed revision roots, file names and source paths.

Two kinds of liar are tried against each reader. A corrupting source
(bit flips, truncation, swapped or foreign nodes): every read either
returns exactly the true bytes or raises the module's own error. A forging
owner, who signs whatever it likes (hashes are right, counts and lengths
are not): every read raises the module's error or returns something
consistent with what was signed. See docs/wire-protocol.md, "Fuzzing".
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.signing
from google.protobuf.message import DecodeError
from hypothesis import example
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.content.manifest import (
    ChunkSealer,
    FileRecord,
    InvalidManifest,
    ManifestError,
    ManifestKeys,
    ManifestReader,
    ManifestWriter,
    decode_chunk,
    sort_key,
)
from barterbackup.content.manifest.records import chunk_header, encode_record
from barterbackup.content.names import (
    MAX_COMPONENT_BYTES,
    MAX_NAME_BYTES,
    InvalidFileName,
    validate_name,
)
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.revisions import (
    CONTENT_ID_LABEL,
    MAX_SIGNED_ROOT_BYTES,
    REVISION_FORMAT,
    SIGNATURE_LABEL,
    InvalidRevision,
    content_sha256_of,
    new_root,
    verify_root,
)
from barterbackup.sources.config import InvalidSource, new_source, source_from_fields
from tests.fuzzing import HOSTILE_TEXT, fuzz_target, messages, mutated, texts, tree

nodes = tree.nodes
SMALL = tree.TreeShape(leaf_average=2, leaf_max=4, internal_average=2, internal_max=4)
SHAPES = st.sampled_from([SMALL, tree.SECTION_TREE_SHAPE])


class Store(dict[bytes, bytes]):
    """Nodes (or chunks) by hash; a missing one is a KeyError."""

    def put(self, digest: bytes, data: bytes) -> None:
        self[digest] = data

    def get(self, digest: bytes, default: object = None) -> bytes:  # type: ignore[override]
        return self[digest]


def _entries(seed: int, count: int) -> list[Any]:
    rng = random.Random(seed)
    return [
        tree.Entry(
            rng.choice([1, rng.randint(1, 70_000), tree.MAX_SECTION_BYTES]),
            rng.randbytes(32),
            rng.choice([tree.ZERO_PRIVATE, rng.randbytes(48)]),
        )
        for _ in range(count)
    ]


tables = st.builds(_entries, st.integers(0, 2**32), st.integers(0, 40))


def _build(entries: list[Any], shape: Any) -> tuple[Any, Store]:
    store = Store()
    root = tree.build_tree(b"".join(e.pack() for e in entries), store, shape)
    return root, store


def _parents(root: Any, store: Store) -> dict[bytes, tuple[bytes, int]]:
    """Child hash → (parent hash, position), first parent found."""
    found: dict[bytes, tuple[bytes, int]] = {}
    for node in tree.iter_nodes(root, store):
        if isinstance(node, nodes.Internal):
            for position, child in enumerate(node.children):
                found.setdefault(child.hash, (node.ref.hash, position))
    return found


def _reads(root: Any, source: Any, index: int, offset: int) -> dict[str, Any]:
    """Every way of reading the tree, each result or the TreeError class."""
    results: dict[str, Any] = {}
    readers: dict[str, Callable[[], Any]] = {
        "entries": lambda: list(tree.iter_entries(root, source)),
        "nodes": lambda: [n.data for n in tree.iter_nodes(root, source)],
        "missing": lambda: (
            tree.missing(root, source, lambda h: False, lambda h: False).sections
        ),
    }
    if root.entry_count:
        readers["at"] = lambda: tree.entry_at(root, index % root.entry_count, source)
        readers["at_offset"] = lambda: tree.entry_at_offset(
            root, offset % root.byte_count, source
        )
        readers["proof"] = lambda: tree.prove(root, index % root.entry_count, source)
    for name, read in readers.items():
        try:
            results[name] = read()
        except (tree.TreeError, KeyError) as error:
            results[name] = type(error)
    return results


def _claims(data: bytes) -> tuple[int, int, int]:
    """(level, entries, bytes) a node's bytes claim, read without checks."""
    if len(data) < nodes.HEADER_BYTES:
        return 0, 0, 0
    _, _, level, _ = nodes.HEADER.unpack_from(data)
    body = data[nodes.HEADER_BYTES :]
    if level == 0:
        whole = body[: len(body) - len(body) % nodes.ENTRY_BYTES]
        lengths = [fields[0] for fields in struct.iter_unpack(">Q80x", whole)]
        return 0, len(lengths), sum(lengths)
    whole = body[: len(body) - len(body) % nodes.CHILD_BYTES]
    records = list(nodes.CHILD_RECORD.iter_unpack(whole))
    return level, sum(r[1] for r in records), sum(r[2] for r in records)


# Leaves with lengths on and past the format's edges (0, 1, the maximum,
# one over, 2**64 - 1), their count right or not.
synthetic_nodes = st.builds(
    lambda lengths, count: (
        nodes.node_header(0, count)
        + b"".join(struct.pack(">Q32s48s", n, bytes(32), bytes(48)) for n in lengths)
    ),
    st.lists(
        st.sampled_from(
            [0, 1, 2, tree.MAX_SECTION_BYTES, tree.MAX_SECTION_BYTES + 1, 2**64 - 1]
        ),
        max_size=5,
    ),
    st.integers(0, 6),
)


def _tree_nodes(entries: list[Any], shape: Any) -> list[bytes]:
    _, store = _build(entries, shape)
    return sorted(store.values())


real_nodes = st.builds(
    _tree_nodes, st.builds(_entries, st.integers(0, 2**32), st.integers(1, 30)), SHAPES
).flatmap(st.sampled_from)


class TreeFuzz(SynchronousTestCase):
    @fuzz_target(
        "tree.decode_node",
        data=st.one_of(
            st.binary(max_size=600),
            st.builds(
                lambda head, body: head + body,
                st.tuples(
                    st.sampled_from([nodes.NODE_MAGIC, b"bbtm"]),
                    st.sampled_from([nodes.NODE_FORMAT, 0, 2]),
                    st.integers(0, 255),
                    st.sampled_from([0, 1, 2, 3, 1024, 1025, 65535]),
                ).map(lambda t: nodes.HEADER.pack(*t)),
                st.binary(max_size=400),
            ),
            synthetic_nodes,
            real_nodes,
            real_nodes.flatmap(mutated),
        ),
        # Mostly what the bytes claim (so the later checks are reached).
        level=st.one_of(st.none(), st.none(), st.integers(0, 40)),
        counts=st.one_of(
            st.tuples(st.integers(0, 2**64), st.integers(0, 2**64)),
            st.tuples(st.sampled_from([0, 1, -1]), st.sampled_from([0, 1, -1])),
            st.tuples(st.sampled_from([0, 1, -1]), st.sampled_from([0, 1, -1])),
        ),
        right_hash=st.sampled_from([True, True, True, False]),
    )
    def test_decode_node_accepts_only_what_it_promises(
        self,
        data: bytes,
        level: int | None,
        counts: tuple[int, int],
        right_hash: bool,
    ) -> None:
        digest = hashlib.sha256(data).digest() if right_hash else bytes(32)
        # What the bytes claim, nudged by -1..1, or any counts at all.
        claimed_level, entry_count, byte_count = _claims(data)
        if level is None:
            level = claimed_level
        if counts[0] in (0, 1, -1) and counts[1] in (0, 1, -1):
            counts = (entry_count + counts[0], byte_count + counts[1])
        if min(counts) < 0:
            return
        expected = nodes.NodeRef(digest, level, counts[0], counts[1], 0, 0)
        try:
            node = nodes.decode_node(data, expected)
        except nodes.InvalidNode:
            return
        self.assertTrue(right_hash)
        self.assertEqual(node.data, data)
        self.assertEqual(node.level, level)
        if isinstance(node, nodes.Leaf):
            lengths = node.lengths()
            self.assertEqual(len(lengths), expected.entry_count)
            self.assertEqual(sum(lengths), expected.byte_count)
            self.assertTrue(all(1 <= n <= tree.MAX_SECTION_BYTES for n in lengths))
        else:
            self.assertGreater(level, 0)
            self.assertEqual(
                sum(c.entry_count for c in node.children), expected.entry_count
            )
            self.assertEqual(
                sum(c.byte_count for c in node.children), expected.byte_count
            )
            self.assertTrue(all(c.level == level - 1 for c in node.children))

    @fuzz_target(
        "tree.corrupting_source",
        entries=tables,
        shape=SHAPES,
        victim=st.integers(0, 2**16),
        damage=st.sampled_from(["mutate", "swap", "drop", "foreign"]),
        mutation=st.data(),
        where=st.tuples(st.integers(0, 2**16), st.integers(0, 2**40)),
    )
    def test_a_corrupted_node_is_refused_never_believed(
        self,
        entries: list[Any],
        shape: Any,
        victim: int,
        damage: str,
        mutation: Any,
        where: tuple[int, int],
    ) -> None:
        root, store = _build(entries, shape)
        truth = _reads(root, store, *where)
        hashes = sorted(store)
        target = hashes[victim % len(hashes)]
        liar = Store(store)
        if damage == "mutate":
            liar[target] = mutation.draw(mutated(store[target]))
        elif damage == "swap":
            liar[target] = store[hashes[(victim + 1) % len(hashes)]]
        elif damage == "drop":
            del liar[target]
        else:
            other_root, other = _build(_entries(victim, 5), shape)
            liar[target] = other[other_root.hash]
        for name, result in _reads(root, _Lenient(liar), *where).items():
            if result is not KeyError:
                self.assertIn(result, (truth[name], nodes.InvalidNode), name)

    @fuzz_target(
        "tree.forging_owner",
        entries=tables,
        shape=SHAPES,
        victim=st.integers(0, 2**16),
        mutation=st.data(),
        where=st.tuples(st.integers(0, 2**16), st.integers(0, 2**40)),
        claimed=st.none() | st.tuples(st.integers(0, 60), st.integers(0, 2**30)),
        field=st.none() | st.tuples(st.integers(0, 2**16), st.integers(1, 2**22)),
    )
    def test_a_forged_tree_is_refused_or_consistent(
        self,
        entries: list[Any],
        shape: Any,
        victim: int,
        mutation: Any,
        where: tuple[int, int],
        claimed: tuple[int, int] | None,
        field: tuple[int, int] | None,
    ) -> None:
        root, store = _build(entries, shape)
        parents = _parents(root, store)
        hashes = sorted(store)
        target = hashes[victim % len(hashes)]
        forged = Store(store)
        # The owner changes a node and re-hashes the path up to the root,
        # then signs that root (with counts of its choosing).
        if field is None:
            data = mutation.draw(mutated(store[target]))
        else:
            # A count a reader must add up: an entry's length, or a child
            # record's entry or byte count, set to a plausible lie.
            item, value = field
            data = bytearray(store[target])
            size = nodes.ENTRY_BYTES if data[5] == 0 else nodes.CHILD_BYTES
            items = (len(data) - nodes.HEADER_BYTES) // size
            if items:
                start = nodes.HEADER_BYTES + (item % items) * size
                offset = 0 if size == nodes.ENTRY_BYTES else 32 + 8 * (value % 2)
                data[start + offset : start + offset + 8] = value.to_bytes(8, "big")
            data = bytes(data)
        digest = hashlib.sha256(data).digest()
        forged[digest] = data
        while target in parents:
            parent, position = parents[target]
            start = nodes.HEADER_BYTES + position * nodes.CHILD_BYTES
            patched = bytearray(forged[parent])
            patched[start : start + 32] = digest
            target, data = parent, bytes(patched)
            digest = hashlib.sha256(data).digest()
            forged[digest] = data
        entry_count, byte_count = claimed or (root.entry_count, root.byte_count)
        try:
            signed = tree.TreeRoot(digest, root.level, entry_count, byte_count)
        except tree.TreeError:
            return
        results = _reads(signed, _Lenient(forged), *where)
        got = results["entries"]
        if got is KeyError or isinstance(got, type):
            return
        # Whatever a reader accepts adds up to what was signed.
        self.assertEqual(len(got), signed.entry_count)
        self.assertEqual(sum(e.length for e in got), signed.byte_count)
        for name in ("at", "at_offset"):
            located = results.get(name)
            if isinstance(located, tree.Located):
                self.assertEqual(located.entry, got[located.index])
                start = sum(e.length for e in got[: located.index])
                self.assertEqual(located.offset, start)

    @fuzz_target(
        "tree.proofs",
        entries=tables.filter(bool),
        shape=SHAPES,
        index=st.integers(0, 2**16),
        claimed=st.integers(-1, 2**16),
        damage=st.sampled_from(["none", "mutate", "drop", "extra", "swap"]),
        mutation=st.data(),
    )
    def test_a_proof_proves_its_entry_or_is_refused(
        self,
        entries: list[Any],
        shape: Any,
        index: int,
        claimed: int,
        damage: str,
        mutation: Any,
    ) -> None:
        root, store = _build(entries, shape)
        index %= len(entries)
        proof = tree.prove(root, index, store)
        path = list(proof.nodes)
        position = mutation.draw(st.integers(0, len(path) - 1))
        if damage == "mutate":
            path[position] = mutation.draw(mutated(path[position]))
        elif damage == "drop":
            del path[position]
        elif damage == "extra":
            path.insert(position, path[position])
        elif damage == "swap":
            path[position] = store[sorted(store)[index % len(store)]]
        forged = tree.Proof(index if claimed < 0 else claimed, tuple(path))
        try:
            located = tree.verify_proof(root, index, forged)
        except tree.InvalidProof:
            return
        self.assertEqual(located.entry, entries[index])
        self.assertEqual(located.offset, sum(e.length for e in entries[:index]))
        self.assertEqual(tuple(path), proof.nodes)


class _Lenient:
    """A source whose missing node raises KeyError (a peer without it)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, digest: bytes) -> bytes:
        return self._store[digest]


# -- the chunked manifest ---------------------------------------------------

KEYS = ManifestKeys.from_node_keys(node_keys_from_master(bytes(32)))
OWNER = bytes(range(32))
COMPONENT = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="/\\\x00"),
    min_size=1,
    max_size=6,
).filter(lambda c: c not in (".", ".."))


def _record(name: str, size: int, sections: int, fields: tuple[int, ...]) -> Any:
    sections = 0 if size == 0 else max(1, min(size, sections))
    size = min(size, sections * tree.MAX_SECTION_BYTES)
    return FileRecord(name, size, *fields, section_count=sections)


record_fields = st.tuples(
    st.integers(0, 0o7777),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
file_records = st.lists(
    st.builds(
        _record,
        st.lists(COMPONENT, min_size=1, max_size=3).map("/".join),
        st.integers(0, 2**40),
        st.integers(0, 50),
        record_fields,
    ),
    max_size=12,
    unique_by=lambda r: sort_key(r.name),
).map(lambda records: sorted(records, key=lambda r: sort_key(r.name)))


def _plaintext(records: list[Any]) -> bytes:
    parts, previous = [chunk_header(len(records))], b""
    for record in records:
        parts.append(encode_record(record, previous))
        previous = record.name.encode()
    return b"".join(parts)


def _write_manifest(records: list[Any]) -> tuple[Any, Store, Store, int]:
    chunks, node_store = Store(), Store()
    writer = ManifestWriter(KEYS, OWNER, chunks, node_store)
    for record in records:
        writer.add(record)
    summary = writer.finish()
    return summary.tree, chunks, node_store, summary.section_count


class ManifestFuzz(SynchronousTestCase):
    @fuzz_target(
        "manifest.chunk_plaintext",
        cost=2,
        plaintext=st.one_of(
            file_records.filter(bool).map(_plaintext).flatmap(mutated),
            file_records.filter(bool).map(_plaintext),
            # Records out of order or repeated, each well encoded.
            file_records.filter(bool)
            .flatmap(lambda records: st.permutations(records + records[:1]))
            .map(_plaintext),
            st.binary(max_size=200),
            st.builds(
                lambda count, body: struct.pack(">BH", 1, count) + body,
                st.integers(0, 65535),
                st.binary(max_size=300),
            ),
        ),
    )
    def test_a_chunk_decodes_strictly_or_is_refused(self, plaintext: bytes) -> None:
        try:
            records = list(decode_chunk(plaintext))
        except InvalidManifest:
            return
        self.assertTrue(records)
        keys = [sort_key(r.name) for r in records]
        self.assertEqual(keys, sorted(set(keys)))
        # What decodes is records the writer could have written.
        self.assertEqual(list(decode_chunk(_plaintext(records))), records)

    @fuzz_target(
        "manifest.sealed_chunk",
        cost=2,
        records=file_records.filter(bool),
        mutation=st.data(),
    )
    def test_a_damaged_sealed_chunk_never_opens(
        self, records: list[Any], mutation: Any
    ) -> None:
        sealer = ChunkSealer(KEYS, OWNER)
        plaintext = _plaintext(records)
        sealed = sealer.seal(plaintext)
        damaged = mutation.draw(mutated(sealed))
        try:
            opened = sealer.open(damaged)
        except InvalidManifest:
            return
        self.assertEqual((damaged, opened), (sealed, plaintext))

    @fuzz_target(
        "manifest.reader",
        cost=2,
        records=file_records,
        victim=st.integers(0, 2**16),
        in_chunks=st.booleans(),
        mutation=st.data(),
        names=st.lists(st.one_of(texts(), COMPONENT), max_size=3),
    )
    def test_a_damaged_manifest_is_refused_never_believed(
        self,
        records: list[Any],
        victim: int,
        in_chunks: bool,
        mutation: Any,
        names: list[str],
    ) -> None:
        root, chunks, node_store, sections = _write_manifest(records)
        damaged = Store(chunks if in_chunks else node_store)
        if damaged:
            target = sorted(damaged)[victim % len(damaged)]
            damaged[target] = mutation.draw(mutated(damaged[target]))
        reader = ManifestReader(
            root,
            KEYS,
            OWNER,
            node_store if in_chunks else damaged,
            damaged if in_chunks else chunks,
            sections,
        )
        try:
            got = [placed.record for placed in reader.records()]
        except (InvalidManifest, KeyError):
            return
        self.assertEqual(got, records)
        for name in [*names, *(r.name for r in records[:2])]:
            try:
                found = reader.find(name)
            except ManifestError:
                continue
            wanted = [r for r in records if r.name == name]
            self.assertEqual([found.record] if found else [], wanted)


# -- signed revision roots --------------------------------------------------

OWNER_KEY = nacl.signing.SigningKey(bytes(32))
STRANGER_KEY = nacl.signing.SigningKey(bytes([1]) * 32)
OWNER_PUBKEY = bytes(OWNER_KEY.verify_key)


def _real_tree_ref(entries: list[Any]) -> Any:
    root, _ = _build(entries, tree.SECTION_TREE_SHAPE)
    return nodes.tree_ref_of(root)


# TreeRefs a real tree has, and ones with counts, levels and hashes on and
# past the format's edges (an empty tree above level 0, 2**64 - 1 bytes).
tree_refs = st.one_of(
    st.builds(_real_tree_ref, tables),
    messages(
        storedpb_pb2.TreeRef.DESCRIPTOR,
        overrides={
            "root_hash": st.sampled_from([bytes(32), b"", b"\x01" * 31, b"\x02" * 33]),
            "level": st.sampled_from([0, 1, nodes.MAX_LEVEL, nodes.MAX_LEVEL + 1]),
            "entry_count": st.sampled_from([0, 1, 2, nodes.MAX_ENTRIES, 2**64 - 1]),
            "byte_count": st.sampled_from(
                [0, 1, tree.MAX_SECTION_BYTES, tree.MAX_SECTION_BYTES + 1, 2**64 - 1]
            ),
        },
    ),
)


def _root_of(
    sections: Any, manifest: Any, number: int, honest: bool, fields: Any
) -> Any:
    """A RevisionRoot over these trees: the one the owner's code would
    write (``honest``), or with any field taken from a random root."""
    try:
        root = new_root(
            OWNER_PUBKEY,
            number,
            nodes.tree_root_of(sections),
            nodes.tree_root_of(manifest),
        )
    except tree.TreeError:
        root = storedpb_pb2.RevisionRoot(
            format=REVISION_FORMAT, owner_pubkey=OWNER_PUBKEY, number=number
        )
        root.sections.CopyFrom(sections)
        root.manifest.CopyFrom(manifest)
    if not honest:
        for field, value in fields.ListFields():
            if field.type == field.TYPE_MESSAGE:
                getattr(root, field.name).CopyFrom(value)
            else:
                setattr(root, field.name, value)
    return root


revision_roots = st.builds(
    _root_of,
    tree_refs,
    tree_refs,
    st.sampled_from([0, 1, 2**64 - 1]),
    st.booleans(),
    messages(
        storedpb_pb2.RevisionRoot.DESCRIPTOR,
        overrides={
            "format": st.sampled_from([REVISION_FORMAT, 0, 1, 3]),
            "owner_pubkey": st.sampled_from(
                [OWNER_PUBKEY, bytes(STRANGER_KEY.verify_key), b"", bytes(33)]
            ),
            "sections": tree_refs,
            "manifest": tree_refs,
        },
    ),
)


def _signed(root: Any, key: Any, extra: bytes = b"") -> bytes:
    """``root`` signed by ``key`` as a SignedRoot (``sign_root`` checks what
    it signs, so a forger is written out by hand)."""
    root_bytes = root.SerializeToString(deterministic=True) + extra
    signature = key.sign(SIGNATURE_LABEL + root_bytes).signature
    return storedpb_pb2.SignedRoot(
        root=root_bytes, signature=signature
    ).SerializeToString()


signed_roots = st.one_of(
    st.binary(max_size=200),
    st.builds(_signed, revision_roots, st.just(OWNER_KEY)),
    st.builds(_signed, revision_roots, st.just(STRANGER_KEY)),
    st.builds(_signed, revision_roots, st.just(OWNER_KEY)).flatmap(mutated),
    st.builds(
        _signed,
        revision_roots,
        st.just(OWNER_KEY),
        st.sampled_from([0, 3900, MAX_SIGNED_ROOT_BYTES]).map(
            # An unknown bytes field (number 100) of that size.
            lambda size: b"\xa2\x06" + _varint(size) + bytes(size)
        ),
    ),
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


class RevisionFuzz(SynchronousTestCase):
    @fuzz_target(
        "revisions.signed_root",
        signed=signed_roots,
        owner=st.sampled_from([None, OWNER_PUBKEY]),
    )
    # The owner's own honest root always verifies.
    @example(
        signed=_signed(
            _root_of(
                _real_tree_ref(_entries(1, 3)),
                _real_tree_ref(_entries(2, 1)),
                7,
                True,
                None,
            ),
            OWNER_KEY,
        ),
        owner=OWNER_PUBKEY,
    )
    def test_a_signed_root_verifies_or_is_refused(
        self, signed: bytes, owner: bytes | None
    ) -> None:
        try:
            verified = verify_root(signed, expected_owner=owner)
        except InvalidRevision:
            self.assertHonestWouldVerify(signed, owner)
            return
        # Only what the spec allows (docs/wire-protocol.md): small, signed
        # over its exact bytes by the key it names, trees that can exist,
        # length and hash bound to the section tree.
        self.assertLessEqual(len(signed), MAX_SIGNED_ROOT_BYTES)
        parsed = storedpb_pb2.SignedRoot.FromString(signed)
        root = storedpb_pb2.RevisionRoot.FromString(parsed.root)
        self.assertEqual(verified.root, root)
        self.assertEqual(root.format, REVISION_FORMAT)
        if owner is not None:
            self.assertEqual(verified.owner_pubkey, owner)
        nacl.signing.VerifyKey(verified.owner_pubkey).verify(
            SIGNATURE_LABEL + parsed.root, parsed.signature
        )
        self.assertEqual(
            verified.content_id,
            hashlib.sha256(CONTENT_ID_LABEL + parsed.root).digest(),
        )
        self.assertEqual(verified.sections, nodes.tree_root_of(root.sections))
        self.assertEqual(verified.manifest, nodes.tree_root_of(root.manifest))
        self.assertEqual(verified.content_length, verified.sections.byte_count)
        self.assertEqual(verified.content_sha256, content_sha256_of(verified.sections))

    def assertHonestWouldVerify(self, signed: bytes, owner: bytes | None) -> None:
        """A refusal is never of a root the owner's code writes: if these
        bytes are one (small, the owner's key, trees that exist, re-signed
        identically), verifying it must not have failed."""
        try:
            parsed = storedpb_pb2.SignedRoot.FromString(signed)
            root = storedpb_pb2.RevisionRoot.FromString(parsed.root)
            sections = nodes.tree_root_of(root.sections)
            manifest = nodes.tree_root_of(root.manifest)
        except (DecodeError, tree.TreeError):
            return
        if not (root.HasField("sections") and root.HasField("manifest")):
            return
        honest = new_root(OWNER_PUBKEY, root.number, sections, manifest)
        if _signed(honest, OWNER_KEY) != signed or len(signed) > MAX_SIGNED_ROOT_BYTES:
            return
        self.fail(f"the owner's honest root was refused (owner {owner!r})")


# -- names and paths from outside -------------------------------------------

path_texts = st.one_of(
    texts(),
    st.lists(st.sampled_from(["a", ".", "..", "", "é", " ", "x" * 255, "x" * 256]))
    .map("/".join)
    .flatmap(lambda s: st.sampled_from([s, "/" + s, s + "/"])),
)


class NameFuzz(SynchronousTestCase):
    def setUp(self) -> None:
        self.sandbox = Path(self.mktemp())
        (self.sandbox / "node" / "inner").mkdir(parents=True)
        (self.sandbox / "a").mkdir()

    @fuzz_target("content.file_names", name=st.one_of(path_texts, st.text()))
    def test_an_accepted_name_stays_inside_its_directory(self, name: str) -> None:
        try:
            self.assertEqual(validate_name(name), name)
        except InvalidFileName:
            return
        encoded = name.encode("utf-8")
        self.assertLessEqual(len(encoded), MAX_NAME_BYTES)
        self.assertFalse(name.startswith("/") or "\x00" in name or "\\" in name)
        for component in name.split("/"):
            self.assertNotIn(component, ("", ".", ".."))
            self.assertLessEqual(len(component.encode()), MAX_COMPONENT_BYTES)
        root = "/recovered"
        self.assertTrue(
            os.path.normpath(os.path.join(root, name)).startswith(root + "/")
        )

    @fuzz_target(
        "sources.paths",
        cost=2,
        path=st.one_of(path_texts, st.sampled_from(["", "/", "//", "/tmp/../"])),
        name=st.one_of(st.just(""), texts()),
        excludes=st.lists(
            st.one_of(texts(), st.sampled_from(HOSTILE_TEXT)), max_size=3
        ),
        in_sandbox=st.booleans(),
    )
    def test_an_accepted_source_is_a_clean_absolute_folder(
        self, path: str, name: str, excludes: list[str], in_sandbox: bool
    ) -> None:
        sandbox = self.sandbox
        if in_sandbox:
            path = str(sandbox) + "/" + path
        for check in (
            lambda: source_from_fields(path, name, excludes),
            lambda: new_source(path, name, excludes, node_dir=str(sandbox / "node")),
        ):
            try:
                source = check()
            except InvalidSource:
                continue
            self.assertTrue(source.path.startswith("/"))
            self.assertEqual(
                source.path, "/" + os.path.normpath(source.path).lstrip("/")
            )
            self.assertNotIn("\x00", source.path)
            self.assertEqual(validate_name(source.name), source.name)
            self.assertNotIn("/", source.name)
            self.assertEqual(source.excludes, tuple(excludes))
        try:
            source = new_source(path, name, excludes, node_dir=str(sandbox / "node"))
        except InvalidSource:
            return
        self.assertTrue(os.path.isdir(source.path))
        real = os.path.realpath(source.path)
        node = os.path.realpath(sandbox / "node")
        self.assertFalse(real == node or real.startswith(node + "/"))
