"""TorTransport against a fake txtorcon Tor (no Tor process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.keys.derive import node_keys_from_master
from barterbackup.testing.faketor import FakeTor, onion_address_of_key_blob
from barterbackup.transport.base import DestinationRefused, TransportError
from barterbackup.transport.onion import (
    OnionDefences,
    OnionPublishFailed,
    add_onion_command,
)
from barterbackup.transport.socks import Socks5ClientEndpoint
from barterbackup.transport.tor import (
    DEFAULT_ONION_PORT,
    OnionAddressMismatch,
    OnionPublishError,
    TorStartupError,
    TorTransport,
)

KEYS = node_keys_from_master(b"\x01" * 32)
OTHER = node_keys_from_master(b"\x02" * 32)


def make_transport(
    tor: FakeTor, **kwargs: Any
) -> tuple[TorTransport, MemoryReactorClock]:
    reactor = tor.reactor
    assert isinstance(reactor, MemoryReactorClock)

    async def connect_fake() -> FakeTor:
        return tor

    transport = TorTransport(
        reactor, KEYS, Path("unused"), connect_tor=connect_fake, **kwargs
    )
    return transport, reactor


def fake_tor(**options: Any) -> FakeTor:
    return FakeTor(MemoryReactorClock(), **options)


class FakeTorSelfTests(SynchronousTestCase):
    def test_fake_computes_address_like_tor(self) -> None:
        self.assertEqual(
            onion_address_of_key_blob(KEYS.tor_private_key), KEYS.onion_address
        )
        self.assertNotEqual(
            onion_address_of_key_blob(OTHER.tor_private_key), KEYS.onion_address
        )


class TorTransportTests(SynchronousTestCase):
    def started(self, tor: FakeTor, **kwargs: Any) -> TorTransport:
        transport, self.reactor = make_transport(tor, **kwargs)
        self.successResultOf(Deferred.fromCoroutine(transport.start()))
        return transport

    def listened(self, transport: TorTransport) -> Any:
        listening = transport.listen(Factory.forProtocol(Protocol))
        self.reactor.advance(0)
        return listening

    def test_publishes_derived_key_and_maps_to_loopback(self) -> None:
        tor = fake_tor()
        transport = self.started(tor)
        self.assertEqual(transport.socks_port, 9050)
        port = self.successResultOf(self.listened(transport))
        (listened,) = self.reactor.tcpServers
        self.assertEqual(listened[3], "127.0.0.1")
        local = port.getHost().port
        (onion,) = tor.onions
        self.assertEqual(onion.key_blob, KEYS.tor_private_key)
        self.assertEqual(onion.port, f"Port={DEFAULT_ONION_PORT},127.0.0.1:{local}")
        self.assertEqual(transport.advertised, KEYS.onion_address)
        # Listening on HS_DESC ended with the publication.
        self.assertEqual(tor.protocol.listeners["HS_DESC"], [])

    def test_defences_on_by_default(self) -> None:
        tor = fake_tor()
        self.successResultOf(self.listened(self.started(tor)))
        self.assertEqual(
            tor.onions[0].keywords,
            [
                "Flags=MaxStreamsCloseCircuit",
                "MaxStreams=32",
                "PoWDefensesEnabled=1",
                "PoWQueueRate=250",
                "PoWQueueBurst=2500",
            ],
        )

    def test_defences_follow_the_options(self) -> None:
        tor = fake_tor()
        defences = OnionDefences(proof_of_work=False, max_streams_per_circuit=0)
        self.successResultOf(self.listened(self.started(tor, defences=defences)))
        self.assertEqual(tor.onions[0].keywords, [])

    def test_bad_defences_refused(self) -> None:
        for bad in (
            {"pow_queue_rate": 0},
            {"pow_queue_rate": 10, "pow_queue_burst": 5},
            {"max_streams_per_circuit": -1},
            {"max_streams_per_circuit": 70000},
        ):
            with self.assertRaises(ValueError, msg=bad):
                OnionDefences(**bad)

    def test_waits_for_the_uploads(self) -> None:
        tor = fake_tor()
        transport = self.started(tor)
        listening = transport.listen(Factory.forProtocol(Protocol))
        # ADD_ONION answered, the uploads not yet ended.
        self.assertNoResult(listening)
        self.reactor.advance(0)
        self.successResultOf(listening)

    def test_some_failed_uploads_are_enough(self) -> None:
        tor = fake_tor(failed_uploads=2)
        self.successResultOf(self.listened(self.started(tor)))

    def test_every_upload_failed(self) -> None:
        tor = fake_tor(failed_uploads=3)
        transport = self.started(tor)
        failure = self.failureResultOf(self.listened(transport), OnionPublishFailed)
        self.assertIn("UPLOAD_REJECTED", str(failure.value))
        # Nothing left listening: a later listen may try again.
        tor.failed_uploads = 0
        self.successResultOf(self.listened(transport))

    def test_tor_refuses_the_service(self) -> None:
        tor = fake_tor(refuse_publish=True)
        transport = self.started(tor)
        failure = self.failureResultOf(self.listened(transport), OnionPublishFailed)
        self.assertIn("512", str(failure.value))
        self.assertEqual(tor.protocol.listeners["HS_DESC"], [])

    def test_key_blob_cannot_inject_keywords(self) -> None:
        with self.assertRaises(ValueError):
            add_onion_command("ED25519-V3:abc Port=1", 1, 2, OnionDefences())

    def test_address_mismatch_fails_loudly_and_withdraws(self) -> None:
        tor = fake_tor(publish_as=OTHER.onion_address)
        transport = self.started(tor)
        failure = self.failureResultOf(self.listened(transport), OnionAddressMismatch)
        self.assertEqual(failure.value.expected, KEYS.onion_address)
        self.assertEqual(failure.value.published, OTHER.onion_address)
        self.assertTrue(tor.onions[0].removed)
        # Nothing left listening: a later listen may try again.
        tor.publish_as = None
        self.successResultOf(self.listened(transport))

    def test_publish_timeout(self) -> None:
        tor = fake_tor(hang_publish=True)
        transport = self.started(tor, publish_timeout=30.0)
        listening = transport.listen(Factory.forProtocol(Protocol))
        self.assertNoResult(listening)
        self.reactor.advance(31)
        failure = self.failureResultOf(listening, OnionPublishError)
        self.assertIn("within 30 s", str(failure.value))

    def test_launch_timeout(self) -> None:
        reactor = MemoryReactorClock()

        def never() -> Deferred[FakeTor]:
            return Deferred()

        transport = TorTransport(
            reactor, KEYS, Path("unused"), connect_tor=never, launch_timeout=10.0
        )
        starting = Deferred.fromCoroutine(transport.start())
        reactor.advance(11)
        failure = self.failureResultOf(starting, TorStartupError)
        self.assertIn("within 10 s", str(failure.value))
        self.assertIn("last status: not connected to tor yet", str(failure.value))

    def test_refuses_tor_without_loopback_socks(self) -> None:
        tor = fake_tor(socks_listeners='"0.0.0.0:9050"')
        transport, _ = make_transport(tor)
        self.failureResultOf(Deferred.fromCoroutine(transport.start()), TorStartupError)
        self.assertTrue(tor.quit_called)

    def test_client_endpoint_goes_through_socks_to_onion(self) -> None:
        transport = self.started(fake_tor(socks_listeners='"127.0.0.1:9150"'))
        endpoint = transport.client_endpoint(
            OTHER.onion_address.upper(), "tcp:1.2.3.4:5", isolation="bulk-1"
        )
        assert isinstance(endpoint, Socks5ClientEndpoint)
        self.assertEqual(endpoint.host, OTHER.onion_address)
        self.assertEqual(endpoint.port, DEFAULT_ONION_PORT)
        self.assertEqual(endpoint.isolation, "bulk-1")
        proxy: Any = endpoint.proxy
        self.assertEqual((proxy._host, proxy._port), ("127.0.0.1", 9150))

    def test_refuses_everything_but_onions(self) -> None:
        transport = self.started(fake_tor())
        broken = OTHER.onion_address[:-8] + "a.onion"
        for host in ("example.com", "127.0.0.1", "10.0.0.1", "", broken):
            with self.assertRaises(DestinationRefused, msg=host):
                transport.client_endpoint(host, None)

    def test_client_endpoint_needs_start(self) -> None:
        transport, _ = make_transport(fake_tor())
        with self.assertRaises(TransportError):
            transport.client_endpoint(OTHER.onion_address)

    def test_stop_removes_onion_and_quits(self) -> None:
        tor = fake_tor()
        transport = self.started(tor)
        self.successResultOf(self.listened(transport))
        self.successResultOf(Deferred.fromCoroutine(transport.stop()))
        self.assertTrue(tor.onions[0].removed)
        self.assertTrue(tor.quit_called)
        self.assertIsNone(transport.socks_port)

    def test_reserved_torrc_options_refused(self) -> None:
        for option in ("SocksPort", "controlport", "DataDirectory"):
            with self.assertRaises(ValueError):
                TorTransport(
                    MemoryReactorClock(),
                    KEYS,
                    Path("unused"),
                    extra_torrc=[(option, "0.0.0.0:9050")],
                )

    def test_remote_control_endpoint_refused(self) -> None:
        for endpoint in ("tcp:10.0.0.1:9051", "tcp:host=example.com:port=9051"):
            with self.assertRaises(ValueError):
                TorTransport(
                    MemoryReactorClock(),
                    KEYS,
                    Path("unused"),
                    control_endpoint=endpoint,
                )
        TorTransport(
            MemoryReactorClock(),
            KEYS,
            Path("unused"),
            control_endpoint="tcp:127.0.0.1:9051",
        )
