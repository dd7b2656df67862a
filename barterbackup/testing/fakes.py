"""A small fake of the content store, for tests of the data plane.

``FakeContentStore`` keeps "ciphertext" sections and real tree nodes in
memory and signs real revisions (real section and manifest trees, a real
signed root), so replicas verify them exactly as they would a content
engine's. Peer links are never faked: tests join real connections with
``barterbackup.testing.link``.
"""

from __future__ import annotations

import hashlib

import nacl.signing

from barterbackup.revisions import VerifiedRevision, new_root, sign_root
from barterbackup.tree import Entry, TreeBuilder


class BlobDict(dict[bytes, bytes]):
    """Blobs by hash, as a tree sink and source."""

    def put(self, node_hash: bytes, node_bytes: bytes) -> None:
        self[node_hash] = node_bytes

    def get(self, node_hash: bytes) -> bytes:  # type: ignore[override]
        try:
            return self[node_hash]
        except KeyError:
            raise KeyError("blob not held") from None


def make_revision(
    signing_key: nacl.signing.SigningKey,
    sections: list[bytes],
    number: int,
    blobs: BlobDict | None = None,
    manifest_chunks: list[bytes] | None = None,
) -> VerifiedRevision:
    """Sign a revision whose section tree lists ``sections`` (and whose
    manifest tree lists ``manifest_chunks``: one fake chunk by default).

    Every node, section and chunk goes into ``blobs``.
    """
    store = blobs if blobs is not None else BlobDict()
    chunks = manifest_chunks if manifest_chunks is not None else [b"fake manifest"]
    trees = []
    for items in (sections, chunks):
        builder = TreeBuilder(store)
        for data in items:
            sha256 = hashlib.sha256(data).digest()
            store.put(sha256, data)
            builder.add(Entry(len(data), sha256))
        trees.append(builder.finish())
    owner = bytes(signing_key.verify_key)
    return sign_root(new_root(owner, number, trees[0], trees[1]), signing_key)


class FakeContentStore:
    """An owner's content: the current revision and blobs by hash."""

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self.blobs = BlobDict()
        self.current: VerifiedRevision | None = None
        self.reads: list[bytes] = []

    def commit(self, sections: list[bytes]) -> VerifiedRevision:
        number = self.current.number + 1 if self.current else 1
        self.current = make_revision(self._signing_key, sections, number, self.blobs)
        return self.current

    def has_blob(self, sha256: bytes) -> bool:
        return sha256 in self.blobs

    def read_blob(self, sha256: bytes) -> bytes:
        self.reads.append(sha256)
        return self.blobs.get(sha256)

    def forget_blob(self, sha256: bytes) -> None:
        del self.blobs[sha256]
