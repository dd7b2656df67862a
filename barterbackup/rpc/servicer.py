"""The clirpc servicer: runs on gRPC's thread pool, calls the reactor.

Every call into the node goes through ``blockingCallFromThread``; the only
work done on the gRPC thread itself is moving file bytes between the stream
and the node's worker-thread objects (FileSetUpdate, file readers), which is
what keeps the reactor free while gigabytes go through.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from twisted.internet.threads import blockingCallFromThread

from barterbackup import errors
from barterbackup._proto import clirpc_pb2, clirpc_pb2_grpc
from barterbackup.node import FileSetUpdate, Node, NodeStatus
from barterbackup.rpc.errors import status_for

T = TypeVar("T")
# GetFile answers in chunks of this size, well under the message limit.
READ_CHUNK = 1024 * 1024
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
        result = self._on_reactor(
            context, self._node.unlock, request.password, request.create_if_missing
        )
        return clirpc_pb2.UnlockResponse(
            onion_address=result.onion_address, created=result.created
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
    ) -> clirpc_pb2.ListFilesResponse:
        names = self._on_reactor(context, self._node.list_files)
        return clirpc_pb2.ListFilesResponse(names=names)

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
        self, context: grpc.ServicerContext, chunks: Iterator[bytes]
    ) -> Iterator[bytes]:
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
        blockingCallFromThread(self._reactor, self._node.revision_committed)
        return clirpc_pb2.SetFileResponse(
            revision=result.revision.number,
            files_written=counts[0],
            files_removed=counts[1],
            bytes_written=counts[2],
            new_section_bytes=result.new_section_bytes,
            content_length=result.content_length,
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
                    mode = header.mode & 0o7777 or 0o644
                    self._here(
                        context, update.add_file, header.name, mode, header.mtime
                    )
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
        info = self._on_reactor(context, self._node.connect_peer, request)
        return clirpc_pb2.ConnectPeerResponse(peer=info)

    def ConnectedPeers(
        self, request: clirpc_pb2.ConnectedPeersRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.ConnectedPeersResponse:
        peers = self._on_reactor(context, self._node.connected_peers)
        return clirpc_pb2.ConnectedPeersResponse(peers=peers)

    def SetStorageConfig(
        self, request: clirpc_pb2.SetStorageConfigRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.SetStorageConfigResponse:
        config = self._on_reactor(context, self._node.set_storage_config, request)
        return clirpc_pb2.SetStorageConfigResponse(config=config)

    def GetStorageConfig(
        self, request: clirpc_pb2.GetStorageConfigRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.GetStorageConfigResponse:
        return self._on_reactor(context, self._node.get_storage_config)

    def ReplicateContent(
        self, request: clirpc_pb2.ReplicateContentRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.ReplicateContentResponse]:
        events: queue.Queue[object] = queue.Queue()
        self._on_reactor(
            context, self._node.replicate_content, list(request.onion_addresses), events
        )
        for progress in self._drain(context, events):
            yield clirpc_pb2.ReplicateContentResponse(progress=progress)

    def _drain(
        self, context: grpc.ServicerContext, events: queue.Queue[object]
    ) -> Iterator[clirpc_pb2.Progress]:
        """Relay reactor-side progress events until the end marker.

        The node puts Progress messages, then either None (done) or an
        exception (failed) on the queue.
        """
        while True:
            try:
                item = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not context.is_active():
                    return
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                self._abort(context, item)
            assert isinstance(item, clirpc_pb2.Progress)
            yield item

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
