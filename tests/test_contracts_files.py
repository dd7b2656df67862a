"""Contract files: one sealed file per contract, coalesced writes, quarantine."""

from __future__ import annotations

import os
from pathlib import Path

import nacl.signing
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from barterbackup._proto import storedpb_pb2
from barterbackup.contracts import terms
from barterbackup.contracts.files import QUARANTINE_DIRNAME, ContractFiles

SEAL = bytes(range(32))
NAMES = bytes(range(32, 64))


def signed_terms(seed: int) -> terms.SignedTerms:
    proposer = nacl.signing.SigningKey(bytes([seed]) * 32)
    acceptor = nacl.signing.SigningKey(bytes([seed + 1]) * 32)
    proposal = terms.propose(
        terms.new_terms(
            proposer_pubkey=bytes(proposer.verify_key),
            acceptor_pubkey=bytes(acceptor.verify_key),
            acceptor_keeps_bytes=2**20,
            proposer_keeps_bytes=2**20,
            now=1_800_000_000,
            random_bytes=os.urandom,
        ),
        proposer,
    )
    return terms.accept(proposal, acceptor)


def contract_file(
    signed: terms.SignedTerms, state: str = "syncing"
) -> storedpb_pb2.ContractFile:
    record = storedpb_pb2.ContractRecord(
        format=1, signed_terms=signed.encode(), state=state
    )
    record.syncing.since = 5.0
    return storedpb_pb2.ContractFile(
        record=record, ledger=storedpb_pb2.ContractLedger(peer_revision=3)
    )


class Deferring:
    """A ``blocking`` runner whose work waits until ``run_all``."""

    def __init__(self) -> None:
        self.queue: list[tuple[object, Deferred[object]]] = []

    def __call__(self, work: object) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.queue.append((work, d))
        return d

    def run_all(self) -> None:
        while self.queue:
            work, d = self.queue.pop(0)
            d.callback(work())  # type: ignore[operator]


class ContractFilesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.files = ContractFiles(self.root, SEAL, NAMES)
        self.files.load()

    def test_round_trip(self) -> None:
        signed = signed_terms(1)
        self.files.save(signed.contract_id, contract_file(signed))
        [loaded] = ContractFiles(self.root, SEAL, NAMES).load()
        self.assertEqual(loaded, contract_file(signed))

    def test_names_and_contents_reveal_nothing(self) -> None:
        signed = signed_terms(1)
        self.files.save(signed.contract_id, contract_file(signed))
        [path] = [p for p in self.root.iterdir() if p.is_file()]
        self.assertNotIn(signed.contract_id.hex()[:16], path.name)
        data = path.read_bytes()
        self.assertNotIn(signed.terms.proposer_pubkey, data)
        self.assertNotIn(b"syncing", data)

    def test_writes_are_off_the_caller_and_coalesced(self) -> None:
        runner = Deferring()
        files = ContractFiles(self.root, SEAL, NAMES, blocking=runner)
        signed = signed_terms(1)
        files.save(signed.contract_id, contract_file(signed, "syncing"))
        # The first write is under way; two more saves of the same contract
        # while it runs make one more write, of the newest.
        later = contract_file(signed, "syncing")
        later.ledger.peer_revision = 9
        files.save(signed.contract_id, later)
        files.save(signed.contract_id, later)
        flushed = files.flush()
        self.assertNoResult(flushed)
        self.assertEqual(len(runner.queue), 1)
        runner.run_all()
        self.successResultOf(flushed)
        [loaded] = ContractFiles(self.root, SEAL, NAMES).load()
        self.assertEqual(loaded.ledger.peer_revision, 9)

    def test_a_tampered_file_is_quarantined_and_the_rest_loads(self) -> None:
        good, bad = signed_terms(1), signed_terms(3)
        self.files.save(good.contract_id, contract_file(good))
        self.files.save(bad.contract_id, contract_file(bad))
        path = self.root / self.files.name_of(bad.contract_id)
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
        reopened = ContractFiles(self.root, SEAL, NAMES)
        [loaded] = reopened.load()
        self.assertEqual(bytes(loaded.record.signed_terms), good.encode())
        [(moved, reason)] = reopened.quarantined
        self.assertEqual(moved.parent.name, QUARANTINE_DIRNAME)
        self.assertIn("failed authentication", reason)

    def test_a_file_renamed_to_another_contract_is_refused(self) -> None:
        first, second = signed_terms(1), signed_terms(3)
        self.files.save(first.contract_id, contract_file(first))
        source = self.root / self.files.name_of(first.contract_id)
        source.rename(self.root / self.files.name_of(second.contract_id))
        reopened = ContractFiles(self.root, SEAL, NAMES)
        self.assertEqual(reopened.load(), [])
        self.assertEqual(len(reopened.quarantined), 1)

    def test_a_foreign_key_cannot_read_them(self) -> None:
        signed = signed_terms(1)
        self.files.save(signed.contract_id, contract_file(signed))
        other = ContractFiles(self.root, bytes(32), NAMES)
        self.assertEqual(other.load(), [])
        self.assertEqual(len(other.quarantined), 1)

    def test_forget_deletes_the_file(self) -> None:
        signed = signed_terms(1)
        self.files.save(signed.contract_id, contract_file(signed))
        self.successResultOf(self.files.forget(signed.contract_id))
        self.assertEqual(ContractFiles(self.root, SEAL, NAMES).load(), [])
