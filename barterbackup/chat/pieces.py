"""EncryptedDownload: a sealed request, then the offered bytes in sealed pieces.

One download is one short session of its own (docs/chat.md):

1. The caller (``DownloadClient``) draws a fresh 32-byte nonce and sends it
   in the clear with a ChatFileRequest (offer id, offset, length) sealed
   under a key derived from the peer key and that nonce.
2. The server (``open_download_request``) opens the request, which proves
   the caller holds the peer key (a failure answers "the chat keys do not
   match" on both sides), and asks the OfferTable whether this peer may have
   these bytes.
3. ``serve_download`` draws the server's nonce, sends it with the first
   piece, and streams pieces of ≤ PIECE_BYTES sealed under the session key
   derived from both nonces, each send awaited (flow control, as in
   ``send_sections``). Each piece binds the offer id and its offset in its
   associated data, so it cannot be moved, replayed at another offset or
   taken from another offer; the last is marked final.
4. The caller opens each piece in order (``DownloadClient.receive``) and
   writes it with ``FileReceiver.write_piece``; a stream that ends before
   the final piece is cut (``finish`` raises StreamCut) and is resumed by a
   new download from the offset held.

A replayed request would only make the server send, to the authenticated
peer, bytes sealed under keys fresh from the server's nonce: nothing for a
third party. There are no other frames to replay.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from twisted.internet import defer

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.framing import SealedPiece, accepts_sealed_pieces
from barterbackup.chat.aead import (
    PURPOSE_DOWNLOAD,
    PURPOSE_DOWNLOAD_REQUEST,
    SESSION_NONCE_LENGTH,
    AuthenticationFailed,
    ChatKeyMismatch,
    Direction,
    FrameOpener,
    FrameRefused,
    FrameSealer,
    RandomBytes,
    Role,
    StreamCut,
    Transcript,
    channel_for,
    derive_session_keys,
    sealed_length,
)
from barterbackup.chat.offers import OFFER_ID_LENGTH, Offer, OfferRefused, OfferTable
from barterbackup.chat.peer_key import PeerKey
from barterbackup.chat.receiving import FileReceiver

PIECE_BYTES = 1024 * 1024
# A ChatFileRequest is an id and two integers: well under this.
MAX_REQUEST_PLAINTEXT = 256

T = TypeVar("T")
Blocking = Callable[[Callable[[], T]], "defer.Deferred[T]"]
Send = Callable[
    [bbrpc_pb2.EncryptedDownloadResponse | SealedPiece], Awaitable[Any] | None
]


def run_inline(work: Callable[[], T]) -> defer.Deferred[T]:
    """Run blocking file reads right away (tests; small files)."""
    return defer.maybeDeferred(work)


def piece_context(offer_id: bytes, offset: int) -> bytes:
    """The per-piece associated data: offer id ‖ offset (8 bytes)."""
    return bytes(offer_id) + offset.to_bytes(8, "big")


def _request_transcript(
    caller_nonce: bytes, caller_onion: bytes, server_onion: bytes
) -> Transcript:
    return Transcript(
        PURPOSE_DOWNLOAD_REQUEST, caller_nonce, b"", caller_onion, server_onion
    )


def _request_sealer(peer_key: PeerKey, transcript: Transcript) -> FrameSealer:
    keys = derive_session_keys(peer_key, transcript)
    return FrameSealer(
        keys.from_initiator,
        Direction.FROM_INITIATOR,
        transcript.purpose,
        transcript.session_id(),
        MAX_REQUEST_PLAINTEXT,
    )


def _request_opener(peer_key: PeerKey, transcript: Transcript) -> FrameOpener:
    keys = derive_session_keys(peer_key, transcript)
    return FrameOpener(
        keys.from_initiator,
        Direction.FROM_INITIATOR,
        transcript.purpose,
        transcript.session_id(),
        MAX_REQUEST_PLAINTEXT,
    )


@dataclass(frozen=True)
class DownloadPiece:
    """One authenticated piece: ``data`` belongs at ``offset``."""

    offset: int
    data: bytes
    final: bool


class DownloadClient:
    """The caller's side of one EncryptedDownload call."""

    def __init__(
        self,
        *,
        peer_key: PeerKey,
        local_onion: bytes,
        remote_onion: bytes,
        offer_id: bytes,
        offset: int,
        length: int,
        random_bytes: RandomBytes,
    ) -> None:
        if len(offer_id) != OFFER_ID_LENGTH:
            raise ValueError("an offer id is 16 bytes")
        if offset < 0 or length < 0:
            raise ValueError("offset and length are never negative")
        self._peer_key = peer_key
        self._local_onion = local_onion
        self._remote_onion = remote_onion
        self.offer_id = bytes(offer_id)
        self.offset = offset
        self.end = offset + length
        self._nonce = bytes(random_bytes(SESSION_NONCE_LENGTH))
        self._transcript = _request_transcript(self._nonce, local_onion, remote_onion)
        self._opener: FrameOpener | None = None

    @classmethod
    def resuming(
        cls,
        receiver: FileReceiver,
        *,
        peer_key: PeerKey,
        local_onion: bytes,
        remote_onion: bytes,
        random_bytes: RandomBytes,
    ) -> DownloadClient:
        """A download of what ``receiver`` still lacks (all of it, at first)."""
        return cls(
            peer_key=peer_key,
            local_onion=local_onion,
            remote_onion=remote_onion,
            offer_id=receiver.offer.offer_id,
            offset=receiver.offset,
            length=receiver.remaining,
            random_bytes=random_bytes,
        )

    def request(self) -> bbrpc_pb2.EncryptedDownloadRequest:
        """The one request message of the call."""
        plaintext = bbrpc_pb2.ChatFileRequest(
            offer_id=self.offer_id, offset=self.offset, length=self.end - self.offset
        ).SerializeToString()
        sealed = _request_sealer(self._peer_key, self._transcript).seal(
            plaintext, final=True
        )
        return bbrpc_pb2.EncryptedDownloadRequest(
            sealed=sealed, session_nonce=self._nonce
        )

    def receive(self, response: bbrpc_pb2.EncryptedDownloadResponse) -> DownloadPiece:
        """Open the next piece, or raise FrameRefused (end the call then)."""
        opener = self._opener
        if opener is None:
            opener = self._opener = self._start(response.session_nonce)
        elif response.session_nonce:
            raise FrameRefused("the server sent its session nonce twice")
        context = piece_context(self.offer_id, self.offset)
        frame = opener.open(response.sealed, context=context)
        data = frame.plaintext
        if self.offset + len(data) > self.end:
            raise FrameRefused(
                f"a piece ends at {self.offset + len(data)}, past the {self.end} asked"
            )
        if frame.final and self.offset + len(data) != self.end:
            raise FrameRefused(
                f"the last piece ends at {self.offset + len(data)}, not at {self.end}"
            )
        if not frame.final and not data:
            raise FrameRefused("an empty piece that is not the last one")
        piece = DownloadPiece(self.offset, data, frame.final)
        self.offset += len(data)
        return piece

    def _start(self, server_nonce: bytes) -> FrameOpener:
        if len(server_nonce) != SESSION_NONCE_LENGTH:
            raise FrameRefused("the first piece does not carry the server's nonce")
        transcript = Transcript(
            PURPOSE_DOWNLOAD,
            self._nonce,
            bytes(server_nonce),
            self._local_onion,
            self._remote_onion,
        )
        keys = derive_session_keys(self._peer_key, transcript)
        return channel_for(keys, Role.INITIATOR, transcript, PIECE_BYTES).incoming

    @property
    def complete(self) -> bool:
        return self._opener is not None and self._opener.ended

    def finish(self) -> None:
        """Call when the stream ends: raises StreamCut before the final piece."""
        if self._opener is None:
            raise StreamCut("the download ended before its first piece: it was cut")
        self._opener.finish()

    def __repr__(self) -> str:
        return f"DownloadClient({self.offer_id.hex()}, {self.offset}/{self.end})"


