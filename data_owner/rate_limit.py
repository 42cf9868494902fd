"""Per-identity call rate limits: one token bucket per consumer identity, in memory.

Each identity's bucket holds up to ``burst`` tokens (by default one minute's worth,
``rate_per_minute``) and refills continuously at ``rate_per_minute / 60`` tokens per second; a call
takes one token. So a client may spend a burst at once and then keeps to the rate. Limits reset when
the daemon restarts (budgets, which must survive restarts, live in the ledger instead).

The rate can be given per call, so that each client gets the rate of its policy entry and a
reloaded policy applies at once; a bucket holding more tokens than its new capacity is trimmed.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fair4free.common.errors import ErrorCode, Fair4FreeError


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets keyed by identity. Thread-safe; ``clock`` is injectable for tests."""

    def __init__(
        self,
        rate_per_minute: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_rate(rate_per_minute, burst)
        self._rate = float(rate_per_minute)
        self._burst = None if burst is None else float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def try_acquire(self, identity: str, *, rate_per_minute: float | None = None) -> float:
        """Take one token from ``identity``'s bucket.

        :param rate_per_minute: this identity's rate; the limiter's own when None.
        :returns: 0.0 if the call may proceed, else the seconds until a token is available
            (nothing is taken then).
        """
        rate = self._rate if rate_per_minute is None else float(rate_per_minute)
        _check_rate(rate, self._burst)
        capacity = rate if self._burst is None else self._burst
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(identity)
            if bucket is None:
                bucket = self._buckets[identity] = _Bucket(tokens=capacity, stamp=now)
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(capacity, bucket.tokens + elapsed * rate / 60.0)
            bucket.stamp = max(bucket.stamp, now)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) * 60.0 / rate

    def acquire(self, identity: str, *, rate_per_minute: float | None = None) -> None:
        """Take one token or refuse the call.

        :raises Fair4FreeError: RATE_LIMITED (RESOURCE_EXHAUSTED) naming the rate and the wait.
        """
        wait = self.try_acquire(identity, rate_per_minute=rate_per_minute)
        if wait > 0.0:
            rate = self._rate if rate_per_minute is None else rate_per_minute
            raise Fair4FreeError(
                ErrorCode.RATE_LIMITED,
                f"{identity} exceeded its rate of {rate:g} calls per minute; "
                f"retry in {math.ceil(wait * 10) / 10:.1f} s",
            )


def _check_rate(rate_per_minute: float, burst: float | None) -> None:
    if not rate_per_minute > 0:
        raise ValueError(f"rate_per_minute must be positive, got {rate_per_minute}")
    if burst is not None and not burst >= 1:
        raise ValueError(f"burst must be at least 1, got {burst}")
