"""Sections: chunking parameters, per-section keys, the content hash.

Each file is cut independently with FastCDC (gear hashing, via pyfastcdc), so
a section never spans two files and adding a file never re-reads another.
Each section is encrypted with AES-256-CTR under a key derived from the
content key and the section's plaintext hash with a zero nonce: one key per
distinct plaintext, so the (key, nonce) pair never encrypts two different
plaintexts, and an unchanged section has the same ciphertext in every
revision (what makes deltas possible).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# Chosen by measurement (docs/storage-format.md, bench/content_pack.py): for
# 160 scattered 64 KiB edits in 1 GiB of random data, new-section bytes /
# changed bytes was 1.34 at these sizes (mean section ~17 KiB), 1.45 at
# 16/4/64 KiB, 1.93 at 32/8/128 KiB, 1.25 at 8/4/64 KiB (but 1.6x the
# sections, so more per-section cost and a bigger table). pyfastcdc rounds
# the mask bits to log2(avg) and uses avg as the "normal size" switch point
# of normalized chunking, so 12 KiB is a valid, not a power-of-two, choice.
SECTION_AVERAGE_BYTES = 12 * 1024
SECTION_MIN_BYTES = 3 * 1024
SECTION_MAX_BYTES = 64 * 1024
# Normalized chunking level 1 (the FastCDC paper's and fastcdc-rs' default).
NORMALIZED_CHUNKING = 1

SECTION_KEY_LABEL = b"barterbackup v1 section key\x00"
CONTENT_SHA256_LABEL = b"barterbackup v1 content sha256\x00"
ZERO_NONCE = bytes(16)


def section_key(content_key: bytes, plaintext_sha256: bytes) -> bytes:
    """HMAC-SHA256(content_key, label ‖ SHA-256(plaintext))."""
    return hmac.digest(content_key, SECTION_KEY_LABEL + plaintext_sha256, "sha256")


def section_cipher(key: bytes) -> Cipher[modes.CTR]:
    """AES-256-CTR with a zero nonce (safe: the key is unique per plaintext)."""
    return Cipher(algorithms.AES(key), modes.CTR(ZERO_NONCE))


def content_sha256(table: Iterable[tuple[int, bytes]]) -> bytes:
    """SHA-256(label ‖ for each section: u64be length ‖ ciphertext sha256)."""
    digest = hashlib.sha256(CONTENT_SHA256_LABEL)
    for length, sha256 in table:
        digest.update(struct.pack(">Q", length))
        digest.update(sha256)
    return digest.digest()
