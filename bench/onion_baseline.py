"""Cold start and bulk throughput of onion connections on the private network.

Measures, on a private Tor network on 127.0.0.1 (barterbackup.testing.tornet):

* cold start → onion reachable, several times: network up, two nodes' own
  tors (TorTransport, launched by txtorcon) bootstrapped, onion published,
  first byte through a fresh connection;
* bulk transfer of SIZE bytes over the onion, raw bytes with no protocol on
  top (the ceiling any protocol over this transport can reach), with 1 and
  with N parallel streams;
* the same bytes over plain 127.0.0.1 TCP (what Tor costs);
* whether a SOCKS connection to a 127.0.0.1 server works (it needs an exit,
  and this network has none, so it is expected to fail).

Usage: .venv/bin/python bench/onion_baseline.py [--size-mb 20] [--runs 3]
       [--streams 2] [--key-cache DIR]
Every wait is bounded; every tor is stopped at the end (and at exit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import react
from twisted.python.failure import Failure

from barterbackup.keys.derive import node_keys_from_master
from barterbackup.testing.tornet import TorNetwork
from barterbackup.transport.socks import Socks5ClientEndpoint
from barterbackup.transport.tor import TorTransport

SERVER_KEYS = node_keys_from_master(bytes(range(32)))
CLIENT_KEYS = node_keys_from_master(bytes(range(32, 64)))
TRANSFER_TIMEOUT = 300.0
FIRST_BYTE_TIMEOUT = 60.0
CHUNK = 256 * 1024


class Source(Protocol):
    """Sends ``factory.size`` bytes, then closes."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        size: int = self.factory.size  # type: ignore[attr-defined]
        block = os.urandom(CHUNK)
        for offset in range(0, size, CHUNK):
            transport.write(block[: min(CHUNK, size - offset)])
        transport.loseConnection()


class SourceFactory(Factory):
    protocol = Source

    def __init__(self, size: int) -> None:
        self.size = size


