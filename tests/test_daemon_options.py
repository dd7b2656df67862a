"""The daemon's command line: defaults, and bad values refused clearly."""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.tap import Options
from barterbackup.transport.onion import OnionDefences


class DaemonOptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        node_dir = Path(self.mktemp()).resolve()
        socket = "/tmp/bb-options-test.sock"
        options.parseOptions(["--node-dir", str(node_dir), "--socket", socket, *argv])
        return options

    def refused(self, *argv: str) -> str:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(*argv)
        return str(caught.exception)

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(options["transport"], "tor")
        self.assertEqual(options["tcp-port"], 0)
        self.assertEqual(options["onion-defences"], OnionDefences())
        self.assertTrue(options["onion-defences"].proof_of_work)

    def test_onion_defences(self) -> None:
        options = self.parse(
            "--no-onion-pow",
            "--onion-pow-rate=10",
            "--onion-pow-burst=20",
            "--onion-max-streams=0",
        )
        self.assertEqual(
            options["onion-defences"],
            OnionDefences(
                proof_of_work=False,
                pow_queue_rate=10,
                pow_queue_burst=20,
                max_streams_per_circuit=0,
            ),
        )

    def test_bad_values_refused(self) -> None:
        self.assertIn("--onion-pow-rate", self.refused("--onion-pow-rate=lots"))
        self.assertIn("at least the rate", self.refused("--onion-pow-burst=1"))
        self.assertIn("0..65535", self.refused("--onion-max-streams=-2"))
        self.assertIn("--tcp-port", self.refused("--tcp-port=70000"))
        self.assertIn("--transport", self.refused("--transport=udp"))
        self.assertIn("--log-level", self.refused("--log-level=loud"))
        self.assertIn("IPv4", self.refused("--tcp-interface=localhost"))
        self.assertIn("--tcp-trusted-lan", self.refused("--tcp-interface=192.168.1.5"))

    def test_trusted_lan(self) -> None:
        options = self.parse("--tcp-interface=192.168.1.5", "--tcp-trusted-lan")
        self.assertEqual(options["tcp-interface"], "192.168.1.5")
        self.assertTrue(options["tcp-trusted-lan"])
