"""``barterbackup restore`` and ``barterbackup check``: the real CLI against a
real ``twistd barterbackup`` daemon, output and exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.testing.daemon import BIN
from tests.passwords import STRONG
from tests.util import short_tempdir, tcp_daemon

MTIME_NS = 1_650_000_000_000_000_000


class CliRestoreCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = short_tempdir(self)
        self.node_dir = self.tmp / "node"
        self.daemon = tcp_daemon(self, self.node_dir)
        password = self.tmp / "password"
        password.write_text(STRONG + "\n")
        self.cli("unlock", "--create", "--password-file", str(password), ok=True)

    def cli(self, *args: str, ok: bool = False) -> tuple[int, str, str]:
        result = self.daemon.cli(*args)
        code, out, err = (
            result.returncode,
            result.stdout.decode(),
            result.stderr.decode(),
        )
        if ok:
            self.assertEqual(code, 0, err)
        return code, out, err

    def add_tree(self) -> dict[str, bytes]:
        source = self.tmp / "photos"
        (source / "2024").mkdir(parents=True)
        files = {
            "photos/a.txt": b"alpha\n",
            "photos/2024/b.bin": os.urandom(300_000),
            "photos/run.sh": b"#!/bin/sh\n",
        }
        for name, data in files.items():
            path = self.tmp / name
            path.write_bytes(data)
            os.utime(path, ns=(MTIME_NS, MTIME_NS))
        (self.tmp / "photos/run.sh").chmod(0o750)
        self.cli("files", "add", str(source), ok=True)
        return files

    def test_restore(self) -> None:
        files = self.add_tree()
        target = self.tmp / "restored"
        code, out, err = self.cli("restore", str(target), ok=True)
        self.assertIn("restored 3 files (", out)
        self.assertIn(f"of revision 1 into {target}", out)
        for name, data in files.items():
            self.assertEqual((target / name).read_bytes(), data, name)
            self.assertEqual((target / name).stat().st_mtime_ns, MTIME_NS)
        self.assertEqual(stat.S_IMODE((target / "photos/run.sh").stat().st_mode), 0o750)
        # On a pipe: at most a line of progress, never a redrawn bar.
        self.assertNotIn("\r", err)

        (target / "photos/a.txt").write_bytes(b"changed by me\n")
        code, out, err = self.cli("restore", str(target), ok=True)
        self.assertIn("restored 0 files", out)
        self.assertIn("kept 3 existing files", out)
        self.assertIn("kept: photos/a.txt", out)
        self.assertEqual((target / "photos/a.txt").read_bytes(), b"changed by me\n")
        code, out, err = self.cli("restore", str(target), "photos/a.txt", "--overwrite")
        self.assertEqual(code, 0, err)
        self.assertIn("restored 1 files", out)
        self.assertEqual((target / "photos/a.txt").read_bytes(), files["photos/a.txt"])

        # --json, a selection, and a name that matches nothing.
        target = self.tmp / "some"
        code, out, err = self.cli(
            "restore", str(target), "photos/2024", "nope", "--json"
        )
        self.assertEqual(code, 1, err)
        self.assertIn("1 names matched no file", err)
        lines = [json.loads(line) for line in out.splitlines()]
        result = lines[-1]
        self.assertEqual(result["type"], "result")
        self.assertFalse(result["ok"])
        self.assertEqual(result["files_restored"], 1)
        self.assertEqual(result["not_found"], ["nope"])
        self.assertTrue(all(line["type"] == "progress" for line in lines[:-1]))
        self.assertEqual(
            sorted(p.name for p in (target / "photos").iterdir()), ["2024"]
        )
        # A relative DIR is the CLI's, not the daemon's.
        work = self.tmp / "work"
        work.mkdir()
        result = subprocess.run(
            [BIN / "barterbackup", "--node-dir", self.node_dir, "restore", "out"],
            cwd=work,
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual((work / "out/photos/a.txt").read_bytes(), b"alpha\n")
        self.assertTrue((work / "out/photos/2024/b.bin").exists())
        # Only stored revisions can be restored.
        code, _, err = self.cli("restore", str(self.tmp / "x"), "--revision", "7")
        self.assertEqual(code, 1)
        self.assertIn("revision 7 is not stored here", err)
        self.assertFalse((self.tmp / "x").exists())

    def test_check(self) -> None:
        self.add_tree()
        code, out, err = self.cli("check", ok=True)
        self.assertIn("checked revisions 1:", out)
        self.assertIn("no damage found", out)
        code, out, _ = self.cli("check", "--read-data", ok=True)
        self.assertIn("read and hashed", out)

        self.flip_a_bit_of("photos/2024/b.bin")
        # Present with the right length: only --read-data sees it.
        self.cli("check", ok=True)
        code, out, err = self.cli("check", "--read-data")
        self.assertEqual(code, 1, out)
        self.assertIn("DAMAGED: 1 blobs; 1 damaged files:", out)
        self.assertIn("revision 1: photos/2024/b.bin: section", out)
        self.assertIn("1 files are damaged (--repair fetches them from replicas)", err)

        code, out, err = self.cli("check", "--read-data", "--repair", "--json")
        self.assertEqual(code, 1)
        result = json.loads(out.splitlines()[-1])
        self.assertEqual(result["type"], "result")
        self.assertFalse(result["ok"])
        self.assertEqual(result["blobs_repaired"], 0)
        self.assertEqual(
            [f["name"] for f in result["remaining_files"]], ["photos/2024/b.bin"]
        )
        self.assertIn("no peer keeps our content", " ".join(result["notes"]))
        self.assertEqual(len(result["damaged"][0]["sha256"]), 64)

        target = self.tmp / "restored"
        code, out, err = self.cli("restore", str(target))
        self.assertEqual(code, 1)
        self.assertIn("FAILED: photos/2024/b.bin:", out)
        self.assertIn("1 files could not be restored", err)
        self.assertEqual((target / "photos/a.txt").read_bytes(), b"alpha\n")
        self.assertFalse((target / "photos/2024/b.bin").exists())

    def flip_a_bit_of(self, name: str) -> None:
        """Flip a bit inside the file's first section, on disk.

        The big file's sections are the first bytes of the only pack whose
        first bytes are not the small files' (the pack is written in the
        order the CLI sent the files: sorted, photos/2024/b.bin first).
        """
        self.assertEqual(name, "photos/2024/b.bin")
        packs = sorted((self.node_dir / "content" / "packs").glob("*.pack"))
        self.assertEqual(len(packs), 1)
        with open(packs[0], "r+b") as pack:
            pack.seek(1000)
            byte = pack.read(1)[0]
            pack.seek(1000)
            pack.write(bytes([byte ^ 0x01]))
