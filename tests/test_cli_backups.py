"""The real CLI and daemon: sources, schedule, ``backup now`` on a pty, a
pipe and ``--json``, and ``status --check`` exit codes."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.cli.status_line import EXIT_AT_RISK
from barterbackup.testing.daemon import BIN
from tests.passwords import STRONG
from tests.util import short_tempdir, tcp_daemon


class CliBackupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = short_tempdir(self)
        self.node_dir = self.tmp / "node"
        self.daemon = tcp_daemon(self, self.node_dir)
        self.folder = self.tmp / "Documents"
        (self.folder / "notes").mkdir(parents=True)
        for index in range(30):
            (self.folder / "notes" / f"n{index:02d}.txt").write_bytes(
                os.urandom(index * 3000)
            )
        os.mkfifo(self.folder / "pipe")

    def cli(self, *args: str) -> tuple[int, str, str]:
        result = self.daemon.cli(*args)
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    def unlock(self) -> None:
        password = self.tmp / "password"
        password.write_text(STRONG + "\n")
        code, _, err = self.cli("unlock", "--create", "--password-file", str(password))
        self.assertEqual(code, 0, err)

    def command(self, *args: str) -> list[str]:
        return [str(BIN / "barterbackup"), "--node-dir", str(self.node_dir), *args]

    def test_status_check_exit_codes_sources_and_schedule(self) -> None:
        code, out, _ = self.cli("status", "--check")
        self.assertEqual((code, out.strip()), (EXIT_AT_RISK, _locked_line()))
        self.unlock()
        code, out, _ = self.cli("status", "--check")
        self.assertEqual(code, EXIT_AT_RISK)
        self.assertIn("nothing backed up yet", out)
        self.cli("sources", "add", str(self.folder))
        code, _, err = self.cli("backup", "now", "--quiet")
        self.assertEqual(code, 0, err)
        code, out, _ = self.cli("status", "--check", "--json")
        self.assertEqual(code, EXIT_AT_RISK)
        status = json.loads(out)
        self.assertTrue(status["at_risk"])
        self.assertIn("under-replicated: 0 of 2", status["headline"])
        self.assertEqual(status["source_count"], 1)
        self.assertEqual(status["last_backup"]["trigger"], "now")
        self.assertGreater(int(status["revision_time"]), 0)
        self.assertIn("(just now)", status["headline"])
        code, out, _ = self.cli("status")
        self.assertEqual(code, 0)  # without --check: the state, not a verdict
        self.assertIn("last run:", out)
        self.check_sources_and_schedule()
        self.daemon.stop()
        code, _, _ = self.cli("status", "--check")
        self.assertEqual(code, 3)

    def check_sources_and_schedule(self) -> None:
        code, out, err = self.cli("sources", "add", str(self.folder), "--replace")
        self.assertEqual(code, 0, err)
        self.assertIn(f"Documents: {self.folder}", out)
        code, out, _ = self.cli("sources", "list", "--json")
        self.assertEqual(json.loads(out)[0]["path"], str(self.folder))
        code, _, err = self.cli("sources", "add", str(self.tmp / "missing"))
        self.assertEqual(code, 1)
        self.assertIn("does not exist", err)
        code, _, err = self.cli("sources", "add", str(self.tmp), "--exclude", "[x")
        self.assertEqual(code, 1)
        self.assertIn("is not closed", err)
        code, out, _ = self.cli("schedule", "set", "--every", "1h")
        self.assertEqual(code, 0)
        self.assertIn("every 1h", out)
        code, _, err = self.cli("schedule", "set", "--every", "10s")
        self.assertEqual(code, 1)
        self.assertIn("at most once a minute", err)
        code, _, err = self.cli("schedule", "set", "--every", "soon")
        self.assertEqual(code, 2)
        code, out, _ = self.cli("schedule", "show", "--json")
        self.assertEqual(int(json.loads(out)["every_seconds"]), 3600)
        code, out, _ = self.cli("sources", "rm", str(self.folder))
        self.assertEqual(code, 0)
        code, _, err = self.cli("backup", "now")
        self.assertEqual(code, 1)
        self.assertIn("sources add", err + _)

    def test_backup_now_on_a_pipe_as_json_and_on_a_terminal(self) -> None:
        self.unlock()
        self.cli("sources", "add", str(self.folder))
        code, out, err = self.cli("backup", "now")
        self.assertEqual(code, 0, err)
        self.assertRegex(
            out.strip(), r"^revision 1: 30 files, .* read, .* new; 1 skipped$"
        )
        lines = err.splitlines()
        # A pipe: no carriage returns, one progress line (the run is under
        # 10 s), and the warning on a line of its own.
        self.assertNotIn("\r", err)
        self.assertEqual(
            [line for line in lines if line.startswith("skipped")],
            [f"skipped {self.folder / 'pipe'}: FIFO"],
        )
        self.assertEqual(len([line for line in lines if line.startswith("backup")]), 1)
        code, out, err = self.cli("backup", "now", "--json")
        self.assertEqual((code, err), (0, ""))
        events = [json.loads(line) for line in out.splitlines()]
        self.assertEqual({e["type"] for e in events[:-1]}, {"progress", "message"})
        result = events[-1]
        self.assertEqual(result["type"], "result")
        self.assertEqual(
            (result["ok"], result["committed"], result["revision"], result["files"]),
            (True, False, 1, 30),
        )
        self.assertEqual(result["warning_count"], 1)
        self.assertEqual(events[0]["phase"], "scanning")
        self.assertIn("done", [e.get("phase") for e in events])
        code, out, err = self.cli("backup", "now", "--quiet")
        self.assertEqual((code, err), (0, f"skipped {self.folder / 'pipe'}: FIFO\n"))
        self.assertEqual(out.strip(), "no changes; revision 1 kept; 1 skipped")
        self.check_terminal()

    def backup_on_a_terminal(self) -> tuple[int, bytes, bytes]:
        master, slave = os.openpty()
        process = subprocess.Popen(
            self.command("backup", "now"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        screen = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                screen += chunk
            elif process.poll() is not None:
                break
        os.close(master)
        out, _ = process.communicate(timeout=30)
        return process.returncode, out, screen

    def check_terminal(self) -> None:
        (self.folder / "new.txt").write_bytes(b"new")
        code, out, screen = self.backup_on_a_terminal()
        self.assertEqual(code, 0)
        self.assertIn(b"revision 2", out)
        text = screen.decode()
        # One line redrawn in place: carriage returns, clear-to-end, and the
        # line ended once before the warning.
        self.assertIn("\r", text)
        self.assertIn("\x1b[K", text)
        self.assertIn("backup: ", text)
        self.assertIn("files", text)
        progress, _, rest = text.partition("\n")
        self.assertNotIn("\n", progress.replace("\r\n", ""))
        self.assertIn("skipped", rest)


def _locked_line() -> str:
    return "at risk: locked: nothing is backed up until `barterbackup unlock`"
