"""Status at a glance: is the user's data safe, in one line.

Like Syncthing's "Up to Date", ``barterbackup status`` starts with one line:

    protected: revision 12 (2 h ago) held by 2 of 2 replicas, last checks passed
    at risk: under-replicated: 1 of 2 replicas hold revision 12 (2 h ago); …

``status_line`` is a pure function of the node's state (``NodeSafety``, read
from ``GetStatusResponse`` by ``safety_from_status``) and the current time.
Data is *at risk* when any of these holds, each giving a reason:

* the node is locked (nothing runs until it is unlocked);
* nothing has been backed up yet;
* no replica is required (``min_replicas`` 0: one machine only);
* fewer peers than ``min_replicas`` hold the current revision under a
  contract in good standing ("under-replicated: 1 of 2");
* a replica failed its most recent spot check;
* the last backup run failed, or could not read a source folder;
* scheduled backups are overdue (the last good one is older than two
  intervals);
* the peer network failed, or the node reports another error.

``status --check`` exits with ``EXIT_AT_RISK`` when ``at_risk`` is true.
"""

from __future__ import annotations

from dataclasses import dataclass

from barterbackup._proto import clirpc_pb2

# Exit status of `status --check` when the data is at risk (0: protected;
# 3 still means the daemon could not be reached).
EXIT_AT_RISK = 4


@dataclass(frozen=True)
class LastBackup:
    """The last backup run, as far as the headline needs it."""

    finished_at: float
    error: str = ""
    committed: bool = False
    revision: int = 0
    warning_count: int = 0
    unavailable_sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeSafety:
    """What decides whether the data is safe (times in Unix seconds, 0: none)."""

    unlocked: bool
    revision: int = 0
    revision_time: float = 0
    min_replicas: int = 0
    replicas_current: int = 0
    replicas_older: int = 0
    checks_passed: int = 0
    checks_failed: int = 0
    source_count: int = 0
    schedule_every: int = 0
    backup_running: bool = False
    last_backup: LastBackup | None = None
    peer_network: str = ""
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusLine:
    """The headline, whether the data is at risk, and every reason why."""

    text: str
    at_risk: bool
    reasons: tuple[str, ...]


def human_age(seconds: float) -> str:
    """How long ago, roughly: ``just now``, ``5 min ago``, ``2 h ago``, ``3 days
    ago``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} days ago"


def _interval(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def status_line(state: NodeSafety, now: float) -> StatusLine:
    """The one-line answer to "is my data safe?" (see the module doc)."""
    reasons: list[str] = []
    if not state.unlocked:
        reasons.append("locked: nothing is backed up until `barterbackup unlock`")
        return StatusLine(f"at risk: {reasons[0]}", True, tuple(reasons))

    revision = ""
    if state.revision:
        revision = f"revision {state.revision}"
        if state.revision_time:
            revision += f" ({human_age(now - state.revision_time)})"
    held = (
        f"{revision} held by {state.replicas_current} of {state.min_replicas} "
        f"replica{'s' if state.min_replicas != 1 else ''}"
    )
    if state.replicas_older:
        held += f" ({state.replicas_older} more hold an older revision)"

    if not state.revision:
        hint = (
            "" if state.source_count else " (add a folder: `barterbackup sources add`)"
        )
        reasons.append(f"nothing backed up yet{hint}")
    elif state.min_replicas == 0:
        reasons.append(f"{revision} is on this machine only (min_replicas is 0)")
    elif state.replicas_current < state.min_replicas:
        replicas = f"replica{'s' if state.min_replicas != 1 else ''}"
        verb = "holds" if state.replicas_current == 1 else "hold"
        short = (
            f"under-replicated: {state.replicas_current} of {state.min_replicas} "
            f"{replicas} {verb} {revision}"
        )
        if state.replicas_older:
            short += f" ({state.replicas_older} more hold an older revision)"
        reasons.append(short)
    if state.checks_failed:
        count = state.checks_failed
        reasons.append(
            f"the last check failed for {count} replica{'s' if count != 1 else ''}"
        )
    last = state.last_backup
    if last is not None and last.error:
        reasons.append(
            f"last backup failed {human_age(now - last.finished_at)}: {last.error}"
        )
    if last is not None and last.unavailable_sources:
        names = ", ".join(last.unavailable_sources)
        reasons.append(f"the last backup could not read: {names}")
    if (
        state.schedule_every
        and not state.backup_running
        and last is not None
        and not last.error
        and now - last.finished_at > 2 * state.schedule_every
    ):
        reasons.append(
            f"the last backup was {human_age(now - last.finished_at)}, "
            f"though scheduled every {_interval(state.schedule_every)}"
        )
    if state.peer_network.startswith("failed"):
        reasons.append(f"peer network {state.peer_network}")
    reasons.extend(state.errors)

    if reasons:
        return StatusLine(f"at risk: {'; '.join(reasons)}", True, tuple(reasons))
    if state.checks_passed:
        checks = "last checks passed"
    else:
        checks = "not spot-checked yet"
    text = f"protected: {held}, {checks}"
    if state.backup_running:
        text += "; backup running"
    elif last is not None and last.warning_count:
        text += f"; the last backup skipped {last.warning_count} entries"
    return StatusLine(text, False, ())


def safety_from_status(status: clirpc_pb2.GetStatusResponse) -> NodeSafety:
    """The NodeSafety a GetStatus answer describes."""
    last = None
    if status.HasField("last_backup") and status.last_backup.finished_at:
        run = status.last_backup
        last = LastBackup(
            finished_at=float(run.finished_at),
            error=run.error,
            committed=run.committed,
            revision=run.revision,
            warning_count=run.warning_count,
            unavailable_sources=tuple(run.unavailable_sources),
        )
    return NodeSafety(
        unlocked=status.unlocked,
        revision=status.revision,
        revision_time=float(status.revision_time),
        min_replicas=status.min_replicas,
        replicas_current=status.replicas_current,
        replicas_older=status.replicas_older,
        checks_passed=status.checks_passed,
        checks_failed=status.checks_failed,
        source_count=status.source_count,
        schedule_every=status.schedule.every_seconds,
        backup_running=status.schedule.running,
        last_backup=last,
        peer_network=status.peer_network,
        errors=tuple(status.errors),
    )