@dataclass(frozen=True)
class AuthorisedDownload:
    """A request that opened and that the OfferTable allows."""

    offer: Offer
    offset: int
    length: int
    caller_nonce: bytes
    caller_onion: bytes
    server_onion: bytes


def open_download_request(
    request: bbrpc_pb2.EncryptedDownloadRequest,
    *,
    peer_key: PeerKey | None,
    local_onion: bytes,
    remote_onion: bytes,
    offers: OfferTable,
) -> AuthorisedDownload:
    """Open and authorise a request from the peer ``remote_onion``.

    Raises ChatKeyMismatch (no key here, or the request does not open under
    ours), FrameRefused (malformed) or OfferRefused (not this peer's offer,
    expired, out of range).
    """
    if len(request.session_nonce) != SESSION_NONCE_LENGTH:
        raise FrameRefused("a download request carries a 32-byte session nonce")
    if peer_key is None:
        raise ChatKeyMismatch(no_local_key=True)
    caller_nonce = bytes(request.session_nonce)
    transcript = _request_transcript(caller_nonce, remote_onion, local_onion)
    try:
        frame = _request_opener(peer_key, transcript).open(request.sealed)
    except AuthenticationFailed:
        # The caller sealed it a moment ago on an authenticated channel:
        # a well-formed request that does not open means the keys differ.
        raise ChatKeyMismatch() from None
    if not frame.final:
        raise FrameRefused("a download request is a single final frame")
    wanted = bbrpc_pb2.ChatFileRequest()
    try:
        wanted.ParseFromString(frame.plaintext)
    except DecodeError:
        raise FrameRefused("a download request does not parse") from None
    offer = offers.authorise(
        remote_onion, wanted.offer_id, wanted.offset, wanted.length
    )
    return AuthorisedDownload(
        offer, wanted.offset, wanted.length, caller_nonce, remote_onion, local_onion
    )


