"""Cross-cutting concerns of the daemon, one interceptor each, composed in ``server.py``.

Python gRPC gives interceptors no call context, so each interceptor wraps the method handler's
behaviour and sees the context when the call runs. Guards raise ``Fair4FreeError``; only the
outermost interceptor turns errors into statuses. Later concerns (policy, budgets, audit) slot in
as further interceptors of the same shape.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.revocation import RevocationList, certificate_serial
from fair4free.common.tls import peer_certificate, peer_identity
from fair4free.data_owner.ledger import BudgetExhaustedError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # grpc's classes are generic only in their type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    ServerInterceptor = grpc.ServerInterceptor
Continuation = Callable[[grpc.HandlerCallDetails], "Handler | None"]
Behaviour = Callable[[Any, grpc.ServicerContext], Any]
Guard = Callable[[Behaviour], Behaviour]

STREAM_CANCELLED = "the request stream was cancelled before it ended"


def unchanged(behaviour: Behaviour) -> Behaviour:
    """The guard of a method an interceptor leaves alone (health checks, say)."""
    return behaviour


class RequestStream:
    """The requests of a client-streaming call, as interceptors and the servicer see them.

    Guards are written against one request (its id, rows, hash), and a client-streaming call
    names itself in its first message. So the stream stands in for "the request": ``first`` reads
    that message on demand (outer interceptors need it before any work) and iterating yields it
    and then the rest, once. A stream the client cancels mid-way ends the servicer's work with
    INTERRUPTED rather than an internal error; one the daemon stopped (``expire``, from the
    deadline watchdog) with DEADLINE_EXCEEDED and the watchdog's reason.
    """

    def __init__(self, requests: Iterator[Any], empty: Any) -> None:
        self._requests = requests
        self._empty = empty
        self._first: Any = None
        self._opened = False
        self._error: Fair4FreeError | None = None
        self._iterated = False
        self._ended = False
        self._expired: str | None = None

    @classmethod
    def of(cls, requests: Any, empty: Any) -> RequestStream:
        """Wrap a gRPC request iterator; every interceptor layer shares one wrapper."""
        return requests if isinstance(requests, RequestStream) else cls(requests, empty)

    @property
    def first(self) -> Any:
        """The first message, or an empty message of the request type if the stream is empty.

        :raises Fair4FreeError: every time, if the stream was cancelled or stopped before it.
        """
        if not self._opened:
            self._opened = True
            try:
                self._first = self._next()
            except Fair4FreeError as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._empty if self._first is None else self._first

    @property
    def ended(self) -> bool:
        """Whether the client's last message has been read: nothing more can block on it."""
        return self._ended

    def expire(self, detail: str) -> None:
        """Mark the stream stopped by the daemon (the caller then cancels the call)."""
        self._expired = detail

    def __iter__(self) -> Iterator[Any]:
        if self._iterated:
            raise RuntimeError("a request stream can be read once")
        self._iterated = True
        if self.first is not self._empty:
            yield self._first
        while (message := self._next()) is not None:
            yield message

    def _next(self) -> Any:
        cancelled = False
        try:
            message = next(self._requests, None)
        except grpc.RpcError:
            message, cancelled = None, True
        if self._expired is not None:
            raise Fair4FreeError(ErrorCode.DEADLINE_EXCEEDED, self._expired)
        if cancelled:
            raise Fair4FreeError(ErrorCode.INTERRUPTED, STREAM_CANCELLED)
        self._ended = message is None
        return message


def request_head(request: Any) -> Any:
    """The message that names a call: the request itself, or a stream's first message."""
    return request.first if isinstance(request, RequestStream) else request


