"""Two data-plane peers joined by the real in-memory peer link (tests).

Each ``SyncPeer`` has real node keys, a fake content store (real signed
revisions over in-memory sections), a real replica store on disk and the
node's real bbrpc handler; ``SyncLink`` joins an owner and a replica with
real connections and lets a test watch or tamper with the frames.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from barterbackup._proto import bbrpc_pb2, storedpb_pb2
from barterbackup.node.handler import NodePeerHandler
from barterbackup.progress import Progress
from barterbackup.revisions import VerifiedRevision
from barterbackup.store.replicas import ReplicaStore
from barterbackup.sync.offers import OfferedContent
from barterbackup.sync.push import Pusher, push_revision
from barterbackup.sync.replica import ReplicaService
from barterbackup.sync.serve import ContentServer
from barterbackup.testing.fakes import FakeContentStore
from barterbackup.testing.link import Direction, connected_pair, keys_for_test

DownloadHook = Callable[[bbrpc_pb2.DownloadResponse], bbrpc_pb2.DownloadResponse]


class SyncPeer:
    """One side: its keys, its own content, its replica store, its handler."""

    def __init__(
        self, root: Path, clock: task.Clock, index: int, budget: int = 50_000_000
    ) -> None:
        self.root = root
        self.clock = clock
        self.keys = keys_for_test(index)
        self.pubkey = self.keys.onion_pubkey
        self.address = self.keys.onion_address
        self.content = FakeContentStore(self.keys.signing_key)
        # What each owner's contract grants (the contract book's decision in
        # a node): config.total_bytes unless ``grants`` says otherwise.
        self.config = storedpb_pb2.StorageConfig(total_bytes=budget)
        self.grants: dict[bytes, int] = {}
        self.replicas = ReplicaStore.open(
            root,
            lambda owner: self.grants.get(owner, self.config.total_bytes),
            naming_key=bytes([index]) * 32,
            sealing_key=bytes([index + 100]) * 32,
        )
        self.shareable: list[str] = []
        self.offers = OfferedContent()
        self.pusher = Pusher(clock, self.offers)
        self.handler = NodePeerHandler(
            shareable_peers=lambda: list(self.shareable),
            replica=ReplicaService(self.replicas, clock),
            server=ContentServer(self.content, self.replicas, self.offers),
        )


class SyncLink:
    """An owner's connection to a replica, both real, joined in memory."""

    def __init__(self, owner: SyncPeer, replica: SyncPeer) -> None:
        self.owner = owner
        self.replica = replica
        self.to_replica, self.to_owner, self.link = connected_pair(
            owner.clock, owner.keys, replica.keys, owner.handler, replica.handler
        )
        # Download calls the replica opened on the owner, in order.
        self.replica_calls: list[str] = []
        self.downloads_received = 0
        self._download_hook: DownloadHook | None = None
        self._cut_after_downloads: int | None = None
        self.link.tamper(Direction.to_client, self._replica_to_owner)
        self.link.tamper(Direction.to_server, self._owner_to_replica)

    @property
    def wire_bytes(self) -> int:
        return self.link.wire_bytes

    def tamper_downloads(self, hook: DownloadHook | None) -> None:
        """Pass every Download item the replica receives through ``hook``."""
        self._download_hook = hook

    def cut_after_downloads(self, items: int) -> None:
        """Drop the link once the replica received ``items`` Download items."""
        self._cut_after_downloads = self.downloads_received + items

    def push(
        self, revision: VerifiedRevision, progress: list[Any] | None = None
    ) -> Deferred[bbrpc_pb2.SetContentRevisionResponse]:
        """SetContentRevision with the raw responses collected in ``progress``."""
        sink = progress if progress is not None else []
        return push_revision(self.to_replica, revision, sink.append, self.owner.offers)

    def push_reported(
        self, revision: VerifiedRevision, events: list[Progress]
    ) -> Deferred[Any]:
        """The owner's Pusher (serialised, pinned, Progress events)."""
        return self.owner.pusher.push(self.to_replica, revision, events.append)

    def _replica_to_owner(self, envelope: bbrpc_pb2.Envelope) -> bbrpc_pb2.Envelope:
        kind = envelope.WhichOneof("body")
        if kind is not None and kind.endswith("_request"):
            self.replica_calls.append(kind)
        return envelope

    def _owner_to_replica(
        self, envelope: bbrpc_pb2.Envelope
    ) -> bbrpc_pb2.Envelope | None:
        if envelope.WhichOneof("body") != "download_response":
            return envelope
        self.downloads_received += 1
        if self._download_hook is not None:
            item = bbrpc_pb2.DownloadResponse()
            item.CopyFrom(envelope.download_response)
            envelope.download_response.CopyFrom(self._download_hook(item))
        limit = self._cut_after_downloads
        if limit is not None and self.downloads_received >= limit:
            self.link.disconnect()
            return None
        return envelope
