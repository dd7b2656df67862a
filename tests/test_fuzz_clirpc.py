"""Fuzzing clirpc: every method of the service, with requests generated
from its message descriptors, sent over the real gRPC server on a Unix
socket to the real servicer and a real node.

Every call must end with a gRPC status a user can act on (OK,
INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND, UNIMPLEMENTED, ...):
never UNKNOWN or INTERNAL (an exception nobody expected), never a hang
(DEADLINE_EXCEEDED), and the node answers GetStatus afterwards. Methods
are found in the service descriptor, so methods other branches add are
fuzzed too. The nodes reach peers over the in-memory network of the
no-network swarm: nothing a request names is dialled on a real network.
See docs/wire-protocol.md, "Fuzzing".
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import grpc
from hypothesis import example
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.trial.unittest import TestCase

from barterbackup._proto import clirpc_pb2, clirpc_pb2_grpc
from barterbackup.node.facade import Node
from barterbackup.node.results import NodeConfig
from barterbackup.node.session import NodeEnvironment
from barterbackup.paths import default_socket_path
from barterbackup.rpc.client import GRPC_OPTIONS
from barterbackup.rpc.server import CliRpcServer
from barterbackup.testing.link import keys_for_test
from barterbackup.testing.swarm import (
    PASSWORD_STEM,
    MemoryNetwork,
    MemoryTransport,
    cheap_keys,
)
from tests.fuzzing import HOSTILE_TEXT, fuzz_target, messages, texts, without_fsync
from tests.util import short_tempdir

SERVICE = clirpc_pb2.DESCRIPTOR.services_by_name["CliRpc"]
# Every status a request may end with. UNKNOWN and INTERNAL mean an
# exception escaped; DEADLINE_EXCEEDED means the call hung.
ACCEPTED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.OUT_OF_RANGE,
}
# Far beyond any honest call here (everything is local and in memory): a
# call still running then is a hang, not a slow machine.
CALL_DEADLINE = 60.0
# RecoverContent waits for replicas as long as none has answered (a node
# that lost everything must): here none ever will, so a well-formed request
# runs until its deadline. It gets a short one, and running until then is
# its honest outcome (the recovery goes on in the background, one at most).
WAITING_METHODS = {"RecoverContent": 3.0}
NAMES = ["a.txt", "dir/b.bin", "é/ü", "x" * 255]
STRANGER = keys_for_test(7).onion_address
METHODS = SERVICE.methods_by_name
# Inputs the fuzzer found bugs with (kept as regression tests).
PINNED = [
    # A file name of 20,000 characters, quoted in the NOT_FOUND message:
    # the trailer passed gRPC's 16 KiB limit and the CLI saw
    # RESOURCE_EXHAUSTED "Stream removed" instead of NOT_FOUND.
    (METHODS["GetFile"], clirpc_pb2.GetFileRequest(name="x" * 20000)),
    (
        METHODS["ConnectPeer"],
        clirpc_pb2.ConnectPeerRequest(onion_address="é" * 70000),
    ),
]


def _paths(sandbox: Path) -> st.SearchStrategy[str]:
    """Paths for fields that name folders on this machine.

    Absolute ones stay inside the test's sandbox (AddSource of "/" then
    BackupNow would read the whole machine once sources are wired);
    relative and hostile shapes are sent as they are.
    """
    relative = st.one_of(
        st.sampled_from([t for t in HOSTILE_TEXT if not t.startswith("/")]),
        texts().filter(lambda t: not t.startswith("/")),
    )
    inside = st.one_of(
        st.sampled_from(["", "a", "a/..", "../..", "missing", "node", "file"]),
        relative,
    ).map(lambda rest: f"{sandbox}/{rest}")
    return st.one_of(relative, inside)


def _file_streams(overrides: dict[str, Any]) -> st.SearchStrategy[list[Any]]:
    """SetFile streams shaped as the CLI sends them (a header, then data),
    with fuzzed names, modes and bytes: most commit, so reads find files."""
    header = messages(
        clirpc_pb2.FileHeader.DESCRIPTOR,
        overrides={**overrides, "remove": st.sampled_from([False, False, True])},
    )
    data = st.binary(max_size=3000).map(lambda b: clirpc_pb2.SetFileRequest(data=b))
    one_file = st.tuples(
        header.map(lambda h: clirpc_pb2.SetFileRequest(header=h)),
        st.lists(data, max_size=3),
    ).map(lambda pair: [pair[0], *pair[1]])
    return st.lists(one_file, min_size=1, max_size=3).map(
        lambda files: [request for one in files for request in one]
    )


# Client streams in the shape a real client sends, besides random ones.
PLAUSIBLE_STREAMS = {"SetFile": _file_streams}


def requests(addresses: list[str], sandbox: Path) -> st.SearchStrategy[Any]:
    """(method, request or list of requests) for every method of CliRpc."""
    address = st.one_of(st.sampled_from(addresses), texts())
    overrides = {
        "onion_address": address,
        "peer": address,
        "onion_addresses[]": st.lists(address, max_size=3),
        "name": st.one_of(st.sampled_from(NAMES), texts()),
        "path": _paths(sandbox),
        # RestoreFiles and ChatAccept write there: never outside the sandbox
        # (a relative directory is refused, so those are sent as they are).
        "directory": _paths(sandbox),
        "password": st.one_of(
            st.sampled_from([f"{PASSWORD_STEM}0", f"{PASSWORD_STEM}9", ""]), texts()
        ),
    }

    def for_method(method: Any) -> st.SearchStrategy[Any]:
        message = messages(method.input_type, depth=3, overrides=overrides)
        if method.client_streaming:
            stream = st.lists(message, max_size=4)
            if method.name in PLAUSIBLE_STREAMS:
                stream = st.one_of(stream, PLAUSIBLE_STREAMS[method.name](overrides))
            return stream.map(lambda m: (method, m))
        return message.map(lambda m: (method, m))

    return st.one_of([for_method(method) for method in SERVICE.methods])


def invoke(stub: Any, method: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    """Call ``method``; its final status and details (streams read to the
    end)."""
    call = getattr(stub, method.name)
    argument = iter(request) if method.client_streaming else request
    deadline = WAITING_METHODS.get(method.name, CALL_DEADLINE)
    try:
        result = call(argument, timeout=deadline)
        if method.server_streaming:
            for _ in result:
                pass
    except grpc.RpcError as error:
        return error.code(), error.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


class ClirpcFuzz(TestCase):
    """Two daemons' CLI sockets: one unlocked node, one locked."""

    timeout = 3600  # the long profile runs many thousands of calls

    def node(self, node_dir: Path, network: MemoryNetwork) -> Node:
        pool = reactor.getThreadPool()

        def blocking(work: Any) -> Deferred[Any]:
            return deferToThreadPool(reactor, pool, work)

        env = NodeEnvironment(
            clock=reactor,
            blocking=blocking,
            make_transport=lambda keys: MemoryTransport(network, keys.onion_address),
            derive_keys=cheap_keys,
            rng=random.Random(0),
        )
        node = Node(env, NodeConfig(node_dir=node_dir, transport="memory"))
        node.startService()
        self.addCleanup(node.stopService)
        return node

    def serve(self, node: Node, node_dir: Path) -> Any:
        server = CliRpcServer(reactor, node, default_socket_path(node_dir))
        server.startService()
        self.addCleanup(server.stopService)
        channel = grpc.insecure_channel(
            f"unix:{server.socket_path}", options=GRPC_OPTIONS
        )
        self.addCleanup(channel.close)
        return clirpc_pb2_grpc.CliRpcStub(channel)

    async def asyncSetUp(self) -> None:
        root = short_tempdir(self)
        self.sandbox = root / "sandbox"
        (self.sandbox / "a").mkdir(parents=True)
        (self.sandbox / "file").write_bytes(b"x")
        network = MemoryNetwork()
        # A peer to connect and replicate to.
        peer = self.node(root / "peer", network)
        await peer.unlock(f"{PASSWORD_STEM}1", create_if_missing=True)
        await peer.session.network.ready()
        unlocked = self.node(root / "node", network)
        await unlocked.unlock(f"{PASSWORD_STEM}0", create_if_missing=True)
        await unlocked.session.network.ready()
        # Set up under another password, then restarted locked.
        locked_dir = root / "locked"
        first = self.node(locked_dir, network)
        await first.unlock(f"{PASSWORD_STEM}2", create_if_missing=True)
        await first.stopService()
        locked = self.node(locked_dir, network)
        self.stubs = {
            True: self.serve(unlocked, root / "node"),
            False: self.serve(locked, locked_dir),
        }
        self.addresses = [
            peer.session.keys.onion_address,
            unlocked.session.keys.onion_address,
            STRANGER,
            STRANGER.upper(),
            STRANGER[:-7],
        ]

    def setUp(self) -> Deferred[None]:
        without_fsync(self)
        return Deferred.fromCoroutine(self.asyncSetUp())

    def test_every_method_ends_with_a_status(self) -> Deferred[None]:
        # gRPC calls block: the fuzz runs in a thread, the node on the reactor.
        strategy = requests(self.addresses, self.sandbox)
        body = ClirpcFuzz.one_call
        for pinned in PINNED:
            body = example(call=pinned, unlocked=True)(body)
        run = fuzz_target(
            "clirpc.requests",
            call=strategy,
            unlocked=st.booleans(),
        )(body)
        return deferToThread(run, self)

    def one_call(self, call: tuple[Any, Any], unlocked: bool) -> None:
        method, request = call
        stub = self.stubs[unlocked]
        before = _state(stub)
        code, details = invoke(stub, method, request)
        accepted = set(ACCEPTED_CODES)
        if method.name in WAITING_METHODS:
            accepted.add(grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertIn(code, accepted, f"{method.name} ended with {code}")
        # The status is the node's, not the transport's: the node's answer
        # reached the caller (details gRPC writes itself start this way).
        # A waiting method's own deadline is the caller's: gRPC words its
        # end either way ("Deadline Exceeded", "Stream removed (Deadline
        # Exceeded)") depending on where the stream was when it struck.
        if code != grpc.StatusCode.DEADLINE_EXCEEDED:
            self.assertFalse(
                details.startswith("Stream removed"), f"{method.name}: {details}"
            )
        # The node still answers, in the state it was in.
        status = stub.GetStatus(clirpc_pb2.GetStatusRequest(), timeout=CALL_DEADLINE)
        self.assertEqual(status.unlocked, unlocked)
        if code != grpc.StatusCode.OK:
            # A refused request changed nothing: content, storage settings,
            # sources and schedule are as they were.
            self.assertEqual(_state(stub), before, f"{method.name} refused: {code}")


def _state(stub: Any) -> tuple[Any, ...]:
    """What a refused request must leave alone, as the CLI sees it."""
    status = stub.GetStatus(clirpc_pb2.GetStatusRequest(), timeout=CALL_DEADLINE)
    try:
        sources = stub.ListSources(
            clirpc_pb2.ListSourcesRequest(), timeout=CALL_DEADLINE
        ).SerializeToString(deterministic=True)
        storage = stub.GetStorageConfig(
            clirpc_pb2.GetStorageConfigRequest(), timeout=CALL_DEADLINE
        ).SerializeToString(deterministic=True)
    except grpc.RpcError as error:  # locked: refused, and says so
        sources = storage = str(error.code()).encode()  # type: ignore[attr-defined]
    return (
        status.revision,
        status.file_count,
        status.content_length,
        status.min_replicas,
        status.source_count,
        status.schedule.SerializeToString(deterministic=True),
        sources,
        storage,
    )
