"""contrib/systemd/barterbackup.service: what it runs, and systemd's verdict.

``systemd-analyze verify --user`` checks the unit as the user manager would
load it, including that ExecStart's twistd exists: it runs with a scratch
HOME holding a stand-in twistd where the unit expects the virtualenv, so the
shipped file is verified unchanged. Any warning (an unknown or misspelt
option prints one but still exits 0) fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.util import short_tempdir

UNIT = Path(__file__).resolve().parent.parent / "contrib/systemd/barterbackup.service"
VENV_TWISTD = ".local/share/barterbackup/venv/bin/twistd"


def service_settings(text: str) -> dict[str, list[str]]:
    """The [Service] and [Install] assignments (key → values, in order)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


class UnitContentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.settings = service_settings(UNIT.read_text())

    def test_runs_twistd_in_the_foreground_on_the_node_directory(self) -> None:
        (command,) = self.settings["Service.ExecStart"]
        self.assertTrue(command.startswith(f"%h/{VENV_TWISTD} -n "), command)
        self.assertIn(" barterbackup --node-dir %h/.barterbackup", command)
        self.assertIn("--pidfile= ", command)

    def test_lifecycle(self) -> None:
        self.assertEqual(self.settings["Install.WantedBy"], ["default.target"])
        self.assertEqual(self.settings["Service.Restart"], ["on-failure"])
        self.assertEqual(self.settings["Service.KillSignal"], ["SIGTERM"])

    def test_sandbox_leaves_the_node_directory_writable(self) -> None:
        self.assertEqual(self.settings["Service.ProtectSystem"], ["strict"])
        self.assertEqual(self.settings["Service.ReadWritePaths"], ["%h/.barterbackup"])
        self.assertEqual(self.settings["Service.NoNewPrivileges"], ["yes"])
        self.assertNotIn("Service.ProtectHome", self.settings)  # sources are there
        families = self.settings["Service.RestrictAddressFamilies"][0].split()
        self.assertTrue({"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families))


class VerifyTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("systemd-analyze") is None:
            raise self.skipTest("systemd-analyze is not installed (Debian: systemd)")
        self.scratch = short_tempdir(self)
        home = self.scratch / "home"
        twistd = home / VENV_TWISTD
        twistd.parent.mkdir(parents=True)
        twistd.write_text("#!/bin/sh\nexit 0\n")
        twistd.chmod(0o755)
        (home / ".barterbackup").mkdir(mode=0o700)
        runtime = self.scratch / "run"
        runtime.mkdir(mode=0o700)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(runtime),
            "LC_ALL": "C",
        }

    def verify(self, text: str) -> subprocess.CompletedProcess[str]:
        unit = self.scratch / "barterbackup.service"
        unit.write_text(text)
        return subprocess.run(
            [
                "systemd-analyze",
                "verify",
                "--user",
                "--man=no",
                "--generators=no",
                str(unit),
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_the_shipped_unit_verifies_cleanly(self) -> None:
        result = self.verify(UNIT.read_text())
        self.assertEqual(
            (result.returncode, result.stdout + result.stderr), (0, ""), "verify"
        )

    def test_verify_catches_mistakes(self) -> None:
        # The check can fail: a misspelt option and a missing twistd.
        text = UNIT.read_text()
        result = self.verify(text.replace("Restart=", "Restrat=", 1))
        self.assertIn("Unknown key", result.stderr)
        result = self.verify(text.replace("venv/bin/twistd", "venv/bin/twistd-gone"))
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("is not executable", result.stderr)
