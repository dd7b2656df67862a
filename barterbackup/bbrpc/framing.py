"""bbrpc frames: a 4-byte big-endian length, then one serialized Envelope.

Everything here is pure (no I/O, no reactor), so it can be tested
exhaustively. The length is checked against a hard maximum *before* any
payload is buffered: a peer that announces a 4 GiB frame is dropped after
four bytes, not after we tried to hold 4 GiB.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from barterbackup._proto import bbrpc_pb2
from barterbackup.protowire import (
    LENGTH_DELIMITED,
    UINT64_LIMIT,
    VARINT,
    length_delimited_head,
    tag,
    varint,
)

LENGTH_PREFIX = struct.Struct(">I")
PREFIX_LENGTH = LENGTH_PREFIX.size

# The largest payload an Envelope carries is one DownloadResponse of up to
# 1 MiB of data; 64 KiB on top covers the envelope and message fields.
MAX_DATA_LENGTH = 1024 * 1024
MAX_FRAME_LENGTH = MAX_DATA_LENGTH + 64 * 1024


class FrameError(Exception):
    """The byte stream from a peer is not a valid sequence of frames.

    The stream cannot be resynchronised after such an error, so the only
    safe reaction is to drop the connection.
    """


class FrameTooLarge(FrameError):
    """A frame is (or announces itself as) longer than the maximum."""

    def __init__(self, length: int, maximum: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the maximum of {maximum}")
        self.length = length
        self.maximum = maximum


class MalformedFrame(FrameError):
    """A frame's payload is not a decodable Envelope."""


def encode_payload(
    envelope: bbrpc_pb2.Envelope, max_frame_length: int = MAX_FRAME_LENGTH
) -> tuple[bytes, bytes]:
    """The frame of ``envelope`` as (length prefix, payload).

    Returned in two parts so a transport can write both without copying a
    large payload once more to join them. Raises FrameTooLarge rather than
    produce a frame the peer would reject.
    """
    payload = envelope.SerializeToString()
    if len(payload) > max_frame_length:
        raise FrameTooLarge(len(payload), max_frame_length)
    return LENGTH_PREFIX.pack(len(payload)), payload


def encode_body_frame(
    call_id: int,
    end: bool,
    body_field: str,
    body: Message,
    max_frame_length: int = MAX_FRAME_LENGTH,
) -> tuple[bytes, bytes, bytes]:
    """The frame of Envelope(call_id, end, body_field=body), as three parts.

    Equal on the wire to encoding that Envelope, but the body is serialized
    once, straight from the caller's message: building the Envelope first
    would copy a 1 MiB stream item twice more (protobuf messages embed by
    copy). Protobuf lets a message field be written as its tag, its length
    and the serialized sub-message, which is what this does.
    """
    number = bbrpc_pb2.Envelope.DESCRIPTOR.fields_by_name[body_field].number
    inner = body.SerializeToString()
    head = bbrpc_pb2.Envelope(call_id=call_id, end=end).SerializeToString()
    head += length_delimited_head(number, len(inner))
    length = len(head) + len(inner)
    if length > max_frame_length:
        raise FrameTooLarge(length, max_frame_length)
    return LENGTH_PREFIX.pack(length), head, inner


_DOWNLOAD_RESPONSE_NUMBER = bbrpc_pb2.Envelope.DESCRIPTOR.fields_by_name[
    "download_response"
].number


# DownloadResponse field tags, in field-number order (which is the order
# protobuf serializes known fields in; tests check the bytes are equal).
_BLOB_TAG = tag(1, LENGTH_DELIMITED)
_OFFSET_TAG = tag(2, VARINT)
_DATA_TAG = tag(3, LENGTH_DELIMITED)
_SHA256_TAG = tag(4, LENGTH_DELIMITED)
_BLOB_LENGTH_TAG = tag(5, VARINT)
_CALL_ID_TAG = tag(1, VARINT)
_DOWNLOAD_RESPONSE_TAG = tag(_DOWNLOAD_RESPONSE_NUMBER, LENGTH_DELIMITED)


@dataclass(frozen=True)
class DownloadPiece:
    """One Download stream item, framed without a protobuf message.

    Means exactly ``DownloadResponse(blob, offset, data, sha256,
    blob_length)``. Building that message copies ``data`` into protobuf
    memory and serializing it copies it again; each copy of a 1 MiB piece
    is a fresh allocation that costs ~256 page faults, which made those
    copies the largest cost of a Download. ``data`` may be a memoryview
    into a whole blob, so cutting pieces copies nothing.
    """

    blob: bytes
    offset: int
    data: bytes | memoryview
    sha256: bytes
    blob_length: int

    def __post_init__(self) -> None:
        for name in ("offset", "blob_length"):
            value = getattr(self, name)
            if not 0 <= value < UINT64_LIMIT:
                raise ValueError(f"{name} {value} is not a uint64")
        if not memoryview(self.data).contiguous:
            raise ValueError("piece data must be a contiguous buffer")

    def to_message(self) -> bbrpc_pb2.DownloadResponse:
        """The same item as a DownloadResponse (copies the data)."""
        return bbrpc_pb2.DownloadResponse(
            blob=self.blob,
            offset=self.offset,
            data=bytes(self.data),
            sha256=self.sha256,
            blob_length=self.blob_length,
        )


# The attribute a stream sender carries when it takes DownloadPiece items
# as well as DownloadResponse messages (PeerConnection's senders do).
ACCEPTS_DOWNLOAD_PIECES = "accepts_download_pieces"


def accepts_download_pieces(send: object) -> bool:
    """Whether the stream sender ``send`` takes DownloadPiece items."""
    return getattr(send, ACCEPTS_DOWNLOAD_PIECES, False) is True


def encode_download_piece_frame(
    call_id: int,
    piece: DownloadPiece,
    max_frame_length: int = MAX_FRAME_LENGTH,
) -> bytes:
    """The frame of Envelope(call_id, download_response=piece), end unset.

    Byte for byte what encode_frame makes of that Envelope (tests check),
    written by hand: the protobuf encoding of these messages is tags,
    varints and length-prefixed bytes. The data is copied exactly once,
    into the returned frame, and the frame is one bytes object so the
    transport can send it without joining buffers again.
    """
    if not 0 <= call_id < UINT64_LIMIT:
        raise ValueError(f"call id {call_id} is not a uint64")
    data_length = memoryview(piece.data).nbytes
    head = bytearray()
    if piece.blob:
        head += _BLOB_TAG + varint(len(piece.blob)) + piece.blob
    if piece.offset:
        head += _OFFSET_TAG + varint(piece.offset)
    if data_length:
        head += _DATA_TAG + varint(data_length)
    tail = bytearray()
    if piece.sha256:
        tail += _SHA256_TAG + varint(len(piece.sha256)) + piece.sha256
    if piece.blob_length:
        tail += _BLOB_LENGTH_TAG + varint(piece.blob_length)
    body_length = len(head) + data_length + len(tail)
    envelope_head = bytearray()
    if call_id:
        envelope_head += _CALL_ID_TAG + varint(call_id)
    envelope_head += _DOWNLOAD_RESPONSE_TAG + varint(body_length)
    length = len(envelope_head) + body_length
    if length > max_frame_length:
        raise FrameTooLarge(length, max_frame_length)
    return b"".join((LENGTH_PREFIX.pack(length), envelope_head, head, piece.data, tail))


_ENCRYPTED_DOWNLOAD_RESPONSE_NUMBER = bbrpc_pb2.Envelope.DESCRIPTOR.fields_by_name[
    "encrypted_download_response"
].number
_ENCRYPTED_DOWNLOAD_RESPONSE_TAG = tag(
    _ENCRYPTED_DOWNLOAD_RESPONSE_NUMBER, LENGTH_DELIMITED
)
# EncryptedDownloadResponse field tags, in field-number order.
_SEALED_TAG = tag(1, LENGTH_DELIMITED)
_SESSION_NONCE_TAG = tag(2, LENGTH_DELIMITED)


@dataclass(frozen=True)
class SealedPiece:
    """One EncryptedDownload stream item whose sealed bytes land in its frame.

    Means ``EncryptedDownloadResponse(sealed=S, session_nonce=...)`` where
    S is the ``sealed_length`` bytes ``seal_into`` writes into the buffer it
    is given (a slice of the frame being built). The sealer encrypts a 1
    MiB piece straight into the frame instead of into a buffer of its own
    that protobuf would copy twice more (the chat layer's
    ``FrameSealer.seal_into`` does exactly this).
    """

    sealed_length: int
    seal_into: Callable[[memoryview], None]
    session_nonce: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.sealed_length < UINT64_LIMIT:
            raise ValueError(f"sealed length {self.sealed_length} is not a uint64")


# The attribute a stream sender carries when it takes SealedPiece items as
# well as EncryptedDownloadResponse messages (PeerConnection's senders do).
ACCEPTS_SEALED_PIECES = "accepts_sealed_pieces"


def accepts_sealed_pieces(send: object) -> bool:
    """Whether the stream sender ``send`` takes SealedPiece items."""
    return getattr(send, ACCEPTS_SEALED_PIECES, False) is True


