"""Checking the node's own content store, and naming the files damage hits.

For every stored revision (the current one and the one before it, like
the garbage collector keeps), a check walks both trees of its signed root:

* every node of the section tree and of the manifest tree is read, its
  SHA-256 checked and decoded against what its parent says of it;
* every manifest chunk is read, checked, opened and decoded (they hold the
  names damage is reported under);
* every section the section tree names is looked up in the pack index: it
  must be there, with the length the tree gives, inside its pack file's
  size (``restic check``). With ``read_data`` every section is read and
  its SHA-256 checked instead (``restic check --read-data``); a section
  shared by several places or revisions is read once (a bit per pack
  index entry marks what was read, as garbage collection marks).

Damage is then mapped back to files: a damaged section to the files whose
section ranges hold it, a damaged tree node to every file under it (its
parent says which entries it covers), a damaged manifest chunk to the
range of names it held (the name index keeps each chunk's first name; the
names inside it are exactly what cannot be read). Nothing held in memory
grows with the content: the lists of damage are bounded, and a store with
more damage than that says so.

The same walk, given a set of blob hashes instead of checking (``locate``),
names the files that reference them: what the node logs when a damaged
blob cannot be repaired.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from barterbackup.content.engine import CorruptContent, ManifestChunk
from barterbackup.progress import Progress
from barterbackup.revisions import VerifiedRevision
from barterbackup.store.packs import SectionCorrupt, SectionMissing
from barterbackup.tree import NodeRef, TreeError, TreeRoot
from barterbackup.tree.nodes import Internal, decode_node, max_node_bytes

_ENTRY = struct.Struct(">Q32s48s")
# The outcome lists at most this many damaged blobs and files (counts are
# complete), and maps at most this many damaged ranges to files.
MAX_LISTED = 1000
MAX_RANGES = 100_000
# A progress snapshot at most every this many sections or bytes.
PROGRESS_EVERY_SECTIONS = 2048
PROGRESS_EVERY_BYTES = 16 * 1024 * 1024

SECTION = "section"
SECTION_NODE = "section tree node"
CHUNK = "manifest chunk"
CHUNK_NODE = "manifest tree node"
REVISION_FILE = "revision file"


class BlobStore(Protocol):
    """What a check reads of the pack store (``store.packs.PackStore``)."""

    def read(self, sha256: bytes) -> bytes: ...

    def extent(self, sha256: bytes) -> tuple[str, int, int] | None: ...

    def pack_size(self, pack_id: str) -> int: ...

    def new_marks(self) -> Any: ...

    def mark(self, marks: Any, sha256: bytes) -> bool | None: ...

    def marked_bytes(self, marks: Any) -> int: ...

    def verify_marked(
        self, marks: Any, on_bytes: Callable[[int], None]
    ) -> dict[bytes, str]: ...


class CheckSource(Protocol):
    """What a check needs of the content store (``ContentStore``)."""

    @property
    def packs(self) -> BlobStore: ...

    def kept_revision_numbers(self) -> list[int]: ...

    def revision(self, number: int = 0) -> VerifiedRevision: ...

    def manifest_chunks(
        self, revision: VerifiedRevision
    ) -> Iterator[ManifestChunk]: ...


@dataclass(frozen=True)
class DamagedBlob:
    """One stored blob that is missing or bad.

    ``length`` is the blob's exact length when the tree gives it (a section,
    a chunk), else 0 (a node: bounded by its parent's description). The
    sections (for a manifest blob: the chunks) it covers are
    [first_index, stop_index).
    """

    revision: int
    kind: str
    sha256: bytes
    problem: str
    length: int = 0
    max_length: int = 0
    first_index: int = 0
    stop_index: int = 0


@dataclass(frozen=True)
class DamagedFile:
    """A file of a stored revision that cannot be read back whole."""

    revision: int
    name: str
    reason: str


@dataclass
class CheckOutcome:
    """What a check found. Lists are bounded (MAX_LISTED); counts are not."""

    read_data: bool
    revisions: list[int] = field(default_factory=list)
    tree_nodes: int = 0
    manifest_chunks: int = 0
    sections: int = 0
    section_bytes: int = 0
    bytes_read: int = 0
    damaged: list[DamagedBlob] = field(default_factory=list)
    damaged_count: int = 0
    damaged_files: list[DamagedFile] = field(default_factory=list)
    damaged_files_count: int = 0
    # unlisted is damage whose files cannot be named (a manifest chunk's
    # range of names, a revision that cannot be read), one sentence each.
    unlisted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing damaged."""
        return not self.damaged_count and not self.unlisted

    def summary(self) -> str:
        """One line for people."""
        what = (
            f"{len(self.revisions)} revisions ({', '.join(map(str, self.revisions))}): "
            f"{self.tree_nodes} tree nodes, {self.manifest_chunks} manifest chunks, "
            f"{self.sections} sections"
        )
        if self.read_data:
            what += f", {self.bytes_read} bytes read"
        if self.ok:
            return f"no damage in {what}"
        return (
            f"{self.damaged_count} damaged blobs, {self.damaged_files_count} "
            f"damaged files in {what}"
        )


@dataclass(frozen=True)
class _Range:
    """Entries [start, stop) of one tree that are damaged, and why."""

    start: int
    stop: int
    reason: str


class StoreCheck:
    """One check of the content store (see the module doc); runs in a
    worker thread, reporting Progress snapshots to ``report``.

    With ``targets`` it checks nothing and instead finds where those blobs
    are referenced (``locate``).
    """

    def __init__(
        self,
        source: CheckSource,
        read_data: bool = False,
        report: Callable[[Progress], None] = lambda progress: None,
        targets: set[bytes] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._packs = source.packs
        self._read_data = read_data and targets is None
        self._report = report
        self._targets = targets
        self._clock = clock
        self.outcome = CheckOutcome(read_data=self._read_data)
        self._seen: set[tuple[int, bytes]] = set()
        # Sections reading found bad: a shared section read once is bad at
        # each of its places.
        self._bad: dict[bytes, str] = {}
        self._revision = 0
        self._marks: Any = None
        self._pack_sizes: dict[str, int] = {}
        self._bytes_total = 0
        self._bytes_done = 0
        self._since_report = 0
        self._reported_bytes = 0
        self._ranges_dropped = False

    def run(self) -> CheckOutcome:
        numbers = self._source.kept_revision_numbers()
        revisions: list[VerifiedRevision] = []
        for number in numbers:
            try:
                revisions.append(self._source.revision(number))
            except CorruptContent as error:
                self._damage(DamagedBlob(number, REVISION_FILE, b"", str(error)))
                self._unlisted(f"revision {number} cannot be read: {error}")
        self.outcome.revisions = [revision.number for revision in revisions]
        self._bytes_total = sum(revision.content_length for revision in revisions)
        if self._read_data:
            self._marks = self._packs.new_marks()
        ranges: list[list[_Range]] = []
        for revision in revisions:
            self._revision = revision.number
            self._progress("checking", f"revision {revision.number}")
            sections: list[_Range] = []
            self._walk(revision, revision.sections, SECTION_NODE, sections)
            # Chunks are read with the names they hold (_map_files).
            self._walk(revision, revision.manifest, CHUNK_NODE, None)
            ranges.append(sections)
        if self._read_data:
            self._read_marked(revisions, ranges)
        for revision, sections in zip(revisions, ranges, strict=True):
            self._revision = revision.number
            self._progress("listing", f"revision {revision.number}: naming files")
            self._map_files(revision, sections)
        self._progress("done" if self.outcome.ok else "damaged", self.outcome.summary())
        return self.outcome

    def _read_marked(
        self, revisions: list[VerifiedRevision], ranges: list[list[_Range]]
    ) -> None:
        """Read and hash every section the walk marked (each stored blob once,
        pack by pack); then find where the bad ones are referenced."""
        self._bytes_done = 0
        self._bytes_total = self._packs.marked_bytes(self._marks)
        self._progress("reading", "every section, pack by pack")
        bad = self._packs.verify_marked(self._marks, self._read_bytes)
        if not bad:
            return
        self._bad = bad
        for revision, sections in zip(revisions, ranges, strict=True):
            found: list[_Range] = []
            self._walk(revision, revision.sections, SECTION_NODE, found, bad_only=True)
            sections.extend(found)
            sections.sort(key=lambda r: r.start)

    def _read_bytes(self, count: int) -> None:
        self.outcome.bytes_read += count
        self._bytes_done += count
        if self._bytes_done - self._reported_bytes >= PROGRESS_EVERY_BYTES:
            self._progress("reading", "every section, pack by pack")

    def _walk(
        self,
        revision: VerifiedRevision,
        root: TreeRoot,
        node_kind: str,
        ranges: list[_Range] | None,
        bad_only: bool = False,
    ) -> None:
        """Check the nodes of one tree (and, for the section tree, the
        sections its leaves name), depth first, so ``ranges`` come sorted.

        ``bad_only``: a second walk that only finds the places of the
        sections reading found bad (nodes were checked already).
        """
        self._walk_node(revision, root.ref(), node_kind, ranges, bad_only)

    def _walk_node(
        self,
        revision: VerifiedRevision,
        ref: NodeRef,
        node_kind: str,
        ranges: list[_Range] | None,
        bad_only: bool = False,
    ) -> None:
        problem = ""
        try:
            node = decode_node(self._packs.read(ref.hash), ref)
        except SectionMissing:
            problem = "is missing"
        except SectionCorrupt:
            problem = "does not match its hash"
        except TreeError as error:
            problem = f"is malformed: {error}"
        except OSError as error:
            problem = f"cannot be read: {error.strerror or error}"
        if not problem and self._targets is not None and ref.hash in self._targets:
            problem = "was found damaged by a read"
        if problem:
            if bad_only:
                return  # reported by the first walk
            self._damage(
                DamagedBlob(
                    revision.number,
                    node_kind,
                    ref.hash,
                    f"{node_kind} {ref.hash.hex()[:16]} {problem}",
                    max_length=max_node_bytes(ref),
                    first_index=ref.first_index,
                    stop_index=ref.stop_index,
                ),
                ranges,
            )
            return
        if not bad_only:
            self.outcome.tree_nodes += 1
        if isinstance(node, Internal):
            for child in node.children:
                self._walk_node(revision, child, node_kind, ranges, bad_only)
            return
        if ranges is None:
            return
        index = ref.first_index
        for length, sha256, _ in _ENTRY.iter_unpack(node.packed()):
            if bad_only:
                problem = self._bad.get(sha256, "")
            else:
                problem = self._section_problem(sha256, length)
            if problem:
                self._damage(
                    DamagedBlob(
                        revision.number,
                        SECTION,
                        sha256,
                        f"section {sha256.hex()[:16]} {problem}",
                        length=length,
                        max_length=length,
                        first_index=index,
                        stop_index=index + 1,
                    ),
                    ranges,
                )
            index += 1
            if not bad_only:
                self._count_section(length)

    def _section_problem(self, sha256: bytes, length: int) -> str:
        """What is wrong with one section, or ""."""
        if self._targets is not None:
            return "was found damaged by a read" if sha256 in self._targets else ""
        if self._read_data:
            # Only its presence now: its bytes are read pack by pack later
            # (a stored blob's hash covers its length).
            return "is missing" if self._packs.mark(self._marks, sha256) is None else ""
        try:
            extent = self._packs.extent(sha256)
        except (SectionCorrupt, OSError) as error:
            return f"cannot be looked up: {error}"
        if extent is None:
            return "is missing"
        pack_id, offset, stored = extent
        if stored != length:
            return f"is stored with {stored} bytes, the tree says {length}"
        size = self._pack_sizes.get(pack_id)
        if size is None:
            try:
                size = self._pack_sizes[pack_id] = self._packs.pack_size(pack_id)
            except OSError as error:
                return f"is in pack {pack_id}, which cannot be read: {error.strerror}"
        if offset + length > size:
            return f"lies past the end of pack {pack_id} ({size} bytes)"
        return ""

    def _count_section(self, length: int) -> None:
        self.outcome.sections += 1
        self.outcome.section_bytes += length
        self._bytes_done += length
        self._since_report += 1
        if (
            self._since_report >= PROGRESS_EVERY_SECTIONS
            or self._bytes_done - self._reported_bytes >= PROGRESS_EVERY_BYTES
        ):
            self._progress("checking", f"revision {self._revision}")

    def _damage(self, blob: DamagedBlob, ranges: list[_Range] | None = None) -> None:
        if ranges is not None:
            if len(ranges) < MAX_RANGES:
                ranges.append(_Range(blob.first_index, blob.stop_index, blob.problem))
            else:
                self._ranges_dropped = True
        key = (blob.revision, blob.sha256)
        if blob.sha256 and key in self._seen:
            return
        if len(self._seen) < MAX_RANGES:
            self._seen.add(key)
        self.outcome.damaged_count += 1
        if len(self.outcome.damaged) < MAX_LISTED:
            self.outcome.damaged.append(blob)

    # -- damage → files ---------------------------------------------------

    def _map_files(self, revision: VerifiedRevision, ranges: list[_Range]) -> None:
        """Name the files the damaged section ranges fall in, and the name
        ranges of manifest chunks that cannot be read."""
        number = revision.number
        if self._ranges_dropped:
            self._unlisted(
                f"revision {number}: more than {MAX_RANGES} damaged places; "
                "not every damaged file is listed"
            )
        at = 0
        chunks = self._source.manifest_chunks(revision)
        chunk = next(chunks, None)
        while chunk is not None:
            following = next(chunks, None)
            if chunk.error:
                self._chunk_damaged(revision, chunk, following)
            else:
                self.outcome.manifest_chunks += 1
            for placed in chunk.records:
                first, stop = placed.first_section, placed.stop_section
                while at < len(ranges) and ranges[at].stop <= first:
                    at += 1
                reasons = []
                probe = at
                while probe < len(ranges) and ranges[probe].start < stop:
                    reasons.append(ranges[probe].reason)
                    probe += 1
                if reasons:
                    more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
                    self._file_damaged(
                        DamagedFile(number, placed.record.name, reasons[0] + more)
                    )
            chunk = following

    def _chunk_damaged(
        self,
        revision: VerifiedRevision,
        chunk: ManifestChunk,
        following: ManifestChunk | None,
    ) -> None:
        if chunk.blob:
            self._damage(
                DamagedBlob(
                    revision.number,
                    CHUNK,
                    chunk.blob,
                    chunk.error,
                    max_length=_MAX_BLOB_BYTES,
                    first_index=chunk.number,
                    stop_index=chunk.number + 1,
                )
            )
        until = f" up to {following.first_name!r}" if following else " to the last"
        start = f"from {chunk.first_name!r}" if chunk.first_name else "from the first"
        self._unlisted(
            f"revision {revision.number}: the files {start}{until} cannot be "
            f"listed ({chunk.error})"
        )

    def _unlisted(self, text: str) -> None:
        unlisted = self.outcome.unlisted
        if len(unlisted) < MAX_LISTED:
            unlisted.append(text)
        elif len(unlisted) == MAX_LISTED:
            unlisted.append("more damage whose files cannot be named is not listed")

    def _file_damaged(self, damaged: DamagedFile) -> None:
        self.outcome.damaged_files_count += 1
        if len(self.outcome.damaged_files) < MAX_LISTED:
            self.outcome.damaged_files.append(damaged)

    # -- progress -----------------------------------------------------------

    def _progress(self, phase: str, message: str) -> None:
        self._since_report = 0
        self._reported_bytes = self._bytes_done
        self._report(
            Progress(
                phase=phase,
                bytes_done=self._bytes_done,
                bytes_total=self._bytes_total,
                message=message,
                revision=self._revision,
            )
        )


# A blob whose length the tree does not give is at most this long.
_MAX_BLOB_BYTES = 4 * 1024 * 1024


def check_store(
    source: CheckSource,
    read_data: bool = False,
    report: Callable[[Progress], None] = lambda progress: None,
) -> CheckOutcome:
    """Check every stored revision (see the module doc)."""
    return StoreCheck(source, read_data, report).run()


def locate(source: CheckSource, hashes: set[bytes]) -> CheckOutcome:
    """Where the blobs ``hashes`` are referenced: the outcome's damage lists
    are those places and the files they fall in (nothing else is checked,
    beyond reading the trees)."""
    return StoreCheck(source, targets=set(hashes)).run()
