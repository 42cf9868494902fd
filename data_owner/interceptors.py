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

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.tls import peer_identity

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


def wrap_handler(handler: Handler, guard: Guard, stream_guard: Guard) -> Handler:
    """Rebuild a unary-request handler with its behaviour wrapped; other kinds are refused."""
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
    raise TypeError("client-streaming methods need their own wrapping")


class _WrappingInterceptor(ServerInterceptor):
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


class ErrorMappingInterceptor(_WrappingInterceptor):
    """Turns domain errors into their catalogued status and hides everything else.

    A ``Fair4FreeError`` becomes its catalog status with the public one-line message. Any other
    exception is logged here with a reference id and reaches the caller only as INTERNAL plus that
    id: never a traceback over the wire, never a dead daemon. Must be the outermost interceptor.
    """

    def guards(self, method: str) -> tuple[Guard, Guard]:
        """Map errors of unary and of streamed answers alike."""
        return (lambda b: _mapped_unary(b, method)), (lambda b: _mapped_stream(b, method))


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, Fair4FreeError):
        context.abort(exc.entry.status, exc.public_message())
    reference = uuid.uuid4().hex[:12]
    logger.error("internal error in %s (reference %s)", method, reference, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error, reference {reference}")


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


class IdentityInterceptor(_WrappingInterceptor):
    """Admits only callers whose verified client certificate carries a consumer SAN URI.

    The transport already refuses peers without a certificate from our CA; this refuses valid
    certificates that name no consumer identity. Identity never comes from metadata.
    """

    def guards(self, method: str) -> tuple[Guard, Guard]:
        """The check runs before the behaviour, so it covers streamed answers unchanged."""
        return _identified, _identified


def _identified(behaviour: Behaviour) -> Behaviour:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        if peer_identity(context.auth_context()) is None:
            raise Fair4FreeError(
                ErrorCode.UNAUTHENTICATED, "the client certificate names no consumer identity"
            )
        return behaviour(request, context)

    return run
