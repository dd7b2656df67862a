"""Run a real ``twistd barterbackup`` daemon in a subprocess (tests, benches,
the demo).

Synchronous on purpose: the daemon is another process, so a test may block
while waiting for it. Every wait is bounded.

    daemon = DaemonProcess(node_dir, log_path=tmp / "daemon.log")
    daemon.start()                      # waits until the CLI socket answers
    daemon.cli("status", "--json")      # the real CLI, as a user runs it
    daemon.stub().ListFiles(...)        # or the gRPC stub directly
    daemon.stop()                       # SIGTERM, then SIGKILL after a bound
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from barterbackup._proto import clirpc_pb2, clirpc_pb2_grpc
from barterbackup.paths import default_socket_path
from barterbackup.rpc.client import GRPC_OPTIONS

BIN = Path(sys.executable).parent


class DaemonFailed(RuntimeError):
    pass


class DaemonProcess:
    def __init__(
        self,
        node_dir: Path,
        *,
        log_path: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.node_dir = Path(node_dir)
        self.log_path = Path(log_path)
        self.socket_path = default_socket_path(self.node_dir)
        self.extra_args = list(extra_args)
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None

    def command(self) -> list[str]:
        return [
            str(BIN / "twistd"),
            "--nodaemon",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "barterbackup",
            "--node-dir",
            str(self.node_dir),
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path.with_suffix(".stderr"), "wb"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DaemonFailed(
                    f"daemon exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                self.stub().GetStatus(clirpc_pb2.GetStatusRequest(), timeout=2)
                return self
            except grpc.RpcError:
                time.sleep(0.1)
        self.kill()
        raise DaemonFailed(f"daemon not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for path in (self.log_path, self.log_path.with_suffix(".stderr")):
            try:
                text += path.read_text(errors="replace")
            except OSError:
                pass
        return "\n".join(text.splitlines()[-lines:])

    def stub(self) -> clirpc_pb2_grpc.CliRpcStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                f"unix:{self.socket_path}", options=GRPC_OPTIONS
            )
        return clirpc_pb2_grpc.CliRpcStub(self._channel)

    def cli(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = 120.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real ``barterbackup`` command against this daemon."""
        result = subprocess.run(
            [str(BIN / "barterbackup"), "--node-dir", str(self.node_dir), *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            env=self.env,
        )
        if check and result.returncode != 0:
            raise DaemonFailed(
                f"barterbackup {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        self._close_channel()
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise DaemonFailed(
                f"daemon ignored SIGTERM for {timeout} s:\n{self.log_tail()}"
            ) from None

    def kill(self) -> None:
        self._close_channel()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid
