"""Fuzzing what a replica reads from an owner during a sync: the
``DownloadResponse`` pieces a hostile owner streams back for the blobs
(tree nodes, sections, manifest chunks) the replica asks for.

The replica is the real ``RevisionFetcher`` over a real ``ReplicaStore``;
the owner answers each ``Download`` with its true blobs cut into pieces,
then tampers with them (bytes changed, pieces repeated, dropped, out of
order, with wrong offsets, lengths or hashes, blobs never asked for, a
flood of bytes, or another revision's blobs). The owner signed the
revision, so it may also sign one whose trees lie about their counts.
Properties: the sync either holds exactly the signed revision, every blob
of it the true bytes, or fails with ``FetchFailed`` keeping the previous
revision; nothing it stored is a wrong byte; a flood of pieces is cut off, not
buffered. See docs/wire-protocol.md,
"Fuzzing".
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import nacl.signing
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.revisions import (
    SIGNATURE_LABEL,
    InvalidRevision,
    content_sha256_of,
    verify_root,
)
from barterbackup.store.replicas import ReplicaStore
from barterbackup.sync.fetch import FetchFailed, RevisionFetcher, live_blobs
from barterbackup.testing.fakes import BlobDict, make_revision
from barterbackup.tree import TreeError
from barterbackup.tree.nodes import tree_root_of
from tests.fuzzing import fuzz_target, mutated, without_fsync

OWNER_KEY = nacl.signing.SigningKey(bytes([7]) * 32)
OWNER = bytes(OWNER_KEY.verify_key)
NAMES = bytes(range(32))
SEAL = bytes(range(32, 64))
TAMPERING = (
    "none",
    "mutate",
    "repeat",
    "drop",
    "reorder",
    "offset",
    "length",
    "hash",
    "unasked",
    "flood",
    "foreign",
)


async def _sent(response: Any) -> None:
    """Progress to the owner: delivered at once."""


def _grant(owner: bytes) -> int:
    return 50_000_000


class HostileOwner:
    """An owner's connection as the fetcher sees it: ``Download`` answered
    with the true blobs in pieces, then tampered with on ``tampered``
    calls (the first, say, so a retry meets honest bytes)."""

    peer_pubkey = OWNER
    peer_onion_address = "owner.onion"

    def __init__(
        self,
        blobs: BlobDict,
        foreign: BlobDict,
        tampering: str,
        piece: int,
        tampered: set[int],
        data: Any,
    ) -> None:
        self.blobs = blobs
        self.foreign = foreign
        self.tampering = tampering
        self.piece = piece
        self.tampered = tampered
        self.data = data
        self.calls = 0
        self.sent_bytes = 0

    def call(self, request_field: str, message: Any) -> defer.Deferred[Any]:
        return defer.fail(AssertionError(f"unexpected call {request_field}"))

    def call_stream(
        self, request_field: str, message: Any, on_item: Any
    ) -> defer.Deferred[None]:
        assert request_field == "download_request"
        pieces = self.pieces(list(message.blobs))
        if self.calls in self.tampered:
            pieces = self.tamper(pieces, list(message.blobs))
        self.calls += 1
        return defer.Deferred.fromCoroutine(self.stream(pieces, on_item))

    async def stream(self, pieces: list[Any], on_item: Any) -> None:
        for piece in pieces:
            self.sent_bytes += len(piece.data)
            result = on_item(piece)
            if isinstance(result, defer.Deferred):
                await result

    def pieces(self, hashes: list[bytes]) -> list[Any]:
        found = []
        for sha256 in hashes:
            blob = self.blobs.get(sha256) if sha256 in self.blobs else None
            if blob is None:
                continue  # an owner without it sends nothing for it
            for offset in range(0, len(blob), self.piece):
                data = blob[offset : offset + self.piece]
                found.append(
                    bbrpc_pb2.DownloadResponse(
                        blob=sha256,
                        offset=offset,
                        data=data,
                        sha256=hashlib.sha256(data).digest(),
                        blob_length=len(blob),
                    )
                )
        return found

    def tamper(self, pieces: list[Any], hashes: list[bytes]) -> list[Any]:
        draw, kind = self.data.draw, self.tampering
        if not pieces or kind == "none":
            return pieces
        at = draw(st.integers(0, len(pieces) - 1))
        victim = pieces[at]
        if kind == "mutate":
            victim.data = draw(mutated(bytes(victim.data)))
            if draw(st.booleans()):  # the owner also re-hashes the piece
                victim.sha256 = hashlib.sha256(victim.data).digest()
        elif kind == "repeat":
            pieces.insert(at, pieces[at])
        elif kind == "drop":
            del pieces[at]
        elif kind == "reorder":
            pieces.reverse()
        elif kind == "offset":
            victim.offset = draw(st.sampled_from([1, victim.offset + 1, 2**63]))
        elif kind == "length":
            victim.blob_length = draw(
                st.sampled_from([0, 1, victim.blob_length + 1, 2**40, 2**64 - 1])
            )
        elif kind == "hash":
            victim.sha256 = bytes(32)
        elif kind == "unasked":
            data = b"never asked for"
            sha256 = hashlib.sha256(data).digest()
            pieces.insert(
                at,
                bbrpc_pb2.DownloadResponse(
                    blob=sha256, data=data, sha256=sha256, blob_length=len(data)
                ),
            )
        elif kind == "flood":
            # The same piece over and over: far more bytes than asked.
            pieces[at:at] = [victim] * 2000
        elif kind == "foreign":
            # Another revision's blob under a hash we asked for.
            other = draw(st.sampled_from(sorted(self.foreign)))
            data = self.foreign[other]
            victim.data = data
            victim.offset = 0
            victim.sha256 = hashlib.sha256(data).digest()
            victim.blob_length = len(data)
        return pieces


def _sections(seed: int, count: int, size: int) -> list[bytes]:
    return [
        hashlib.sha256(b"%d %d" % (seed, n)).digest() * (1 + size // 32)
        for n in range(count)
    ]


def _lying(revision: Any, entries: int) -> bytes:
    """The owner's revision re-signed with its section tree's entry count
    changed (and its length and hash made to agree), if that can verify."""
    root = storedpb_pb2.RevisionRoot.FromString(
        storedpb_pb2.SignedRoot.FromString(revision.signed).root
    )
    root.sections.entry_count = max(1, root.sections.entry_count + entries)
    try:
        root.content_sha256 = content_sha256_of(tree_root_of(root.sections))
    except TreeError:
        return bytes(revision.signed)
    root_bytes = root.SerializeToString(deterministic=True)
    signature = OWNER_KEY.sign(SIGNATURE_LABEL + root_bytes).signature
    return storedpb_pb2.SignedRoot(
        root=root_bytes, signature=signature
    ).SerializeToString()


class FetchFuzz(SynchronousTestCase):
    def setUp(self) -> None:
        without_fsync(self)
        self.base = Path(self.mktemp())
        self.base.mkdir()
        self.addCleanup(shutil.rmtree, self.base, True)
        self.examples = 0

    @fuzz_target(
        "sync.download_responses",
        cost=3,
        seed=st.integers(0, 2**16),
        count=st.integers(1, 40),
        size=st.sampled_from([1, 100, 3000]),
        held_first=st.booleans(),
        tampering=st.sampled_from(TAMPERING),
        piece=st.sampled_from([7, 64, 1 << 20]),
        tampered=st.sets(st.integers(0, 3), max_size=3),
        lie=st.sampled_from([0, 0, 0, 1, -1]),
        data=st.data(),
    )
    def test_a_sync_holds_the_signed_revision_or_fails_keeping_the_old(
        self,
        seed: int,
        count: int,
        size: int,
        held_first: bool,
        tampering: str,
        piece: int,
        tampered: set[int],
        lie: int,
        data: Any,
    ) -> None:
        self.examples += 1
        store = ReplicaStore.open(self.base / str(self.examples), _grant, NAMES, SEAL)
        self.addCleanup(store.close)
        blobs = BlobDict()
        old = None
        if held_first:
            # An older revision held whole: the new one shares its first half.
            old = make_revision(OWNER_KEY, _sections(seed, count // 2, size), 1, blobs)
            store.begin(OWNER, old.signed)
            store.store_blobs(
                OWNER,
                old.content_id,
                [(h, blobs[h]) for h in live_blobs(old, blobs)],
            )
            store.finish(OWNER, old.content_id, lambda: live_blobs(old, blobs))
        sections = _sections(seed, count // 2, size) + _sections(~seed, count, size)
        revision = make_revision(OWNER_KEY, sections, 2, blobs)
        signed = revision.signed if not lie else _lying(revision, lie)
        foreign = BlobDict()
        make_revision(OWNER_KEY, _sections(seed + 1, 3, size), 3, foreign)
        try:
            pending = store.begin(OWNER, signed)
        except InvalidRevision:
            return  # a lie that does not even verify
        owner = HostileOwner(blobs, foreign, tampering, piece, tampered, data)
        fetcher = RevisionFetcher(owner, store, OWNER, pending, _sent, Clock())
        done = fetcher.run()
        failures: list[Any] = []
        done.addErrback(failures.append)
        self.assertTrue(done.called, "the sync hung")
        held = store.held(OWNER)
        assert held is not None
        if failures:
            failures[0].trap(FetchFailed)
            # The previous revision is still the one held.
            self.assertEqual(held.held, old)
        else:
            # Only the true, whole revision: every blob it references is
            # stored, and is the owner's true bytes.
            assert held.held is not None
            self.assertEqual(held.held.signed, signed)
            self.assertEqual(held.held.sections, revision.sections)
            for sha256 in live_blobs(revision, blobs):
                self.assertEqual(store.read_blob(OWNER, sha256), blobs[sha256])
        # Nothing stored, fetched or not, is a wrong byte.
        for sha256 in [*blobs, *foreign]:
            if store.has_blob(OWNER, sha256):
                stored = store.read_blob(OWNER, sha256)
                self.assertEqual(hashlib.sha256(stored).digest(), sha256)
        # Only roots the owner signed are kept, held or pending.
        verify_root(held.shown.signed, expected_owner=OWNER)
