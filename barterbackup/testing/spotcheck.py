"""In-memory content for spot-check tests and benchmarks.

``SyntheticContent`` is a revision of random ciphertext cut into sections,
with the owner's view (section index with audit samples) and an honest
replica's (readers). ``LossyReplica`` is a replica that lost some sections
and guesses their bytes, as a cheating one would.
"""

from __future__ import annotations

import bisect
import hashlib
import random

from barterbackup.contracts import samplecheck
from barterbackup.contracts.heldcontent import HeldRevision, SectionEntry

KiB = 1024
AUDIT_KEY = b"a" * 32


class SyntheticContent:
    """A revision in memory: random ciphertext cut into sections.

    It is both the owner's view (reader, section index with audit samples)
    and an honest replica's.
    """

    def __init__(
        self,
        seed: int,
        size: int,
        section_sizes: tuple[int, int] = (2 * KiB, 8 * KiB),
        audit_key: bytes = AUDIT_KEY,
    ) -> None:
        rng = random.Random(seed)
        self.audit_key = audit_key
        self.data = rng.randbytes(size)
        self.starts: list[int] = []
        self.lengths: list[int] = []
        offset = 0
        while offset < size:
            length = min(rng.randint(*section_sizes), size - offset)
            self.starts.append(offset)
            self.lengths.append(length)
            offset += length
        self.content_id = hashlib.sha256(b"id" + self.data[:64]).digest()
        self.entries = []
        for index, length in enumerate(self.lengths):
            section = self.section(index)
            sha256 = hashlib.sha256(section).digest()
            self.entries.append(
                SectionEntry(
                    length,
                    sha256,
                    samplecheck.make_audit_samples(audit_key, sha256, section),
                )
            )

    @property
    def held(self) -> HeldRevision:
        return HeldRevision(self.content_id, len(self.data))

    def section(self, index: int) -> bytes:
        start = self.starts[index]
        return self.data[start : start + self.lengths[index]]

    # ContentReader
    def read_at(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    # SectionReader
    def section_count(self) -> int:
        return len(self.lengths)

    def section_length(self, index: int) -> int:
        return self.lengths[index]

    def read_section(self, index: int, offset: int, length: int) -> bytes:
        return self.section(index)[offset : offset + length]

    # SectionIndex
    def content_length(self) -> int:
        return len(self.data)

    def locate(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) - 1

    def entry(self, index: int) -> SectionEntry:
        return self.entries[index]

    def lose_one_percent(self, rng: random.Random) -> set[int]:
        """Random sections making up at least 1 % of the bytes."""
        lost: set[int] = set()
        total = 0
        target = len(self.data) / 100
        while total < target:
            index = rng.randrange(len(self.lengths))
            # Skip sections that would overshoot by more than 2 KiB, so the
            # loss is 1 % to 1.05 %, not more.
            if index not in lost and total + self.lengths[index] <= target + 2 * KiB:
                lost.add(index)
                total += self.lengths[index]
        return lost


class LossyReplica:
    """A replica that lost some sections and guesses their bytes."""

    def __init__(
        self, content: SyntheticContent, lost: set[int], rng: random.Random
    ) -> None:
        self.content = content
        self.lost = lost
        self.rng = rng

    def read_at(self, offset: int, length: int) -> bytes:
        first = self.content.locate(offset)
        last = self.content.locate(offset + length - 1)
        if not any(index in self.lost for index in range(first, last + 1)):
            return self.content.read_at(offset, length)
        out = bytearray(self.content.read_at(offset, length))
        for index in range(first, last + 1):
            if index in self.lost:
                start = max(self.content.starts[index], offset)
                end = min(
                    self.content.starts[index] + self.content.lengths[index],
                    offset + length,
                )
                out[start - offset : end - offset] = self.rng.randbytes(end - start)
        return bytes(out)

    def section_count(self) -> int:
        return self.content.section_count()

    def section_length(self, index: int) -> int:
        return self.content.section_length(index)

    def read_section(self, index: int, offset: int, length: int) -> bytes:
        if index in self.lost:
            return self.rng.randbytes(length)
        return self.content.read_section(index, offset, length)


def lost_fraction(content: SyntheticContent, lost: set[int]) -> float:
    """The share of the content's bytes in the ``lost`` sections."""
    return sum(content.lengths[i] for i in lost) / len(content.data)
