"""Per-identity token buckets, driven by a fake clock."""

from __future__ import annotations

import re
import threading

import pytest

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.rate_limit import RateLimiter

ACME = "fair4free://consumer/acme"
BETA = "fair4free://consumer/beta"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_burst_of_one_minute_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock)
    assert [limiter.try_acquire(ACME) for _ in range(60)] == [0.0] * 60
    assert limiter.try_acquire(ACME) == pytest.approx(1.0)  # one token a second at 60/min
    clock.advance(0.5)
    assert limiter.try_acquire(ACME) == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.try_acquire(ACME) == 0.0
    assert limiter.try_acquire(ACME) == pytest.approx(1.0)


def test_a_refused_call_takes_no_token() -> None:
    clock = FakeClock()
    limiter = RateLimiter(6, burst=1, clock=clock)
    assert limiter.try_acquire(ACME) == 0.0
    for _ in range(5):
        assert limiter.try_acquire(ACME) == pytest.approx(10.0)
    clock.advance(10.0)
    assert limiter.try_acquire(ACME) == 0.0


def test_identities_have_separate_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, burst=2, clock=clock)
    assert [limiter.try_acquire(ACME) for _ in range(2)] == [0.0, 0.0]
    assert limiter.try_acquire(ACME) > 0.0
    assert [limiter.try_acquire(BETA) for _ in range(2)] == [0.0, 0.0]


def test_idle_time_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, burst=3, clock=clock)
    assert limiter.try_acquire(ACME) == 0.0
    clock.advance(3600.0)
    assert [limiter.try_acquire(ACME) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire(ACME) > 0.0


def test_a_per_call_rate_overrides_and_a_lower_rate_trims_the_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(600, clock=clock)
    assert [limiter.try_acquire(ACME, rate_per_minute=2) for _ in range(2)] == [0.0, 0.0]
    assert limiter.try_acquire(ACME, rate_per_minute=2) == pytest.approx(30.0)
    # BETA starts with a full bucket of 600, then its policy entry drops to 1 call a minute.
    assert limiter.try_acquire(BETA) == 0.0
    assert limiter.try_acquire(BETA, rate_per_minute=1) == 0.0
    assert limiter.try_acquire(BETA, rate_per_minute=1) == pytest.approx(60.0)


def test_a_clock_stepping_back_grants_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, burst=1, clock=clock)
    assert limiter.try_acquire(ACME) == 0.0
    clock.advance(-100.0)
    assert limiter.try_acquire(ACME) == pytest.approx(1.0)
    clock.advance(100.5)
    assert limiter.try_acquire(ACME) == pytest.approx(0.5)


def test_acquire_refuses_with_the_rate_and_the_wait() -> None:
    clock = FakeClock()
    limiter = RateLimiter(30, burst=1, clock=clock)
    limiter.acquire(ACME)
    clock.advance(0.01)
    detail = f"{ACME} exceeded its rate of 30 calls per minute; retry in 2.0 s"
    with pytest.raises(Fair4FreeError, match=f"^{re.escape(detail)}$") as caught:
        limiter.acquire(ACME)
    assert caught.value.code is ErrorCode.RATE_LIMITED
    clock.advance(2.0)
    limiter.acquire(ACME)


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0, None, "rate_per_minute must be positive, got 0"),
        (-1, None, "rate_per_minute must be positive, got -1"),
        (60, 0.5, "burst must be at least 1, got 0.5"),
    ],
)
def test_nonsense_settings_are_refused(rate: float, burst: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RateLimiter(rate, burst=burst)


def test_threads_never_get_more_tokens_than_the_bucket_holds() -> None:
    clock = FakeClock()  # frozen: no refill, so exactly the burst is granted
    limiter = RateLimiter(60, burst=100, clock=clock)
    granted: list[int] = []

    def draw() -> None:
        granted.append(sum(limiter.try_acquire(ACME) == 0.0 for _ in range(50)))

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 100
