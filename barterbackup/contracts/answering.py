"""The replica's side of a spot check: answer from the revision it holds.

A SpotCheck names a contract and a challenge about one revision of the
caller's content. The answer is computed from what this node stores for
the caller, read through the revision's section tree from the replica
store (``readers.TreeContent``), off the reactor thread. Only the revision
held completely counts: a challenge naming another one (an older one, or
one still being fetched) is answered with ``ERROR_CODE_STALE``, and with
``ERROR_CODE_NOT_FOUND`` when nothing is held or part of it is missing.

Bounds: the caller must be the peer of a contract with us that still
keeps its data; one check per caller at a time, and at most ``BURST``
checks in a row then one every ``REFILL_SECONDS`` (``ERROR_CODE_BUSY``):
a check costs us a few hundred random reads, and a peer asking without
pause would keep a disk busy. Challenges are capped by their own
validation (at most 4,096 positions of at most 64 bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from barterbackup._proto import bbrpc_pb2
from barterbackup.bbrpc.errors import PeerCallError
from barterbackup.contracts import digestcheck, samplecheck
from barterbackup.contracts.heldcontent import (
    CONTENT_ID_BYTES,
    BadChallenge,
    HeldRevision,
    RevisionNotHeld,
)
from barterbackup.contracts.readers import DataMissing, TreeContent
from barterbackup.store.replicas import ReplicaStore
from barterbackup.sync.interfaces import Blocking, ReactorTime, run_inline
from barterbackup.tree import TreeError

# keeps(peer, contract_id): the contract is with that peer and we keep its
# data under it (in force, broken or ending).
Keeps = Callable[[bytes, bytes], bool]
# A caller may ask this many checks at once (the user checking by hand,
# containment re-asks), then one every REFILL_SECONDS: six a minute, sixty
# times what the shortest check interval needs.
BURST = 6
REFILL_SECONDS = 10.0


class SpotCheckAnswerer:
    """Answers SpotCheck calls for the owners we keep content for."""

    def __init__(
        self,
        replicas: ReplicaStore,
        keeps: Keeps,
        blocking: Blocking[Any] = run_inline,
        clock: ReactorTime | None = None,
    ) -> None:
        self._replicas = replicas
        self._keeps = keeps
        self._blocking = blocking
        self._clock = clock
        self._answering: set[bytes] = set()
        # Per caller: (tokens, when they were counted).
        self._buckets: dict[bytes, tuple[float, float]] = {}
        # What the last answer read, for tests and benchmarks.
        self.last_reads: tuple[int, int, int] = (0, 0, 0)

    async def answer(
        self, owner: bytes, request: bbrpc_pb2.SpotCheckRequest
    ) -> bbrpc_pb2.SpotCheckResponse:
        contract_id = bytes(request.contract_id)
        if len(contract_id) != 32:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_BAD_REQUEST, "a contract id is 32 bytes"
            )
        if not self._keeps(owner, contract_id):
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_PERMISSION_DENIED,
                "no contract of yours under which this node keeps your data",
            )
        if owner in self._answering:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_BUSY, "a check of yours is already being answered"
            )
        self._take_token(owner)
        kind = request.WhichOneof("challenge")
        try:
            if kind == "digest":
                digest = digestcheck.DigestChallenge.from_proto(request.digest)
                content_id = digest.content_id
            elif kind == "sample":
                sample = samplecheck.SampleChallenge.from_proto(request.sample)
                content_id = sample.content_id
            else:
                raise BadChallenge("the request holds no challenge")
        except BadChallenge as error:
            raise PeerCallError(bbrpc_pb2.ERROR_CODE_BAD_REQUEST, str(error)) from None
        if len(content_id) != CONTENT_ID_BYTES:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_BAD_REQUEST, "a content id is 32 bytes"
            )
        held_replica = self._replicas.held(owner)
        revision = held_replica.held if held_replica is not None else None
        held = (
            HeldRevision(revision.content_id, revision.content_length)
            if revision is not None
            else None
        )
        self._answering.add(owner)
        try:
            if revision is None or held is None:
                raise RevisionNotHeld("no complete revision of yours is held here")
            reader = TreeContent(
                revision, lambda sha256: self._replicas.read_blob(owner, sha256)
            )

            def compute() -> bbrpc_pb2.SpotCheckResponse:
                if kind == "digest":
                    answer = digestcheck.answer_digest_challenge(digest, held, reader)
                    response = bbrpc_pb2.SpotCheckResponse(digest=answer)
                else:
                    answer = samplecheck.answer_sample_challenge(sample, held, reader)
                    response = bbrpc_pb2.SpotCheckResponse(samples=answer)
                self.last_reads = (
                    reader.node_reads,
                    reader.section_reads,
                    reader.section_bytes_read,
                )
                return response

            response: bbrpc_pb2.SpotCheckResponse = await self._blocking(compute)
            return response
        except RevisionNotHeld as error:
            if held is None:
                raise PeerCallError(
                    bbrpc_pb2.ERROR_CODE_NOT_FOUND, str(error)
                ) from None
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_STALE,
                f"{error}; revision {revision.number if revision else 0} is held",
            ) from None
        except BadChallenge as error:
            raise PeerCallError(bbrpc_pb2.ERROR_CODE_BAD_REQUEST, str(error)) from None
        except (DataMissing, TreeError) as error:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_NOT_FOUND,
                f"part of your content is missing here: {error}",
            ) from None
        finally:
            self._answering.discard(owner)

    def _take_token(self, owner: bytes) -> None:
        if self._clock is None:
            return
        now = self._clock.seconds()
        tokens, then = self._buckets.get(owner, (float(BURST), now))
        tokens = min(float(BURST), tokens + (now - then) / REFILL_SECONDS)
        if tokens < 1:
            raise PeerCallError(
                bbrpc_pb2.ERROR_CODE_BUSY,
                f"checks come too fast: one every {REFILL_SECONDS:.0f} s",
            )
        self._buckets[owner] = (tokens - 1, now)
