"""Sections: chunking parameters and per-section keys.

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
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import (
    Cipher,
    CipherContext,
    algorithms,
    modes,
)

# Chosen by measurement for the delta goal (python -m bench.chunking; the
# table is in docs/storage-format.md): after 160 scattered 64 KiB edits
# and a new 1 MiB file in 1 GiB, new sections plus new tree nodes and
# manifest chunks are 1.28x the changed bytes at 8/4/64 KiB (mean section
# ~10.6 KiB), against 1.39x at 12/3/64 (over the 1.3 goal before the wire
# protocol's own bytes). The price: 1.58x the sections, so ~37 % more CPU
# per packed byte and a bigger blob index (6 bytes a blob).
SECTION_AVERAGE_BYTES = 8 * 1024
SECTION_MIN_BYTES = 4 * 1024
SECTION_MAX_BYTES = 64 * 1024
# Normalized chunking level 1 (the FastCDC paper's and fastcdc-rs' default).
NORMALIZED_CHUNKING = 1

SECTION_KEY_LABEL = b"barterbackup v1 section key\x00"
ZERO_NONCE = bytes(16)
# Modes are immutable: one CTR object serves every section cipher.
_ZERO_NONCE_CTR = modes.CTR(ZERO_NONCE)
_SHA256_BLOCK_BYTES = 64


def section_key(content_key: bytes, plaintext_sha256: bytes) -> bytes:
    """HMAC-SHA256(content_key, label ‖ SHA-256(plaintext))."""
    return hmac.digest(content_key, SECTION_KEY_LABEL + plaintext_sha256, "sha256")


def section_cipher(key: bytes) -> Cipher[modes.CTR]:
    """AES-256-CTR with a zero nonce (safe: the key is unique per plaintext)."""
    return Cipher(algorithms.AES(key), _ZERO_NONCE_CTR)


def _public_encryptor(key: bytes) -> CipherContext:
    return Cipher(algorithms.AES(key), _ZERO_NONCE_CTR).encryptor()


def _find_context_factory() -> Callable[[bytes], CipherContext]:
    """cryptography's own context constructor, if this version has it.

    Packing creates one cipher per ~17 KiB section, and ``Cipher(...)
    .encryptor()`` spends most of its ~4-5 µs in Python-level argument
    checks (ABC instance checks, key size, nonce length) that are constant
    here: about a quarter of single-threaded packing time. The Rust
    function that ``encryptor()`` calls skips them. It is not public API, so
    any doubt (missing, or not giving the public path's bytes) falls back.
    """
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        create = rust_openssl.ciphers.create_encryption_ctx
    except (ImportError, AttributeError):
        return _public_encryptor

    def encryptor(key: bytes) -> CipherContext:
        return create(algorithms.AES(key), _ZERO_NONCE_CTR)

    probe_key, probe = bytes(range(32)), bytes(range(48))
    try:
        same = encryptor(probe_key).update(probe) == (
            _public_encryptor(probe_key).update(probe)
        )
    except Exception:
        same = False
    return encryptor if same else _public_encryptor


_context_factory = _find_context_factory()


def section_encryptor(key: bytes) -> CipherContext:
    """A ready AES-256-CTR encryptor for one section (``section_cipher``).

    CTR needs no ``finalize``: ``update``/``update_into`` return every byte.
    """
    return _context_factory(key)


class SectionKeyDeriver:
    """``section_key`` for one content key, ~2.5x faster per call.

    The packing path derives one key per ~17 KiB section; ``hmac.digest``
    costs ~1.6 µs a call here, mostly setting up the keyed pads. This is
    the same HMAC-SHA256 (RFC 2104) with the inner and outer pad states
    hashed once and copied per call (~0.65 µs); the output bytes are
    identical (tests compare it with ``section_key``).
    """

    def __init__(self, content_key: bytes) -> None:
        if len(content_key) > _SHA256_BLOCK_BYTES:
            content_key = hashlib.sha256(content_key).digest()
        padded = content_key.ljust(_SHA256_BLOCK_BYTES, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._inner.update(SECTION_KEY_LABEL)
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def key(self, plaintext_sha256: bytes) -> bytes:
        """HMAC-SHA256(content_key, label ‖ plaintext_sha256)."""
        inner = self._inner.copy()
        inner.update(plaintext_sha256)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()
