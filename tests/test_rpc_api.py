"""Every clirpc method over the real Unix socket: locked, unlocked, errors."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from barterbackup._proto import clirpc_pb2 as pb
from barterbackup._proto import clirpc_pb2_grpc
from barterbackup.node.results import NodeConfig
from barterbackup.paths import default_socket_path
from barterbackup.rpc.client import GRPC_OPTIONS
from barterbackup.rpc.server import CliRpcServer
from tests.passwords import OTHER_STRONG, STRONG, WEAK
from tests.util import short_tempdir, start_node

Call = Callable[[clirpc_pb2_grpc.CliRpcStub], Any]

# One minimal, well-formed call per clirpc method.
# The source folder AddSource names: each test's own small directory (set
# in setUp), never a shared one such as /tmp, whose size BackupNow would pay.
SOURCE = [""]
CALLS: dict[str, Call] = {
    "GetStatus": lambda s: s.GetStatus(pb.GetStatusRequest()),
    "ConnectPeer": lambda s: s.ConnectPeer(
        pb.ConnectPeerRequest(
            onion_address="aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4bqead.onion",
            endpoint="tcp:127.0.0.1:1",
        )
    ),
    "ConnectedPeers": lambda s: s.ConnectedPeers(pb.ConnectedPeersRequest()),
    "DiscoverPeers": lambda s: s.DiscoverPeers(pb.DiscoverPeersRequest()),
    "SetFile": lambda s: s.SetFile(
        iter(
            [
                pb.SetFileRequest(header=pb.FileHeader(name="a.txt")),
                pb.SetFileRequest(data=b"hello"),
            ]
        )
    ),
    "AddPaths": lambda s: list(
        s.AddPaths(
            pb.AddPathsRequest(
                paths=[pb.PathToAdd(path="/nonexistent/a", name="a", inode=1)]
            )
        )
    ),
    "StatFiles": lambda s: s.StatFiles(pb.StatFilesRequest(names=["a.txt"])),
    "GetFile": lambda s: list(s.GetFile(pb.GetFileRequest(name="a.txt"))),
    "ListFiles": lambda s: list(s.ListFiles(pb.ListFilesRequest())),
    "SetStorageConfig": lambda s: s.SetStorageConfig(
        pb.SetStorageConfigRequest(total_bytes=10**9, min_replicas=2)
    ),
    "GetStorageConfig": lambda s: s.GetStorageConfig(pb.GetStorageConfigRequest()),
    "ReplicateContent": lambda s: list(
        s.ReplicateContent(pb.ReplicateContentRequest())
    ),
    "GetContracts": lambda s: s.GetContracts(pb.GetContractsRequest()),
    "ProposeContract": lambda s: list(
        s.ProposeContract(pb.ProposeContractRequest(peer="x.onion"))
    ),
    "CheckContract": lambda s: list(s.CheckContract(pb.CheckContractRequest())),
    "EndContract": lambda s: s.EndContract(pb.EndContractRequest(peer="x.onion")),
    "AnswerContract": lambda s: s.AnswerContract(
        pb.AnswerContractRequest(contract_id=b"c" * 32)
    ),
    # A bad address ends the stream at once (a recovery waits for replicas).
    "RecoverContent": lambda s: list(
        s.RecoverContent(pb.RecoverContentRequest(peers=["not-an-onion"]))
    ),
    "SetAeadKeyForPeer": lambda s: s.SetAeadKeyForPeer(
        pb.SetAeadKeyForPeerRequest(
            peer="aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4bqead.onion",
            aead_key=b"k" * 32,
        )
    ),
    "Chat": lambda s: list(
        s.Chat(
            iter(
                [
                    pb.ChatAction(
                        peer="aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4bqead.onion",
                        init=pb.ChatInit(),
                    ),
                    pb.ChatAction(stop=pb.ChatStop()),
                ]
            )
        )
    ),
    "ListChats": lambda s: s.ListChats(pb.ListChatsRequest()),
    "AddSource": lambda s: s.AddSource(pb.AddSourceRequest(path=SOURCE[0])),
    "ListSources": lambda s: s.ListSources(pb.ListSourcesRequest()),
    "RemoveSource": lambda s: s.RemoveSource(pb.RemoveSourceRequest(path=SOURCE[0])),
    "SetSchedule": lambda s: s.SetSchedule(pb.SetScheduleRequest(every_seconds=60)),
    "GetSchedule": lambda s: s.GetSchedule(pb.GetScheduleRequest()),
    "BackupNow": lambda s: list(s.BackupNow(pb.BackupNowRequest())),
    "RestoreFiles": lambda s: list(
        s.RestoreFiles(pb.RestoreFilesRequest(directory="/nonexistent/restore"))
    ),
    "CheckContent": lambda s: list(s.CheckContent(pb.CheckContentRequest())),
}


def every_clirpc_method() -> set[str]:
    service = pb.DESCRIPTOR.services_by_name["CliRpc"]
    return {m.name for m in service.methods}


class RpcTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.node_dir = short_tempdir(self) / "node"
        source = Path(self.mktemp()).resolve()
        source.mkdir(parents=True)
        (source / "note.txt").write_text("a small source folder\n")
        SOURCE[0] = str(source)
        self.node = start_node(
            reactor, NodeConfig(node_dir=self.node_dir, transport="tcp")
        )
        self.server = CliRpcServer(
            reactor, self.node, default_socket_path(self.node_dir)
        )
        self.server.startService()
        self.addCleanup(lambda: self.node.stopService())
        self.addCleanup(lambda: self.server.stopService())
        channel = grpc.insecure_channel(
            f"unix:{self.server.socket_path}", options=GRPC_OPTIONS
        )
        self.addCleanup(channel.close)
        self.stub = clirpc_pb2_grpc.CliRpcStub(channel)

    def call(self, fn: Call) -> Any:
        """Run a blocking gRPC call off the reactor thread (the servicer
        needs the reactor to answer)."""
        return deferToThread(fn, self.stub)

    async def status_of(self, fn: Call) -> Any:
        try:
            await self.call(fn)
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""

    def unlock(self, password: str = STRONG, create: bool = True) -> Any:
        return self.call(
            lambda s: s.Unlock(
                pb.UnlockRequest(password=password, create_if_missing=create)
            )
        )


class LockedNodeTests(RpcTestCase):
    def test_calls_cover_every_method(self) -> None:
        self.assertEqual(set(CALLS) | {"Unlock"}, every_clirpc_method())

    async def test_every_method_but_unlock_says_locked(self) -> None:
        for name, fn in CALLS.items():
            if name == "GetStatus":
                continue
            code, details = await self.status_of(fn)
            self.assertEqual(code, grpc.StatusCode.FAILED_PRECONDITION, name)
            self.assertIn("node is locked", details, name)

    async def test_status_reports_locked(self) -> None:
        status = await self.call(CALLS["GetStatus"])
        self.assertFalse(status.unlocked)
        self.assertEqual(status.onion_address, "")

    async def test_weak_password_refused(self) -> None:
        code, details = await self.status_of(
            lambda s: s.Unlock(pb.UnlockRequest(password=WEAK, create_if_missing=True))
        )
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("too weak", details)
        self.assertNotIn(WEAK, details)
        self.assertFalse((self.node_dir / "identity").exists())

    async def test_new_directory_needs_create(self) -> None:
        code, details = await self.status_of(
            lambda s: s.Unlock(pb.UnlockRequest(password=STRONG))
        )
        self.assertEqual(code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("barterbackup init", details)

    def test_socket_directory_is_private(self) -> None:
        directory = self.server.socket_path.parent
        self.assertEqual(stat.S_IMODE(directory.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(self.server.socket_path.stat().st_mode), 0o600)
        self.assertTrue(stat.S_ISSOCK(self.server.socket_path.stat().st_mode))


class UnlockedNodeTests(RpcTestCase):
    async def test_unlock_then_status(self) -> None:
        response = await self.unlock()
        self.assertTrue(response.created)
        self.assertTrue(response.onion_address.endswith(".onion"))
        status = await self.call(CALLS["GetStatus"])
        self.assertTrue(status.unlocked)
        self.assertEqual(status.onion_address, response.onion_address)
        # Unlocking again with the same password is harmless.
        again = await self.unlock()
        self.assertFalse(again.created)
        self.assertEqual(again.onion_address, response.onion_address)

    async def test_wrong_password_after_unlock(self) -> None:
        await self.unlock()
        code, details = await self.status_of(
            lambda s: s.Unlock(pb.UnlockRequest(password=OTHER_STRONG))
        )
        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(details, "wrong password")

    async def test_built_methods_do_not_answer_unimplemented(self) -> None:
        await self.unlock()
        for name, fn in sorted(CALLS.items()):
            code, details = await self.status_of(fn)
            self.assertNotIn(
                code,
                (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL),
                f"{name}: {details}",
            )

    async def test_file_round_trip_and_errors(self) -> None:
        await self.unlock()
        response = await self.call(CALLS["SetFile"])
        self.assertEqual(response.revision, 1)
        self.assertEqual(response.files_written, 1)
        self.assertEqual(response.bytes_written, 5)
        names = await self.call(CALLS["ListFiles"])
        self.assertEqual([n for batch in names for n in batch.names], ["a.txt"])
        chunks = await self.call(CALLS["GetFile"])
        self.assertEqual(b"".join(c.data for c in chunks), b"hello")
        self.assertEqual(chunks[0].size, 5)
        code, _ = await self.status_of(
            lambda s: list(s.GetFile(pb.GetFileRequest(name="missing")))
        )
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND)
        for bad in ("../etc/passwd", "/abs", "a/../b", "nul\x00byte", ""):
            code, details = await self.status_of(
                lambda s, bad=bad: s.SetFile(
                    iter([pb.SetFileRequest(header=pb.FileHeader(name=bad))])
                )
            )
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, repr(bad))
            self.assertTrue(details)
        # Data before any header, and an empty stream, are refused.
        code, _ = await self.status_of(
            lambda s: s.SetFile(iter([pb.SetFileRequest(data=b"x")]))
        )
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        code, _ = await self.status_of(lambda s: s.SetFile(iter([])))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        # None of the refused streams made a revision.
        status = await self.call(CALLS["GetStatus"])
        self.assertEqual(status.revision, 1)

    async def test_unchanged_set_file_keeps_the_revision(self) -> None:
        await self.unlock()
        first = await self.call(CALLS["SetFile"])
        self.assertTrue(first.changed)
        again = await self.call(CALLS["SetFile"])
        self.assertEqual((again.changed, again.revision), (False, first.revision))
        status = await self.call(CALLS["GetStatus"])
        self.assertEqual((status.revision, status.file_count), (1, 1))

    async def test_many_names_stream_in_batches(self) -> None:
        await self.unlock()
        names = [f"dir/{i:05d}" for i in range(12_000)]
        requests = [
            pb.SetFileRequest(
                header=pb.FileHeader(name=name, mtime_ns=i, ctime_ns=i, inode=i + 1)
            )
            for i, name in enumerate(names)
        ]
        response = await self.call(lambda s: s.SetFile(iter(requests), timeout=120))
        self.assertEqual(response.files_written, len(names))
        batches = await self.call(CALLS["ListFiles"])
        self.assertGreater(len(batches), 1)
        self.assertEqual([n for batch in batches for n in batch.names], names)

    async def test_remove_file(self) -> None:
        await self.unlock()
        await self.call(CALLS["SetFile"])
        response = await self.call(
            lambda s: s.SetFile(
                iter(
                    [pb.SetFileRequest(header=pb.FileHeader(name="a.txt", remove=True))]
                )
            )
        )
        self.assertEqual(response.files_removed, 1)
        names = await self.call(CALLS["ListFiles"])
        self.assertEqual([n for batch in names for n in batch.names], [])


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under root with its mode and (for files) its bytes."""
    result = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            info = path.lstat()
            data = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
            result[str(path.relative_to(root))] = (info.st_mode, data)
    return result


