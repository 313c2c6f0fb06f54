"""What every call passes before a servicer sees it: two ``grpc.aio`` interceptors.

:class:`Measure`, outermost, counts and times every unary call whatever becomes of it
(the standard ``grpc_server_*`` series of :mod:`service.metrics`), refusals included.
Then :class:`Guard`:

In order, for every method except health checking (answered before anything else, so
a flood of heavy calls or a missing key never makes a load balancer think we are down):

1. **Key and role** (:mod:`service.access`): no valid ``authorization: Bearer <key>`` →
   ``UNAUTHENTICATED``; a key without the method's role → ``PERMISSION_DENIED``; over
   the key's ``calls_per_second`` → ``RESOURCE_EXHAUSTED``. Skipped without a keys file
   (the server then listens on loopback only, see :func:`service.api.security.server_security`).
2. **Expired deadline** → ``DEADLINE_EXCEEDED`` before any work, so nothing the client
   gave up on is computed or written.
3. **Concurrency limit**: beyond ``OMNIREC_MAX_CONCURRENT_CALLS`` calls in flight in this
   process, ``RESOURCE_EXHAUSTED`` at once (load shedding: the caller retries or goes
   elsewhere, instead of every call slowing down together).
4. **Undecodable request bytes** → ``INVALID_ARGUMENT`` with one log line. gRPC's default
   is ``INTERNAL`` plus a traceback per call, which an anonymous caller could use to
   flood the log.

The name of the key stays in :data:`service.access.caller` for the call, so audit lines
(:func:`service.access.audit`) say who asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from service import metrics
from service.access import OPEN_PREFIXES, KeyRing, caller

log = logging.getLogger(__name__)


class Measure(grpc.aio.ServerInterceptor):
    """``grpc_server_started_total``, ``grpc_server_handled_total{grpc_code}`` and
    ``grpc_server_handling_seconds`` for every unary call (streams: reflection only,
    which is not measured)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:
            wrapped = handler._replace(unary_unary=_measured(details.method, handler.unary_unary))
            # Guard hands out one handler per method and key: keep the newest.
            cached = self._wrapped[details.method] = (handler, wrapped)
        return cached[1]


def _measured(method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
    """``behavior`` counted and timed; the label children are looked up once."""
    service, _, name = method.lstrip("/").rpartition("/")
    labels = ("unary", service, name)
    started = metrics.STARTED.labels(*labels)
    handling = metrics.HANDLING.labels(*labels)
    handled: dict[grpc.StatusCode, Any] = {}

    def done(code: grpc.StatusCode) -> None:
        counter = handled.get(code)
        if counter is None:
            counter = handled[code] = metrics.HANDLED.labels(*labels, code.name)
        counter.inc()

    async def measured(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started.inc()
        begun = time.perf_counter()
        try:
            reply = await behavior(request, context)
        except BaseException:
            # An abort carries its code on the context; anything else is gRPC's UNKNOWN
            # (or CANCELLED when the caller went away).
            code = context.code() if hasattr(context, "code") else None
            done(code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN)
            raise
        finally:
            handling.observe(time.perf_counter() - begun)
        done(grpc.StatusCode.OK)
        return reply

    return measured


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes are not the method's message."""

    method: str
    error: str


class Guard(grpc.aio.ServerInterceptor):
    """Authentication, authorization, deadline, load shedding and decoding checks."""

    def __init__(self, keys: KeyRing | None, max_concurrent_calls: int) -> None:
        self.keys = keys
        self.max_concurrent_calls = max_concurrent_calls
        self.in_flight = 0
        self._wrapped: dict[tuple[str, str], tuple[Any, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        handler = await continuation(details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler  # unknown methods get gRPC's own UNIMPLEMENTED
        name = "anonymous"
        if self.keys is not None:
            key = self.keys.find(_bearer(details.invocation_metadata))
            if key is None:
                return _refuse(
                    handler,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "a valid API key is required: send metadata 'authorization: Bearer <key>'",
                )
            if not key.allows(method):
                return _refuse(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"key {key.name!r} has no role that allows {method}",
                )
            if not key.take():
                return _refuse(
                    handler,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"key {key.name!r} is over its {key.calls_per_second:g} calls per second",
                )
            name = key.name
        if handler.unary_unary is None:
            return handler  # reflection (streaming): the key check above is all it needs
        # Wrapping builds closures and a handler: once per method and key, not per call.
        cached = self._wrapped.get((method, name))
        if cached is None or cached[0] is not handler:
            wrapped = handler._replace(
                request_deserializer=_tolerant(method, handler.request_deserializer),
                unary_unary=self._guarded(method, name, handler.unary_unary),
            )
            cached = self._wrapped[method, name] = (handler, wrapped)
        return cached[1]

    def _guarded(self, method: str, name: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                log.warning("%s: undecodable request (%s)", method, request.error)
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request: not a valid {method.rsplit('/', 1)[-1]} request message",
                )
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline expired before work began"
                )
            if self.in_flight >= self.max_concurrent_calls:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server busy: {self.max_concurrent_calls} calls in flight; retry shortly",
                )
            self.in_flight += 1
            token = caller.set(name)
            try:
                return await behavior(request, context)
            finally:
                caller.reset(token)
                self.in_flight -= 1

        return guarded


def _bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def _tolerant(method: str, deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser raises
            return Undecodable(method, type(exc).__name__)

    return deserialize


def _refuse(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler that answers ``code`` without reading the request."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.stream_unary_rpc_method_handler(refuse)
