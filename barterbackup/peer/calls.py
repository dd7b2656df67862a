"""The bbrpc calls: which Envelope field starts each, which answers it.

One table drives both the caller's type checks and the server's dispatch,
so adding a call means adding one row here and one handler method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from barterbackup._proto import bbrpc_pb2


@dataclass(frozen=True)
class CallSpec:
    """One bbrpc call as carried by Envelope fields."""

    # request_field is the Envelope field that opens the call.
    request_field: str
    # response_field is the Envelope field of each answer.
    response_field: str
    # streaming is True when the server answers with zero or more items.
    streaming: bool
    # handler_method names the PeerRequestHandler method serving the call,
    # or None while this node does not serve it (ERROR_CODE_UNIMPLEMENTED).
    handler_method: str | None


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
            "encrypted_download_request", "encrypted_download_response", True, None
        ),
        # Chat is bidirectional and comes in a later issue; until then a node
        # answers it with ERROR_CODE_UNIMPLEMENTED and cannot open it.
        CallSpec("chat_request", "chat_request", True, None),
        CallSpec("encrypted_chat_request", "encrypted_chat_request", True, None),
    )
}

# Calls this node can open towards a peer (Chat needs client streaming).
CALLABLE = frozenset(
    name for name, spec in CALLS.items() if spec.response_field != name
)


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
