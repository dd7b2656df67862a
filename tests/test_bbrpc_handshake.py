"""The channel-bound bbrpc handshake: success and every rejection."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc import handshake
from barterbackup.bbrpc.connection import PeerConnection, PeerLimits
from barterbackup.bbrpc.framing import FrameDecoder, encode_frame
from barterbackup.bbrpc.handshake import HandshakeFailed, Role
from barterbackup.testing.link import keys_for_test

ALICE = keys_for_test(1)
BOB = keys_for_test(2)
MALLORY = keys_for_test(3)


class RecordingHandler:
    """Records every call; the handshake tests assert it stays empty."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def peer_exchange(self, conn, request):  # type: ignore[no-untyped-def]
        self.calls.append("peer_exchange")
        return super().peer_exchange(conn, request)


def pair(
    clock: Clock,
    client_keys=ALICE,  # type: ignore[no-untyped-def]
    server_keys=BOB,
    dialed=None,
    server_handler=None,
    limits=None,
):
    client = PeerConnection(
        clock,
        client_keys,
        object(),
        Role.CLIENT,
        dialed_address=dialed or server_keys.onion_address,
        limits=limits,
    )
    server = PeerConnection(
        clock,
        server_keys,
        server_handler or RecordingHandler(),
        Role.SERVER,
        limits=limits,
    )
    return client, server


class PureHandshakeTests(SynchronousTestCase):
    def hellos(self) -> tuple[bbrpc_pb2.Hello, bbrpc_pb2.Hello]:
        client = handshake.new_hello(ALICE, os.urandom(32), 1000, BOB.onion_address)
        server = handshake.new_hello(BOB, os.urandom(32), 1000)
        return client, server

    def test_signatures_verify_for_their_role_only(self) -> None:
        client, server = self.hellos()
        c, s = handshake.hello_bytes(client), handshake.hello_bytes(server)
        auth = handshake.sign_transcript(ALICE, Role.CLIENT, c, s)
        handshake.verify_auth(auth, ALICE.onion_pubkey, Role.CLIENT, c, s)
        # The same signature is worthless in the other role...
        with self.assertRaises(HandshakeFailed):
            handshake.verify_auth(auth, ALICE.onion_pubkey, Role.SERVER, c, s)
        # ...with another key, or in a session with another server nonce.
        with self.assertRaises(HandshakeFailed):
            handshake.verify_auth(auth, MALLORY.onion_pubkey, Role.CLIENT, c, s)
        other = handshake.hello_bytes(handshake.new_hello(BOB, os.urandom(32), 1000))
        with self.assertRaises(HandshakeFailed):
            handshake.verify_auth(auth, ALICE.onion_pubkey, Role.CLIENT, c, other)

    def test_transcript_layout(self) -> None:
        t = handshake.transcript(Role.SERVER, b"C", b"SS")
        self.assertTrue(t.startswith(handshake.DOMAIN_LABEL + b"server"))
        self.assertEqual(len(t), len(handshake.DOMAIN_LABEL) + 6 + 32)
        # Length prefixes: moving a byte between the Hellos changes it.
        self.assertNotEqual(t, handshake.transcript(Role.SERVER, b"CS", b"S"))

    def check(self, hello: bbrpc_pb2.Hello, role: Role, **kw) -> None:  # type: ignore[no-untyped-def]
        keys = ALICE if role is Role.CLIENT else BOB
        handshake.check_peer_hello(
            hello,
            our_role=role,
            our_keys=keys,
            our_nonce=kw.pop("our_nonce", b"\0" * 32),
            now=kw.pop("now", 1000),
            dialed_address=BOB.onion_address if role is Role.CLIENT else "",
            **kw,
        )

    def test_checks(self) -> None:
        client, server = self.hellos()
        self.check(server, Role.CLIENT)
        self.check(client, Role.SERVER)
        with self.assertRaisesRegex(HandshakeFailed, "clock"):
            self.check(server, Role.CLIENT, now=1000 + 601)
        self.check(server, Role.CLIENT, now=1000 + 599)
        with self.assertRaisesRegex(HandshakeFailed, "clock"):
            self.check(server, Role.CLIENT, now=1000 + 61, max_clock_skew=60)
        with self.assertRaisesRegex(HandshakeFailed, "reflected"):
            self.check(server, Role.CLIENT, our_nonce=server.nonce)
        bad = bbrpc_pb2.Hello()
        bad.CopyFrom(client)
        bad.nonce = b"short"
        with self.assertRaisesRegex(HandshakeFailed, "nonce"):
            self.check(bad, Role.SERVER)
        bad.CopyFrom(client)
        bad.protocol_version = 0
        with self.assertRaisesRegex(HandshakeFailed, "version"):
            self.check(bad, Role.SERVER)
        bad.CopyFrom(client)
        bad.peer_onion_address = "not-an-onion"
        with self.assertRaisesRegex(HandshakeFailed, "valid onion"):
            self.check(bad, Role.SERVER)
        # Our own key presented back to us.
        with self.assertRaisesRegex(HandshakeFailed, "our own onion key"):
            self.check(handshake.new_hello(BOB, os.urandom(32), 1000), Role.SERVER)


