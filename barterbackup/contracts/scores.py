"""Per-peer scores: an audit reputation and an uptime score.

Audit: a beta reputation with a forgetting factor (Storj's design). Each
check result updates ``alpha <- lambda*alpha + w*passed`` and
``beta <- lambda*beta + w*failed``; the score is ``alpha / (alpha + beta)``.
With every check counting, alpha + beta tends to ``w / (1 - lambda)``: the
memory of the score, in checks.

The parameters are chosen for a small friend network checked hourly
(docs/contracts.md, "Scores", has the reasoning and the figures):

* lambda 0.98, w 1: a memory of 50 checks, about two days. Storj's 0.999
  (1000 checks) suits thousands of audits a day spread over a fleet; with
  one check an hour it would take 41 failed hours to notice a dead disk and
  weeks to forgive a repaired one.
* prior alpha 10, beta 0: a new peer starts at 1.0 but with a thin history,
  so its first failures weigh more (3 in a row break it) than those of a
  peer with a long good record (12 in a row, about half a day).
* suspect below 0.9 (6 straight failures from a long good record, 2 for a
  new peer), broken below 0.8: a replica failing one check in five for
  days is damaged, one failing one in twenty is noise to watch.

Uptime: the share of reachability probes answered, counted in one window
per UTC day over the last 30 days, so a week away costs a quarter of the
score for a month and then is forgotten.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from barterbackup._proto import storedpb_pb2

AUDIT_FORGETTING = 0.98
AUDIT_WEIGHT = 1.0
AUDIT_PRIOR_ALPHA = 10.0
AUDIT_PRIOR_BETA = 0.0
AUDIT_SUSPECT_BELOW = 0.9
AUDIT_BROKEN_BELOW = 0.8
# A peer under the `open` acceptance policy is vetted once it has passed
# this many checks (one day of hourly checks) with a good audit score.
VETTING_CHECKS = 24

UPTIME_WINDOW_SECONDS = 24 * 3600
UPTIME_WINDOWS = 30
# A peer never probed is presumed reachable, as a new peer's audit score
# starts at 1: the first real probes replace the presumption within a day.
UPTIME_WITHOUT_PROBES = 1.0


class Standing(enum.Enum):
    """Where an audit score puts a contract."""

    GOOD = "good"
    SUSPECT = "suspect"
    BROKEN = "broken"


def audit_standing(score: float) -> Standing:
    """GOOD, SUSPECT (below AUDIT_SUSPECT_BELOW) or BROKEN."""
    if score < AUDIT_BROKEN_BELOW:
        return Standing.BROKEN
    if score < AUDIT_SUSPECT_BELOW:
        return Standing.SUSPECT
    return Standing.GOOD


@dataclass(frozen=True)
class AuditReputation:
    """The two parameters of a peer's beta reputation."""

    alpha: float = AUDIT_PRIOR_ALPHA
    beta: float = AUDIT_PRIOR_BETA

    @property
    def score(self) -> float:
        """alpha / (alpha + beta), in [0, 1]."""
        total = self.alpha + self.beta
        return self.alpha / total if total > 0 else 1.0

    def after_check(self, passed: bool) -> AuditReputation:
        """The reputation after one more check result."""
        return AuditReputation(
            alpha=AUDIT_FORGETTING * self.alpha + (AUDIT_WEIGHT if passed else 0.0),
            beta=AUDIT_FORGETTING * self.beta + (0.0 if passed else AUDIT_WEIGHT),
        )


NEW_PEER = AuditReputation()


def long_good_record() -> AuditReputation:
    """The limit of a peer that passed every check it ever had."""
    return AuditReputation(alpha=AUDIT_WEIGHT / (1 - AUDIT_FORGETTING), beta=0.0)


def failures_until_below(reputation: AuditReputation, threshold: float) -> int:
    """How many failed checks in a row take the score below ``threshold``."""
    count = 0
    while reputation.score >= threshold:
        reputation = reputation.after_check(passed=False)
        count += 1
    return count


