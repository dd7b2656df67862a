"""``barterbackup recover`` and the recovery line of ``status``: the command
against a canned stub, then the real CLI against a real daemon."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import clirpc_pb2
from barterbackup.cli import recover, status
from barterbackup.cli.common import CliError
from barterbackup.cli.main import build_parser
from barterbackup.testing.daemon import DaemonProcess
from tests.passwords import STRONG
from tests.util import short_tempdir

ALICE = "aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4bqead.onion"
BOB = "jh6rvh4fiwn5mtit57ptar6kbk5dfh3xfapol2jdcyhguvvjfllaioqd.onion"


def progress(phase: str, peer: str = "", **fields: Any) -> Any:
    return clirpc_pb2.RecoverContentResponse(
        progress=clirpc_pb2.Progress(phase=phase, peer=peer, **fields)
    )


class Stub:
    def __init__(self, unlocked: bool, events: list[Any]) -> None:
        self.unlocked = unlocked
        self.events = events
        self.requests: list[tuple[str, Any]] = []

    def GetStatus(self, request: Any) -> clirpc_pb2.GetStatusResponse:
        self.requests.append(("GetStatus", request))
        return clirpc_pb2.GetStatusResponse(unlocked=self.unlocked)

    def Unlock(self, request: Any) -> clirpc_pb2.UnlockResponse:
        self.requests.append(("Unlock", request))
        return clirpc_pb2.UnlockResponse(onion_address=ALICE, created=True)

    def RecoverContent(self, request: Any) -> Any:
        self.requests.append(("RecoverContent", request))
        return iter(self.events)


TOTAL = 4 * 2**20
RECOVERED = [
    progress("waiting for replicas"),
    progress("fetching node state", revision=7),
    progress("fetching", revision=7, bytes_total=TOTAL, message="from 2 replicas"),
    progress("fetching", BOB, revision=7, bytes_done=2**20, bytes_total=TOTAL),
    progress("fetching", revision=7, bytes_done=2**20, bytes_total=TOTAL),
    progress("fetching", ALICE, message="dropped: sent a blob that does not verify"),
    progress("verifying", revision=7, bytes_done=TOTAL, bytes_total=TOTAL),
    progress("installing", revision=7, bytes_done=TOTAL, bytes_total=TOTAL),
    progress(
        "done",
        revision=7,
        bytes_done=TOTAL,
        bytes_total=TOTAL,
        message="revision 7 recovered from 1 replicas",
    ),
]


class RecoverCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.password_file = Path(self.mktemp())
        self.password_file.write_text(STRONG + "\n")

    def run_cli(self, stub: Stub, *argv: str) -> tuple[int, str, str]:
        for module in (recover, status):
            self.patch(module, "stub", lambda args: stub)
        args = build_parser().parse_args(list(argv))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = int(args.run(args))
        return code, out.getvalue(), err.getvalue()

    def test_locked_node_is_unlocked_or_created_then_followed(self) -> None:
        stub = Stub(unlocked=False, events=RECOVERED)
        code, out, err = self.run_cli(
            stub,
            "recover",
            "--password-file",
            str(self.password_file),
            "--from",
            BOB,
        )
        self.assertEqual(code, 0)
        names = [name for name, _ in stub.requests]
        self.assertEqual(names, ["GetStatus", "Unlock", "RecoverContent"])
        unlock = stub.requests[1][1]
        self.assertEqual((unlock.password, unlock.create_if_missing), (STRONG, True))
        self.assertEqual(list(stub.requests[2][1].peers), [BOB])
        self.assertEqual(out.strip(), "revision 7 recovered from 1 replicas")
        self.assertIn(f"node created and unlocked: {ALICE}", err)
        self.assertIn(f"{ALICE}: dropped: sent a blob that does not verify", err)

    def test_unlocked_node_is_not_asked_for_a_password(self) -> None:
        stub = Stub(unlocked=True, events=RECOVERED)
        code, _, _ = self.run_cli(stub, "recover", "--revision", "7")
        self.assertEqual(code, 0)
        self.assertEqual(
            [name for name, _ in stub.requests], ["GetStatus", "RecoverContent"]
        )
        self.assertEqual(stub.requests[1][1].revision, 7)

    def test_json_lines_per_replica_and_overall_then_the_result(self) -> None:
        stub = Stub(unlocked=True, events=RECOVERED)
        code, out, _ = self.run_cli(stub, "recover", "--json")
        self.assertEqual(code, 0)
        lines = [json.loads(line) for line in out.splitlines()]
        phases = [(e["key"], e["phase"]) for e in lines if e["type"] == "progress"]
        self.assertIn(("", "fetching"), phases)
        self.assertIn((BOB, "fetching"), phases)
        self.assertEqual(phases[-1], ("", "done"))
        [warning] = [e for e in lines if e["type"] == "message"]
        self.assertEqual(warning["level"], "warning")
        self.assertEqual(
            lines[-1],
            {
                "type": "result",
                "ok": True,
                "phase": "done",
                "revision": 7,
                "message": "revision 7 recovered from 1 replicas",
            },
        )

    def test_a_failed_recovery_fails_the_command(self) -> None:
        events = [progress("waiting for replicas"), progress("failed", message="x")]
        with self.assertRaises(CliError) as caught:
            self.run_cli(Stub(unlocked=True, events=events), "recover")
        self.assertIn("recovery failed: x", str(caught.exception))
        with self.assertRaises(CliError):
            self.run_cli(Stub(unlocked=True, events=events[:1]), "recover")

    def test_status_shows_the_recovery_in_progress(self) -> None:
        answer = clirpc_pb2.GetStatusResponse(
            unlocked=True,
            recovery=clirpc_pb2.Progress(
                phase="fetching",
                revision=7,
                bytes_done=2**20,
                bytes_total=TOTAL,
                bytes_per_second=2**19,
                eta_seconds=6,
            ),
        )

        class StatusStub:
            def GetStatus(self, request: Any) -> clirpc_pb2.GetStatusResponse:
                return answer

        self.patch(status, "stub", lambda args: StatusStub())
        args = build_parser().parse_args(["status"])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            args.run(args)
        self.assertIn(
            "recovery:  fetching, revision 7, 1.0 MiB of 4.0 MiB, 512.0 KiB/s, ETA 6 s",
            out.getvalue(),
        )


class RecoverDaemonTests(SynchronousTestCase):
    """A new node directory unlocked with --create waits for its replicas
    by itself (a lost machine, maybe); its first files end the wait."""

    def setUp(self) -> None:
        self.tmp = short_tempdir(self)
        self.daemon = DaemonProcess(
            self.tmp / "node",
            log_path=self.tmp / "daemon.log",
            extra_args=["--transport", "tcp"],
        )
        self.daemon.start()
        self.addCleanup(self.daemon.kill)
        self.password_file = self.tmp / "password"
        self.password_file.write_text(STRONG + "\n")

    def cli(self, *args: str) -> tuple[int, str, str]:
        result = self.daemon.cli(*args)
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    def test_empty_node_waits_for_replicas_until_its_first_files(self) -> None:
        code, _, err = self.cli(
            "unlock", "--create", "--password-file", str(self.password_file)
        )
        self.assertEqual(code, 0, err)
        code, out, _ = self.cli("status", "--json")
        self.assertEqual(json.loads(out)["recovery"]["phase"], "waiting for replicas")
        code, out, _ = self.cli("status")
        self.assertIn("recovery:  waiting for replicas", out)
        source = self.tmp / "a.txt"
        source.write_bytes(b"alpha\n")
        code, _, err = self.cli("files", "add", str(source))
        self.assertEqual(code, 0, err)
        code, out, _ = self.cli("status", "--json")
        self.assertNotIn("recovery", json.loads(out))
        # RecoverContent on a node with content: an older revision is refused.
        code, _, err = self.cli("recover", "--revision", "1")
        self.assertEqual(code, 1)
        self.assertIn("not newer than the current revision 1", err)
