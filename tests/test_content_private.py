"""The private field of section entries: wrapped hashes and audit samples."""

from __future__ import annotations

import hashlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content import private
from barterbackup.content.private import (
    AUDIT_SLOTS,
    InvalidPrivateField,
    PrivateFields,
    audit_key_of,
    audit_samples_of_private,
    audit_slot_offset,
    audit_slot_offsets,
    make_audit_samples,
    open_audit_samples,
    open_audit_slot,
    wrap_key_of,
)
from barterbackup.contracts import prf
from barterbackup.keys.derive import node_keys_from_master

KEYS = node_keys_from_master(bytes(range(9, 41)))
FIELDS = PrivateFields.from_node_keys(KEYS)


def reference_samples(audit_key: bytes, sha256: bytes, ciphertext: bytes) -> bytes:
    """The documented derivation, spelled out with contracts.prf."""
    context = sha256 + len(ciphertext).to_bytes(8, "big")
    stream = b"".join(
        prf.prf_block(audit_key, private.SLOT_LABEL, context, block)
        for block in range(3)
    )
    offsets = [
        int.from_bytes(stream[8 * i : 8 * i + 8], "big") % len(ciphertext)
        for i in range(AUDIT_SLOTS)
    ]
    return bytes(ciphertext[o] ^ stream[128 + i] for i, o in enumerate(offsets))


class WrapTests(SynchronousTestCase):
    @settings(max_examples=50, deadline=None)
    @given(plain=st.binary(min_size=32, max_size=32), data=st.binary(min_size=1))
    def test_round_trip(self, plain: bytes, data: bytes) -> None:
        sha256 = hashlib.sha256(data).digest()
        field = FIELDS.make(plain, sha256, data)
        self.assertEqual(len(field), 48)
        self.assertEqual(FIELDS.plaintext_sha256(sha256, field), plain)
        # Deterministic: an unchanged section keeps its entry.
        self.assertEqual(FIELDS.make(plain, sha256, data), field)

    def test_wrapped_hash_is_not_the_hash(self) -> None:
        data = os.urandom(5000)
        plain = hashlib.sha256(data).digest()
        field = FIELDS.make(plain, hashlib.sha256(b"ct" + data).digest(), data)
        self.assertNotIn(plain, field)

    def test_other_keys_unwrap_to_other_bytes(self) -> None:
        other = PrivateFields.from_node_keys(node_keys_from_master(bytes(32)))
        data = os.urandom(300)
        sha256 = hashlib.sha256(data).digest()
        plain = os.urandom(32)
        field = FIELDS.make(plain, sha256, data)
        self.assertNotEqual(other.plaintext_sha256(sha256, field), plain)
        # The pad depends on the ciphertext hash it is stored with.
        moved = FIELDS.plaintext_sha256(hashlib.sha256(b"x").digest(), field)
        self.assertNotEqual(moved, plain)

    def test_keys_are_distinct_subkeys(self) -> None:
        self.assertNotEqual(wrap_key_of(KEYS), audit_key_of(KEYS))
        self.assertEqual(len(wrap_key_of(KEYS)), 32)

    def test_bad_shapes_refused(self) -> None:
        self.assertRaises(InvalidPrivateField, FIELDS.plaintext_sha256, b"x", bytes(48))
        self.assertRaises(
            InvalidPrivateField, FIELDS.plaintext_sha256, bytes(32), bytes(47)
        )
        self.assertRaises(InvalidPrivateField, FIELDS.make, bytes(32), bytes(32), b"")
        self.assertRaises(InvalidPrivateField, PrivateFields, b"short", bytes(32))


class AuditSampleTests(SynchronousTestCase):
    @settings(max_examples=50, deadline=None)
    @given(data=st.binary(min_size=1, max_size=5000))
    def test_samples_follow_the_documented_derivation(self, data: bytes) -> None:
        key = audit_key_of(KEYS)
        sha256 = hashlib.sha256(data).digest()
        expected = reference_samples(key, sha256, data)
        self.assertEqual(make_audit_samples(key, sha256, data), expected)
        field = FIELDS.make(bytes(32), sha256, data)
        self.assertEqual(audit_samples_of_private(field), expected)

    def test_opening_gives_the_bytes_at_the_offsets(self) -> None:
        key = audit_key_of(KEYS)
        data = os.urandom(20_000)
        sha256 = hashlib.sha256(data).digest()
        sealed = make_audit_samples(key, sha256, data)
        opened = open_audit_samples(key, sha256, len(data), sealed)
        offsets = audit_slot_offsets(key, sha256, len(data))
        self.assertEqual(list(opened.offsets), offsets)
        self.assertEqual(opened.values, bytes(data[o] for o in offsets))
        for slot in range(AUDIT_SLOTS):
            offset, value = open_audit_slot(key, sha256, len(data), sealed, slot)
            self.assertEqual(offset, offsets[slot])
            self.assertEqual(audit_slot_offset(key, sha256, len(data), slot), offset)
            self.assertEqual(value, data[offset])
        self.assertNotIn("offsets=", repr(opened))

    def test_bad_inputs_refused(self) -> None:
        key = audit_key_of(KEYS)
        self.assertRaises(InvalidPrivateField, audit_slot_offsets, key, b"x", 10)
        self.assertRaises(InvalidPrivateField, audit_slot_offsets, key, bytes(32), 0)
        self.assertRaises(
            InvalidPrivateField, open_audit_slot, key, bytes(32), 10, bytes(15), 0
        )
        self.assertRaises(
            InvalidPrivateField, audit_slot_offset, key, bytes(32), 10, AUDIT_SLOTS
        )
        self.assertRaises(InvalidPrivateField, audit_samples_of_private, bytes(40))
