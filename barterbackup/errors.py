"""Errors the node API raises, each naming the gRPC status the CLI sees.

``status`` is the name of a ``grpc.StatusCode``; the servicer (the only
layer that knows gRPC) maps it, and anything that is not a NodeError becomes
INTERNAL with a generic message (and a log line), so internals never leak to
the caller. Messages here are shown to users: they must say what to do and
never carry a secret.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base class: an error with a message fit to show the user."""

    status = "INTERNAL"


class NodeLocked(NodeError):
    status = "FAILED_PRECONDITION"

    def __init__(self) -> None:
        super().__init__("node is locked: run `barterbackup unlock` first")


class InvalidArgument(NodeError):
    status = "INVALID_ARGUMENT"


class NotFound(NodeError):
    status = "NOT_FOUND"


class FailedPrecondition(NodeError):
    status = "FAILED_PRECONDITION"


class PermissionDenied(NodeError):
    status = "PERMISSION_DENIED"


class Unavailable(NodeError):
    status = "UNAVAILABLE"


class Busy(NodeError):
    status = "ABORTED"


class ResourceExhausted(NodeError):
    status = "RESOURCE_EXHAUSTED"


class DataLoss(NodeError):
    status = "DATA_LOSS"
