"""The acceptance decision for proposed contracts."""

from __future__ import annotations

import dataclasses

from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.contracts import policy as p
from barterbackup.contracts import scores
from barterbackup.contracts.terms import DEFAULT_CHECK_POLICY, ContractTerms

MiB = 1024 * 1024
GiB = 1024 * MiB
NOW = 1_750_000_000
US = b"u" * 32
THEM = b"t" * 32

TERMS = ContractTerms(
    proposer_pubkey=THEM,
    acceptor_pubkey=US,
    acceptor_keeps_bytes=100 * MiB,
    proposer_keeps_bytes=100 * MiB,
    check_policy=DEFAULT_CHECK_POLICY,
    created_at=NOW - 5,
    nonce=b"n" * 16,
)
ROOMY = p.StorageBudget(total_bytes=10 * GiB, obligations_bytes=2 * GiB)
FRIEND = p.ProposerStanding(known=True, vetted=False, audit_score=1.0)
STRANGER = p.ProposerStanding(known=False, vetted=False, audit_score=1.0)
VETTED_STRANGER = p.ProposerStanding(known=False, vetted=True, audit_score=1.0)


def decide(
    terms: ContractTerms = TERMS,
    budget: p.StorageBudget = ROOMY,
    policy: p.AcceptancePolicy = p.DEFAULT_ACCEPTANCE_POLICY,
    proposer: p.ProposerStanding = FRIEND,
    now: float = NOW,
) -> p.Decision:
    return p.decide_proposal(
        terms, our_pubkey=US, budget=budget, policy=policy, proposer=proposer, now=now
    )


