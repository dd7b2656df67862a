"""The clirpc servicer: runs on gRPC's thread pool, calls the reactor.

Every call into the node goes through ``blockingCallFromThread``; the only
work done on the gRPC thread itself is moving file bytes between the stream
and the node's worker-thread objects (FileSetUpdate, file readers), which is
what keeps the reactor free while gigabytes go through.

This is the only module that turns the node's domain records into clirpc
messages (and clirpc requests into the node's arguments).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from twisted.internet.threads import blockingCallFromThread
from twisted.python.failure import Failure

from barterbackup import errors
from barterbackup._proto import clirpc_pb2, clirpc_pb2_grpc
from barterbackup.node.facade import FileSetUpdate, Node
from barterbackup.node.results import NodeStatus, PeerInfo, StorageReport
from barterbackup.progress import Progress
from barterbackup.rpc.errors import status_for

T = TypeVar("T")
# GetFile answers in chunks of this size, well under the message limit.
READ_CHUNK = 1024 * 1024
# ListFiles sends names in batches of at most this many, or this many
# bytes: a million names (~100 MB) would not fit one message.
LIST_BATCH_NAMES = 10_000
LIST_BATCH_BYTES = 1024 * 1024
# How often a waiting stream checks whether its client went away.
POLL_SECONDS = 0.5


class CliRpcServicer(clirpc_pb2_grpc.CliRpcServicer):
    def __init__(self, reactor: Any, node: Node) -> None:
        self._reactor = reactor
        self._node = node

    # -- plumbing --------------------------------------------------------

    def _abort(self, context: grpc.ServicerContext, error: BaseException) -> NoReturn:
        code, message = status_for(error)
        context.abort(code, message)
        raise AssertionError("context.abort returned")  # pragma: no cover

    def _on_reactor(
        self, context: grpc.ServicerContext, fn: Callable[..., Any], *args: Any
    ) -> Any:
        """Call ``fn`` on the reactor thread; wait for its (Deferred) result."""
        try:
            return blockingCallFromThread(self._reactor, fn, *args)
        except Exception as e:
            self._abort(context, e)

    def _here(
        self, context: grpc.ServicerContext, fn: Callable[..., T], *args: Any
    ) -> T:
        """Run worker-thread node work on this gRPC thread, mapping errors."""
        try:
            return fn(*args)
        except Exception as e:
            self._abort(context, e)

    # -- methods ---------------------------------------------------------

    def Unlock(
        self, request: clirpc_pb2.UnlockRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.UnlockResponse:
        if request.generate_passphrase and request.password:
            self._abort(
                context,
                errors.InvalidArgument(
                    "give a password or ask for a generated passphrase, not both"
                ),
            )
        result = self._on_reactor(
            context,
            self._node.unlock,
            request.password,
            request.create_if_missing,
            request.generate_passphrase,
        )
        return clirpc_pb2.UnlockResponse(
            onion_address=result.onion_address,
            created=result.created,
            passphrase=result.generated_passphrase,
        )

    def GetStatus(
        self, request: clirpc_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.GetStatusResponse:
        status: NodeStatus = self._on_reactor(context, self._node.status)
        return clirpc_pb2.GetStatusResponse(
            unlocked=status.unlocked,
            onion_address=status.onion_address,
            revision=status.revision,
            file_count=status.file_count,
            content_length=status.content_length,
            version=status.version,
            transport=status.transport,
            peer_endpoint=status.peer_endpoint,
            peer_network=status.peer_network,
        )

    def ListFiles(
        self, request: clirpc_pb2.ListFilesRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.ListFilesResponse]:
        names = self._on_reactor(context, self._node.iter_files)
        batch: list[str] = []
        size = 0
        for name in self._guarded(context, names):
            batch.append(name)
            # UTF-8 takes at most 4 bytes a character: a bound, not a count.
            size += 4 * len(name) + 8
            if len(batch) >= LIST_BATCH_NAMES or size >= LIST_BATCH_BYTES:
                yield clirpc_pb2.ListFilesResponse(names=batch)
                batch, size = [], 0
        if batch:
            yield clirpc_pb2.ListFilesResponse(names=batch)

    def GetFile(
        self, request: clirpc_pb2.GetFileRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.GetFileResponse]:
        size = self._on_reactor(context, self._node.file_size, request.name)
        chunks = self._on_reactor(context, self._node.open_file, request.name)
        first = True
        for chunk in _rechunk(self._guarded(context, chunks), READ_CHUNK):
            yield clirpc_pb2.GetFileResponse(data=chunk, size=size if first else 0)
            first = False
        if first:
            yield clirpc_pb2.GetFileResponse(size=size)

    def _guarded(
        self, context: grpc.ServicerContext, chunks: Iterator[T]
    ) -> Iterator[T]:
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except Exception as e:
                self._abort(context, e)
            yield chunk

    def SetFile(
        self,
        request_iterator: Iterable[clirpc_pb2.SetFileRequest],
        context: grpc.ServicerContext,
    ) -> clirpc_pb2.SetFileResponse:
        update: FileSetUpdate = self._on_reactor(context, self._node.begin_update)
        try:
            counts = self._apply_file_stream(context, update, request_iterator)
            result = self._here(context, update.commit)
        finally:
            # Nothing half-done survives a failed or cancelled stream.
            try:
                update.abort()
            finally:
                blockingCallFromThread(self._reactor, update.finish)
        if result.changed:
            blockingCallFromThread(self._reactor, self._node.revision_committed)
        return clirpc_pb2.SetFileResponse(
            revision=result.revision.number,
            files_written=counts[0],
            files_removed=counts[1],
            bytes_written=counts[2],
            new_section_bytes=result.new_section_bytes,
            content_length=result.content_length,
            changed=result.changed,
        )

    def _apply_file_stream(
        self,
        context: grpc.ServicerContext,
        update: FileSetUpdate,
        requests: Iterable[clirpc_pb2.SetFileRequest],
    ) -> tuple[int, int, int]:
        written = removed = data_bytes = 0
        seen: set[str] = set()
        for request in requests:
            kind = request.WhichOneof("operation")
            if kind == "header":
                header = request.header
                if header.name in seen:
                    self._abort(
                        context,
                        errors.InvalidArgument(
                            f"{header.name!r} appears twice in one SetFile stream"
                        ),
                    )
                seen.add(header.name)
                if header.remove:
                    self._here(context, update.remove_file, header.name)
                    removed += 1
                else:
                    self._here(context, _start_file, update, header)
                    written += 1
            elif kind == "data":
                self._here(context, update.write, request.data)
                data_bytes += len(request.data)
            else:
                self._abort(
                    context,
                    errors.InvalidArgument("empty SetFile message in the stream"),
                )
        if not seen:
            self._abort(context, errors.InvalidArgument("SetFile stream named no file"))
        return written, removed, data_bytes

    def ConnectPeer(
        self, request: clirpc_pb2.ConnectPeerRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.ConnectPeerResponse:
        info = self._on_reactor(
            context,
            self._node.connect_peer,
            request.onion_address,
            request.endpoint,
            request.share_in_exchange,
        )
        return clirpc_pb2.ConnectPeerResponse(peer=_peer_info(info))

    def ConnectedPeers(
        self, request: clirpc_pb2.ConnectedPeersRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.ConnectedPeersResponse:
        peers = self._on_reactor(context, self._node.peers)
        return clirpc_pb2.ConnectedPeersResponse(peers=[_peer_info(p) for p in peers])

    def SetStorageConfig(
        self, request: clirpc_pb2.SetStorageConfigRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.SetStorageConfigResponse:
        report = self._on_reactor(
            context,
            self._node.set_storage_config,
            request.total_bytes,
            request.per_peer_bytes,
            request.min_replicas,
        )
        return clirpc_pb2.SetStorageConfigResponse(config=_storage(report))

    def GetStorageConfig(
        self, request: clirpc_pb2.GetStorageConfigRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.GetStorageConfigResponse:
        return _storage(self._on_reactor(context, self._node.storage_report))

    def ReplicateContent(
        self, request: clirpc_pb2.ReplicateContentRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.ReplicateContentResponse]:
        for progress in self._progress_stream(
            context, self._node.replicate, list(request.onion_addresses)
        ):
            yield clirpc_pb2.ReplicateContentResponse(progress=progress)

    def _progress_stream(
        self, context: grpc.ServicerContext, operation: Callable[..., Any], *args: Any
    ) -> Iterator[clirpc_pb2.Progress]:
        """Run a long node operation; relay its Progress events as it goes.

        ``operation(*args, report)`` runs on the reactor and returns a
        Deferred; its events travel here through a queue, and the stream
        ends when the Deferred fires (or aborts with its error).
        """
        events: queue.Queue[object] = queue.Queue()

        def start() -> None:
            d = operation(*args, events.put)
            d.addCallbacks(lambda _: events.put(_END), events.put)

        self._on_reactor(context, start)
        while True:
            try:
                item = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not context.is_active():
                    return
                continue
            if item is _END:
                return
            if isinstance(item, Progress):
                yield _progress(item)
            else:
                assert isinstance(item, Failure) and item.value is not None
                self._abort(context, item.value)

    # Subsystems that later issues build: an honest UNIMPLEMENTED until then.

    def GetContracts(
        self, request: clirpc_pb2.GetContractsRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.GetContractsResponse:
        self._not_built(context, "GetContracts", "contracts")

    def ProposeContract(
        self, request: clirpc_pb2.ProposeContractRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.ProposeContractResponse]:
        self._not_built(context, "ProposeContract", "contracts")

    def CheckContract(
        self, request: clirpc_pb2.CheckContractRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.CheckContractResponse]:
        self._not_built(context, "CheckContract", "contracts")

    def RecoverContent(
        self, request: clirpc_pb2.RecoverContentRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.RecoverContentResponse]:
        self._not_built(context, "RecoverContent", "recovery")

    def SetAeadKeyForPeer(
        self,
        request: clirpc_pb2.SetAeadKeyForPeerRequest,
        context: grpc.ServicerContext,
    ) -> clirpc_pb2.SetAeadKeyForPeerResponse:
        self._not_built(context, "SetAeadKeyForPeer", "chat")

    def Chat(
        self,
        request_iterator: Iterable[clirpc_pb2.ChatAction],
        context: grpc.ServicerContext,
    ) -> Iterator[clirpc_pb2.ChatEvent]:
        self._not_built(context, "Chat", "chat")

    # Scheduled backups (issue 12): the messages are defined, the lead wires
    # them to barterbackup.sources.

    def AddSource(
        self, request: clirpc_pb2.AddSourceRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.AddSourceResponse:
        self._not_built(context, "AddSource", "backups")

    def ListSources(
        self, request: clirpc_pb2.ListSourcesRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.ListSourcesResponse:
        self._not_built(context, "ListSources", "backups")

    def RemoveSource(
        self, request: clirpc_pb2.RemoveSourceRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.RemoveSourceResponse:
        self._not_built(context, "RemoveSource", "backups")

    def SetSchedule(
        self, request: clirpc_pb2.SetScheduleRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.SetScheduleResponse:
        self._not_built(context, "SetSchedule", "backups")

    def GetSchedule(
        self, request: clirpc_pb2.GetScheduleRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.GetScheduleResponse:
        self._not_built(context, "GetSchedule", "backups")

    def BackupNow(
        self, request: clirpc_pb2.BackupNowRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.BackupNowResponse]:
        self._not_built(context, "BackupNow", "backups")

    def _not_built(
        self, context: grpc.ServicerContext, method: str, subsystem: str
    ) -> NoReturn:
        # Locked beats unimplemented: every method but Unlock says "locked"
        # first, so scripts see one consistent precondition.
        self._on_reactor(context, _check_unlocked, self._node)
        self._abort(context, errors.NotBuiltYet(method, subsystem))


_END = object()


def _progress(event: Progress) -> clirpc_pb2.Progress:
    return clirpc_pb2.Progress(
        phase=event.phase,
        peer=event.peer,
        bytes_done=event.bytes_done,
        bytes_total=event.bytes_total,
        message=event.message,
        revision=event.revision,
    )


def _start_file(update: FileSetUpdate, header: clirpc_pb2.FileHeader) -> None:
    update.add_file(
        header.name,
        mode=header.mode & 0o7777 or 0o644,
        mtime_ns=header.mtime_ns,
        ctime_ns=header.ctime_ns,
        inode=header.inode,
        device=header.device,
    )


def _peer_info(peer: PeerInfo) -> clirpc_pb2.PeerInfo:
    return clirpc_pb2.PeerInfo(
        onion_address=peer.onion_address,
        connected=peer.connected,
        first_seen=peer.first_seen,
        last_seen=peer.last_seen,
        rtt_ms=peer.rtt_ms,
        held_revision=peer.held_revision,
        stored_bytes=peer.stored_bytes,
        shared_in_exchange=peer.shared_in_exchange,
        endpoint=peer.endpoint,
    )


def _storage(report: StorageReport) -> clirpc_pb2.GetStorageConfigResponse:
    response = clirpc_pb2.GetStorageConfigResponse(
        total_bytes=report.total_bytes,
        per_peer_bytes=report.per_peer_bytes,
        min_replicas=report.min_replicas,
        used_bytes=report.used_bytes,
        free_bytes=report.free_bytes,
    )
    for obligation in report.obligations:
        response.obligations.add(
            onion_address=obligation.onion_address,
            revision=obligation.revision,
            stored_bytes=obligation.stored_bytes,
            granted_bytes=obligation.granted_bytes,
        )
    return response


def _check_unlocked(node: Node) -> None:
    if not node.is_unlocked:
        raise errors.NodeLocked()


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup a byte stream into pieces of about ``size`` bytes."""
    pending: list[bytes] = []
    pending_len = 0
    for chunk in chunks:
        pending.append(chunk)
        pending_len += len(chunk)
        if pending_len >= size:
            yield b"".join(pending)
            pending, pending_len = [], 0
    if pending_len:
        yield b"".join(pending)