class Sink(Protocol):
    """Counts bytes; ``done`` fires with (first byte time, end time, count)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: float | None = None
        self.done: Deferred[tuple[float, float, int]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.first is None:
            self.first = time.monotonic()
        self.count += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        first = self.first if self.first is not None else time.monotonic()
        self.done.callback((first, time.monotonic(), self.count))


async def fetch(reactor: Any, endpoint: Any, timeout: float) -> dict[str, float]:
    """Connect, read until the server closes; timings in seconds."""
    began = time.monotonic()
    sink = Sink()
    await connectProtocol(endpoint, sink)
    first, end, count = await sink.done.addTimeout(timeout, reactor)
    return {
        "connect_to_first_byte_s": first - began,
        "total_s": end - began,
        "bytes": count,
        "mb_per_s": count / max(end - first, 1e-9) / 1e6,
    }


async def parallel_fetch(
    reactor: Any, endpoints: list[Any], timeout: float
) -> dict[str, float]:
    began = time.monotonic()
    results = await gatherResults(
        [Deferred.fromCoroutine(fetch(reactor, e, timeout)) for e in endpoints]
    )
    elapsed = time.monotonic() - began
    total = sum(r["bytes"] for r in results)
    return {
        "streams": len(endpoints),
        "total_s": elapsed,
        "bytes": total,
        "aggregate_mb_per_s": total / elapsed / 1e6,
    }


async def start_both(a: TorTransport, b: TorTransport) -> None:
    one, two = Deferred.fromCoroutine(a.start()), Deferred.fromCoroutine(b.start())
    try:
        await one
    finally:
        await two


async def cold_run(
    reactor: Any, args: argparse.Namespace, work: Path, measure_bulk: bool
) -> dict[str, Any]:
    """One cold start → onion reachable, optionally followed by bulk runs."""
    result: dict[str, Any] = {}
    began = time.monotonic()
    network = TorNetwork(reactor, work / "net", key_cache=args.key_cache)
    server = client = None
    try:
        await network.start()
        result["network_up_s"] = time.monotonic() - began
        result["network_timings"] = dict(network.timings)
        options = network.client_torrc_options()
        server = TorTransport(reactor, SERVER_KEYS, work / "a", extra_torrc=options)
        client = TorTransport(reactor, CLIENT_KEYS, work / "b", extra_torrc=options)
        mark = time.monotonic()
        await start_both(server, client)
        result["node_tors_bootstrap_s"] = time.monotonic() - mark
        factory = SourceFactory(16)
        mark = time.monotonic()
        await server.listen(factory)
        result["publish_s"] = time.monotonic() - mark
        mark = time.monotonic()
        first = await fetch(
            reactor,
            client.client_endpoint(SERVER_KEYS.onion_address),
            FIRST_BYTE_TIMEOUT,
        )
        result["first_connection_s"] = time.monotonic() - mark
        result["cold_start_to_reachable_s"] = time.monotonic() - began
        assert first["bytes"] == 16, first
        if measure_bulk:
            factory.size = args.size_mb * 1_000_000
            result["onion_1_stream"] = await fetch(
                reactor,
                client.client_endpoint(SERVER_KEYS.onion_address),
                TRANSFER_TIMEOUT,
            )
            result[f"onion_{args.streams}_streams_one_circuit"] = await parallel_fetch(
                reactor,
                [
                    client.client_endpoint(SERVER_KEYS.onion_address)
                    for _ in range(args.streams)
                ],
                TRANSFER_TIMEOUT,
            )
            result[f"onion_{args.streams}_streams_isolated"] = await parallel_fetch(
                reactor,
                [
                    client.client_endpoint(
                        SERVER_KEYS.onion_address, isolation=f"stream-{i}"
                    )
                    for i in range(args.streams)
                ],
                TRANSFER_TIMEOUT,
            )
            result["loopback_tcp"] = await loopback_baseline(reactor, factory.size)
            result["socks_to_loopback_server"] = await socks_to_loopback(
                reactor, client
            )
    finally:
        for transport in (server, client):
            if transport is not None:
                await Deferred.fromCoroutine(transport.stop())
        await network.stop()
    result["tors_left_running"] = network.running_pids()
    return result


async def loopback_baseline(reactor: Any, size: int) -> dict[str, float]:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        SourceFactory(size)
    )
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        return await fetch(reactor, endpoint, TRANSFER_TIMEOUT)
    finally:
        await port.stopListening()


async def socks_to_loopback(reactor: Any, client: TorTransport) -> str:
    """Try 127.0.0.1 through the client's SOCKS port (needs an exit)."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        SourceFactory(16)
    )
    try:
        assert client.socks_port is not None
        socks = TCP4ClientEndpoint(reactor, "127.0.0.1", client.socks_port)
        endpoint = Socks5ClientEndpoint(
            socks, "127.0.0.1", port.getHost().port, reactor=reactor, timeout=30.0
        )
        began = time.monotonic()
        try:
            await fetch(reactor, endpoint, 30.0)
        except Exception as error:
            return (
                f"failed as expected after {time.monotonic() - began:.1f} s: "
                f"{type(error).__name__}: {error}"
            )
        return "unexpectedly succeeded"
    finally:
        await port.stopListening()


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--key-cache", type=Path, default=None)
    args = parser.parse_args(argv)
    runs = []
    for index in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="bb-onion-bench-"))
        try:
            run = await cold_run(reactor, args, work, measure_bulk=index == 0)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps({"run": index, **run}, indent=1), flush=True)
        runs.append(run)
    cold = [r["cold_start_to_reachable_s"] for r in runs]
    print(
        json.dumps(
            {
                "cold_start_to_reachable_s": {
                    "min": min(cold),
                    "median": statistics.median(cold),
                    "max": max(cold),
                }
            }
        )
    )


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
