"""ContentStore: round trips, determinism, incremental cost, names, gc."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfastcdc.cy import FastCDC
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content import engine
from barterbackup.content.engine import (
    ContentStore,
    FileNotInSet,
    InvalidFileName,
    UpdateInProgress,
)
from barterbackup.content.sections import (
    SECTION_AVERAGE_BYTES,
    SECTION_MAX_BYTES,
    SECTION_MIN_BYTES,
    content_sha256,
)
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.revisions import (
    sign_revision,
    sign_revision_lean,
    verify_revision,
)
from barterbackup.testing.stores import open_content_store

KEYS = node_keys_from_master(bytes(range(1, 33)))
OTHER_KEYS = node_keys_from_master(bytes(range(2, 34)))


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class StoreTestCase(SynchronousTestCase):
    def open_store(self, node_dir: Path | None = None) -> ContentStore:
        if node_dir is None:
            node_dir = Path(self.mktemp())
        store = open_content_store(node_dir, KEYS)
        self.addCleanup(store.close)
        return store

    def commit_files(
        self, store: ContentStore, files: dict[str, bytes], piece: int = 100_000
    ) -> engine.CommitResult:
        update = store.begin_update()
        for name, data in files.items():
            writer = update.add_file(name, mode=0o640, mtime=1234)
            for start in range(0, len(data), piece):
                writer.write(data[start : start + piece])
            writer.close()
        return update.commit()

    def read_back(self, store: ContentStore) -> dict[str, bytes]:
        return {name: b"".join(store.read_file(name)) for name in store.list_files()}


class RoundTripTests(StoreTestCase):
    def test_sizes_round_trip(self) -> None:
        sizes = [0, 1, SECTION_MIN_BYTES - 1, SECTION_MIN_BYTES, SECTION_MIN_BYTES + 1]
        sizes += [SECTION_MAX_BYTES - 1, SECTION_MAX_BYTES, SECTION_MAX_BYTES + 1]
        sizes += [engine.BATCH_BYTES - 1, engine.BATCH_BYTES, engine.BATCH_BYTES + 1]
        sizes += [3 * engine.BATCH_BYTES + 12345]
        files = {f"f{size}": random_bytes(size, size) for size in sizes}
        store = self.open_store()
        result = self.commit_files(store, files, piece=777_777)
        self.assertEqual(result.revision.number, 1)
        self.assertEqual(result.files_written, len(files))
        self.assertEqual(self.read_back(store), files)
        self.assertEqual(result.content_length, sum(sizes))
        # Reopening reads the same back.
        self.assertEqual(self.read_back(self.open_store(store._dir.parent)), files)

    def test_many_small_files(self) -> None:
        files = {
            f"dir{i % 7}/file{i}.txt": f"content {i}\n".encode() * i for i in range(300)
        }
        store = self.open_store()
        self.commit_files(store, files)
        self.assertEqual(store.list_files(), sorted(files))
        self.assertEqual(self.read_back(store), files)
        entry = store.file_entry("dir3/file10.txt")
        self.assertEqual((entry.size, entry.mode, entry.mtime), (110, 0o640, 1234))

    def test_sections_match_whole_file_chunking(self) -> None:
        """Cutting batch by batch gives the sections of a one-shot cut."""
        data = random_bytes(2 * engine.BATCH_BYTES + 99_999, 7)
        store = self.open_store()
        self.commit_files(store, {"f": data}, piece=65_521)
        chunker = FastCDC(
            SECTION_AVERAGE_BYTES,
            min_size=SECTION_MIN_BYTES,
            max_size=SECTION_MAX_BYTES,
        )
        expected = [chunk.length for chunk in chunker.cut_buf(data)]
        assert store.current is not None
        self.assertEqual([s.length for s in store.current.revision.sections], expected)

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        st.dictionaries(
            st.text("abc/é", min_size=1, max_size=8).filter(
                lambda n: all(p not in ("", ".", "..") for p in n.split("/"))
            ),
            st.binary(max_size=3000),
            max_size=6,
        )
    )
    def test_random_small_file_sets(self, files: dict[str, bytes]) -> None:
        store = self.open_store()
        self.commit_files(store, files)
        self.assertEqual(self.read_back(store), files)

    def test_revision_is_signed_and_consistent(self) -> None:
        store = self.open_store()
        result = self.commit_files(store, {"a": random_bytes(200_000)})
        verified = verify_revision(result.revision.signed, KEYS.onion_pubkey)
        revision = verified.revision
        self.assertEqual(
            revision.content_sha256,
            content_sha256((s.length, s.sha256) for s in revision.sections),
        )
        metadata = store.metadata.get()
        self.assertEqual(metadata.revision, 1)
        self.assertEqual(metadata.content_id, verified.content_id)
        self.assertEqual(metadata.content_sha256, revision.content_sha256)
        self.assertEqual(metadata.content_length, 200_000)
        # The engine's lean signing gives exactly sign_revision's bytes.
        self.assertEqual(
            sign_revision(revision, KEYS.signing_key).signed, result.revision.signed
        )
        self.assertEqual(
            sign_revision_lean(revision, KEYS.signing_key).signed,
            result.revision.signed,
        )
        manifest = store.open_revision(verified)
        self.assertEqual([f.name for f in manifest.files], ["a"])
        # The content blob is the sections in table order: all are served.
        for ref in revision.sections:
            self.assertEqual(len(store.read_section(ref.sha256)), ref.length)
            self.assertTrue(store.has_section(ref.sha256))


class UpdateTests(StoreTestCase):
    def test_unchanged_sections_keep_their_ciphertext(self) -> None:
        data = bytearray(random_bytes(1_000_000, 3))
        store = self.open_store()
        first = self.commit_files(store, {"f": bytes(data)}).revision.revision
        data[500_000:500_010] = b"0123456789"
        second = self.commit_files(store, {"f": bytes(data)}).revision.revision
        old = {s.sha256 for s in first.sections}
        new = {s.sha256 for s in second.sections}
        self.assertGreater(len(old & new), len(old) - 4)
        self.assertTrue(new - old)

    def test_same_plaintext_other_key_other_ciphertext(self) -> None:
        data = random_bytes(100_000, 4)
        store = self.open_store()
        mine = self.commit_files(store, {"f": data}).revision.revision
        other = open_content_store(Path(self.mktemp()), OTHER_KEYS)
        self.addCleanup(other.close)
        update = other.begin_update()
        writer = update.add_file("f")
        writer.write(data)
        writer.close()
        theirs = update.commit().revision.revision
        self.assertEqual(
            [s.length for s in mine.sections], [s.length for s in theirs.sections]
        )
        self.assertFalse(
            {s.sha256 for s in mine.sections} & {s.sha256 for s in theirs.sections}
        )

    def test_different_plaintext_different_ciphertext(self) -> None:
        store = self.open_store()
        revision = self.commit_files(
            store, {"a": b"A" * 5000, "b": b"B" * 5000, "c": b"A" * 5000}
        ).revision.revision
        hashes = [s.sha256 for s in revision.sections]
        self.assertEqual(len(hashes), 3)
        self.assertEqual(hashes[0], hashes[2])  # same plaintext, same section
        self.assertNotEqual(hashes[0], hashes[1])
        # Deduplicated: stored once.
        self.assertEqual(
            self.commit_files(store, {"d": b"A" * 5000}).new_section_bytes, 0
        )

    def test_adding_small_file_is_incremental(self) -> None:
        store = self.open_store()
        big = {f"big{i}": random_bytes(3_000_000, i) for i in range(3)}
        self.commit_files(store, big)
        read_before = store.bytes_read
        result = self.commit_files(store, {"small": random_bytes(10_000, 99)})
        self.assertEqual(store.bytes_read, read_before)  # nothing else was read
        self.assertEqual(result.new_section_bytes, 10_000)
        self.assertEqual(result.files_written, 1)
        self.assertEqual(
            self.read_back(store), {**big, "small": random_bytes(10_000, 99)}
        )

    def test_replace_and_remove(self) -> None:
        store = self.open_store()
        self.commit_files(store, {"a": b"1", "b": b"2", "c": b"3"})
        update = store.begin_update()
        update.remove_file("b")
        self.assertRaises(FileNotInSet, update.remove_file, "b")
        self.assertRaises(FileNotInSet, update.remove_file, "zzz")
        writer = update.add_file("a")
        writer.write(b"new a")
        writer.close()
        result = update.commit()
        self.assertEqual((result.files_written, result.files_removed), (1, 1))
        self.assertEqual(self.read_back(store), {"a": b"new a", "c": b"3"})
        self.assertRaises(FileNotInSet, store.file_entry, "b")
        self.assertRaises(FileNotInSet, store.read_file, "b")

    def test_empty_update_commits_new_revision(self) -> None:
        store = self.open_store()
        self.commit_files(store, {"a": b"1"})
        result = store.begin_update().commit()
        self.assertEqual(result.revision.number, 2)
        self.assertEqual(self.read_back(store), {"a": b"1"})

    def test_one_update_at_a_time(self) -> None:
        store = self.open_store()
        update = store.begin_update()
        self.assertRaises(UpdateInProgress, store.begin_update)
        update.abort()
        store.begin_update().abort()

    def test_abort_leaves_nothing(self) -> None:
        store = self.open_store()
        self.commit_files(store, {"a": b"1"})
        packs_before = sorted(p.name for p in store._packs_dir.iterdir())
        update = store.begin_update()
        writer = update.add_file("big")
        writer.write(random_bytes(engine.BATCH_BYTES * 2, 5))
        writer.close()
        update.abort()
        self.assertEqual(
            sorted(p.name for p in store._packs_dir.iterdir()), packs_before
        )
        self.assertEqual(self.read_back(store), {"a": b"1"})
        assert store.current is not None
        self.assertEqual(store.current.number, 1)

    def test_finished_update_refuses_more_work(self) -> None:
        store = self.open_store()
        update = store.begin_update()
        writer = update.add_file("late")
        update.abort()
        self.assertRaises(ValueError, writer.write, b"x" * 10)
        self.assertRaises(ValueError, update.add_file, "other")
        self.assertRaises(ValueError, update.commit)

    def test_commit_refuses_open_writer(self) -> None:
        store = self.open_store()
        update = store.begin_update()
        update.add_file("open")
        self.assertRaises(ValueError, update.commit)


class NameTests(StoreTestCase):
    def test_bad_names_refused(self) -> None:
        update = self.open_store().begin_update()
        bad = [
            "",
            "/abs",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a\\b",
            "nul\x00",
            "\udcff",
        ]
        bad += ["x" * 256, "a/" * 2049]
        for name in bad:
            self.assertRaises(InvalidFileName, update.add_file, name)
        update.abort()

    def test_good_names_accepted(self) -> None:
        store = self.open_store()
        names = {"a", "dir/sub/file.txt", "é/ü", "x" * 255, "..a", "a..", "C:"}
        self.commit_files(store, {name: b"" for name in names})
        self.assertEqual(store.list_files(), sorted(names))


class GarbageCollectionTests(StoreTestCase):
    def test_gc_drops_sections_of_old_revisions_only(self) -> None:
        store = self.open_store()
        first = self.commit_files(store, {"a": random_bytes(300_000, 1)}).revision
        second = self.commit_files(store, {"a": random_bytes(300_000, 2)}).revision
        self.assertEqual(store.gc(), 0)  # revisions 1 and 2 are both kept
        self.commit_files(store, {"a": random_bytes(300_000, 3)})
        only_first = {s.sha256 for s in first.revision.sections}
        pending = next(iter(only_first))
        freed = store.gc(extra_keep={pending})
        self.assertTrue(store.has_section(pending))
        for ref in first.revision.sections:
            if ref.sha256 != pending:
                self.assertFalse(store.has_section(ref.sha256))
        for ref in second.revision.sections:
            self.assertTrue(store.has_section(ref.sha256))
        self.assertGreater(freed, 0)
        store.gc()
        self.assertFalse(store.has_section(pending))
        self.assertEqual(self.read_back(store), {"a": random_bytes(300_000, 3)})
        # The previous revision's file is gone from disk too.
        self.assertEqual(len(list(store._revisions_dir.glob("*.rev"))), 2)
        reopened = self.open_store(store._dir.parent)
        self.assertEqual(self.read_back(reopened), {"a": random_bytes(300_000, 3)})

    def test_gc_keeps_sections_an_open_update_reuses(self) -> None:
        store = self.open_store()
        data = random_bytes(100_000, 8)
        first = self.commit_files(store, {"a": data}).revision.revision
        self.commit_files(store, {"a": b"second"})
        self.commit_files(store, {"a": b"third"})  # revision 1 no longer kept
        update = store.begin_update()
        writer = update.add_file("again")
        writer.write(data)  # the same sections as revision 1: deduplicated
        writer.close()
        update._worker.drain()
        store.gc()
        for ref in first.sections:
            self.assertTrue(store.has_section(ref.sha256))
        self.assertEqual(update.commit().new_section_bytes, 0)
        self.assertEqual(b"".join(store.read_file("again")), data)
        self.commit_files(store, {"x": b""})
        self.commit_files(store, {"y": b""})
        store.gc()
        self.assertEqual(b"".join(store.read_file("again")), data)

    def check_partly_dead_pack(self, dead_size: int, live_size: int) -> int:
        store = self.open_store()
        files = {
            "dead": random_bytes(dead_size, 11),
            "live": random_bytes(live_size, 12),
        }
        first = self.commit_files(store, files).revision
        entry = store.open_revision(first).files[0]
        self.assertEqual(entry.name, "dead")
        span = range(entry.first_section, entry.first_section + entry.section_count)
        dead = {first.revision.sections[i].sha256 for i in span}
        update = store.begin_update()
        update.remove_file("dead")
        update.commit()
        self.commit_files(store, {"tiny": b"t"})  # revision 1 is no longer kept
        packs_before = sorted(store._packs_dir.iterdir())
        freed = store.gc()
        for sha256 in dead:
            self.assertFalse(store.has_section(sha256))
        reopened = self.open_store(store._dir.parent)
        self.assertEqual(
            self.read_back(reopened), {"live": files["live"], "tiny": b"t"}
        )
        for sha256 in dead:
            self.assertFalse(reopened.has_section(sha256))
        self.assertEqual(len(list(store._packs_dir.iterdir())), len(packs_before))
        return freed

    def test_gc_repacks_a_mostly_dead_pack(self) -> None:
        freed = self.check_partly_dead_pack(300_000, 300_000)
        self.assertEqual(freed, 300_000)

    def test_gc_only_unindexes_a_little_garbage(self) -> None:
        # Under a quarter dead: the index drops the sections, bytes stay.
        self.assertEqual(self.check_partly_dead_pack(50_000, 500_000), 0)
