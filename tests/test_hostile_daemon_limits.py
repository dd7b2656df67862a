"""Frames just under and over each limit, against a real daemon (issue 13's
hostile-peer suite, the limit edges, on real sockets).

For each limit of docs/wire-protocol.md §4 (and the Download bound of §7),
one step exactly at the limit — accepted: the connection lives and the
answer comes — and one just over it, with the documented reaction seen
from outside: the connection dropped, or ``Error{BUSY}`` /
``Error{BAD_REQUEST}`` while it lives. One daemon serves every edge, in
sequence; afterwards it still answers the CLI's ``status`` within a second
and a fresh honest peer authenticates and pings.

Not covered here: ``handshake_timeout`` (30 s; the daemon has no option to
shorten it, and waiting for it would double this module's time — the
in-memory tests in tests/test_bbrpc_handshake.py drive it with a
``task.Clock``), ``idle_timeout`` (600 s, likewise), and the outbox bounds
(tests/test_hostile_daemon.py: peers that ask and never read).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from barterbackup._proto import bbrpc_pb2, clirpc_pb2
from barterbackup.bbrpc import handshake
from barterbackup.bbrpc.channel import PeerLimits
from barterbackup.bbrpc.factory import AdmissionLimits, connect_peer
from barterbackup.contracts import terms
from barterbackup.keys.derive import NodeKeys, node_keys_from_master
from barterbackup.keys.onion import pubkey_from_onion_address
from barterbackup.sync.serve import MAX_BLOBS_PER_REQUEST
from barterbackup.testing.fakes import BlobDict, make_revision
from barterbackup.testing.link import keys_for_test
from tests.raw_peer import PeerClosed, RawPeer, error_code, frame_of, padded
from tests.util import PASSWORDS, short_tempdir, unlocked_tcp_daemon

# The values docs/wire-protocol.md §4 and §7 document; the test checks the
# code's defaults are these, then drives the daemon at and over each.
DOCUMENTED = {
    "max_handshake_frame_length": 64 * 1024,
    "max_frame_length": 1024 * 1024 + 64 * 1024,
    "max_concurrent_calls": 32,
    "max_ping_payload": 64,
    "max_clock_skew": 600.0,
    "max_handshaking": 64,
    "max_handshaking_per_source": 16,
    "max_connections": 512,
    "blobs_per_download": 4096,
}
LIMITS = PeerLimits()
ADMISSION = AdmissionLimits()
STATUS_WITHIN_SECONDS = 1.0
# The owner's one section: one whole Download piece.
SECTION_BYTES = 1024 * 1024
# Distinct loopback addresses (the admission limits count per source): enough
# to fill max_handshaking from full sources, and one more.
SOURCES = [
    f"127.0.0.{n}"
    for n in range(
        2, 3 + ADMISSION.max_handshaking // ADMISSION.max_handshaking_per_source
    )
]


def identity(number: int) -> NodeKeys:
    """Distinct cheap node keys for ``number`` (beyond keys_for_test's 256)."""
    return node_keys_from_master(number.to_bytes(4, "big") + b"limits" * 4 + b"..")


def ping_frame(call_id: int, payload: bytes = b"p", length: int = 0) -> bytes:
    """A Ping frame, its payload padded to ``length`` bytes if given."""
    envelope = bbrpc_pb2.Envelope(call_id=call_id, ping=bbrpc_pb2.Ping(payload=payload))
    return frame_of(
        padded(envelope, length) if length else envelope.SerializeToString()
    )


class DocumentedLimitsTests(SynchronousTestCase):
    def test_the_limits_are_the_documented_ones(self) -> None:
        self.assertEqual(
            {
                "max_handshake_frame_length": LIMITS.max_handshake_frame_length,
                "max_frame_length": LIMITS.max_frame_length,
                "max_concurrent_calls": LIMITS.max_concurrent_calls,
                "max_ping_payload": LIMITS.max_ping_payload,
                "max_clock_skew": LIMITS.max_clock_skew,
                "max_handshaking": ADMISSION.max_handshaking,
                "max_handshaking_per_source": ADMISSION.max_handshaking_per_source,
                "max_connections": ADMISSION.max_connections,
                "blobs_per_download": MAX_BLOBS_PER_REQUEST,
            },
            DOCUMENTED,
        )


class DaemonLimitEdgeTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.tmp = short_tempdir(self)
        self.daemon = unlocked_tcp_daemon(self, self.tmp / "node", PASSWORDS[0])
        # Contracts with anyone (within the unvetted cap): the owner below
        # is a stranger that gets storage by proposing. None formed by the
        # daemon itself (min replicas 0) to race that proposal.
        self.daemon.cli(
            "storage",
            "set",
            "--total",
            "64MiB",
            "--policy",
            "open",
            "--min-replicas",
            "0",
            check=True,
        )
        status = self.daemon.stub().GetStatus(clirpc_pb2.GetStatusRequest())
        self.address = status.onion_address
        host, port = status.peer_endpoint.rsplit(":", 1)
        self.host, self.port = host.split("tcp:")[-1], int(port)
        self.peers: list[RawPeer] = []
        self.addCleanup(self._close_peers)

    def _close_peers(self) -> None:
        for peer in self.peers:
            peer.close()

    def connect(self, source: str = "127.0.0.1") -> RawPeer:
        peer = RawPeer(self.host, self.port, source=source)
        self.peers.append(peer)
        return peer

    def authenticated(self, index: int, **handshake: Any) -> RawPeer:
        peer = self.connect()
        peer.handshake(keys_for_test(index), self.address, **handshake)
        return peer

    # -- the edges, each on its own connections --------------------------------

    def handshake_frame_edges(self) -> None:
        """max_handshake_frame_length: a Hello of exactly the limit is taken
        (its header alone leaves the daemon waiting for the body); a header
        one over drops the connection without waiting for a body."""
        limit = LIMITS.max_handshake_frame_length
        other = self.authenticated(9)

        def round_trip_elsewhere() -> None:
            # A round trip while the header alone is in: the daemon reads it
            # and must wait for the body (and answer others meanwhile).
            self.assertEqual(other.ping(b"meanwhile"), b"meanwhile")

        at_limit = self.authenticated(
            10, hello_length=limit, before_body=round_trip_elsewhere
        )
        self.assertEqual(at_limit.ping(b"after a full Hello"), b"after a full Hello")

        over = self.connect()
        over.receive_hello()
        over.send_bytes(struct.pack(">I", limit + 1))
        self.assertTrue(over.closed_by_peer())

    def frame_edges(self) -> None:
        """max_frame_length after authentication: a frame of exactly the
        limit is handled, even in the same write as the Auth (finding 12);
        a header one over drops the connection."""
        limit = LIMITS.max_frame_length
        peer = self.connect()
        call_id = peer.new_call_id()
        peer.handshake(
            keys_for_test(11),
            self.address,
            after_auth=ping_frame(call_id, b"full", limit),
        )
        [pong] = peer.answers({call_id})[call_id]
        self.assertEqual(pong.pong.payload, b"full")
        call_id = peer.new_call_id()
        peer.send_bytes(ping_frame(call_id, b"again", limit))
        [pong] = peer.answers({call_id})[call_id]
        self.assertEqual(pong.pong.payload, b"again")

        peer.send_bytes(struct.pack(">I", limit + 1))
        self.assertTrue(peer.closed_by_peer())

    def clock_skew_edges(self) -> None:
        """max_clock_skew: a Hello dated 10 s inside it is taken, one dated
        10 s outside it drops the connection (10 s either side, as both
        clocks tick while the frame travels)."""
        skew = LIMITS.max_clock_skew
        for sign in (1, -1):
            inside = self.connect()
            inside.handshake(
                identity(600), self.address, clock_offset=sign * (skew - 10)
            )
            self.assertEqual(inside.ping(b"on time"), b"on time")
            outside = self.connect()
            outside.receive_hello()
            hello = handshake.new_hello(
                identity(601),
                os.urandom(32),
                time.time() + sign * (skew + 10),
                self.address,
            )
            outside.send(bbrpc_pb2.Envelope(call_id=0, hello=hello))
            self.assertTrue(outside.closed_by_peer())

    def ping_edges(self) -> None:
        """max_ping_payload: 64 bytes answered, 65 dropped."""
        peer = self.authenticated(12)
        payload = os.urandom(LIMITS.max_ping_payload)
        self.assertEqual(peer.ping(payload), payload)
        peer.send(
            bbrpc_pb2.Envelope(
                call_id=peer.new_call_id(),
                ping=bbrpc_pb2.Ping(payload=payload + b"x"),
            )
        )
        self.assertTrue(peer.closed_by_peer())

    def become_owner(self) -> tuple[RawPeer, bytes, bytes, bytes]:
        """A stranger that proposes a contract and pushes a revision of one
        section: (its connection, content id, section hash, section)."""
        keys = keys_for_test(13)
        owner = self.authenticated(13)
        proposal = terms.propose(
            terms.new_terms(
                proposer_pubkey=keys.onion_pubkey,
                acceptor_pubkey=pubkey_from_onion_address(self.address),
                acceptor_keeps_bytes=16 * 2**20,
                proposer_keeps_bytes=16 * 2**20,
                now=time.time(),
                random_bytes=os.urandom,
            ),
            keys.signing_key,
        )
        [answer] = owner.call(
            "propose_contract_request",
            bbrpc_pb2.ProposeContractRequest(signed_terms=proposal.encode()),
        )
        self.assertEqual(
            answer.propose_contract_response.WhichOneof("answer"),
            "accepted_terms",
            answer,
        )
        section = os.urandom(SECTION_BYTES)
        blobs = BlobDict()
        revision = make_revision(keys.signing_key, [section], 1, blobs)
        owner.blobs = dict(blobs)
        pushed = owner.call(
            "set_content_revision_request",
            bbrpc_pb2.SetContentRevisionRequest(signed_root=revision.signed),
        )
        self.assertEqual(error_code(pushed), 0, pushed)
        self.assertTrue(pushed[-2].set_content_revision_response.complete, pushed)
        self.assertGreater(owner.served_downloads, 0)
        return owner, revision.content_id, hashlib.sha256(section).digest(), section

    def download_bound_edges(
        self, owner: RawPeer, content_id: bytes, blob: bytes, section: bytes
    ) -> None:
        """Download names at most MAX_BLOBS_PER_REQUEST blobs: that many are
        served (a blob named many times, once); one more is BAD_REQUEST and
        the connection lives."""
        at_limit = owner.call(
            "download_request",
            bbrpc_pb2.DownloadRequest(
                content_id=content_id, blobs=[blob] * MAX_BLOBS_PER_REQUEST
            ),
        )
        self.assertEqual(error_code(at_limit), 0, at_limit[-1])
        pieces = [e.download_response for e in at_limit[:-1]]
        self.assertEqual({p.blob for p in pieces}, {blob})
        self.assertEqual(b"".join(p.data for p in pieces), section)

        over = owner.call(
            "download_request",
            bbrpc_pb2.DownloadRequest(
                content_id=content_id, blobs=[blob] * (MAX_BLOBS_PER_REQUEST + 1)
            ),
        )
        self.assertEqual(error_code(over), bbrpc_pb2.ERROR_CODE_BAD_REQUEST)
        self.assertEqual(len(over), 1)
        self.assertEqual(owner.ping(b"still here"), b"still here")

    def concurrent_call_edges(
        self, owner: RawPeer, content_id: bytes, blob: bytes, section: bytes
    ) -> None:
        """max_concurrent_calls: 32 Downloads open at once are all served;
        the 33rd, arriving while they are open, is answered BUSY."""
        request = bbrpc_pb2.DownloadRequest(content_id=content_id, blobs=[blob])
        calls = [
            owner.request("download_request", request)
            for _ in range(LIMITS.max_concurrent_calls + 1)
        ]
        # One write: the daemon decodes all 33 in one go. Each Download then
        # waits for its blob read on the worker thread or for its turn (a
        # connection is served two at a time), so the first 32 are all open
        # when the 33rd is decoded.
        owner.send_bytes(b"".join(frame for _, frame in calls))
        answers = owner.answers({call_id for call_id, _ in calls})
        *served, (busy_id, _) = calls
        self.assertEqual(error_code(answers[busy_id]), bbrpc_pb2.ERROR_CODE_BUSY)
        for call_id, _ in served:
            answer = answers[call_id]
            self.assertEqual(error_code(answer), 0, answer[-1])
            data = b"".join(e.download_response.data for e in answer[:-1])
            self.assertEqual(data, section)
        self.assertEqual(owner.ping(b"after the calls"), b"after the calls")

    def handshaking_edges(self) -> list[RawPeer]:
        """max_handshaking_per_source (16) and max_handshaking (64): the
        half-open connections within them are admitted (the daemon sends
        its Hello), the next from that source, and the next from a fresh
        source once 64 are half-open, are closed at once."""
        per_source = ADMISSION.max_handshaking_per_source
        waiting = []
        for source in SOURCES[:-1]:
            for _ in range(per_source):
                peer = self.connect(source)
                peer.receive_hello()
                waiting.append(peer)
            if len(waiting) == per_source:
                self.assertTrue(self.connect(source).closed_by_peer())
        self.assertEqual(len(waiting), ADMISSION.max_handshaking)
        self.assertTrue(self.connect(SOURCES[-1]).closed_by_peer())
        return waiting

    def connection_edges(self) -> None:
        """max_connections: that many connections, each authenticated under
        its own identity, are admitted and live; the next is closed at
        once. Then every one closes, and the daemon admits again."""
        # What the daemon computes from the open-file limit it inherits
        # (the test process's): 512 unless that limit is small.
        limit = AdmissionLimits.for_this_process().max_connections
        held = []
        for number in range(limit):
            peer = self.connect()
            peer.handshake(identity(number), self.address)
            # Answered only once the daemon took our Auth: at most one
            # connection of ours is ever in its handshake.
            self.assertEqual(peer.ping(b"in"), b"in")
            held.append(peer)
        self.assertTrue(self.connect().closed_by_peer())
        self.assertEqual(held[0].ping(b"still"), b"still")
        for peer in held:
            peer.close()
        self.admitted("127.0.0.1")[0].close()

    def admitted(self, source: str) -> tuple[RawPeer, bbrpc_pb2.Hello]:
        """A connection the daemon admits, and the Hello it sent, once it
        has seen the ones closed before close: a bounded number of tries,
        each a round trip through its reactor."""
        for _ in range(50):
            peer = self.connect(source)
            try:
                return peer, peer.receive_hello()
            except PeerClosed:
                continue
        self.fail(f"the daemon still refuses connections from {source}")

    def edges(self) -> None:
        """Every edge in sequence (on a worker thread: plain sockets)."""
        self.connection_edges()
        self.handshake_frame_edges()
        self.frame_edges()
        self.ping_edges()
        self.clock_skew_edges()
        owner, content_id, blob, section = self.become_owner()
        self.download_bound_edges(owner, content_id, blob, section)
        self.concurrent_call_edges(owner, content_id, blob, section)
        for peer in self.handshaking_edges():
            peer.close()

    def honest_after(self) -> None:
        """A fresh peer authenticates and pings once the daemon has seen the
        half-open connections close."""
        peer, hello = self.admitted(SOURCES[-1])
        peer.handshake(keys_for_test(15), self.address, server_hello=hello)
        self.assertEqual(peer.ping(b"honest"), b"honest")

    async def test_each_limit_at_and_over_its_edge(self) -> None:
        await deferToThread(self.edges)
        log = self.daemon.log_path.read_text(errors="replace")
        for reason in (
            f"frame of {LIMITS.max_handshake_frame_length + 1} bytes exceeds",
            f"frame of {LIMITS.max_frame_length + 1} bytes exceeds",
            f"ping payload of {LIMITS.max_ping_payload + 1} bytes",
            "s off ours (limit ±600 s)",
            # Refusals are logged once (then every 1000th): the first was
            # the connection over max_connections.
            "refusing inbound connections (",
        ):
            self.assertTrue(reason in log, f"the daemon's log lacks {reason!r}")
        began = time.monotonic()
        self.daemon.stub().GetStatus(clirpc_pb2.GetStatusRequest(), timeout=5)
        self.assertLess(time.monotonic() - began, STATUS_WITHIN_SECONDS)
        self.daemon.cli("status", check=True)  # the real command, too
        await deferToThread(self.honest_after)
        endpoint = TCP4ClientEndpoint(reactor, self.host, self.port)
        conn = await connect_peer(
            reactor, endpoint, keys_for_test(14), self.address, object()
        )
        try:
            rtt = await conn.ping()
            self.assertLess(rtt, STATUS_WITHIN_SECONDS)
        finally:
            closed = conn.when_closed()
            conn.close()
            await closed