def audit_reputation_of(peer: storedpb_pb2.Peer) -> AuditReputation:
    """The peer's stored reputation; the prior when it has none.

    Values that cannot come from the update rule (negative, not finite)
    mean a damaged record and are treated as no history.
    """
    alpha, beta = peer.audit_alpha, peer.audit_beta
    valid = all(math.isfinite(v) and v >= 0 for v in (alpha, beta))
    if not valid or alpha + beta == 0:
        return NEW_PEER
    return AuditReputation(alpha, beta)


def with_check_result(
    peer: storedpb_pb2.Peer, passed: bool, at: float
) -> storedpb_pb2.Peer:
    """A copy of ``peer`` updated with one check result made at ``at``."""
    updated = storedpb_pb2.Peer()
    updated.CopyFrom(peer)
    reputation = audit_reputation_of(peer).after_check(passed)
    updated.audit_alpha = reputation.alpha
    updated.audit_beta = reputation.beta
    updated.audit_score = reputation.score
    if passed:
        updated.checks_passed += 1
    else:
        updated.checks_failed += 1
    updated.last_check_at = at
    return updated


@dataclass(frozen=True)
class UptimeWindow:
    """The reachability probes of one UTC day."""

    day: int
    probes: int
    answered: int


def day_of(at: float) -> int:
    """Whole days since the Unix epoch (UTC) at time ``at``."""
    return math.floor(at / UPTIME_WINDOW_SECONDS)


def record_probe(
    windows: Sequence[UptimeWindow], at: float, answered: bool
) -> tuple[UptimeWindow, ...]:
    """The windows after one probe at ``at``; at most UPTIME_WINDOWS kept.

    Windows older than 30 days are dropped. A probe dated before the newest
    window (the clock went back) counts in the newest one, so the windows
    stay in order.
    """
    today = day_of(at)
    kept = [w for w in windows if w.day > today - UPTIME_WINDOWS]
    hit = 1 if answered else 0
    if kept and kept[-1].day >= today:
        last = kept[-1]
        kept[-1] = UptimeWindow(last.day, last.probes + 1, last.answered + hit)
    else:
        kept.append(UptimeWindow(today, 1, hit))
    return tuple(kept[-UPTIME_WINDOWS:])


def uptime_score(windows: Sequence[UptimeWindow], now: float) -> float:
    """Share of probes answered over the last 30 days."""
    today = day_of(now)
    recent = [w for w in windows if today - UPTIME_WINDOWS < w.day <= today]
    probes = sum(w.probes for w in recent)
    if probes == 0:
        return UPTIME_WITHOUT_PROBES
    return sum(w.answered for w in recent) / probes


def uptime_windows_of(peer: storedpb_pb2.Peer) -> tuple[UptimeWindow, ...]:
    """The peer's stored windows, oldest first, damaged ones left out."""
    windows = [
        UptimeWindow(w.day, w.probes, w.answered)
        for w in peer.uptime_windows
        if w.answered <= w.probes
    ]
    windows.sort(key=lambda w: w.day)
    return tuple(windows[-UPTIME_WINDOWS:])


def with_probe(peer: storedpb_pb2.Peer, answered: bool, at: float) -> storedpb_pb2.Peer:
    """A copy of ``peer`` updated with one reachability probe at ``at``."""
    windows = record_probe(uptime_windows_of(peer), at, answered)
    updated = storedpb_pb2.Peer()
    updated.CopyFrom(peer)
    del updated.uptime_windows[:]
    updated.uptime_windows.extend(
        storedpb_pb2.UptimeWindow(day=w.day, probes=w.probes, answered=w.answered)
        for w in windows
    )
    updated.uptime_score = uptime_score(windows, at)
    return updated


def is_vetted(peer: storedpb_pb2.Peer) -> bool:
    """True once the peer passed VETTING_CHECKS checks and is in good standing."""
    return (
        peer.checks_passed >= VETTING_CHECKS
        and audit_standing(audit_reputation_of(peer).score) is Standing.GOOD
    )
