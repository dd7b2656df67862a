"""A bbrpc peer on a plain blocking socket, frame by frame (tests only).

The hostile-daemon tests need to put exact bytes on the wire — a header
declaring a length, a frame padded to the byte, several requests in one
write — and to see exactly what comes back, including "the daemon closed
the connection". ``PeerConnection`` hides all of that, so this speaks the
protocol by hand with the pure functions of ``barterbackup.bbrpc``.

Every wait is bounded by the socket's timeout; a daemon that neither
answers nor closes makes the test fail with ``socket.timeout``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import time
from collections.abc import Callable

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc import handshake
from barterbackup.bbrpc.channel import (
    MAX_AUTHENTICATED_FRAME_LENGTH,
    MAX_HANDSHAKE_FRAME_LENGTH,
)
from barterbackup.bbrpc.framing import FrameDecoder, encode_frame
from barterbackup.keys.derive import NodeKeys
from barterbackup.protowire import length_delimited_head

PIECE_BYTES = 1024 * 1024
# A field number no Envelope uses: the parser keeps it as an unknown field,
# which lets a test pad a valid frame to an exact length.
PADDING_FIELD = 1000


class PeerClosed(Exception):
    """The other end closed (or reset) the connection."""


def padded(envelope: bbrpc_pb2.Envelope, length: int) -> bytes:
    """The payload of ``envelope`` grown to exactly ``length`` bytes with an
    unknown field (which the receiver parses and ignores)."""
    base = envelope.SerializeToString()
    for padding in range(length - len(base), 0, -1):
        head = length_delimited_head(PADDING_FIELD, padding)
        if len(head) + padding + len(base) == length:
            return base + head + b"\0" * padding
    raise ValueError(f"cannot pad a {len(base)}-byte envelope to {length}")


def frame_of(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


class RawPeer:
    """One connection to a bbrpc server, driven by hand.

    Requests we open use odd call ids (we are the client). ``serve`` answers
    the server's own calls (a ping, a ``Download`` it calls back during a
    push) while we wait for ours.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        source: str = "127.0.0.1",
        timeout: float = 10.0,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.decoder = FrameDecoder(MAX_HANDSHAKE_FRAME_LENGTH)
        self.next_call_id = 1
        self.blobs: dict[bytes, bytes] = {}
        self.served_downloads = 0

    def close(self) -> None:
        self.sock.close()

    # -- bytes ---------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, envelope: bbrpc_pb2.Envelope) -> None:
        self.sock.sendall(encode_frame(envelope, MAX_AUTHENTICATED_FRAME_LENGTH))

    def receive(self) -> bbrpc_pb2.Envelope:
        """The next frame; PeerClosed once the server closed."""
        while True:
            envelope = self.decoder.next()
            if envelope is not None:
                return envelope
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                raise PeerClosed("reset") from None
            if not data:
                raise PeerClosed("closed")
            self.decoder.add(data)

    def closed_by_peer(self) -> bool:
        """Read until the server closes: True once it has; False if a frame
        comes first. Times out (the test fails) if it does neither."""
        try:
            self.receive()
        except PeerClosed:
            return True
        return False

    def drain_until_closed(self) -> int:
        """Read and discard until the server closes; how many frames came."""
        frames = 0
        try:
            while True:
                self.receive()
                frames += 1
        except PeerClosed:
            return frames

    # -- handshake -------------------------------------------------------------

    def receive_hello(self) -> bbrpc_pb2.Hello:
        envelope = self.receive()
        if envelope.WhichOneof("body") != "hello":
            raise AssertionError(f"expected the server's Hello, got {envelope}")
        return envelope.hello

    def handshake(
        self,
        keys: NodeKeys,
        server_address: str,
        *,
        hello_length: int = 0,
        before_body: Callable[[], object] = lambda: None,
        after_auth: bytes = b"",
        server_hello: bbrpc_pb2.Hello | None = None,
        clock_offset: float = 0.0,
    ) -> None:
        """Authenticate as ``keys`` to ``server_address``.

        ``hello_length`` pads our Hello frame's payload to that many bytes
        (sent as its header first, then — after ``before_body`` ran — its
        body). ``after_auth`` is written
        in the same ``send`` as our Auth (finding 12 of issue 13: a large
        frame right behind the Auth). ``server_hello``: the server's Hello,
        if it was read already. ``clock_offset`` moves our Hello's
        timestamp from now.
        """
        if server_hello is None:
            server_hello = self.receive_hello()
        hello = handshake.new_hello(
            keys, os.urandom(32), time.time() + clock_offset, server_address
        )
        envelope = bbrpc_pb2.Envelope(call_id=0, hello=hello)
        payload = (
            padded(envelope, hello_length)
            if hello_length
            else envelope.SerializeToString()
        )
        frame = frame_of(payload)
        # The header alone first: the server must wait for the body.
        self.send_bytes(frame[:4])
        before_body()
        self.send_bytes(frame[4:])
        server_auth = self.receive()
        if server_auth.WhichOneof("body") != "auth":
            raise AssertionError(f"expected the server's Auth, got {server_auth}")
        client_bytes = handshake.hello_bytes(hello)
        server_bytes = handshake.hello_bytes(server_hello)
        handshake.verify_auth(
            server_auth.auth,
            bytes(server_hello.onion_pubkey),
            handshake.Role.SERVER,
            client_bytes,
            server_bytes,
        )
        auth = handshake.sign_transcript(
            keys, handshake.Role.CLIENT, client_bytes, server_bytes
        )
        self.send_bytes(
            encode_frame(bbrpc_pb2.Envelope(call_id=0, auth=auth)) + after_auth
        )
        self.decoder.max_frame_length = MAX_AUTHENTICATED_FRAME_LENGTH

    # -- calls -----------------------------------------------------------------

    def new_call_id(self) -> int:
        call_id = self.next_call_id
        self.next_call_id += 2
        return call_id

    def request(self, field: str, message: object) -> tuple[int, bytes]:
        """(call id, frame) of a new request, not sent yet."""
        call_id = self.new_call_id()
        envelope = bbrpc_pb2.Envelope(call_id=call_id)
        getattr(envelope, field).CopyFrom(message)
        return call_id, encode_frame(envelope)

    def answers(self, call_ids: set[int]) -> dict[int, list[bbrpc_pb2.Envelope]]:
        """Every frame of our calls ``call_ids`` until each has ended,
        serving the server's calls meanwhile."""
        got: dict[int, list[bbrpc_pb2.Envelope]] = {i: [] for i in call_ids}
        open_calls = set(call_ids)
        while open_calls:
            envelope = self.receive()
            if envelope.call_id % 2 == 0:
                self.serve(envelope)
                continue
            if envelope.call_id not in got:
                raise AssertionError(f"a frame of a call we did not open: {envelope}")
            got[envelope.call_id].append(envelope)
            if envelope.end:
                open_calls.discard(envelope.call_id)
        return got

    def call(self, field: str, message: object) -> list[bbrpc_pb2.Envelope]:
        """Open a call and return every frame of its answer."""
        call_id, frame = self.request(field, message)
        self.send_bytes(frame)
        return self.answers({call_id})[call_id]

    def ping(self, payload: bytes) -> bytes:
        answer = self.call("ping", bbrpc_pb2.Ping(payload=payload))
        [pong] = answer
        if pong.WhichOneof("body") != "pong":
            raise AssertionError(f"expected a pong, got {pong}")
        return bytes(pong.pong.payload)

    def serve(self, envelope: bbrpc_pb2.Envelope) -> None:
        """Answer one frame of a call the server opened."""
        kind = envelope.WhichOneof("body")
        call_id = envelope.call_id
        if kind == "ping":
            self.send(bbrpc_pb2.Envelope(call_id=call_id, end=True, pong=envelope.ping))
        elif kind == "download_request":
            self._serve_download(call_id, envelope.download_request)
        elif kind == "cancel":
            pass
        else:
            self.send(
                bbrpc_pb2.Envelope(
                    call_id=call_id,
                    end=True,
                    error=bbrpc_pb2.Error(
                        code=bbrpc_pb2.ERROR_CODE_UNIMPLEMENTED,
                        message=f"{kind} is not served by this test peer",
                    ),
                )
            )

    def _serve_download(self, call_id: int, request: bbrpc_pb2.DownloadRequest) -> None:
        self.served_downloads += 1
        for blob in dict.fromkeys(bytes(b) for b in request.blobs):
            data = self.blobs[blob]
            for offset in range(0, len(data), PIECE_BYTES):
                piece = data[offset : offset + PIECE_BYTES]
                whole = len(piece) == len(data)
                self.send(
                    bbrpc_pb2.Envelope(
                        call_id=call_id,
                        download_response=bbrpc_pb2.DownloadResponse(
                            blob=blob,
                            offset=offset,
                            data=piece,
                            sha256=blob if whole else hashlib.sha256(piece).digest(),
                            blob_length=len(data),
                        ),
                    )
                )
        self.send(bbrpc_pb2.Envelope(call_id=call_id, end=True))


def error_code(answer: list[bbrpc_pb2.Envelope]) -> int:
    """The Error code ending a call's answer (0 when it ended otherwise)."""
    last = answer[-1]
    return last.error.code if last.WhichOneof("body") == "error" else 0
