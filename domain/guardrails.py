"""Guard-rail windows and the pure arithmetic of sliding-window spend.

Spend is kept in one-minute buckets sorted by minute, where ``minute`` is whole minutes
since the Unix epoch (UTC): in an account as two columns (``minutes``, ``amounts``), in the
read model and the older helpers here as ``[[minute, micros], ...]`` pairs. A window of W
minutes at ``now`` covers the buckets with ``minute > now_minute - W``: it is exact to within
one minute.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate
from operator import itemgetter

WINDOWS: tuple[tuple[str, int], ...] = (
    ("5MIN", 5),
    ("15MIN", 15),
    ("30MIN", 30),
    ("60MIN", 60),
    ("90MIN", 90),
    ("120MIN", 120),
    ("240MIN", 240),
    ("300MIN", 300),
    ("360MIN", 360),
    ("400MIN", 400),
    ("460MIN", 460),
    ("520MIN", 520),
    ("640MIN", 640),
    ("700MIN", 700),
    ("1440MIN", 1440),
    ("48H", 2880),
    ("72H", 4320),
)
WINDOW_MINUTES: dict[str, int] = dict(WINDOWS)
WINDOW_NAMES: tuple[str, ...] = tuple(name for name, _ in WINDOWS)
LONGEST_WINDOW_MINUTES = WINDOWS[-1][1]


def minute_of(at: datetime) -> int:
    """Whole minutes since the epoch for an aware datetime."""
    return int(at.timestamp()) // 60


def env_name(window: str) -> str:
    """The environment variable holding a window's default limit."""
    return f"GUARDRAILS_MAX_{window}_RATE"


def normalise_window(name: str) -> str:
    """Accept '60min', '60MIN', '48h' and return the canonical name or raise ValueError."""
    canonical = name.strip().upper()
    if canonical not in WINDOW_MINUTES:
        raise ValueError(f"unknown window {name!r}; expected one of {', '.join(WINDOW_NAMES)}")
    return canonical


@dataclass(frozen=True)
class GuardrailPolicy:
    """Service-wide defaults: the master switch and each window's limit in micro-USD (0 = off).

    The switch governs only these defaults: limits an operator sets for one user are enforced
    whatever it says.
    """

    enabled: bool = False
    limits: Mapping[str, int] = field(default_factory=dict)

    def effective_limits(self, overrides: Mapping[str, int]) -> dict[str, int]:
        """Limits in force for one account: its own limits (always), over the defaults (only
        while the switch is on); 0 turns a window off."""
        merged = {name: self.limits.get(name, 0) for name in WINDOW_NAMES} if self.enabled else {}
        merged.update(overrides)
        return {name: limit for name, limit in merged.items() if limit > 0}


def add_spend(buckets: list[list[int]], minute: int, amount: int) -> None:
    """Add ``amount`` to the bucket for ``minute``, keeping buckets sorted (the pair form)."""
    if buckets and buckets[-1][0] == minute:
        buckets[-1][1] += amount
    elif not buckets or buckets[-1][0] < minute:
        buckets.append([minute, amount])
    else:
        index = bisect_right(buckets, [minute, 2**63])
        if index and buckets[index - 1][0] == minute:
            buckets[index - 1][1] += amount
        else:
            insort(buckets, [minute, amount])


def prune(buckets: list[list[int]], now_minute: int) -> None:
    """Drop buckets older than the longest window (they can no longer count)."""
    cutoff = now_minute - LONGEST_WINDOW_MINUTES
    drop = 0
    while drop < len(buckets) and buckets[drop][0] <= cutoff:
        drop += 1
    if drop:
        del buckets[:drop]


def window_spend(
    buckets: Sequence[Sequence[int]],
    now_minute: int,
    resets: Mapping[str, Sequence[int]] | None = None,
    windows: Sequence[str] = WINDOW_NAMES,
) -> dict[str, int]:
    """Spend per window at ``now_minute`` over buckets as ``[minute, micros]`` pairs (the
    read model's rows): ``column_window_spend`` on their two columns."""
    minutes = list(map(itemgetter(0), buckets))
    amounts = list(map(itemgetter(1), buckets))
    return column_window_spend(minutes, amounts, now_minute, resets, windows)


def bucket_amount(buckets: Sequence[Sequence[int]], minute: int) -> int:
    """The amount recorded in one minute's bucket (0 if none)."""
    return column_bucket_amount([b[0] for b in buckets], [b[1] for b in buckets], minute)


# The account keeps its buckets as two columns, ``minutes`` (strictly increasing) and
# ``amounts`` (docs/adr/0036): a snapshot loads them with two C-level passes and a window is
# one bisect on ``minutes``, with no list of pairs built or split on any path.


