"""The CLI socket's directory: private, and never someone else's changed."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.rpc.server import SocketPathError, prepare_socket_directory


class SocketDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir()

    def mode(self, path: Path) -> int:
        return path.stat().st_mode & 0o777

    def test_a_new_directory_is_created_private(self) -> None:
        directory = prepare_socket_directory(self.base / "new", owned=False)
        self.assertEqual(self.mode(directory), 0o700)

    def test_an_open_directory_is_refused_and_left_alone(self) -> None:
        shared = self.base / "shared"
        shared.mkdir()
        os.chmod(shared, 0o1777)  # like /tmp
        with self.assertRaises(SocketPathError) as caught:
            prepare_socket_directory(shared, owned=False)
        self.assertIn("0700", str(caught.exception))
        self.assertEqual(shared.stat().st_mode & 0o7777, 0o1777)

    def test_a_private_directory_of_ours_is_used_as_it_is(self) -> None:
        private = self.base / "private"
        private.mkdir(mode=0o700)
        self.assertEqual(prepare_socket_directory(private, owned=False), private)

    def test_the_node_directorys_own_is_set_back_to_private(self) -> None:
        own = self.base / "rpc"
        own.mkdir()
        os.chmod(own, 0o755)
        prepare_socket_directory(own, owned=True)
        self.assertEqual(self.mode(own), 0o700)
