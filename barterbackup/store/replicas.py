"""Other nodes' content stored here, within the storage budget.

Layout under the node directory::

    replicas/<owner pubkey hex>/current.pb     ReplicaRecord, complete=True
    replicas/<owner pubkey hex>/pending.pb     ReplicaRecord, complete=False
    replicas/<owner pubkey hex>/sections/<ciphertext sha256 hex>

``current.pb`` is the last revision fully stored: it stays readable (and its
sections stay on disk) while a newer revision is being fetched into
``pending.pb``. Sections are named by their ciphertext hash, so one file
serves every revision (and every table slot) that uses the same bytes: that
is what makes the N → N+1 delta cheap. Sections are never shared between
owners, so each owner's usage is exactly the size of its own directory.

Crash safety: records are written with ``atomic_write``. Sections are
written through a temp name and a rename but not fsynced one by one (at the
content engine's ~20 KiB average section size an fsync each costs ~5 ms, far
more than the network); ``finish`` flushes them all (``os.sync``) before the
complete record is written, and ``open`` re-hashes sections that only the
pending revision uses, dropping any a crash left torn. ``finish`` writes
``current.pb`` first, then drops ``pending.pb``, then deletes sections only
the old revision used; ``open`` repairs any prefix of that sequence (a
pending record not newer than current is dropped, sections no record uses
are deleted). Partially fetched sections of a pending revision are kept and
accounted, which is how an interrupted transfer resumes.

Records are plain (not sealed): the signed revision inside is verified on
load, against the owner named by the directory, so a tampered or foreign
record is refused with a clear error rather than trusted.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from barterbackup._proto import storedpb_pb2
from barterbackup.revisions import (
    InvalidRevision,
    SectionIndexOutOfRange,
    VerifiedRevision,
    verify_revision,
)
from barterbackup.store.atomic import (
    atomic_delete,
    atomic_write,
    fsync_directory,
    make_private_directory,
    remove_leftovers,
    temp_path_for,
)

GIB = 1024 * 1024 * 1024
# The budget granted to peers while the user has not set one: enough for a
# small file set to be traded out of the box, small enough not to surprise.
DEFAULT_TOTAL_BYTES = 1 * GIB

CURRENT_RECORD = "current.pb"
PENDING_RECORD = "pending.pb"
SECTIONS_DIR = "sections"
MAX_RECORD_BYTES = 80 * 1024 * 1024


class ReplicaError(Exception):
    """Base class for replica store refusals; messages are fit for peers."""


class QuotaExceeded(ReplicaError):
    """Storing the revision would exceed the per-peer or total budget."""


class StaleRevision(ReplicaError):
    """The revision is older than (or conflicts with) the one held."""


class BadSection(ReplicaError):
    """Section bytes do not match the hash in the revision's table."""


class UnknownRevision(ReplicaError):
    """The content_id is not a revision held (or being fetched) here."""


class IncompleteRevision(ReplicaError):
    """``finish`` was called while sections are still missing."""


class ReplicaRecordError(ReplicaError):
    """A replica record on disk is unreadable, tampered or foreign."""


def effective_budget(config: storedpb_pb2.StorageConfig) -> tuple[int, int]:
    """Return (total_bytes, per_peer_bytes) with unset fields defaulted.

    total_bytes 0 means "not configured" and becomes DEFAULT_TOTAL_BYTES;
    per_peer_bytes 0 means "no per-peer cap beyond the total".
    """
    total = config.total_bytes or DEFAULT_TOTAL_BYTES
    per_peer = config.per_peer_bytes or total
    return total, min(total, per_peer)


@dataclass(frozen=True)
class ReplicaPlan:
    """What must be fetched to hold a revision (the delta)."""

    owner_pubkey: bytes
    revision: VerifiedRevision
    missing: list[tuple[int, storedpb_pb2.SectionRef]]
    reference: list[bytes]
    bytes_total: int
    bytes_done: int

    @property
    def content_id(self) -> bytes:
        return self.revision.content_id

    @property
    def number(self) -> int:
        return self.revision.number


