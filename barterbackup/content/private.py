"""The private field of a section tree entry: what only the owner can open.

Each entry of the public section tree carries 48 bytes the tree never
interprets (``barterbackup.tree``). The content engine fills them at packing
time, when it holds the section's plaintext hash and ciphertext::

    private = wrapped plaintext hash (32) ‖ sealed audit samples (16)

**Wrapped plaintext hash.** The section key is derived from the plaintext's
SHA-256 (``sections.section_key``), so the owner needs that hash to decrypt;
storing it in the tree lets the revision's trees alone describe how to read
the content back, with no per-section table beside them::

    wrapped = plaintext_sha256 XOR BLAKE2b-256(key = wrap key,
                                               person = "bb plain wrap",
                                               data = ciphertext SHA-256)

The pad is a PRF of the ciphertext hash, which is a function of the
plaintext: an unchanged section gets an identical entry in every revision
(what lets replicas and ``TreeBuilder.copy_range`` reuse tree nodes), and
two different sections get independent pads, so the field is a one-time pad
encryption of the plaintext hash. Integrity comes from the signed root (the
entry is inside the tree's hashed nodes) and from the check after
decryption (the plaintext must hash to the unwrapped value).

**Audit samples.** The bytes at ``AUDIT_SLOTS`` secret positions of the
ciphertext, each XORed with a secret byte, so that a spot check can ask a
replica for single bytes without the owner holding the data
(``contracts.samplecheck``)::

    stream   = blocks 0, 1, 2 of BLAKE2b-512(key = audit key,
               data = label ‖ sha256 ‖ u64be(length) ‖ u64be(block))
    offset i = u64be(stream[8i : 8i + 8]) mod length        (i < 16)
    sealed i = ciphertext[offset i] XOR stream[128 + i]

(the counter-mode keyed BLAKE2b of ``contracts.prf``; a 64-bit value reduced
modulo a length of at most 2**22 is biased by less than 2**-42). Both
values are deterministic in the ciphertext hash, so equal sections still
have equal entries. Packing computes one entry's private field in about
6 µs of Python (three PRF blocks, the wrap, 16 byte reads).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from itertools import repeat
from operator import mod, xor

from barterbackup.keys import NodeKeys

# NodeKeys.subkey labels (one per purpose). The audit key's label is the one
# contracts/samplecheck.py introduced; it moved here with the sealing.
AUDIT_KEY_LABEL = "contract audit samples"
WRAP_KEY_LABEL = "section plaintext hash wrap"

SHA256_BYTES = 32
PRIVATE_BYTES = 48
WRAPPED_HASH_BYTES = 32
AUDIT_SLOTS = 16
AUDIT_SAMPLES_BYTES = AUDIT_SLOTS
# Where the samples sit in the 48-byte private field.
AUDIT_SAMPLES_OFFSET = WRAPPED_HASH_BYTES
SLOT_LABEL = b"barterbackup v1 audit sample positions\x00"
_WRAP_PERSON = b"bb plain wrap"
_PRF_BLOCK_BYTES = 64
_OFFSETS = struct.Struct(">16Q")
# Offsets take the first two PRF blocks (8 per block), seals the third.
_OFFSETS_PER_BLOCK = 8
_SEAL_BLOCK = 2
_COUNTERS = [block.to_bytes(8, "big") for block in range(3)]


class InvalidPrivateField(ValueError):
    """A private field or its inputs have the wrong shape."""


def audit_key_of(keys: NodeKeys) -> bytes:
    """The node's secret audit key."""
    return keys.subkey(AUDIT_KEY_LABEL)


def wrap_key_of(keys: NodeKeys) -> bytes:
    """The node's secret key for wrapping plaintext hashes."""
    return keys.subkey(WRAP_KEY_LABEL)


def _context(sha256: bytes, length: int) -> bytes:
    if len(sha256) != SHA256_BYTES:
        raise InvalidPrivateField(f"a section hash is {SHA256_BYTES} bytes")
    if length <= 0:
        raise InvalidPrivateField("an empty section has no audit samples")
    return sha256 + length.to_bytes(8, "big")


class _AuditStream:
    """The audit PRF with the key (and label) absorbed once.

    Keyed BLAKE2b processes the key as a first block, so copying a state
    that has absorbed key and label gives exactly ``contracts.prf``'s
    ``prf_block`` for the rest of the input, at a third of the cost.
    """

    def __init__(self, audit_key: bytes) -> None:
        if not 0 < len(audit_key) <= 64:
            raise InvalidPrivateField("an audit key is 1..64 bytes")
        self._base = hashlib.blake2b(key=audit_key, digest_size=_PRF_BLOCK_BYTES)
        self._base.update(SLOT_LABEL)

    def block(self, context: bytes, number: int) -> bytes:
        state = self._base.copy()
        state.update(context + _COUNTERS[number])
        return state.digest()

    def offsets(self, context: bytes, length: int) -> list[int]:
        values = _OFFSETS.unpack(self.block(context, 0) + self.block(context, 1))
        return list(map(mod, values, repeat(length)))

    def seals(self, context: bytes) -> bytes:
        return self.block(context, _SEAL_BLOCK)[:AUDIT_SLOTS]

    def offset(self, context: bytes, length: int, slot: int) -> int:
        if not 0 <= slot < AUDIT_SLOTS:
            raise InvalidPrivateField(f"a section has {AUDIT_SLOTS} audit slots")
        block, within = divmod(slot, _OFFSETS_PER_BLOCK)
        data = self.block(context, block)
        return int.from_bytes(data[8 * within : 8 * within + 8], "big") % length

    def samples(self, sha256: bytes, ciphertext: bytes | memoryview) -> bytes:
        """The sealed samples of a section whose ciphertext hash is ``sha256``.

        The packer's hot path (once per section): written out, C-level maps
        and no per-slot Python code.
        """
        length = len(ciphertext)
        context = _context(sha256, length)
        base = self._base
        first, second, third = base.copy(), base.copy(), base.copy()
        first.update(context + _COUNTERS[0])
        second.update(context + _COUNTERS[1])
        third.update(context + _COUNTERS[2])
        values = _OFFSETS.unpack(first.digest() + second.digest())
        picked = map(ciphertext.__getitem__, map(mod, values, repeat(length)))
        return bytes(map(xor, picked, third.digest()[:AUDIT_SLOTS]))


