"""The per-peer chat key as people handle it: generate, pass on, type back.

Two people agree on one 32-byte key out of band (``SetAeadKeyForPeer``).
``encode`` turns it into 56 base32 characters in groups of four with a
24-bit checksum, so a typo is caught when the key is typed back instead of
showing up later as "the chat keys do not match". ``fingerprint`` is short
enough to read aloud: both sides compare it to know they hold the same key
without saying the key.

Keys never appear in ``repr``, logs or exception messages: ``PeerKey``
shows only its fingerprint, and decoding errors name positions and counts,
never characters of what was typed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

KEY_LENGTH = 32
CHECKSUM_LENGTH = 3
# 32 key bytes + 3 checksum bytes = 280 bits = exactly 56 base32 characters,
# so the encoding needs no padding.
ENCODED_CHARACTERS = 56
GROUP_CHARACTERS = 4
GROUP_SEPARATOR = "-"
BASE32_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
FINGERPRINT_GROUPS = 4
FINGERPRINT_GROUP_HEX = 4

_CHECKSUM_LABEL = b"barterbackup v1 chat key checksum"
_FINGERPRINT_LABEL = b"barterbackup v1 chat key fingerprint"

RandomBytes = Callable[[int], bytes]


class PeerKeyError(ValueError):
    """A chat key is malformed; the message never contains the key."""


def generate(random_bytes: RandomBytes) -> bytes:
    """A fresh 32-byte chat key drawn from ``random_bytes`` (os.urandom)."""
    key = random_bytes(KEY_LENGTH)
    if len(key) != KEY_LENGTH:
        raise PeerKeyError(f"the random source gave {len(key)} bytes, not 32")
    return bytes(key)


def _checksum(key: bytes) -> bytes:
    return hashlib.sha256(_CHECKSUM_LABEL + key).digest()[:CHECKSUM_LENGTH]


def _check_length(key: bytes) -> None:
    if len(key) != KEY_LENGTH:
        raise PeerKeyError(f"a chat key is {KEY_LENGTH} bytes, not {len(key)}")


def encode(key: bytes) -> str:
    """The key as ``ABCD-EFGH-…`` (14 groups of 4), checksum included."""
    _check_length(key)
    text = base64.b32encode(key + _checksum(key)).decode("ascii")
    groups = [
        text[i : i + GROUP_CHARACTERS] for i in range(0, len(text), GROUP_CHARACTERS)
    ]
    return GROUP_SEPARATOR.join(groups)


def decode(text: str) -> bytes:
    """The key ``encode`` gave, from what a person typed or pasted.

    Case, spaces, line breaks and dashes do not matter. A wrong length, a
    character outside the alphabet or a typo (checksum mismatch) raises
    PeerKeyError.
    """
    compact = "".join(
        character
        for character in text.upper()
        if not character.isspace() and character != GROUP_SEPARATOR
    )
    for position, character in enumerate(compact, start=1):
        if character not in BASE32_ALPHABET:
            raise PeerKeyError(
                "a chat key uses the letters A-Z and the digits 2-7 only; "
                f"character {position} (not counting spaces and dashes) is "
                "not one of them"
            )
    if len(compact) != ENCODED_CHARACTERS:
        raise PeerKeyError(
            f"a chat key has {ENCODED_CHARACTERS} letters and digits, "
            f"this one has {len(compact)}"
        )
    raw = base64.b32decode(compact)
    key, checksum = raw[:KEY_LENGTH], raw[KEY_LENGTH:]
    if not hmac.compare_digest(checksum, _checksum(key)):
        raise PeerKeyError(
            "the chat key has a typo (its checksum does not match); "
            "check each group again"
        )
    return key


def fingerprint(key: bytes) -> str:
    """16 hex digits in 4 groups (64 bits) to compare by voice.

    It is a hash of the key under its own label, so it reveals nothing
    usable about the key and cannot be confused with the checksum.
    """
    _check_length(key)
    digest = hashlib.sha256(_FINGERPRINT_LABEL + key).hexdigest()
    width = FINGERPRINT_GROUP_HEX
    return " ".join(
        digest[i * width : (i + 1) * width] for i in range(FINGERPRINT_GROUPS)
    )


class PeerKey:
    """A 32-byte chat key that never shows itself.

    ``repr`` and ``str`` give only the fingerprint; ``secret`` is the one
    way to the bytes, so every use of them is easy to find.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        _check_length(secret)
        self._secret = bytes(secret)

    def secret(self) -> bytes:
        """The key bytes, for key derivation only."""
        return self._secret

    def fingerprint(self) -> str:
        return fingerprint(self._secret)

    def __repr__(self) -> str:
        return f"PeerKey(fingerprint={self.fingerprint()!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PeerKey):
            return NotImplemented
        return hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the key somewhere unsealed; refuse it.
        raise TypeError("a PeerKey cannot be pickled")
