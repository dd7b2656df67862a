"""The clirpc servicer: runs on gRPC's thread pool, calls the reactor.

Every call into the node goes through ``blockingCallFromThread``; the only
work done on the gRPC thread itself is moving file bytes between the stream
and the node's worker-thread objects (FileSetUpdate, file readers), which is
what keeps the reactor free while gigabytes go through.

This is the only module that turns the node's domain records into clirpc
messages (and clirpc requests into the node's arguments).

Chat is the one call streaming both ways: its gRPC thread yields events
while a second thread reads the client's actions and hands each to the
reactor. Events cross from the reactor through a bounded queue
(``ChatEventQueue``): fetch progress is coalesced, and a client that stops
reading is cut off rather than allowed to grow the queue; the messages it
had not been shown go back to the node, which shows them to the next
attachment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from twisted.internet.threads import blockingCallFromThread
from twisted.python.failure import Failure

from barterbackup import errors
from barterbackup._proto import clirpc_pb2, clirpc_pb2_grpc
from barterbackup.chat.aead import ChatError
from barterbackup.chat.service import ChatAttachment
from barterbackup.logs import get_logger
from barterbackup.node.backups import AddPathsResult, PathToAdd
from barterbackup.node.facade import FileSetUpdate, Node
from barterbackup.node.results import (
    ChatEnded,
    ChatKeyResult,
    ChatOverview,
    ChatUpdate,
    CheckOutcome,
    CheckReport,
    ContentCheckReport,
    ContractInfo,
    DamagedFile,
    FileInfo,
    MessageIn,
    MessageStatus,
    NodeStatus,
    Notice,
    OfferIn,
    OfferOut,
    PeerInfo,
    RestoreOutcome,
    RunOutcome,
    ScheduleState,
    SessionClosed,
    SessionOpened,
    Source,
    StorageReport,
    TransferProgress,
)
from barterbackup.progress import Progress
from barterbackup.rpc.errors import status_for
from barterbackup.rpc.queues import (
    OVERFLOWED,
    ChatEventQueue,
    Finished,
    ProgressQueue,
)

log = get_logger("barterbackup.rpc")

T = TypeVar("T")
# GetFile answers in chunks of this size, well under the message limit.
READ_CHUNK = 1024 * 1024
# ListFiles sends names in batches of at most this many, or this many
# bytes: a million names (~100 MB) would not fit one message.
LIST_BATCH_NAMES = 10_000
LIST_BATCH_BYTES = 1024 * 1024
# How often a waiting stream checks whether its client went away.
POLL_SECONDS = 0.5
# Chat events waiting for a client that does not read them; beyond this the
# client is cut off (its unshown messages go back to the node).
MAX_CHAT_BACKLOG = 1000
# Skipped entries an AddPaths answer lists (all are counted).
MAX_REPORTED_WARNINGS = 100


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
        response = clirpc_pb2.GetStatusResponse(
            unlocked=status.unlocked,
            onion_address=status.onion_address,
            revision=status.revision,
            file_count=status.file_count,
            content_length=status.content_length,
            version=status.version,
            transport=status.transport,
            peer_endpoint=status.peer_endpoint,
            peer_network=status.peer_network,
            min_replicas=status.min_replicas,
            replicas_current=status.replicas_current,
            replicas_older=status.replicas_older,
            checks_passed=status.checks_passed,
            checks_failed=status.checks_failed,
            last_check=int(status.last_check),
            errors=list(status.errors),
            recovery=_progress(status.recovery) if status.recovery else None,
            revision_time=int(status.revision_time),
            source_count=status.source_count,
        )
        if status.schedule is not None:
            response.schedule.CopyFrom(_schedule_info(status.schedule))
        if status.last_backup is not None:
            response.last_backup.CopyFrom(_run_info(status.last_backup))
        return response

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

    def AddPaths(
        self, request: clirpc_pb2.AddPathsRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.AddPathsResponse]:
        paths = [PathToAdd(p.path, p.name, p.device, p.inode) for p in request.paths]
        for item in self._operation_stream(context, self._node.add_paths, paths):
            if isinstance(item, Finished):
                added: AddPathsResult = item.value
                commit = added.commit
                response = clirpc_pb2.AddPathsResponse(
                    progress=clirpc_pb2.Progress(phase="done", message=commit.summary),
                    result=clirpc_pb2.SetFileResponse(
                        revision=commit.revision.number,
                        files_written=added.files_read,
                        files_removed=0,
                        bytes_written=added.bytes_read,
                        new_section_bytes=commit.new_section_bytes,
                        content_length=commit.content_length,
                        changed=commit.changed,
                    ),
                    warning_count=added.warning_count,
                )
                for warning in added.warnings[:MAX_REPORTED_WARNINGS]:
                    response.warnings.add(path=warning.path, reason=warning.reason)
                yield response
            else:
                yield clirpc_pb2.AddPathsResponse(progress=item)

    def StatFiles(
        self, request: clirpc_pb2.StatFilesRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.StatFilesResponse:
        names = list(request.names)
        revision, records = self._on_reactor(context, self._node.stat_files, names)
        response = clirpc_pb2.StatFilesResponse(revision=revision)
        for name, record in zip(names, records, strict=True):
            if record is None:
                response.files.add(name=name, present=False)
            else:
                response.files.add(
                    name=name,
                    present=True,
                    size=record.size,
                    mtime_ns=record.mtime_ns,
                    ctime_ns=record.ctime_ns,
                    inode=record.inode,
                    device=record.device,
                )
        return response

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

    def DiscoverPeers(
        self, request: clirpc_pb2.DiscoverPeersRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.DiscoverPeersResponse:
        found = self._on_reactor(
            context, self._node.discover_peers, list(request.onion_addresses)
        )
        return clirpc_pb2.DiscoverPeersResponse(
            peers=[
                clirpc_pb2.DiscoveredPeer(
                    onion_address=peer.onion_address,
                    shared_by=peer.shared_by,
                    known=peer.known,
                )
                for peer in found.peers
            ],
            errors=found.errors,
            dropped=found.dropped,
        )

    def SetStorageConfig(
        self, request: clirpc_pb2.SetStorageConfigRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.SetStorageConfigResponse:
        report = self._on_reactor(
            context,
            self._node.set_storage_config,
            request.total_bytes if request.HasField("total_bytes") else None,
            request.min_replicas if request.HasField("min_replicas") else None,
            (
                request.acceptance_policy
                if request.HasField("acceptance_policy")
                else None
            ),
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
        for item in self._operation_stream(context, operation, *args):
            if isinstance(item, clirpc_pb2.Progress):
                yield item

    def _operation_stream(
        self, context: grpc.ServicerContext, operation: Callable[..., Any], *args: Any
    ) -> Iterator[clirpc_pb2.Progress | Finished]:
        """``_progress_stream``, ending with the operation's ``Finished``."""
        events = ProgressQueue()

        def start() -> None:
            d = operation(*args, events.put)
            d.addBoth(events.end)

        self._on_reactor(context, start)
        while True:
            item = events.get(timeout=POLL_SECONDS)
            if item is None:
                if not context.is_active():
                    return
            elif isinstance(item, Progress):
                yield _progress(item)
            elif isinstance(item, Failure):
                assert item.value is not None
                self._abort(context, item.value)
            else:
                yield item
                return

    # -- contracts -------------------------------------------------------

    def GetContracts(
        self, request: clirpc_pb2.GetContractsRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.GetContractsResponse:
        contracts = self._on_reactor(context, self._node.contracts)
        return clirpc_pb2.GetContractsResponse(
            contracts=[_contract(c) for c in contracts]
        )

    def ProposeContract(
        self, request: clirpc_pb2.ProposeContractRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.ProposeContractResponse]:
        for item in self._operation_stream(
            context,
            self._node.propose_contract,
            request.peer,
            request.our_bytes,
            request.their_bytes,
        ):
            if isinstance(item, Finished):
                info: ContractInfo = item.value
                yield clirpc_pb2.ProposeContractResponse(
                    progress=clirpc_pb2.Progress(
                        phase=info.state, peer=info.peer, message=info.detail
                    ),
                    contract=_contract(info),
                )
            else:
                yield clirpc_pb2.ProposeContractResponse(progress=item)

    def CheckContract(
        self, request: clirpc_pb2.CheckContractRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.CheckContractResponse]:
        for item in self._operation_stream(
            context,
            self._node.check_contract,
            bytes(request.contract_id),
            request.peer,
            request.kind,
            request.samples,
        ):
            if isinstance(item, Finished):
                outcome: CheckReport = item.value
                yield clirpc_pb2.CheckContractResponse(
                    progress=clirpc_pb2.Progress(
                        phase="verdict",
                        peer=outcome.contract.peer,
                        message=outcome.verdict,
                    ),
                    passed=bool(outcome.passed),
                    verdict=outcome.verdict,
                    confidence=outcome.confidence,
                    positions=outcome.positions,
                    contract=_contract(outcome.contract),
                )
            else:
                yield clirpc_pb2.CheckContractResponse(progress=item)

    def EndContract(
        self, request: clirpc_pb2.EndContractRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.EndContractResponse:
        info = self._on_reactor(
            context,
            self._node.end_contract,
            bytes(request.contract_id),
            request.peer,
            request.reason,
        )
        return clirpc_pb2.EndContractResponse(contract=_contract(info))

    def AnswerContract(
        self, request: clirpc_pb2.AnswerContractRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.AnswerContractResponse:
        info = self._on_reactor(
            context,
            self._node.answer_contract,
            bytes(request.contract_id),
            request.accept,
            request.reason,
        )
        return clirpc_pb2.AnswerContractResponse(contract=_contract(info))

    # -- restore and check (docs/restore-and-check.md) -----------------------

    def RestoreFiles(
        self, request: clirpc_pb2.RestoreFilesRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.RestoreFilesResponse]:
        for item in self._operation_stream(
            context,
            self._node.restore_files,
            request.directory,
            list(request.names),
            request.revision,
            request.overwrite,
        ):
            if isinstance(item, Finished):
                yield clirpc_pb2.RestoreFilesResponse(
                    result=_restore_result(item.value)
                )
            else:
                yield clirpc_pb2.RestoreFilesResponse(progress=item)

    def CheckContent(
        self, request: clirpc_pb2.CheckContentRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.CheckContentResponse]:
        for item in self._operation_stream(
            context, self._node.check_content, request.read_data, request.repair
        ):
            if isinstance(item, Finished):
                yield clirpc_pb2.CheckContentResponse(result=_check_result(item.value))
            else:
                yield clirpc_pb2.CheckContentResponse(progress=item)

    def RecoverContent(
        self, request: clirpc_pb2.RecoverContentRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.RecoverContentResponse]:
        for progress in self._progress_stream(
            context, self._node.recover, list(request.peers), int(request.revision)
        ):
            yield clirpc_pb2.RecoverContentResponse(progress=progress)

    # -- chat --------------------------------------------------------------

    def SetAeadKeyForPeer(
        self,
        request: clirpc_pb2.SetAeadKeyForPeerRequest,
        context: grpc.ServicerContext,
    ) -> clirpc_pb2.SetAeadKeyForPeerResponse:
        result: ChatKeyResult = self._on_reactor(
            context,
            lambda: self._node.set_chat_key(
                request.peer,
                key=request.aead_key,
                key_text=request.key_text,
                generate=request.generate,
                clear=request.clear,
            ),
        )
        return clirpc_pb2.SetAeadKeyForPeerResponse(
            peer=result.onion_address,
            fingerprint=result.fingerprint,
            key_text=result.key_text,
        )

    def ListChats(
        self, request: clirpc_pb2.ListChatsRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.ListChatsResponse:
        chats: list[ChatOverview] = self._on_reactor(context, self._node.chat_overview)
        return clirpc_pb2.ListChatsResponse(chats=[_chat_summary(c) for c in chats])

    def Chat(
        self,
        request_iterator: Iterable[clirpc_pb2.ChatAction],
        context: grpc.ServicerContext,
    ) -> Iterator[clirpc_pb2.ChatEvent]:
        actions = iter(request_iterator)
        try:
            first = next(actions)
        except StopIteration:
            return
        if first.WhichOneof("action") != "init":
            self._abort(
                context,
                errors.InvalidArgument("a chat starts with init, naming the peer"),
            )
        events = ChatEventQueue(MAX_CHAT_BACKLOG)
        attachment: ChatAttachment = self._on_reactor(
            context, self._node.open_chat, first.peer, events.put, first.init.plain
        )
        events.on_overflow = lambda unread: attachment.stop(
            "the chat client stopped reading", unread=unread
        )
        reader = threading.Thread(
            target=self._read_chat_actions,
            args=(actions, attachment, events),
            name="clirpc-chat-actions",
            daemon=True,
        )
        reader.start()
        try:
            while True:
                item = events.get(POLL_SECONDS)
                if item is None:
                    if not context.is_active():
                        return
                    continue
                if item is OVERFLOWED:
                    self._abort(
                        context,
                        errors.ResourceExhausted(
                            f"more than {MAX_CHAT_BACKLOG} chat events waited for "
                            "this client; the messages not shown are kept for the "
                            "next chat"
                        ),
                    )
                assert not isinstance(item, str)
                yield _chat_event(item)
                if isinstance(item, ChatEnded):
                    return
        finally:
            # However the stream ends, this client has left the chat.
            self._reactor.callFromThread(attachment.stop, "left the chat")

    def _read_chat_actions(
        self,
        actions: Iterator[clirpc_pb2.ChatAction],
        attachment: ChatAttachment,
        events: ChatEventQueue,
    ) -> None:
        """The client's actions, one at a time, to the reactor (a thread)."""
        try:
            for action in actions:
                if action.WhichOneof("action") == "stop":
                    blockingCallFromThread(
                        self._reactor, attachment.stop, action.stop.reason
                    )
                    return
                try:
                    blockingCallFromThread(self._reactor, _chat_act, attachment, action)
                except Exception as error:
                    events.put(
                        Notice(
                            attachment.peer,
                            _user_message(error),
                            action.action_id,
                            error=True,
                        )
                    )
            # The client closed its side without `stop`: it will send
            # nothing more, so it leaves as if it had (a stream kept open
            # for it would run until its deadline).
            blockingCallFromThread(self._reactor, attachment.stop, "left the chat")
        except Exception:
            # The client went away mid-stream (a cancelled RPC): the event
            # side notices and leaves the chat.
            return

    # -- backups -----------------------------------------------------------

    def AddSource(
        self, request: clirpc_pb2.AddSourceRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.AddSourceResponse:
        source = self._on_reactor(
            context,
            self._node.add_source,
            request.path,
            request.name,
            list(request.excludes),
            request.replace,
        )
        return clirpc_pb2.AddSourceResponse(source=_source_info(source))

    def ListSources(
        self, request: clirpc_pb2.ListSourcesRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.ListSourcesResponse:
        sources = self._on_reactor(context, self._node.sources)
        return clirpc_pb2.ListSourcesResponse(
            sources=[_source_info(s) for s in sources]
        )

    def RemoveSource(
        self, request: clirpc_pb2.RemoveSourceRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.RemoveSourceResponse:
        gone = self._on_reactor(
            context, self._node.remove_source, request.path, request.name
        )
        return clirpc_pb2.RemoveSourceResponse(removed=_source_info(gone))

    def SetSchedule(
        self, request: clirpc_pb2.SetScheduleRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.SetScheduleResponse:
        state = self._on_reactor(
            context, self._node.set_schedule, request.every_seconds
        )
        return clirpc_pb2.SetScheduleResponse(schedule=_schedule_info(state))

    def GetSchedule(
        self, request: clirpc_pb2.GetScheduleRequest, context: grpc.ServicerContext
    ) -> clirpc_pb2.GetScheduleResponse:
        state = self._on_reactor(context, self._node.schedule)
        return clirpc_pb2.GetScheduleResponse(schedule=_schedule_info(state))

    def BackupNow(
        self, request: clirpc_pb2.BackupNowRequest, context: grpc.ServicerContext
    ) -> Iterator[clirpc_pb2.BackupNowResponse]:
        for item in self._operation_stream(context, self._node.backup_now):
            if isinstance(item, Finished):
                outcome: RunOutcome = item.value
                yield clirpc_pb2.BackupNowResponse(
                    progress=clirpc_pb2.Progress(
                        phase="failed" if outcome.error else "done",
                        message=outcome.describe(),
                        revision=outcome.result.revision if outcome.result else 0,
                    ),
                    result=_run_info(outcome),
                )
            else:
                yield clirpc_pb2.BackupNowResponse(progress=item)


def _chat_act(attachment: ChatAttachment, action: clirpc_pb2.ChatAction) -> None:
    """One user action, on the reactor thread."""
    kind = action.WhichOneof("action")
    if action.peer and action.peer.strip().lower() != attachment.peer:
        raise errors.InvalidArgument(
            f"this chat is with {attachment.peer}; open another for {action.peer}"
        )
    if kind == "message":
        attachment.send_message(action.message, action.action_id)
    elif kind == "offer_file":
        attachment.offer_file(action.offer_file, action.action_id)
    elif kind == "offer_stored_file":
        attachment.offer_stored_file(action.offer_stored_file, action.action_id)
    elif kind == "accept_file":
        attachment.accept_file(
            action.accept_file.offer_id,
            action.accept_file.directory,
            action.action_id,
        )
    elif kind == "init":
        raise errors.InvalidArgument("a chat stream is opened once")
    else:
        raise errors.InvalidArgument("an empty chat action")


def _user_message(error: BaseException) -> str:
    """What to tell the user about an action that failed."""
    if isinstance(error, ChatError):
        return str(error)
    return status_for(error)[1]


def _chat_file(info: FileInfo) -> clirpc_pb2.ChatFile:
    return clirpc_pb2.ChatFile(
        offer_id=info.offer_id,
        name=info.name,
        offered_name=info.offered_name,
        size=info.size,
        sha256=info.sha256,
        expires_at=int(info.expires_at),
    )


def _chat_event(update: ChatUpdate) -> clirpc_pb2.ChatEvent:
    event = clirpc_pb2.ChatEvent(peer=update.peer)
    if isinstance(update, SessionOpened):
        event.opened.CopyFrom(
            clirpc_pb2.ChatOpened(
                encrypted=update.encrypted,
                fingerprint=update.fingerprint,
                initiated=update.initiated,
            )
        )
    elif isinstance(update, MessageIn):
        event.message.CopyFrom(
            clirpc_pb2.ChatMessage(
                text=update.text,
                received_at=int(update.received_at),
                encrypted=update.encrypted,
                replayed=update.replayed,
            )
        )
    elif isinstance(update, MessageStatus):
        event.action_id = update.action_id
        event.delivery.CopyFrom(
            clirpc_pb2.ChatDelivery(
                state=update.state, detail=update.detail, queued_id=update.queued_id
            )
        )
    elif isinstance(update, OfferIn):
        event.file_offered.CopyFrom(_chat_file(update.offer))
    elif isinstance(update, OfferOut):
        event.action_id = update.action_id
        event.file_shared.CopyFrom(_chat_file(update.offer))
    elif isinstance(update, TransferProgress):
        event.action_id = update.action_id
        event.transfer.CopyFrom(
            clirpc_pb2.ChatTransfer(
                offer_id=update.offer_id,
                name=update.name,
                phase=update.phase,
                bytes_done=update.bytes_done,
                bytes_total=update.bytes_total,
                path=update.path,
                message=update.message,
            )
        )
    elif isinstance(update, SessionClosed):
        event.closed.CopyFrom(
            clirpc_pb2.ChatClosed(
                reason=update.reason,
                by_peer=update.by_peer,
                cut=update.cut,
                key_mismatch=update.key_mismatch,
            )
        )
    elif isinstance(update, Notice):
        event.action_id = update.action_id
        event.notice.CopyFrom(
            clirpc_pb2.ChatNotice(text=update.text, error=update.error)
        )
    else:
        event.ended.CopyFrom(clirpc_pb2.ChatStop(reason=update.reason))
    return event


def _chat_summary(chat: ChatOverview) -> clirpc_pb2.ChatSummary:
    return clirpc_pb2.ChatSummary(
        peer=chat.peer,
        connected=chat.connected,
        key_fingerprint=chat.key_fingerprint,
        sessions=chat.sessions,
        attached=chat.attached,
        unread=chat.unread,
        queued=[
            clirpc_pb2.QueuedChatMessage(
                queued_id=q.queued_id,
                text=q.text,
                queued_at=int(q.queued_at),
                encrypted=q.encrypted,
            )
            for q in chat.queued
        ],
        offers_received=[_chat_file(o) for o in chat.offers_received],
        offers_made=[_chat_file(o) for o in chat.offers_made],
    )


def _progress(event: Progress) -> clirpc_pb2.Progress:
    return clirpc_pb2.Progress(
        phase=event.phase,
        peer=event.peer,
        bytes_done=event.bytes_done,
        bytes_total=event.bytes_total,
        message=event.message,
        revision=event.revision,
        bytes_per_second=event.bytes_per_second,
        eta_seconds=event.eta_seconds,
        files_done=event.files_done,
        files_total=event.files_total,
    )


def _restore_result(outcome: RestoreOutcome) -> clirpc_pb2.RestoreResult:
    return clirpc_pb2.RestoreResult(
        revision=outcome.revision,
        directory=outcome.directory,
        files_restored=outcome.files_restored,
        bytes_restored=outcome.bytes_restored,
        kept=outcome.kept,
        kept_count=outcome.kept_count,
        failed=[
            clirpc_pb2.FileProblem(
                name=f.name, reason=f.reason, revision=outcome.revision
            )
            for f in outcome.failed
        ],
        failed_count=outcome.failed_count,
        not_found=outcome.not_found,
    )


def _file_problems(files: list[DamagedFile]) -> list[clirpc_pb2.FileProblem]:
    return [
        clirpc_pb2.FileProblem(name=f.name, reason=f.reason, revision=f.revision)
        for f in files
    ]


def _check_result(report: ContentCheckReport) -> clirpc_pb2.CheckContentResult:
    found: CheckOutcome = report.found
    final: CheckOutcome = report.final
    return clirpc_pb2.CheckContentResult(
        revisions=found.revisions,
        read_data=found.read_data,
        tree_nodes=found.tree_nodes,
        manifest_chunks=found.manifest_chunks,
        sections=found.sections,
        section_bytes=found.section_bytes,
        bytes_read=found.bytes_read,
        damaged_count=found.damaged_count,
        damaged=[
            clirpc_pb2.DamagedBlob(
                revision=b.revision, kind=b.kind, sha256=b.sha256, problem=b.problem
            )
            for b in found.damaged
        ],
        damaged_files=_file_problems(found.damaged_files),
        damaged_files_count=found.damaged_files_count,
        unlisted=found.unlisted,
        repair_asked=report.repair_asked,
        blobs_repaired=report.blobs_repaired,
        remaining_count=final.damaged_count,
        remaining_files=_file_problems(final.damaged_files),
        remaining_files_count=final.damaged_files_count,
        remaining_unlisted=final.unlisted,
        notes=report.notes,
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
        audit_score=peer.audit_score,
        uptime_score=peer.uptime_score,
        checks_passed=peer.checks_passed,
        checks_failed=peer.checks_failed,
        last_check=int(peer.last_check),
        chat_key_fingerprint=peer.chat_key_fingerprint,
    )


def _contract(info: ContractInfo) -> clirpc_pb2.ContractInfo:
    return clirpc_pb2.ContractInfo(
        contract_id=info.contract_id,
        peer=info.peer,
        state=info.state,
        our_bytes=info.our_bytes,
        their_bytes=info.their_bytes,
        audit_score=info.audit_score,
        uptime_score=info.uptime_score,
        last_check=int(info.last_check),
        stored_bytes=info.stored_bytes,
        peer_revision=info.peer_revision,
        last_check_passed=info.last_check_passed,
        last_verdict=info.last_verdict,
        next_check=int(info.next_check),
        detail=info.detail,
        we_proposed=info.we_proposed,
        since=int(info.since),
        created_at=info.created_at,
    )


def _storage(report: StorageReport) -> clirpc_pb2.GetStorageConfigResponse:
    response = clirpc_pb2.GetStorageConfigResponse(
        total_bytes=report.total_bytes,
        min_replicas=report.min_replicas,
        used_bytes=report.used_bytes,
        free_bytes=report.free_bytes,
        obligated_bytes=report.obligated_bytes,
        acceptance_policy=report.acceptance_policy,
    )
    for obligation in report.obligations:
        response.obligations.add(
            onion_address=obligation.onion_address,
            revision=obligation.revision,
            stored_bytes=obligation.stored_bytes,
            granted_bytes=obligation.granted_bytes,
            contract_id=obligation.contract_id,
            state=obligation.state,
        )
    return response


def _source_info(source: Source) -> clirpc_pb2.SourceInfo:
    return clirpc_pb2.SourceInfo(
        path=source.path, name=source.name, excludes=list(source.excludes)
    )


def _schedule_info(state: ScheduleState) -> clirpc_pb2.ScheduleInfo:
    return clirpc_pb2.ScheduleInfo(
        every_seconds=state.every_seconds,
        next_run=int(state.next_run) if state.next_run is not None else 0,
        running=state.running,
        run_queued=state.run_queued,
    )


def _run_info(outcome: RunOutcome) -> clirpc_pb2.BackupRunInfo:
    record = outcome.to_record()
    info = clirpc_pb2.BackupRunInfo()
    # The stored record and the message have the same fields and numbers.
    info.ParseFromString(record.SerializeToString())
    return info


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
