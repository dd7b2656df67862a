"""The contract machine: exact work per event, illegal events, persistence,
containment, reciprocity, and invariants over random event sequences."""

from __future__ import annotations

from collections.abc import Callable

import nacl.signing
from automat import NoTransition
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import scores
from barterbackup.contracts import terms as t
from barterbackup.contracts.collaborators import Contract, ContractTimings
from barterbackup.contracts.machine import (
    ContractCore,
    ContractInputs,
    new_contract,
    restore_contract,
)
from barterbackup.contracts.states import InvalidRecord
from barterbackup.testing.contracts import ContractFakes

MiB = 1024 * 1024
HOUR = 3600.0
DAY = 24 * HOUR
T0 = 1_750_000_000.0
US = nacl.signing.SigningKey(b"\x01" * 32)
PEER = nacl.signing.SigningKey(b"\x02" * 32)
TIMINGS = ContractTimings()


def signed_terms(nonce: bytes = b"n" * 16) -> t.SignedTerms:
    terms = t.ContractTerms(
        proposer_pubkey=bytes(US.verify_key),
        acceptor_pubkey=bytes(PEER.verify_key),
        acceptor_keeps_bytes=200 * MiB,
        proposer_keeps_bytes=100 * MiB,
        check_policy=t.DEFAULT_CHECK_POLICY,
        created_at=int(T0),
        nonce=nonce,
    )
    return t.accept(t.propose(terms, US), PEER)


CONTRACT = Contract(signed_terms(), bytes(US.verify_key))


def make_core(clock: Clock, fakes: ContractFakes) -> ContractCore:
    return ContractCore(
        contract=CONTRACT,
        clock=clock,
        store=fakes.store,
        sync=fakes.sync,
        checks=fakes.checks,
        notifier=fakes.notifier,
        keeper=fakes.keeper,
        scores=fakes.scores,
        timings=TIMINGS,
    )


