"""Pack garbage collection against concurrent reads (issue 13, finding 13:
"pack GC closes fds that a concurrent read uses").

Threads read live blobs in a loop while another repeatedly moves them:
each round installs a fresh pack of the live blobs plus garbage (which
empties and deletes the pack they were in), then sweeps (which repacks the
half-dead pack, or only rewrites its index when little of it is dead).
Every read of a live blob must return exactly its bytes — never EBADF,
never SectionMissing or SectionCorrupt, never other bytes — and
``verify_marked`` running meanwhile must report no damage.

The same for the replica store's serving path (``read_blob``, what a
Download reads) while the owner's revision is replaced and deleted.

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
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.store.packs import PackStore
from barterbackup.store.replicas import ReplicaStore, UnknownRevision
from barterbackup.sync.offers import OfferedContent
from barterbackup.sync.serve import ContentServer
from barterbackup.testing.fakes import BlobDict, make_revision
from barterbackup.testing.link import keys_for_test
from tests.test_replicas_store import NAMES, SEAL, Budget, live

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


class Caller:
    """The authenticated connection a Download comes on (as serve sees it)."""

    def __init__(self, peer_pubkey: bytes) -> None:
        self.peer_pubkey = peer_pubkey
        self.peer_onion_address = ""


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


class ReplicaReadsWhileReplacedTests(SynchronousTestCase):
    """A Download's reads (``ReplicaStore.read_blob``) while the owner's
    revision is replaced by another and deleted: each read gives the blob's
    bytes or UnknownRevision (it is no longer held), nothing else."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.store = ReplicaStore.open(self.root, Budget(), NAMES, SEAL)
        self.addCleanup(self.store.close)
        self.owner = keys_for_test(1)
        self.blobs = BlobDict()
        self.rng = random.Random(7)

    def store_revision(self, sections: list[bytes], number: int) -> Any:
        revision = make_revision(self.owner.signing_key, sections, number, self.blobs)
        owner = self.owner.onion_pubkey
        self.store.begin(owner, revision.signed)
        hashes = live(revision, self.blobs)
        self.store.store_blobs(
            owner, revision.content_id, [(h, self.blobs[h]) for h in hashes]
        )
        self.store.finish(owner, revision.content_id, lambda: hashes)
        return revision

    def sections(self, count: int) -> list[bytes]:
        return [self.rng.randbytes(self.rng.randrange(1, 9000)) for _ in range(count)]

    def test_reads_while_the_revision_is_replaced_and_deleted(self) -> None:
        kept = self.sections(LIVE_BLOBS)
        wanted = {hashlib.sha256(s).digest(): s for s in kept}
        self.store_revision(kept + self.sections(LIVE_BLOBS), 1)
        owner = self.owner.onion_pubkey

        def gone(sha256: bytes, error: BaseException) -> bool:
            return isinstance(error, UnknownRevision)

        fds = open_fds()
        number = 1
        with Readers(
            lambda sha256: self.store.read_blob(owner, sha256), wanted, gone
        ) as readers:
            for round_number in range(ROUNDS):
                number += 1
                # Replaced: the new revision shares ``kept``; finishing it
                # sweeps the rest of the old one (a repack under the reads).
                self.store_revision(kept + self.sections(LIVE_BLOBS), number)
                if round_number % 3 == 2:
                    self.store.delete(owner)
                    number = 1
                    self.store_revision(kept + self.sections(LIVE_BLOBS), number)
        self.assertEqual(readers.failures, [])
        self.assertGreater(readers.reads, ROUNDS)
        for sha256, data in wanted.items():
            self.assertEqual(self.store.read_blob(owner, sha256), data)
        self.store.close()
        self.assertLessEqual(open_fds(), fds)

    def read_across(self, between: Callable[[], object]) -> BaseException | bytes:
        """``read_blob`` of a stored blob, with ``between`` run after it took
        the owner's packs and before it reads them: its outcome."""
        section = self.sections(1)[0]
        self.store_revision([section], 1)
        owner = self.owner.onion_pubkey
        reading, go = threading.Event(), threading.Event()
        real_read = PackStore.read

        def paused_read(packs: PackStore, sha256: bytes) -> bytes:
            reading.set()
            go.wait(10)
            return real_read(packs, sha256)

        self.patch(PackStore, "read", paused_read)
        outcome: list[BaseException | bytes] = []

        def read() -> None:
            try:
                outcome.append(
                    self.store.read_blob(owner, hashlib.sha256(section).digest())
                )
            except BaseException as error:
                outcome.append(error)

        reader = threading.Thread(target=read)
        reader.start()
        self.assertTrue(reading.wait(10))
        between()
        go.set()
        reader.join()
        return outcome[0]

    def test_a_read_overtaken_by_a_delete_finds_nothing(self) -> None:
        fds = open_fds()
        outcome = self.read_across(lambda: self.store.delete(self.owner.onion_pubkey))
        self.assertIs(type(outcome), UnknownRevision)
        self.assertLessEqual(open_fds(), fds)

    def test_a_read_overtaken_by_closing_opens_no_file(self) -> None:
        """A Download still reading while the node stops: the closed store
        reopens no pack (its descriptors would never be closed again)."""
        fds = open_fds()
        outcome = self.read_across(self.store.close)
        self.assertIs(type(outcome), UnknownRevision)
        self.assertLessEqual(open_fds(), fds)

    def test_a_download_overtaken_by_a_delete_ends_not_found(self) -> None:
        """The serving path (sync.serve): the owner's replica is deleted
        while a Download of it reads a blob (after the call took the
        owner's packs, before it read them); the call ends NOT_FOUND, not
        with an internal error."""
        # Read batches of about 1 MiB: (1, 2), (3, 4) read ahead while the
        # first is sent, then (5), read after a piece went out.
        sections = [self.rng.randbytes(700_000) for _ in range(5)]
        revision = self.store_revision(sections, 1)
        owner = self.owner.onion_pubkey
        sent: list[Any] = []
        real_read = PackStore.read

        def read_overtaken(packs: PackStore, sha256: bytes) -> bytes:
            if sent and self.store.held(owner) is not None:
                self.store.delete(owner)
            return real_read(packs, sha256)

        self.patch(PackStore, "read", read_overtaken)

        def send(item: Any) -> Deferred[None]:
            sent.append(item)
            return succeed(None)

        server = ContentServer(None, self.store, OfferedContent())
        conn = Caller(owner)
        request = bbrpc_pb2.DownloadRequest(
            content_id=revision.content_id,
            blobs=[hashlib.sha256(s).digest() for s in sections],
        )
        failure = self.failureResultOf(
            Deferred.fromCoroutine(server.download(conn, request, send))
        )
        failure.trap(PeerCallError)
        self.assertEqual(failure.value.code, bbrpc_pb2.ERROR_CODE_NOT_FOUND)
        # What was read before the delete went out; the last blob did not.
        self.assertEqual(
            [hashlib.sha256(item.data).digest() for item in sent],
            list(request.blobs)[:4],
        )
