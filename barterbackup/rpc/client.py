"""Connecting the CLI to its daemon, with errors a user can act on.

The CLI imports this module, ``paths`` and ``_proto`` only: nothing of the
daemon, so ``barterbackup status`` starts fast and the layers stay apart.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import grpc

from barterbackup._proto import clirpc_pb2_grpc

# Explicit limits: SetFile/GetFile carry ≤ 1 MiB chunks, everything else is
# small, so 8 MiB leaves room without letting one message eat memory.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class DaemonUnreachable(Exception):
    """The daemon's socket is missing, refused or not accessible."""


def check_reachable(socket_path: Path) -> None:
    """Raise DaemonUnreachable with a precise reason, or return."""
    path = Path(socket_path)
    if not _exists(path.parent):
        raise DaemonUnreachable(
            f"no daemon socket at {path}: is the daemon running? Start it "
            f"with `twistd -n barterbackup --node-dir {path.parent.parent}`"
        )
    if not os.access(path.parent, os.X_OK):
        raise DaemonUnreachable(
            f"cannot access {path.parent}: it belongs to another user "
            "(the CLI must run as the daemon's user)"
        )
    if not _exists(path):
        raise DaemonUnreachable(
            f"no daemon socket at {path}: is the daemon running? Start it "
            f"with `twistd -n barterbackup --node-dir {path.parent.parent}`"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except PermissionError:
        raise DaemonUnreachable(
            f"permission denied on {path}: run the CLI as the daemon's user"
        ) from None
    except OSError:
        raise DaemonUnreachable(
            f"the daemon socket {path} refuses connections: the daemon is "
            "not running (a stale socket from a stopped daemon)"
        ) from None
    finally:
        probe.close()


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as e:  # a name too long, a parent we may not search
        raise DaemonUnreachable(
            f"cannot use the socket path {path}: {e.strerror}"
        ) from None


def connect(socket_path: Path) -> tuple[grpc.Channel, clirpc_pb2_grpc.CliRpcStub]:
    check_reachable(socket_path)
    channel = grpc.insecure_channel(f"unix:{socket_path}", options=GRPC_OPTIONS)
    return channel, clirpc_pb2_grpc.CliRpcStub(channel)
