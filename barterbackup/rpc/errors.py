"""Turning exceptions into gRPC statuses with messages fit for users."""

from __future__ import annotations

import grpc

from barterbackup import errors, revisions
from barterbackup.logs import get_logger
from barterbackup.store import replicas, sealed

log = get_logger("barterbackup.rpc")

# Messages often quote the request (a file name, an address). gRPC sends
# the message in a trailer the client refuses past 16 KiB, and the caller
# then sees RESOURCE_EXHAUSTED instead of the status we chose. 1000
# characters stay under that even percent-encoded (12 bytes for a 4-byte
# UTF-8 character).
MAX_MESSAGE_CHARACTERS = 1000


def _content_errors() -> dict[type[BaseException], grpc.StatusCode]:
    # Imported here: the content engine is heavy, and only these errors of it
    # are needed.
    from barterbackup.content import engine

    return {
        engine.InvalidFileName: grpc.StatusCode.INVALID_ARGUMENT,
        engine.FileNotInSet: grpc.StatusCode.NOT_FOUND,
        engine.CorruptContent: grpc.StatusCode.DATA_LOSS,
        engine.UpdateInProgress: grpc.StatusCode.ABORTED,
        # Records on disk that fail authentication or do not parse: the
        # message names the file; the daemon refuses to go on with them.
        sealed.SealedRecordError: grpc.StatusCode.DATA_LOSS,
        replicas.ReplicaRecordError: grpc.StatusCode.DATA_LOSS,
        revisions.InvalidRevision: grpc.StatusCode.DATA_LOSS,
    }


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and user-facing message for an exception."""
    if isinstance(error, errors.NodeError):
        return getattr(grpc.StatusCode, error.status), _bounded(str(error))
    for kind, code in _content_errors().items():
        if isinstance(error, kind):
            return code, _bounded(str(error))
    log.failure(
        "internal error serving the CLI",
        failure=None,
        error_type=type(error).__name__,
    )
    log.error("internal error: {error!r}", error=error)
    return grpc.StatusCode.INTERNAL, "internal error in the node; see the daemon log"


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARACTERS:
        return message
    return message[: MAX_MESSAGE_CHARACTERS - 1] + "…"
