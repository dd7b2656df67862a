"""Fuzzing the answers a node reads when it is the caller: a hostile peer
that our node dials answers every call of the call table (found
generically, so calls added later are answered too) with responses
generated from the response's descriptor, streams of them, or errors.

The node is a real swarm node on a ``task.Clock``; it connects to the
hostile peer, proposes and checks a contract, pushes its content there
(and, connected, pings it and asks it for peers by itself). Properties:
each operation ends (the clock runs out its deadlines) with a result or
the node's own typed error (``NodeError``), no exception reaches the
reactor, and the node goes on serving the CLI. See docs/wire-protocol.md,
"Fuzzing".
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.calls import CALLS, message_class
from barterbackup.bbrpc.connection import PeerConnection
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.bbrpc.handshake import Role
from barterbackup.contracts import terms as contract_terms
from barterbackup.errors import NodeError
from barterbackup.testing.link import keys_for_test
from barterbackup.testing.swarm import Swarm
from tests.fuzzing import fuzz_target, messages, without_fsync

HOSTILE_KEYS = keys_for_test(200)
HANDLERS = {spec.handler_method: spec for spec in CALLS.values()}
# What the node does with a peer: each an operation the CLI can start.
OPERATIONS = ("connect", "propose", "check", "replicate")
ERROR_CODES = [value.number for value in bbrpc_pb2.ErrorCode.DESCRIPTOR.values]


def _answer(spec: Any) -> st.SearchStrategy[tuple[str, Any]]:
    response = messages(message_class(spec.response_field).DESCRIPTOR, depth=2)
    if spec.handler_method == "propose_contract":
        # Mostly a real acceptance (countersigned, maybe with bytes
        # changed), so pushes and checks to the peer follow.
        accept = st.tuples(st.just("accept"), st.none() | st.integers(0, 2**16))
        return st.one_of(accept, accept, accept, _plain(spec, response))
    return _plain(spec, response)


def _plain(spec: Any, response: Any) -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        st.tuples(
            st.just("answer"),
            response if not spec.streaming else st.lists(response, max_size=4),
        ),
        st.tuples(st.just("error"), st.sampled_from(ERROR_CODES)),
        st.tuples(st.just("silent"), st.none()),
    )


# Per call kind, the answers the peer gives in turn (drawn up front, so an
# example draws the same whatever the node does with them).
scripts = st.fixed_dictionaries(
    {name: st.lists(_answer(spec), max_size=3) for name, spec in HANDLERS.items()}
)


class HostilePeer:
    """Serves every call of the table with its script's next answer (an
    error once the script ran out)."""

    def __init__(self, script: dict[str, list[tuple[str, Any]]]) -> None:
        self.script = {name: list(answers) for name, answers in script.items()}
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name not in HANDLERS:
            raise AttributeError(name)

        def answer(conn: Any, request: Any, send: Any = None) -> Any:
            self.calls.append(name)
            answers = self.script[name]
            if answers:
                how, value = answers.pop(0)
            elif name == "propose_contract":
                how, value = "accept", None  # so a contract can form
            else:
                how, value = "error", bbrpc_pb2.ERROR_CODE_BAD_REQUEST
            if how == "error":
                raise PeerCallError(value, "hostile refusal \x1b[2J")
            if how == "silent":
                return Deferred()  # never answers: the caller's deadline ends it
            if how == "accept":
                return _accepted(request, value)
            if send is None:
                return value
            return Deferred.fromCoroutine(self.stream(send, value))

        return answer

    async def stream(self, send: Any, items: list[Any]) -> None:
        for item in items:
            if hasattr(send, "send"):
                await send.send(item)
            else:
                await send(item)


class HostileFactory(Factory):
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.peer: HostilePeer | None = None

    def buildProtocol(self, addr: Any) -> PeerConnection:
        return PeerConnection(self.clock, HOSTILE_KEYS, self.peer, Role.SERVER)


class HostileServerFuzz(SynchronousTestCase):
    def setUp(self) -> None:
        without_fsync(self)
        self.examples = 0

    def fresh_node(self) -> Any:
        """A node of its own per example, so each example is reproducible."""
        self.examples += 1
        self.swarm = Swarm(Path(self.mktemp()) / str(self.examples), 1)
        self.addCleanup(self.swarm.stop)
        [member] = self.swarm.nodes
        self.swarm.wait(member.node.set_storage_config(min_replicas=0))
        member.write_files({"notes.txt": bytes(2000)})
        self.factory = HostileFactory(self.swarm.clock)
        self.swarm.network.listeners[HOSTILE_KEYS.onion_address] = self.factory
        return member.node

    @fuzz_target(
        "bbrpc.hostile_server",
        cost=6,
        operations=st.lists(st.sampled_from(OPERATIONS), min_size=1, max_size=4),
        script=scripts,
    )
    def test_answers_of_any_shape_end_in_results_or_typed_errors(
        self, operations: list[str], script: dict[str, Any]
    ) -> None:
        node = self.fresh_node()
        self.factory.peer = HostilePeer(script)
        address = HOSTILE_KEYS.onion_address
        for operation in operations:
            if operation == "connect":
                started = node.connect_peer(address)
            elif operation == "propose":
                started = node.propose_contract(address, 1 << 20, 1 << 20, _ignore)
            elif operation == "check":
                started = _maybe(node.check_contract, b"", address, "", 0, _ignore)
            else:
                started = _maybe(node.replicate, [address], _ignore)
            outcome = self.settle(started)
            if isinstance(outcome, Failure):
                # The node's own error, with a message for the user.
                self.assertIsInstance(outcome.value, NodeError, outcome.getTraceback())
                message = str(outcome.value)
                self.assertTrue(message)
                # The peer's text reaches the user escaped: no control
                # character (a terminal escape, say) survives.
                self.assertFalse(
                    [c for c in message if unicodedata.category(c) == "Cc"], message
                )
        self.assertEqual(self.flushLoggedErrors(), [])
        # The node still serves its CLI.
        node.peers()
        self.swarm.wait(node.set_storage_config(min_replicas=0))
        self.swarm.stop()

    def settle(self, started: Deferred[Any]) -> Any:
        """Run the clock until ``started`` fires (deadlines included)."""
        results: list[Any] = []
        started.addBoth(results.append)
        for _ in range(3000):  # 300 s of swarm time: every deadline passes
            if results:
                break
            self.swarm.clock.advance(0.1)
        self.assertTrue(results, "an operation never ended")
        return results[0]


def _accepted(request: Any, flip: int | None) -> Any:
    """The proposal countersigned by the hostile peer (a bit flipped at
    ``flip`` if given)."""
    proposal = contract_terms.verify_proposal(request.signed_terms)
    accepted = bytearray(
        contract_terms.accept(proposal, HOSTILE_KEYS.signing_key).encode()
    )
    if flip is not None:
        accepted[flip % len(accepted)] ^= 1 << (flip % 8)
    return bbrpc_pb2.ProposeContractResponse(accepted_terms=bytes(accepted))


def _ignore(event: Any) -> None:
    """Progress events: not under test here."""


def _maybe(method: Any, *args: Any) -> Deferred[Any]:
    """A Deferred of ``method(*args)``, its synchronous errors included."""
    try:
        result = method(*args)
    except Exception:
        return Deferred.fromCoroutine(_reraise(Failure()))
    if isinstance(result, Deferred):
        return result
    return Deferred.fromCoroutine(_value(result))


async def _reraise(failure: Failure) -> Any:
    failure.raiseException()


async def _value(value: Any) -> Any:
    return value