def _seal_piece(
    sealer: FrameSealer, data: bytes, final: bool, context: bytes, out: memoryview
) -> None:
    sealer.seal_into(out, data, final=final, context=context)


def read_file_range(path: Path, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes of ``path`` from ``offset`` (blocking)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


async def serve_download(
    download: AuthorisedDownload,
    *,
    peer_key: PeerKey,
    send: Send,
    random_bytes: RandomBytes,
    read: Callable[[Path, int, int], bytes] = read_file_range,
    size_of: Callable[[Path], int] = os.path.getsize,
    blocking: Blocking[Any] = run_inline,
) -> None:
    """Stream the authorised bytes in sealed pieces, awaiting each send.

    Raises OfferRefused if the file no longer has its offered size or
    shrinks while it is read (the caller's SHA-256 check catches any other
    change). A connection's sender takes SealedPiece items
    (``accepts_sealed_pieces``): each piece is then sealed straight into
    its frame, with no copy of its own.
    """
    offer = download.offer
    size = await blocking(partial(size_of, offer.path))
    if size != offer.size:
        raise OfferRefused("the offered file changed since it was offered")
    server_nonce = bytes(random_bytes(SESSION_NONCE_LENGTH))
    transcript = Transcript(
        PURPOSE_DOWNLOAD,
        download.caller_nonce,
        server_nonce,
        download.caller_onion,
        download.server_onion,
    )
    keys = derive_session_keys(peer_key, transcript)
    sealer = channel_for(keys, Role.RESPONDER, transcript, PIECE_BYTES).outgoing
    offset = download.offset
    end = download.offset + download.length
    first = True
    in_frame = accepts_sealed_pieces(send)
    while True:
        length = min(PIECE_BYTES, end - offset)
        data: bytes = await blocking(partial(read, offer.path, offset, length))
        if len(data) != length:
            raise OfferRefused("the offered file shrank while it was sent")
        final = offset + length == end
        context = piece_context(offer.offer_id, offset)
        nonce = server_nonce if first else b""
        first = False
        item: bbrpc_pb2.EncryptedDownloadResponse | SealedPiece
        if in_frame:
            item = SealedPiece(
                sealed_length(len(data)),
                partial(_seal_piece, sealer, data, final, context),
                nonce,
            )
        else:
            item = bbrpc_pb2.EncryptedDownloadResponse(
                sealed=sealer.seal(data, final=final, context=context),
                session_nonce=nonce,
            )
        sent = send(item)
        if sent is not None:
            await sent
        offset += length
        if final:
            return