class WrongPasswordTests(RpcTestCase):
    async def test_wrong_password_changes_nothing(self) -> None:
        await self.unlock()
        await self.call(CALLS["SetFile"])
        # A fresh daemon on the same directory, still locked.
        await self.server.stopService()
        await self.node.stopService()
        self.node = start_node(
            reactor, NodeConfig(node_dir=self.node_dir, transport="tcp")
        )
        self.server = CliRpcServer(
            reactor, self.node, default_socket_path(self.node_dir)
        )
        self.server.startService()
        before = snapshot(self.node_dir)
        code, details = await self.status_of(
            lambda s: s.Unlock(
                pb.UnlockRequest(password=OTHER_STRONG, create_if_missing=True)
            )
        )
        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(details, "wrong password")
        self.assertEqual(snapshot(self.node_dir), before)
        status = await self.call(CALLS["GetStatus"])
        self.assertFalse(status.unlocked)
        # The right password still opens it, with the file intact.
        await self.unlock(create=False)
        chunks = await self.call(CALLS["GetFile"])
        self.assertEqual(b"".join(c.data for c in chunks), b"hello")


class TamperedNodeTests(RpcTestCase):
    async def test_tampered_metadata_is_a_clear_data_loss(self) -> None:
        await self.unlock()
        await self.call(CALLS["SetFile"])
        await self.server.stopService()
        await self.node.stopService()
        sealed = self.node_dir / "metadata.sealed"
        data = bytearray(sealed.read_bytes())
        data[len(data) // 2] ^= 0x01
        sealed.write_bytes(bytes(data))
        self.node = start_node(
            reactor, NodeConfig(node_dir=self.node_dir, transport="tcp")
        )
        self.server = CliRpcServer(
            reactor, self.node, default_socket_path(self.node_dir)
        )
        self.server.startService()
        code, details = await self.status_of(
            lambda s: s.Unlock(pb.UnlockRequest(password=STRONG))
        )
        self.assertEqual(code, grpc.StatusCode.DATA_LOSS)
        self.assertIn("metadata.sealed", details)
        status = await self.call(CALLS["GetStatus"])
        self.assertFalse(status.unlocked)
