"""Fuzzing a spot check from the checker's side: the answer a hostile
replica sends back to our ``SpotCheck`` is outside bytes.

The checker is the real ``ContractChecks`` (``contracts.checking``) over
real content (``testing.fakeengine``: a real signed revision, section tree
and sealed audit samples), asking digest and sample challenges of a replica
that answers with: the honest answer, the honest answer mutated (in its
field or on the wire), in the other field, none, random bytes, a huge
field, too few or too many bytes, an honest answer replayed from an earlier
challenge, an answer over an older revision, any generated
``SpotCheckResponse``, any ``Error``, silence, or a dropped connection.

Properties: the check passes exactly when the answer is the honest one;
anything else is "failed", "unanswered" or "unreachable", never a pass and
never an exception out of the check; the verdict the book records (and the
machine is fed) is bounded and printable, whatever text the replica sent;
the ledger changes only in the fields a check owns. The checker holds no
store: what it can leave on disk is the book's ledger and the peer's score,
both bounded fields. See docs/wire-protocol.md, "Fuzzing".
"""

from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
from google.protobuf.message import DecodeError
from hypothesis import example
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.bbrpc.errors import PeerCallError, PeerConnectionLost
from barterbackup.contracts import digestcheck, samplecheck
from barterbackup.contracts import terms as contract_terms
from barterbackup.contracts.checking import DIGEST, SAMPLE, ContractChecks
from barterbackup.contracts.collaborators import Contract
from barterbackup.contracts.heldcontent import HeldRevision
from barterbackup.contracts.readers import TreeContent
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.revisions import VerifiedRevision
from barterbackup.testing.fakeengine import FakeContentEngine
from barterbackup.testing.fakes import BlobDict
from barterbackup.untrusted import printable
from tests.fuzzing import fuzz_target, messages, mutated

REPLICA_KEY = nacl.signing.SigningKey(bytes([9]) * 32)
REPLICA = bytes(REPLICA_KEY.verify_key)
# The verdict keeps at most a 500-character excerpt of the replica's text
# (``PeerCallError.from_error``) in a sentence of our own.
MAX_VERDICT_CHARS = 700
# What a check may set in the contract's ledger.
CHECK_LEDGER_FIELDS = {
    "last_check_at",
    "last_check_passed",
    "last_verdict",
    "sample_checks",
    "sample_content_id",
}
ANSWERS = (
    "honest",
    "mutated",
    "wire_mutated",
    "other_field",
    "no_answer",
    "random",
    "huge",
    "fewer",
    "more",
    "replayed",
    "old_revision",
    "generated",
    "error",
    "silent",
    "lost",
)


@dataclass
class _Content:
    """Our content: two committed revisions of a fake engine's real trees."""

    engine: Any
    blobs: BlobDict
    old: VerifiedRevision
    current: VerifiedRevision
    audit_key: bytes


@functools.cache
def _content(seed: int, size: int) -> _Content:
    """Two revisions of random files; the second changes and adds some."""
    keys = node_keys_from_master(bytes([seed % 256]) * 32)
    # The fake engine keeps its state in memory, under a name (no disk).
    engine = FakeContentEngine.open(
        Path(os.sep, "nonexistent", f"spotcheck-fuzz-{seed}-{size}"), keys, None
    )
    rng = random.Random(seed)
    for revision in range(2):
        update = engine.begin_update()
        for index in range(1 + revision + seed % 3):
            writer = update.add_file(f"f{index}")
            writer.write(rng.randbytes(max(1, size >> index)))
            writer.close()
        update.commit()
    state = engine._state
    return _Content(
        engine, state.blobs, state.previous, state.current, engine._audit_key
    )


@dataclass
class _Entry:
    ledger: storedpb_pb2.ContractLedger = field(
        default_factory=storedpb_pb2.ContractLedger
    )


