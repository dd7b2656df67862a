"""Contract records on disk: one sealed file per contract.

Layout under the node directory::

    contracts/<name>.sealed     one sealed storedpb.ContractFile
    contracts/quarantine/       files that failed to open

``<name>`` is a keyed hash of the contract id, and the file is sealed with
the file name in its associated data, so the directory tells a reader
neither which contracts we have nor with whom, and a file cannot be passed
off as another contract's.

Why one file per contract and not a field of the sealed Metadata: a
machine saves its record on every transition, and a busy node has dozens
of contracts checked hourly. One small atomic write per change costs the
same whatever the number of contracts, while rewriting Metadata (the peer
table, the sources, every other contract) would grow with all of them and
contend with the peer table's own writes. A damaged file costs one
contract (quarantined, reported), never the unlock.

Writes are off the reactor thread (``blocking``) and coalesced: ``save``
keeps the newest bytes per contract and one write runs at a time, so a
burst of transitions of one contract makes one write. A crash can lose the
last transitions not yet written; the machine then restarts from the state
before them and repeats their actions, which are idempotent
(docs/contracts.md, "Persistence").
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts.terms import contract_id_of
from barterbackup.logs import get_logger
from barterbackup.store.atomic import (
    atomic_delete,
    atomic_write,
    fsync_directory,
    make_private_directory,
    remove_leftovers,
    unused_path,
)
from barterbackup.store.sealed import SealedRecordError, open_sealed, seal
from barterbackup.sync.interfaces import Blocking, run_inline

log = get_logger("barterbackup.contracts")

SUFFIX = ".sealed"
QUARANTINE_DIRNAME = "quarantine"
FILE_AD = b"barterbackup v1 contract file\x00"
NAME_BYTES = 16
# A contract file holds terms (< 512 B), a record and a ledger with a few
# notices of bounded reasons: a few KiB. Anything far larger is not ours.
MAX_FILE_BYTES = 256 * 1024


class ContractFileError(ValueError):
    """A contract file is unreadable, tampered or foreign."""


class ContractFiles:
    """The sealed contract files of one node directory."""

    def __init__(
        self,
        directory: Path,
        sealing_key: bytes,
        naming_key: bytes,
        blocking: Blocking[Any] = run_inline,
    ) -> None:
        self.directory = Path(directory)
        self._sealing_key = sealing_key
        self._naming_key = naming_key
        self._blocking = blocking
        self._pending: dict[bytes, storedpb_pb2.ContractFile] = {}
        self._writing = False
        self._waiting: list[Deferred[None]] = []
        self.quarantined: list[tuple[Path, str]] = []
        self.write_errors = 0

    def name_of(self, contract_id: bytes) -> str:
        digest = hmac.digest(self._naming_key, contract_id, "sha256")
        return digest[:NAME_BYTES].hex() + SUFFIX

    # ---- loading (blocking: call from a worker) ------------------------

    def load(self) -> list[storedpb_pb2.ContractFile]:
        """Every contract file; bad ones are moved to ``quarantine/``."""
        make_private_directory(self.directory)
        remove_leftovers(self.directory)
        found = []
        for path in sorted(self.directory.iterdir()):
            if path.name == QUARANTINE_DIRNAME:
                continue
            try:
                found.append(self._read(path))
            except (ContractFileError, OSError) as error:
                self._quarantine(path, str(error))
        return found

    def _read(self, path: Path) -> storedpb_pb2.ContractFile:
        where = f"contract file {path.name}"
        if not path.is_file() or path.is_symlink() or not path.name.endswith(SUFFIX):
            raise ContractFileError(f"{where} is not a contract file")
        with open(path, "rb") as handle:
            sealed = handle.read(MAX_FILE_BYTES + 1)
        if len(sealed) > MAX_FILE_BYTES:
            raise ContractFileError(f"{where} is too large")
        try:
            plain = open_sealed(
                self._sealing_key, sealed, FILE_AD + path.name.encode(), where
            )
            message = storedpb_pb2.ContractFile.FromString(plain)
        except SealedRecordError as error:
            raise ContractFileError(str(error)) from None
        except DecodeError:
            raise ContractFileError(f"{where} does not parse") from None
        terms = storedpb_pb2.SignedContractTerms()
        try:
            terms.ParseFromString(message.record.signed_terms)
        except DecodeError:
            raise ContractFileError(f"{where} holds unreadable terms") from None
        if self.name_of(contract_id_of(bytes(terms.terms))) != path.name:
            raise ContractFileError(f"{where} does not belong to its name")
        return message

    def _quarantine(self, path: Path, reason: str) -> None:
        quarantine = make_private_directory(self.directory / QUARANTINE_DIRNAME)
        target = unused_path(quarantine, path.name)
        os.replace(path, target)
        fsync_directory(self.directory)
        self.quarantined.append((target, reason))
        log.error(
            "contract file {name} moved to quarantine: {reason}",
            name=path.name,
            reason=reason,
        )

    # ---- saving (reactor thread) ---------------------------------------

    def save(self, contract_id: bytes, contract: storedpb_pb2.ContractFile) -> None:
        """Write ``contract`` soon (the newest save of a contract wins)."""
        copy = storedpb_pb2.ContractFile()
        copy.CopyFrom(contract)
        self._pending[contract_id] = copy
        if not self._writing:
            self._write_next()

    def forget(self, contract_id: bytes) -> Deferred[None]:
        """Delete a contract's file (a proposal that never became one)."""
        self._pending.pop(contract_id, None)
        path = self.directory / self.name_of(contract_id)
        return self.flush().addCallback(
            lambda _: self._blocking(lambda: atomic_delete(path))
        )

    def flush(self) -> Deferred[None]:
        """Fires once every save made so far was written (or failed)."""
        if not self._writing and not self._pending:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        if not self._writing:
            self._write_next()
        return done

    def _write_next(self) -> None:
        if not self._pending:
            self._writing = False
            waiters, self._waiting = self._waiting, []
            for waiter in waiters:
                waiter.callback(None)
            return
        self._writing = True
        contract_id = next(iter(self._pending))
        contract = self._pending.pop(contract_id)
        name = self.name_of(contract_id)
        path = self.directory / name

        def write() -> None:
            plain = contract.SerializeToString(deterministic=True)
            atomic_write(path, seal(self._sealing_key, plain, FILE_AD + name.encode()))

        def done(outcome: object) -> None:
            if isinstance(outcome, Failure):
                self.write_errors += 1
                log.failure("writing contract file {name} failed", outcome, name=name)
                # Kept (unless a newer save came) for the next save to try
                # again; a failing disk is not retried in a loop.
                self._pending.setdefault(contract_id, contract)
                self._writing = False
                waiters, self._waiting = self._waiting, []
                for waiter in waiters:
                    waiter.callback(None)
                return
            self._write_next()

        self._blocking(write).addBoth(done)
