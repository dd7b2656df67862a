"""The contract book's local settings, and reading them from JSON.

None of these is part of the signed terms (except the check policy of the
contracts this node proposes, which goes into their terms): they are how
patient this node is. The defaults suit friends whose machines are off for
a holiday (docs/contracts.md); the demo and tests shorten them with
``twistd barterbackup --contract-timings FILE``, a JSON object such as::

    {"check_interval": 60, "answer_deadline": 20, "outage_limit": 90,
     "grace_after_outage": 120, "retry_peer_after": 30}

(all in seconds; keys left out keep their defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from barterbackup.contracts.collaborators import ContractTimings
from barterbackup.contracts.terms import DEFAULT_CHECK_POLICY, CheckPolicy, InvalidTerms


@dataclass(frozen=True)
class BookSettings:
    """Local timings of the contract book."""

    timings: ContractTimings = field(default_factory=ContractTimings)
    # The check policy of the contracts this node proposes.
    check_policy: CheckPolicy = DEFAULT_CHECK_POLICY
    max_checks_at_once: int = 4
    # A peer whose connection was lost is tried again after this; only if
    # that fails is it unreachable (idle connections close by themselves).
    probe_delay_seconds: float = 30.0
    # How often the book looks at its replicas even if nothing happened.
    maintain_every_seconds: float = 600.0
    # How soon after an event the book looks at its replicas.
    replan_delay_seconds: float = 5.0
    # A peer that refused us or could not be reached is not proposed to
    # again for this long.
    retry_peer_after_seconds: float = 3600.0
    # How long a proposal waits for the peer's answer.
    proposal_timeout_seconds: float = 120.0


class InvalidSettings(ValueError):
    """A settings file names an unknown key or an impossible value."""


# JSON key -> (where it goes, converter).
_TIMINGS = {
    "containment_retries": ("containment_retries", int),
    "outage_limit": ("outage_limit_seconds", float),
    "grace_after_failed_checks": ("grace_after_failed_checks_seconds", float),
    "grace_after_outage": ("grace_after_outage_seconds", float),
    "ending_keep": ("ending_keep_seconds", float),
}
_POLICY = {
    "check_interval": ("interval_seconds", int),
    "check_samples": ("samples", int),
    "answer_deadline": ("answer_deadline_seconds", int),
}
_BOOK = {
    "max_checks_at_once": ("max_checks_at_once", int),
    "probe_delay": ("probe_delay_seconds", float),
    "maintain_every": ("maintain_every_seconds", float),
    "replan_delay": ("replan_delay_seconds", float),
    "retry_peer_after": ("retry_peer_after_seconds", float),
    "proposal_timeout": ("proposal_timeout_seconds", float),
}


def settings_from_json(data: Any) -> BookSettings:
    """BookSettings from a parsed JSON object; InvalidSettings if wrong."""
    if not isinstance(data, dict):
        raise InvalidSettings("contract settings must be a JSON object")
    unknown = set(data) - set(_TIMINGS) - set(_POLICY) - set(_BOOK)
    if unknown:
        raise InvalidSettings(
            f"unknown contract settings: {', '.join(sorted(unknown))}"
        )
    parts: dict[str, dict[str, Any]] = {"timings": {}, "policy": {}, "book": {}}
    for table, part in ((_TIMINGS, "timings"), (_POLICY, "policy"), (_BOOK, "book")):
        for key, (name, kind) in table.items():
            if key not in data:
                continue
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidSettings(f"{key} must be a number")
            if not math.isfinite(value) or value < 0 or (value == 0 and kind is float):
                raise InvalidSettings(f"{key} must be positive, not {value}")
            parts[part][name] = kind(value)
    settings = BookSettings()
    policy = replace(settings.check_policy, **parts["policy"])
    try:
        policy.validate()
    except InvalidTerms as error:
        raise InvalidSettings(str(error)) from None
    if parts["book"].get("max_checks_at_once", 1) < 1:
        raise InvalidSettings("max_checks_at_once must be at least 1")
    return replace(
        settings,
        timings=replace(settings.timings, **parts["timings"]),
        check_policy=policy,
        **parts["book"],
    )
