"""A small fake of the content store, for tests of the data plane.

``FakeContentStore`` holds "ciphertext" sections in memory and signs
revisions with a real key, so replicas verify them exactly as they would
real ones. Peer links are never faked: tests join real connections with
``barterbackup.testing.link``.
"""

from __future__ import annotations

import hashlib

import nacl.signing

from barterbackup._proto import storedpb_pb2
from barterbackup.revisions import REVISION_FORMAT, VerifiedRevision, sign_revision


def make_revision(
    signing_key: nacl.signing.SigningKey, sections: list[bytes], number: int
) -> VerifiedRevision:
    """Sign a revision whose section table describes ``sections``."""
    table = [
        storedpb_pb2.SectionRef(length=len(s), sha256=hashlib.sha256(s).digest())
        for s in sections
    ]
    revision = storedpb_pb2.ContentRevision(
        format=REVISION_FORMAT,
        owner_pubkey=bytes(signing_key.verify_key),
        number=number,
        content_length=sum(len(s) for s in sections),
        content_sha256=hashlib.sha256(b"".join(r.sha256 for r in table)).digest(),
        sections=table,
        sealed_manifest=b"fake sealed manifest",
    )
    return sign_revision(revision, signing_key)


class FakeContentStore:
    """An owner's content: the current revision and sections by hash."""

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self._sections: dict[bytes, bytes] = {}
        self.current: VerifiedRevision | None = None
        self.reads: list[bytes] = []

    def commit(self, sections: list[bytes]) -> VerifiedRevision:
        number = self.current.number + 1 if self.current else 1
        self.current = make_revision(self._signing_key, sections, number)
        for data in sections:
            self._sections[hashlib.sha256(data).digest()] = data
        return self.current

    def has_section(self, sha256: bytes) -> bool:
        return sha256 in self._sections

    def read_section(self, sha256: bytes) -> bytes:
        self.reads.append(sha256)
        try:
            return self._sections[sha256]
        except KeyError:
            raise KeyError("section not held") from None

    def forget_section(self, sha256: bytes) -> None:
        del self._sections[sha256]