def make_audit_samples(
    audit_key: bytes, sha256: bytes, ciphertext: bytes | memoryview
) -> bytes:
    """The 16 sealed sample bytes of a section (packing time).

    ``sha256`` must be the hash of ``ciphertext``; it is not recomputed.
    """
    return _AuditStream(audit_key).samples(sha256, ciphertext)


def audit_slot_offsets(audit_key: bytes, sha256: bytes, length: int) -> list[int]:
    """The secret offsets of all AUDIT_SLOTS slots of a section."""
    return _AuditStream(audit_key).offsets(_context(sha256, length), length)


def audit_slot_offset(audit_key: bytes, sha256: bytes, length: int, slot: int) -> int:
    """The secret offset of one slot of a section (one PRF block)."""
    return _AuditStream(audit_key).offset(_context(sha256, length), length, slot)


@dataclass(frozen=True, repr=False)
class AuditSamples:
    """A section's opened samples: secret offsets and the bytes there."""

    offsets: tuple[int, ...]
    values: bytes

    def __repr__(self) -> str:
        return f"<AuditSamples of {len(self.offsets)} slots>"


def _check_sealed(sealed: bytes) -> None:
    if len(sealed) != AUDIT_SAMPLES_BYTES:
        raise InvalidPrivateField(f"audit samples are {AUDIT_SAMPLES_BYTES} bytes")


def open_audit_samples(
    audit_key: bytes, sha256: bytes, length: int, sealed: bytes
) -> AuditSamples:
    """Unseal a section's samples and recompute where they were taken."""
    _check_sealed(sealed)
    stream = _AuditStream(audit_key)
    context = _context(sha256, length)
    return AuditSamples(
        offsets=tuple(stream.offsets(context, length)),
        values=bytes(map(xor, sealed, stream.seals(context))),
    )


def open_audit_slot(
    audit_key: bytes, sha256: bytes, length: int, sealed: bytes, slot: int
) -> tuple[int, int]:
    """(offset, byte) of one slot: two PRF blocks (a check opens hundreds)."""
    _check_sealed(sealed)
    stream = _AuditStream(audit_key)
    context = _context(sha256, length)
    offset = stream.offset(context, length, slot)
    return offset, sealed[slot] ^ stream.seals(context)[slot]


def audit_samples_of_private(private: bytes) -> bytes:
    """The audit samples within a tree entry's 48-byte private field."""
    samples = private[AUDIT_SAMPLES_OFFSET : AUDIT_SAMPLES_OFFSET + AUDIT_SAMPLES_BYTES]
    if len(samples) != AUDIT_SAMPLES_BYTES:
        raise InvalidPrivateField(
            "the private field is too short to hold audit samples"
        )
    return samples


class PrivateFields:
    """Makes and opens the private fields of one node's sections.

    Holds the keyed PRF states, so the packer pays no key set-up per
    section. Safe to share between threads (every call copies the states).
    """

    def __init__(self, wrap_key: bytes, audit_key: bytes) -> None:
        if len(wrap_key) != 32:
            raise InvalidPrivateField("a wrap key is 32 bytes")
        self._wrap = hashlib.blake2b(
            key=wrap_key, digest_size=WRAPPED_HASH_BYTES, person=_WRAP_PERSON
        )
        self._audit = _AuditStream(audit_key)

    @classmethod
    def from_node_keys(cls, keys: NodeKeys) -> PrivateFields:
        return cls(wrap_key_of(keys), audit_key_of(keys))

    def _pad(self, sha256: bytes) -> int:
        state = self._wrap.copy()
        state.update(sha256)
        return int.from_bytes(state.digest(), "big")

    def make(
        self, plaintext_sha256: bytes, sha256: bytes, ciphertext: bytes | memoryview
    ) -> bytes:
        """The 48-byte private field of a section (packing time)."""
        wrapped = int.from_bytes(plaintext_sha256, "big") ^ self._pad(sha256)
        samples = self._audit.samples(sha256, ciphertext)
        return wrapped.to_bytes(WRAPPED_HASH_BYTES, "big") + samples

    def plaintext_sha256(self, sha256: bytes, private: bytes | memoryview) -> bytes:
        """The plaintext hash wrapped in an entry's private field."""
        if len(private) != PRIVATE_BYTES or len(sha256) != SHA256_BYTES:
            raise InvalidPrivateField("not a section entry's hash and private field")
        wrapped = int.from_bytes(private[:WRAPPED_HASH_BYTES], "big")
        return (wrapped ^ self._pad(sha256)).to_bytes(WRAPPED_HASH_BYTES, "big")
