"""What replicas offer, and which revision a recovery takes.

A replica answers ``GetContentRevision`` with the signed root of the
newest revision of ours it holds completely, and (``pending_signed_root``)
a newer one it is still fetching. The owner verifies every root with its
own key (``revisions.verify_root``): a root that does not parse, is not
signed by us, or is signed by another key is *forged* and its offer
ignored. The revision taken is the **highest validly signed revision some
replica holds completely**; a newer one that replicas only hold in part is
reported ("revision 7 is held completely by no replica: recovering 6").
Every replica that holds the chosen revision completely is a source; one
that offers an older revision (and is not fetching the chosen one) is
ignored as stale. Forged and stale offers lower the offering peer's score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from barterbackup._proto import bbrpc_pb2
from barterbackup.revisions import InvalidRevision, VerifiedRevision, verify_root


@dataclass(frozen=True)
class Offer:
    """One replica's answer, verified."""

    peer: bytes
    # held is the newest revision the replica holds completely.
    held: VerifiedRevision | None = None
    # pending is a newer one it is fetching.
    pending: VerifiedRevision | None = None
    # forged names what was wrong with a root that failed verification.
    forged: str = ""


def read_offer(
    peer: bytes, response: bbrpc_pb2.GetContentRevisionResponse, owner: bytes
) -> Offer:
    """Verify a replica's answer with our key ``owner``."""
    held: VerifiedRevision | None = None
    pending: VerifiedRevision | None = None
    signed = bytes(response.signed_root)
    pending_signed = bytes(response.pending_signed_root)
    try:
        if signed:
            revision = verify_root(signed, expected_owner=owner)
            if response.complete:
                held = revision
            else:
                pending = revision
        if pending_signed:
            pending = verify_root(pending_signed, expected_owner=owner)
    except InvalidRevision as error:
        return Offer(peer, forged=str(error))
    if held is not None and pending is not None and pending.number <= held.number:
        return Offer(peer, forged="its pending revision is not newer than its held one")
    return Offer(peer, held, pending)


@dataclass(frozen=True)
class Choice:
    """The revision to recover and who holds it."""

    revision: VerifiedRevision | None
    # sources hold ``revision`` completely.
    sources: tuple[bytes, ...] = ()
    # forged and stale offers: (peer, why), to be ignored and scored down.
    faulty: tuple[tuple[bytes, str], ...] = ()
    # note says what people should know of the choice (a fallback).
    note: str = ""
    # newest is the highest validly signed revision seen anywhere.
    newest: int = 0


@dataclass
class _Seen:
    revision: VerifiedRevision
    holders: list[bytes] = field(default_factory=list)


def choose(offers: Iterable[Offer], wanted_number: int = 0) -> Choice:
    """The highest validly signed revision held completely (or exactly
    ``wanted_number`` when given), its holders, and the offers to ignore."""
    offers = list(offers)
    faulty: list[tuple[bytes, str]] = []
    complete: dict[bytes, _Seen] = {}
    newest = 0
    for offer in offers:
        if offer.forged:
            faulty.append((offer.peer, f"offered a forged revision: {offer.forged}"))
            continue
        for revision in (offer.held, offer.pending):
            if revision is not None:
                newest = max(newest, revision.number)
        if offer.held is not None:
            seen = complete.setdefault(offer.held.content_id, _Seen(offer.held))
            seen.holders.append(offer.peer)
    candidates = sorted(
        complete.values(), key=lambda seen: seen.revision.number, reverse=True
    )
    if wanted_number:
        candidates = [c for c in candidates if c.revision.number == wanted_number]
    if not candidates:
        note = ""
        if newest:
            note = f"no replica holds revision {wanted_number or newest} completely"
        return Choice(None, faulty=tuple(faulty), note=note, newest=newest)
    # Two different revisions with one number cannot both be ours unless
    # the key signed both; the first seen wins, the other is stale below.
    chosen = candidates[0]
    target = chosen.revision
    for offer in offers:
        if offer.forged or offer.peer in chosen.holders:
            continue
        if offer.pending is not None and offer.pending.content_id == target.content_id:
            continue  # Catching up: not a fault.
        best = max(
            (r.number for r in (offer.held, offer.pending) if r is not None),
            default=0,
        )
        if best and best < target.number and not wanted_number:
            faulty.append(
                (offer.peer, f"offered revision {best}, older than {target.number}")
            )
    note = ""
    if newest > target.number and not wanted_number:
        note = (
            f"revision {newest} is held completely by no replica: "
            f"recovering revision {target.number}, the newest complete one"
        )
    return Choice(
        target,
        tuple(chosen.holders),
        tuple(faulty),
        note,
        newest,
    )
