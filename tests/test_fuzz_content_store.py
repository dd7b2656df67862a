"""Fuzzing what the owner's content store reads back from its own disk:
revision files, the revision pointer, name indexes, packs and pack
indexes, the Metadata beside them.

A real content store with three files is written once; each example copies
it, damages one file (bytes changed, cut, emptied, replaced with random
bytes, grown sparse to 2**40 bytes), reopens it and reads every file back.
Properties: opening gives a store or ``CorruptContent`` / ``MetadataError``
(never a bare ``struct.error``, ``DecodeError`` or ``MemoryError``);
every file read is its exact bytes or ``CorruptContent`` naming the file,
and nothing wrong is released before the error. See docs/wire-protocol.md,
"Fuzzing".
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from barterbackup.content.engine import CorruptContent, FileNotInSet
from barterbackup.keys.derive import node_keys_from_master
from barterbackup.store.metadata import MetadataError
from barterbackup.testing.stores import open_content_store
from tests.fuzzing import fuzz_target, mutated, without_fsync

KEYS = node_keys_from_master(bytes(range(9, 41)))
FILES = {
    "a.bin": random.Random(1).randbytes(150_000),
    "dir/b.txt": b"small file\n" * 20,
    "empty": b"",
}
# What a node directory holds: the revision pointer, pack indexes and packs,
# name indexes, revision files (signed roots), the sealed Metadata.
KINDS = ("current", ".idx", ".pack", "names", "rev", ".sealed")
damage = st.one_of(
    st.tuples(st.just("mutate")),
    st.tuples(st.just("random"), st.binary(max_size=200)),
    st.tuples(st.just("empty")),
    st.tuples(st.just("sparse"), st.sampled_from([2**20 + 1, 2**40])),
)


class ContentStoreFuzz(SynchronousTestCase):
    def setUp(self) -> None:
        without_fsync(self)
        self.base = Path(self.mktemp())
        self.pristine = self.base / "pristine"
        store = open_content_store(self.pristine, KEYS)
        update = store.begin_update()
        for name, data in FILES.items():
            writer = update.add_file(name)
            writer.write(data)
            writer.close()
        update.commit()
        store.close()
        # Every file a damage may hit, in an order fixed across runs.
        self.files = sorted(
            str(path.relative_to(self.pristine))
            for path in self.pristine.rglob("*")
            if path.is_file()
        )
        self.assertEqual(sorted({_kind(name) for name in self.files}), sorted(KINDS))
        self.examples = 0

    @fuzz_target(
        "content.store_on_disk",
        cost=4,
        kind=st.sampled_from(KINDS),
        victim=st.integers(0, 100),
        damage=damage,
        data=st.data(),
    )
    # Found by fuzzing: the revision pointer, a revision file, a name index
    # and the Metadata grown to 2**40 bytes were each read whole before any
    # check (MemoryError at unlock).
    @example(kind="current", victim=0, damage=("sparse", 2**40), data=None)
    @example(kind="rev", victim=0, damage=("sparse", 2**40), data=None)
    @example(kind="names", victim=0, damage=("sparse", 2**40), data=None)
    @example(kind=".sealed", victim=0, damage=("sparse", 2**40), data=None)
    @example(kind=".idx", victim=0, damage=("sparse", 2**40), data=None)
    def test_a_damaged_store_is_refused_or_read_right(
        self, kind: str, victim: int, damage: Any, data: Any
    ) -> None:
        self.examples += 1
        node_dir = self.base / str(self.examples)
        shutil.rmtree(self.base / str(self.examples - 1), ignore_errors=True)
        shutil.copytree(self.pristine, node_dir)
        # Kinds first, so each is hit as often, however many files of it
        # there are.
        candidates = [name for name in self.files if _kind(name) == kind]
        path = node_dir / candidates[victim % len(candidates)]
        _damage(path, damage, data)
        try:
            store = open_content_store(node_dir, KEYS)
        except (CorruptContent, MetadataError):
            return
        self.addCleanup(store.close)
        for name, truth in FILES.items():
            released = bytearray()
            try:
                for chunk in store.read_file(name):
                    released += chunk
            except CorruptContent as error:
                # It names what is damaged: the file, or the manifest that
                # lists it.
                text = str(error)
                self.assertTrue(repr(name) in text or "manifest" in text, text)
                # What came before the damage is exactly right.
                self.assertEqual(bytes(released), truth[: len(released)])
                continue
            except FileNotInSet:
                self.fail(f"{name} vanished from a store that opened")
            self.assertEqual(bytes(released), truth)


def _kind(name: str) -> str:
    if name.endswith(".rev") or name.endswith(".names"):
        return name.rsplit(".", 1)[1]
    return Path(name).suffix or Path(name).name


def _damage(path: Path, damage: Any, data: Any) -> None:
    kind = damage[0]
    if kind == "mutate":
        path.write_bytes(data.draw(mutated(path.read_bytes())))
    elif kind == "random":
        path.write_bytes(damage[1])
    elif kind == "sparse":
        path.write_bytes(b"")
        with path.open("r+b") as handle:
            handle.truncate(damage[1])
    else:
        path.write_bytes(b"")
