"""The few pieces of the protobuf wire encoding we write by hand.

Some frames and records are assembled from parts (a large payload written
once, straight from its buffer, instead of being copied into a protobuf
message first). Protobuf defines a message field as its tag, a varint
length and the bytes, so such a frame is byte for byte what the library
would make; tests compare them.
"""

from __future__ import annotations

VARINT = 0
LENGTH_DELIMITED = 2
UINT64_LIMIT = 1 << 64


def varint(value: int) -> bytes:
    """The base-128 varint encoding of a non-negative integer below 2**64."""
    if not 0 <= value < UINT64_LIMIT:
        raise ValueError(f"{value} is not a uint64")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """A field's key: its number and wire type."""
    return varint(number << 3 | wire_type)


def length_delimited_head(number: int, length: int) -> bytes:
    """What precedes ``length`` bytes of a bytes or message field."""
    return tag(number, LENGTH_DELIMITED) + varint(length)
