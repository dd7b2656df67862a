"""The data of each contract state, and its persisted form.

Each data state of the machine has one class here and one message in
storedpb.ContractRecord's ``data`` oneof; ``encode_record`` and
``decode_record`` convert between them. Decoding validates everything: a
damaged record is refused with InvalidRecord, never half-restored.
"""

from __future__ import annotations

import enum
import math
import unicodedata
from dataclasses import dataclass

from barterbackup._proto import storedpb_pb2

RECORD_FORMAT = 1
# Reasons come partly from peers; they are shown to users and persisted, so
# they are bounded and stripped of control characters.
MAX_REASON_CHARS = 300


class InvalidRecord(ValueError):
    """A persisted contract record is damaged or from another format."""


class SuspectCause(enum.Enum):
    """Why an active or syncing contract becomes suspect."""

    # A check went unanswered while the peer was reachable (containment).
    UNANSWERED = "unanswered"
    # The peer could not be reached.
    UNREACHABLE = "unreachable"
    # Failed checks took the audit score below the suspect threshold.
    LOW_AUDIT_SCORE = "low audit score"


class BreakCause(enum.Enum):
    """Why a contract broke; mirrors storedpb.ContractBreakCause."""

    FAILED_CHECKS = storedpb_pb2.CONTRACT_BREAK_CAUSE_FAILED_CHECKS
    UNREACHABLE = storedpb_pb2.CONTRACT_BREAK_CAUSE_UNREACHABLE


@dataclass(frozen=True)
class Syncing:
    """The peer is receiving our current revision."""

    since: float


@dataclass(frozen=True)
class Active:
    """The peer holds our current revision and passes its checks."""

    since: float


@dataclass
class Suspect:
    """The peer is contained: not answering, unreachable, or failing.

    Mutable: the suspect state's own inputs update it in place.
    """

    since: float
    # Times in a row the pending check went unanswered while reachable.
    unanswered: int = 0
    # When the current outage began; None while the peer is reachable.
    unreachable_since: float | None = None
    # Our current revision is not yet synced to the peer: checks wait.
    needs_sync: bool = False


@dataclass(frozen=True)
class Broken:
    """The peer broke the contract; we keep its data until grace_until."""

    cause: BreakCause
    detail: str
    since: float
    grace_until: float


@dataclass(frozen=True)
class Ending:
    """The contract ends gracefully; the peer's data is kept meanwhile."""

    reason: str
    by_us: bool
    since: float
    keep_until: float


@dataclass(frozen=True)
class Ended:
    """The contract is over and nothing of the peer's is kept."""

    reason: str
    since: float


StateData = Syncing | Active | Suspect | Broken | Ending | Ended
STATE_NAMES = (
    "proposed",
    "syncing",
    "active",
    "suspect",
    "broken",
    "ending",
    "ended",
)
_DATA_OF_STATE: dict[str, type[StateData] | None] = {
    "proposed": None,
    "syncing": Syncing,
    "active": Active,
    "suspect": Suspect,
    "broken": Broken,
    "ending": Ending,
    "ended": Ended,
}


def bounded_reason(text: str) -> str:
    """``text`` without control characters, cut to MAX_REASON_CHARS."""
    cleaned = "".join(
        ch if not unicodedata.category(ch).startswith("C") else " " for ch in text
    ).strip()
    if len(cleaned) > MAX_REASON_CHARS:
        cleaned = cleaned[: MAX_REASON_CHARS - 1] + "…"
    return cleaned or "no reason given"


def encode_record(
    signed_terms: bytes, state: str, data: StateData | None
) -> storedpb_pb2.ContractRecord:
    """The persisted form of a machine's (state, data)."""
    expected = _DATA_OF_STATE.get(state, ...)
    if expected is ... or (expected is None) != (data is None):
        raise ValueError(f"no such state with that data: {state!r}")
    if data is not None and not isinstance(data, expected):  # type: ignore[arg-type]
        raise ValueError(f"state {state!r} does not take {type(data).__name__}")
    record = storedpb_pb2.ContractRecord(
        format=RECORD_FORMAT, signed_terms=signed_terms, state=state
    )
    match data:
        case Syncing(since):
            record.syncing.since = since
        case Active(since):
            record.active.since = since
        case Suspect(since, unanswered, unreachable_since, needs_sync):
            record.suspect.since = since
            record.suspect.unanswered = unanswered
            if unreachable_since is not None:
                record.suspect.unreachable_since = unreachable_since
            record.suspect.needs_sync = needs_sync
        case Broken(cause, detail, since, grace_until):
            record.broken.cause = cause.value
            record.broken.detail = detail
            record.broken.since = since
            record.broken.grace_until = grace_until
        case Ending(reason, by_us, since, keep_until):
            record.ending.reason = reason
            record.ending.by_us = by_us
            record.ending.since = since
            record.ending.keep_until = keep_until
        case Ended(reason, since):
            record.ended.reason = reason
            record.ended.since = since
    return record


def _time(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise InvalidRecord(f"the record's {what} is not a time: {value!r}")
    return value


def _reason(text: str, what: str) -> str:
    if len(text) > MAX_REASON_CHARS:
        raise InvalidRecord(f"the record's {what} is longer than {MAX_REASON_CHARS}")
    return text


def decode_record(record: storedpb_pb2.ContractRecord) -> tuple[str, StateData | None]:
    """(state, data) of a persisted record, validated."""
    if record.format != RECORD_FORMAT:
        raise InvalidRecord(
            f"contract record format {record.format} is not {RECORD_FORMAT}"
        )
    state = record.state
    if state not in _DATA_OF_STATE:
        raise InvalidRecord(f"unknown contract state {state[:40]!r}")
    which = record.WhichOneof("data")
    if which != (state if _DATA_OF_STATE[state] is not None else None):
        raise InvalidRecord(f"the {state!r} record carries {which or 'no'} data")
    data: StateData | None
    if which == "syncing":
        data = Syncing(_time(record.syncing.since, "since"))
    elif which == "active":
        data = Active(_time(record.active.since, "since"))
    elif which == "suspect":
        message = record.suspect
        data = Suspect(
            since=_time(message.since, "since"),
            unanswered=message.unanswered,
            unreachable_since=(
                _time(message.unreachable_since, "unreachable_since")
                if message.HasField("unreachable_since")
                else None
            ),
            needs_sync=message.needs_sync,
        )
    elif which == "broken":
        broken = record.broken
        try:
            cause = BreakCause(broken.cause)
        except ValueError:
            raise InvalidRecord(f"unknown break cause {broken.cause}") from None
        data = Broken(
            cause=cause,
            detail=_reason(broken.detail, "detail"),
            since=_time(broken.since, "since"),
            grace_until=_time(broken.grace_until, "grace_until"),
        )
    elif which == "ending":
        ending = record.ending
        data = Ending(
            reason=_reason(ending.reason, "reason"),
            by_us=ending.by_us,
            since=_time(ending.since, "since"),
            keep_until=_time(ending.keep_until, "keep_until"),
        )
    elif which == "ended":
        data = Ended(
            reason=_reason(record.ended.reason, "reason"),
            since=_time(record.ended.since, "since"),
        )
    else:
        data = None
    return state, data
