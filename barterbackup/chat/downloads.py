"""EncryptedDownload on a bbrpc connection: serving our offers, fetching theirs.

The sealing, the checks and the file writing are the chat core's
(``pieces``, ``offers``, ``receiving``); this module puts them on a
connection:

* ``serve_encrypted_download`` is the body of the handler method: it opens
  and authorises the request for the authenticated caller and streams the
  pieces with the connection's flow control. Every refusal becomes a
  ``PeerCallError`` whose message the caller shows as it is: a key
  mismatch reads "the chat keys do not match: compare fingerprints" on
  both sides.
* ``fetch_offer`` downloads what a ``FileReceiver`` still lacks (all of it
  at first, the rest after a cut), checks every piece, and renames the file
  once its SHA-256 matches. A failed fetch keeps the verified ``.part``, so
  the next fetch of the same offer into the same directory resumes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError, PeerConnectionLost
from barterbackup.chat.aead import (
    KEY_MISMATCH_MESSAGE,
    ChatError,
    ChatKeyMismatch,
    FrameRefused,
    RandomBytes,
    StreamCut,
)
from barterbackup.chat.offers import (
    Offer,
    OfferRefused,
    OfferTable,
    ReceivedOffer,
    describe_file,
)
from barterbackup.chat.peer_key import PeerKey
from barterbackup.chat.pieces import (
    AuthorisedDownload,
    DownloadClient,
    Send,
    open_download_request,
    read_file_range,
    serve_download,
)
from barterbackup.chat.receiving import FileReceiver, ReceivedFileMismatch
from barterbackup.sync.interfaces import Blocking, run_inline

# The message a caller without the server's key sees: "here" would be
# the wrong side, so it names the server.
NO_KEY_AT_SERVER = KEY_MISMATCH_MESSAGE + " (the peer has no chat key for us)"


class FetchFailed(ChatError):
    """A fetch did not complete; the message says why and whether to retry."""


class StoredFiles(Protocol):
    """The node's own file set, for offering a backed-up file (blocking)."""

    def size(self, name: str) -> int: ...

    def open(self, name: str) -> Iterator[bytes]: ...


class SequentialReader:
    """``read(path, offset, length)`` over an iterator of a file's bytes.

    Offered pieces are read in order, so one pass over the stored file
    serves a whole download; a download resumed at an offset skips to it
    once (a stored file's bytes are decrypted and verified on the way, so
    skipping costs what reading costs).
    """

    def __init__(self, open_file: Callable[[], Iterator[bytes]]) -> None:
        self._open = open_file
        self._chunks: Iterator[bytes] | None = None
        self._position = 0
        self._buffer = bytearray()

    def __call__(self, path: Path, offset: int, length: int) -> bytes:
        if self._chunks is None or offset < self._position:
            self._chunks = iter(self._open())
            self._position = 0
            self._buffer = bytearray()
        while self._position < offset:
            if not self._buffer and not self._more():
                return b""
            skipped = min(len(self._buffer), offset - self._position)
            del self._buffer[:skipped]
            self._position += skipped
        while len(self._buffer) < length and self._more():
            pass
        data = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._position += len(data)
        return data

    def _more(self) -> bool:
        assert self._chunks is not None
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._buffer += chunk
        return True


class OfferedFiles:
    """Where offered bytes come from: a local file, or the file set."""

    def __init__(self, stored: StoredFiles | None = None) -> None:
        self._stored = stored

    def _file_set(self) -> StoredFiles:
        if self._stored is None:
            raise OfferRefused("this node offers no files of its file set")
        return self._stored

    def describe(self, path: Path, stored: bool) -> tuple[int, bytes]:
        """Size and SHA-256 of what would be offered (blocking)."""
        if not stored:
            return describe_file(path)
        files = self._file_set()
        size = files.size(str(path))
        digest = hashlib.sha256()
        for chunk in files.open(str(path)):
            digest.update(chunk)
        return size, digest.digest()

    def size(self, offer: Offer) -> int:
        if offer.stored:
            return self._file_set().size(str(offer.path))
        return os.path.getsize(offer.path)

    def reader(self, offer: Offer) -> Callable[[Path, int, int], bytes]:
        """What ``serve_download`` reads one download's pieces with."""
        if not offer.stored:
            return read_file_range
        files = self._file_set()
        return SequentialReader(lambda: files.open(str(offer.path)))


