"""What a spot check costs on the wire, counted as bbrpc sends it.

Each message travels as a frame: a 4-byte length, then an Envelope holding
the call id, the end flag and the message in its oneof field. The Envelope
fields for the check messages are not assigned yet, so their overhead is
estimated at its worst: call id (tag + 10-byte varint), end flag (2), the
oneof field's tag (2 bytes for field numbers from 16) and length (3 bytes
for bodies under 2 MiB).
"""

from __future__ import annotations

from google.protobuf.message import Message

FRAME_HEADER_BYTES = 4
ENVELOPE_OVERHEAD_BYTES = 11 + 2 + 2 + 3


def framed_size(body: Message) -> int:
    """Bytes on the wire for one message, frame and envelope included."""
    return FRAME_HEADER_BYTES + ENVELOPE_OVERHEAD_BYTES + body.ByteSize()
