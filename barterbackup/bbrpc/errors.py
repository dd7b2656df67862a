"""Exceptions a bbrpc call or connection ends with."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from barterbackup._proto import bbrpc_pb2
from barterbackup.untrusted import printable

if TYPE_CHECKING:
    ErrorCode: TypeAlias = bbrpc_pb2.ErrorCode.ValueType
else:
    ErrorCode = int


class PeerCallError(Exception):
    """A call ended with an Error frame (or a handler wants to send one).

    A handler raises it to answer with that code and message; a caller's
    Deferred fails with it when the peer answered with an Error. The message
    travels to the peer, so it must never hold a secret.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{bbrpc_pb2.ErrorCode.Name(code)}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_error(cls, error: bbrpc_pb2.Error) -> PeerCallError:
        code = error.code
        if code not in bbrpc_pb2.ErrorCode.values():
            # An enum value from a newer peer we do not know.
            code = bbrpc_pb2.ERROR_CODE_UNSPECIFIED
        # The peer's text is untrusted: bounded and escaped before it can
        # reach a log line or a terminal.
        return cls(code, printable(error.message, 500))


class CallCancelled(Exception):
    """The call was cancelled: by the peer, by us, or by the connection ending.

    A stream handler's ``send`` Deferred fails with it so the handler stops.
    """


class PeerConnectionLost(Exception):
    """The connection closed before the call ended."""


class PeerProtocolError(Exception):
    """The peer broke the wire protocol; the connection is dropped."""
