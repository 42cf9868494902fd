"""Server-side deadlines: the daemon bounds its work on one call, whatever deadline the client sent.

A client may send no deadline, or a generous one, and a large request can hold a worker thread
for long; the daemon's own limit (``ServerConfig.max_call_seconds``) caps that, and a client
deadline that is shorter caps it further, since an answer after it would reach nobody.

Python gRPC cannot stop a handler thread, so the bound is cooperative and lives in this one
interceptor: it checks before the servicer starts and after every answer message the servicer
produces (each chunk of a stream, the reply of a unary call), so work stops at the next step once
the bound has passed. It sits innermost, inside metering: an overrun raises before the answer is
stored, so metering refunds the charge, nothing is sent, and the audit interceptor records the
call as failed with the detail below.

A client stream (Evaluate) can hold a worker without any work at all, by not sending: waiting for
its next message blocks inside gRPC, where no cooperative check runs. ``UploadDeadlineInterceptor``
cancels such a call from a timer instead, once the same limit has passed with the stream open.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import grpc

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.access import owner_method
from fair4free.data_owner.interceptors import (
    Behaviour,
    Guard,
    RequestStream,
    WrappingInterceptor,
    unchanged,
)

MAX_CALL_SECONDS_LIMIT: Final = 3600.0
"""The largest per-call limit the daemon accepts: beyond it a stuck call is an outage."""

DAEMON_LIMIT_EXCEEDED: Final = (
    "{method} stopped after {elapsed:.3f} s: past the daemon's limit of {limit:g} s per call"
)
CLIENT_DEADLINE_EXCEEDED: Final = (
    "{method} stopped after {elapsed:.3f} s: past the client's deadline, "
    "{limit:.3f} s away when the work began"
)
UPLOAD_STOPPED: Final = (
    "{method} stopped: its request stream had not ended {limit:g} s after the call began, the "
    "daemon's limit per call"
)
MAX_CALL_SECONDS_INVALID: Final = (
    "max call seconds must be more than 0 and at most {most:g}, got {value}"
)


def check_max_call_seconds(value: float) -> float:
    """Return ``value`` if it can bound a call: positive, finite and at most an hour.

    :raises Fair4FreeError: CONFIG_INVALID naming the value.
    """
    if not (math.isfinite(value) and 0 < value <= MAX_CALL_SECONDS_LIMIT):
        raise Fair4FreeError(
            ErrorCode.CONFIG_INVALID,
            MAX_CALL_SECONDS_INVALID.format(most=MAX_CALL_SECONDS_LIMIT, value=value),
        )
    return value


@dataclass(frozen=True, kw_only=True)
class CallDeadline:
    """The bound one call runs under, fixed when its work begins, and who set it."""

    method: str
    began: float
    limit: float
    """Seconds from ``began`` the work may take: the daemon's limit or the client's, if shorter."""
    set_by_client: bool

    @classmethod
    def begin(
        cls, method: str, *, max_call_seconds: float, client_remaining: float | None, now: float
    ) -> CallDeadline:
        """The deadline of a call whose work begins ``now`` (seconds on a monotonic clock).

        :param client_remaining: seconds left of the client's deadline (gRPC reports an enormous
            number, or None, when the client set none).
        """
        by_client = client_remaining is not None and client_remaining < max_call_seconds
        limit = max(client_remaining or 0.0, 0.0) if by_client else max_call_seconds
        return cls(method=method, began=now, limit=limit, set_by_client=by_client)

    def check(self, now: float) -> None:
        """Stop the call if its bound has passed.

        :raises Fair4FreeError: DEADLINE_EXCEEDED naming the method, the time spent and the bound.
        """
        elapsed = now - self.began
        if elapsed < self.limit:
            return
        template = CLIENT_DEADLINE_EXCEEDED if self.set_by_client else DAEMON_LIMIT_EXCEEDED
        raise Fair4FreeError(
            ErrorCode.DEADLINE_EXCEEDED,
            template.format(method=self.method, elapsed=elapsed, limit=self.limit),
        )


class DeadlineInterceptor(WrappingInterceptor):
    """Bounds every OwnerService call's work; health checks (``Watch`` streams for ever) are not."""

    def __init__(
        self, max_call_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_call_seconds = check_max_call_seconds(max_call_seconds)
        self._clock = clock

    def guards(self, method: str) -> tuple[Guard, Guard]:
        """Unary replies are checked once they exist; streams after every chunk."""
        short = owner_method(method)
        if short is None:
            return unchanged, unchanged
        return (lambda b: self._unary(b, short)), (lambda b: self._stream(b, short))

    def _begin(self, method: str, context: grpc.ServicerContext) -> CallDeadline:
        deadline = CallDeadline.begin(
            method,
            max_call_seconds=self._max_call_seconds,
            client_remaining=context.time_remaining(),
            now=self._clock(),
        )
        deadline.check(self._clock())  # a client deadline already past: do no work at all
        return deadline

    def _unary(self, behaviour: Behaviour, method: str) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            deadline = self._begin(method, context)
            response = behaviour(request, context)
            deadline.check(self._clock())
            return response

        return run

    def _stream(self, behaviour: Behaviour, method: str) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            deadline = self._begin(method, context)
            for message in behaviour(request, context):
                deadline.check(self._clock())
                yield message

        return run


class UploadDeadlineInterceptor(WrappingInterceptor):
    """Stops a client-streaming call (Evaluate) whose client is still sending past the limit.

    The checks above cannot help here: a handler waiting for the next message of a stalled
    client blocks inside gRPC, holding a worker until the client's own deadline or the
    connection's maximum age (minutes), and a client may send no deadline. So a timer armed when
    the call begins marks the stream stopped and cancels the call once ``max_call_seconds`` have
    passed while the stream is still open; the blocked read then ends with DEADLINE_EXCEEDED and
    :data:`UPLOAD_STOPPED` as its reason (what the audit log records; the client sees CANCELLED).
    A stream read to its end is left alone: the work after it is bounded by
    :class:`DeadlineInterceptor`. It sits just inside error mapping, so it also bounds the audit
    interceptor's wait for the first message.
    """

    def __init__(self, max_call_seconds: float) -> None:
        self._max_call_seconds = check_max_call_seconds(max_call_seconds)

    def guards(self, method: str) -> tuple[Guard, Guard]:
        """Only calls with a request stream are watched; unary requests arrive whole."""
        short = owner_method(method)
        if short is None:
            return unchanged, unchanged
        return (lambda b: self._watched(b, short)), unchanged

    def _watched(self, behaviour: Behaviour, method: str) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            if not isinstance(request, RequestStream):
                return behaviour(request, context)
            detail = UPLOAD_STOPPED.format(method=method, limit=self._max_call_seconds)

            def stop() -> None:
                if not request.ended:
                    request.expire(detail)
                    context.cancel()  # type: ignore[no-untyped-call]  # grpc stubs lack it

            timer = threading.Timer(self._max_call_seconds, stop)
            timer.daemon = True
            timer.start()
            try:
                return behaviour(request, context)
            finally:
                timer.cancel()

        return run