class DecisionTests(SynchronousTestCase):
    def refusal(self, decision: p.Decision, code: p.RefusalCode) -> str:
        self.assertIsInstance(decision, p.Refuse)
        assert isinstance(decision, p.Refuse)
        self.assertIs(decision.code, code)
        return decision.reason

    def test_default_policy_is_known(self) -> None:
        self.assertIs(p.DEFAULT_ACCEPTANCE_POLICY, p.AcceptancePolicy.KNOWN)
        self.assertEqual(decide(), p.Accept())
        reason = self.refusal(decide(proposer=STRANGER), p.RefusalCode.NOT_KNOWN)
        self.assertIn("peers connect", reason)

    def test_capacity_counts_obligations(self) -> None:
        tight = p.StorageBudget(
            total_bytes=1 * GiB, obligations_bytes=1 * GiB - 40 * MiB
        )
        reason = self.refusal(decide(budget=tight), p.RefusalCode.NO_CAPACITY)
        self.assertEqual(
            reason,
            "this node has 40.0 MiB free of the 1.0 GiB it lends to peers; "
            "the proposal asks it to keep 100.0 MiB",
        )
        exact = p.StorageBudget(
            total_bytes=1 * GiB, obligations_bytes=1 * GiB - 100 * MiB
        )
        self.assertEqual(decide(budget=exact), p.Accept())
        over = p.StorageBudget(total_bytes=1 * GiB, obligations_bytes=2 * GiB)
        self.assertEqual(over.free_bytes, 0)
        self.refusal(decide(budget=over), p.RefusalCode.NO_CAPACITY)

    def test_only_what_we_keep_counts_against_the_budget(self) -> None:
        budget = p.StorageBudget(total_bytes=100 * MiB, obligations_bytes=0)
        generous = dataclasses.replace(TERMS, proposer_keeps_bytes=10 * GiB)
        self.assertEqual(decide(generous, budget=budget), p.Accept())

    def test_open_caps_unvetted_strangers(self) -> None:
        open_ = p.AcceptancePolicy.OPEN
        self.assertEqual(decide(policy=open_, proposer=STRANGER), p.Accept())
        big = dataclasses.replace(
            TERMS, acceptor_keeps_bytes=1 * GiB, proposer_keeps_bytes=1 * GiB
        )
        reason = self.refusal(
            decide(big, policy=open_, proposer=STRANGER), p.RefusalCode.NOT_VETTED
        )
        self.assertIn("256.0 MiB", reason)
        self.assertIn(f"{scores.VETTING_CHECKS} spot checks", reason)
        self.assertEqual(
            decide(big, policy=open_, proposer=VETTED_STRANGER), p.Accept()
        )
        self.assertEqual(decide(big, policy=open_, proposer=FRIEND), p.Accept())
        at_cap = dataclasses.replace(
            TERMS,
            acceptor_keeps_bytes=p.UNVETTED_MAX_BYTES,
            proposer_keeps_bytes=p.UNVETTED_MAX_BYTES,
        )
        self.assertEqual(decide(at_cap, policy=open_, proposer=STRANGER), p.Accept())

    def test_open_strangers_must_give_as_much_as_they_take(self) -> None:
        lopsided = dataclasses.replace(TERMS, proposer_keeps_bytes=10 * MiB)
        self.refusal(
            decide(lopsided, policy=p.AcceptancePolicy.OPEN, proposer=VETTED_STRANGER),
            p.RefusalCode.UNFAIR,
        )
        # Friends may make lopsided deals.
        self.assertEqual(
            decide(lopsided, policy=p.AcceptancePolicy.OPEN, proposer=FRIEND),
            p.Accept(),
        )
        self.assertEqual(decide(lopsided), p.Accept())

    def test_manual_asks_the_user_only_for_what_fits(self) -> None:
        manual = p.AcceptancePolicy.MANUAL
        self.assertIsInstance(decide(policy=manual, proposer=STRANGER), p.NeedsApproval)
        self.assertIsInstance(decide(policy=manual), p.NeedsApproval)
        tight = p.StorageBudget(total_bytes=50 * MiB, obligations_bytes=0)
        self.refusal(decide(policy=manual, budget=tight), p.RefusalCode.NO_CAPACITY)

    def test_low_score_is_refused_under_every_policy(self) -> None:
        failing = dataclasses.replace(FRIEND, audit_score=0.5)
        for policy in p.AcceptancePolicy:
            self.refusal(
                decide(policy=policy, proposer=failing), p.RefusalCode.LOW_SCORE
            )
        doubtful = dataclasses.replace(FRIEND, audit_score=0.85)
        self.assertEqual(decide(proposer=doubtful), p.Accept())

    def test_addressed_to_someone_else(self) -> None:
        other = dataclasses.replace(TERMS, acceptor_pubkey=b"x" * 32)
        self.refusal(decide(other), p.RefusalCode.BAD_TERMS)

    def test_stale_and_future_proposals(self) -> None:
        reason = self.refusal(decide(now=NOW + 2 * 24 * 3600), p.RefusalCode.BAD_TERMS)
        self.assertIn("48 hours ago", reason)
        self.refusal(decide(now=NOW - 3 * 3600), p.RefusalCode.BAD_TERMS)
        self.assertEqual(decide(now=NOW - 1800), p.Accept())

    def test_refusal_codes_match_the_wire(self) -> None:
        wire = {
            name
            for name in bbrpc_pb2.ContractRefusalCode.keys()
            if not name.endswith("UNSPECIFIED")
        }
        self.assertEqual(
            {bbrpc_pb2.ContractRefusalCode.Name(c.value) for c in p.RefusalCode}, wire
        )
        refusal = p.Refuse(p.RefusalCode.NOT_KNOWN, "why").to_proto()
        self.assertEqual(refusal.code, bbrpc_pb2.CONTRACT_REFUSAL_CODE_NOT_KNOWN)


class StandingTests(SynchronousTestCase):
    def test_from_peer_record(self) -> None:
        self.assertEqual(
            p.ProposerStanding.of(None),
            p.ProposerStanding(known=False, vetted=False, audit_score=1.0),
        )
        peer = storedpb_pb2.Peer()
        for index in range(scores.VETTING_CHECKS):
            peer = scores.with_check_result(peer, passed=True, at=NOW + index)
        # A record alone (made for a contract, or by passed checks) is not
        # a peer our user chose.
        self.assertFalse(p.ProposerStanding.of(peer).known)
        peer.known_by_user = True
        standing = p.ProposerStanding.of(peer)
        self.assertTrue(standing.vetted)
        self.assertTrue(standing.known)
        self.assertGreater(standing.audit_score, 0.99)