class DownloadConnection(Protocol):
    """What fetching needs of a peer connection."""

    def call_stream(
        self, request_field: str, message: Any, on_item: Callable[[Any], Any]
    ) -> defer.Deferred[None]: ...


async def serve_encrypted_download(
    request: bbrpc_pb2.EncryptedDownloadRequest,
    send: Send,
    *,
    caller: bytes,
    peer_key: PeerKey | None,
    local_onion: bytes,
    offers: OfferTable,
    random_bytes: RandomBytes,
    blocking: Blocking[Any] = run_inline,
    files: OfferedFiles | None = None,
) -> AuthorisedDownload:
    """Serve one EncryptedDownload call from ``caller``; what was sent."""
    try:
        download = open_download_request(
            request,
            peer_key=peer_key,
            local_onion=local_onion,
            remote_onion=caller,
            offers=offers,
        )
    except ChatKeyMismatch as mismatch:
        message = NO_KEY_AT_SERVER if mismatch.no_local_key else str(mismatch)
        raise PeerCallError(bbrpc_pb2.ERROR_CODE_PERMISSION_DENIED, message) from None
    except OfferRefused as refusal:
        raise PeerCallError(bbrpc_pb2.ERROR_CODE_NOT_FOUND, str(refusal)) from None
    except FrameRefused as refusal:
        raise PeerCallError(bbrpc_pb2.ERROR_CODE_BAD_REQUEST, str(refusal)) from None
    assert peer_key is not None  # open_download_request refuses without one
    files = files or OfferedFiles()
    offer = download.offer
    try:
        await serve_download(
            download,
            peer_key=peer_key,
            send=send,
            random_bytes=random_bytes,
            read=files.reader(offer),
            size_of=lambda path: files.size(offer),
            blocking=blocking,
        )
    except OfferRefused as refusal:
        raise PeerCallError(bbrpc_pb2.ERROR_CODE_NOT_FOUND, str(refusal)) from None
    return download


async def fetch_offer(
    conn: DownloadConnection,
    offer: ReceivedOffer,
    directory: Path,
    *,
    peer_key: PeerKey,
    local_onion: bytes,
    random_bytes: RandomBytes,
    blocking: Blocking[Any] = run_inline,
    report: Callable[[int, int], None] = lambda done, total: None,
) -> Path:
    """Fetch ``offer`` into ``directory``; the path of the verified file.

    ``report(bytes held, size)`` hears of each piece. Raises FetchFailed
    (the ``.part`` stays, except after a failed final check, which removes
    it), or the receiver's ReceiveError when the directory is unusable.
    """
    # Resuming re-hashes what the .part holds: off the reactor.
    receiver: FileReceiver = await blocking(
        lambda: FileReceiver.start(directory, offer)
    )
    finished = False
    try:
        client = DownloadClient.resuming(
            receiver,
            peer_key=peer_key,
            local_onion=local_onion,
            remote_onion=offer.peer,
            random_bytes=random_bytes,
        )
        report(receiver.offset, offer.size)

        def on_piece(response: bbrpc_pb2.EncryptedDownloadResponse) -> None:
            piece = client.receive(response)
            receiver.write_piece(piece.offset, piece.data)
            report(receiver.offset, offer.size)

        try:
            await conn.call_stream(
                "encrypted_download_request", client.request(), on_piece
            )
            client.finish()
        except PeerCallError as error:
            raise FetchFailed(f"the peer refused: {error.message}") from None
        except FrameRefused as refusal:
            raise FetchFailed(
                f"refused a piece from the peer ({refusal}); "
                f"{receiver.offset} verified bytes are kept"
            ) from None
        except (StreamCut, PeerConnectionLost) as cut:
            raise FetchFailed(
                f"the transfer was cut at {receiver.offset} of {offer.size} "
                f"bytes ({cut}); fetch it again to resume"
            ) from None
        try:
            path: Path = await blocking(receiver.finish)
        except ReceivedFileMismatch as mismatch:
            raise FetchFailed(str(mismatch)) from None
        finished = True
        return path
    finally:
        if not finished:
            receiver.close()
