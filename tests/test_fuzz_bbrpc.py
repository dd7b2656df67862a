"""Fuzzing bbrpc: the frame decoder, the handshake checks, onion addresses,
and real connections to a real node from strangers and from authenticated
peers sending every message type mutated.

The node under attack is a real swarm node (``testing.swarm``: its real
session, stores and bbrpc handler, on a ``task.Clock``); attackers reach
it through ``testing.link`` exactly as a TCP peer would. Every message type
is found generically (the call table and the Envelope's oneof), so calls
other branches add are fuzzed too. See docs/wire-protocol.md, "Fuzzing".
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from hypothesis import example
from hypothesis import strategies as st
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.bbrpc import handshake
from barterbackup.bbrpc.calls import CALLS
from barterbackup.bbrpc.channel import PeerLimits
from barterbackup.bbrpc.connection import PeerConnection
from barterbackup.bbrpc.framing import (
    LENGTH_PREFIX,
    MAX_FRAME_LENGTH,
    PREFIX_LENGTH,
    FrameDecoder,
    FrameError,
    encode_frame,
)
from barterbackup.bbrpc.handshake import HandshakeFailed, Role
from barterbackup.chat.wire import LINGER_SECONDS
from barterbackup.keys import onion
from barterbackup.revisions import REVISION_FORMAT, SIGNATURE_LABEL, verify_root
from barterbackup.testing.fakes import make_revision
from barterbackup.testing.link import Direction, PeerLink, keys_for_test
from barterbackup.testing.swarm import PASSWORD_STEM, Swarm, cheap_keys
from tests.fuzzing import (
    fuzz_target,
    messages,
    mutated,
    serialized,
    splits,
    without_fsync,
)

ENVELOPE = bbrpc_pb2.Envelope.DESCRIPTOR
BODY_FIELDS = [field.name for field in ENVELOPE.oneofs_by_name["body"].fields]
# Every call a peer may open, from the one call table (new calls included).
REQUEST_FIELDS = sorted(CALLS)
AUTHENTICATED_LIMIT = PeerLimits().max_frame_length
HANDSHAKE_LIMIT = PeerLimits().max_handshake_frame_length
LINK_HIGH_WATER = 65536
# Attackers use keys no swarm node has, but the last: the honest node's
# (swarm node 1), which holds a contract with the target, so its pushes
# reach the replica store (an owner gone hostile).
HONEST_KEYS = cheap_keys(f"{PASSWORD_STEM}1")
ATTACKER_KEYS = [keys_for_test(index) for index in range(100, 107)] + [HONEST_KEYS]
CONTRACTED = len(ATTACKER_KEYS) - 1

CALL_IDS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 5, 7, 2**63, 2**64 - 1]),
    st.integers(0, 64),
    st.integers(0, 2**64 - 1),
)


def _envelope(call_id: int, end: bool, body: tuple[str, Any] | None) -> Any:
    envelope = bbrpc_pb2.Envelope(call_id=call_id, end=end)
    if body is not None:
        field, value = body
        getattr(envelope, field).SetInParent()
        getattr(envelope, field).CopyFrom(value)
    return envelope


def _bodies(names: list[str]) -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        [
            messages(ENVELOPE.fields_by_name[name].message_type).map(
                functools.partial(_named, name)
            )
            for name in names
        ]
    )


def _named(name: str, value: Any) -> tuple[str, Any]:
    return name, value


def envelopes(call_ids: st.SearchStrategy[int] = CALL_IDS) -> st.SearchStrategy[Any]:
    """Envelopes of every body kind: requests of the call table more often."""
    return st.builds(
        _envelope,
        call_ids,
        st.booleans(),
        st.one_of(st.none(), _bodies(REQUEST_FIELDS), _bodies(BODY_FIELDS)),
    )


def _frame(payload: bytes) -> bytes:
    return LENGTH_PREFIX.pack(len(payload)) + payload


def any_frame(envelope: Any) -> bytes:
    """``envelope``'s frame whatever its size (``encode_frame`` refuses one
    over the limit; a peer may send it anyway)."""
    return _frame(envelope.SerializeToString())


# Byte streams a peer may send: frames of envelopes, frames of garbage,
# frames announcing any length, raw garbage, and mutations of all of them.
frame_streams = st.one_of(
    st.lists(envelopes().map(any_frame), max_size=6).map(b"".join),
    st.lists(st.binary(max_size=64).map(_frame), max_size=6).map(b"".join),
    st.lists(serialized(envelopes()).map(_frame), max_size=4).map(b"".join),
    st.binary(max_size=300),
    mutated(st.lists(envelopes().map(any_frame), min_size=1, max_size=4).map(b"".join)),
)


def split_streams(streams: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """Byte streams cut at arbitrary points, as a transport may deliver them."""
    return streams.flatmap(splits)


def _decode_all(
    pieces: list[bytes], limit: int, raise_after: int | None
) -> tuple[list[Any], type[FrameError] | None, FrameDecoder]:
    """Feed ``pieces`` as a connection does; the limit rises after
    ``raise_after`` frames (as it does after the peer's Auth)."""
    decoder = FrameDecoder(limit)
    got: list[Any] = []
    try:
        for piece in pieces:
            decoder.add(piece)
            while (envelope := decoder.next()) is not None:
                got.append(envelope)
                if raise_after is not None and len(got) == raise_after:
                    decoder.max_frame_length = AUTHENTICATED_LIMIT
            # Only one partial frame is ever held once decoding caught up.
            assert decoder.buffered < PREFIX_LENGTH + decoder.max_frame_length
    except FrameError as error:
        return got, type(error), decoder
    return got, None, decoder


class FrameDecoderFuzz(SynchronousTestCase):
    @fuzz_target(
        "bbrpc.frames",
        cost=2,
        pieces=split_streams(frame_streams),
        limit=st.sampled_from([16, 200, HANDSHAKE_LIMIT, MAX_FRAME_LENGTH]),
        raise_after=st.none() | st.integers(0, 3),
    )
    def test_any_stream_split_anywhere(
        self, pieces: list[bytes], limit: int, raise_after: int | None
    ) -> None:
        got, error, decoder = _decode_all(pieces, limit, raise_after)
        # However the bytes were split, the same frames and the same error.
        whole, whole_error, _ = _decode_all([b"".join(pieces)], limit, raise_after)
        self.assertEqual((got, error), (whole, whole_error))
        if error is not None:
            # Failed for good: nothing held, every later call raises.
            self.assertEqual(decoder.buffered, 0)
            self.assertRaises(error, decoder.add, b"\0\0\0\0")
            self.assertRaises(error, decoder.next)

    @fuzz_target(
        "bbrpc.frames.round_trip", cost=2, sent=st.lists(envelopes(), max_size=5)
    )
    def test_every_envelope_round_trips(self, sent: list[Any]) -> None:
        fitting = [e for e in sent if e.ByteSize() <= AUTHENTICATED_LIMIT]
        for envelope in sent:
            if envelope not in fitting:
                # The encoder refuses what the decoder would: never sent.
                with self.assertRaises(FrameError):
                    encode_frame(envelope, AUTHENTICATED_LIMIT)
        stream = b"".join(encode_frame(e, AUTHENTICATED_LIMIT) for e in fitting)
        self.assertEqual(FrameDecoder(AUTHENTICATED_LIMIT).feed(stream), fitting)


# -- the handshake's pure checks --------------------------------------------

SERVER = keys_for_test(20)
CLIENT = keys_for_test(21)
NOW = 1_800_000_000.0
OUR_NONCE = bytes(range(32))
SKEW = handshake.DEFAULT_MAX_CLOCK_SKEW


def _hellos() -> st.SearchStrategy[Any]:
    """Hellos that are nearly right as often as wildly wrong."""
    return messages(
        bbrpc_pb2.Hello.DESCRIPTOR,
        overrides={
            "protocol_version": st.sampled_from([0, 1, 2, 2**32 - 1]),
            "onion_pubkey": st.one_of(
                st.sampled_from(
                    [SERVER.onion_pubkey, CLIENT.onion_pubkey, bytes(32), b"", b"k"]
                ),
                st.binary(min_size=31, max_size=33),
            ),
            "nonce": st.one_of(
                st.just(OUR_NONCE), st.binary(min_size=31, max_size=33), st.binary()
            ),
            "timestamp": st.one_of(
                st.integers(int(NOW - 2 * SKEW), int(NOW + 2 * SKEW)),
                st.sampled_from([0, -(2**63), 2**63 - 1]),
            ),
            "peer_onion_address": st.one_of(
                st.sampled_from(
                    [
                        "",
                        SERVER.onion_address,
                        SERVER.onion_address.upper(),
                        SERVER.onion_address[:-6],
                        CLIENT.onion_address,
                    ]
                ),
                mutated(SERVER.onion_address.encode()).map(
                    lambda b: b.decode("utf-8", "replace")
                ),
                st.text(max_size=70),
            ),
        },
    )


HELLO_FIELDS = [field.name for field in bbrpc_pb2.Hello.DESCRIPTOR.fields]


def _tampered(role: Role, nonce: bytes, wild: Any, fields: set[str]) -> Any:
    """The Hello an honest peer of ``role``'s would send, with ``fields``
    taken from a wild one: each check meets its own bad value often."""
    if role is Role.SERVER:  # we serve: the peer is the client
        hello = handshake.new_hello(CLIENT, nonce, NOW, SERVER.onion_address)
    else:
        hello = handshake.new_hello(SERVER, nonce, NOW)
    for name in fields:
        setattr(hello, name, getattr(wild, name))
    return hello


def hello_cases() -> st.SearchStrategy[tuple[Role, Any]]:
    """(our role, the peer's Hello): wild, or valid with a few fields wild."""
    return st.one_of(
        [
            st.tuples(
                st.just(role),
                st.one_of(
                    _hellos(),
                    st.builds(
                        functools.partial(_tampered, role),
                        st.binary(min_size=32, max_size=32),
                        _hellos(),
                        st.sets(st.sampled_from(HELLO_FIELDS), max_size=2),
                    ),
                ),
            )
            for role in Role
        ]
    )


def _acceptable(hello: Any, role: Role) -> bool:
    """docs/wire-protocol.md §3, checks 1-5, written out independently."""
    ours = SERVER if role is Role.SERVER else CLIENT
    peer_key = CLIENT if role is Role.SERVER else SERVER
    if hello.protocol_version < 1 or len(hello.nonce) != 32:
        return False
    if len(hello.onion_pubkey) != 32 or hello.nonce == OUR_NONCE:
        return False
    if hello.onion_pubkey == ours.onion_pubkey:
        return False
    if abs(hello.timestamp - NOW) > SKEW:
        return False
    if role is Role.CLIENT:
        return hello.onion_pubkey == peer_key.onion_pubkey and not (
            hello.peer_onion_address
        )
    try:
        return onion.normalize_onion_address(hello.peer_onion_address) == (
            SERVER.onion_address
        )
    except onion.InvalidOnionAddress:
        return False


class HandshakeFuzz(SynchronousTestCase):
    @fuzz_target("bbrpc.handshake.hello", case=hello_cases())
    def test_a_hello_is_accepted_exactly_when_the_spec_says(
        self, case: tuple[Role, Any]
    ) -> None:
        role, hello = case
        ours = SERVER if role is Role.SERVER else CLIENT
        try:
            handshake.check_peer_hello(
                hello,
                our_role=role,
                our_keys=ours,
                our_nonce=OUR_NONCE,
                now=NOW,
                dialed_address=SERVER.onion_address if role is Role.CLIENT else "",
            )
            accepted = True
        except HandshakeFailed as error:
            accepted = False
            # The reason names a check, never key material.
            self.assertNotIn(OUR_NONCE.hex(), str(error))
        self.assertEqual(accepted, _acceptable(hello, role))

    @fuzz_target(
        "bbrpc.handshake.auth",
        signature=st.one_of(
            st.binary(max_size=80), st.binary(min_size=64, max_size=64), st.none()
        ),
        flips=st.lists(st.integers(0, 64 * 8 - 1), max_size=3),
        role=st.sampled_from(list(Role)),
    )
    def test_only_the_real_signature_verifies(
        self, signature: bytes | None, flips: list[int], role: Role
    ) -> None:
        client_hello = handshake.hello_bytes(
            handshake.new_hello(CLIENT, OUR_NONCE, NOW, SERVER.onion_address)
        )
        server_hello = handshake.hello_bytes(
            handshake.new_hello(SERVER, bytes(32), NOW)
        )
        signer = CLIENT if role is Role.CLIENT else SERVER
        real = handshake.sign_transcript(signer, role, client_hello, server_hello)
        if signature is None:
            # The real signature with bits flipped.
            data = bytearray(real.signature)
            for bit in flips:
                data[bit // 8] ^= 1 << (bit % 8)
            signature = bytes(data)
        try:
            handshake.verify_auth(
                bbrpc_pb2.Auth(signature=signature),
                signer.onion_pubkey,
                role,
                client_hello,
                server_hello,
            )
            verified = True
        except HandshakeFailed:
            verified = False
        self.assertEqual(verified, signature == real.signature)


class OnionAddressFuzz(SynchronousTestCase):
    @fuzz_target(
        "keys.onion_address",
        text=st.one_of(
            st.text(max_size=70),
            mutated(SERVER.onion_address.encode()).map(lambda b: b.decode("latin-1")),
            st.sampled_from(
                [SERVER.onion_address, " " + SERVER.onion_address.upper() + "\n"]
            ),
        ),
    )
    def test_an_address_parses_to_its_key_or_is_refused(self, text: str) -> None:
        try:
            pubkey = onion.pubkey_from_onion_address(text)
        except onion.InvalidOnionAddress:
            return
        self.assertEqual(len(pubkey), 32)
        normalized = onion.onion_address_from_pubkey(pubkey)
        self.assertEqual(onion.normalize_onion_address(text), normalized)
        self.assertEqual(onion.pubkey_from_onion_address(normalized), pubkey)


# -- real connections to a real node ---------------------------------------


class _RawPeer(Protocol):
    """A stranger that writes bytes and keeps what it receives."""

    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def _forged(key: Any, root: Any) -> bytes:
    """``root`` signed by ``key`` as a SignedRoot, whatever it says."""
    root_bytes = root.SerializeToString(deterministic=True)
    signature = key.sign(SIGNATURE_LABEL + root_bytes).signature
    return storedpb_pb2.SignedRoot(
        root=root_bytes, signature=signature
    ).SerializeToString()


def _honest(key: Any, sizes: list[int], number: int) -> bytes:
    sections = [bytes([n % 251]) * n for n in sizes]
    return make_revision(key, sections, number).signed


@functools.cache
def _revisions(attacker: int) -> st.SearchStrategy[bytes]:
    """SignedRoots an attacker signs with its own key: roots its code could
    write (real trees it may never send), and roots of any shape."""
    key = ATTACKER_KEYS[attacker].signing_key
    tree_refs = messages(
        storedpb_pb2.TreeRef.DESCRIPTOR,
        overrides={
            "root_hash": st.sampled_from([hashlib.sha256(b"x").digest(), b""]),
            "level": st.sampled_from([0, 1, 33]),
            "entry_count": st.sampled_from([0, 1, 2**40, 2**64 - 1]),
            "byte_count": st.sampled_from([0, 1, 2**22, 2**40, 2**64 - 1]),
        },
    )
    forged = messages(
        storedpb_pb2.RevisionRoot.DESCRIPTOR,
        overrides={
            "format": st.sampled_from([REVISION_FORMAT, 0, 1]),
            "owner_pubkey": st.just(bytes(key.verify_key)),
            "sections": tree_refs,
            "manifest": tree_refs,
        },
    ).map(functools.partial(_forged, key))
    honest = st.builds(
        functools.partial(_honest, key),
        st.lists(st.integers(1, 5000), max_size=4),
        st.integers(0, 2**64 - 1),
    )
    return st.one_of(honest, forged)


# Odd ids are the dialling side's: new calls, mostly.
ODD_IDS = st.integers(0, 40).map(lambda n: 2 * n + 1)
ATTACK_IDS = st.one_of(ODD_IDS, CALL_IDS)


def _ping(call_id: int, payload: bytes) -> Any:
    return _envelope(call_id, True, ("ping", bbrpc_pb2.Ping(payload=payload)))


def _cancel(call_id: int) -> Any:
    return _envelope(call_id, True, ("cancel", bbrpc_pb2.Cancel()))


def _push(call_id: int, signed: bytes) -> Any:
    request = bbrpc_pb2.SetContentRevisionRequest(signed_root=signed)
    return _envelope(call_id, True, ("set_content_revision_request", request))


# Pings around the payload limit, empty bodies, cancels on any id.
CONTROL_FRAMES = st.one_of(
    st.builds(_ping, ODD_IDS, st.binary(max_size=100)),
    st.builds(_envelope, ATTACK_IDS, st.booleans(), st.none()),
    st.builds(_cancel, ATTACK_IDS),
).map(encode_frame)
ATTACK_FRAMES = st.one_of(
    CONTROL_FRAMES,
    envelopes(ATTACK_IDS).map(any_frame),
    serialized(envelopes(ATTACK_IDS)).flatmap(mutated).map(_frame),
    mutated(envelopes(ATTACK_IDS).map(any_frame), max_mutations=2),
)


@functools.cache
def _frames_of(attacker: int) -> st.SearchStrategy[list[bytes]]:
    """Strategies are built once (building them is dearer than drawing)."""
    # any_frame: a generated root may push the frame past the limit; a peer
    # may send that too (it is dropped), where encode_frame would refuse.
    pushes = st.builds(_push, ODD_IDS, _revisions(attacker)).map(any_frame)
    return st.lists(st.one_of(ATTACK_FRAMES, pushes), min_size=1, max_size=6)


@st.composite
def attacks(draw: Any) -> dict[str, Any]:
    """What one authenticated attacker sends, frame by frame."""
    attacker = draw(
        st.one_of(st.integers(0, len(ATTACKER_KEYS) - 1), st.just(CONTRACTED))
    )
    return {
        "attacker": attacker,
        "frames": draw(_frames_of(attacker)),
        # A peer that stops reading our answers after that many frames.
        "reads_until": draw(st.none() | st.integers(0, 3)),
    }


def _pinned(*envelopes: Any) -> dict[str, Any]:
    """An attack of these envelopes, for ``@example``."""
    return {
        "attacker": 0,
        "frames": [encode_frame(e) for e in envelopes],
        "reads_until": None,
    }


class NodeUnderAttack(SynchronousTestCase):
    """A node holding an honest peer's replica, attacked over real links."""

    def setUp(self) -> None:
        without_fsync(self)
        self.swarm = Swarm(Path(self.mktemp()), 2)
        self.target, honest = self.swarm.nodes
        for member in self.swarm.nodes:
            self.swarm.wait(member.node.set_storage_config(min_replicas=0))
        # The honest peer holds a contract with the target (only then does
        # the target keep its content) and pushes its revision there.
        self.swarm.connect(honest, self.target)
        self.swarm.connect(self.target, honest)
        honest.write_files({"notes.txt": os.urandom(3000)})
        self.swarm.wait(
            honest.node.propose_contract(
                self.target.address, 1 << 24, 1 << 24, list().append
            ),
            30,
        )
        self.swarm.wait(self.target_replicates(honest), 30)
        self.honest_keys = honest.session.keys
        assert self.honest_keys.onion_pubkey == HONEST_KEYS.onion_pubkey
        current = honest.session.content.current
        assert current is not None
        self.honest_signed = current.signed
        # The honest node goes away; its replica stays with the target.
        self.swarm.wait(honest.node.stopService())
        self.factory = self.swarm.network.listeners[self.target.address]
        self.baseline = (self.factory.connections, self.factory.handshaking)
        self.servers: list[PeerConnection] = []
        self.links: list[PeerLink] = []
        # The node's "dropping" log lines (its side of each link is the
        # server): at most one per connection.
        self.drops: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            text = str(event.get("log_format", ""))
            if text.startswith("bbrpc: dropping") and event.get("role") == "server":
                self.drops.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.addCleanup(self.swarm.stop)
        # The target starts holding the whole replica.
        held = self.held_for_the_owner()
        self.assertTrue(held.complete)
        self.assertEqual(held.signed_root, self.honest_signed)

    def target_replicates(self, honest: Any) -> Any:
        events: list[Any] = []
        return honest.node.replicate([self.target.address], events.append)

    # -- helpers --------------------------------------------------------

    def connect(self, client: Protocol) -> tuple[PeerConnection, PeerLink]:
        server = self.factory.buildProtocol(None)
        self.assertIsNotNone(server, "the node refused a connection")
        self.servers.append(server)
        link = PeerLink(client, server)
        self.links.append(link)
        return server, link

    def dial_as(self, keys: Any) -> tuple[PeerConnection, PeerConnection, PeerLink]:
        client = PeerConnection(
            self.swarm.clock,
            keys,
            object(),
            Role.CLIENT,
            dialed_address=self.target.address,
        )
        server, link = self.connect(client)
        return client, server, link

    def start_example(self) -> None:
        """Close what an example that failed left open, so the next one
        starts from a node with no attacker connected."""
        for link in self.links:
            link.disconnect()
        self.links.clear()
        self.flushLoggedErrors()
        self.drops.clear()
        self.held_before = self.held_for_the_owner()
        self.servers_before = len(self.servers)

    def settle(self, link: PeerLink, seconds: float = 5.0) -> None:
        for _ in range(int(seconds)):
            self.swarm.clock.advance(1.0)
            link.pump()

    def check_bounds(self, server: PeerConnection, link: PeerLink) -> None:
        """What the node holds for this peer stays inside the documented
        limits (docs/wire-protocol.md §4)."""
        limits = server.limits
        frame_limit = (
            limits.max_frame_length
            if server.authenticated
            else limits.max_handshake_frame_length
        )
        # Undecoded bytes: one partial frame (while reading goes on; a
        # closed connection reads nothing more and is let go).
        if not link.closed and not server._delivery_paused:
            self.assertLess(server._decoder.buffered, PREFIX_LENGTH + frame_limit)
        # Answers queued while the peer does not read.
        self.assertLessEqual(server._outbox_bytes, limits.max_outbox_bytes)
        # Written but not taken: one frame over the transport's mark at most.
        self.assertLessEqual(
            len(link.server_transport.value()),
            LINK_HIGH_WATER + PREFIX_LENGTH + limits.max_frame_length,
        )

    def check_pong_or_refusal(
        self,
        call_id: int,
        kind: str | None,
        answered: dict[int, list[Any]],
        attack: dict[str, Any],
    ) -> None:
        """docs/wire-protocol.md §2: a ping is echoed once (the connection
        stays only if it was short); an empty body is BAD_REQUEST."""
        replies = answered.get(call_id, [])
        if kind is None:
            errors = [e.error.code for e in replies if e.WhichOneof("body") == "error"]
            self.assertIn(bbrpc_pb2.ERROR_CODE_BAD_REQUEST, errors, replies)
            return
        pongs = [e for e in replies if e.WhichOneof("body") == "pong"]
        self.assertTrue(pongs and all(p.end for p in pongs), replies)
        self.assertLessEqual(
            len(pongs[0].pong.payload), PeerLimits().max_ping_payload, "amplified"
        )

    def after_attack(self, link: PeerLink, owner: bool = False) -> None:
        """Nothing escaped, nothing leaked, and honest peers are served."""
        link.disconnect()
        self.assertEqual(self.flushLoggedErrors(), [])
        # A dropped peer is dropped once: nothing more it sent is handled
        # (nor logged), however many frames were already read.
        self.assertLessEqual(len(self.drops), len(self.servers) - self.servers_before)
        still_open = [c for c in self.servers if c._state.name != "closed"]
        self.assertEqual(
            (self.factory.connections, self.factory.handshaking),
            self.baseline,
            f"connections left open: {still_open}",
        )
        held = self.held_for_the_owner()
        if not owner:
            # Nobody but the owner changes what is held for it.
            self.assertEqual(held, self.held_before)
        elif held.signed_root:
            # The owner itself may push or delete: whatever is held now is
            # a revision it signed, never one of its own bytes mangled.
            verify_root(held.signed_root, expected_owner=HONEST_KEYS.onion_pubkey)

    def held_for_the_owner(self) -> Any:
        """What the target holds for the honest owner, asked as the owner
        (which also proves an honest peer is still served)."""
        client, _, honest_link = self.dial_as(self.honest_keys)
        self.assertTrue(client.authenticated)
        held = self.successResultOf(
            client.call(
                "get_content_revision_request", bbrpc_pb2.GetContentRevisionRequest()
            )
        )
        self.successResultOf(
            client.call("peer_exchange_request", bbrpc_pb2.PeerExchangeRequest())
        )
        honest_link.disconnect()
        return held

    # -- targets ----------------------------------------------------------

    @fuzz_target(
        "bbrpc.connection.stranger",
        cost=4,
        pieces=split_streams(frame_streams),
        hello_first=st.booleans(),
    )
    # Found by fuzzing: every frame of one read was handled (and logged)
    # after the first had dropped the stranger.
    @example(
        pieces=[encode_frame(bbrpc_pb2.Envelope(call_id=1)) * 100], hello_first=False
    )
    def test_a_stranger_is_served_nothing(
        self, pieces: list[bytes], hello_first: bool
    ) -> None:
        self.start_example()
        stranger = _RawPeer()
        server, link = self.connect(stranger)
        if hello_first:
            # A valid Hello, so what follows meets the Auth check.
            hello = handshake.new_hello(
                ATTACKER_KEYS[0],
                os.urandom(32),
                self.swarm.clock.seconds(),
                self.target.address,
            )
            pieces = [encode_frame(bbrpc_pb2.Envelope(hello=hello)), *pieces]
        for piece in pieces:
            if link.closed:
                break
            link.client_transport.write(piece)
            self.check_bounds(server, link)
        self.assertFalse(server.authenticated)
        # Before authentication the node sends its Hello, and its Auth
        # once a valid Hello came: nothing else, whatever it was sent.
        for envelope in FrameDecoder().feed(bytes(stranger.received)):
            self.assertEqual(envelope.call_id, 0)
            self.assertIn(envelope.WhichOneof("body"), ("hello", "auth"))
        # No stranger outlives the handshake deadline.
        self.settle(link, server.limits.handshake_timeout + 1)
        self.assertTrue(link.closed)
        self.after_attack(link)

    @fuzz_target(
        "bbrpc.connection.handshake_tampered",
        cost=4,
        hello=_hellos(),
        fields=st.sets(
            st.sampled_from([f.name for f in bbrpc_pb2.Hello.DESCRIPTOR.fields])
        ),
        auth=st.none() | st.binary(max_size=70),
    )
    def test_a_tampered_handshake_fails_cleanly(
        self, hello: Any, fields: set[str], auth: bytes | None
    ) -> None:
        self.start_example()

        def tamper(envelope: Any) -> Any:
            kind = envelope.WhichOneof("body")
            if kind == "hello":
                for name in fields:
                    setattr(envelope.hello, name, getattr(hello, name))
            elif kind == "auth" and auth is not None:
                envelope.auth.signature = auth
            return envelope

        client = PeerConnection(
            self.swarm.clock,
            ATTACKER_KEYS[1],
            object(),
            Role.CLIENT,
            dialed_address=self.target.address,
        )
        server = self.factory.buildProtocol(None)
        self.servers.append(server)
        link = PeerLink(client, server, auto=False)
        self.links.append(link)
        link.tamper(Direction.to_server, tamper)
        link.pump()
        self.check_bounds(server, link)
        if server.authenticated:
            # Only a tampering that changed nothing the checks look at.
            self.assertTrue(client.authenticated)
            self.assertEqual(server.peer_pubkey, ATTACKER_KEYS[1].onion_pubkey)
        else:
            self.settle(link, server.limits.handshake_timeout + 1)
            self.assertTrue(link.closed)
        self.after_attack(link)

    @fuzz_target("bbrpc.connection.authenticated", cost=4, attack=attacks())
    # Each reaction of the §2 table at least once in every run.
    @example(
        attack=_pinned(_envelope(1, True, ("ping", bbrpc_pb2.Ping(payload=b"p" * 65))))
    )
    @example(
        attack=_pinned(_envelope(3, True, ("ping", bbrpc_pb2.Ping(payload=b"p" * 64))))
    )
    @example(attack=_pinned(_envelope(5, True, None)))
    @example(attack=_pinned(_envelope(7, True, ("hello", bbrpc_pb2.Hello()))))
    # Found by fuzzing: 1000 violations read at once were each handled and
    # logged after the first had dropped the connection.
    @example(
        attack={
            "attacker": 1,
            # One read holding 1000 frames.
            "frames": [
                encode_frame(_envelope(7, True, ("hello", bbrpc_pb2.Hello()))) * 1000
            ],
            "reads_until": None,
        }
    )
    @example(
        attack=_pinned(
            _envelope(9, True, ("download_request", bbrpc_pb2.DownloadRequest()))
        )
    )
    def test_an_authenticated_peer_gets_answers_or_is_dropped(
        self, attack: dict[str, Any]
    ) -> None:
        self.start_example()
        keys = ATTACKER_KEYS[attack["attacker"]]
        _client, server, link = self.dial_as(keys)
        self.assertTrue(server.authenticated)
        answered: dict[int, list[Any]] = {}

        def watch(envelope: Any) -> Any:
            answered.setdefault(envelope.call_id, []).append(envelope)
            return envelope

        link.tamper(Direction.to_client, watch)
        opened: list[tuple[int, str]] = []
        # The attacker's own view of the frames it sent (a frame announcing
        # 16 MiB swallows what follows): what the node must react to.
        sent_frames = FrameDecoder(AUTHENTICATED_LIMIT)
        for number, frame in enumerate(attack["frames"]):
            if link.closed:
                break
            if attack["reads_until"] == number:
                link.client_transport.pauseProducing()  # the peer stops reading
            try:
                sent = sent_frames.feed(frame)
            except FrameError:
                sent = []
            for envelope in sent:
                kind = envelope.WhichOneof("body")
                if _opens_a_call(envelope, server) or (
                    kind in ("ping", None) and _is_new_peer_call(envelope, server)
                ):
                    opened.append((envelope.call_id, kind))
            link.client_transport.write(frame)
            self.check_bounds(server, link)
            for envelope in sent:
                if envelope.WhichOneof("body") in ("hello", "auth"):
                    self.assertTrue(link.closed, "a second handshake is a violation")
        if attack["reads_until"] is None:
            self.settle(link)
            # Every call it opened was answered (an end frame), or the
            # connection was dropped: nothing hangs. A call streaming both
            # ways may wait for the caller's next item; a Cancel ends it.
            for call_id, kind in opened:
                if link.closed:
                    break
                if kind in ("ping", None):
                    self.check_pong_or_refusal(call_id, kind, answered, attack)
                    continue
                # A ping may have used the same id: its pong ends the ping,
                # not this call (the fuzz sent a ping, then a Chat, on id 1).
                ends = [
                    e
                    for e in answered.get(call_id, [])
                    if e.end and e.WhichOneof("body") != "pong"
                ]
                if not ends:
                    self.assertTrue(
                        CALLS[kind].client_streaming,
                        f"call {call_id} ({kind}) was never answered",
                    )
                    # Written as the attacker writes: the client's own
                    # connection may have closed its side meanwhile.
                    cancel = bbrpc_pb2.Envelope(
                        call_id=call_id, end=True, cancel=bbrpc_pb2.Cancel()
                    )
                    link.client_transport.write(encode_frame(cancel))
            link.pump()  # the Cancels reach the node
            if not link.closed and len(server.inbound):
                # A chat whose session already ended waits for the caller's
                # half up to its linger (the fuzz found one that did, its
                # Cancel behind it): bounded, never a hang.
                self.settle(link, LINGER_SECONDS + 1)
            if not link.closed:
                self.assertEqual(len(server.inbound), 0)
        self.after_attack(link, owner=attack["attacker"] == CONTRACTED)
        self.assertFalse(self.target.session.pool.is_connected(keys.onion_pubkey))


def _is_new_peer_call(envelope: Any, server: PeerConnection) -> bool:
    return envelope.call_id % 2 == 1 and envelope.call_id not in server.inbound._open


def _opens_a_call(envelope: Any, server: PeerConnection) -> bool:
    """A request of the call table on a new id of the dialler's parity."""
    return (
        envelope.WhichOneof("body") in CALLS
        and envelope.call_id % 2 == 1
        and envelope.call_id not in server.inbound._open
    )
