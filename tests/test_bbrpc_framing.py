"""bbrpc framing: round trips, arbitrary splits, truncation, hostile lengths."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.framing import (
    MAX_FRAME_LENGTH,
    PREFIX_LENGTH,
    DownloadPiece,
    FrameDecoder,
    FrameTooLarge,
    MalformedFrame,
    SealedPiece,
    accepts_download_pieces,
    accepts_sealed_pieces,
    encode_body_frame,
    encode_download_piece_frame,
    encode_frame,
    encode_sealed_piece_frame,
)

envelopes = st.one_of(
    st.builds(
        lambda call_id, end, payload: bbrpc_pb2.Envelope(
            call_id=call_id, end=end, ping=bbrpc_pb2.Ping(payload=payload)
        ),
        st.integers(0, 2**64 - 1),
        st.booleans(),
        st.binary(max_size=300),
    ),
    st.builds(
        lambda call_id, data: bbrpc_pb2.Envelope(
            call_id=call_id, download_response=bbrpc_pb2.DownloadResponse(data=data)
        ),
        st.integers(1, 1000),
        st.binary(max_size=2000),
    ),
    st.builds(
        lambda code, text: bbrpc_pb2.Envelope(
            call_id=3, end=True, error=bbrpc_pb2.Error(code=code, message=text)
        ),
        st.sampled_from(list(bbrpc_pb2.ErrorCode.values())),
        st.text(max_size=50),
    ),
)


class FramingTests(SynchronousTestCase):
    @given(st.lists(envelopes, max_size=8))
    def test_round_trip(self, sent: list[bbrpc_pb2.Envelope]) -> None:
        stream = b"".join(encode_frame(e) for e in sent)
        self.assertEqual(FrameDecoder().feed(stream), sent)

    @given(st.lists(envelopes, min_size=1, max_size=4), st.data())
    def test_any_split_points(
        self, sent: list[bbrpc_pb2.Envelope], data: st.DataObject
    ) -> None:
        stream = b"".join(encode_frame(e) for e in sent)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        decoder = FrameDecoder()
        received = []
        start = 0
        for cut in [*cuts, len(stream)]:
            received.extend(decoder.feed(stream[start:cut]))
            start = cut
        self.assertEqual(received, sent)
        self.assertEqual(decoder.buffered, 0)

    @given(envelopes)
    def test_byte_by_byte_and_every_truncation(
        self, envelope: bbrpc_pb2.Envelope
    ) -> None:
        frame = encode_frame(envelope)
        decoder = FrameDecoder()
        for i, byte in enumerate(frame):
            got = decoder.feed(bytes([byte]))
            # Nothing comes out of a truncated frame; exactly one at the end.
            self.assertEqual(got, [envelope] if i == len(frame) - 1 else [])

    @given(st.integers(MAX_FRAME_LENGTH + 1, 2**32 - 1))
    def test_oversized_length_rejected_from_prefix_alone(self, length: int) -> None:
        decoder = FrameDecoder()
        with self.assertRaises(FrameTooLarge):
            decoder.feed(length.to_bytes(PREFIX_LENGTH, "big"))
        self.assertEqual(decoder.buffered, 0)
        # The stream is out of sync for good.
        with self.assertRaises(FrameTooLarge):
            decoder.feed(encode_frame(bbrpc_pb2.Envelope(call_id=1)))

    def test_configured_maximum(self) -> None:
        envelope = bbrpc_pb2.Envelope(ping=bbrpc_pb2.Ping(payload=b"x" * 100))
        frame = encode_frame(envelope)
        self.assertEqual(
            FrameDecoder(len(frame) - PREFIX_LENGTH).feed(frame), [envelope]
        )
        with self.assertRaises(FrameTooLarge):
            FrameDecoder(len(frame) - PREFIX_LENGTH - 1).feed(frame)
        with self.assertRaises(FrameTooLarge):
            encode_frame(envelope, max_frame_length=10)

    @settings(max_examples=300)
    @given(st.binary(min_size=1, max_size=200))
    def test_garbage_payload_is_malformed_or_decodes(self, garbage: bytes) -> None:
        frame = len(garbage).to_bytes(PREFIX_LENGTH, "big") + garbage
        try:
            FrameDecoder().feed(frame)
        except MalformedFrame:
            pass  # The only error garbage may cause.

    def test_undecodable_payload(self) -> None:
        # Field 1 with wire type 7 does not exist in protobuf.
        garbage = b"\x0f\xff\xff"
        with self.assertRaises(MalformedFrame):
            FrameDecoder().feed(len(garbage).to_bytes(4, "big") + garbage)


class BodyFrameTests(SynchronousTestCase):
    @given(
        st.integers(0, 2**64 - 1),
        st.booleans(),
        st.binary(max_size=40),
        st.binary(max_size=3000),
    )
    def test_same_envelope_as_normal_encoding(
        self, call_id: int, end: bool, blob: bytes, data: bytes
    ) -> None:
        body = bbrpc_pb2.DownloadResponse(blob=blob, data=data)
        frame = b"".join(encode_body_frame(call_id, end, "download_response", body))
        expected = bbrpc_pb2.Envelope(call_id=call_id, end=end, download_response=body)
        self.assertEqual(FrameDecoder().feed(frame), [expected])
        self.assertEqual(len(frame), len(encode_frame(expected)))

    def test_maximum_enforced(self) -> None:
        body = bbrpc_pb2.DownloadResponse(data=b"x" * 100)
        with self.assertRaises(FrameTooLarge):
            encode_body_frame(1, False, "download_response", body, max_frame_length=100)


uint64s = st.integers(0, 2**64 - 1)


class DownloadPieceFrameTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(
        uint64s,
        st.binary(max_size=40),
        uint64s,
        st.binary(max_size=3000),
        st.binary(max_size=40),
        uint64s,
        st.booleans(),
    )
    def test_equals_serialize_to_string_byte_for_byte(
        self,
        call_id: int,
        blob: bytes,
        offset: int,
        data: bytes,
        sha256: bytes,
        blob_length: int,
        as_view: bool,
    ) -> None:
        piece = DownloadPiece(
            blob=blob,
            offset=offset,
            # A view into a larger buffer, as send_blobs cuts pieces.
            data=memoryview(b"<" + data + b">")[1:-1] if as_view else data,
            sha256=sha256,
            blob_length=blob_length,
        )
        envelope = bbrpc_pb2.Envelope(
            call_id=call_id,
            download_response=bbrpc_pb2.DownloadResponse(
                blob=blob,
                offset=offset,
                data=data,
                sha256=sha256,
                blob_length=blob_length,
            ),
        )
        frame = encode_download_piece_frame(call_id, piece)
        self.assertIsInstance(frame, bytes)
        self.assertEqual(frame, encode_frame(envelope))
        self.assertEqual(piece.to_message(), envelope.download_response)

    def test_large_piece(self) -> None:
        data = bytes(range(256)) * 4096
        piece = DownloadPiece(b"b" * 32, 4 * 2**20, data, b"h" * 32, 2**40)
        envelope = bbrpc_pb2.Envelope(
            call_id=2**33, download_response=piece.to_message()
        )
        self.assertEqual(
            encode_download_piece_frame(2**33, piece), encode_frame(envelope)
        )

    def test_maximum_enforced(self) -> None:
        piece = DownloadPiece(b"", 0, b"x" * 100, b"", 100)
        with self.assertRaises(FrameTooLarge):
            encode_download_piece_frame(1, piece, max_frame_length=100)

    def test_out_of_range_fields_rejected(self) -> None:
        with self.assertRaises(ValueError):
            DownloadPiece(b"", -1, b"", b"", 0)
        with self.assertRaises(ValueError):
            DownloadPiece(b"", 2**64, b"", b"", 0)
        with self.assertRaises(ValueError):
            DownloadPiece(b"", 0, b"", b"", 2**64)
        with self.assertRaises(ValueError):
            encode_download_piece_frame(2**64, DownloadPiece(b"", 0, b"", b"", 0))
        with self.assertRaises(ValueError):
            DownloadPiece(b"", 0, memoryview(b"abcd")[::2], b"", 0)

    def test_only_marked_senders_accept_pieces(self) -> None:
        def plain_sender(item: object) -> None:
            return None

        self.assertFalse(accepts_download_pieces(plain_sender))
        self.assertFalse(accepts_download_pieces(None))


def _filler(data: bytes) -> SealedPiece:
    def seal_into(out: memoryview) -> None:
        out[:] = data

    return SealedPiece(len(data), seal_into)


class SealedPieceFrameTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(uint64s, st.binary(max_size=3000), st.binary(max_size=40))
    def test_equals_serialize_to_string_byte_for_byte(
        self, call_id: int, sealed: bytes, nonce: bytes
    ) -> None:
        piece = SealedPiece(len(sealed), _filler(sealed).seal_into, nonce)
        envelope = bbrpc_pb2.Envelope(
            call_id=call_id,
            encrypted_download_response=bbrpc_pb2.EncryptedDownloadResponse(
                sealed=sealed, session_nonce=nonce
            ),
        )
        frame = encode_sealed_piece_frame(call_id, piece)
        self.assertIsInstance(frame, bytes)
        self.assertEqual(frame, encode_frame(envelope))

    def test_the_sealer_writes_into_exactly_its_slot(self) -> None:
        seen: list[int] = []

        def seal_into(out: memoryview) -> None:
            seen.append(len(out))
            out[:] = b"s" * len(out)

        frame = encode_sealed_piece_frame(
            5, SealedPiece(2**20 + 28, seal_into, b"n" * 32)
        )
        self.assertEqual(seen, [2**20 + 28])
        [envelope] = FrameDecoder(MAX_FRAME_LENGTH).feed(frame)
        response = envelope.encrypted_download_response
        self.assertEqual(response.sealed, b"s" * (2**20 + 28))
        self.assertEqual(response.session_nonce, b"n" * 32)

    def test_maximum_enforced(self) -> None:
        with self.assertRaises(FrameTooLarge):
            encode_sealed_piece_frame(1, _filler(b"x" * 100), max_frame_length=100)
        with self.assertRaises(ValueError):
            SealedPiece(-1, _filler(b"").seal_into)

    def test_only_marked_senders_accept_sealed_pieces(self) -> None:
        def plain_sender(item: object) -> None:
            return None

        self.assertFalse(accepts_sealed_pieces(plain_sender))
