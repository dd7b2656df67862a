"""Pack garbage collection against concurrent reads (issue 13, finding 13:
"pack GC closes fds that a concurrent read uses").

Threads read live blobs in a loop while another repeatedly moves them:
each round installs a fresh pack of the live blobs plus garbage (which
empties and deletes the pack they were in), then sweeps (which repacks the
half-dead pack, or only rewrites its index when little of it is dead).
Every read of a live blob must return exactly its bytes — never EBADF,
never SectionMissing or SectionCorrupt, never other bytes — and
``verify_marked`` running meanwhile must report no damage.

Bounded: a fixed number of rounds; the readers stop when they end (and
after at most a fixed number of reads). No sleeps.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from barterbackup.store.packs import PackStore

LIVE_BLOBS = 48
ROUNDS = 24
READERS = 4
# A reader stops after this many reads even if the rounds are not done.
MAX_READS = 200_000


def no_crash(point: int) -> None:
    pass


def blobs_of(rng: random.Random, count: int) -> dict[bytes, bytes]:
    """``count`` distinct blobs of varied sizes, by hash."""
    found = {}
    for _ in range(count):
        data = rng.randbytes(rng.randrange(1, 9000))
        found[hashlib.sha256(data).digest()] = data
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Readers:
    """Threads reading ``wanted`` blobs with ``read`` until ``done`` is set
    (or MAX_READS each); every outcome ``check`` refuses is kept."""

    def __init__(
        self,
        read: Callable[[bytes], bytes],
        wanted: dict[bytes, bytes],
        accept: Callable[[bytes, BaseException], bool] = lambda h, e: False,
    ) -> None:
        self.read = read
        self.wanted = list(wanted.items())
        self.accept = accept
        self.done = threading.Event()
        self.failures: list[str] = []
        self.reads = 0
        self._count_lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(n,)) for n in range(READERS)
        ]

    def _run(self, number: int) -> None:
        reads = 0
        at = number * 7
        while reads < MAX_READS and not self.done.is_set():
            sha256, data = self.wanted[at % len(self.wanted)]
            at += 1
            reads += 1
            try:
                got = self.read(sha256)
            except BaseException as error:  # every one is a finding
                if not self.accept(sha256, error):
                    self.failures.append(f"{sha256.hex()[:12]}: {error!r}")
                continue
            if got != data:
                self.failures.append(f"{sha256.hex()[:12]}: wrong bytes")
        with self._count_lock:
            self.reads += reads

    def __enter__(self) -> Readers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join()


class PackGcWhileReadingTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.store = PackStore(directory)
        self.addCleanup(self.store.close)
        self.rng = random.Random(13)
        self.live = blobs_of(self.rng, LIVE_BLOBS)
        self.install(self.live | blobs_of(self.rng, LIVE_BLOBS))

    def install(self, blobs: dict[bytes, bytes]) -> None:
        number, writer = self.store.new_writer()
        writer.append(b"".join(blobs.values()), [(h, len(d)) for h, d in blobs.items()])
        self.store.install(number, no_crash)

    def gc_round(self, number: int) -> None:
        """Move the live blobs to a fresh pack with garbage beside them (the
        pack they were in is emptied and deleted), then sweep: half the
        rounds repack that pack, the others only rewrite its index."""
        garbage = LIVE_BLOBS if number % 2 else 1
        before = set(self.store.pack_ids())
        dead = blobs_of(self.rng, garbage)
        self.store.replace_blobs((self.live | dead).items())
        marks = self.store.new_marks()
        for sha256 in self.live:
            self.assertIsNotNone(self.store.mark(marks, sha256))
        self.store.sweep(marks)
        self.assertFalse(any(self.store.has(sha256) for sha256 in dead))
        self.assertFalse(before & set(self.store.pack_ids()), "a pack outlived gc")

    def test_reads_of_live_blobs_while_gc_repacks_and_deletes(self) -> None:
        fds = open_fds()
        with Readers(self.store.read, self.live) as readers:
            for number in range(ROUNDS):
                self.gc_round(number)
        self.assertEqual(readers.failures, [])
        self.assertGreater(readers.reads, ROUNDS)
        for sha256, data in self.live.items():
            self.assertEqual(self.store.read(sha256), data)
        self.store.close()
        self.assertLessEqual(open_fds(), fds)

    def test_verify_marked_finds_no_damage_while_gc_runs(self) -> None:
        outcomes: list[dict[bytes, str]] = []
        errors: list[BaseException] = []
        verified = threading.Event()

        def verify() -> None:
            try:
                while not verified.is_set():
                    marks = self.store.new_marks()
                    for sha256 in self.live:
                        self.store.mark(marks, sha256)
                    outcomes.append(self.store.verify_marked(marks))
            except BaseException as error:
                errors.append(error)

        checker = threading.Thread(target=verify)
        checker.start()
        try:
            with Readers(self.store.read, self.live) as readers:
                for number in range(ROUNDS):
                    self.gc_round(number)
        finally:
            verified.set()
            checker.join()
        self.assertEqual(errors, [])
        self.assertEqual(readers.failures, [])
        self.assertTrue(outcomes)
        self.assertEqual([bad for bad in outcomes if bad], [])
