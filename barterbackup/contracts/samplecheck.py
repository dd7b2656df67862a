"""The spot check without the data: single bytes against sealed audit samples.

An owner that lost its copy (or no longer keeps a revision) still has, or
fetches with membership proofs, the section tree. At packing time, when it
had the ciphertext, it stored in each entry's private field 16 **audit
samples**: the bytes at AUDIT_SLOTS secret positions of the section, each
XORed with a secret byte, both drawn from a PRF of the section's hash and
length under the audit key (``barterbackup.content.private`` has the exact
derivation; the sealing lives there because the packer, below this layer,
makes the samples). So the replica, which reads the tree, learns neither
where the samples are nor what they hold. Both are deterministic in the
section's hash, so equal sections still have equal entries.

A check picks positions uniformly over the content bytes (so sections in
proportion to their length) and, for each, a slot of that section; it sends
the (section, offset) pairs and the replica answers with the byte at each,
read from the section data. A replica without the section can only guess:
it passes one position with probability 1/256.

What a replica learns per check: the positions asked and their bytes, a few
hundred of the 16 slots of every section. It could cache them and answer those again
without the data, so a slot should be asked once. Slots are therefore taken
in turn, ``(check_number + k) mod 16`` for the k-th draw of a section within
one check. A position can then be answered from a cache only if the same
slot of the same section was drawn before: in one of the checks 16, 32, …
earlier (or, for a section drawn several times in one check, a neighbouring
one). With n positions over S sections of similar size, the share of such
positions grows by about n/S every 16 checks: 1 GiB holds ~87,000 sections
of ~12 KiB, so 0.6 % per 16 checks of 480 positions; a replica gains from
it only for sections it dropped. Sample checks are the fallback of an owner
without its data, not the hourly check, so the bound is reached slowly; the
owner can always fall back on fetching whole sections and their hashes.

Traffic: ~6 bytes per position out and 1 back: ~3.4 KiB for 480 positions,
far under the 512 KiB goal, once the owner has the tree (fetched once per
revision and cached; 88 bytes per section).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from barterbackup._proto import bbrpc_pb2

# The sealing of the samples is the packer's (content layer, below this
# one); re-exported so the check's users find everything here.
from barterbackup.content.private import (
    AUDIT_KEY_LABEL,
    AUDIT_SAMPLES_BYTES,
    AUDIT_SAMPLES_OFFSET,
    AUDIT_SLOTS,
    AuditSamples,
    audit_key_of,
    audit_samples_of_private,
    audit_slot_offset,
    audit_slot_offsets,
    make_audit_samples,
    open_audit_samples,
    open_audit_slot,
)
from barterbackup.contracts import prf
from barterbackup.contracts.confidence import CheckResult
from barterbackup.contracts.heldcontent import (
    CONTENT_ID_BYTES,
    BadChallenge,
    HeldRevision,
    SectionIndex,
    SectionReader,
    require_held,
)
from barterbackup.contracts.terms import MAX_CHECK_SAMPLES

__all__ = [
    "AUDIT_KEY_LABEL",
    "AUDIT_SAMPLES_BYTES",
    "AUDIT_SAMPLES_OFFSET",
    "AUDIT_SLOTS",
    "DEFAULT_POSITIONS",
    "GUESS_PROBABILITY",
    "AuditSamples",
    "SampleChallenge",
    "SampleExpectation",
    "answer_sample_challenge",
    "audit_key_of",
    "audit_samples_of_private",
    "audit_slot_offset",
    "audit_slot_offsets",
    "make_audit_samples",
    "new_sample_challenge",
    "open_audit_samples",
    "verify_sample_answer",
]

PROBE_LABEL = b"barterbackup v1 sample check probes\x00"
SEED_BYTES = 32
# 461 positions reach 99 % for a 1 % loss when each missing byte is guessed
# with probability 1/256; 480 leave room for draws skipped on small content.
DEFAULT_POSITIONS = 480
# A guessed byte passes with this probability.
GUESS_PROBABILITY = 1 / 256


@dataclass(frozen=True)
class SampleChallenge:
    """The (section, offset) pairs whose bytes the replica must send."""

    content_id: bytes
    sections: tuple[int, ...]
    offsets: tuple[int, ...]

    def validate(self) -> None:
        """Raise BadChallenge unless the shape is within bounds."""
        if len(self.content_id) != CONTENT_ID_BYTES:
            raise BadChallenge(f"the content id must be {CONTENT_ID_BYTES} bytes")
        if len(self.sections) != len(self.offsets):
            raise BadChallenge("a sample challenge needs one offset per section")
        if not 1 <= len(self.sections) <= MAX_CHECK_SAMPLES:
            raise BadChallenge(
                f"a check samples 1..{MAX_CHECK_SAMPLES} positions, "
                f"not {len(self.sections)}"
            )

    def to_proto(self) -> bbrpc_pb2.SampleChallenge:
        return bbrpc_pb2.SampleChallenge(
            content_id=self.content_id, sections=self.sections, offsets=self.offsets
        )

    @classmethod
    def from_proto(cls, message: bbrpc_pb2.SampleChallenge) -> SampleChallenge:
        # The count is checked before the lists are copied.
        if len(message.sections) > MAX_CHECK_SAMPLES:
            raise BadChallenge(f"a check samples at most {MAX_CHECK_SAMPLES} positions")
        challenge = cls(
            bytes(message.content_id), tuple(message.sections), tuple(message.offsets)
        )
        challenge.validate()
        return challenge


@dataclass(frozen=True)
class SampleExpectation:
    """What the owner expects back; secret until the answer is in."""

    expected: bytes = field(repr=False)

    @property
    def positions(self) -> int:
        return len(self.expected)


def new_sample_challenge(
    *,
    content_id: bytes,
    index: SectionIndex,
    audit_key: bytes,
    check_number: int,
    random_bytes: Callable[[int], bytes],
    positions: int = DEFAULT_POSITIONS,
) -> tuple[SampleChallenge, SampleExpectation]:
    """Draw a check over the revision ``index`` describes.

    ``check_number`` counts the sample checks made on this revision (the
    caller persists it); it picks the slots so none repeats within 16
    checks. Fewer positions come out than asked only when a section is
    drawn more than 16 times in one check (a content of few sections).
    """
    if not 1 <= positions <= MAX_CHECK_SAMPLES:
        raise ValueError(f"a check samples 1..{MAX_CHECK_SAMPLES} positions")
    length = index.content_length()
    if length <= 0:
        raise ValueError("an empty content has nothing to check")
    seed = random_bytes(SEED_BYTES)
    draws = prf.uniform_offsets(seed, PROBE_LABEL, content_id, positions, length)
    drawn: dict[int, int] = {}
    probes: list[tuple[int, int, int]] = []
    for content_offset in draws:
        section = index.locate(content_offset)
        repeat = drawn.get(section, 0)
        if repeat >= AUDIT_SLOTS:
            continue
        drawn[section] = repeat + 1
        slot = (check_number + repeat) % AUDIT_SLOTS
        entry = index.entry(section)
        offset, value = open_audit_slot(
            audit_key, entry.sha256, entry.length, entry.audit_samples, slot
        )
        probes.append((section, offset, value))
    # Sorted, so the replica reads sections in order.
    probes.sort()
    challenge = SampleChallenge(
        content_id=content_id,
        sections=tuple(p[0] for p in probes),
        offsets=tuple(p[1] for p in probes),
    )
    return challenge, SampleExpectation(bytes(p[2] for p in probes))


def answer_sample_challenge(
    challenge: SampleChallenge, held: HeldRevision | None, reader: SectionReader
) -> bytes:
    """The replica's side: the byte at each asked position, in order.

    Raises RevisionNotHeld for another revision and BadChallenge (before
    reading anything) for positions outside the held sections.
    """
    challenge.validate()
    require_held(challenge.content_id, held)
    count = reader.section_count()
    for section, offset in zip(challenge.sections, challenge.offsets, strict=True):
        if section >= count or offset >= reader.section_length(section):
            raise BadChallenge(
                f"position {offset} of section {section} is not in the revision"
            )
    return b"".join(
        reader.read_section(section, offset, 1)[:1]
        for section, offset in zip(challenge.sections, challenge.offsets, strict=True)
    )


def verify_sample_answer(expectation: SampleExpectation, answer: bytes) -> CheckResult:
    """The owner's side: count the positions that differ."""
    expected = expectation.expected
    if len(answer) != len(expected):
        mismatches = len(expected)
    else:
        mismatches = sum(1 for a, b in zip(answer, expected, strict=True) if a != b)
    return CheckResult(
        passed=mismatches == 0 and hmac.compare_digest(answer, expected),
        positions=len(expected),
        mismatches=mismatches,
        miss_per_position=GUESS_PROBABILITY,
    )
