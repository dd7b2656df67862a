"""EncryptedDownload ÷ plain Download of the same bytes, same link, same run.

Issue 11's goals: ≥ 0.8 over TCP, ≥ 0.9 over an onion.

**TCP** (``tcp``): a serving node in a child process, the fetching node in
this one, one bbrpc connection on 127.0.0.1 between them. The same file of
SIZE random bytes travels both ways, rounds alternating, best of each:

* plain Download, as a replica fetches: the server reads 1 MiB pieces of
  the file (in its thread pool, as ``send_sections`` reads sections),
  hashes each and sends DownloadPieces; the client checks each piece's
  SHA-256, writes it at its offset in a file and keeps a running SHA-256
  of the whole (which a whole-file check needs);
* EncryptedDownload, the chat code itself: ``serve_encrypted_download``
  (reads, seals each piece into its frame) and ``fetch_offer`` (opens each
  piece, writes it with ``FileReceiver``, running SHA-256).

Both figures are first request → last piece written; the final check,
fsync and rename that end a fetch are left out of both.

**Onion** (``onion``): two real nodes with the Tor transport on a private
Tor network (``bench.onion_sync``'s set-up). Plain Download is a replica
sync of SIZE random bytes (``replicate``, whose replica pulls with
Download); EncryptedDownload is the same number of random bytes offered in
an encrypted chat and fetched, over the same onion connection.

    .venv/bin/python -m bench.chat_download tcp [MiB]      # default 256
    .venv/bin/python -m bench.chat_download onion [MiB]    # default 32
    .venv/bin/python -m bench.chat_download [MiB] [onion MiB]   # both
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.threads import deferToThreadPool

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.factory import PeerServerFactory, connect_peer
from barterbackup.bbrpc.framing import DownloadPiece
from barterbackup.chat.downloads import fetch_offer, serve_encrypted_download
from barterbackup.chat.offers import IncomingOffers, OfferTable
from barterbackup.chat.peer_key import PeerKey
from barterbackup.chat.pieces import PIECE_BYTES, read_file_range
from barterbackup.chat.updates import DONE, FAILED, OfferIn, TransferProgress
from barterbackup.testing.link import keys_for_test
from bench.peer_tcp import _run_on_fresh_reactor

MIB = 1024 * 1024
ROUNDS = 3
ONION_ROUNDS = 2
SERVER_KEYS = keys_for_test(11)
CLIENT_KEYS = keys_for_test(12)
CHAT_KEY = PeerKey(bytes(range(40, 72)))


# -- TCP: the serving side (child process) ------------------------------------


class _Server:
    """Serves one file by plain Download and by EncryptedDownload."""

    def __init__(self, reactor: Any, path: Path) -> None:
        self._reactor = reactor
        self._path = path
        self.size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(MIB):
                digest.update(chunk)
        self.sha256 = digest.digest()
        self.offers = OfferTable(reactor, os.urandom)
        self.offer = self.offers.offer(
            CLIENT_KEYS.onion_pubkey, path, self.size, self.sha256, lifetime=3600
        )

    def _blocking(self, work: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), work)

    async def download(self, conn: Any, request: Any, send: Any) -> None:
        for offset in range(0, self.size, PIECE_BYTES):
            length = min(PIECE_BYTES, self.size - offset)
            data = await self._blocking(
                partial(read_file_range, self._path, offset, length)
            )
            piece = DownloadPiece(
                0, offset, data, hashlib.sha256(data).digest(), self.size
            )
            await send(piece)

    def encrypted_download(self, conn: Any, request: Any, send: Any) -> Any:
        return Deferred.fromCoroutine(
            serve_encrypted_download(
                request,
                send,
                caller=conn.peer_pubkey,
                peer_key=CHAT_KEY,
                local_onion=SERVER_KEYS.onion_pubkey,
                offers=self.offers,
                random_bytes=os.urandom,
                blocking=self._blocking,
            )
        )


def _serve(path: Path) -> None:
    async def serve(reactor: Any) -> Any:
        closed: Deferred[Any] = Deferred()
        server = _Server(reactor, path)
        factory = PeerServerFactory(
            reactor, SERVER_KEYS, server, on_connection_lost=closed.callback
        )
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        print(port.getHost().port, server.offer.offer_id.hex(), flush=True)
        await closed
        await port.stopListening()
        return True

    _run_on_fresh_reactor(serve)


# -- TCP: the fetching side -----------------------------------------------------


async def _plain(conn: Any, size: int, sha256: bytes, target: Path) -> float:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    whole = hashlib.sha256()
    held = 0

    def on_item(response: bbrpc_pb2.DownloadResponse) -> None:
        nonlocal held
        data = response.data
        if hashlib.sha256(data).digest() != response.sha256:
            raise AssertionError(f"piece at {response.offset} fails its hash")
        os.pwrite(fd, data, response.offset)
        whole.update(data)
        held += len(data)

    began = time.perf_counter()
    try:
        await conn.call_stream("download_request", bbrpc_pb2.DownloadRequest(), on_item)
        seconds = time.perf_counter() - began
    finally:
        os.close(fd)
    if held != size or whole.digest() != sha256:
        raise AssertionError("plain Download delivered other bytes")
    return seconds


async def _encrypted(
    reactor: Any, conn: Any, offer: Any, directory: Path, size: int
) -> float:
    last: list[float] = []

    def report(done: int, total: int) -> None:
        if done == total:
            last.append(time.perf_counter())

    def blocking(work: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)

    began = time.perf_counter()
    path = await fetch_offer(
        conn,
        offer,
        directory,
        peer_key=CHAT_KEY,
        local_onion=CLIENT_KEYS.onion_pubkey,
        random_bytes=os.urandom,
        blocking=blocking,
        report=report,
    )
    if path.stat().st_size != size:
        raise AssertionError("EncryptedDownload delivered another size")
    path.unlink()
    return last[-1] - began


def measure_tcp(size: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bb-bench-chat-"))
    source = workdir / "offered.bin"
    with open(source, "wb") as handle:
        for _ in range(size // MIB):
            handle.write(os.urandom(MIB))
    sha256 = hashlib.sha256(source.read_bytes()).digest()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.chat_download", "--serve", str(source)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port_text, offer_hex = child.stdout.readline().split()

        async def run(reactor: Any) -> dict[str, list[float]]:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(port_text))
            conn = await connect_peer(
                reactor, endpoint, CLIENT_KEYS, SERVER_KEYS.onion_address, object()
            )
            incoming = IncomingOffers(reactor)
            offer = incoming.add(
                SERVER_KEYS.onion_pubkey,
                bbrpc_pb2.ChatFileOffer(
                    name="offered.bin",
                    size=size,
                    offer_id=bytes.fromhex(offer_hex),
                    sha256=sha256,
                    expires_in=3600,
                ),
            )
            inbox = workdir / "inbox"
            inbox.mkdir()
            times: dict[str, list[float]] = {"plain": [], "encrypted": []}
            for _ in range(ROUNDS):
                times["plain"].append(
                    await _plain(conn, size, sha256, workdir / "plain.bin")
                )
                times["encrypted"].append(
                    await _encrypted(reactor, conn, offer, inbox, size)
                )
            closed = conn.when_closed()
            conn.close()
            await closed
            return times

        times = _run_on_fresh_reactor(run)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    plain = size / min(times["plain"]) / 1e6
    encrypted = size / min(times["encrypted"]) / 1e6
    return {
        "size_bytes": size,
        "plain_mb_s": plain,
        "encrypted_mb_s": encrypted,
        "ratio": encrypted / plain,
        "plain_runs": [size / t / 1e6 for t in times["plain"]],
        "encrypted_runs": [size / t / 1e6 for t in times["encrypted"]],
    }


# -- onion ------------------------------------------------------------------------


async def _measure_onion(reactor: Any, workdir: Path, size: int) -> dict[str, Any]:
    from barterbackup.node.facade import Node
    from barterbackup.node.results import NodeConfig
    from barterbackup.node.session import production_environment
    from barterbackup.progress import Progress
    from barterbackup.testing.tornet import TorNetwork
    from bench.onion_sync import PASSWORDS, _commit

    network = TorNetwork(reactor, workdir / "tornet")
    await network.start()
    options = tuple((k, v) for k, v in network.client_torrc_options())
    nodes: list[Node] = []
    try:
        for index, password in enumerate(PASSWORDS):
            config = NodeConfig(
                node_dir=workdir / f"n{index}", transport="tor", extra_torrc=options
            )
            node = Node(production_environment(reactor, config), config)
            node.startService()
            await node.unlock(password, create_if_missing=True)
            nodes.append(node)
        for node in nodes:
            await node.session.network.ready()
        a, b = nodes
        a_address = a.session.keys.onion_address
        b_address = b.session.keys.onion_address
        await a.connect_peer(b_address)
        made = await a.set_chat_key(b_address, generate=True)
        await b.set_chat_key(a_address, key_text=made.key_text)
        offers: list[Any] = []
        progress: list[Any] = []
        waiting: list[tuple[Any, Deferred[Any]]] = []

        def listen(into: list[Any]) -> Any:
            def hear(update: Any) -> None:
                into.append(update)
                for entry in list(waiting):
                    if entry[0](update):
                        waiting.remove(entry)
                        entry[1].callback(update)

            return hear

        def next_update(predicate: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            waiting.append((predicate, d))
            return d.addTimeout(900, reactor)

        alice = await a.open_chat(b_address, listen([]))
        bob = await b.open_chat(a_address, listen(progress))
        inbox = workdir / "inbox"
        inbox.mkdir()
        plain: list[float] = []
        encrypted: list[float] = []
        for round_number in range(ONION_ROUNDS):
            await _commit(a, f"round{round_number}.bin", os.urandom(size))
            seen: list[Progress] = []
            began = time.monotonic()
            await a.replicate([b_address], seen.append)
            elapsed = time.monotonic() - began
            [done] = [e for e in seen if e.phase == "done"]
            plain.append(int(done.message.split()[0]) / elapsed / 1e6)

            source = workdir / f"offer{round_number}.bin"
            source.write_bytes(os.urandom(size))
            offered = next_update(lambda u: isinstance(u, OfferIn))
            alice.offer_file(str(source), round_number + 1)
            offer = await offered
            offers.append(offer)
            finished = next_update(
                lambda u: isinstance(u, TransferProgress) and u.phase in (DONE, FAILED)
            )
            began = time.monotonic()
            bob.accept_file(offer.offer.offer_id, str(inbox), 100 + round_number)
            result = await finished
            elapsed = time.monotonic() - began
            if result.phase != DONE:
                raise RuntimeError(f"the fetch failed: {result.message}")
            encrypted.append(size / elapsed / 1e6)
        alice.stop()
        bob.stop()
        return {
            "size_bytes": size,
            "plain_mb_s": max(plain),
            "encrypted_mb_s": max(encrypted),
            "ratio": max(encrypted) / max(plain),
            "plain_runs": plain,
            "encrypted_runs": encrypted,
        }
    finally:
        for node in nodes:
            await node.stopService()
        await network.stop()


def measure_onion(size: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bb-bench-chat-onion-"))
    box: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        box.update(await _measure_onion(reactor, workdir, size))

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return box


def print_figures(where: str, goal: float, figures: dict[str, Any]) -> None:
    size = figures["size_bytes"] / MIB
    runs = ", ".join(f"{r:.1f}" for r in figures["encrypted_runs"])
    plain_runs = ", ".join(f"{r:.1f}" for r in figures["plain_runs"])
    print(f"{where}: {size:.0f} MiB, best of {len(figures['plain_runs'])}")
    print(
        f"  plain Download          {figures['plain_mb_s']:8.2f} MB/s  ({plain_runs})"
    )
    print(f"  EncryptedDownload       {figures['encrypted_mb_s']:8.2f} MB/s  ({runs})")
    print(f"  ratio (goal >= {goal})     {figures['ratio']:8.2f}")


def main() -> None:
    arguments = sys.argv[1:]
    if arguments[:1] == ["--serve"]:
        _serve(Path(arguments[1]))
        return
    which = "both"
    if arguments[:1] in (["tcp"], ["onion"]):
        which, arguments = arguments[0], arguments[1:]
    tcp_mib = int(arguments[0]) if arguments else 256
    onion_mib = int(arguments[1]) if len(arguments) > 1 else 32
    if which == "onion":
        onion_mib = tcp_mib if arguments else 32
    if which in ("tcp", "both"):
        print_figures("TCP on 127.0.0.1", 0.8, measure_tcp(tcp_mib * MIB))
    if which in ("onion", "both"):
        print_figures(
            "onion (private Tor network)", 0.9, measure_onion(onion_mib * MIB)
        )


if __name__ == "__main__":
    main()