class _Book:
    """BookAccess for one contract: records what the checks feed and save."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.the_entry = _Entry()
        self.fed: list[tuple[str, str]] = []
        self.saved: list[bytes] = []

    def entry(self, contract_id: bytes) -> Any:
        return self.the_entry if contract_id == self.contract.contract_id else None

    def entries_of(self, peer: bytes) -> list[Any]:
        return [self.the_entry] if peer == self.contract.peer_pubkey else []

    def feed(self, contract_id: bytes, event: Any, what: str) -> None:
        verdict = self.the_entry.ledger.last_verdict
        self.fed.append((what, verdict))

    def save(self, contract_id: bytes) -> None:
        self.saved.append(contract_id)

    def save_soon(self, contract_id: bytes) -> None:
        self.saved.append(contract_id)


class _Scores:
    def __init__(self) -> None:
        self.probes: list[tuple[bytes, bool]] = []

    def probe(self, peer: bytes, answered: bool) -> None:
        self.probes.append((peer, answered))


class HostileReplica:
    """The replica's connection as the checker sees it: each
    ``spot_check_request`` is answered honestly from the true content, then
    the answer is replaced as ``answer`` says (from the second call on, so
    the first call's honest answer can be replayed)."""

    def __init__(self, content: _Content, answer: str, data: Any) -> None:
        self.content = content
        self.answer = answer
        self.data = data
        self.honest: list[bbrpc_pb2.SpotCheckResponse] = []
        self.sent: list[bbrpc_pb2.SpotCheckResponse | None] = []

    def call(self, request_field: str, request: Any) -> defer.Deferred[Any]:
        assert request_field == "spot_check_request"
        honest = self.honest_answer(request, self.content.current)
        self.honest.append(honest)
        if len(self.honest) == 1:
            self.sent.append(honest)
            return defer.succeed(honest)
        try:
            response = self.hostile(request, honest)
        except (PeerCallError, PeerConnectionLost) as error:
            self.sent.append(None)
            return defer.fail(error)
        self.sent.append(response)
        if response is None:
            return defer.Deferred()  # silence: it never answers
        return defer.succeed(response)

    def honest_answer(
        self, request: Any, revision: VerifiedRevision
    ) -> bbrpc_pb2.SpotCheckResponse:
        reader = TreeContent(revision, self.content.blobs.get)
        if request.WhichOneof("challenge") == "digest":
            challenge = digestcheck.DigestChallenge.from_proto(request.digest)
            digest = digestcheck.digest_answer(
                challenge, revision.content_length, reader
            )
            return bbrpc_pb2.SpotCheckResponse(digest=digest)
        challenge = samplecheck.SampleChallenge.from_proto(request.sample)
        if revision is self.content.current:
            held = HeldRevision(revision.content_id, revision.content_length)
            samples = samplecheck.answer_sample_challenge(challenge, held, reader)
        else:
            # An older revision's bytes where it has the position, else 0.
            count = reader.section_count()
            samples = bytes(
                reader.read_section(s, o, 1)[0]
                if s < count and o < reader.section_length(s)
                else 0
                for s, o in zip(challenge.sections, challenge.offsets, strict=True)
            )
        return bbrpc_pb2.SpotCheckResponse(samples=samples)

    def hostile(
        self, request: Any, honest: bbrpc_pb2.SpotCheckResponse
    ) -> bbrpc_pb2.SpotCheckResponse | None:
        kind = self.answer
        if kind == "honest":
            return honest
        draw = self.data.draw
        field_name = honest.WhichOneof("answer")
        assert field_name is not None
        value = bytes(getattr(honest, field_name))
        other = "samples" if field_name == "digest" else "digest"
        if kind == "mutated":
            return _answer(field_name, draw(mutated(value)))
        if kind == "wire_mutated":
            wire = draw(mutated(honest.SerializeToString()))
            try:
                return bbrpc_pb2.SpotCheckResponse.FromString(wire)
            except DecodeError:
                # The connection drops a frame it cannot decode.
                raise PeerConnectionLost("protocol error") from None
        if kind == "other_field":
            return _answer(other, value)
        if kind == "no_answer":
            return bbrpc_pb2.SpotCheckResponse()
        if kind == "random":
            return _answer(field_name, draw(st.binary(min_size=len(value))))
        if kind == "huge":
            size = draw(st.sampled_from([65_537, 1024 * 1024 + 1]))
            return _answer(field_name, value + bytes(size))
        if kind == "fewer":
            return _answer(field_name, value[: draw(st.integers(0, len(value) - 1))])
        if kind == "more":
            return _answer(field_name, value + draw(st.binary(min_size=1)))
        if kind == "replayed":
            return self.honest[0]
        if kind == "old_revision":
            return self.honest_answer(request, self.content.old)
        if kind == "generated":
            message = draw(messages(bbrpc_pb2.SpotCheckResponse.DESCRIPTOR))
            assert isinstance(message, bbrpc_pb2.SpotCheckResponse)
            return message
        if kind == "error":
            error = draw(messages(bbrpc_pb2.Error.DESCRIPTOR))
            raise PeerCallError.from_error(error)
        if kind == "silent":
            return None
        assert kind == "lost"
        raise PeerConnectionLost("the replica hung up")


def _answer(field_name: str, value: bytes) -> bbrpc_pb2.SpotCheckResponse:
    response = bbrpc_pb2.SpotCheckResponse()
    setattr(response, field_name, value)
    return response


def _is_honest(
    sent: bbrpc_pb2.SpotCheckResponse | None, honest: bbrpc_pb2.SpotCheckResponse
) -> bool:
    if sent is None:
        return False
    kind = honest.WhichOneof("answer")
    assert kind is not None
    return sent.WhichOneof("answer") == kind and getattr(sent, kind) == getattr(
        honest, kind
    )


class _Dialer:
    def __init__(self, connection: HostileReplica) -> None:
        self._connection = connection

    def connection(self, pubkey: bytes) -> Any:
        return self._connection if pubkey == REPLICA else None

    def dial(self, pubkey: bytes, hint: str = "") -> defer.Deferred[Any]:
        return defer.fail(AssertionError("the checker should not dial"))


def _contract(owner: nacl.signing.SigningKey, policy: Any) -> Contract:
    terms = contract_terms.new_terms(
        proposer_pubkey=bytes(owner.verify_key),
        acceptor_pubkey=REPLICA,
        acceptor_keeps_bytes=1 << 30,
        proposer_keeps_bytes=1 << 30,
        now=1_800_000_000,
        random_bytes=lambda n: bytes(n),
        check_policy=policy,
    )
    signed = contract_terms.accept(contract_terms.propose(terms, owner), REPLICA_KEY)
    return Contract(signed, bytes(owner.verify_key))


class SpotCheckAnswerFuzz(SynchronousTestCase):
    @fuzz_target(
        "contracts.spot_check_answers",
        cost=4,
        seed=st.integers(0, 7),
        size=st.sampled_from([1, 500, 20_000, 70_000]),
        kind=st.sampled_from([DIGEST, SAMPLE]),
        positions=st.sampled_from([1, 17, 460]),
        answer=st.sampled_from(ANSWERS),
        data=st.data(),
    )
    # The honest answer of each kind passes.
    @example(
        seed=0, size=20_000, kind=DIGEST, positions=460, answer="honest", data=None
    )
    @example(
        seed=1, size=70_000, kind=SAMPLE, positions=460, answer="honest", data=None
    )
    def test_only_the_honest_answer_passes(
        self,
        seed: int,
        size: int,
        kind: str,
        positions: int,
        answer: str,
        data: Any,
    ) -> None:
        content = _content(seed, size)
        owner = content.engine._keys.signing_key
        policy = contract_terms.DEFAULT_CHECK_POLICY
        contract = _contract(owner, policy)
        book = _Book(contract)
        replica = HostileReplica(content, answer, data)
        clock = Clock()
        checks = ContractChecks(
            book,
            clock,
            random.Random(seed),
            _Dialer(replica),
            content.engine,
            _Scores(),
            content.audit_key,
        )
        checks.start(contract)
        # A first, honest check: it passes, and its answer can be replayed.
        first = self.successResultOf(
            checks.check_now(contract, _ignore, kind, positions)
        )
        self.assertIs(first.passed, True, first.verdict)
        before = storedpb_pb2.ContractLedger()
        before.CopyFrom(book.the_entry.ledger)
        fed_before = len(book.fed)

        done = checks.check_now(contract, _ignore, kind, positions)
        clock.advance(policy.answer_deadline_seconds + 1)
        outcome = self.successResultOf(done)  # never an exception

        honest = _is_honest(replica.sent[-1], replica.honest[-1])
        self.assertEqual(outcome.passed is True, honest, (answer, outcome.verdict))
        self.assertEqual(outcome.kind, kind)
        self.assertEqual(outcome.revision, content.current.number)
        if outcome.passed is not True:
            self.assertEqual(outcome.confidence, 0.0)
        # The verdict is ours: bounded, and printable as it stands.
        self.assertLessEqual(len(outcome.verdict), MAX_VERDICT_CHARS)
        self.assertEqual(printable(outcome.verdict, MAX_VERDICT_CHARS), outcome.verdict)
        # One event at most is fed, the one the outcome says.
        events = [what for what, _ in book.fed[fed_before:]]
        if outcome.passed is None:
            # Only silence, an error of the replica's side or a lost
            # connection leave the check unjudged.
            self.assertIn(answer, ("silent", "error", "lost", "wire_mutated"))
            self.assertIn(events, (["check_unanswered"], ["peer_unreachable"]))
        else:
            self.assertEqual(
                events, ["check_passed" if outcome.passed else "check_failed"]
            )
        # The ledger changes only in the check's own fields.
        ledger = book.the_entry.ledger
        changed = {
            f.name
            for f in storedpb_pb2.ContractLedger.DESCRIPTOR.fields
            if getattr(ledger, f.name) != getattr(before, f.name)
        }
        self.assertLessEqual(changed, CHECK_LEDGER_FIELDS)
        if outcome.passed is not None:
            self.assertEqual(ledger.last_check_passed, outcome.passed)
            self.assertEqual(ledger.last_verdict, outcome.verdict)
        self.assertLessEqual(ledger.ByteSize(), 2 * MAX_VERDICT_CHARS + 100)
        checks.shutdown()


def _ignore(event: Any) -> None:
    """A progress report nobody reads."""
