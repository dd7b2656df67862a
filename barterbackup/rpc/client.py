"""Connecting the CLI to its daemon, with errors a user can act on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import grpc

from barterbackup._proto import clirpc_pb2_grpc
from barterbackup.rpc.server import GRPC_OPTIONS


class DaemonUnreachable(Exception):
    """The daemon's socket is missing, refused or not accessible."""


def check_reachable(socket_path: Path) -> None:
    """Raise DaemonUnreachable with a precise reason, or return."""
    path = Path(socket_path)
    if not path.parent.exists():
        raise DaemonUnreachable(
            f"no daemon socket at {path}: is the daemon running? Start it "
            f"with `twistd -n barterbackup --node-dir {path.parent.parent}`"
        )
    if not os.access(path.parent, os.X_OK):
        raise DaemonUnreachable(
            f"cannot access {path.parent}: it belongs to another user "
            "(the CLI must run as the daemon's user)"
        )
    if not path.exists():
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


def connect(socket_path: Path) -> tuple[grpc.Channel, clirpc_pb2_grpc.CliRpcStub]:
    check_reachable(socket_path)
    channel = grpc.insecure_channel(f"unix:{socket_path}", options=GRPC_OPTIONS)
    return channel, clirpc_pb2_grpc.CliRpcStub(channel)