def wrap_handler(handler: Handler, guard: Guard, stream_guard: Guard) -> Handler:
    """Rebuild a handler with its behaviour wrapped; bidirectional streams are refused.

    A client-streaming call gets the unary-response ``guard`` with a :class:`RequestStream` as
    its request, so every guard handles it like a unary call.
    """
    if handler.stream_unary is not None:
        guarded = guard(handler.stream_unary)
        empty = handler.request_deserializer(b"") if handler.request_deserializer else None

        def run(requests: Any, context: grpc.ServicerContext) -> Any:
            return guarded(RequestStream.of(requests, empty), context)

        return grpc.stream_unary_rpc_method_handler(
            run,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            guard(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream_guard(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    raise TypeError("bidirectional streaming methods need their own wrapping")


class WrappingInterceptor(ServerInterceptor):
    """An interceptor that wraps each method's behaviour with the guards it names."""

    def guards(self, method: str) -> tuple[Guard, Guard]:
        """The (unary-response, streaming-response) wrappers for ``method``."""
        raise NotImplementedError

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        """Wrap the method's handler; unknown methods pass through to gRPC's UNIMPLEMENTED."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_handler(handler, *self.guards(handler_call_details.method))


class ErrorMappingInterceptor(WrappingInterceptor):
    """Turns domain errors into their catalogued status and hides everything else.

    A ``Fair4FreeError`` becomes its catalog status with the public one-line message. Any other
    exception is logged here with a reference id and reaches the caller only as INTERNAL plus that
    id: never a traceback over the wire, never a dead daemon. Must be the outermost interceptor.
    """

    def guards(self, method: str) -> tuple[Guard, Guard]:
        """Map errors of unary and of streamed answers alike."""
        return (lambda b: _mapped_unary(b, method)), (lambda b: _mapped_stream(b, method))


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, BudgetExhaustedError):
        context.abort_with_status(_quota_failure(exc))
    if isinstance(exc, Fair4FreeError):
        context.abort(exc.entry.status, exc.public_message())
    reference = uuid.uuid4().hex[:12]
    logger.error("internal error in %s (reference %s)", method, reference, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error, reference {reference}")


def _quota_failure(exc: BudgetExhaustedError) -> grpc.Status:
    """RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure detail a client can read remaining from."""
    violation = error_details_pb2.QuotaFailure.Violation(
        subject=f"{exc.identity} {exc.method}",
        description=f"{exc.needed} rows needed, {exc.remaining} of {exc.limit} remaining",
    )
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.QuotaFailure(violations=[violation]))
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message=exc.public_message(), details=[detail]
    )
    return rpc_status.to_status(status)


def _mapped_unary(behaviour: Behaviour, method: str) -> Behaviour:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behaviour(request, context)
        except Exception as exc:
            _abort(context, exc, method)

    return run


def _mapped_stream(behaviour: Behaviour, method: str) -> Behaviour:
    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behaviour(request, context)
        except Exception as exc:
            _abort(context, exc, method)

    return run


class IdentityInterceptor(WrappingInterceptor):
    """Admits only callers whose verified, unrevoked client certificate names a consumer.

    The transport already refuses peers without a certificate from our CA; this refuses valid
    certificates that name no consumer identity, and (Python gRPC has no CRL hook) certificates
    the CA has revoked, checked on every call against a CRL reloaded when its file changes.
    Identity never comes from metadata.
    """

    def __init__(self, revocations: RevocationList | None) -> None:
        self._revocations = revocations

    def guards(self, method: str) -> tuple[Guard, Guard]:
        """The check runs before the behaviour, so it covers streamed answers unchanged."""
        return self._identified, self._identified

    def _identified(self, behaviour: Behaviour) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            if caller_identity(context) is None:
                raise Fair4FreeError(
                    ErrorCode.UNAUTHENTICATED, "the client certificate names no consumer identity"
                )
            if self._revocations is not None:
                self._revocations.reload_if_changed()
                pem = peer_certificate(context.auth_context())
                serial = certificate_serial(pem or b"")
                if self._revocations.is_revoked(serial):
                    raise Fair4FreeError(
                        ErrorCode.UNAUTHENTICATED, f"client certificate {serial:x} is revoked"
                    )
            return behaviour(request, context)

        return run


def caller_identity(context: grpc.ServicerContext) -> str | None:
    """The verified SAN URI identity of the peer; never read from metadata."""
    return peer_identity(context.auth_context())
