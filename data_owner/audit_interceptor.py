"""Every call the daemon sees, written to the audit log before work starts and after it ends.

Sits just inside error mapping, so it records what every inner interceptor decided: identity and
revocation refusals, policy denials, budget exhaustion, invalid input and completed answers. The
started record is fsynced before any work; the terminal record (with the SHA-256 of the answer,
never the answer) is fsynced before the answer leaves. If the log cannot be written the call fails
with UNAVAILABLE and the log stays failed: the daemon stops answering rather than answer unlogged.
The latest signed checkpoint travels back in trailing metadata so the consumer holds evidence too.
A metered call's terminal record carries the budget metering saw when it charged the call (or
refused it for an exhausted budget), handed out through a :class:`BudgetNote` opened per call.
A client-streaming call (Evaluate) is recorded by its first message, read before any work: its
request id, the rows it declares and that message's SHA-256.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import grpc

from fair4free.common.codec import AUDIT_CHECKPOINT_TRAILER
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.revocation import certificate_serial
from fair4free.common.tls import certificate_fingerprint, peer_certificate, peer_identity
from fair4free.data_owner.access import BudgetNote, noting_budget, request_rows
from fair4free.data_owner.audit_log import AuditLog
from fair4free.data_owner.audit_record import AuditEvent, Outcome
from fair4free.data_owner.interceptors import Behaviour, Guard, WrappingInterceptor, request_head

# Refusals of who is asking or how much, as opposed to failures of what was asked.
_DENIALS = {
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.SERVER_REFUSED,
    ErrorCode.BUDGET_EXHAUSTED,
    ErrorCode.RATE_LIMITED,
    ErrorCode.ROW_CAP_EXCEEDED,
}


@dataclass(frozen=True, kw_only=True)
class ServedModel:
    """What the audit records name as the model answered from."""

    server_id: str
    model_id: str
    model_hash: str


class AuditInterceptor(WrappingInterceptor):
    """Writes a started and a terminal record for every call, denials included."""

    def __init__(self, log: AuditLog, model: ServedModel) -> None:
        self._log = log
        self._model = model

    def guards(self, method: str) -> tuple[Guard, Guard]:
        """Unary and streamed answers are recorded alike; a stream is hashed as a whole."""
        return (lambda b: self._unary(b, method)), (lambda b: self._stream(b, method))

    def _started(self, method: str, request: Any, context: grpc.ServicerContext) -> AuditEvent:
        auth = context.auth_context()
        pem = peer_certificate(auth)
        short = method.rpartition("/")[2]
        head = _head(request)
        payload = None if head is None else head.SerializeToString(deterministic=True)
        event = AuditEvent(
            server_id=self._model.server_id,
            method=method,
            outcome="started",
            request_id=str(getattr(head, "request_id", "")) or None,
            identity=peer_identity(auth),
            cert_serial=format(certificate_serial(pem), "x") if pem else None,
            cert_fingerprint=certificate_fingerprint(pem) if pem else None,
            peer=context.peer(),
            model_id=self._model.model_id,
            model_hash=self._model.model_hash,
            rows_requested=None if head is None else request_rows(short, head),
            request_sha256=None if payload is None else hashlib.sha256(payload).hexdigest(),
        )
        self._log.append(event)
        return event

    def _finish(
        self,
        started: AuditEvent,
        began: float,
        context: grpc.ServicerContext,
        budget: BudgetNote,
        *,
        error: BaseException | None = None,
        answer: bytes | None = None,
        rows: int | None = None,
    ) -> None:
        latency = round((time.perf_counter() - began) * 1000, 3)
        outcome: Outcome
        if error is None:
            outcome, status, reason = "completed", grpc.StatusCode.OK.name, None
        elif isinstance(error, Fair4FreeError):
            outcome = "denied" if error.code in _DENIALS else "failed"
            status, reason = error.entry.status.name, error.detail
        else:
            outcome, status, reason = "failed", grpc.StatusCode.INTERNAL.name, type(error).__name__
        self._log.append(
            replace(
                started,
                outcome=outcome,
                grpc_status=status,
                latency_ms=latency,
                reason=reason[:1000] if reason else None,
                rows_returned=rows,
                response_sha256=None if answer is None else hashlib.sha256(answer).hexdigest(),
                budget_used=budget.used,
                budget_remaining=budget.remaining,
            )
        )
        token = self._log.latest_checkpoint().to_compact()
        context.set_trailing_metadata(((AUDIT_CHECKPOINT_TRAILER, token),))

    def _unary(self, behaviour: Behaviour, method: str) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            began = time.perf_counter()
            started = self._started(method, request, context)
            with noting_budget() as budget:
                try:
                    response = behaviour(request, context)
                except Exception as exc:
                    self._finish(started, began, context, budget, error=exc)
                    raise
            answer = response.SerializeToString(deterministic=True)
            self._finish(started, began, context, budget, answer=answer, rows=_rows_in(response))
            return response

        return run

    def _stream(self, behaviour: Behaviour, method: str) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            began = time.perf_counter()
            started = self._started(method, request, context)
            with noting_budget() as budget:  # closed before the first yield
                try:
                    messages = list(behaviour(request, context))
                except Exception as exc:
                    self._finish(started, began, context, budget, error=exc)
                    raise
            answer = b"".join(m.SerializeToString(deterministic=True) for m in messages)
            rows = sum(_rows_in(m) or 0 for m in messages)
            self._finish(started, began, context, budget, answer=answer, rows=rows)
            yield from messages

        return run


def _head(request: Any) -> Any:
    """What names the call: the request, or a stream's first message (None if it never came)."""
    try:
        return request_head(request)
    except Fair4FreeError:  # cancelled before its first message: recorded, then refused inside
        return None


def _rows_in(message: Any) -> int | None:
    """Rows in an answer: the first dimension of its tensor, where it has one."""
    for field in ("outputs", "latents"):
        tensor = getattr(message, field, None)
        if tensor is not None and list(tensor.shape):
            return int(tensor.shape[0])
    return None
