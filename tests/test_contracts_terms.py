"""Contract terms: signing, strict verification, the contract id."""

from __future__ import annotations

import dataclasses
import random

import nacl.signing
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import terms as t

NOW = 1_750_000_000.0
MiB = 1024 * 1024


def key(seed: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([seed]) * 32)


PROPOSER = key(1)
ACCEPTOR = key(2)
STRANGER = key(3)


def make_terms(**changes: object) -> t.ContractTerms:
    terms = t.new_terms(
        proposer_pubkey=bytes(PROPOSER.verify_key),
        acceptor_pubkey=bytes(ACCEPTOR.verify_key),
        acceptor_keeps_bytes=100 * MiB,
        proposer_keeps_bytes=200 * MiB,
        now=NOW,
        random_bytes=random.Random(7).randbytes,
    )
    return dataclasses.replace(terms, **changes)  # type: ignore[arg-type]


def signed_blob() -> bytes:
    return t.accept(t.propose(make_terms(), PROPOSER), ACCEPTOR).encode()


def resigned(message: storedpb_pb2.SignedContractTerms) -> bytes:
    return message.SerializeToString(deterministic=True)


class SigningTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        proposal = t.propose(make_terms(), PROPOSER)
        self.assertFalse(proposal.accepted)
        received = t.verify_proposal(
            proposal.encode(),
            proposer=bytes(PROPOSER.verify_key),
            acceptor=bytes(ACCEPTOR.verify_key),
        )
        self.assertEqual(received.terms, make_terms())
        accepted = t.accept(received, ACCEPTOR)
        verified = t.verify_signed_terms(accepted.encode())
        self.assertTrue(verified.accepted)
        self.assertEqual(verified, accepted)
        self.assertEqual(verified.terms.acceptor_keeps_bytes, 100 * MiB)

    def test_contract_id_is_stable_and_covers_the_terms_only(self) -> None:
        proposal = t.propose(make_terms(), PROPOSER)
        accepted = t.accept(proposal, ACCEPTOR)
        self.assertEqual(proposal.contract_id, accepted.contract_id)
        self.assertEqual(accepted.contract_id, t.contract_id_of(make_terms().encode()))
        # A pinned value: the id must never change across releases.
        self.assertEqual(len(accepted.contract_id), 32)
        self.assertEqual(
            t.contract_id_of(b"terms").hex(),
            __import__("hashlib")
            .sha256(b"barterbackup v1 contract id\x00terms")
            .hexdigest(),
        )
        other = make_terms(nonce=b"\x01" * 16)
        self.assertNotEqual(t.contract_id_of(other.encode()), accepted.contract_id)

    def test_proposal_must_not_be_accepted_yet(self) -> None:
        with self.assertRaises(t.InvalidTerms):
            t.verify_proposal(signed_blob())

    def test_unaccepted_terms_are_not_a_contract(self) -> None:
        proposal = t.propose(make_terms(), PROPOSER).encode()
        with self.assertRaises(t.InvalidTerms) as caught:
            t.verify_signed_terms(proposal)
        self.assertIn("not signed by the acceptor", str(caught.exception))

    def test_wrong_signer_refused(self) -> None:
        with self.assertRaises(t.InvalidTerms):
            t.propose(make_terms(), STRANGER)
        proposal = t.propose(make_terms(), PROPOSER)
        with self.assertRaises(t.InvalidTerms):
            t.accept(proposal, STRANGER)
        with self.assertRaises(t.InvalidTerms):
            t.accept(proposal, PROPOSER)
        # A signature by another key over the right bytes.
        message = storedpb_pb2.SignedContractTerms.FromString(signed_blob())
        message.acceptor_signature = STRANGER.sign(
            t.ACCEPTOR_LABEL + message.terms
        ).signature
        with self.assertRaises(t.InvalidTerms):
            t.verify_signed_terms(resigned(message))

    def test_signature_of_one_role_does_not_pass_as_the_other(self) -> None:
        message = storedpb_pb2.SignedContractTerms.FromString(signed_blob())
        message.acceptor_signature = ACCEPTOR.sign(
            t.PROPOSER_LABEL + message.terms
        ).signature
        with self.assertRaises(t.InvalidTerms):
            t.verify_signed_terms(resigned(message))

    def test_expected_parties_are_enforced(self) -> None:
        blob = signed_blob()
        with self.assertRaises(t.InvalidTerms):
            t.verify_signed_terms(blob, proposer=bytes(STRANGER.verify_key))
        with self.assertRaises(t.InvalidTerms):
            t.verify_signed_terms(blob, acceptor=bytes(STRANGER.verify_key))

    def test_every_field_tampered_is_refused(self) -> None:
        good = make_terms()
        policy = good.check_policy
        tampered = [
            dataclasses.replace(good, proposer_pubkey=bytes(STRANGER.verify_key)),
            dataclasses.replace(good, acceptor_pubkey=bytes(STRANGER.verify_key)),
            dataclasses.replace(good, acceptor_keeps_bytes=101 * MiB),
            dataclasses.replace(good, proposer_keeps_bytes=201 * MiB),
            dataclasses.replace(good, created_at=good.created_at + 1),
            dataclasses.replace(good, nonce=bytes(16)),
            dataclasses.replace(
                good,
                check_policy=dataclasses.replace(policy, interval_seconds=1800),
            ),
            dataclasses.replace(
                good, check_policy=dataclasses.replace(policy, samples=461)
            ),
            dataclasses.replace(
                good,
                check_policy=dataclasses.replace(policy, answer_deadline_seconds=61),
            ),
        ]
        original = storedpb_pb2.SignedContractTerms.FromString(signed_blob())
        for changed in tampered:
            message = storedpb_pb2.SignedContractTerms()
            message.CopyFrom(original)
            message.terms = changed.encode()
            with self.assertRaises(t.InvalidTerms, msg=repr(changed)):
                t.verify_signed_terms(resigned(message))

    def test_every_flipped_byte_is_refused(self) -> None:
        blob = signed_blob()
        for index in range(len(blob)):
            for flip in (0x01, 0x80):
                damaged = bytearray(blob)
                damaged[index] ^= flip
                with self.assertRaises(t.InvalidTerms):
                    t.verify_signed_terms(bytes(damaged))

    def test_non_canonical_encodings_are_refused(self) -> None:
        blob = signed_blob()
        # An unknown field appended (field 15, varint 1).
        with self.assertRaises(t.InvalidTerms) as caught:
            t.verify_signed_terms(blob + b"\x78\x01")
        self.assertIn("canonical", str(caught.exception))
        # The same field twice: parses (last wins) but is not canonical.
        message = storedpb_pb2.SignedContractTerms.FromString(blob)
        duplicate = (
            blob
            + storedpb_pb2.SignedContractTerms(
                proposer_signature=message.proposer_signature
            ).SerializeToString()
        )
        with self.assertRaises(t.InvalidTerms):
            t.verify_signed_terms(duplicate)

    def test_sizes_are_capped_before_parsing(self) -> None:
        with self.assertRaises(t.InvalidTerms) as caught:
            t.verify_signed_terms(b"\x00" * (t.MAX_SIGNED_TERMS_BYTES + 1))
        self.assertIn("over", str(caught.exception))
        with self.assertRaises(t.InvalidTerms):
            t.ContractTerms.decode(b"\x00" * (t.MAX_TERMS_BYTES + 1))

    def test_largest_valid_terms_fit_the_caps(self) -> None:
        big = make_terms(
            acceptor_keeps_bytes=t.MAX_CONTRACT_BYTES,
            proposer_keeps_bytes=t.MAX_CONTRACT_BYTES,
            created_at=t.LATEST_CREATED_AT,
            check_policy=t.CheckPolicy(
                t.MAX_CHECK_INTERVAL_SECONDS,
                t.MAX_CHECK_SAMPLES,
                t.MAX_ANSWER_DEADLINE_SECONDS,
            ),
        )
        blob = t.accept(t.propose(big, PROPOSER), ACCEPTOR).encode()
        self.assertLessEqual(len(big.encode()), 160)
        self.assertLessEqual(len(blob), 300)
        self.assertEqual(t.verify_signed_terms(blob).terms, big)


