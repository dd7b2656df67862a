"""What a spot check reads: small protocols over a revision's ciphertext.

The check code is written against these, not against the section tree or
the pack store, so the node wires in whatever holds the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

CONTENT_ID_BYTES = 32


class ContentReader(Protocol):
    """Random access to one revision's content ciphertext."""

    def read_at(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes from ``offset``; short only past the end.

        A holder that lost the bytes raises (any exception) or returns what
        it has; either way the check fails.
        """


class SectionReader(Protocol):
    """Random access to the sections of one revision."""

    def section_count(self) -> int: ...

    def section_length(self, index: int) -> int: ...

    def read_section(self, index: int, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` within section ``index``."""


@dataclass(frozen=True)
class SectionEntry:
    """The part of a section tree entry a check without data needs."""

    length: int
    sha256: bytes
    # The 16 sealed bytes of samplecheck.make_audit_samples, kept in the
    # entry's private field.
    audit_samples: bytes


class SectionIndex(Protocol):
    """The owner's view of a revision's section tree (no section data)."""

    def content_length(self) -> int: ...

    def locate(self, offset: int) -> int:
        """The index of the section holding content byte ``offset``."""

    def entry(self, index: int) -> SectionEntry: ...


@dataclass(frozen=True)
class HeldRevision:
    """The revision of the owner's content a replica holds."""

    content_id: bytes
    content_length: int


class RevisionNotHeld(Exception):
    """The replica does not hold the revision a challenge names.

    The replica answers with an Error (STALE when it holds an older one,
    NOT_FOUND when none); the owner counts it as a failed check.
    """


class BadChallenge(ValueError):
    """A challenge is malformed or out of bounds; nothing was read."""


def require_held(content_id: bytes, held: HeldRevision | None) -> HeldRevision:
    """The held revision if it is the one named, else RevisionNotHeld."""
    if held is None:
        raise RevisionNotHeld("no revision of this content is held here")
    if held.content_id != content_id:
        raise RevisionNotHeld("the revision held here is not the one challenged")
    return held
