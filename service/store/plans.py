"""Round trips to Redis: the client, reads written once as *plans* that a sync and an
asyncio runner both execute, coalescing of concurrent requests' round trips, and the
mapping of connection trouble to :class:`~service.errors.StoreUnavailable`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
import redis.asyncio

from service import metrics
from service.errors import StoreUnavailable


def connect(url: str, timeout_seconds: float = 0.5) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``).

    Connections are made lazily and re-made after a failure, so a client created while
    Redis is down starts working by itself once Redis is back.
    """
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
    )
    # Connections are made on first use, so the class can still change.
    pool = client.connection_pool
    pool.connection_class = _packed_by_hiredis(pool.connection_class)
    return client


# --- reads as plans: one description, a sync and an async runner ---------------------

T = TypeVar("T")
log = logging.getLogger(__name__)

Command = tuple[str, tuple[Any, ...], dict[str, Any]]
"""A Redis command as a redis-py pipeline method name and its arguments."""
Plan = Generator[list[Command], list[Any], T]
"""A read: yields each round trip's commands, receives their replies, returns the value.
The same plan runs on the sync client (:func:`run_plan`) and on the asyncio client
(:class:`AsyncReader`), so what is read, and how it is decoded, is written once."""


def command(name: str, *args: Any, **kwargs: Any) -> Command:
    return name, args, kwargs


def _pipeline(client: redis.Redis | redis.asyncio.Redis, commands: Iterable[Command]) -> Any:
    """A pipeline (no transaction) holding ``commands``, ready to execute."""
    pipe = client.pipeline(transaction=False)
    for name, args, kwargs in commands:
        getattr(pipe, name)(*args, **kwargs)
    return pipe


def run_plan(client: redis.Redis, plan: Plan[T], doing: str) -> T:
    """Run ``plan`` on the sync client: one pipeline per round trip."""
    try:
        commands = next(plan)
        while True:
            pipe = _pipeline(client, commands)
            with unavailable(doing):
                replies = pipe.execute()
            commands = plan.send(replies)
    except StopIteration as done:
        return done.value


