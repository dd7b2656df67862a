"""The bbrpc calls: which Envelope field starts each, which answers it, and
which handler method serves it.

This one table drives the caller's type checks, the server's dispatch and
the default answers: a handler serves a call by having the method the table
names; a handler without it answers ERROR_CODE_UNIMPLEMENTED. Adding a call
is one row here plus one handler method.

Handler methods take ``(conn, request)`` for a unary call and return the
response (or a Deferred of it); a server-streaming call's method takes
``(conn, request, send)``, sends items with ``send`` (whose Deferred is the
flow control: it fires once the item is written) and ends the stream by
returning (or its Deferred firing). A client-streaming call's method takes
``(conn, request, stream)``: ``stream.send`` as above, ``stream.receive``
for the caller's further items (see inbound.IncomingStream). Raising ``PeerCallError``
answers with that code and message; any other exception answers
ERROR_CODE_INTERNAL with a generic message and is logged locally.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from twisted.internet.defer import Deferred

from barterbackup._proto import bbrpc_pb2

T = TypeVar("T")

# send(item) writes one stream item and returns a Deferred that fires once
# the connection can take more (flow control); it fails with CallCancelled
# once the call is cancelled or the connection is gone.
StreamSender = Callable[[T], "Deferred[None]"]


@dataclass(frozen=True)
class CallSpec:
    """One bbrpc call as carried by Envelope fields."""

    # request_field is the Envelope field that opens the call.
    request_field: str
    # response_field is the Envelope field of each answer.
    response_field: str
    # streaming is True when the server answers with zero or more items.
    streaming: bool
    # handler_method names the handler method serving the call.
    handler_method: str
    # client_streaming is True when the caller sends more than one message
    # (Chat): the call is a stream both ways.
    client_streaming: bool = False


CALLS: dict[str, CallSpec] = {
    spec.request_field: spec
    for spec in (
        CallSpec(
            "peer_exchange_request", "peer_exchange_response", False, "peer_exchange"
        ),
        CallSpec(
            "get_content_revision_request",
            "get_content_revision_response",
            False,
            "get_content_revision",
        ),
        CallSpec(
            "set_content_revision_request",
            "set_content_revision_response",
            True,
            "set_content_revision",
        ),
        CallSpec("download_request", "download_response", True, "download"),
        CallSpec(
            "encrypted_download_request",
            "encrypted_download_response",
            True,
            "encrypted_download",
        ),
        CallSpec("chat_request", "chat_request", True, "chat", client_streaming=True),
        CallSpec(
            "encrypted_chat_request",
            "encrypted_chat_request",
            True,
            "encrypted_chat",
            client_streaming=True,
        ),
        CallSpec(
            "propose_contract_request",
            "propose_contract_response",
            False,
            "propose_contract",
        ),
        CallSpec(
            "answer_contract_request",
            "answer_contract_response",
            False,
            "answer_contract",
        ),
        CallSpec(
            "end_contract_request", "end_contract_response", False, "end_contract"
        ),
        CallSpec("spot_check_request", "spot_check_response", False, "spot_check"),
        CallSpec(
            "replica_lost_request", "replica_lost_response", False, "replica_lost"
        ),
    )
}


def handler_for(handler: object, spec: CallSpec) -> Callable[..., Any] | None:
    """The method of ``handler`` serving ``spec``, or None if it has none."""
    method = getattr(handler, spec.handler_method, None)
    return method if callable(method) else None


def message_class(envelope_field: str) -> Any:
    """The protobuf class carried in ``envelope_field`` of an Envelope."""
    message_type = bbrpc_pb2.Envelope.DESCRIPTOR.fields_by_name[
        envelope_field
    ].message_type
    if message_type is None:
        raise ValueError(f"Envelope field {envelope_field} is not a message")
    return getattr(bbrpc_pb2, message_type.name)


def check_message(envelope_field: str, message: Message) -> None:
    """Raise TypeError unless ``message`` fits ``envelope_field``."""
    expected = message_class(envelope_field)
    if not isinstance(message, expected):
        raise TypeError(
            f"{envelope_field} carries {expected.__name__}, "
            f"not {type(message).__name__}"
        )
