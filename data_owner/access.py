"""Who may ask what, how often and how much: the policy and metering interceptors.

``PolicyInterceptor`` enforces, per call and deny by default: the caller's identity is in the
policy, the method is granted, the caller is within its rate, and the call within its row cap.
``MeteringInterceptor`` charges rows to the caller's budget before the answer exists and records
the answer under the client's request id, so that a retry gets the same bytes and is never charged
twice, across restarts too. Both read identity only from the verified TLS peer certificate.
Metering leaves the caller's budget after the charge in a :class:`BudgetNote` that the audit
interceptor opened for the call (:func:`noting_budget`), so the terminal audit record states it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from fair4free.common.codec import BudgetStatus, check_request_id
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.interceptors import (
    Behaviour,
    Guard,
    WrappingInterceptor,
    caller_identity,
    request_head,
    unchanged,
)
from fair4free.data_owner.ledger import (
    BudgetExhaustedError,
    Ledger,
    Reservation,
    pack_messages,
    payload_digest,
    unpack_messages,
)
from fair4free.data_owner.policy import ROW_METHODS, PolicyFile
from fair4free.data_owner.rate_limit import RateLimiter
from fair4free.v1 import fair4free_pb2 as pb

SERVICE_PREFIX = "/fair4free.v1.OwnerService/"

RESPONSE_TYPES: dict[str, Callable[[bytes], Message]] = {
    "Decode": pb.DecodeResponse.FromString,
    "Evaluate": pb.EvaluateResponse.FromString,
    "SampleLatents": pb.LatentBatch.FromString,
}


@dataclass(kw_only=True)
class BudgetNote:
    """The caller's budget for the call's method right after its charge, as the ledger saw it.

    Python gRPC gives interceptors no per-call state to share, and the audit interceptor sits
    outside metering; asking the ledger again for the record would cost a second transaction, in
    which concurrent charges could already have moved the numbers. So metering writes here what
    its own transaction saw. Both stay ``None`` for a call that was not charged, or was refunded.
    """

    used: int | None = None
    remaining: int | None = None


_BUDGET_NOTE: ContextVar[BudgetNote | None] = ContextVar("fair4free_budget_note", default=None)


@contextmanager
def noting_budget() -> Iterator[BudgetNote]:
    """Open the note metering fills for the call that runs inside this block (same thread).

    Leave the block before a streamed answer yields, so the note never outlives its call.
    """
    note = BudgetNote()
    token = _BUDGET_NOTE.set(note)
    try:
        yield note
    finally:
        _BUDGET_NOTE.reset(token)


def _note_budget(*, used: int, remaining: int) -> None:
    note = _BUDGET_NOTE.get()
    if note is not None:  # None when metering runs without an audit interceptor around it
        note.used, note.remaining = used, remaining


def request_rows(method: str, request: Any) -> int:
    """The rows a request asks for: what it is charged and what the row cap limits.

    An Evaluate call declares its rows up front in its first message (``request_head``), so it is
    admitted and charged before the rest of its stream is read.
    """
    request = request_head(request)
    if method == "Evaluate":
        return max(int(request.total_rows), 0)
    if method == "SampleLatents":
        return max(int(request.rows), 0)
    if method == "Decode":
        shape = list(request.latents.shape)
        return max(int(shape[0]), 0) if shape else 0
    return 0


def owner_method(method: str) -> str | None:
    """The short name of an OwnerService method; None for anything else (health checks)."""
    return method[len(SERVICE_PREFIX) :] if method.startswith(SERVICE_PREFIX) else None


class PolicyInterceptor(WrappingInterceptor):
    """Deny by default; then rate limits and per-caller row caps, before any work is done."""

    def __init__(self, policy: PolicyFile, rate_limiter: RateLimiter) -> None:
        self._policy = policy
        self._rate_limiter = rate_limiter

    def guards(self, method: str) -> tuple[Guard, Guard]:
        """Checks run before the behaviour, so one guard serves unary and streamed answers."""
        short = owner_method(method)
        if short is None:
            return unchanged, unchanged

        def guard(behaviour: Behaviour) -> Behaviour:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                self._admit(short, request, context)
                return behaviour(request, context)

            return run

        return guard, guard

    def _admit(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        identity = caller_identity(context)
        client = self._policy.current().decide(identity, method).enforce()
        self._rate_limiter.acquire(client.identity, rate_per_minute=client.rate_per_minute)
        rows = request_rows(method, request)
        if rows > client.max_rows_per_call:
            raise Fair4FreeError(
                ErrorCode.ROW_CAP_EXCEEDED,
                f"{method}: {rows} rows exceed your cap of {client.max_rows_per_call} per call",
            )


class MeteringInterceptor(WrappingInterceptor):
    """Charge-then-answer with idempotent replay, backed by the SQLite ledger.

    The answer is stored before it is sent and only the stored answer is sent, so a stream broken
    on purpose cannot buy fresh latents for free, and two racing retries send the same bytes. A
    call that fails before it has an answer is refunded.
    """

    def __init__(self, policy: PolicyFile, ledger: Ledger) -> None:
        self._policy = policy
        self._ledger = ledger

    def guards(self, method: str) -> tuple[Guard, Guard]:
        """Only row-carrying OwnerService methods are metered."""
        short = owner_method(method)
        if short not in ROW_METHODS or short is None:
            return unchanged, unchanged
        return (lambda b: self._unary(b, short)), (lambda b: self._stream(b, short))

    def _answer(
        self,
        method: str,
        request: Any,
        context: grpc.ServicerContext,
        compute: Callable[[], bytes],
    ) -> bytes:
        # A stream is recorded under its first message (the id, the declared rows and the first
        # chunk of rows), so it is charged before the servicer reads and checks the rest.
        head = request_head(request)
        check_request_id(head.request_id)  # the id is the ledger's key: validate it first
        identity = caller_identity(context)
        client = self._policy.current().decide(identity, method).enforce()
        limit = client.budget(method)
        if limit is None:  # the policy loader refuses row methods without budgets
            raise Fair4FreeError(ErrorCode.INTERNAL, f"{method} granted without a budget")

        def reserve() -> Reservation:
            try:
                return self._ledger.reserve(
                    client.identity,
                    method,
                    head.request_id,
                    request_hash=payload_digest(head.SerializeToString(deterministic=True)),
                    rows=request_rows(method, request),
                    limit=limit,
                )
            except BudgetExhaustedError as exc:
                _note_budget(used=exc.used, remaining=exc.remaining)
                raise

        reservation = reserve()
        answer = reservation.answer  # a completed earlier attempt's, sent again
        if answer is None:
            try:
                computed = compute()
            except BaseException:
                self._ledger.release(client.identity, head.request_id)
                raise
            try:
                answer = self._ledger.complete(client.identity, head.request_id, computed)
            except LookupError:
                # Another attempt at this id (a client retrying a slow call) failed and refunded
                # it while this one computed: charge this answer now, once, as the request it is.
                reservation = reserve()
                answer = reservation.answer
                if answer is None:
                    answer = self._ledger.complete(client.identity, head.request_id, computed)
        _note_budget(used=reservation.used, remaining=reservation.remaining)
        return answer

    def _unary(self, behaviour: Behaviour, method: str) -> Behaviour:
        parse = RESPONSE_TYPES[method]

        def run(request: Any, context: grpc.ServicerContext) -> Any:
            answer = self._answer(
                method,
                request,
                context,
                lambda: behaviour(request, context).SerializeToString(deterministic=True),
            )
            return parse(answer)

        return run

    def _stream(self, behaviour: Behaviour, method: str) -> Behaviour:
        parse = RESPONSE_TYPES[method]

        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            answer = self._answer(
                method,
                request,
                context,
                lambda: pack_messages(
                    [m.SerializeToString(deterministic=True) for m in behaviour(request, context)]
                ),
            )
            for message in unpack_messages(answer):
                yield parse(message)

        return run


@dataclass(frozen=True, kw_only=True)
class CallerStanding:
    """What the manifest tells a caller about itself: identity, row cap, budgets left."""

    identity: str
    max_rows_per_call: int
    budgets: tuple[BudgetStatus, ...]


class BudgetView:
    """Reads a caller's standing from the policy and the ledger (for the manifest)."""

    def __init__(self, policy: PolicyFile, ledger: Ledger) -> None:
        self._policy = policy
        self._ledger = ledger

    def standing(self, context: grpc.ServicerContext) -> CallerStanding:
        """The caller's standing; the policy interceptor has already admitted the caller."""
        client = self._policy.current().decide(caller_identity(context), "GetManifest").enforce()
        budgets = tuple(
            BudgetStatus(
                method=method,
                limit=limit,
                remaining=self._ledger.remaining(client.identity, method, limit),
            )
            for method, limit in sorted(client.budgets.items())
        )
        return CallerStanding(
            identity=client.identity, max_rows_per_call=client.max_rows_per_call, budgets=budgets
        )
