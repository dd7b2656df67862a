"""Real onion services on a private Tor network on 127.0.0.1.

One network is shared by the tests of this module (started by the first test
that needs it, stopped at interpreter exit, and by Tor itself if we die).
Set BARTERBACKUP_TORNET_KEY_CACHE to a directory to keep authority identity
keys between runs. Timings go to the trial log (``_trial_temp/test.log``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from barterbackup.keys.derive import node_keys_from_master
from barterbackup.logs import get_logger
from barterbackup.testing.tornet import TorNetwork
from barterbackup.transport.onion import OnionDefences
from barterbackup.transport.tor import TorTransport

log = get_logger("tests.tor_network")
reactor: Any = global_reactor
# Fixed master secrets: fast (no Argon2id) and reproducible addresses.
ALICE = node_keys_from_master(bytes(range(32)))
BOB = node_keys_from_master(bytes(range(32, 64)))
CAROL = node_keys_from_master(bytes(range(64, 96)))
DAVE = node_keys_from_master(bytes(range(96, 128)))
PAYLOAD_SIZE = 256 * 1024
EXCHANGE_TIMEOUT = 30.0


class _SharedNetwork:
    """Starts the module's network once; remembers a failure too."""

    def __init__(self) -> None:
        self.network: TorNetwork | None = None
        self.error: str | None = None

    async def get(self) -> TorNetwork:
        if self.error is not None:
            raise RuntimeError(f"the shared Tor network failed earlier: {self.error}")
        if self.network is None:
            base_dir = Path(tempfile.mkdtemp(prefix="bb-tornet-"))
            atexit.register(shutil.rmtree, base_dir, ignore_errors=True)
            cache = os.environ.get("BARTERBACKUP_TORNET_KEY_CACHE")
            network = TorNetwork(
                reactor, base_dir, key_cache=Path(cache) if cache else None
            )
            try:
                await network.start()
            except Exception as error:
                self.error = str(error)
                raise
            log.info("tor network up: {timings}", timings=network.timings)
            self.network = network
        return self.network


SHARED = _SharedNetwork()


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.closed.append(self)  # type: ignore[attr-defined]


class EchoFactory(Factory):
    protocol = Echo

    def __init__(self) -> None:
        self.closed: list[Echo] = []
        self.accepted = 0

    def buildProtocol(self, addr: Any) -> Protocol | None:
        self.accepted += 1
        return super().buildProtocol(addr)


class Collect(Protocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(bytes(self.received))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


async def echo_through(transport: TorTransport, onion_address: str) -> float:
    """Send random bytes to the echo at ``onion_address``; seconds taken."""
    payload = os.urandom(PAYLOAD_SIZE)
    collector = Collect(len(payload))
    began = time.monotonic()
    endpoint = transport.client_endpoint(onion_address)
    client = await connectProtocol(endpoint, collector)
    client.transport.write(payload)  # type: ignore[attr-defined]
    received = await collector.done.addTimeout(EXCHANGE_TIMEOUT, reactor)
    elapsed = time.monotonic() - began
    client.transport.loseConnection()  # type: ignore[attr-defined]
    await collector.lost
    assert received == payload, "echoed bytes differ"
    return elapsed


def tor_pid(transport: TorTransport) -> int:
    pid = transport.launched_pid
    assert pid is not None, "the transport did not launch a tor"
    return pid


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


async def until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await Deferred.fromCoroutine(_sleep(0.1))
    return bool(condition())


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds)


