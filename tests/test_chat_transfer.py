"""Offered files end to end: EncryptedDownload pieces into a verified file.

Both sides run in memory: serve_download's send feeds the DownloadClient,
whose pieces go to a FileReceiver. No network.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.chat.aead import ChatKeyMismatch, FrameRefused, StreamCut
from barterbackup.chat.offers import IncomingOffers, Offer, OfferRefused, OfferTable
from barterbackup.chat.peer_key import PeerKey
from barterbackup.chat.pieces import (
    PIECE_BYTES,
    AuthorisedDownload,
    DownloadClient,
    open_download_request,
    serve_download,
)
from barterbackup.chat.receiving import (
    PART_SUFFIX,
    FileReceiver,
    ReceivedFileMismatch,
    ReceiveError,
    numbered_name,
)

SERVER = bytes(range(32))
CALLER = bytes(range(50, 82))
STRANGER = bytes(range(90, 122))
KEY = PeerKey(bytes(range(3, 35)))
MIB = 1024 * 1024


class CutHere(Exception):
    """The link went down."""


class TransferTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.rng = random.Random(4)
        self.shared = Path(self.mktemp())
        self.shared.mkdir()
        self.inbox = Path(self.mktemp())
        self.inbox.mkdir()
        self.offers = OfferTable(self.clock, self.rng.randbytes)
        self.incoming = IncomingOffers(self.clock)

    def offered(self, size: int, name: str = "photos.tar") -> tuple[Offer, bytes]:
        data = self.rng.randbytes(size)
        path = self.shared / "source.bin"
        path.write_bytes(data)
        offer = self.offers.offer(
            CALLER, path, size, hashlib.sha256(data).digest(), name=name
        )
        return offer, data

    def authorise(self, client: DownloadClient, **overrides: Any) -> AuthorisedDownload:
        arguments: dict[str, Any] = {
            "peer_key": KEY,
            "local_onion": SERVER,
            "remote_onion": CALLER,
            "offers": self.offers,
        }
        arguments.update(overrides)
        return open_download_request(client.request(), **arguments)

    def client(
        self, offer_id: bytes, offset: int, length: int, key: PeerKey = KEY
    ) -> DownloadClient:
        return DownloadClient(
            peer_key=key,
            local_onion=CALLER,
            remote_onion=SERVER,
            offer_id=offer_id,
            offset=offset,
            length=length,
            random_bytes=self.rng.randbytes,
        )

    def fetch(
        self,
        receiver: FileReceiver,
        cut_after: int | None = None,
        tamper: Callable[[int, bytes], bytes] | None = None,
    ) -> DownloadClient:
        """Download what ``receiver`` lacks; cut after ``cut_after`` pieces."""
        client = DownloadClient.resuming(
            receiver,
            peer_key=KEY,
            local_onion=CALLER,
            remote_onion=SERVER,
            random_bytes=self.rng.randbytes,
        )
        download = self.authorise(client)
        sent: list[int] = []

        def send(response: bbrpc_pb2.EncryptedDownloadResponse) -> None:
            if cut_after is not None and len(sent) == cut_after:
                raise CutHere()
            if tamper is not None:
                response.sealed = tamper(len(sent), response.sealed)
            sent.append(1)
            piece = client.receive(response)
            receiver.write_piece(piece.offset, piece.data)

        done = defer.Deferred.fromCoroutine(
            serve_download(
                download, peer_key=KEY, send=send, random_bytes=self.rng.randbytes
            )
        )
        if cut_after is None and tamper is None:
            self.successResultOf(done)
        else:
            self.failureResultOf(done)
        return client

    def test_cut_halfway_resumed_verified_renamed(self) -> None:
        offer, data = self.offered(6 * MIB + 12345)
        received = self.incoming.add(SERVER, offer.to_proto(self.clock.seconds()))
        receiver = FileReceiver.start(self.inbox, received)
        part = self.inbox / ("photos.tar" + PART_SUFFIX)
        self.assertEqual(stat.S_IMODE(part.stat().st_mode), 0o600)

        client = self.fetch(receiver, cut_after=3)
        self.assertRaises(StreamCut, client.finish)
        receiver.close()
        self.assertEqual(part.stat().st_size, 3 * PIECE_BYTES)
        self.assertFalse((self.inbox / "photos.tar").exists())

        # A restart: a new receiver finds the .part and asks from its size.
        receiver = FileReceiver.start(self.inbox, received)
        self.assertEqual(receiver.offset, 3 * PIECE_BYTES)
        client = self.fetch(receiver)
        client.finish()
        final = receiver.finish()
        self.assertEqual(final, self.inbox / "photos.tar")
        self.assertEqual(final.read_bytes(), data)
        self.assertFalse(part.exists())

    def test_tampered_piece_is_refused_and_nothing_renamed(self) -> None:
        offer, _ = self.offered(3 * MIB)
        received = self.incoming.add(SERVER, offer.to_proto(0))
        receiver = FileReceiver.start(self.inbox, received)

        def flip_in_second_piece(index: int, sealed: bytes) -> bytes:
            if index != 1:
                return sealed
            changed = bytearray(sealed)
            changed[5000] ^= 0x01
            return bytes(changed)

        self.fetch(receiver, tamper=flip_in_second_piece)
        # Only the first, authenticated piece was written.
        self.assertEqual(receiver.offset, PIECE_BYTES)
        self.assertRaises(ReceiveError, receiver.finish)
        receiver.close()
        self.assertEqual(
            sorted(p.name for p in self.inbox.iterdir()), ["photos.tar.part"]
        )

    def test_piece_cannot_move_to_another_offset_or_offer(self) -> None:
        offer, _ = self.offered(2 * MIB)
        client = self.client(offer.offer_id, 0, 2 * MIB)
        download = self.authorise(client)
        responses: list[bbrpc_pb2.EncryptedDownloadResponse] = []
        self.successResultOf(
            defer.Deferred.fromCoroutine(
                serve_download(
                    download,
                    peer_key=KEY,
                    send=responses.append,
                    random_bytes=self.rng.randbytes,
                )
            )
        )
        # The second piece where the first belongs.
        swapped = bbrpc_pb2.EncryptedDownloadResponse(
            sealed=responses[1].sealed, session_nonce=responses[0].session_nonce
        )
        self.assertRaises(FrameRefused, client.receive, swapped)
        # The same download asked for as another offer: nothing opens.
        other = self.client(bytes(16), 0, 2 * MIB)
        other._nonce = client._nonce  # type: ignore[attr-defined]
        other._transcript = client._transcript  # type: ignore[attr-defined]
        self.assertRaises(FrameRefused, other.receive, responses[0])

    def test_wrong_key_is_the_key_mismatch_error(self) -> None:
        offer, _ = self.offered(10)
        client = self.client(offer.offer_id, 0, 10, key=PeerKey(bytes(32)))
        error = self.assertRaises(ChatKeyMismatch, self.authorise, client)
        self.assertFalse(error.no_local_key)
        error = self.assertRaises(
            ChatKeyMismatch,
            self.authorise,
            self.client(offer.offer_id, 0, 10),
            peer_key=None,
        )
        self.assertTrue(error.no_local_key)

    def test_malformed_request_is_not_called_a_key_mismatch(self) -> None:
        offer, _ = self.offered(10)
        request = self.client(offer.offer_id, 0, 10).request()
        for sealed in (b"", bytes(1000), b"\x02" + request.sealed[1:]):
            bad = bbrpc_pb2.EncryptedDownloadRequest(
                sealed=sealed, session_nonce=request.session_nonce
            )
            error = self.assertRaises(
                FrameRefused,
                open_download_request,
                bad,
                peer_key=KEY,
                local_onion=SERVER,
                remote_onion=CALLER,
                offers=self.offers,
            )
            self.assertNotIsInstance(error, ChatKeyMismatch)
        bad = bbrpc_pb2.EncryptedDownloadRequest(sealed=request.sealed)
        self.assertRaises(
            FrameRefused,
            open_download_request,
            bad,
            peer_key=KEY,
            local_onion=SERVER,
            remote_onion=CALLER,
            offers=self.offers,
        )

    def test_another_peer_is_refused(self) -> None:
        offer, _ = self.offered(10)
        client = DownloadClient(
            peer_key=KEY,
            local_onion=STRANGER,
            remote_onion=SERVER,
            offer_id=offer.offer_id,
            offset=0,
            length=10,
            random_bytes=self.rng.randbytes,
        )
        self.assertRaises(OfferRefused, self.authorise, client, remote_onion=STRANGER)

    def test_expired_offer_is_refused(self) -> None:
        offer, _ = self.offered(10)
        self.clock.advance(offer.expires_at)
        client = self.client(offer.offer_id, 0, 10)
        error = self.assertRaises(OfferRefused, self.authorise, client)
        self.assertIn("expired", str(error))

    def test_range_past_the_offer_is_refused(self) -> None:
        offer, _ = self.offered(10)
        self.assertRaises(
            OfferRefused, self.authorise, self.client(offer.offer_id, 5, 6)
        )

    def test_changed_file_is_refused(self) -> None:
        offer, _ = self.offered(10)
        offer.path.write_bytes(b"shorter")
        download = self.authorise(self.client(offer.offer_id, 0, 10))
        done = defer.Deferred.fromCoroutine(
            serve_download(
                download,
                peer_key=KEY,
                send=lambda r: None,
                random_bytes=self.rng.randbytes,
            )
        )
        self.failureResultOf(done, OfferRefused)

    def test_sends_are_awaited(self) -> None:
        offer, _ = self.offered(3 * MIB)
        download = self.authorise(self.client(offer.offer_id, 0, 3 * MIB))
        waiting: list[defer.Deferred[None]] = []

        def send(response: bbrpc_pb2.EncryptedDownloadResponse) -> defer.Deferred[None]:
            waiting.append(defer.Deferred())
            return waiting[-1]

        done = defer.Deferred.fromCoroutine(
            serve_download(
                download, peer_key=KEY, send=send, random_bytes=self.rng.randbytes
            )
        )
        self.assertEqual(len(waiting), 1)
        waiting[0].callback(None)
        self.assertEqual(len(waiting), 2)
        waiting[1].callback(None)
        waiting[2].callback(None)
        self.successResultOf(done)

    def test_empty_file(self) -> None:
        offer, _ = self.offered(0, name="empty")
        received = self.incoming.add(SERVER, offer.to_proto(0))
        receiver = FileReceiver.start(self.inbox, received)
        self.fetch(receiver).finish()
        self.assertEqual(receiver.finish().read_bytes(), b"")


def received_offer(name: str, data: bytes) -> Any:
    incoming = IncomingOffers(Clock())
    return incoming.add(
        SERVER,
        bbrpc_pb2.ChatFileOffer(
            name=name,
            size=len(data),
            offer_id=os.urandom(16),
            sha256=hashlib.sha256(data).digest(),
            expires_in=60,
        ),
    )


class ReceiverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.inbox = Path(self.mktemp())
        self.inbox.mkdir()

    def receive(self, name: str, data: bytes, **finish: bool) -> Path:
        receiver = FileReceiver.start(self.inbox, received_offer(name, data))
        receiver.write_piece(0, data)
        return receiver.finish(**finish)

    def test_existing_file_is_not_overwritten(self) -> None:
        (self.inbox / "notes.txt").write_bytes(b"mine")
        first = self.receive("notes.txt", b"theirs")
        second = self.receive("notes.txt", b"again")
        self.assertEqual((self.inbox / "notes.txt").read_bytes(), b"mine")
        self.assertEqual(first.name, "notes (1).txt")
        self.assertEqual(second.name, "notes (2).txt")
        self.assertEqual(first.read_bytes(), b"theirs")

    def test_overwrite_only_when_asked(self) -> None:
        (self.inbox / "notes.txt").write_bytes(b"mine")
        final = self.receive("notes.txt", b"theirs", overwrite=True)
        self.assertEqual(final.read_bytes(), b"theirs")

    def test_existing_symlink_is_not_followed(self) -> None:
        target = Path(self.mktemp())
        target.write_bytes(b"outside")
        (self.inbox / "link").symlink_to(target)
        final = self.receive("link", b"data")
        self.assertEqual(final.name, "link (1)")
        self.assertEqual(target.read_bytes(), b"outside")

    def test_symlinked_part_is_not_followed(self) -> None:
        target = Path(self.mktemp())
        target.write_bytes(b"outside")
        (self.inbox / "f.part").symlink_to(target)
        self.assertRaises(
            ReceiveError, FileReceiver.start, self.inbox, received_offer("f", b"x")
        )
        self.assertEqual(target.read_bytes(), b"outside")

    def test_hostile_name_lands_inside_the_directory(self) -> None:
        final = self.receive("../../../tmp/evil\x1b.sh", b"x")
        self.assertEqual(final.parent, self.inbox)
        self.assertEqual(final.name, "evil.sh")

    def test_hash_mismatch_removes_the_part(self) -> None:
        offer = received_offer("f", b"expected")
        receiver = FileReceiver.start(self.inbox, offer)
        receiver.write_piece(0, b"tampered")
        self.assertRaises(ReceivedFileMismatch, receiver.finish)
        self.assertEqual(list(self.inbox.iterdir()), [])

    def test_never_writes_past_the_offered_size(self) -> None:
        receiver = FileReceiver.start(self.inbox, received_offer("f", b"1234"))
        self.assertRaises(ReceiveError, receiver.write_piece, 0, b"12345")
        receiver.write_piece(0, b"12")
        self.assertRaises(ReceiveError, receiver.write_piece, 1, b"2")
        self.assertRaises(ReceiveError, receiver.write_piece, 2, b"345")
        self.assertRaises(ReceiveError, receiver.finish)
        receiver.close()
        self.assertEqual((self.inbox / "f.part").read_bytes(), b"12")

    def test_oversized_part_is_refused(self) -> None:
        (self.inbox / "f.part").write_bytes(b"too long")
        self.assertRaises(
            ReceiveError, FileReceiver.start, self.inbox, received_offer("f", b"x")
        )

    def test_existing_part_without_resume_is_refused(self) -> None:
        (self.inbox / "f.part").write_bytes(b"")
        self.assertRaises(
            ReceiveError,
            FileReceiver.start,
            self.inbox,
            received_offer("f", b"x"),
            resume=False,
        )

    def test_unsafe_name_is_refused(self) -> None:
        offer = received_offer("f", b"x")
        forged = type(offer)(**{**offer.__dict__, "name": "../f"})
        self.assertRaises(ReceiveError, FileReceiver.start, self.inbox, forged)

    def test_numbered_names(self) -> None:
        self.assertEqual(numbered_name("a.tar.gz", 2), "a.tar (2).gz")
        self.assertEqual(numbered_name("README", 1), "README (1)")
