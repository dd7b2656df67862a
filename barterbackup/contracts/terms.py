"""Contract terms, their two signatures and the contract id.

A contract is written once by the proposer, signed by it, then signed by the
acceptor. Both signatures cover the same exact bytes: the deterministic
encoding of a storedpb.ContractTerms. Verification is strict: a blob is
accepted only if it is the canonical encoding of terms within every bound
below, signed by the keys the terms name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import nacl.exceptions
import nacl.signing
from google.protobuf.message import DecodeError, Message

from barterbackup._proto import storedpb_pb2

_M = TypeVar("_M", bound=Message)

TERMS_FORMAT = 1
# One label per role: a signature made as proposer can never pass as the
# acceptor's, even over the same bytes.
PROPOSER_LABEL = b"barterbackup v1 contract terms, proposer\x00"
ACCEPTOR_LABEL = b"barterbackup v1 contract terms, acceptor\x00"
CONTRACT_ID_LABEL = b"barterbackup v1 contract id\x00"

PUBKEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 16
# The smallest contract worth its checks and bookkeeping, and the largest
# one a node can honour (16 TiB: far above any disk a friend lends).
MIN_CONTRACT_BYTES = 1024 * 1024
MAX_CONTRACT_BYTES = 16 * 1024**4
# Checks at most every minute (the accelerated demo) and at least weekly.
MIN_CHECK_INTERVAL_SECONDS = 60
MAX_CHECK_INTERVAL_SECONDS = 7 * 24 * 3600
# 64 positions already detect a 7 % loss with 99 %; over 4096 costs the
# replica more random reads than a check is worth.
MIN_CHECK_SAMPLES = 64
MAX_CHECK_SAMPLES = 4096
# Over Tor an answer takes seconds; ten minutes is already generous.
MIN_ANSWER_DEADLINE_SECONDS = 10
MAX_ANSWER_DEADLINE_SECONDS = 600
# 2020-01-01 and 2200-01-01: anything outside is a broken clock or forgery.
EARLIEST_CREATED_AT = 1_577_836_800
LATEST_CREATED_AT = 7_258_118_400
# The canonical encoding of the largest valid terms is under 160 bytes and
# of the signed terms under 300; the caps leave room and stop anything big
# before it is parsed.
MAX_TERMS_BYTES = 256
MAX_SIGNED_TERMS_BYTES = 512


class InvalidTerms(ValueError):
    """Contract terms are malformed, out of bounds, or badly signed."""


@dataclass(frozen=True)
class CheckPolicy:
    """How often and how hard each side checks the other."""

    interval_seconds: int = 3600
    samples: int = 460
    answer_deadline_seconds: int = 60

    def validate(self) -> None:
        """Raise InvalidTerms unless every value is within its bounds."""
        _in_range(
            "check interval",
            self.interval_seconds,
            MIN_CHECK_INTERVAL_SECONDS,
            MAX_CHECK_INTERVAL_SECONDS,
            "seconds",
        )
        _in_range(
            "check samples", self.samples, MIN_CHECK_SAMPLES, MAX_CHECK_SAMPLES, ""
        )
        _in_range(
            "answer deadline",
            self.answer_deadline_seconds,
            MIN_ANSWER_DEADLINE_SECONDS,
            MAX_ANSWER_DEADLINE_SECONDS,
            "seconds",
        )
        if self.answer_deadline_seconds >= self.interval_seconds:
            raise InvalidTerms(
                f"answer deadline ({self.answer_deadline_seconds} s) must be "
                f"shorter than the check interval ({self.interval_seconds} s)"
            )


DEFAULT_CHECK_POLICY = CheckPolicy()


@dataclass(frozen=True)
class ContractTerms:
    """What the proposer and the acceptor agree to keep for each other."""

    proposer_pubkey: bytes
    acceptor_pubkey: bytes
    acceptor_keeps_bytes: int
    proposer_keeps_bytes: int
    check_policy: CheckPolicy
    created_at: int
    nonce: bytes = field(repr=False)

    def validate(self) -> None:
        """Raise InvalidTerms unless every field is within its bounds."""
        for name, key in (
            ("proposer", self.proposer_pubkey),
            ("acceptor", self.acceptor_pubkey),
        ):
            if len(key) != PUBKEY_BYTES:
                raise InvalidTerms(f"the {name} key must be {PUBKEY_BYTES} bytes")
        if self.proposer_pubkey == self.acceptor_pubkey:
            raise InvalidTerms("a node cannot make a contract with itself")
        for name, size in (
            ("the acceptor keeps", self.acceptor_keeps_bytes),
            ("the proposer keeps", self.proposer_keeps_bytes),
        ):
            _in_range(
                f"what {name}", size, MIN_CONTRACT_BYTES, MAX_CONTRACT_BYTES, "bytes"
            )
        self.check_policy.validate()
        _in_range(
            "creation time",
            self.created_at,
            EARLIEST_CREATED_AT,
            LATEST_CREATED_AT,
            "(Unix seconds)",
        )
        if len(self.nonce) != NONCE_BYTES:
            raise InvalidTerms(f"the contract nonce must be {NONCE_BYTES} bytes")

    def to_proto(self) -> storedpb_pb2.ContractTerms:
        return storedpb_pb2.ContractTerms(
            format=TERMS_FORMAT,
            proposer_pubkey=self.proposer_pubkey,
            acceptor_pubkey=self.acceptor_pubkey,
            acceptor_keeps_bytes=self.acceptor_keeps_bytes,
            proposer_keeps_bytes=self.proposer_keeps_bytes,
            check_policy=storedpb_pb2.CheckPolicy(
                interval_seconds=self.check_policy.interval_seconds,
                samples=self.check_policy.samples,
                answer_deadline_seconds=self.check_policy.answer_deadline_seconds,
            ),
            created_at=self.created_at,
            nonce=self.nonce,
        )

    def encode(self) -> bytes:
        """The exact bytes both sides sign (validated first)."""
        self.validate()
        return self.to_proto().SerializeToString(deterministic=True)

    @classmethod
    def decode(cls, data: bytes) -> ContractTerms:
        """Parse and validate the canonical encoding of terms."""
        if len(data) > MAX_TERMS_BYTES:
            raise InvalidTerms(
                f"contract terms are {len(data)} bytes, over {MAX_TERMS_BYTES}"
            )
        message = _parse_canonical(storedpb_pb2.ContractTerms, data, "contract terms")
        if message.format != TERMS_FORMAT:
            raise InvalidTerms(
                f"contract terms format {message.format} is not {TERMS_FORMAT}"
            )
        if not message.HasField("check_policy"):
            raise InvalidTerms("contract terms have no check policy")
        policy = message.check_policy
        terms = cls(
            proposer_pubkey=bytes(message.proposer_pubkey),
            acceptor_pubkey=bytes(message.acceptor_pubkey),
            acceptor_keeps_bytes=message.acceptor_keeps_bytes,
            proposer_keeps_bytes=message.proposer_keeps_bytes,
            check_policy=CheckPolicy(
                interval_seconds=policy.interval_seconds,
                samples=policy.samples,
                answer_deadline_seconds=policy.answer_deadline_seconds,
            ),
            created_at=message.created_at,
            nonce=bytes(message.nonce),
        )
        terms.validate()
        return terms


def new_terms(
    *,
    proposer_pubkey: bytes,
    acceptor_pubkey: bytes,
    acceptor_keeps_bytes: int,
    proposer_keeps_bytes: int,
    now: float,
    random_bytes: Callable[[int], bytes],
    check_policy: CheckPolicy = DEFAULT_CHECK_POLICY,
) -> ContractTerms:
    """Fresh terms for a proposal, with a random nonce; validated."""
    terms = ContractTerms(
        proposer_pubkey=proposer_pubkey,
        acceptor_pubkey=acceptor_pubkey,
        acceptor_keeps_bytes=acceptor_keeps_bytes,
        proposer_keeps_bytes=proposer_keeps_bytes,
        check_policy=check_policy,
        created_at=int(now),
        nonce=random_bytes(NONCE_BYTES),
    )
    terms.validate()
    return terms


def contract_id_of(terms_bytes: bytes) -> bytes:
    """SHA-256 of a label and the exact signed terms bytes.

    The id covers what is signed, not the signatures: a signer can make
    many valid signatures of the same bytes, and the id must not change
    with them. The nonce makes every contract's bytes, so its id, unique.
    """
    return hashlib.sha256(CONTRACT_ID_LABEL + terms_bytes).digest()


@dataclass(frozen=True)
class SignedTerms:
    """Terms with the proposer's signature and, once accepted, the acceptor's.

    Only this module's functions make them, so every instance was verified
    or signed here.
    """

    terms: ContractTerms
    terms_bytes: bytes = field(repr=False)
    proposer_signature: bytes = field(repr=False)
    acceptor_signature: bytes = field(default=b"", repr=False)

    @property
    def contract_id(self) -> bytes:
        return contract_id_of(self.terms_bytes)

    @property
    def accepted(self) -> bool:
        """True when the acceptor has signed too."""
        return bool(self.acceptor_signature)

    def encode(self) -> bytes:
        """The serialized storedpb.SignedContractTerms."""
        return storedpb_pb2.SignedContractTerms(
            terms=self.terms_bytes,
            proposer_signature=self.proposer_signature,
            acceptor_signature=self.acceptor_signature,
        ).SerializeToString(deterministic=True)


def propose(terms: ContractTerms, proposer_key: nacl.signing.SigningKey) -> SignedTerms:
    """Sign terms as their proposer; the key must be the one they name."""
    if bytes(proposer_key.verify_key) != terms.proposer_pubkey:
        raise InvalidTerms("the signing key is not the proposer named in the terms")
    terms_bytes = terms.encode()
    signature = proposer_key.sign(PROPOSER_LABEL + terms_bytes).signature
    return SignedTerms(terms, terms_bytes, signature)


def accept(proposal: SignedTerms, acceptor_key: nacl.signing.SigningKey) -> SignedTerms:
    """Countersign a verified proposal as its acceptor."""
    if bytes(acceptor_key.verify_key) != proposal.terms.acceptor_pubkey:
        raise InvalidTerms("the signing key is not the acceptor named in the terms")
    if proposal.accepted:
        raise InvalidTerms("the terms are already accepted")
    signature = acceptor_key.sign(ACCEPTOR_LABEL + proposal.terms_bytes).signature
    return SignedTerms(
        proposal.terms, proposal.terms_bytes, proposal.proposer_signature, signature
    )


def verify_proposal(
    blob: bytes, *, proposer: bytes | None = None, acceptor: bytes | None = None
) -> SignedTerms:
    """Verify a proposal: terms signed by the proposer only.

    ``proposer`` / ``acceptor``, when given, are the keys the caller expects
    (for example the authenticated peer that sent it, and this node).
    """
    signed = _verify(blob, proposer=proposer, acceptor=acceptor)
    if signed.accepted:
        raise InvalidTerms("a proposal must not carry the acceptor's signature yet")
    return signed


def verify_signed_terms(
    blob: bytes, *, proposer: bytes | None = None, acceptor: bytes | None = None
) -> SignedTerms:
    """Verify accepted terms: both signatures, by the keys the terms name."""
    signed = _verify(blob, proposer=proposer, acceptor=acceptor)
    if not signed.accepted:
        raise InvalidTerms("the terms are not signed by the acceptor")
    return signed


def _verify(
    blob: bytes, *, proposer: bytes | None, acceptor: bytes | None
) -> SignedTerms:
    if len(blob) > MAX_SIGNED_TERMS_BYTES:
        raise InvalidTerms(
            f"signed contract terms are {len(blob)} bytes, "
            f"over {MAX_SIGNED_TERMS_BYTES}"
        )
    message = _parse_canonical(
        storedpb_pb2.SignedContractTerms, blob, "signed contract terms"
    )
    terms_bytes = bytes(message.terms)
    terms = ContractTerms.decode(terms_bytes)
    if proposer is not None and terms.proposer_pubkey != proposer:
        raise InvalidTerms("the terms name another proposer than expected")
    if acceptor is not None and terms.acceptor_pubkey != acceptor:
        raise InvalidTerms("the terms name another acceptor than expected")
    proposer_signature = bytes(message.proposer_signature)
    acceptor_signature = bytes(message.acceptor_signature)
    _check_signature(
        "proposer",
        terms.proposer_pubkey,
        PROPOSER_LABEL,
        terms_bytes,
        proposer_signature,
    )
    if acceptor_signature:
        _check_signature(
            "acceptor",
            terms.acceptor_pubkey,
            ACCEPTOR_LABEL,
            terms_bytes,
            acceptor_signature,
        )
    return SignedTerms(terms, terms_bytes, proposer_signature, acceptor_signature)


def _check_signature(
    role: str, pubkey: bytes, label: bytes, terms_bytes: bytes, signature: bytes
) -> None:
    if len(signature) != SIGNATURE_BYTES:
        raise InvalidTerms(f"the {role}'s signature must be {SIGNATURE_BYTES} bytes")
    try:
        nacl.signing.VerifyKey(pubkey).verify(label + terms_bytes, signature)
    except (nacl.exceptions.CryptoError, ValueError):
        raise InvalidTerms(f"the {role}'s signature does not verify") from None


def _parse_canonical(kind: type[_M], data: bytes, what: str) -> _M:
    message = kind()
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise InvalidTerms(f"{what} do not parse") from None
    # Only the one canonical encoding is accepted: no unknown fields (they
    # survive re-serialization, so they are discarded first), no repeated or
    # reordered fields, so the signed bytes have exactly one meaning.
    message.DiscardUnknownFields()
    if message.SerializeToString(deterministic=True) != data:
        raise InvalidTerms(f"{what} are not in canonical encoding")
    return message


def _in_range(name: str, value: int, low: int, high: int, unit: str) -> None:
    if not low <= value <= high:
        unit_text = f" {unit}" if unit else ""
        raise InvalidTerms(
            f"{name} is {value}{unit_text}, outside {low}..{high}{unit_text}"
        )
