"""Source folder configuration: what is accepted, and the Metadata round trip."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.sources.config import (
    MAX_SOURCES,
    InvalidSource,
    Source,
    SourceList,
    new_source,
)
from tests.util import short_tempdir


class NewSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = short_tempdir(self)
        self.docs = self.base / "Documents"
        self.docs.mkdir()

    def refused(self, *args: object, **kwargs: object) -> str:
        with self.assertRaises(InvalidSource) as caught:
            new_source(*args, **kwargs)  # type: ignore[arg-type]
        return str(caught.exception)

    def test_defaults_to_the_base_name(self) -> None:
        source = new_source(str(self.docs) + "/")
        self.assertEqual(source, Source(str(self.docs), "Documents", ()))

    def test_path_is_normalized(self) -> None:
        source = new_source("/" + str(self.docs) + "/./x/..", excludes=["*.tmp"])
        self.assertEqual(source.path, str(self.docs))
        self.assertEqual(source.excludes, ("*.tmp",))

    def test_refused_paths(self) -> None:
        self.assertIn("not absolute", self.refused("Documents"))
        self.assertIn("does not exist", self.refused(str(self.base / "missing")))
        (self.base / "file").write_bytes(b"")
        self.assertIn("is not a folder", self.refused(str(self.base / "file")))
        self.assertIn("NUL", self.refused("/a\x00b"))
        self.assertIn("needs the folder", self.refused(""))
        self.assertIn("longer than", self.refused("/" + "a" * 5000))

    def test_symlink_to_a_folder_is_fine(self) -> None:
        os.symlink(self.docs, self.base / "link")
        source = new_source(str(self.base / "link"))
        self.assertEqual((source.path, source.name), (str(self.base / "link"), "link"))

    def test_root_needs_a_name(self) -> None:
        self.assertIn("no base name", self.refused("/"))
        self.assertEqual(new_source("/", "everything").name, "everything")

    def test_refused_names(self) -> None:
        self.assertIn("'/'", self.refused(str(self.docs), "a/b"))
        self.assertIn("backslash", self.refused(str(self.docs), "a\\b"))
        self.assertIn("'..'", self.refused(str(self.docs), ".."))

    def test_refused_excludes_name_the_pattern(self) -> None:
        message = self.refused(str(self.docs), excludes=["*.tmp", "photos/[2024"])
        self.assertIn("photos/[2024", message)

    def test_inside_the_node_directory_is_refused(self) -> None:
        node = self.base / "node"
        (node / "content").mkdir(parents=True)
        self.assertIn(
            "node directory",
            self.refused(str(node / "content"), node_dir=str(node)),
        )
        self.assertIn("node directory", self.refused(str(node), node_dir=str(node)))
        # A source that contains the node directory is fine: the walk skips it.
        new_source(str(self.base), "home", node_dir=str(node))


class SourceListTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = short_tempdir(self)
        for name in ("a", "b", "a/inner", "ab"):
            (self.base / name).mkdir()
        self.a = new_source(str(self.base / "a"))
        self.b = new_source(str(self.base / "b"))

    def test_sorted_by_name(self) -> None:
        sources = SourceList([self.b, self.a])
        self.assertEqual([s.name for s in sources], ["a", "b"])
        self.assertEqual([r.name for r in sources.walk_roots()], ["a", "b"])

    def test_duplicate_names_are_refused(self) -> None:
        other = new_source(str(self.base / "ab"), "a")
        with self.assertRaises(InvalidSource) as caught:
            SourceList([self.a, other])
        self.assertIn("two sources are named 'a'", str(caught.exception))

    def test_same_folder_twice_is_refused(self) -> None:
        os.symlink(self.base / "a", self.base / "alias")
        with self.assertRaises(InvalidSource):
            SourceList([self.a, new_source(str(self.base / "alias"))])

    def test_nested_sources_are_refused_either_way(self) -> None:
        inner = new_source(str(self.base / "a/inner"))
        for order in ([self.a, inner], [inner, self.a]):
            with self.assertRaises(InvalidSource) as caught:
                SourceList(order)
            self.assertIn("inside the source", str(caught.exception))
        # "ab" merely shares a prefix of characters with "a".
        SourceList([self.a, new_source(str(self.base / "ab"))])

    def test_add_replace_and_remove(self) -> None:
        empty = SourceList()
        one = empty.added(self.a)
        self.assertEqual(len(empty), 0)
        with self.assertRaises(InvalidSource):
            one.added(new_source(str(self.base / "a"), excludes=["*.o"]))
        changed = one.added(
            new_source(str(self.base / "a"), excludes=["*.o"]), replace=True
        )
        self.assertEqual(changed.find(name="a").excludes, ("*.o",))
        self.assertEqual(one.find(name="a").excludes, ())
        two = changed.added(self.b)
        rest, gone = two.removed(path=str(self.base / "b") + "/")
        self.assertEqual(gone, self.b)
        self.assertEqual(list(rest), list(changed))
        rest, gone = two.removed(name="a")
        self.assertEqual(list(rest), [self.b])

    def test_find_needs_exactly_one_key(self) -> None:
        sources = SourceList([self.a])
        with self.assertRaises(InvalidSource):
            sources.find()
        with self.assertRaises(InvalidSource):
            sources.find(path=self.a.path, name="a")
        with self.assertRaises(InvalidSource):
            sources.find(name="zzz")

    def test_too_many_sources(self) -> None:
        many = [Source(f"/x/{i}", f"s{i}") for i in range(MAX_SOURCES + 1)]
        with self.assertRaises(InvalidSource):
            SourceList(many)

    def test_metadata_round_trip(self) -> None:
        sources = SourceList([self.a, new_source(str(self.b.path), excludes=["*.tmp"])])
        metadata = storedpb_pb2.Metadata(revision=3)
        metadata.sources.add(path="/old", name="old")
        sources.store(metadata)
        again = storedpb_pb2.Metadata.FromString(metadata.SerializeToString())
        self.assertEqual(SourceList.load(again), sources)

    def test_load_keeps_missing_folders(self) -> None:
        metadata = storedpb_pb2.Metadata()
        metadata.sources.add(path="/mnt/usb-disk/photos", name="photos")
        self.assertEqual(
            list(SourceList.load(metadata)), [Source("/mnt/usb-disk/photos", "photos")]
        )

    def test_load_refuses_a_damaged_list(self) -> None:
        for fields in (
            {"path": "relative", "name": "x"},
            {"path": "/x", "name": "a/b"},
            {"path": "/x", "name": "x", "excludes": ["[oops"]},
        ):
            metadata = storedpb_pb2.Metadata()
            metadata.sources.add(**fields)  # type: ignore[arg-type]
            with self.assertRaises(InvalidSource):
                SourceList.load(metadata)
