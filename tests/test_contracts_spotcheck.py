"""Spot checks: with a local copy (digest) and without the data (samples).

The statistical tests run on synthetic content in memory with a fixed seed,
so their figures are the same on every run.
"""

from __future__ import annotations

import hashlib
import random

from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.contracts import confidence as c
from barterbackup.contracts import digestcheck as d
from barterbackup.contracts import samplecheck as s
from barterbackup.contracts.heldcontent import (
    BadChallenge,
    HeldRevision,
    RevisionNotHeld,
)
from barterbackup.contracts.wire import framed_size
from barterbackup.testing.spotcheck import (
    AUDIT_KEY,
    LossyReplica,
    SyntheticContent,
    lost_fraction,
)

KiB = 1024
MiB = 1024 * KiB


class DigestCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.content = SyntheticContent(seed=1, size=1 * MiB)
        self.rng = random.Random(2)

    def challenge(self, positions: int = 460) -> d.DigestChallenge:
        return d.new_digest_challenge(
            self.content.content_id, self.rng.randbytes, positions=positions
        )

    def test_honest_replica_passes(self) -> None:
        for _ in range(50):
            challenge = self.challenge()
            answer = d.answer_digest_challenge(
                challenge, self.content.held, self.content
            )
            result = d.verify_digest_answer(
                challenge, len(self.content.data), self.content, answer
            )
            self.assertTrue(result.passed)
            self.assertEqual(result.positions, 460)

    def test_positions_are_uniform_sorted_and_depend_on_the_nonce(self) -> None:
        first = d.digest_positions(self.challenge(4096), len(self.content.data))
        second = d.digest_positions(self.challenge(4096), len(self.content.data))
        self.assertEqual(first, sorted(first))
        self.assertNotEqual(first, second)
        self.assertLessEqual(max(first), len(self.content.data) - d.RUN_LENGTH)
        # Each eighth of the content gets its share (4096/8 = 512 ± 25 %).
        eighths = [0] * 8
        for offset in first:
            eighths[offset * 8 // len(self.content.data)] += 1
        for count in eighths:
            self.assertTrue(384 <= count <= 640, eighths)

    def test_precomputed_answers_fail(self) -> None:
        table = []
        for _ in range(200):
            earlier = self.challenge()
            table.append(
                d.answer_digest_challenge(earlier, self.content.held, self.content)
            )
        fresh = self.challenge()
        for answer in table:
            result = d.verify_digest_answer(
                fresh, len(self.content.data), self.content, answer
            )
            self.assertFalse(result.passed)

    def test_old_revision_fails(self) -> None:
        old = SyntheticContent(seed=1, size=1 * MiB - 4 * KiB)
        old.content_id = hashlib.sha256(b"old").digest()
        challenge = self.challenge()
        # A replica that checks what it holds refuses the challenge ...
        with self.assertRaises(RevisionNotHeld):
            d.answer_digest_challenge(challenge, old.held, old)
        with self.assertRaises(RevisionNotHeld):
            d.answer_digest_challenge(challenge, None, old)
        # ... and one that answers anyway from the old bytes fails.
        answer = d.digest_answer(challenge, len(old.data), old)
        result = d.verify_digest_answer(
            challenge, len(self.content.data), self.content, answer
        )
        self.assertFalse(result.passed)
        self.assertIn("does not match", result.summary())

    def test_one_changed_byte_under_a_run_fails(self) -> None:
        challenge = self.challenge()
        offset = d.digest_positions(challenge, len(self.content.data))[100] + 5
        damaged = bytearray(self.content.data)
        damaged[offset] ^= 1
        replica = SyntheticContent(seed=1, size=1 * MiB)
        replica.data = bytes(damaged)
        answer = d.answer_digest_challenge(challenge, self.content.held, replica)
        self.assertFalse(
            d.verify_digest_answer(
                challenge, len(self.content.data), self.content, answer
            ).passed
        )

    def test_wrong_length_answer_fails(self) -> None:
        challenge = self.challenge()
        result = d.verify_digest_answer(
            challenge, len(self.content.data), self.content, b"\x00" * 31
        )
        self.assertFalse(result.passed)

    def test_tiny_content(self) -> None:
        tiny = SyntheticContent(seed=3, size=10)
        challenge = d.new_digest_challenge(tiny.content_id, self.rng.randbytes)
        self.assertEqual(d.digest_positions(challenge, 10), [0] * 460)
        answer = d.answer_digest_challenge(challenge, tiny.held, tiny)
        self.assertTrue(d.verify_digest_answer(challenge, 10, tiny, answer).passed)
        self.assertEqual(d.digest_positions(challenge, 0), [])

    def test_challenge_bounds_and_round_trip(self) -> None:
        challenge = self.challenge()
        self.assertEqual(d.DigestChallenge.from_proto(challenge.to_proto()), challenge)
        for bad in (
            bbrpc_pb2.DigestChallenge(
                nonce=b"n" * 31, content_id=b"c" * 32, positions=460, run_length=32
            ),
            bbrpc_pb2.DigestChallenge(
                nonce=b"n" * 32, content_id=b"c" * 33, positions=460, run_length=32
            ),
            bbrpc_pb2.DigestChallenge(
                nonce=b"n" * 32, content_id=b"c" * 32, positions=0, run_length=32
            ),
            bbrpc_pb2.DigestChallenge(
                nonce=b"n" * 32, content_id=b"c" * 32, positions=4097, run_length=32
            ),
            bbrpc_pb2.DigestChallenge(
                nonce=b"n" * 32, content_id=b"c" * 32, positions=460, run_length=65
            ),
        ):
            with self.assertRaises(BadChallenge):
                d.DigestChallenge.from_proto(bad)

    def test_traffic_is_under_two_kib(self) -> None:
        challenge = self.challenge()
        request = bbrpc_pb2.SpotCheckRequest(
            contract_id=b"k" * 32, digest=challenge.to_proto()
        )
        answer = d.answer_digest_challenge(challenge, self.content.held, self.content)
        response = bbrpc_pb2.SpotCheckResponse(digest=answer)
        total = framed_size(request) + framed_size(response)
        self.assertLessEqual(total, 2 * KiB)
        self.assertLessEqual(total, 200, "about 180 bytes: nonce, ids, one hash")


class AuditSampleTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        data = random.Random(4).randbytes(12 * KiB)
        sha = hashlib.sha256(data).digest()
        sealed = s.make_audit_samples(AUDIT_KEY, sha, data)
        self.assertEqual(len(sealed), s.AUDIT_SAMPLES_BYTES)
        opened = s.open_audit_samples(AUDIT_KEY, sha, len(data), sealed)
        self.assertEqual(opened.values, bytes(data[o] for o in opened.offsets))
        self.assertEqual(len(opened.offsets), s.AUDIT_SLOTS)
        self.assertEqual(
            list(opened.offsets), s.audit_slot_offsets(AUDIT_KEY, sha, len(data))
        )
        for slot in range(s.AUDIT_SLOTS):
            self.assertEqual(
                s.audit_slot_offset(AUDIT_KEY, sha, len(data), slot),
                opened.offsets[slot],
            )
        self.assertNotIn("values", repr(opened))

    def test_deterministic_sealed_and_keyed(self) -> None:
        data = random.Random(5).randbytes(8 * KiB)
        sha = hashlib.sha256(data).digest()
        sealed = s.make_audit_samples(AUDIT_KEY, sha, data)
        self.assertEqual(sealed, s.make_audit_samples(AUDIT_KEY, sha, data))
        opened = s.open_audit_samples(AUDIT_KEY, sha, len(data), sealed)
        self.assertNotEqual(sealed, opened.values, "the samples are not in clear")
        other = s.make_audit_samples(b"b" * 32, sha, data)
        self.assertNotEqual(sealed, other)
        self.assertNotEqual(
            s.audit_slot_offsets(b"b" * 32, sha, len(data)), list(opened.offsets)
        )

    def test_offsets_cover_the_section(self) -> None:
        seen = [0] * 4
        for index in range(500):
            sha = hashlib.sha256(index.to_bytes(4, "big")).digest()
            for offset in s.audit_slot_offsets(AUDIT_KEY, sha, 4000):
                seen[offset // 1000] += 1
        for count in seen:
            self.assertTrue(1700 <= count <= 2300, seen)

    def test_bad_inputs(self) -> None:
        with self.assertRaises(ValueError):
            s.make_audit_samples(AUDIT_KEY, b"short", b"data")
        with self.assertRaises(ValueError):
            s.make_audit_samples(AUDIT_KEY, b"s" * 32, b"")
        with self.assertRaises(ValueError):
            s.open_audit_samples(AUDIT_KEY, b"s" * 32, 10, b"x" * 15)

    def test_private_field_layout(self) -> None:
        private = b"w" * 32 + b"S" * 16
        self.assertEqual(s.audit_samples_of_private(private), b"S" * 16)
        with self.assertRaises(ValueError):
            s.audit_samples_of_private(b"w" * 40)


class SampleCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.content = SyntheticContent(seed=6, size=1 * MiB)
        self.rng = random.Random(7)

    def challenge(
        self, check_number: int = 0, positions: int = 480
    ) -> tuple[s.SampleChallenge, s.SampleExpectation]:
        return s.new_sample_challenge(
            content_id=self.content.content_id,
            index=self.content,
            audit_key=AUDIT_KEY,
            check_number=check_number,
            random_bytes=self.rng.randbytes,
            positions=positions,
        )

    def test_honest_replica_passes(self) -> None:
        for number in range(30):
            challenge, expectation = self.challenge(number)
            answer = s.answer_sample_challenge(
                challenge, self.content.held, self.content
            )
            result = s.verify_sample_answer(expectation, answer)
            self.assertTrue(result.passed)
            self.assertEqual(result.positions, 480)
            self.assertEqual(result.mismatches, 0)
        self.assertEqual(
            result.summary(),
            "passed: 480 positions sampled; ≥ 99.1 % confidence that under 1 % "
            "is missing",
        )

    def test_positions_are_secret_slots(self) -> None:
        challenge, _ = self.challenge(check_number=3)
        for section, offset in zip(challenge.sections, challenge.offsets, strict=True):
            entry = self.content.entry(section)
            slots = s.audit_slot_offsets(AUDIT_KEY, entry.sha256, entry.length)
            self.assertIn(offset, slots)
        self.assertEqual(list(challenge.sections), sorted(challenge.sections))

    def test_slots_taken_in_turn(self) -> None:
        # A section drawn in check n is asked at slot n mod 16 (first draw).
        entry = self.content.entry(0)
        slots = s.audit_slot_offsets(AUDIT_KEY, entry.sha256, entry.length)
        asked: dict[int, set[int]] = {}
        for number in range(16):
            challenge, _ = self.challenge(number, positions=4096)
            asked[number] = {
                o
                for sec, o in zip(challenge.sections, challenge.offsets, strict=True)
                if sec == 0
            }
        for number in range(16):
            if asked[number]:
                self.assertIn(slots[number], asked[number])

    def test_lost_section_is_caught(self) -> None:
        challenge, expectation = self.challenge()
        lost = set(challenge.sections[:3])
        replica = LossyReplica(self.content, lost, random.Random(8))
        answer = s.answer_sample_challenge(challenge, self.content.held, replica)
        result = s.verify_sample_answer(expectation, answer)
        self.assertFalse(result.passed)
        self.assertIsNotNone(result.mismatches)
        self.assertGreaterEqual(result.mismatches or 0, 1)
        self.assertIn("did not match", result.summary())

    def test_old_revision_and_bad_positions_refused(self) -> None:
        challenge, _ = self.challenge()
        other = HeldRevision(hashlib.sha256(b"old").digest(), len(self.content.data))
        with self.assertRaises(RevisionNotHeld):
            s.answer_sample_challenge(challenge, other, self.content)

        class Counting(SyntheticContent):
            reads = 0

            def read_section(self, index: int, offset: int, length: int) -> bytes:
                Counting.reads += 1
                return super().read_section(index, offset, length)

        counting = Counting(seed=6, size=1 * MiB)
        bad = s.SampleChallenge(self.content.content_id, (0, 10**6), (0, 0))
        with self.assertRaises(BadChallenge):
            s.answer_sample_challenge(bad, counting.held, counting)
        beyond = s.SampleChallenge(
            self.content.content_id, (0, 1), (0, self.content.lengths[1])
        )
        with self.assertRaises(BadChallenge):
            s.answer_sample_challenge(beyond, counting.held, counting)
        self.assertEqual(Counting.reads, 0, "nothing is read for a bad challenge")

    def test_wrong_length_answer_fails(self) -> None:
        _, expectation = self.challenge()
        result = s.verify_sample_answer(expectation, b"\x00")
        self.assertFalse(result.passed)
        self.assertEqual(result.mismatches, 480)

    def test_few_sections_cap_the_positions(self) -> None:
        small = SyntheticContent(
            seed=9, size=20 * KiB, section_sizes=(5 * KiB, 5 * KiB)
        )
        challenge, expectation = s.new_sample_challenge(
            content_id=small.content_id,
            index=small,
            audit_key=AUDIT_KEY,
            check_number=0,
            random_bytes=self.rng.randbytes,
        )
        self.assertEqual(expectation.positions, 4 * s.AUDIT_SLOTS)
        answer = s.answer_sample_challenge(challenge, small.held, small)
        self.assertTrue(s.verify_sample_answer(expectation, answer).passed)

    def test_challenge_bounds_and_round_trip(self) -> None:
        challenge, _ = self.challenge()
        self.assertEqual(s.SampleChallenge.from_proto(challenge.to_proto()), challenge)
        for bad in (
            bbrpc_pb2.SampleChallenge(content_id=b"c" * 31, sections=[0], offsets=[0]),
            bbrpc_pb2.SampleChallenge(content_id=b"c" * 32, sections=[0], offsets=[]),
            bbrpc_pb2.SampleChallenge(content_id=b"c" * 32),
            bbrpc_pb2.SampleChallenge(
                content_id=b"c" * 32, sections=[0] * 4097, offsets=[0] * 4097
            ),
        ):
            with self.assertRaises(BadChallenge):
                s.SampleChallenge.from_proto(bad)

    def test_expectation_is_not_in_repr(self) -> None:
        _, expectation = self.challenge()
        self.assertNotIn(repr(expectation.expected), repr(expectation))

    def test_traffic_is_a_few_kib(self) -> None:
        big = SyntheticContent(seed=10, size=8 * MiB)
        challenge, _ = s.new_sample_challenge(
            content_id=big.content_id,
            index=big,
            audit_key=AUDIT_KEY,
            check_number=0,
            random_bytes=self.rng.randbytes,
        )
        request = bbrpc_pb2.SpotCheckRequest(
            contract_id=b"k" * 32, sample=challenge.to_proto()
        )
        answer = s.answer_sample_challenge(challenge, big.held, big)
        response = bbrpc_pb2.SpotCheckResponse(samples=answer)
        total = framed_size(request) + framed_size(response)
        self.assertGreaterEqual(len(answer), 460)
        self.assertLessEqual(total, 512 * KiB)
        self.assertLessEqual(total, 4 * KiB)


class DetectionRateTests(SynchronousTestCase):
    """A replica that lost 1 % of its sections, over 1,000 trials each."""

    TRIALS = 1000

    def setUp(self) -> None:
        self.content = SyntheticContent(seed=11, size=4 * MiB)

    def test_digest_check_catches_one_percent_loss(self) -> None:
        rng = random.Random(12)
        caught = 0
        for _ in range(self.TRIALS):
            lost = self.content.lose_one_percent(rng)
            self.assertTrue(0.01 <= lost_fraction(self.content, lost) < 0.0105)
            replica = LossyReplica(self.content, lost, rng)
            challenge = d.new_digest_challenge(self.content.content_id, rng.randbytes)
            answer = d.answer_digest_challenge(challenge, self.content.held, replica)
            result = d.verify_digest_answer(
                challenge, len(self.content.data), self.content, answer
            )
            caught += not result.passed
        self.assertGreaterEqual(caught / self.TRIALS, 0.985, caught)

    def test_sample_check_catches_one_percent_loss(self) -> None:
        rng = random.Random(13)
        caught = 0
        for number in range(self.TRIALS):
            lost = self.content.lose_one_percent(rng)
            replica = LossyReplica(self.content, lost, rng)
            challenge, expectation = s.new_sample_challenge(
                content_id=self.content.content_id,
                index=self.content,
                audit_key=AUDIT_KEY,
                check_number=number,
                random_bytes=rng.randbytes,
                positions=460,
            )
            answer = s.answer_sample_challenge(challenge, self.content.held, replica)
            caught += not s.verify_sample_answer(expectation, answer).passed
        self.assertGreaterEqual(caught / self.TRIALS, 0.985, caught)

    def test_honest_replica_never_fails(self) -> None:
        rng = random.Random(14)
        for number in range(100):
            challenge = d.new_digest_challenge(self.content.content_id, rng.randbytes)
            answer = d.answer_digest_challenge(
                challenge, self.content.held, self.content
            )
            self.assertTrue(
                d.verify_digest_answer(
                    challenge, len(self.content.data), self.content, answer
                ).passed
            )
            sample, expectation = s.new_sample_challenge(
                content_id=self.content.content_id,
                index=self.content,
                audit_key=AUDIT_KEY,
                check_number=number,
                random_bytes=rng.randbytes,
            )
            answer = s.answer_sample_challenge(sample, self.content.held, self.content)
            self.assertTrue(s.verify_sample_answer(expectation, answer).passed)


class ConfidenceTests(SynchronousTestCase):
    def test_pdp_bound(self) -> None:
        self.assertTrue(0.990 <= c.detection_probability(460, 0.01) < 0.991)
        self.assertEqual(c.positions_needed(0.01, 0.99), 459)
        self.assertEqual(c.positions_needed(0.01, 0.99, 1 / 256), 461)
        self.assertEqual(c.detection_probability(0, 0.5), 0.0)
        self.assertEqual(c.detection_probability(10, 1.0), 1.0)
        self.assertEqual(c.detection_probability(10, 1.0, miss_per_position=1.0), 0.0)

    def test_statements(self) -> None:
        self.assertEqual(
            c.CheckResult(passed=True, positions=460).summary(),
            "passed: 460 positions sampled; ≥ 99 % confidence that under 1 % "
            "is missing",
        )
        self.assertEqual(
            c.CheckResult(
                passed=True, positions=460, miss_per_position=1 / 256
            ).summary(),
            "passed: 460 positions sampled; ≥ 98.9 % confidence that under 1 % "
            "is missing",
        )
        self.assertEqual(
            c.CheckResult(passed=True, positions=1000).summary(0.005),
            "passed: 1000 positions sampled; ≥ 99.3 % confidence that under "
            "0.5 % is missing",
        )
        self.assertEqual(
            c.CheckResult(passed=False, positions=460, mismatches=12).summary(),
            "failed: 12 of 460 sampled positions did not match; about 2.6 % is "
            "missing or altered",
        )

    def test_never_overstated(self) -> None:
        # 1 - 0.99**459 = 0.98999..., shown as 98.9 %, not rounded up to 99.
        result = c.CheckResult(passed=True, positions=458)
        self.assertLess(result.confidence(), 0.99)
        self.assertIn("≥ 98.9 %", result.summary())

    def test_bad_arguments(self) -> None:
        for args in ((-1, 0.01), (10, 1.5), (10, -0.1)):
            with self.assertRaises(ValueError):
                c.detection_probability(*args)
        with self.assertRaises(ValueError):
            c.positions_needed(0.0, 0.99)
