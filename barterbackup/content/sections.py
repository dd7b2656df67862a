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

# Chosen with bench/content_pack.py: 160 scattered 64 KiB edits in 1 GiB cost
# about 1.3x the changed bytes in new sections at these sizes (pyfastcdc's
# actual mean is avg + min, about 20 KiB).
SECTION_AVERAGE_BYTES = 16 * 1024
SECTION_MIN_BYTES = 4 * 1024
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
