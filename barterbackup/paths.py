"""The node directory's layout: every path the daemon and the CLI agree on.

The CLI imports this module (and no daemon code) to find the daemon's
socket, so it holds names only: no I/O beyond reading the environment.

    NODE_DIR/
      identity            the onion address this directory belongs to
      daemon.lock         flock held while a daemon runs here
      metadata.sealed     the node's sealed Metadata
      content/            our own content (packs, revisions)
      replicas/           peers' content we store
      contracts/          one sealed file per storage contract
      chat-outbox.sealed  chat messages waiting for peers that are offline
      tor/                the tor we launch (its DataDirectory)
      rpc/clirpc.sock     the CLI socket (directory mode 0700)
"""

from __future__ import annotations

import os
from pathlib import Path

NODE_DIR_ENVIRONMENT_VARIABLE = "BARTERBACKUP_NODE_DIR"
IDENTITY_FILENAME = "identity"
LOCK_FILENAME = "daemon.lock"
METADATA_FILENAME = "metadata.sealed"
CONTENT_DIRNAME = "content"
REPLICAS_DIRNAME = "replicas"
CONTRACTS_DIRNAME = "contracts"
TOR_DIRNAME = "tor"
RPC_DIRNAME = "rpc"
SOCKET_NAME = "clirpc.sock"
CHAT_OUTBOX_FILENAME = "chat-outbox.sealed"


def default_node_dir() -> Path:
    """``$BARTERBACKUP_NODE_DIR``, else ``~/.barterbackup``."""
    env = os.environ.get(NODE_DIR_ENVIRONMENT_VARIABLE)
    if env:
        return Path(env)
    return Path.home() / ".barterbackup"


def default_socket_path(node_dir: Path) -> Path:
    return Path(node_dir) / RPC_DIRNAME / SOCKET_NAME


def identity_path(node_dir: Path) -> Path:
    return Path(node_dir) / IDENTITY_FILENAME


def metadata_path(node_dir: Path) -> Path:
    return Path(node_dir) / METADATA_FILENAME


def content_dir(node_dir: Path) -> Path:
    return Path(node_dir) / CONTENT_DIRNAME


def replicas_dir(node_dir: Path) -> Path:
    return Path(node_dir) / REPLICAS_DIRNAME


def contracts_dir(node_dir: Path) -> Path:
    return Path(node_dir) / CONTRACTS_DIRNAME


def tor_dir(node_dir: Path) -> Path:
    return Path(node_dir) / TOR_DIRNAME


def lock_path(node_dir: Path) -> Path:
    return Path(node_dir) / LOCK_FILENAME


def chat_outbox_path(node_dir: Path) -> Path:
    return Path(node_dir) / CHAT_OUTBOX_FILENAME
