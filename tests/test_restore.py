"""Restoring a revision's files to a directory (recovery.restore)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content.engine import ContentStore, RevisionNotKept
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.progress import Progress
from barterbackup.recovery.restore import (
    TEMP_PREFIX,
    RestoreOutcome,
    Restorer,
    RestoreRefused,
    TargetDirectory,
    UnsafePath,
    check_selection,
)
from barterbackup.testing import damage
from barterbackup.testing.stores import open_content_store

KEYS = node_keys_from_master(bytes(range(3, 35)))
MTIME = 1_700_000_000_123_456_789

FILES = {
    "photos/2024/a.jpg": os.urandom(150_000),
    "photos/2024/b.jpg": os.urandom(70_000),
    "photos/readme.txt": b"hello\n",
    "photos-old/c.txt": b"not under photos/\n",
    "docs/empty": b"",
    "script.sh": b"#!/bin/sh\necho hi\n",
}
MODES = {"script.sh": 0o6755, "photos/readme.txt": 0o600}


class RestoreCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = open_content_store(Path(self.mktemp()), KEYS)
        self.addCleanup(self.store.close)
        self.commit(FILES)
        self.target = Path(self.mktemp()).absolute()

    def commit(self, files: dict[str, bytes]) -> None:
        update = self.store.begin_update()
        for index, (name, data) in enumerate(sorted(files.items())):
            writer = update.add_file(
                name, mode=MODES.get(name, 0o644), mtime_ns=MTIME + index
            )
            writer.write(data)
            writer.close()
        update.commit()

    def restore(
        self,
        names: list[str] | None = None,
        overwrite: bool = False,
        revision: int = 0,
        events: list[Progress] | None = None,
        store: ContentStore | None = None,
    ) -> RestoreOutcome:
        sink = events if events is not None else []
        return Restorer(
            store or self.store,
            self.target,
            names or [],
            revision,
            overwrite,
            sink.append,
        ).run()

    def restored(self) -> dict[str, bytes]:
        found = {}
        for path in self.target.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found[path.relative_to(self.target).as_posix()] = path.read_bytes()
        return found

    def temp_files(self) -> list[Path]:
        return [p for p in self.target.rglob(f"{TEMP_PREFIX}*")]


class RestoreTests(RestoreCase):
    def test_every_file_byte_for_byte_with_modes_and_mtimes(self) -> None:
        events: list[Progress] = []
        outcome = self.restore(events=events)
        self.assertTrue(outcome.ok, outcome)
        self.assertEqual(outcome.files_restored, len(FILES))
        self.assertEqual(outcome.bytes_restored, sum(map(len, FILES.values())))
        self.assertEqual(self.restored(), FILES)
        for index, name in enumerate(sorted(FILES)):
            info = (self.target / name).stat()
            self.assertEqual(info.st_mtime_ns, MTIME + index, name)
        # setuid and setgid are never restored; the other bits are.
        self.assertEqual(
            stat.S_IMODE((self.target / "script.sh").stat().st_mode), 0o755
        )
        self.assertEqual(
            stat.S_IMODE((self.target / "photos/readme.txt").stat().st_mode), 0o600
        )
        self.assertEqual(
            stat.S_IMODE((self.target / "photos/2024/a.jpg").stat().st_mode), 0o644
        )
        # Directories the restore made are private.
        self.assertEqual(stat.S_IMODE((self.target / "photos").stat().st_mode), 0o700)
        self.assertEqual(self.temp_files(), [])
        last = events[-1]
        self.assertEqual(last.phase, "done")
        self.assertEqual((last.files_done, last.files_total), (6, 6))
        self.assertEqual(last.bytes_done, last.bytes_total)
        self.assertEqual(last.bytes_total, sum(map(len, FILES.values())))

    def test_selected_files_and_directory_prefixes(self) -> None:
        outcome = self.restore(["photos/", "script.sh", "nothing/here"])
        self.assertEqual(
            sorted(self.restored()),
            [
                "photos/2024/a.jpg",
                "photos/2024/b.jpg",
                "photos/readme.txt",
                "script.sh",
            ],
        )
        # "photos" selects photos/…, never photos-old/….
        self.assertFalse((self.target / "photos-old").exists())
        self.assertEqual(outcome.not_found, ["nothing/here"])
        self.assertFalse(outcome.ok)
        self.assertEqual(
            self.restore(["photos/2024/b.jpg"]).kept, ["photos/2024/b.jpg"]
        )

    def test_existing_files_are_kept_without_overwrite(self) -> None:
        self.target.mkdir()
        (self.target / "script.sh").write_bytes(b"mine")
        outcome = self.restore()
        self.assertEqual(outcome.kept, ["script.sh"])
        self.assertEqual(outcome.kept_count, 1)
        self.assertEqual(outcome.files_restored, len(FILES) - 1)
        self.assertTrue(outcome.ok)
        self.assertEqual((self.target / "script.sh").read_bytes(), b"mine")
        outcome = self.restore(overwrite=True)
        self.assertEqual((outcome.kept, outcome.files_restored), ([], len(FILES)))
        self.assertEqual((self.target / "script.sh").read_bytes(), FILES["script.sh"])

    def test_a_directory_in_the_way_fails_that_file(self) -> None:
        (self.target / "script.sh").mkdir(parents=True)
        outcome = self.restore(overwrite=True)
        self.assertEqual([f.name for f in outcome.failed], ["script.sh"])
        self.assertIn("directory", outcome.failed[0].reason)
        self.assertEqual(outcome.files_restored, len(FILES) - 1)

    def test_a_symlink_in_the_directory_is_never_followed(self) -> None:
        outside = Path(self.mktemp()).absolute()
        outside.mkdir()
        (outside / "victim").write_bytes(b"keep me")
        self.target.mkdir()
        # A directory of the file set is a link to elsewhere...
        (self.target / "photos").symlink_to(outside, target_is_directory=True)
        # ...and a file of it is a link to a file elsewhere.
        (self.target / "script.sh").symlink_to(outside / "victim")
        outcome = self.restore(overwrite=True)
        failed = sorted(f.name for f in outcome.failed)
        self.assertEqual(
            failed, ["photos/2024/a.jpg", "photos/2024/b.jpg", "photos/readme.txt"]
        )
        self.assertTrue(all("symbolic link" in f.reason for f in outcome.failed))
        self.assertEqual(sorted(p.name for p in outside.iterdir()), ["victim"])
        self.assertEqual((outside / "victim").read_bytes(), b"keep me")
        # The link at script.sh was replaced by the file, not written through.
        self.assertFalse((self.target / "script.sh").is_symlink())
        self.assertEqual((self.target / "script.sh").read_bytes(), FILES["script.sh"])
        self.assertEqual(
            (self.target / "photos-old/c.txt").read_bytes(), FILES["photos-old/c.txt"]
        )

    def test_a_symlinked_file_is_kept_not_followed_without_overwrite(self) -> None:
        outside = Path(self.mktemp()).absolute()
        outside.mkdir()
        (outside / "victim").write_bytes(b"keep me")
        self.target.mkdir()
        (self.target / "script.sh").symlink_to(outside / "victim")
        outcome = self.restore(["script.sh"])
        self.assertEqual(outcome.kept, ["script.sh"])
        self.assertTrue((self.target / "script.sh").is_symlink())
        self.assertEqual((outside / "victim").read_bytes(), b"keep me")

    def test_a_damaged_section_fails_only_its_file(self) -> None:
        [first, *_] = damage.section_hashes(self.store, "photos/2024/a.jpg")
        damage.flip_bit(self.store, first, 1000)
        events: list[Progress] = []
        outcome = self.restore(events=events)
        self.assertEqual([f.name for f in outcome.failed], ["photos/2024/a.jpg"])
        self.assertIn("photos/2024/a.jpg", outcome.failed[0].reason)
        self.assertIn("section 0", outcome.failed[0].reason)
        self.assertEqual(outcome.files_restored, len(FILES) - 1)
        self.assertNotIn("photos/2024/a.jpg", self.restored())
        self.assertEqual(self.temp_files(), [])
        self.assertFalse(outcome.ok)
        self.assertEqual(events[-1].phase, "failed")

    def test_an_older_stored_revision(self) -> None:
        first = self.store.current
        assert first is not None
        self.commit({"script.sh": b"new\n"})
        outcome = self.restore(["script.sh"], revision=first.number)
        self.assertEqual(outcome.revision, first.number)
        self.assertEqual((self.target / "script.sh").read_bytes(), FILES["script.sh"])
        self.commit({"script.sh": b"newer\n"})
        with self.assertRaises(RevisionNotKept):
            self.restore(revision=first.number)

    def test_the_directory_must_be_absolute(self) -> None:
        with self.assertRaises(RestoreRefused):
            Restorer(self.store, Path("relative/dir"), [], 0).run()


class PathCheckTests(SynchronousTestCase):
    """Every component is checked again, whatever the store let in."""

    def test_names_that_escape_are_refused(self) -> None:
        target = TargetDirectory(Path(self.mktemp()).absolute())
        self.addCleanup(target.close)
        for name in ("../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", ""):
            with self.assertRaises(UnsafePath, msg=name):
                target.write(name, lambda: iter([b"x"]), 0o644, 0, True, len)
        self.assertEqual(list(target.path.iterdir()), [])

    def test_selections_that_escape_are_refused(self) -> None:
        for name in ("../x", "/abs", "a/../b", "a\\b"):
            with self.assertRaises(RestoreRefused, msg=name):
                check_selection([name])
        self.assertEqual(check_selection(["a/b/", "c"]), ["a/b", "c"])
