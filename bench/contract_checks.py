"""Spot-check cost and detection: wire bytes, reads and CPU per check.

For a content of 1 GiB and of 20 GiB (sections of 3-64 KiB averaging about
12 KiB, as the packer cuts them; the bytes are a tiled random MiB, since
only positions and reads matter here), each kind of check is built by the
owner, answered by the replica and verified, and the figures are:

* wire bytes: both messages framed as bbrpc sends them (4-byte header and
  the worst-case Envelope overhead, contracts.wire), against the goals
  (2 KiB for the digest check, 512 KiB for the sample check);
* replica reads: random reads (one per position) and bytes read;
* CPU per check on each side, and as a multiple of SHA-256 over 1 MiB
  measured in the same run (these machines are noisy; the ratio is the
  figure to compare).

Then the detection rate: 1,000 trials of each kind against a replica that
lost 1 % of its sections (4 MiB of random content, fixed seed), and 200
trials against an honest one.

Usage: python -m bench.contract_checks [--quick]   (--quick: 1 GiB only)
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import random
import sys
import time
from array import array
from collections.abc import Callable
from itertools import accumulate
from typing import Any

from barterbackup._proto import bbrpc_pb2
from barterbackup.contracts import digestcheck, samplecheck
from barterbackup.contracts.confidence import detection_probability
from barterbackup.contracts.heldcontent import HeldRevision, SectionEntry
from barterbackup.contracts.wire import framed_size
from barterbackup.testing.spotcheck import (
    AUDIT_KEY,
    LossyReplica,
    SyntheticContent,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
CHECKS = 20
TRIALS = 1000


class VirtualContent:
    """A large content whose bytes are a tiled random MiB."""

    def __init__(self, size: int, seed: int) -> None:
        rng = random.Random(seed)
        self.tile = rng.randbytes(MiB) * 2
        lengths = array("Q")
        total = 0
        while total < size:
            length = min(3 * KiB + int(rng.expovariate(1 / (9 * KiB))), 64 * KiB)
            length = min(length, size - total)
            lengths.append(length)
            total += length
        self.lengths = lengths
        self.starts = array("Q", accumulate(lengths, initial=0))
        self.starts.pop()
        self.size = size
        self.content_id = hashlib.sha256(b"virtual %d" % size).digest()
        self.reads = 0
        self.bytes_read = 0

    @property
    def held(self) -> HeldRevision:
        return HeldRevision(self.content_id, self.size)

    def read_at(self, offset: int, length: int) -> bytes:
        self.reads += 1
        self.bytes_read += length
        start = offset % MiB
        return self.tile[start : start + length]

    def section_count(self) -> int:
        return len(self.lengths)

    def section_length(self, index: int) -> int:
        return self.lengths[index]

    def read_section(self, index: int, offset: int, length: int) -> bytes:
        return self.read_at(self.starts[index] + offset, length)

    def content_length(self) -> int:
        return self.size

    def locate(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) - 1

    def entry(self, index: int) -> SectionEntry:
        # A real owner reads this from its section tree; here it is made on
        # demand (and its cost measured apart, to be left out).
        start, length = self.starts[index], self.lengths[index]
        sha256 = hashlib.sha256(b"section %d" % index).digest()
        section = _Section(self.tile, start, length)
        sealed = samplecheck.make_audit_samples(AUDIT_KEY, sha256, section)  # type: ignore[arg-type]
        return SectionEntry(length, sha256, sealed)


class _Section:
    def __init__(self, tile: bytes, start: int, length: int) -> None:
        self.tile, self.start, self.length = tile, start, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, offset: int) -> int:
        return self.tile[(self.start + offset) % MiB]


def cpu(work: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """CPU seconds of ``work(*args, **kwargs)``, and its result."""
    began = time.process_time()
    result = work(*args, **kwargs)
    return time.process_time() - began, result


def sha256_mib_seconds() -> float:
    data = random.Random(1).randbytes(MiB)
    began = time.process_time()
    for _ in range(50):
        hashlib.sha256(data).digest()
    return (time.process_time() - began) / 50


def cost_row(name: str, content: VirtualContent, baseline: float) -> list[str]:
    rng = random.Random(2)
    rows = []
    # Digest check.
    owner = replica = 0.0
    wire = reads = read_bytes = 0
    for _ in range(CHECKS):
        t, challenge = cpu(
            digestcheck.new_digest_challenge, content.content_id, rng.randbytes
        )
        content.reads = content.bytes_read = 0
        t_replica, answer = cpu(
            digestcheck.answer_digest_challenge, challenge, content.held, content
        )
        reads, read_bytes = content.reads, content.bytes_read
        t_verify, result = cpu(
            digestcheck.verify_digest_answer, challenge, content.size, content, answer
        )
        assert result.passed
        owner += t + t_verify
        replica += t_replica
        wire = framed_size(
            bbrpc_pb2.SpotCheckRequest(
                contract_id=bytes(32), digest=challenge.to_proto()
            )
        ) + framed_size(bbrpc_pb2.SpotCheckResponse(digest=answer))
    rows.append(
        _row(
            name,
            "digest",
            result.positions,
            wire,
            2 * KiB,
            reads,
            read_bytes,
            owner / CHECKS,
            replica / CHECKS,
            baseline,
        )
    )
    # Sample check; the owner's cost leaves out making the tree entries.
    owner = replica = entries = 0.0
    for number in range(CHECKS):
        t, (challenge, expectation) = cpu(
            samplecheck.new_sample_challenge,
            content_id=content.content_id,
            index=content,
            audit_key=AUDIT_KEY,
            check_number=number,
            random_bytes=rng.randbytes,
        )
        t_entries, _ = cpu(list, map(content.entry, challenge.sections))
        content.reads = content.bytes_read = 0
        t_replica, answer = cpu(
            samplecheck.answer_sample_challenge, challenge, content.held, content
        )
        reads, read_bytes = content.reads, content.bytes_read
        t_verify, result = cpu(samplecheck.verify_sample_answer, expectation, answer)
        assert result.passed
        owner += t + t_verify
        entries += t_entries
        replica += t_replica
        wire = framed_size(
            bbrpc_pb2.SpotCheckRequest(
                contract_id=bytes(32), sample=challenge.to_proto()
            )
        ) + framed_size(bbrpc_pb2.SpotCheckResponse(samples=answer))
    rows.append(
        _row(
            name,
            "sample",
            result.positions,
            wire,
            512 * KiB,
            reads,
            read_bytes,
            max(0.0, owner - entries) / CHECKS,
            replica / CHECKS,
            baseline,
        )
    )
    return rows


def _row(
    name: str,
    kind: str,
    positions: int,
    wire: int,
    goal: int,
    reads: int,
    read_bytes: int,
    owner: float,
    replica: float,
    baseline: float,
) -> str:
    return (
        f"{name:>6}  {kind:<6}  {positions:>9}  {wire:>7} B ({wire / goal:6.1%} of "
        f"goal)  {reads:>5} reads / {read_bytes:>6} B  owner {owner * 1e3:6.2f} ms "
        f"({owner / baseline:4.2f}x)  replica {replica * 1e3:6.2f} ms "
        f"({replica / baseline:4.2f}x)"
    )


def detection() -> list[str]:
    content = SyntheticContent(seed=11, size=4 * MiB)
    rng = random.Random(12)
    caught_digest = caught_sample = honest_failures = 0
    for number in range(TRIALS):
        lost = content.lose_one_percent(rng)
        replica = LossyReplica(content, lost, rng)
        challenge = digestcheck.new_digest_challenge(content.content_id, rng.randbytes)
        answer = digestcheck.answer_digest_challenge(challenge, content.held, replica)
        caught_digest += not digestcheck.verify_digest_answer(
            challenge, len(content.data), content, answer
        ).passed
        sample, expectation = samplecheck.new_sample_challenge(
            content_id=content.content_id,
            index=content,
            audit_key=AUDIT_KEY,
            check_number=number,
            random_bytes=rng.randbytes,
            positions=460,
        )
        answer = samplecheck.answer_sample_challenge(sample, content.held, replica)
        caught_sample += not samplecheck.verify_sample_answer(
            expectation, answer
        ).passed
    for number in range(200):
        challenge = digestcheck.new_digest_challenge(content.content_id, rng.randbytes)
        answer = digestcheck.answer_digest_challenge(challenge, content.held, content)
        honest_failures += not digestcheck.verify_digest_answer(
            challenge, len(content.data), content, answer
        ).passed
        sample, expectation = samplecheck.new_sample_challenge(
            content_id=content.content_id,
            index=content,
            audit_key=AUDIT_KEY,
            check_number=number,
            random_bytes=rng.randbytes,
        )
        answer = samplecheck.answer_sample_challenge(sample, content.held, content)
        honest_failures += not samplecheck.verify_sample_answer(
            expectation, answer
        ).passed
    return [
        f"digest check, 460 positions: caught {caught_digest} of {TRIALS} "
        f"({caught_digest / TRIALS:.1%}; expected "
        f"{detection_probability(460, 0.01):.2%})",
        f"sample check, 460 positions: caught {caught_sample} of {TRIALS} "
        f"({caught_sample / TRIALS:.1%}; expected "
        f"{detection_probability(460, 0.01, samplecheck.GUESS_PROBABILITY):.2%})",
        f"honest replica: {honest_failures} failures in 400 checks",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description="Spot-check cost and detection.")
    parser.add_argument("--quick", action="store_true", help="1 GiB only")
    args = parser.parse_args()
    baseline = sha256_mib_seconds()
    print(f"baseline: SHA-256 of 1 MiB = {baseline * 1e3:.2f} ms CPU")
    print(
        "content  check   positions  wire (both ways)           replica reads"
        "          CPU per check"
    )
    sizes = [("1 GiB", GiB)] if args.quick else [("1 GiB", GiB), ("20 GiB", 20 * GiB)]
    for name, size in sizes:
        content = VirtualContent(size, seed=3)
        print(f"  ({name}: {content.section_count()} sections)")
        for row in cost_row(name, content, baseline):
            print(row)
    print("detection, replica that lost 1 % of its sections (4 MiB, fixed seed):")
    for line in detection():
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
