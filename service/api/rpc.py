"""The gRPC boundary: domain errors mapped to status codes once, and shared checks."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from service.config import Settings
from service.errors import (
    AccountConflict,
    BadInput,
    DeadlineExpired,
    ModelNotFound,
    NotAllowed,
    NotFound,
    StoreUnavailable,
)
from service.events import id_problem

log = logging.getLogger(__name__)

NANOS_PER_SECOND = 1_000_000_000


def rpc(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Maps domain errors to status codes once, so handlers raise, never abort."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except BadInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except AccountConflict as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except DeadlineExpired as exc:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except StoreUnavailable as exc:
            log.warning("%s: %s", method.__name__, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"feature store unavailable: {exc}")
        except (ModelNotFound, NotAllowed) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except asyncio.CancelledError:
            raise  # the caller went away or the server is stopping
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

    return wrapper


def check_id(field: str, value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise BadInput(field, problem)
    return value


def to_timestamp(moment: datetime) -> Timestamp:
    """A tz-aware ``moment`` as the ``Timestamp`` an answer carries."""
    out = Timestamp()
    out.FromDatetime(moment.astimezone(UTC))
    return out


def check_timestamp(field: str, value: Timestamp) -> float:
    """The epoch seconds a request's ``Timestamp`` holds; :class:`BadInput` naming
    ``field`` when its nanos are outside 0-999,999,999 or it lies before 1970 (nothing
    omnirec tracks or plans is older). How far ahead it may lie is each caller's rule:
    every caller bounds it, which also keeps date arithmetic inside the calendar."""
    if not 0 <= value.nanos < NANOS_PER_SECOND:
        raise BadInput(field, f"nanos must be 0 to {NANOS_PER_SECOND - 1}, got {value.nanos}")
    if value.seconds < 0:
        raise BadInput(field, "is before 1970")
    return value.seconds + value.nanos / NANOS_PER_SECOND


def check_limit(limit: int, settings: Settings) -> int:
    if limit == 0:
        return settings.default_limit
    if not 1 <= limit <= settings.max_limit:
        raise BadInput(
            "limit",
            f"must be between 1 and {settings.max_limit} (0 means the default, "
            f"{settings.default_limit}); got {limit}",
        )
    return limit