@dataclass(frozen=True)
class HeldReplica:
    """One owner's content as held here.

    ``signed_revision``/``number``/``complete`` describe the newest revision
    known (the pending one while a sync runs); ``readable`` is the newest
    complete revision, the one that can be served back to the owner.
    """

    signed_revision: bytes
    number: int
    complete: bool
    stored_bytes: int
    readable: VerifiedRevision | None
    pending: VerifiedRevision | None

    @property
    def shown(self) -> VerifiedRevision:
        """What to report as held: the revision that can be served back (the
        complete one) while a newer one is still being fetched."""
        shown = self.readable or self.pending
        assert shown is not None, "a HeldReplica always has a revision"
        return shown

    def revision_for(self, content_id: bytes) -> VerifiedRevision | None:
        """The held revision (complete or pending) named ``content_id``."""
        for revision in (self.readable, self.pending):
            if revision is not None and revision.content_id == content_id:
                return revision
        return None


class _OwnerState:
    """In-memory view of one owner's directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.current: VerifiedRevision | None = None
        self.pending: VerifiedRevision | None = None
        self.section_sizes: dict[bytes, int] = {}
        # True while sections were written since the last flush to disk.
        self.unflushed = False

    @property
    def sections_dir(self) -> Path:
        return self.directory / SECTIONS_DIR

    @property
    def stored_bytes(self) -> int:
        return sum(self.section_sizes.values())

    def section_path(self, sha256: bytes) -> Path:
        return self.sections_dir / sha256.hex()

    def revision_for(self, content_id: bytes) -> VerifiedRevision:
        for revision in (self.pending, self.current):
            if revision is not None and revision.content_id == content_id:
                return revision
        raise UnknownRevision("that content revision is not held here")

    def needed_hashes(self) -> set[bytes]:
        needed: set[bytes] = set()
        for revision in (self.current, self.pending):
            if revision is not None:
                needed.update(s.sha256 for s in revision.revision.sections)
        return needed


def _unique_bytes(revisions: Iterable[VerifiedRevision | None]) -> int:
    sizes: dict[bytes, int] = {}
    for revision in revisions:
        if revision is not None:
            for section in revision.revision.sections:
                sizes[section.sha256] = section.length
    return sum(sizes.values())


class ReplicaStore:
    """Peers' content on disk, with quotas; safe to call from any thread."""

    def __init__(
        self, root: Path, budget: Callable[[], storedpb_pb2.StorageConfig]
    ) -> None:
        self._root = root
        self._budget = budget
        self._owners: dict[bytes, _OwnerState] = {}
        self._lock = threading.RLock()

    @classmethod
    def open(
        cls, root: Path, budget: Callable[[], storedpb_pb2.StorageConfig]
    ) -> ReplicaStore:
        """Open (creating) ``root``: clean leftovers, load records, measure.

        Raises ReplicaRecordError if a record on disk does not verify.
        """
        root = make_private_directory(Path(root))
        remove_leftovers(root)
        store = cls(root, budget)
        for directory in sorted(root.iterdir()):
            if directory.is_dir():
                owner = _owner_from_dirname(directory)
                store._owners[owner] = _load_owner(owner, directory)
        return store

    # ---- queries -----------------------------------------------------

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(state.stored_bytes for state in self._owners.values())

    def usage(self) -> dict[bytes, int]:
        with self._lock:
            return {o: s.stored_bytes for o, s in self._owners.items()}

    def granted_bytes(self, owner_pubkey: bytes) -> int:
        """The most ``owner_pubkey`` may store here right now."""
        return self._budget_for(owner_pubkey)[0]

    def held(self, owner_pubkey: bytes) -> HeldReplica | None:
        with self._lock:
            state = self._owners.get(owner_pubkey)
            if state is None:
                return None
            newest = state.pending or state.current
            if newest is None:
                return None
            return HeldReplica(
                signed_revision=newest.signed,
                number=newest.number,
                complete=state.pending is None,
                stored_bytes=state.stored_bytes,
                readable=state.current,
                pending=state.pending,
            )

    def read_section(self, owner_pubkey: bytes, content_id: bytes, index: int) -> bytes:
        """Return section ``index`` of a held revision, hash-checked."""
        with self._lock:
            state = self._owners.get(owner_pubkey)
            if state is None:
                raise UnknownRevision("no content of that node is held here")
            ref = _section_ref(state.revision_for(content_id), index)
            path = state.section_path(ref.sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UnknownRevision(f"section {index} is not stored here yet") from None
        if hashlib.sha256(data).digest() != ref.sha256:
            raise BadSection(f"stored section {index} is corrupted on disk")
        return data

    # ---- sync ----------------------------------------------------------

    def begin(self, owner_pubkey: bytes, signed_revision: bytes) -> ReplicaPlan:
        """Check a revision the owner asks us to store; return the delta.

        Raises InvalidRevision, StaleRevision or QuotaExceeded, and then
        changes nothing on disk.
        """
        revision = verify_revision(signed_revision, expected_owner=owner_pubkey)
        with self._lock:
            state = self._owners.get(owner_pubkey)
            current = state.current if state else None
            pending = state.pending if state else None
            _refuse_stale(revision, current, pending)
            if current is not None and current.content_id == revision.content_id:
                return self._plan(owner_pubkey, revision, state)
            self._refuse_over_budget(
                owner_pubkey,
                _unique_bytes([current, revision]),
                "revision (old and new together)",
            )
            if state is None:
                state = self._create_owner(owner_pubkey)
            if pending is None or pending.content_id != revision.content_id:
                record = storedpb_pb2.ReplicaRecord(
                    owner_pubkey=owner_pubkey,
                    signed_revision=revision.signed,
                    complete=False,
                )
                atomic_write(state.directory / PENDING_RECORD, _serialize(record))
                state.pending = revision
                self._drop_unneeded(state)
            return self._plan(owner_pubkey, revision, state)

    def store_section(
        self, owner_pubkey: bytes, content_id: bytes, index: int, data: bytes
    ) -> None:
        """Write one section of the pending revision after checking it.

        Raises BadSection (hash mismatch) or QuotaExceeded, writing nothing.
        """
        with self._lock:
            state = self._owners.get(owner_pubkey)
            if state is None or state.pending is None:
                raise UnknownRevision("no revision of that node is being stored")
            if state.pending.content_id != content_id:
                raise UnknownRevision("that revision is not the one being stored")
            ref = _section_ref(state.pending, index)
        if len(data) != ref.length or hashlib.sha256(data).digest() != ref.sha256:
            raise BadSection(
                f"section {index} does not match the revision's section table"
            )
        with self._lock:
            if ref.sha256 in state.section_sizes:
                return
            self._refuse_over_budget(
                owner_pubkey,
                state.stored_bytes + len(data),
                f"storing section {index}",
            )
            _write_unsynced(state.section_path(ref.sha256), data)
            state.section_sizes[ref.sha256] = len(data)
            state.unflushed = True

    def finish(self, owner_pubkey: bytes, content_id: bytes) -> HeldReplica:
        """Make the pending revision the held one, then drop old sections."""
        with self._lock:
            state = self._owners.get(owner_pubkey)
            if state is None:
                raise UnknownRevision("no content of that node is held here")
            if state.pending is None or state.pending.content_id != content_id:
                if state.current is not None and state.current.content_id == content_id:
                    return self._held_or_fail(owner_pubkey)
                raise UnknownRevision("that revision is not the one being stored")
            missing = [
                i
                for i, s in enumerate(state.pending.revision.sections)
                if s.sha256 not in state.section_sizes
            ]
            if missing:
                raise IncompleteRevision(
                    f"{len(missing)} sections are still missing (first: {missing[0]})"
                )
            if state.unflushed:
                # One flush for all the revision's new sections: an fsync per
                # ~20 KiB section would cost more than the network (see the
                # module doc); the complete record must not be durable first.
                os.sync()
                state.unflushed = False
            record = storedpb_pb2.ReplicaRecord(
                owner_pubkey=owner_pubkey,
                signed_revision=state.pending.signed,
                complete=True,
            )
            # Order matters for crash safety: the new record must be durable
            # before the old revision's sections go.
            atomic_write(state.directory / CURRENT_RECORD, _serialize(record))
            state.current, state.pending = state.pending, None
            atomic_delete(state.directory / PENDING_RECORD)
            self._drop_unneeded(state)
            return self._held_or_fail(owner_pubkey)

    def delete(self, owner_pubkey: bytes) -> None:
        """Forget everything held for ``owner_pubkey`` (records first)."""
        with self._lock:
            state = self._owners.pop(owner_pubkey, None)
            if state is None:
                return
            atomic_delete(state.directory / CURRENT_RECORD)
            atomic_delete(state.directory / PENDING_RECORD)
            for path in _section_files(state.sections_dir):
                path.unlink()
            if state.sections_dir.exists():
                state.sections_dir.rmdir()
            state.directory.rmdir()
            fsync_directory(self._root)

    # ---- internals ----------------------------------------------------

    def _stored(self, owner_pubkey: bytes) -> int:
        state = self._owners.get(owner_pubkey)
        return state.stored_bytes if state else 0

    def _held_or_fail(self, owner_pubkey: bytes) -> HeldReplica:
        held = self.held(owner_pubkey)
        assert held is not None
        return held

    def _plan(
        self, owner: bytes, revision: VerifiedRevision, state: _OwnerState | None
    ) -> ReplicaPlan:
        have = state.section_sizes if state else {}
        missing: list[tuple[int, storedpb_pb2.SectionRef]] = []
        seen_missing: set[bytes] = set()
        done = 0
        for index, section in enumerate(revision.revision.sections):
            if section.sha256 in have:
                done += section.length
            elif section.sha256 not in seen_missing:
                # A hash repeated in the table is fetched once.
                seen_missing.add(section.sha256)
                missing.append((index, section))
        return ReplicaPlan(
            owner_pubkey=owner,
            revision=revision,
            missing=missing,
            reference=sorted(have),
            bytes_total=revision.revision.content_length,
            bytes_done=done,
        )

    def _budget_for(self, owner: bytes) -> tuple[int, int, int]:
        """(granted, per-peer cap, bytes free in the total) for ``owner``.

        The one place quota arithmetic happens: what an owner may store is
        the per-peer cap, or what the others leave of the total if less.
        """
        total, per_peer = effective_budget(self._budget())
        with self._lock:
            others = self.used_bytes - self._stored(owner)
        free_of_total = max(0, total - others)
        return min(per_peer, free_of_total), per_peer, free_of_total

    def _refuse_over_budget(self, owner: bytes, needed: int, what: str) -> None:
        """QuotaExceeded unless ``owner`` may hold ``needed`` bytes in all."""
        granted, per_peer, free_of_total = self._budget_for(owner)
        if needed <= granted:
            return
        if needed > per_peer:
            raise QuotaExceeded(
                f"{what} needs {needed} bytes here but each peer may store at "
                f"most {per_peer} bytes"
            )
        raise QuotaExceeded(
            f"{what} needs {needed} bytes here but only {free_of_total} bytes "
            "of the total budget are free"
        )

    def _create_owner(self, owner: bytes) -> _OwnerState:
        state = _OwnerState(self._root / owner.hex())
        make_private_directory(state.sections_dir)
        fsync_directory(self._root)
        self._owners[owner] = state
        return state

    def _drop_unneeded(self, state: _OwnerState) -> None:
        needed = state.needed_hashes()
        for sha256 in [h for h in state.section_sizes if h not in needed]:
            state.section_path(sha256).unlink(missing_ok=True)
            del state.section_sizes[sha256]
        if state.sections_dir.exists():
            fsync_directory(state.sections_dir)


def _refuse_stale(
    revision: VerifiedRevision,
    current: VerifiedRevision | None,
    pending: VerifiedRevision | None,
) -> None:
    for held in (current, pending):
        if held is None:
            continue
        if revision.number < held.number:
            raise StaleRevision(
                f"revision {revision.number} is older than revision "
                f"{held.number} held here"
            )
        if revision.number == held.number and revision.content_id != held.content_id:
            raise StaleRevision(
                f"a different revision {held.number} is already held here"
            )


def _section_ref(revision: VerifiedRevision, index: int) -> storedpb_pb2.SectionRef:
    try:
        return revision.section(index)
    except SectionIndexOutOfRange as error:
        raise UnknownRevision(str(error)) from None


def _serialize(record: storedpb_pb2.ReplicaRecord) -> bytes:
    return record.SerializeToString(deterministic=True)


def _owner_from_dirname(directory: Path) -> bytes:
    try:
        owner = bytes.fromhex(directory.name)
    except ValueError:
        owner = b""
    if len(owner) != 32:
        raise ReplicaRecordError(
            f"unexpected directory {directory.name!r} in the replica store"
        )
    return owner


def _read_record(owner: bytes, path: Path, complete: bool) -> VerifiedRevision | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    where = f"replica record {path.parent.name}/{path.name}"
    if len(raw) > MAX_RECORD_BYTES:
        raise ReplicaRecordError(f"{where} is too large")
    try:
        record = storedpb_pb2.ReplicaRecord.FromString(raw)
    except DecodeError:
        raise ReplicaRecordError(f"{where} is not a valid record") from None
    if record.owner_pubkey != owner or record.complete != complete:
        raise ReplicaRecordError(f"{where} does not match its directory")
    try:
        return verify_revision(record.signed_revision, expected_owner=owner)
    except InvalidRevision as error:
        raise ReplicaRecordError(f"{where} was tampered with: {error}") from None


def _write_unsynced(path: Path, data: bytes) -> None:
    """Write via a temp name and rename, without fsync (see finish)."""
    temp = temp_path_for(path)
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _section_intact(path: Path, sha256: bytes) -> bool:
    return hashlib.sha256(path.read_bytes()).digest() == sha256


def _section_files(sections_dir: Path) -> list[Path]:
    if not sections_dir.exists():
        return []
    return [p for p in sections_dir.iterdir() if p.is_file()]


def _load_owner(owner: bytes, directory: Path) -> _OwnerState:
    state = _OwnerState(directory)
    state.current = _read_record(owner, directory / CURRENT_RECORD, complete=True)
    state.pending = _read_record(owner, directory / PENDING_RECORD, complete=False)
    if (
        state.pending is not None
        and state.current is not None
        and state.pending.number <= state.current.number
    ):
        # A crash between writing current.pb and dropping pending.pb.
        atomic_delete(directory / PENDING_RECORD)
        state.pending = None
    needed = state.needed_hashes()
    flushed = (
        {s.sha256 for s in state.current.revision.sections}
        if state.current is not None
        else set()
    )
    for path in _section_files(state.sections_dir):
        try:
            sha256 = bytes.fromhex(path.name)
        except ValueError:
            sha256 = b""
        if sha256 not in needed:
            path.unlink()  # a crash while dropping an old revision's sections
        elif sha256 in flushed or _section_intact(path, sha256):
            state.section_sizes[sha256] = path.stat().st_size
        else:
            # Fetched for the pending revision but not flushed before a
            # crash: fetch it again rather than trust it.
            path.unlink()
    if state.current is not None:
        absent = [
            s
            for s in state.current.revision.sections
            if s.sha256 not in state.section_sizes
        ]
        if absent:
            raise ReplicaRecordError(
                f"replica record {directory.name}/{CURRENT_RECORD} claims a "
                f"complete revision but {len(absent)} of its sections are missing"
            )
    return state
