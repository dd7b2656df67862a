"""kill -9 at every numbered point of an atomic write (store/atomic.py), for
the stores that write that way: the sealed Metadata and the contract files.
After each, the store opens with the old state or the new one, whole, and
start-up leaves no temp file behind (content packs and replica packs have
their own crash tests: test_content_crash, test_replicas_store)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import nacl.signing
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import terms
from barterbackup.contracts.files import ContractFiles
from barterbackup.store.atomic import (
    ATOMIC_BEFORE_DIRECTORY_SYNC,
    ATOMIC_BEFORE_RENAME,
    TEMP_SUFFIX,
    remove_leftovers,
)
from barterbackup.store.crash import CRASH_ENVIRONMENT_VARIABLE
from barterbackup.store.metadata import MetadataStore
from tests.test_contracts_files import NAMES, SEAL, contract_file

CHILD = Path(__file__).with_name("store_crash_child.py")
KEY = bytes(range(64, 96))


def _signed_terms() -> terms.SignedTerms:
    """The same contract in the parent and the child (no random id)."""
    proposer = nacl.signing.SigningKey(b"\x07" * 32)
    acceptor = nacl.signing.SigningKey(b"\x08" * 32)
    proposal = terms.propose(
        terms.new_terms(
            proposer_pubkey=bytes(proposer.verify_key),
            acceptor_pubkey=bytes(acceptor.verify_key),
            acceptor_keeps_bytes=2**20,
            proposer_keeps_bytes=2**20,
            now=1_800_000_000,
            random_bytes=lambda count: b"\x09" * count,
        ),
        proposer,
    )
    return terms.accept(proposal, acceptor)


SIGNED = _signed_terms()
# The point, and the state a restart must find after a crash there.
OUTCOMES = {ATOMIC_BEFORE_RENAME: "old", ATOMIC_BEFORE_DIRECTORY_SYNC: "new"}


def metadata(directory: Path) -> MetadataStore:
    return MetadataStore(directory / "metadata.sealed", KEY)


def contracts(directory: Path) -> ContractFiles:
    files = ContractFiles(directory / "contracts", SEAL, NAMES)
    files.load()
    return files


def write_state(kind: str, directory: Path, state: str) -> None:
    if kind == "metadata":

        def change(record: storedpb_pb2.Metadata) -> None:
            record.storage.total_bytes = 111 if state == "old" else 222

        metadata(directory).update(change)
    else:
        record = contract_file(SIGNED, "syncing" if state == "old" else "active")
        contracts(directory).save(SIGNED.contract_id, record)


def write_new(kind: str, directory: Path) -> None:
    write_state(kind, directory, "new")


def read_state(kind: str, directory: Path) -> str:
    if kind == "metadata":
        total = metadata(directory).get().storage.total_bytes
        return {111: "old", 222: "new"}[total]
    [loaded] = contracts(directory).load()
    return {"syncing": "old", "active": "new"}[loaded.record.state]


class AtomicWriteCrashTests(SynchronousTestCase):
    def crash(self, kind: str, point: int) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        write_state(kind, directory, "old")
        env = dict(os.environ, **{CRASH_ENVIRONMENT_VARIABLE: str(point)})
        child = subprocess.run(
            [sys.executable, str(CHILD), kind, str(directory)],
            env=env,
            capture_output=True,
            timeout=120,
        )
        self.assertEqual(child.returncode, -signal.SIGKILL, child.stderr.decode())
        return directory

    def test_every_point_leaves_old_or_new_whole(self) -> None:
        for kind in ("metadata", "contract"):
            for point, expected in OUTCOMES.items():
                directory = self.crash(kind, point)
                leftovers = list(directory.rglob(f"*{TEMP_SUFFIX}"))
                self.assertEqual(
                    bool(leftovers), point == ATOMIC_BEFORE_RENAME, (kind, point)
                )
                self.assertEqual(read_state(kind, directory), expected, (kind, point))
                remove_leftovers(directory)
                self.assertEqual(list(directory.rglob(f"*{TEMP_SUFFIX}")), [])
                # And the next write after the restart goes through.
                write_state(kind, directory, "new")
                self.assertEqual(read_state(kind, directory), "new")

    def test_without_a_crash_point_the_child_writes_the_new_state(self) -> None:
        for kind in ("metadata", "contract"):
            directory = Path(self.mktemp())
            directory.mkdir()
            write_state(kind, directory, "old")
            env = {
                k: v for k, v in os.environ.items() if k != CRASH_ENVIRONMENT_VARIABLE
            }
            subprocess.run(
                [sys.executable, str(CHILD), kind, str(directory)],
                env=env,
                check=True,
                timeout=120,
            )
            self.assertEqual(read_state(kind, directory), "new")