class BoundsTests(SynchronousTestCase):
    def refused(self, **changes: object) -> str:
        with self.assertRaises(t.InvalidTerms) as caught:
            make_terms(**changes).encode()
        return str(caught.exception)

    def test_bounds(self) -> None:
        self.refused(acceptor_keeps_bytes=t.MIN_CONTRACT_BYTES - 1)
        self.refused(proposer_keeps_bytes=t.MAX_CONTRACT_BYTES + 1)
        self.refused(proposer_keeps_bytes=0)
        self.refused(created_at=t.EARLIEST_CREATED_AT - 1)
        self.refused(nonce=b"\x00" * 15)
        self.refused(proposer_pubkey=b"\x01" * 31)
        self.refused(acceptor_pubkey=bytes(PROPOSER.verify_key))
        for policy in (
            t.CheckPolicy(interval_seconds=59),
            t.CheckPolicy(interval_seconds=t.MAX_CHECK_INTERVAL_SECONDS + 1),
            t.CheckPolicy(samples=63),
            t.CheckPolicy(samples=4097),
            t.CheckPolicy(answer_deadline_seconds=9),
            t.CheckPolicy(answer_deadline_seconds=601),
            t.CheckPolicy(interval_seconds=60, answer_deadline_seconds=60),
        ):
            self.refused(check_policy=policy)

    def test_messages_name_the_problem(self) -> None:
        self.assertEqual(
            self.refused(check_policy=t.CheckPolicy(samples=5000)),
            "check samples is 5000, outside 64..4096",
        )

    def test_missing_policy_is_refused(self) -> None:
        message = make_terms().to_proto()
        message.ClearField("check_policy")
        with self.assertRaises(t.InvalidTerms):
            t.ContractTerms.decode(message.SerializeToString(deterministic=True))

    def test_other_format_is_refused(self) -> None:
        message = make_terms().to_proto()
        message.format = 2
        with self.assertRaises(t.InvalidTerms):
            t.ContractTerms.decode(message.SerializeToString(deterministic=True))