def column_add_spend(minutes: list[int], amounts: list[int], minute: int, amount: int) -> None:
    """Add ``amount`` to ``minute``'s bucket, keeping ``minutes`` strictly increasing."""
    if minutes and minutes[-1] == minute:
        amounts[-1] += amount
    elif not minutes or minutes[-1] < minute:
        minutes.append(minute)
        amounts.append(amount)
    else:
        index = bisect_left(minutes, minute)
        if minutes[index] == minute:
            amounts[index] += amount
        else:
            minutes.insert(index, minute)
            amounts.insert(index, amount)


def column_prune(minutes: list[int], amounts: list[int], now_minute: int) -> None:
    """Drop buckets older than the longest window (they can no longer count)."""
    if minutes and minutes[0] <= now_minute - LONGEST_WINDOW_MINUTES:
        drop = bisect_right(minutes, now_minute - LONGEST_WINDOW_MINUTES)
        del minutes[:drop]
        del amounts[:drop]


def column_window_spend(
    minutes: Sequence[int],
    amounts: Sequence[int],
    now_minute: int,
    resets: Mapping[str, Sequence[int]] | None = None,
    windows: Sequence[str] = WINDOW_NAMES,
) -> dict[str, int]:
    """Spend per window at ``now_minute``: the buckets with ``minute > now_minute - W``.

    ``resets`` maps a window to ``[reset_minute, bucket_amount_at_reset]``: spend recorded up
    to the reset no longer counts in that window. Each window is a bisect on ``minutes`` and a
    difference of prefix sums (one C-level pass over ``amounts``), so 4,320 buckets cost well
    under a millisecond (docs/adr/0033, 0036).
    """
    resets = resets or {}
    prefix = list(accumulate(amounts, initial=0))  # prefix[i]: the sum of amounts[:i]
    total = prefix[-1]
    count = len(minutes)
    totals: dict[str, int] = {}
    for name in windows:
        width = WINDOW_MINUTES[name]
        reset = resets.get(name)
        if reset is not None and now_minute - reset[0] < width:
            reset_minute, amount_at_reset = reset[0], reset[1]
            first = bisect_left(minutes, reset_minute)
            spent = total - prefix[first]
            if first < count and minutes[first] == reset_minute:
                spent -= amount_at_reset  # spend in the reset's minute before it
            totals[name] = spent
        else:
            totals[name] = total - prefix[bisect_right(minutes, now_minute - width)]
    return totals


def column_bucket_amount(minutes: Sequence[int], amounts: Sequence[int], minute: int) -> int:
    """The amount recorded in one minute's bucket (0 if none)."""
    index = bisect_right(minutes, minute)
    if index and minutes[index - 1] == minute:
        return amounts[index - 1]
    return 0


@dataclass(frozen=True)
class WindowState:
    """One window as enforcement sees it (micro-USD); ``limit`` 0 means the window is off.

    ``remaining`` is the largest spend a charge may still add (``limit - spent - held``, not
    below 0); ``exceeded``: no spend at all is allowed (``remaining`` is 0).
    """

    window: str
    spent: int
    held: int
    limit: int

    @property
    def limited(self) -> bool:
        return self.limit > 0

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.spent - self.held) if self.limit else 0

    @property
    def exceeded(self) -> bool:
        return self.limited and self.spent + self.held >= self.limit


@dataclass(frozen=True)
class SpendingReport:
    """Every window at one business time: what ``CreditAccount.check_spend`` would decide."""

    as_of: datetime
    enabled: bool
    held: int
    windows: tuple[WindowState, ...]

    @classmethod
    def of(
        cls,
        as_of: datetime,
        *,
        enabled: bool,
        spent: Mapping[str, int],
        held: int,
        limits: Mapping[str, int],
    ) -> SpendingReport:
        return cls(
            as_of,
            enabled,
            held,
            tuple(WindowState(n, spent.get(n, 0), held, limits.get(n, 0)) for n in WINDOW_NAMES),
        )

    @property
    def spent(self) -> dict[str, int]:
        return {w.window: w.spent for w in self.windows}

    @property
    def limits(self) -> dict[str, int]:
        """The windows in force and their limits."""
        return {w.window: w.limit for w in self.windows if w.limited}

    @property
    def remaining(self) -> dict[str, int]:
        return {w.window: w.remaining for w in self.windows if w.limited}

    @property
    def exceeded(self) -> list[str]:
        return [w.window for w in self.windows if w.exceeded]

    def allows(self, amount: int) -> bool:
        """True if no window refuses spending ``amount`` (funds are not part of the report)."""
        return all(amount <= w.remaining for w in self.windows if w.limited)
