"""The spot check with a local copy: one hash over bytes at fresh positions.

The owner sends a fresh 32-byte nonce and the content id of its current
revision. Both sides derive the same positions from them (contracts.prf
keyed by the nonce: uniform over the content ciphertext, sorted so the
replica reads in one pass), take a run of RUN_LENGTH bytes at each, and hash
``label ‖ nonce ‖ content_id ‖ run_1 ‖ … ‖ run_n``. The owner compares the
replica's 32 bytes with the hash of its own copy.

* The positions exist only once the nonce does, so no answer can be
  prepared in advance: a table of answers to other nonces is useless.
* The content id is hashed in and names the current revision: a replica
  answering from an older revision reads other bytes (or, if it checks,
  refuses) and fails.
* Why 32-byte runs: a check costs one random read per position whatever
  the run (a disk reads 4 KiB pages), and hashing 15 KB is nothing, while
  longer runs also catch damage finer than a section: with scattered bad
  bytes at rate 0.1 %, 460 runs of 32 bytes miss them with probability
  e^-14.7, runs of 8 bytes with e^-3.7.

Traffic: the request is ~75 bytes and the answer ~35, well under 2 KiB.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from barterbackup._proto import bbrpc_pb2
from barterbackup.contracts import prf
from barterbackup.contracts.confidence import CheckResult
from barterbackup.contracts.heldcontent import (
    CONTENT_ID_BYTES,
    BadChallenge,
    ContentReader,
    HeldRevision,
    require_held,
)
from barterbackup.contracts.terms import MAX_CHECK_SAMPLES

POSITIONS_LABEL = b"barterbackup v1 digest check positions\x00"
DIGEST_LABEL = b"barterbackup v1 digest check answer\x00"
NONCE_BYTES = 32
DIGEST_BYTES = 32
RUN_LENGTH = 32
MAX_RUN_LENGTH = 64
DEFAULT_POSITIONS = 460


@dataclass(frozen=True)
class DigestChallenge:
    """One digest check: a fresh nonce and the revision it is about."""

    nonce: bytes = field(repr=False)
    content_id: bytes
    positions: int = DEFAULT_POSITIONS
    run_length: int = RUN_LENGTH

    def validate(self) -> None:
        """Raise BadChallenge unless every field is within its bounds."""
        if len(self.nonce) != NONCE_BYTES:
            raise BadChallenge(f"the nonce must be {NONCE_BYTES} bytes")
        if len(self.content_id) != CONTENT_ID_BYTES:
            raise BadChallenge(f"the content id must be {CONTENT_ID_BYTES} bytes")
        if not 1 <= self.positions <= MAX_CHECK_SAMPLES:
            raise BadChallenge(
                f"a check samples 1..{MAX_CHECK_SAMPLES} positions, "
                f"not {self.positions}"
            )
        if not 1 <= self.run_length <= MAX_RUN_LENGTH:
            raise BadChallenge(
                f"a run is 1..{MAX_RUN_LENGTH} bytes, not {self.run_length}"
            )

    def to_proto(self) -> bbrpc_pb2.DigestChallenge:
        return bbrpc_pb2.DigestChallenge(
            nonce=self.nonce,
            content_id=self.content_id,
            positions=self.positions,
            run_length=self.run_length,
        )

    @classmethod
    def from_proto(cls, message: bbrpc_pb2.DigestChallenge) -> DigestChallenge:
        challenge = cls(
            nonce=bytes(message.nonce),
            content_id=bytes(message.content_id),
            positions=message.positions,
            run_length=message.run_length,
        )
        challenge.validate()
        return challenge


def new_digest_challenge(
    content_id: bytes,
    random_bytes: Callable[[int], bytes],
    positions: int = DEFAULT_POSITIONS,
    run_length: int = RUN_LENGTH,
) -> DigestChallenge:
    """A challenge with a fresh nonce from ``random_bytes``."""
    challenge = DigestChallenge(
        random_bytes(NONCE_BYTES), content_id, positions, run_length
    )
    challenge.validate()
    return challenge


def digest_positions(challenge: DigestChallenge, content_length: int) -> list[int]:
    """The sorted offsets of the runs, and so what the replica reads."""
    run = min(challenge.run_length, content_length)
    if run == 0:
        return []
    context = challenge.content_id + content_length.to_bytes(8, "big")
    offsets = prf.uniform_offsets(
        challenge.nonce,
        POSITIONS_LABEL,
        context,
        challenge.positions,
        content_length - run + 1,
    )
    offsets.sort()
    return offsets


def digest_answer(
    challenge: DigestChallenge, content_length: int, reader: ContentReader
) -> bytes:
    """The 32-byte answer, computed from whatever ``reader`` holds."""
    challenge.validate()
    run = min(challenge.run_length, content_length)
    digest = hashlib.sha256(DIGEST_LABEL + challenge.nonce + challenge.content_id)
    for offset in digest_positions(challenge, content_length):
        digest.update(reader.read_at(offset, run))
    return digest.digest()


def answer_digest_challenge(
    challenge: DigestChallenge, held: HeldRevision | None, reader: ContentReader
) -> bytes:
    """The replica's side: answer for the revision it holds, if named.

    Raises RevisionNotHeld when the challenge names another revision.
    """
    challenge.validate()
    revision = require_held(challenge.content_id, held)
    return digest_answer(challenge, revision.content_length, reader)


def verify_digest_answer(
    challenge: DigestChallenge,
    content_length: int,
    own_copy: ContentReader,
    answer: bytes,
) -> CheckResult:
    """The owner's side: compare the answer with the hash of its own copy."""
    expected = digest_answer(challenge, content_length, own_copy)
    positions = len(digest_positions(challenge, content_length))
    passed = len(answer) == DIGEST_BYTES and hmac.compare_digest(expected, answer)
    return CheckResult(passed=passed, positions=positions)
