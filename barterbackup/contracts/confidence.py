"""What a passed spot check proves, in words a user understands.

A check samples n positions uniformly over the content. If a fraction f of
it were missing, each position would land on missing data with probability
f, and a missing position goes unnoticed with probability ``miss`` (0 for
the digest check, 1/256 for a one-byte sample the replica guesses). So the
check catches such a loss with probability ``1 - (1 - f * (1 - miss))**n``:
for n = 460 and f = 1 %, 99.0 % (the PDP bound of Ateniese et al.).
Passing is therefore "at least that confident that under f is missing".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The loss a statement is made about, unless the caller says otherwise.
STATED_LOSS = 0.01


def detection_probability(
    positions: int, loss_fraction: float, miss_per_position: float = 0.0
) -> float:
    """Probability that a check of ``positions`` catches a loss of that size."""
    if positions < 0 or not 0.0 <= loss_fraction <= 1.0:
        raise ValueError("positions must be >= 0 and the loss within [0, 1]")
    if not 0.0 <= miss_per_position <= 1.0:
        raise ValueError("the miss probability must be within [0, 1]")
    caught = loss_fraction * (1.0 - miss_per_position)
    return 1.0 - (1.0 - caught) ** positions


def positions_needed(
    loss_fraction: float, confidence: float, miss_per_position: float = 0.0
) -> int:
    """The fewest positions that catch ``loss_fraction`` with ``confidence``."""
    if not 0.0 < loss_fraction <= 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError("the loss must be in (0, 1] and the confidence in (0, 1)")
    caught = loss_fraction * (1.0 - miss_per_position)
    if caught >= 1.0:
        return 1
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - caught))


def _percent(value: float) -> str:
    text = f"{value * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text} %"


def _floor_percent(value: float) -> float:
    # Rounded down to 0.1 %, so a statement never claims more than is true.
    return math.floor(value * 1000 + 1e-9) / 1000


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one spot check."""

    passed: bool
    positions: int
    # Positions whose answer differed, when the kind of check tells (the
    # sample check does, the digest check only knows that one differed).
    mismatches: int | None = None
    miss_per_position: float = 0.0

    def confidence(self, loss_fraction: float = STATED_LOSS) -> float:
        """How surely a loss of ``loss_fraction`` would have been caught."""
        return detection_probability(
            self.positions, loss_fraction, self.miss_per_position
        )

    def summary(self, loss_fraction: float = STATED_LOSS) -> str:
        """One line for the CLI, e.g. "passed: 460 positions sampled; ≥ 99 %
        confidence that under 1 % is missing"."""
        if self.passed:
            confidence = _floor_percent(self.confidence(loss_fraction))
            return (
                f"passed: {self.positions} positions sampled; "
                f"≥ {_percent(confidence)} confidence that under "
                f"{_percent(loss_fraction)} is missing"
            )
        if self.mismatches is None:
            return (
                f"failed: the answer does not match our copy at the "
                f"{self.positions} sampled positions; data is missing or altered"
            )
        share = self.mismatches / self.positions if self.positions else 1.0
        return (
            f"failed: {self.mismatches} of {self.positions} sampled positions "
            f"did not match; about {_percent(share)} is missing or altered"
        )