class AsyncReader:
    """Runs plans on an asyncio client, coalescing the round trips of concurrent requests:
    while one pipeline is in flight, the commands of every request that asks meanwhile
    wait, then travel together in the next one. Under load a round trip carries several
    requests; alone, a request waits for nobody. Create it inside the loop that uses it.
    """

    def __init__(self, client: redis.asyncio.Redis, timeout_seconds: float = 0.5) -> None:
        self.client = client
        self.timeout_seconds = timeout_seconds
        """Longest one round trip may take (the client itself has no per-reply timeout:
        redis-py's asyncio client arms one per reply, a large share of a request's CPU)."""
        self._waiting: list[tuple[list[Command], str, asyncio.Future[list[Any]]]] = []
        self._flushing = False
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, plan: Plan[T], doing: str) -> T:
        try:
            commands = next(plan)
            while True:
                commands = plan.send(await self._queued(commands, doing))
        except StopIteration as done:
            return done.value

    def send(self, commands: list[Command], doing: str) -> None:
        """Queue ``commands`` into the next round trip without waiting for their replies
        (a failure is logged): writes an answer need not wait for."""

        async def sent() -> None:
            try:
                await self._queued(commands, doing)
            except Exception as exc:  # noqa: BLE001 - nobody waits to be told
                log.warning("Redis write failed while %s: %s", doing, exc)

        task = asyncio.get_running_loop().create_task(sent())
        # The loop keeps weak references to tasks: hold this one until it is done.
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return bool(await self.client.ping())
        except (redis.RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.client.aclose()

    async def _queued(self, commands: list[Command], doing: str) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((commands, doing, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            # One turn of the loop first: the calls that are ready to run reach their
            # reads meanwhile, and travel in this round trip too.
            await asyncio.sleep(0)
            while self._waiting:
                batch, self._waiting = self._waiting, []
                begun = time.perf_counter()
                try:
                    # Built inside the try: a command that cannot be built fails its
                    # batch's callers, not the flushing task (their calls would hang).
                    pipe = _pipeline(self.client, (c for commands, _, _ in batch for c in commands))
                    async with asyncio.timeout(self.timeout_seconds):
                        replies = await pipe.execute(raise_on_error=False)
                except (redis.ConnectionError, redis.TimeoutError, TimeoutError) as exc:
                    metrics.REDIS_ERRORS.labels("unreachable").inc()
                    for _, doing, future in batch:
                        if not future.done():
                            future.set_exception(
                                StoreUnavailable(f"Redis unreachable while {doing}: {exc}")
                            )
                    continue
                except Exception as exc:
                    metrics.REDIS_ERRORS.labels("error").inc()
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                metrics.REDIS_ROUND_TRIPS.observe(time.perf_counter() - begun)
                at = 0
                for commands, _, future in batch:
                    part = replies[at : at + len(commands)]
                    at += len(commands)
                    if future.done():  # the request was cancelled meanwhile
                        continue
                    failed = next((r for r in part if isinstance(r, Exception)), None)
                    if failed is not None:
                        metrics.REDIS_ERRORS.labels("reply").inc()
                        future.set_exception(failed)
                    else:
                        future.set_result(part)
        finally:
            self._flushing = False


def async_twin(client: redis.Redis) -> AsyncReader:
    """A reader on an asyncio client for the server ``client`` talks to, with the same
    settings; its timeout covers a whole round trip instead of each reply."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    timeout = kwargs.get("socket_timeout") or 0.5
    kwargs["socket_timeout"] = None
    # By base class: connect() has already swapped in a subclass packing with hiredis.
    kinds = [
        (redis.connection.SSLConnection, redis.asyncio.connection.SSLConnection),
        (
            redis.connection.UnixDomainSocketConnection,
            redis.asyncio.connection.UnixDomainSocketConnection,
        ),
    ]
    base = next(
        (twin for sync, twin in kinds if issubclass(pool.connection_class, sync)),
        redis.asyncio.connection.Connection,
    )
    connection_class = _packed_by_hiredis(base)
    pool = redis.asyncio.ConnectionPool(connection_class=connection_class, **kwargs)
    return AsyncReader(redis.asyncio.Redis(connection_pool=pool), timeout)


def _packed_by_hiredis(base: type) -> type:
    """``base`` packing commands with one call to hiredis (C). redis-py's asyncio
    connections pack in Python, and its sync ones run a Python generator over every
    argument before hiredis: for a batch of events (thousands of arguments) either was
    most of the CPU of writing it. Our arguments are ``str``, ``bytes``, ``int`` and
    ``float``, which hiredis encodes as redis-py would (UTF-8, ``repr`` of numbers)."""
    if not redis.utils.HIREDIS_AVAILABLE or base.__name__.startswith("Hiredis"):
        return base
    import hiredis

    def packed(args: tuple[Any, ...]) -> bytes:
        head = args[0]
        if isinstance(head, str) and " " in head:  # e.g. "CLIENT SETINFO"
            args = (*head.split(), *args[1:])
        return hiredis.pack_command(args)

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        return [packed(args)]

    def pack_commands(self: Any, commands: Iterable[tuple[Any, ...]]) -> list[bytes]:
        # Pipelines: one buffer for all (the sync connection would not call pack_command).
        return [b"".join([packed(tuple(args)) for args in commands])]

    return type(
        f"Hiredis{base.__name__}",
        (base,),
        {"pack_command": pack_command, "pack_commands": pack_commands},
    )


@contextmanager
def unavailable(doing: str) -> Iterator[None]:
    """Turns Redis connection trouble into :class:`StoreUnavailable` with context."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis unreachable while {doing}: {exc}") from exc
    except TimeoutError as exc:  # asyncio.timeout around a round trip
        raise StoreUnavailable(f"Redis did not answer in time while {doing}") from exc


def chunks(values: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``values`` in lists of ``size`` (the last one shorter)."""
    batch: list[Any] = []
    for value in values:
        batch.append(value)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