class OnionTransportTests(TestCase):
    timeout = 120

    async def test_launched_tors_reach_each_other_by_onion(self) -> None:
        network = await SHARED.get()
        options = network.client_torrc_options()
        base = Path(self.mktemp())
        alice = TorTransport(reactor, ALICE, base / "alice", extra_torrc=options)
        bob = TorTransport(reactor, BOB, base / "bob", extra_torrc=options)
        began = time.monotonic()
        await Deferred.fromCoroutine(_start_both(alice, bob))
        bootstrapped = time.monotonic()
        pids = [tor_pid(alice), tor_pid(bob)]
        try:
            echo = EchoFactory()
            await alice.listen(echo)
            published = time.monotonic()
            current = await alice.tor.protocol.get_info("onions/current")  # type: ignore[union-attr]
            self.assertIn(ALICE.onion_address[: -len(".onion")], str(current))
            first = await echo_through(bob, ALICE.onion_address)
            second = await echo_through(bob, ALICE.onion_address)
            await until(lambda: len(echo.closed) == 2, 10)
        finally:
            await Deferred.fromCoroutine(alice.stop())
            await Deferred.fromCoroutine(bob.stop())
        log.info(
            "launch+bootstrap {boot:.1f} s, publish {pub:.1f} s, first echo "
            "{first:.2f} s, second {second:.2f} s",
            boot=bootstrapped - began,
            pub=published - bootstrapped,
            first=first,
            second=second,
        )
        self.assertTrue(
            await until(lambda: all(process_gone(p) for p in pids), 10),
            f"tor processes {pids} still running after stop",
        )

    async def test_attached_transport_leaves_tor_running(self) -> None:
        network = await SHARED.get()
        server_tor = await network.start_client()
        client_tor = await network.start_client()
        carol = TorTransport(
            reactor,
            CAROL,
            Path(self.mktemp()),
            control_endpoint=server_tor.control_endpoint,
        )
        dialer = TorTransport(
            reactor,
            BOB,
            Path(self.mktemp()),
            control_endpoint=client_tor.control_endpoint,
        )
        await Deferred.fromCoroutine(_start_both(carol, dialer))
        try:
            self.assertEqual(dialer.socks_port, client_tor.socks_port)
            echo = EchoFactory()
            await carol.listen(echo)
            await echo_through(dialer, CAROL.onion_address)
            await until(lambda: len(echo.closed) == 1, 10)
        finally:
            await Deferred.fromCoroutine(carol.stop())
            await Deferred.fromCoroutine(dialer.stop())
        # Detaching drops our onion but must not stop a tor we did not launch.
        self.assertTrue(server_tor.is_running())
        self.assertTrue(client_tor.is_running())


class OnionDefenceTests(TestCase):
    timeout = 120

    async def test_a_circuit_opening_too_many_streams_is_closed(self) -> None:
        """Tor takes our ADD_ONION defences and enforces MaxStreams."""
        network = await SHARED.get()
        server_tor = await network.start_client()
        client_tor = await network.start_client()
        dave = TorTransport(
            reactor,
            DAVE,
            Path(self.mktemp()),
            control_endpoint=server_tor.control_endpoint,
            defences=OnionDefences(max_streams_per_circuit=2),
        )
        dialer = TorTransport(
            reactor,
            BOB,
            Path(self.mktemp()),
            control_endpoint=client_tor.control_endpoint,
        )
        await Deferred.fromCoroutine(_start_both(dave, dialer))
        try:
            echo = EchoFactory()
            await dave.listen(echo)
            # Two streams on one circuit (same isolation) are allowed...
            kept = []
            for _ in range(2):
                collector = Collect(1)
                endpoint = dialer.client_endpoint(
                    DAVE.onion_address, isolation="one-circuit"
                )
                client = await connectProtocol(endpoint, collector)
                client.transport.write(b"x")  # type: ignore[attr-defined]
                await collector.done.addTimeout(EXCHANGE_TIMEOUT, reactor)
                kept.append(collector)
            # ...a third closes the circuit, and the two with it.
            endpoint = dialer.client_endpoint(
                DAVE.onion_address, isolation="one-circuit"
            )
            try:
                third = await connectProtocol(endpoint, Collect(1))
            except Exception:
                third = None
            else:
                third.transport.write(b"x")  # type: ignore[attr-defined]
            for collector in kept:
                await collector.lost.addTimeout(EXCHANGE_TIMEOUT, reactor)
            # A stream on another circuit is served as before.
            await echo_through(dialer, DAVE.onion_address)
            await until(lambda: len(echo.closed) == echo.accepted, 10)
        finally:
            await Deferred.fromCoroutine(dave.stop())
            await Deferred.fromCoroutine(dialer.stop())


class NetworkTeardownTests(TestCase):
    timeout = 60

    async def test_stop_leaves_no_tor_running(self) -> None:
        network = TorNetwork(reactor, Path(tempfile.mkdtemp(prefix="bb-tornet-")))
        self.addCleanup(shutil.rmtree, network.base_dir, ignore_errors=True)
        self.addCleanup(network.stop)
        await network.launch()
        pids = network.running_pids()
        self.assertEqual(len(pids), 4)
        await network.stop()
        self.assertEqual(network.running_pids(), [])
        self.assertTrue(all(process_gone(pid) for pid in pids))


async def _start_both(first: TorTransport, second: TorTransport) -> None:
    """Start two transports concurrently (bootstrap dominates the time)."""
    one = Deferred.fromCoroutine(first.start())
    two = Deferred.fromCoroutine(second.start())
    try:
        await one
    finally:
        await two
