"""Tor v3 onion identities computed locally (rend-spec-v3, "Encoding onion
addresses").

The node's onion key is an Ed25519 key derived from the master secret, so the
address is known before Tor is even started; the transport checks that Tor
reports the same one.
"""

from __future__ import annotations

import base64
import hashlib

import nacl.signing

ONION_VERSION = b"\x03"
CHECKSUM_LABEL = b".onion checksum"
ADDRESS_LENGTH = 56  # base32 of pubkey (32) + checksum (2) + version (1)
SUFFIX = ".onion"


class InvalidOnionAddress(ValueError):
    """A string is not a valid v3 onion address."""


def _checksum(pubkey: bytes) -> bytes:
    return hashlib.sha3_256(CHECKSUM_LABEL + pubkey + ONION_VERSION).digest()[:2]


def onion_address_from_pubkey(pubkey: bytes) -> str:
    """The ``xxx.onion`` address of a 32-byte Ed25519 public key."""
    if len(pubkey) != 32:
        raise ValueError("an onion public key is 32 bytes")
    raw = pubkey + _checksum(pubkey) + ONION_VERSION
    return base64.b32encode(raw).decode("ascii").lower() + SUFFIX


def pubkey_from_onion_address(address: str) -> bytes:
    """The Ed25519 public key of a v3 onion address, checking everything.

    Accepts the address with or without ``.onion``, in any letter case.
    """
    text = address.strip().lower()
    if text.endswith(SUFFIX):
        text = text[: -len(SUFFIX)]
    if len(text) != ADDRESS_LENGTH:
        raise InvalidOnionAddress(
            f"not a v3 onion address: {address!r} "
            f"(expected {ADDRESS_LENGTH} base32 characters before .onion)"
        )
    try:
        raw = base64.b32decode(text.upper())
    except ValueError:
        raise InvalidOnionAddress(
            f"not a v3 onion address: {address!r} (not base32)"
        ) from None
    pubkey, checksum, version = raw[:32], raw[32:34], raw[34:]
    if version != ONION_VERSION:
        raise InvalidOnionAddress(f"not a v3 onion address: {address!r}")
    if checksum != _checksum(pubkey):
        raise InvalidOnionAddress(
            f"onion address {address!r} has a wrong checksum (a typo?)"
        )
    return pubkey


def normalize_onion_address(address: str) -> str:
    """The canonical lowercase ``xxx.onion`` form, after validation."""
    return onion_address_from_pubkey(pubkey_from_onion_address(address))


def expanded_secret_key(seed: bytes) -> bytes:
    """The 64-byte expanded Ed25519 key Tor takes, from a 32-byte seed.

    SHA-512 of the seed with the scalar clamped, exactly as Ed25519 signing
    does internally, so the public key equals PyNaCl's for the same seed.
    """
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def tor_private_key_blob(seed: bytes) -> str:
    """The ``ED25519-V3:<base64>`` key string for ADD_ONION."""
    return "ED25519-V3:" + base64.b64encode(expanded_secret_key(seed)).decode("ascii")


def public_key_from_seed(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).verify_key)
