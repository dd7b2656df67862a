"""Signing and verifying revisions: a small signed root over two trees.

A revision is a ``storedpb.RevisionRoot``: the format, the owner's key, a
monotonic number, the content's length and SHA-256, and the roots of the
section tree (the public table of ciphertext sections) and of the manifest
tree (the sealed chunks of the file list). Its size does not grow with the
content. A ``SignedRoot`` carries the serialized root exactly as signed, so
every holder verifies the same bytes; the content_id is derived from those
bytes, never from a re-serialization.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing
from google.protobuf.message import DecodeError

from barterbackup._proto import storedpb_pb2
from barterbackup.tree import TreeError, TreeRoot
from barterbackup.tree.nodes import tree_ref_of, tree_root_of

SIGNATURE_LABEL = b"barterbackup v2 revision root\x00"
CONTENT_ID_LABEL = b"barterbackup v2 content id\x00"
CONTENT_SHA256_LABEL = b"barterbackup v2 content sha256\x00"
REVISION_FORMAT = 2
# A signed root is a few hundred bytes; anything near this is not one.
MAX_SIGNED_ROOT_BYTES = 4096
PUBKEY_LENGTH = 32
# The sealed node state (peers, contracts, settings) is a few KiB; a
# root naming a larger one is refused so a replica cannot be made to keep,
# nor an owner to fetch, anything big under that name.
MAX_NODE_STATE_BYTES = 4 * 1024 * 1024


class InvalidRevision(ValueError):
    """A signed root is malformed, badly signed, or not the owner's."""


@dataclass(frozen=True)
class VerifiedRevision:
    """A revision whose signature and structure checked out."""

    signed: bytes
    root: storedpb_pb2.RevisionRoot
    content_id: bytes
    sections: TreeRoot
    manifest: TreeRoot

    @property
    def number(self) -> int:
        return int(self.root.number)

    @property
    def owner_pubkey(self) -> bytes:
        return bytes(self.root.owner_pubkey)

    @property
    def content_length(self) -> int:
        return int(self.root.content_length)

    @property
    def content_sha256(self) -> bytes:
        return bytes(self.root.content_sha256)

    @property
    def section_count(self) -> int:
        return self.sections.entry_count

    @property
    def node_state(self) -> tuple[bytes, int] | None:
        """(SHA-256, length) of the sealed node state blob, if it has one."""
        if not self.root.HasField("node_state"):
            return None
        return bytes(self.root.node_state.sha256), int(self.root.node_state.length)


def content_sha256_of(sections: TreeRoot) -> bytes:
    """The content's SHA-256: a label and the section tree's root.

    The root hash already binds every section's length, ciphertext hash
    and private data, so this is O(1) and equal for equal content.
    """
    digest = hashlib.sha256(CONTENT_SHA256_LABEL)
    digest.update(sections.hash)
    digest.update(
        struct.pack(">BQQ", sections.level, sections.entry_count, sections.byte_count)
    )
    return digest.digest()


def content_id_of(root_bytes: bytes) -> bytes:
    digest = hashlib.sha256(CONTENT_ID_LABEL)
    digest.update(root_bytes)
    return digest.digest()


def new_root(
    owner_pubkey: bytes,
    number: int,
    sections: TreeRoot,
    manifest: TreeRoot,
    node_state: tuple[bytes, int] | None = None,
) -> storedpb_pb2.RevisionRoot:
    """The RevisionRoot of a revision with these trees (and the sealed
    node state blob named by (SHA-256, length))."""
    root = storedpb_pb2.RevisionRoot(
        format=REVISION_FORMAT,
        owner_pubkey=owner_pubkey,
        number=number,
        content_length=sections.byte_count,
        content_sha256=content_sha256_of(sections),
        sections=tree_ref_of(sections),
        manifest=tree_ref_of(manifest),
    )
    if node_state is not None:
        root.node_state.sha256, root.node_state.length = node_state
    return root


def sign_root(
    root: storedpb_pb2.RevisionRoot, signing_key: nacl.signing.SigningKey
) -> VerifiedRevision:
    """Sign ``root``; the result verifies as any holder would verify it."""
    root_bytes = root.SerializeToString(deterministic=True)
    signature = signing_key.sign(SIGNATURE_LABEL + root_bytes).signature
    signed = storedpb_pb2.SignedRoot(root=root_bytes, signature=signature)
    return verify_root(
        signed.SerializeToString(deterministic=True),
        expected_owner=bytes(signing_key.verify_key),
    )


def verify_root(
    signed_bytes: bytes, expected_owner: bytes | None = None
) -> VerifiedRevision:
    """Parse and check a SignedRoot; raise InvalidRevision on any fault.

    With ``expected_owner``, the revision must also belong to that key (a
    peer cannot hand us someone else's revision as its own).
    """
    if len(signed_bytes) > MAX_SIGNED_ROOT_BYTES:
        raise InvalidRevision("signed revision root is too large")
    try:
        signed = storedpb_pb2.SignedRoot.FromString(signed_bytes)
        root = storedpb_pb2.RevisionRoot.FromString(signed.root)
    except DecodeError:
        raise InvalidRevision("signed revision root is not a valid record") from None
    if root.format != REVISION_FORMAT:
        raise InvalidRevision(f"unknown revision format {root.format}")
    if len(root.owner_pubkey) != PUBKEY_LENGTH:
        raise InvalidRevision("revision owner key is not 32 bytes")
    if expected_owner is not None and root.owner_pubkey != expected_owner:
        raise InvalidRevision("revision belongs to another node")
    try:
        nacl.signing.VerifyKey(root.owner_pubkey).verify(
            SIGNATURE_LABEL + signed.root, signed.signature
        )
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise InvalidRevision("revision signature does not verify") from None
    if not root.HasField("sections") or not root.HasField("manifest"):
        raise InvalidRevision("revision root names no section or manifest tree")
    try:
        sections = tree_root_of(root.sections)
        manifest = tree_root_of(root.manifest)
    except TreeError as error:
        raise InvalidRevision(f"revision root: {error}") from None
    if root.content_length != sections.byte_count:
        raise InvalidRevision("revision content length and section tree disagree")
    if root.content_sha256 != content_sha256_of(sections):
        raise InvalidRevision("revision content_sha256 does not match its tree")
    if root.HasField("node_state") and (
        len(root.node_state.sha256) != 32
        or not 0 < root.node_state.length <= MAX_NODE_STATE_BYTES
    ):
        raise InvalidRevision("revision root names an invalid node state blob")
    return VerifiedRevision(
        signed=signed_bytes,
        root=root,
        content_id=content_id_of(signed.root),
        sections=sections,
        manifest=manifest,
    )