class Harness:
    """A machine with a clock and recording fakes."""

    def __init__(self, reputation: scores.AuditReputation | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.fakes = ContractFakes()
        if reputation is not None:
            self.fakes.reputation = reputation
        self.core = make_core(self.clock, self.fakes)
        self.machine: ContractInputs = new_contract(self.core)

    @property
    def state(self) -> str:
        return self.machine.snapshot().state

    def take(self) -> list[tuple[object, ...]]:
        return self.fakes.take()

    def restart(self) -> None:
        """The node stops (timers die with it) and restores the machine."""
        self.core.alarm.cancel()
        self.core = make_core(self.clock, self.fakes)
        self.machine = restore_contract(self.core, self.fakes.last_saved)


def to_state(name: str, reputation: scores.AuditReputation | None = None) -> Harness:
    """A harness driven into ``name`` (events cleared)."""
    h = Harness(reputation)
    m = h.machine
    steps: dict[str, list[Callable[[], None]]] = {
        "proposed": [],
        "syncing": [m.accepted],
        "active": [m.accepted, m.synced],
        "suspect": [m.accepted, m.synced, m.peer_unreachable],
        "broken": [m.accepted, m.synced, m.peer_unreachable],
        "ending": [m.accepted, m.synced, lambda: m.end_requested("leaving")],
        "ended": [lambda: m.refused("no room")],
    }
    for step in steps[name]:
        step()
    if name == "broken":
        h.clock.advance(TIMINGS.outage_limit_seconds)
    h.take()
    assert h.state == name, h.state
    return h


class SequenceTests(SynchronousTestCase):
    def test_proposal_to_active_and_new_revisions(self) -> None:
        h = Harness()
        self.assertEqual(h.take(), [("save", "proposed")])
        h.machine.accepted()
        self.assertEqual(
            h.take(), [("keeper.allow", 100 * MiB), ("sync.push",), ("save", "syncing")]
        )
        h.machine.revision_committed()
        self.assertEqual(h.take(), [("sync.push",)])
        h.machine.synced()
        self.assertEqual(h.take(), [("checks.start",), ("save", "active")])
        h.machine.check_passed()
        self.assertEqual(h.take(), [("score", True)])
        h.machine.peer_reachable()
        self.assertEqual(h.take(), [])
        h.machine.revision_committed()
        self.assertEqual(
            h.take(), [("checks.stop",), ("sync.push",), ("save", "syncing")]
        )
        h.machine.synced()
        self.assertEqual(h.take(), [("checks.start",), ("save", "active")])

    def test_we_keep_what_the_terms_say_for_the_acceptor_too(self) -> None:
        clock = Clock()
        fakes = ContractFakes()
        core = make_core(clock, fakes)
        core.contract = Contract(signed_terms(), bytes(PEER.verify_key))
        machine = new_contract(core)
        machine.accepted()
        self.assertIn(("keeper.allow", 200 * MiB), fakes.take())

    def test_refused(self) -> None:
        h = Harness()
        h.take()
        h.machine.refused("this node has 10 MiB free")
        self.assertEqual(h.take(), [("save", "ended")])
        self.assertEqual(h.fakes.last_saved.ended.reason, "this node has 10 MiB free")

    def test_withdrawn_proposal_tells_the_peer(self) -> None:
        h = Harness()
        h.take()
        h.machine.end_requested("changed my mind")
        self.assertEqual(
            h.take(), [("tell_ending", "changed my mind", T0), ("save", "ended")]
        )

    def test_containment_asks_three_more_times_then_fails(self) -> None:
        h = to_state("active")
        h.machine.check_unanswered()
        self.assertEqual(h.take(), [("checks.retry",), ("save", "suspect")])
        self.assertEqual(h.fakes.last_saved.suspect.unanswered, 1)
        for asked in (2, 3, 4):
            h.machine.check_unanswered()
            if asked <= 3:
                self.assertEqual(h.take(), [("checks.retry",), ("save", "suspect")])
                self.assertEqual(h.fakes.last_saved.suspect.unanswered, asked)
        # The fourth ask unanswered counts as one failure; a long good
        # record absorbs it and the contract is active again.
        self.assertEqual(
            h.take(),
            [
                ("score", False),
                ("save", "suspect"),
                ("checks.start",),
                ("save", "active"),
            ],
        )

    def test_answer_during_containment_returns_to_active(self) -> None:
        h = to_state("active")
        h.machine.check_unanswered()
        h.machine.check_unanswered()
        h.take()
        h.machine.check_passed()
        self.assertEqual(
            h.take(),
            [
                ("score", True),
                ("save", "suspect"),
                ("checks.start",),
                ("save", "active"),
            ],
        )

    def test_offline_for_hours_is_suspect_not_broken(self) -> None:
        h = to_state("active")
        h.machine.peer_unreachable()
        self.assertEqual(h.take(), [("save", "suspect")])
        self.assertEqual(h.core.alarm.at, T0 + TIMINGS.outage_limit_seconds)
        for _ in range(12):
            h.clock.advance(HOUR)
            h.machine.peer_unreachable()
        self.assertEqual(h.take(), [], "a continuing outage changes nothing")
        self.assertEqual(h.state, "suspect")
        h.machine.peer_reachable()
        self.assertEqual(
            h.take(), [("save", "suspect"), ("checks.start",), ("save", "active")]
        )
        self.assertIsNone(h.core.alarm.at)
        h.clock.advance(TIMINGS.outage_limit_seconds)
        self.assertEqual(h.state, "active")

    def test_outage_past_the_limit_breaks_then_grace_then_drop(self) -> None:
        h = to_state("active")
        h.machine.peer_unreachable()
        h.take()
        h.clock.advance(TIMINGS.outage_limit_seconds)
        now = h.clock.seconds()
        self.assertEqual(
            h.take(),
            [
                ("checks.stop",),
                ("sync.stop",),
                ("keeper.freeze",),
                (
                    "tell_broken",
                    "unreachable for more than 14 days",
                    now + TIMINGS.grace_after_outage_seconds,
                ),
                ("save", "broken"),
            ],
        )
        self.assertEqual(h.fakes.drops, 0)
        h.clock.advance(TIMINGS.grace_after_outage_seconds - 1)
        self.assertEqual(h.take(), [])
        h.clock.advance(1)
        self.assertEqual(h.take(), [("keeper.drop",), ("save", "ended")])
        self.assertIn("grace period ended", h.fakes.last_saved.ended.reason)

    def test_a_new_peer_that_keeps_failing_is_broken(self) -> None:
        h = Harness(reputation=scores.NEW_PEER)
        h.machine.accepted()
        h.machine.synced()
        h.take()
        h.machine.check_failed("digest mismatch")
        self.assertEqual(h.take(), [("score", False)])
        h.machine.check_failed("digest mismatch")
        self.assertEqual(h.take(), [("score", False), ("save", "suspect")])
        h.machine.check_failed("digest mismatch")
        events = h.take()
        self.assertEqual(events[0], ("score", False))
        self.assertEqual(events[1], ("save", "suspect"))
        self.assertEqual(
            events[2:5], [("checks.stop",), ("sync.stop",), ("keeper.freeze",)]
        )
        self.assertEqual(events[5][0], "tell_broken")
        self.assertIn("failed checks (digest mismatch)", str(events[5][1]))
        self.assertEqual(events[5][2], T0 + TIMINGS.grace_after_failed_checks_seconds)
        self.assertEqual(events[6:], [("save", "broken")])

    def test_a_long_good_record_breaks_after_twelve_failures(self) -> None:
        h = to_state("active")
        states = []
        for _ in range(12):
            h.machine.check_failed("missing")
            states.append(h.state)
        self.assertEqual(states, ["active"] * 5 + ["suspect"] * 6 + ["broken"])

    def test_new_revision_while_suspect_pauses_checks(self) -> None:
        h = to_state("active")
        h.machine.peer_unreachable()
        h.take()
        h.machine.revision_committed()
        self.assertEqual(
            h.take(), [("checks.stop",), ("sync.push",), ("save", "suspect")]
        )
        self.assertTrue(h.fakes.last_saved.suspect.needs_sync)
        h.machine.peer_reachable()
        self.assertEqual(h.take(), [("sync.push",), ("save", "suspect")])
        self.assertEqual(h.state, "suspect")
        h.machine.synced()
        self.assertEqual(
            h.take(),
            [
                ("checks.start",),
                ("save", "suspect"),
                ("checks.start",),
                ("save", "active"),
            ],
        )

    def test_unreachable_while_syncing(self) -> None:
        h = to_state("syncing")
        h.machine.peer_unreachable()
        self.assertEqual(h.take(), [("save", "suspect")])
        self.assertTrue(h.fakes.last_saved.suspect.needs_sync)
        h.machine.peer_reachable()
        self.assertEqual(h.take(), [("sync.push",), ("save", "suspect")])
        h.machine.synced()
        self.assertEqual(h.state, "active")

    def test_graceful_end_by_us(self) -> None:
        h = to_state("active")
        h.machine.end_requested("moving to a bigger disk")
        keep_until = T0 + TIMINGS.ending_keep_seconds
        self.assertEqual(
            h.take(),
            [
                ("checks.stop",),
                ("sync.stop",),
                ("keeper.freeze",),
                ("tell_ending", "moving to a bigger disk", keep_until),
                ("save", "ending"),
            ],
        )
        h.machine.data_moved()
        self.assertEqual(h.take(), [("tell_released",)])
        h.machine.peer_released()
        self.assertEqual(h.take(), [("keeper.drop",), ("save", "ended")])
        h.machine.data_moved()
        self.assertEqual(h.take(), [("tell_released",)])

    def test_ended_by_the_peer_keeps_its_data_until_the_deadline(self) -> None:
        h = to_state("active")
        h.machine.peer_ended("replaced you")
        self.assertEqual(
            h.take(),
            [("checks.stop",), ("sync.stop",), ("keeper.freeze",), ("save", "ending")],
        )
        self.assertFalse(h.fakes.last_saved.ending.by_us)
        h.machine.peer_ended("replaced you")
        self.assertEqual(h.take(), [])
        h.clock.advance(TIMINGS.ending_keep_seconds)
        self.assertEqual(h.take(), [("keeper.drop",), ("save", "ended")])
        self.assertEqual(h.fakes.last_saved.ended.reason, "replaced you")

    def test_peer_reasons_are_bounded(self) -> None:
        h = to_state("active")
        h.machine.peer_ended("x\x00\x1b[31m" + "y" * 5000)
        reason = h.fakes.last_saved.ending.reason
        self.assertLessEqual(len(reason), 300)
        self.assertNotIn("\x1b", reason)
        self.assertNotIn("\x00", reason)


class IllegalInputTests(SynchronousTestCase):
    ILLEGAL = {
        "proposed": ["synced", "check_passed", "grace_expired", "peer_released"],
        "syncing": ["accepted", "check_passed", "check_unanswered", "grace_expired"],
        "active": [
            "accepted",
            "synced",
            "grace_expired",
            "peer_released",
            "data_moved",
        ],
        "suspect": ["accepted", "grace_expired", "data_moved"],
        "broken": ["accepted", "synced", "check_passed", "outage_limit_reached"],
        "ending": ["accepted", "check_failed", "end_requested"],
        "ended": ["accepted", "end_requested", "grace_expired", "check_passed"],
    }

    def test_illegal_inputs_raise_and_change_nothing(self) -> None:
        for state, inputs in self.ILLEGAL.items():
            for name in inputs:
                h = to_state(state)
                before = h.machine.snapshot()
                method = getattr(h.machine, name)
                with self.assertRaises(NoTransition, msg=f"{name} in {state}"):
                    if name in ("check_failed", "end_requested", "refused"):
                        method("why")
                    else:
                        method()
                self.assertEqual(h.take(), [], f"{name} in {state}")
                self.assertEqual(h.machine.snapshot(), before)


class PersistenceTests(SynchronousTestCase):
    RESUMED = {
        "proposed": [],
        "syncing": [("keeper.allow", 100 * MiB), ("sync.push",)],
        "active": [("keeper.allow", 100 * MiB), ("checks.start",)],
        "suspect": [("keeper.allow", 100 * MiB), ("checks.start",)],
        "broken": [("keeper.freeze",)],
        "ending": [("keeper.freeze",)],
        "ended": [],
    }

    def test_round_trip_in_every_state(self) -> None:
        for state, resumed in self.RESUMED.items():
            h = to_state(state)
            record = h.machine.snapshot()
            self.assertEqual(h.fakes.last_saved, record, state)
            alarm = h.core.alarm.at
            h.restart()
            self.assertEqual(h.machine.snapshot(), record, state)
            self.assertEqual(h.take(), [], "restoring does no work by itself")
            h.machine.restarted()
            self.assertEqual(h.take(), resumed, state)
            self.assertEqual(h.core.alarm.at, alarm, state)

    def test_restored_machine_goes_on(self) -> None:
        h = to_state("broken")
        h.restart()
        h.machine.restarted()
        h.take()
        h.clock.advance(TIMINGS.grace_after_outage_seconds)
        self.assertEqual(h.take(), [("keeper.drop",), ("save", "ended")])

    def test_deadline_passed_while_stopped_fires_at_restart(self) -> None:
        h = to_state("ending")
        h.restart()
        h.clock.advance(TIMINGS.ending_keep_seconds + DAY)
        h.machine.restarted()
        h.clock.advance(0)
        self.assertEqual(
            h.take(), [("keeper.freeze",), ("keeper.drop",), ("save", "ended")]
        )

    def test_record_of_another_contract_is_refused(self) -> None:
        h = to_state("active")
        record = h.machine.snapshot()
        other = Contract(signed_terms(nonce=b"m" * 16), bytes(US.verify_key))
        core = make_core(h.clock, ContractFakes())
        core.contract = other
        with self.assertRaises(InvalidRecord):
            restore_contract(core, record)

    def test_damaged_records_are_refused(self) -> None:
        h = to_state("suspect")
        good = h.machine.snapshot()
        damaged = []
        for change in (
            lambda r: setattr(r, "state", "sleeping"),
            lambda r: setattr(r, "state", "active"),
            lambda r: setattr(r, "format", 2),
            lambda r: setattr(r.suspect, "since", float("nan")),
            lambda r: setattr(r.suspect, "since", -1.0),
            lambda r: r.ClearField("suspect"),
        ):
            record = storedpb_pb2.ContractRecord()
            record.CopyFrom(good)
            change(record)
            damaged.append(record)
        broken = to_state("broken").machine.snapshot()
        broken.broken.cause = 99
        damaged.append(broken)
        for record in damaged:
            with self.assertRaises(InvalidRecord):
                restore_contract(make_core(h.clock, ContractFakes()), record)


# Random event sequences: every step is an event, a restart, the clock
# moving on, or the peer pushing data. Events that move a contract forward
# are listed more often than those that end it, so sequences spend their
# length in the interesting states rather than in "ended".
_FREQUENT = [
    ("accepted",),
    ("synced",),
    ("check_passed",),
    ("check_failed", "bad"),
    ("check_unanswered",),
]
_OCCASIONAL = [
    ("revision_committed",),
    ("peer_unreachable",),
    ("peer_reachable",),
    ("restart",),
    ("advance", HOUR),
    ("advance", DAY),
    ("peer_stores", 30 * MiB),
    ("peer_stores", 150 * MiB),
]
_RARE = [
    ("refused", "no"),
    ("end_requested", "bye"),
    ("peer_ended", "bye"),
    ("peer_released",),
    ("data_moved",),
    ("advance", 15 * DAY),
    ("advance", 31 * DAY),
]
STEPS = st.sampled_from(_FREQUENT * 4 + _OCCASIONAL * 2 + _RARE)
IN_FORCE = {"syncing", "active", "suspect"}


class InvariantTests(SynchronousTestCase):
    @given(
        st.sampled_from(
            ["proposed", "syncing", "active", "suspect", "broken", "ending"]
        ),
        st.lists(STEPS, min_size=10, max_size=80),
        st.sampled_from([scores.NEW_PEER, scores.long_good_record()]),
    )
    @settings(max_examples=300, deadline=None)
    def test_random_event_sequences(
        self,
        start: str,
        steps: list[tuple[object, ...]],
        reputation: scores.AuditReputation,
    ) -> None:
        h = to_state(start, reputation)
        for step in steps:
            before = h.machine.snapshot()
            drops = h.fakes.drops
            h.take()
            name, *args = step
            if name == "restart":
                h.restart()
                self.assertEqual(h.machine.snapshot(), before)
                h.machine.restarted()
            elif name == "advance":
                h.clock.advance(float(args[0]))  # type: ignore[arg-type]
            elif name == "peer_stores":
                h.fakes.peer_stores(int(args[0]))  # type: ignore[call-overload]
            else:
                try:
                    getattr(h.machine, str(name))(*args)
                except NoTransition:
                    self.assertEqual(h.take(), [])
                    self.assertEqual(h.machine.snapshot(), before)
                    continue
            after = h.machine.snapshot()
            events = h.take()
            # Persisted on every change: the last record is the state.
            self.assertEqual(h.fakes.last_saved, after)
            # The record restores to the same state and data.
            fresh = restore_contract(make_core(h.clock, ContractFakes()), after)
            self.assertEqual(fresh.snapshot(), after)
            # Never drop the peer's data while its contract is in force.
            if h.fakes.drops > drops:
                self.assertIn(before.state, {"broken", "ending"})
                self.assertNotIn(after.state, IN_FORCE)
            # Never hold more than the contract size; nothing granted
            # once the contract is no longer in force.
            self.assertLessEqual(h.fakes.held, CONTRACT.we_keep_bytes)
            if h.fakes.allowed is not None:
                self.assertLessEqual(h.fakes.allowed, CONTRACT.we_keep_bytes)
            if after.state not in IN_FORCE:
                self.assertNotIn(
                    "keeper.allow", [e[0] for e in events], (before.state, step)
                )
            if after.state in {"broken", "ending"}:
                self.assertTrue(h.fakes.frozen)
            # A suspect or broken deadline is always armed.
            if after.state in {"broken", "ending"}:
                self.assertIsNotNone(h.core.alarm.at)
            if after.state == "suspect" and after.suspect.HasField("unreachable_since"):
                self.assertEqual(
                    h.core.alarm.at,
                    after.suspect.unreachable_since + TIMINGS.outage_limit_seconds,
                )
