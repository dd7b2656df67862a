"""bbrpc throughput on 127.0.0.1 against a plain socket copy of the same bytes.

The baseline copies the same number of bytes through a loopback TCP socket
with two threads (sendall/recv_into of 1 MiB buffers): the best plain
Python can do, with no framing at all, using both cores.

bbrpc is measured two ways, each on a fresh (not installed) epoll reactor:

* two processes (the headline figure, fair against the two-thread
  baseline): the serving node runs in a child process
  (``peer_tcp.py --serve ITEMS``), the downloading node in this one, as two
  real nodes would;
* one process: both ends on one reactor and one core, so encode and decode
  and both Twisted transports share it;
* two processes, hash-checked: as the first, but the server hashes every
  piece (as ``send_sections`` does) and the client checks each piece's
  SHA-256 (as the replica does). SHA-256 runs at ~1.4 GB/s per core here,
  so this figure is bounded by hashing, not by bbrpc.

The server sends DownloadPieces (``send_sections`` does on a real
connection); both ends get ``keep_freed_buffers_for_reuse`` from the
connection, as a node does.

    .venv/bin/python -m bench.peer_tcp [MiB]     # default 256
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.epollreactor import EPollReactor
from twisted.python.failure import Failure

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.calls import StreamSender
from barterbackup.bbrpc.factory import PeerServerFactory, connect_peer
from barterbackup.bbrpc.framing import DownloadPiece
from barterbackup.testing.link import keys_for_test

MIB = 1024 * 1024
ITEM_SIZE = MIB
SERVER_KEYS = keys_for_test(1)
CLIENT_KEYS = keys_for_test(2)


class _StreamingHandler:
    """Serves Download as ``items`` items of 1 MiB of the same bytes."""

    def __init__(self, items: int, hash_pieces: bool = False) -> None:
        self.items = items
        self.hash_pieces = hash_pieces
        self.chunk = bytes(range(256)) * (ITEM_SIZE // 256)
        self.sha256 = hashlib.sha256(self.chunk).digest()

    async def download(
        self,
        conn: Any,
        request: bbrpc_pb2.DownloadRequest,
        # A connection's sender takes DownloadPieces too (accepts_download_pieces).
        send: StreamSender[Any],
    ) -> Any:
        # Sent as DownloadPieces, as send_sections does on a real connection.
        # Unless hash_pieces, the (real) hash is computed once, not per piece.
        for index in range(self.items):
            sha256 = (
                hashlib.sha256(self.chunk).digest() if self.hash_pieces else self.sha256
            )
            await send(
                DownloadPiece(
                    blob=index.to_bytes(32, "big"),
                    offset=0,
                    data=self.chunk,
                    sha256=sha256,
                    blob_length=ITEM_SIZE,
                )
            )


def _run_on_fresh_reactor(work: Any) -> Any:
    """Run ``work(reactor)`` (returning a Deferred) on a new epoll reactor."""
    reactor = EPollReactor()
    outcome: dict[str, Any] = {}

    def finished(result: object) -> None:
        outcome["result"] = result
        reactor.stop()

    reactor.callWhenRunning(
        lambda: defer.maybeDeferred(work, reactor).addBoth(finished)
    )
    # A bound on the whole run, so a bug cannot hang the benchmark.
    reactor.callLater(600, reactor.stop)
    reactor.run(installSignalHandlers=False)
    result = outcome.get("result")
    if result is None or isinstance(result, Failure):
        raise RuntimeError(f"bbrpc transfer failed: {result}")
    return result


def _serve(items: int, hash_pieces: bool) -> None:
    """Child process: serve one Download of ``items`` MiB, then exit."""

    async def serve(reactor: Any) -> Any:
        closed: Deferred[Any] = Deferred()
        factory = PeerServerFactory(
            reactor,
            SERVER_KEYS,
            _StreamingHandler(items, hash_pieces),
            on_connection_lost=closed.callback,
        )
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        print(port.getHost().port, flush=True)
        await closed
        await port.stopListening()
        return True

    _run_on_fresh_reactor(serve)


async def _download(
    reactor: Any, port: int, items: int, check_hashes: bool = False
) -> Any:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    conn = await connect_peer(
        reactor,
        endpoint,
        CLIENT_KEYS,
        SERVER_KEYS.onion_address,
        object(),
    )
    received = 0

    def on_item(message: bbrpc_pb2.DownloadResponse) -> None:
        nonlocal received
        data = message.data
        received += len(data)
        if check_hashes and hashlib.sha256(data).digest() != message.sha256:
            raise AssertionError(f"piece {message.blob.hex()[:8]} fails its hash check")

    started = time.perf_counter()
    await conn.call_stream("download_request", bbrpc_pb2.DownloadRequest(), on_item)
    seconds = time.perf_counter() - started
    if received != items * ITEM_SIZE:
        raise AssertionError(f"received {received} bytes, expected {items * ITEM_SIZE}")
    closed = conn.when_closed()
    conn.close()
    await closed
    return seconds


def bbrpc_transfer_two_processes(size_bytes: int, hashed: bool = False) -> float:
    """Seconds to download ``size_bytes`` from a bbrpc server in a child.

    With ``hashed``, the server hashes each piece and the client checks it.
    """
    items = size_bytes // ITEM_SIZE
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(items)]
        + (["--hash"] if hashed else []),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        seconds = _run_on_fresh_reactor(
            lambda reactor: _download(reactor, port, items, check_hashes=hashed)
        )
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    return float(seconds)


def bbrpc_transfer_one_process(size_bytes: int) -> float:
    """Seconds to stream ``size_bytes`` with both ends on one reactor."""
    items = size_bytes // ITEM_SIZE

    async def transfer(reactor: Any) -> Any:
        factory = PeerServerFactory(reactor, SERVER_KEYS, _StreamingHandler(items))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        seconds = await _download(reactor, port.getHost().port, items)
        await port.stopListening()
        return seconds

    return float(_run_on_fresh_reactor(transfer))


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
    socket_mbps = size_bytes / socket_transfer(size_bytes) / 1e6
    bbrpc_mbps = size_bytes / bbrpc_transfer_two_processes(size_bytes) / 1e6
    one_process_mbps = size_bytes / bbrpc_transfer_one_process(size_bytes) / 1e6
    hashed_mbps = size_bytes / bbrpc_transfer_two_processes(size_bytes, True) / 1e6
    return {
        "bytes": float(size_bytes),
        "bbrpc_mb_per_s": bbrpc_mbps,
        "bbrpc_one_process_mb_per_s": one_process_mbps,
        "bbrpc_hashed_mb_per_s": hashed_mbps,
        "socket_mb_per_s": socket_mbps,
        "ratio": bbrpc_mbps / socket_mbps,
    }


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        _serve(int(sys.argv[2]), hash_pieces=sys.argv[3:4] == ["--hash"])
        return
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    result = run(mib * MIB)
    print(
        f"{mib} MiB: bbrpc {result['bbrpc_mb_per_s']:.0f} MB/s (two processes; "
        f"{result['bbrpc_one_process_mb_per_s']:.0f} MB/s in one, "
        f"{result['bbrpc_hashed_mb_per_s']:.0f} MB/s hash-checked), "
        f"plain socket {result['socket_mb_per_s']:.0f} MB/s, "
        f"ratio {result['ratio']:.2f} (goal >= 0.5)"
    )


if __name__ == "__main__":
    main()
