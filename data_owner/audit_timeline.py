"""Calls per time bucket and identity, in buckets that coarsen as the log's span grows.

A reviewer's plot is readable at about a hundred bars whether the log covers a minute of tests or a
year of service, and the report reads the log once without knowing its span in advance. So the
timeline starts at one-second buckets and, whenever the span would need more than
:data:`MAX_BUCKETS`, moves up :data:`BUCKET_LADDER` and merges what it has. Each width divides the
next and buckets are aligned to the epoch, so merging is exact: the final counts are those a
single pass at the final width would give. Memory is bounded by buckets times identities.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Final

BUCKET_LADDER: Final = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, 86400, 604800)
"""Bucket widths in seconds; past a week the width doubles."""
MAX_BUCKETS: Final = 120
LATEST: Final = 253402300799
"""The last second of year 9999: a later (or pre-1970) ``ts`` is not a time the writer wrote."""

_COUNTERS: Final = 5  # calls, rows requested, rows returned, denied, failed


@dataclass(frozen=True, kw_only=True)
class TimeBucket:
    """One identity's calls whose terminal record falls in ``[start, start + width)``."""

    start: int
    identity: str | None
    calls: int
    rows_requested: int
    rows_returned: int
    denied: int
    failed: int


def iso_utc(epoch: int) -> str:
    """A bucket start as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_of(ts: object) -> int | None:
    """Whole seconds since 1970 of a record's ``ts``; ``None`` if it is no plausible timestamp."""
    if not isinstance(ts, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(ts)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    epoch = math.floor(moment.timestamp())
    return epoch if 0 <= epoch <= LATEST else None


@dataclass
class Timeline:
    """The accumulating timeline; :meth:`buckets` freezes it."""

    width: int = BUCKET_LADDER[0]
    low: int | None = None
    high: int | None = None
    cells: dict[tuple[int, str | None], list[int]] = field(default_factory=dict)

    def add(
        self, epoch: int, identity: str | None, *, requested: int, returned: int, outcome: str
    ) -> None:
        """Count one call (a terminal record) written at ``epoch``."""
        start = epoch - epoch % self.width
        self.low = start if self.low is None else min(self.low, start)
        self.high = start if self.high is None else max(self.high, start)
        if (self.high - self.low) // self.width >= MAX_BUCKETS:
            self._coarsen()
            start = epoch - epoch % self.width
        cell = self.cells.get((start, identity))
        if cell is None:
            cell = self.cells[(start, identity)] = [0] * _COUNTERS
        cell[0] += 1
        cell[1] += requested
        cell[2] += returned
        cell[3] += outcome == "denied"
        cell[4] += outcome == "failed"

    def _coarsen(self) -> None:
        assert self.low is not None and self.high is not None
        while (self.high - self.low) // self.width >= MAX_BUCKETS:
            bigger = [width for width in BUCKET_LADDER if width > self.width]
            self.width = bigger[0] if bigger else self.width * 2
            self.low -= self.low % self.width
            self.high -= self.high % self.width
        merged: dict[tuple[int, str | None], list[int]] = {}
        for (start, identity), cell in self.cells.items():
            key = (start - start % self.width, identity)
            into = merged.setdefault(key, [0] * _COUNTERS)
            for index, value in enumerate(cell):
                into[index] += value
        self.cells = merged

    def buckets(self) -> tuple[TimeBucket, ...]:
        """The non-empty buckets by start, then identity (``None`` first)."""

        def order(item: tuple[tuple[int, str | None], list[int]]) -> tuple[int, bool, str]:
            (start, identity), _ = item
            return (start, identity is not None, identity or "")

        return tuple(
            TimeBucket(
                start=start,
                identity=identity,
                calls=cell[0],
                rows_requested=cell[1],
                rows_returned=cell[2],
                denied=cell[3],
                failed=cell[4],
            )  # fmt: skip
            for (start, identity), cell in sorted(self.cells.items(), key=order)
        )
