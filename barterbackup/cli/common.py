"""What every CLI command shares: connecting, errors, output, progress."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from barterbackup._proto import clirpc_pb2, clirpc_pb2_grpc
from barterbackup.cli import output
from barterbackup.cli.output import Output, report_progress_events
from barterbackup.paths import default_node_dir, default_socket_path
from barterbackup.rpc.client import DaemonUnreachable, connect

# Exit codes scripts can rely on (documented in the README).
EXIT_OK = 0
EXIT_FAILED = 1  # the daemon refused or the operation failed
EXIT_USAGE = 2  # bad command line (argparse uses 2 as well)
EXIT_NO_DAEMON = 3  # the daemon is not running or its socket is not accessible

T = TypeVar("T")


class CliError(Exception):
    """An error to print (without a traceback) and exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def socket_path(args: argparse.Namespace) -> Path:
    try:
        if args.socket:
            return Path(args.socket).expanduser()
        node_dir = (
            Path(args.node_dir).expanduser() if args.node_dir else default_node_dir()
        )
    except RuntimeError as e:
        # expanduser of "~nosuchuser/x": a usage error, not a traceback.
        raise CliError(f"bad --node-dir or --socket: {e}", EXIT_USAGE) from None
    return default_socket_path(node_dir)


def stub(args: argparse.Namespace) -> clirpc_pb2_grpc.CliRpcStub:
    try:
        _channel, client = connect(socket_path(args))
    except DaemonUnreachable as e:
        raise CliError(str(e), EXIT_NO_DAEMON) from None
    return client


def rpc(call: Callable[[], T]) -> T:
    """Run one RPC, turning a gRPC error into a CliError with its message."""
    try:
        return call()
    except grpc.RpcError as e:
        raise rpc_error(e) from None


def rpc_error(e: grpc.RpcError) -> CliError:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CliError(f"lost the daemon: {details}", EXIT_NO_DAEMON)
    return CliError(str(details or code))


def write_output_file(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` so that a failure leaves no partial file.

    The bytes go to a temporary file beside ``path`` (mode 0600), which is
    synced and renamed over ``path`` only once every chunk arrived.
    """
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False
    )
    try:
        with handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def print_json(value: object, out: TextIO | None = None) -> None:
    json.dump(value, out or sys.stdout, indent=2, sort_keys=True)
    (out or sys.stdout).write("\n")


# Sizes travel as uint64.
MAX_SIZE = 2**64 - 1
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}


def parse_size(text: str) -> int:
    """'10G', '512MiB', '1.5 GB', '4096' → bytes (argparse type)."""
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else None
    if not match or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"not a size: {_quoted(text)} (examples: 4096, 500M, 10GiB)"
        )
    # Exact: float() of 400 digits is infinity (OverflowError, which
    # argparse does not catch), and 1e20 does not fit the uint64 it becomes.
    size = int(Fraction(match.group(1)) * _UNITS[unit])
    if size > MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"a size is at most {MAX_SIZE} bytes, not {_quoted(text)}"
        )
    return size


def _quoted(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:60]) + "…"


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_time(unix: int) -> str:
    if not unix:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


class ProgressBar:
    """Progress of one transfer on stderr, drawn by ``cli.output``: one
    updating line on a terminal, at most a line every 10 s otherwise."""

    def __init__(self, label: str, total: int = 0, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.total = total
        self.done = 0
        self._output = Output(
            output.TERMINAL if self.enabled else output.PLAIN, self.stream, sys.stdout
        )

    def update(
        self, done: int, total: int | None = None, label: str | None = None
    ) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if label is not None:
            self.label = label
        self._output.progress(done, self.total, label=self.label)

    def finish(self) -> None:
        self._output.finish()


def show_progress_stream(
    events: Iterator[clirpc_pb2.Progress], label: str, quiet_json: bool = False
) -> list[clirpc_pb2.Progress]:
    """Draw streamed Progress events (one key per peer); return them all."""
    mode = output.QUIET
    if not quiet_json:
        mode = output.TERMINAL if sys.stderr.isatty() else output.PLAIN
    return report_progress_events(events, Output(mode, sys.stderr, sys.stdout), label)
