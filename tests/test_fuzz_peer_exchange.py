"""Fuzzing a ``PeerExchange`` answer from the asker's side
(``peers.exchange``): a peer answers with any list of strings (valid
addresses in any case, with or without ".onion", duplicates, our own
address, its own, mutated addresses, hostile and huge text, control
characters, lists past the bound) or with mutated wire bytes.

Properties: a list longer than ``MAX_EXCHANGED_PEERS`` is refused whole
with ``BadPeerExchange``; otherwise every candidate taken is a canonical v3
address, distinct, neither ours nor the answerer's, every entry is taken
or counted as dropped, and every valid address of another peer is taken.
Nothing is recorded: the result is the whole of what the answer leaves.
See docs/wire-protocol.md, "Fuzzing".
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from hypothesis import example
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.keys.onion import (
    onion_address_from_pubkey,
    pubkey_from_onion_address,
)
from barterbackup.peers.exchange import (
    MAX_EXCHANGED_PEERS,
    BadPeerExchange,
    ExchangedPeers,
    ask_peer_exchange,
    peers_of_exchange,
    shareable_for_exchange,
)
from tests.fuzzing import HOSTILE_TEXT, fuzz_target, mutated, texts

OURS = onion_address_from_pubkey(bytes([1]) * 32)
ANSWERER = onion_address_from_pubkey(bytes([2]) * 32)
OTHERS = [onion_address_from_pubkey(bytes([3 + n]) * 32) for n in range(40)]


def _spelled(address: str, spelling: str) -> str:
    """A valid address written another valid way."""
    if spelling == "upper":
        return address.upper()
    if spelling == "bare":
        return address.removesuffix(".onion")
    return address


valid = st.builds(
    _spelled,
    st.sampled_from(OTHERS),
    st.sampled_from(["canonical", "canonical", "upper", "bare"]),
)
excluded = st.sampled_from(
    [OURS, ANSWERER, OURS.upper(), ANSWERER.removesuffix(".onion")]
)
broken = st.one_of(
    st.sampled_from(OTHERS)
    .map(str.encode)
    .flatmap(mutated)
    .map(lambda b: b.decode("latin-1")),
    st.sampled_from(OTHERS).map(lambda a: " " + a),
    st.sampled_from(OTHERS).map(lambda a: a + "\n"),
    st.sampled_from(OTHERS).map(lambda a: a + "\x00"),
    st.sampled_from(OTHERS).map(lambda a: a[:-8] + "\x1b[2J" + a[-4:]),
    st.sampled_from(HOSTILE_TEXT),
    texts(),
)
entries = st.one_of(valid, valid, excluded, broken)
lists = st.one_of(
    st.lists(entries, max_size=12),
    # Near and past the bound, cheaply: one entry repeated.
    st.tuples(
        entries, st.sampled_from([MAX_EXCHANGED_PEERS, MAX_EXCHANGED_PEERS + 1, 3000])
    ).map(lambda pair: [pair[0]] * pair[1]),
    # Every other peer, each once or twice: up to the bound, all valid.
    st.lists(valid, min_size=30, max_size=MAX_EXCHANGED_PEERS),
)


class _Connection:
    """The answering peer's connection: the response from its wire bytes."""

    peer_onion_address = ANSWERER

    def __init__(self, wire: bytes) -> None:
        self.wire = wire
        self.calls: list[str] = []

    def call(self, request_field: str, message: Any) -> defer.Deferred[Any]:
        self.calls.append(request_field)
        try:
            return defer.succeed(bbrpc_pb2.PeerExchangeResponse.FromString(self.wire))
        except DecodeError as error:
            # The connection drops a frame it cannot decode.
            return defer.fail(ConnectionError(f"protocol error: {error}"))


class PeerExchangeFuzz(SynchronousTestCase):
    def check(self, addresses: list[str], result: ExchangedPeers | None) -> None:
        if len(addresses) > MAX_EXCHANGED_PEERS:
            self.assertIsNone(result, "a list past the bound was taken")
            return
        assert result is not None
        taken = result.addresses
        self.assertLessEqual(len(taken), MAX_EXCHANGED_PEERS)
        self.assertEqual(len(taken) + result.dropped, len(addresses))
        self.assertEqual(len(set(taken)), len(taken), "a duplicate was taken")
        for address in taken:
            # Canonical: the address of its own key, exactly.
            self.assertEqual(
                onion_address_from_pubkey(pubkey_from_onion_address(address)), address
            )
            self.assertNotIn(address, (OURS, ANSWERER))
        # Every valid address of another peer is taken, first come first.
        wanted = []
        for entry in addresses:
            for other in OTHERS:
                # Any letter case, with or without the suffix.
                if entry.lower() in (other, other.removesuffix(".onion")):
                    if other not in wanted:
                        wanted.append(other)
        self.assertEqual([a for a in taken if a in OTHERS], wanted)

    def parse(self, addresses: list[str]) -> ExchangedPeers | None:
        response = bbrpc_pb2.PeerExchangeResponse(onion_addresses=addresses)
        try:
            return peers_of_exchange(
                response, own_address=OURS, answerer_address=ANSWERER
            )
        except BadPeerExchange as error:
            self.assertIn(str(MAX_EXCHANGED_PEERS), str(error))
            return None

    @fuzz_target("peers.exchange_answers", addresses=lists)
    @example(addresses=[OTHERS[0], OTHERS[0].upper(), OURS, ANSWERER, "x" * 4097])
    @example(addresses=[OTHERS[0]] * (MAX_EXCHANGED_PEERS + 1))
    def test_only_valid_distinct_addresses_of_others_are_taken(
        self, addresses: list[str]
    ) -> None:
        self.check(addresses, self.parse(addresses))

    @fuzz_target(
        "peers.exchange_wire",
        wire=mutated(
            bbrpc_pb2.PeerExchangeResponse(
                onion_addresses=[OTHERS[0], OURS, OTHERS[1]]
            ).SerializeToString()
        ),
    )
    def test_the_asker_survives_any_answer_bytes(self, wire: bytes) -> None:
        connection = _Connection(wire)
        done = defer.Deferred.fromCoroutine(ask_peer_exchange(connection, OURS))
        self.assertEqual(connection.calls, ["peer_exchange_request"])
        results: list[Any] = []
        done.addBoth(results.append)
        self.assertEqual(len(results), 1, "the ask hung")
        outcome = results[0]
        try:
            addresses = list(
                bbrpc_pb2.PeerExchangeResponse.FromString(wire).onion_addresses
            )
        except DecodeError:
            self.assertTrue(outcome.check(ConnectionError))
            return
        if isinstance(outcome, ExchangedPeers):
            self.check(addresses, outcome)
        else:
            self.assertTrue(outcome.check(BadPeerExchange))
            self.assertGreater(len(addresses), MAX_EXCHANGED_PEERS)


class ShareableTests(SynchronousTestCase):
    def test_the_answer_leaves_out_the_asker_and_stops_at_the_bound(self) -> None:
        many = [onion_address_from_pubkey(n.to_bytes(32, "big")) for n in range(300)]
        shared = shareable_for_exchange([ANSWERER, *many], ANSWERER)
        self.assertEqual(shared, many[:MAX_EXCHANGED_PEERS])
        # An honest answer is one an honest asker takes whole.
        taken = peers_of_exchange(
            bbrpc_pb2.PeerExchangeResponse(onion_addresses=shared),
            own_address=OURS,
            answerer_address=ANSWERER,
        )
        self.assertEqual(list(taken.addresses), shared)
        self.assertEqual(taken.dropped, 0)
