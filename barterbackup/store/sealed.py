"""AEAD-sealed records: AES-256-GCM with a random 96-bit nonce.

Layout of a sealed blob: ``nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)``.
The associated data names the record's purpose, so a blob sealed for one
purpose (say Metadata) cannot be passed off as another.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_LENGTH = 12
TAG_LENGTH = 16


class SealedRecordError(ValueError):
    """A sealed record failed authentication: tampered, truncated or foreign."""


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    nonce = os.urandom(NONCE_LENGTH)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes, what: str) -> bytes:
    """Decrypt and authenticate; ``what`` names the record in the error."""
    if len(sealed) < NONCE_LENGTH + TAG_LENGTH:
        raise SealedRecordError(f"{what} is truncated")
    nonce, body = sealed[:NONCE_LENGTH], sealed[NONCE_LENGTH:]
    try:
        return AESGCM(key).decrypt(nonce, body, associated_data)
    except InvalidTag:
        raise SealedRecordError(
            f"{what} failed authentication (corrupted, or sealed with another key)"
        ) from None
