"""The mutual, channel-bound bbrpc handshake, as pure functions.

Both sides send a Hello, then an Auth whose signature covers a transcript
built from *both* Hellos (both onion keys, both fresh nonces, the address the
client dialed) under a domain label and the signer's role. A signature from
one session is therefore useless in any other session, and useless in the
other role of the same session. docs/wire-protocol.md describes the bytes.

The state (which Hellos were seen, timers) lives in the connection; these
functions only build, check and sign.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct

import nacl.exceptions
import nacl.signing

from barterbackup._proto import bbrpc_pb2
from barterbackup.keys import onion
from barterbackup.keys.derive import NodeKeys

PROTOCOL_VERSION = 1
NONCE_LENGTH = 32
PUBKEY_LENGTH = 32
SIGNATURE_LENGTH = 64
# Tor circuits add little clock error, but home machines drift; ten minutes
# either way rejects long-stale replays without locking out sloppy clocks.
DEFAULT_MAX_CLOCK_SKEW = 600.0

DOMAIN_LABEL = b"barterbackup bbrpc v1 handshake\x00"


class Role(enum.Enum):
    """Which end of the connection a side is; part of what it signs."""

    CLIENT = b"client"
    SERVER = b"server"

    @property
    def other(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class HandshakeFailed(Exception):
    """The peer did not prove it is who it must be; the connection is dropped.

    The message says which check failed and never contains key material.
    """


def new_hello(
    keys: NodeKeys, nonce: bytes, now: float, dialed_address: str = ""
) -> bbrpc_pb2.Hello:
    """Our Hello. The client passes the address it dialed; the server none."""
    if len(nonce) != NONCE_LENGTH:
        raise ValueError(f"a handshake nonce is {NONCE_LENGTH} bytes")
    return bbrpc_pb2.Hello(
        protocol_version=PROTOCOL_VERSION,
        onion_pubkey=keys.onion_pubkey,
        peer_onion_address=dialed_address,
        nonce=nonce,
        timestamp=int(now),
    )


def hello_bytes(hello: bbrpc_pb2.Hello) -> bytes:
    """The bytes of a Hello that enter the transcript.

    Deterministic serialization of the parsed message; both sides compute it
    from the same field values, so they agree on it.
    """
    return hello.SerializeToString(deterministic=True)


def transcript(role: Role, client_hello: bytes, server_hello: bytes) -> bytes:
    """What the side playing ``role`` signs.

    DOMAIN_LABEL ‖ role ‖ SHA-256(len(C) ‖ C ‖ len(S) ‖ S), lengths as 4-byte
    big-endian, C and S the client's and server's hello_bytes().
    """
    digest = hashlib.sha256()
    for part in (client_hello, server_hello):
        digest.update(struct.pack(">I", len(part)))
        digest.update(part)
    return DOMAIN_LABEL + role.value + digest.digest()


def sign_transcript(
    keys: NodeKeys, role: Role, client_hello: bytes, server_hello: bytes
) -> bbrpc_pb2.Auth:
    """Our Auth for this session, signed with the onion identity key."""
    message = transcript(role, client_hello, server_hello)
    return bbrpc_pb2.Auth(signature=keys.signing_key.sign(message).signature)


def verify_auth(
    auth: bbrpc_pb2.Auth,
    peer_pubkey: bytes,
    peer_role: Role,
    client_hello: bytes,
    server_hello: bytes,
) -> None:
    """Raise HandshakeFailed unless the peer signed this session's transcript."""
    if len(auth.signature) != SIGNATURE_LENGTH:
        raise HandshakeFailed("peer's Auth signature has the wrong length")
    message = transcript(peer_role, client_hello, server_hello)
    try:
        nacl.signing.VerifyKey(peer_pubkey).verify(message, auth.signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        raise HandshakeFailed("peer's Auth signature does not verify") from None


def check_peer_hello(
    hello: bbrpc_pb2.Hello,
    *,
    our_role: Role,
    our_keys: NodeKeys,
    our_nonce: bytes,
    now: float,
    dialed_address: str = "",
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
) -> None:
    """Raise HandshakeFailed unless the peer's Hello is acceptable.

    The client (``our_role`` CLIENT) checks that the key is the one behind
    ``dialed_address``; the server checks that the client meant to reach us.
    """
    if hello.protocol_version < PROTOCOL_VERSION:
        raise HandshakeFailed(
            f"peer speaks protocol version {hello.protocol_version}, "
            f"we need {PROTOCOL_VERSION}"
        )
    if len(hello.onion_pubkey) != PUBKEY_LENGTH:
        raise HandshakeFailed("peer's onion key is not 32 bytes")
    if len(hello.nonce) != NONCE_LENGTH:
        raise HandshakeFailed(f"peer's nonce is not {NONCE_LENGTH} bytes")
    if hmac.compare_digest(hello.nonce, our_nonce):
        raise HandshakeFailed("peer reflected our own nonce")
    if hello.onion_pubkey == our_keys.onion_pubkey:
        raise HandshakeFailed("peer presents our own onion key")
    skew = hello.timestamp - now
    if abs(skew) > max_clock_skew:
        raise HandshakeFailed(
            f"peer's clock is {skew:+.0f} s off ours (limit ±{max_clock_skew:.0f} s)"
        )
    if our_role is Role.CLIENT:
        _check_server_is_dialed(hello, dialed_address)
    else:
        _check_client_meant_us(hello, our_keys)


def _check_server_is_dialed(hello: bbrpc_pb2.Hello, dialed_address: str) -> None:
    expected = onion.pubkey_from_onion_address(dialed_address)
    if hello.onion_pubkey != expected:
        shown = onion.onion_address_from_pubkey(hello.onion_pubkey)
        raise HandshakeFailed(
            f"dialed {onion.normalize_onion_address(dialed_address)} "
            f"but the server is {shown}"
        )
    if hello.peer_onion_address:
        raise HandshakeFailed("server's Hello names a peer address; it must not")


def _check_client_meant_us(hello: bbrpc_pb2.Hello, our_keys: NodeKeys) -> None:
    try:
        target = onion.normalize_onion_address(hello.peer_onion_address)
    except onion.InvalidOnionAddress:
        raise HandshakeFailed(
            "client's Hello does not name a valid onion address to reach"
        ) from None
    if target != our_keys.onion_address:
        raise HandshakeFailed(f"client wanted to reach {target}, not us")