def encode_sealed_piece_frame(
    call_id: int,
    piece: SealedPiece,
    max_frame_length: int = MAX_FRAME_LENGTH,
) -> bytes:
    """The frame of Envelope(call_id, encrypted_download_response=piece).

    Byte for byte what encode_frame makes of the equivalent Envelope
    (tests check). The frame is allocated once; ``piece.seal_into`` fills
    its sealed field in place.
    """
    if not 0 <= call_id < UINT64_LIMIT:
        raise ValueError(f"call id {call_id} is not a uint64")
    head = b""
    if piece.sealed_length:
        head = _SEALED_TAG + varint(piece.sealed_length)
    tail = b""
    if piece.session_nonce:
        nonce = bytes(piece.session_nonce)
        tail = _SESSION_NONCE_TAG + varint(len(nonce)) + nonce
    body_length = len(head) + piece.sealed_length + len(tail)
    envelope_head = b""
    if call_id:
        envelope_head = _CALL_ID_TAG + varint(call_id)
    envelope_head += _ENCRYPTED_DOWNLOAD_RESPONSE_TAG + varint(body_length)
    length = len(envelope_head) + body_length
    if length > max_frame_length:
        raise FrameTooLarge(length, max_frame_length)
    frame = bytearray(PREFIX_LENGTH + length)
    LENGTH_PREFIX.pack_into(frame, 0, length)
    start = PREFIX_LENGTH + len(envelope_head) + len(head)
    frame[PREFIX_LENGTH:start] = envelope_head + head
    end = start + piece.sealed_length
    piece.seal_into(memoryview(frame)[start:end])
    frame[end:] = tail
    # Twisted's transports take only bytes: one copy, as for DownloadPiece.
    return bytes(frame)


def encode_frame(
    envelope: bbrpc_pb2.Envelope, max_frame_length: int = MAX_FRAME_LENGTH
) -> bytes:
    """The complete frame of ``envelope`` (prefix and payload joined)."""
    prefix, payload = encode_payload(envelope, max_frame_length)
    return prefix + payload


def decode_payload(payload: bytes | memoryview) -> bbrpc_pb2.Envelope:
    """Parse one frame payload, raising MalformedFrame if it is not protobuf."""
    envelope = bbrpc_pb2.Envelope()
    try:
        # upb parses any buffer; a memoryview saves copying a 4 MiB frame.
        envelope.ParseFromString(payload)  # type: ignore[arg-type]
    except DecodeError as e:
        raise MalformedFrame(f"frame is not a valid Envelope: {e}") from None
    return envelope


class FrameDecoder:
    """Turns bytes, split anywhere, into Envelopes, one frame at a time.

    ``add`` what arrived; ``next`` returns the next complete Envelope (or
    None), checking each frame's length against ``max_frame_length`` *as it
    is at that moment*: a connection raises the limit once the handshake is
    done, and the frame that follows the peer's Auth in the same read is
    judged by the new limit, not the old. Only undecoded bytes are held, as
    the chunks they came in, so a large frame is joined (copied) once, when
    it is complete; its length is checked as soon as its 4-byte prefix is
    in. After it has raised a FrameError it stays failed: the stream is out
    of sync.
    """

    def __init__(self, max_frame_length: int = MAX_FRAME_LENGTH) -> None:
        self.max_frame_length = max_frame_length
        self._chunks: list[bytes] = []
        # Where the undecoded bytes start in the first chunk.
        self._offset = 0
        self._buffered = 0
        self._failed: FrameError | None = None

    @property
    def buffered(self) -> int:
        """How many received bytes are not decoded yet."""
        return self._buffered

    def add(self, data: bytes) -> None:
        """Take received bytes (decoded by later calls to ``next``)."""
        if self._failed is not None:
            raise self._failed
        if data:
            self._chunks.append(data)
            self._buffered += len(data)

    def next(self) -> bbrpc_pb2.Envelope | None:
        """The next complete Envelope, or None until more bytes arrive."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._next()
        except FrameError as e:
            self._failed = e
            self._chunks, self._offset, self._buffered = [], 0, 0
            raise

    def feed(self, data: bytes) -> list[bbrpc_pb2.Envelope]:
        """``add`` then every complete Envelope, in order (tools and tests)."""
        self.add(data)
        envelopes = []
        while (envelope := self.next()) is not None:
            envelopes.append(envelope)
        return envelopes

    def _next(self) -> bbrpc_pb2.Envelope | None:
        if self._buffered < PREFIX_LENGTH:
            return None
        if len(self._chunks[0]) - self._offset < PREFIX_LENGTH:
            self._join()
        first = self._chunks[0]
        (length,) = LENGTH_PREFIX.unpack_from(first, self._offset)
        if length > self.max_frame_length:
            raise FrameTooLarge(length, self.max_frame_length)
        end = PREFIX_LENGTH + length
        if self._buffered < end:
            return None
        if len(first) - self._offset < end:
            self._join()
            first = self._chunks[0]
        start = self._offset + PREFIX_LENGTH
        payload = memoryview(first)[start : start + length]
        self._offset += end
        self._buffered -= end
        if self._offset == len(first):
            self._chunks.pop(0)
            self._offset = 0
        return decode_payload(payload)

    def _join(self) -> None:
        """One chunk of every undecoded byte (copies them once)."""
        joined = b"".join([self._chunks[0][self._offset :], *self._chunks[1:]])
        self._chunks, self._offset = [joined], 0
