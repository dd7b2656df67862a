"""bbrpc throughput on 127.0.0.1 against a plain socket copy of the same bytes.

Both bbrpc ends run in this process on one fresh (not installed) epoll
reactor, so handshake, framing, protobuf encode *and* decode, flow control
and dispatch all share one core — the same position a node is in when it
serves a peer while doing other work. The baseline copies the same number
of bytes through a loopback TCP socket with two threads (sendall/recv_into
of 1 MiB buffers), which is the best plain Python can do and has no
framing at all.

    .venv/bin/python bench/peer_tcp.py [MiB]     # default 256
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.epollreactor import EPollReactor

from barterbackup._proto import bbrpc_pb2
from barterbackup.peer.factory import PeerServerFactory, connect_peer
from barterbackup.peer.handler import StreamSender, UnimplementedHandler
from barterbackup.peer.testing import keys_for_test

MIB = 1024 * 1024
ITEM_SIZE = MIB


class _StreamingHandler(UnimplementedHandler):
    """Serves Download as ``items`` items of 1 MiB of the same bytes."""

    def __init__(self, items: int) -> None:
        self.items = items
        self.chunk = bytes(range(256)) * (ITEM_SIZE // 256)

    @inlineCallbacks
    def download(
        self,
        conn: Any,
        request: bbrpc_pb2.DownloadRequest,
        send: StreamSender[bbrpc_pb2.DownloadResponse],
    ) -> Any:
        for index in range(self.items):
            yield send(bbrpc_pb2.DownloadResponse(section=index, data=self.chunk))


def bbrpc_transfer(size_bytes: int) -> float:
    """Seconds to stream ``size_bytes`` as Download items over bbrpc on TCP."""
    reactor = EPollReactor()
    items = size_bytes // ITEM_SIZE
    server_keys, client_keys = keys_for_test(1), keys_for_test(2)
    outcome: dict[str, Any] = {}

    @inlineCallbacks
    def transfer() -> Any:
        factory = PeerServerFactory(reactor, server_keys, _StreamingHandler(items))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        conn = yield connect_peer(
            reactor, endpoint, client_keys, server_keys.onion_address, UnimplementedHandler()
        )
        received = 0

        def on_item(message: bbrpc_pb2.DownloadResponse) -> None:
            nonlocal received
            received += len(message.data)

        started = time.perf_counter()
        yield conn.call_stream("download_request", bbrpc_pb2.DownloadRequest(), on_item)
        outcome["seconds"] = time.perf_counter() - started
        if received != items * ITEM_SIZE:
            raise AssertionError(f"received {received} bytes, expected {items * ITEM_SIZE}")
        conn.close()
        yield port.stopListening()

    def finished(result: object) -> object:
        outcome["result"] = result
        reactor.stop()
        return None

    def start() -> None:
        d: Deferred[Any] = transfer()
        d.addBoth(finished)

    reactor.callWhenRunning(start)
    # A bound on the whole run, so a bug cannot hang the benchmark.
    reactor.callLater(600, reactor.stop)
    reactor.run(installSignalHandlers=False)
    if "seconds" not in outcome:
        raise RuntimeError(f"bbrpc transfer failed: {outcome.get('result')}")
    return float(outcome["seconds"])


def socket_transfer(size_bytes: int) -> float:
    """Seconds to copy ``size_bytes`` through a plain loopback socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    chunk = bytes(range(256)) * (ITEM_SIZE // 256)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port)) as sender:
                for _ in range(size_bytes // ITEM_SIZE):
                    sender.sendall(chunk)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=send)
    started = time.perf_counter()
    thread.start()
    connection, _ = listener.accept()
    buffer = bytearray(ITEM_SIZE)
    view = memoryview(buffer)
    received = 0
    with connection:
        while received < size_bytes // ITEM_SIZE * ITEM_SIZE:
            n = connection.recv_into(view)
            if n == 0:
                break
            received += n
    elapsed = time.perf_counter() - started
    thread.join(timeout=60)
    listener.close()
    if errors or received != size_bytes // ITEM_SIZE * ITEM_SIZE:
        raise RuntimeError(f"socket copy failed: {errors or received}")
    return elapsed


def run(size_bytes: int = 256 * MIB) -> dict[str, float]:
    """Both transfers of ``size_bytes`` (rounded down to whole MiB); MB/s."""
    size_bytes = max(ITEM_SIZE, size_bytes // ITEM_SIZE * ITEM_SIZE)
    socket_seconds = socket_transfer(size_bytes)
    bbrpc_seconds = bbrpc_transfer(size_bytes)
    bbrpc_mbps = size_bytes / bbrpc_seconds / 1e6
    socket_mbps = size_bytes / socket_seconds / 1e6
    return {
        "bytes": float(size_bytes),
        "bbrpc_mb_per_s": bbrpc_mbps,
        "socket_mb_per_s": socket_mbps,
        "ratio": bbrpc_mbps / socket_mbps,
    }


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    result = run(mib * MIB)
    print(
        f"{mib} MiB: bbrpc {result['bbrpc_mb_per_s']:.0f} MB/s, "
        f"plain socket {result['socket_mb_per_s']:.0f} MB/s, "
        f"ratio {result['ratio']:.2f} (goal >= 0.5)"
    )


if __name__ == "__main__":
    main()
