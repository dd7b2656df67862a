"""The clirpc gRPC server on a Unix socket, as a Twisted service.

The socket lives in a 0700 directory of the node directory: only the user
who owns the node can reach it, and it is never a TCP port.
"""

from __future__ import annotations

import os
import socket
import stat
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from barterbackup import paths
from barterbackup._proto import clirpc_pb2_grpc
from barterbackup.logs import get_logger
from barterbackup.node.facade import Node
from barterbackup.rpc.client import GRPC_OPTIONS
from barterbackup.rpc.servicer import CliRpcServicer
from barterbackup.store.atomic import make_private_directory

log = get_logger("barterbackup.rpc")

WORKER_THREADS = 8
# A Unix socket path is limited to 107 bytes by sockaddr_un.
MAX_SOCKET_PATH = 107


class SocketPathError(ValueError):
    pass


def prepare_socket_directory(directory: Path, owned: bool) -> Path:
    """Make sure only this user can reach the socket in ``directory``.

    A directory that does not exist is created 0700. The node directory's
    own socket directory (``owned``) is set back to 0700 if it drifted. Any
    other existing directory is never changed: it must already be owned by
    this user and closed to everyone else, or the daemon refuses it (a
    ``--socket /tmp/x.sock`` must not chmod /tmp).
    """
    # Checked and created as one lexical path: "new/../open" does not
    # exist (no "new"), yet creating it made "new" and then chmodded the
    # existing "open" (``--socket /tmp/none/../x.sock`` closed /tmp).
    directory = Path(os.path.normpath(directory))
    try:
        if not directory.exists() or owned:
            return make_private_directory(directory)
        info = directory.stat()
    except OSError as e:
        # A file where a directory must be, a parent we may not enter, a
        # name too long.
        raise SocketPathError(
            f"cannot use {directory} for the socket: {e.strerror}"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise SocketPathError(f"{directory} is not a directory")
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SocketPathError(
            f"{directory} is open to other users (or not yours): put the socket "
            "in a directory only you can enter (mode 0700), or leave --socket "
            "unset to use NODE_DIR/rpc/"
        )
    return directory


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise SocketPathError(
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
            "choose a shorter --socket or node directory"
        )


def _socket_in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class CliRpcServer(Service):
    """Serves clirpc for one node; start/stop with the daemon."""

    def __init__(self, reactor: Any, node: Node, socket_path: Path) -> None:
        # The socket's directory is ours to create and to keep at 0700 only
        # when it is the node directory's own (NODE/rpc).
        self._reactor = reactor
        self._node = node
        # The socket goes where its directory was checked (see
        # prepare_socket_directory: one lexical path, ".." resolved).
        self.socket_path = Path(os.path.normpath(socket_path))
        self._server: grpc.Server | None = None

    def startService(self) -> None:
        check_socket_path(self.socket_path)
        prepare_socket_directory(self.socket_path.parent, owned=self._owns_directory())
        if self.socket_path.exists():
            if _socket_in_use(self.socket_path):
                raise SocketPathError(
                    f"{self.socket_path} is in use: is another barterbackup "
                    "daemon running on this node directory?"
                )
            self.socket_path.unlink()  # left by a daemon that was killed
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=WORKER_THREADS, thread_name_prefix="clirpc"
            ),
            options=GRPC_OPTIONS,
            maximum_concurrent_rpcs=64,
        )
        clirpc_pb2_grpc.add_CliRpcServicer_to_server(
            CliRpcServicer(self._reactor, self._node), server
        )
        server.add_insecure_port(f"unix:{self.socket_path}")
        server.start()
        os.chmod(self.socket_path, 0o600)
        self._server = server
        super().startService()
        log.info("CLI API listening on {path}", path=str(self.socket_path))

    def _owns_directory(self) -> bool:
        own = paths.default_socket_path(self._node.node_dir).parent
        return self.socket_path.parent.resolve() == own.resolve()

    def stopService(self) -> Deferred | None:
        super().stopService()
        server, self._server = self._server, None
        if server is None:
            return None
        stopped = server.stop(grace=2)
        return deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), stopped.wait, 5
        )