class ConnectionHandshakeTests(SynchronousTestCase):
    def run_pair(self, client, server, clock):  # type: ignore[no-untyped-def]
        c_result = client.when_authenticated()
        s_result = server.when_authenticated()
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            clock=clock,
        )
        pump.flush()
        return c_result, s_result, pump

    def test_success(self) -> None:
        clock = Clock()
        client, server = pair(clock)
        c_result, s_result, _ = self.run_pair(client, server, clock)
        self.assertIs(self.successResultOf(c_result), client)
        self.assertIs(self.successResultOf(s_result), server)
        self.assertEqual(client.peer_onion_address, BOB.onion_address)
        self.assertEqual(server.peer_onion_address, ALICE.onion_address)
        self.assertEqual(server.peer_pubkey, ALICE.onion_pubkey)

    def assert_both_fail(self, client, server, clock, pattern):  # type: ignore[no-untyped-def]
        c_result, s_result, _ = self.run_pair(client, server, clock)
        # The server never accepts; the client may have accepted the (honest)
        # server before being dropped, but the connection is gone either way.
        failures = [self.failureResultOf(s_result, HandshakeFailed)]
        client_failure = c_result.result if c_result.called else None
        if client_failure is not None and not isinstance(
            client_failure, PeerConnection
        ):
            failures.append(self.failureResultOf(c_result, HandshakeFailed))
        self.successResultOf(client.when_closed())
        self.assertTrue(
            any(pattern in str(f.value) for f in failures),
            [str(f.value) for f in failures],
        )
        self.assertEqual(server.handler.calls, [])
        self.assertFalse(server.authenticated)

    def test_client_dialed_someone_else(self) -> None:
        # Client dialed Mallory's address but reached Bob.
        clock = Clock()
        client, server = pair(clock, dialed=MALLORY.onion_address)
        self.assert_both_fail(client, server, clock, "dialed")

    def test_server_is_not_the_target(self) -> None:
        # Bob's server receives a client that wants Mallory (Bob relays).
        clock = Clock()
        client = PeerConnection(
            clock,
            ALICE,
            object(),
            Role.CLIENT,
            dialed_address=BOB.onion_address,
        )
        client.dialed_address = MALLORY.onion_address  # lies in its Hello
        server = PeerConnection(clock, BOB, RecordingHandler(), Role.SERVER)
        self.assert_both_fail(client, server, clock, "wanted to reach")

    def test_signature_by_another_key(self) -> None:
        # Mallory claims Alice's key in Hello but can only sign with her own.
        clock = Clock()
        client, server = pair(clock, client_keys=MALLORY)
        client_keys_of_alice_public = ALICE.onion_pubkey

        original = handshake.new_hello

        def lying_hello(keys, nonce, now, dialed_address=""):  # type: ignore[no-untyped-def]
            hello = original(keys, nonce, now, dialed_address)
            if keys is MALLORY:
                hello.onion_pubkey = client_keys_of_alice_public
            return hello

        self.patch(handshake, "new_hello", lying_hello)
        self.assert_both_fail(client, server, clock, "signature does not verify")

    def test_stale_timestamp(self) -> None:
        clock = Clock()
        client, server = pair(clock)
        client.reactor = Clock()
        client.reactor.advance(3600)  # client's clock is an hour ahead
        self.assert_both_fail(client, server, clock, "clock")

    def test_reflected_nonce(self) -> None:
        # A fake client answers the server's Hello with the server's nonce.
        clock = Clock()
        server = PeerConnection(clock, BOB, RecordingHandler(), Role.SERVER)
        transport = iosim.makeFakeServer(server)
        result = server.when_authenticated()
        server.makeConnection(transport)
        [greeting] = FrameDecoder().feed(transport.getOutBuffer())
        reflected = handshake.new_hello(
            ALICE, greeting.hello.nonce, 0, BOB.onion_address
        )
        server.dataReceived(encode_frame(bbrpc_pb2.Envelope(hello=reflected)))
        self.assertTrue(transport.disconnecting)
        transport.reportDisconnect()
        self.assertIn(
            "reflected", str(self.failureResultOf(result, HandshakeFailed).value)
        )

    def test_replayed_client_side(self) -> None:
        # Record Alice's frames from a good handshake, replay them to a new
        # server: its nonce differs, so the old Auth does not verify.
        clock = Clock()
        client, server = pair(clock)
        client_transport = iosim.makeFakeClient(client)
        server_transport = iosim.makeFakeServer(server)
        server.makeConnection(server_transport)
        client.makeConnection(client_transport)
        server_out = server_transport.getOutBuffer()
        client_hello = client_transport.getOutBuffer()
        client.dataReceived(server_out)
        client_auth = client_transport.getOutBuffer()
        server.dataReceived(client_hello + client_auth)
        self.assertTrue(server.authenticated)

        fresh = PeerConnection(clock, BOB, RecordingHandler(), Role.SERVER)
        fresh_transport = iosim.makeFakeServer(fresh)
        result = fresh.when_authenticated()
        fresh.makeConnection(fresh_transport)
        fresh.dataReceived(client_hello + client_auth)
        self.assertTrue(fresh_transport.disconnecting)
        fresh_transport.reportDisconnect()
        failure = self.failureResultOf(result, HandshakeFailed)
        self.assertIn("signature does not verify", str(failure.value))
        self.assertEqual(fresh.handler.calls, [])  # type: ignore[attr-defined]

    def test_request_before_auth_is_dropped(self) -> None:
        clock = Clock()
        handler = RecordingHandler()
        server = PeerConnection(clock, BOB, handler, Role.SERVER)
        transport = iosim.makeFakeServer(server)
        result = server.when_authenticated()
        server.makeConnection(transport)
        hello = handshake.new_hello(ALICE, os.urandom(32), 0, BOB.onion_address)
        request = bbrpc_pb2.Envelope(
            call_id=1, peer_exchange_request=bbrpc_pb2.PeerExchangeRequest()
        )
        server.dataReceived(
            encode_frame(bbrpc_pb2.Envelope(hello=hello)) + encode_frame(request)
        )
        self.assertTrue(transport.disconnecting)
        transport.reportDisconnect()
        self.assertIn("expected Auth", str(self.failureResultOf(result).value))
        self.assertEqual(handler.calls, [])

    def test_handshake_timeout(self) -> None:
        clock = Clock()
        server = PeerConnection(
            clock,
            BOB,
            RecordingHandler(),
            Role.SERVER,
            limits=PeerLimits(handshake_timeout=30),
        )
        transport = iosim.makeFakeServer(server)
        result = server.when_authenticated()
        server.makeConnection(transport)
        clock.advance(29)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        transport.reportDisconnect()
        self.assertIn("30 s", str(self.failureResultOf(result, HandshakeFailed).value))
