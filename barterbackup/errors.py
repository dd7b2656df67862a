"""Errors the node API raises, each with the gRPC status the CLI sees.

The servicer maps these to status codes; anything else becomes INTERNAL with
a generic message (and a log line), so internals never leak to the caller.
Messages here are shown to users: they must say what to do and never carry a
secret.
"""

from __future__ import annotations

import grpc


class NodeError(Exception):
    """Base class: an error with a message fit to show the user."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class NodeLocked(NodeError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self) -> None:
        super().__init__("node is locked: run `barterbackup unlock` first")


class NotBuiltYet(NodeError):
    """A method whose subsystem this version of the node does not have."""

    code = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, method: str, subsystem: str) -> None:
        super().__init__(
            f"{method} is not available in this version of barterbackup: "
            f"the {subsystem} subsystem is not built yet"
        )


class InvalidArgument(NodeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(NodeError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(NodeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(NodeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(NodeError):
    code = grpc.StatusCode.UNAVAILABLE


class Busy(NodeError):
    code = grpc.StatusCode.ABORTED


class ResourceExhausted(NodeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(NodeError):
    code = grpc.StatusCode.DATA_LOSS
