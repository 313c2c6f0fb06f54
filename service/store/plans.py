"""Round trips to Redis: the client, reads written once as *plans* that a sync and an
asyncio runner both execute, coalescing of concurrent requests' round trips, Lua scripts
run by digest, and the mapping of connection trouble to
:class:`~service.errors.StoreUnavailable`.

A Redis Cluster (``redis+cluster://``) gets redis-py's own cluster clients, sync and
asyncio: their pipelines send each node its share of a round trip's commands, all nodes
at once, so a plan's round trip stays one round trip however many slots it touches.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from service import metrics
from service.errors import StoreUnavailable

#: URL schemes of a Redis Cluster: plain and TLS (the TLS options as for ``rediss://``).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

Client = redis.Redis | redis.cluster.RedisCluster
"""A sync client: of one Redis server, or of a Redis Cluster."""

#: Errors that mean Redis cannot answer now (the caller may retry), not that a request
#: is wrong; the last four only a Redis Cluster raises (a slot without a live primary,
#: a slot moving, no node answering).
UNREACHABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.RedisClusterUnreachableError,
)


def connect(url: str, timeout_seconds: float = 0.5) -> Client:
    """A client for ``url``: ``redis://``, ``rediss://`` for TLS, ``unix://``, or a Redis
    Cluster by ``redis+cluster://host:port[,host:port…]`` (``rediss+cluster://`` for TLS).

    Connections are made lazily and re-made after a failure, so a client created while
    Redis is down starts working by itself once Redis is back. A cluster client learns
    the cluster's layout at once instead: :class:`StoreUnavailable` when no node answers.
    """
    if is_cluster_url(url):
        return _connect_cluster(url, timeout_seconds)
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


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


@dataclass(frozen=True)
class ClusterURL:
    """What a ``redis+cluster://`` URL says: where to start, and how to connect."""

    nodes: list[tuple[str, int]]
    """Startup nodes: any of them that answers tells the client the whole layout."""
    options: dict[str, Any] = field(default_factory=dict)
    """Connection options (credentials, TLS, query parameters), as redis-py parses them
    from the ``redis://`` / ``rediss://`` URL of one node."""


def parse_cluster_url(url: str) -> ClusterURL:
    """``redis+cluster://[user:password@]host:port[,host:port…][/0][?option=value…]``;
    ValueError saying what is wrong. Query parameters are those of ``rediss://``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"must start with {' or '.join(f'{s}://' for s in CLUSTER_SCHEMES)}")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    location, tail = rest[:end], rest[end:]
    credentials, at, hosts = location.rpartition("@")
    nodes = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part.strip() or '(empty)'!r} is not host:port")
        nodes.append((unquote(host), int(port)))
    path = tail.partition("?")[0]
    if path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0")
    # redis-py parses credentials and options as for one node; the hosts come from above.
    one = f"{CLUSTER_SCHEMES[scheme]}://{credentials}{at}{hosts.split(',')[0].strip()}{tail}"
    options = redis.connection.parse_url(one)
    for name in ("host", "port", "db"):
        options.pop(name, None)
    return ClusterURL(nodes, options)


def _connect_cluster(url: str, timeout_seconds: float) -> redis.cluster.RedisCluster:
    parsed = parse_cluster_url(url)
    options: dict[str, Any] = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "health_check_interval": 30,
    }
    options |= parsed.options  # the URL's query parameters win, as for redis://
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in parsed.nodes]
    try:
        return redis.cluster.RedisCluster(startup_nodes=nodes, **options)
    except (redis.RedisError, OSError) as exc:
        where = ", ".join(f"{host}:{port}" for host, port in parsed.nodes)
        raise StoreUnavailable(f"Redis Cluster unreachable at {where}: {exc}") from exc


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (sync or asyncio) talks to a Redis Cluster."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


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


class Script:
    """A Lua script, run by its SHA1 digest (EVALSHA): only the digest travels with each
    call. A server that lacks it (restarted, failed over, flushed, or a cluster node
    that never ran it) answers NOSCRIPT, and the runner sends that call once more with
    the whole text (EVAL), which also loads it there.

    Every key a script touches is passed in KEYS: a Redis Cluster routes the call by
    them, and refuses it unless they all share one slot."""

    _texts: dict[str, str] = {}  # sha -> text, of every script made (a handful)

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        Script._texts[self.sha] = text

    def call(self, keys: Sequence[str], args: Sequence[Any]) -> Command:
        return command("execute_command", "EVALSHA", self.sha, len(keys), *keys, *args)


def _unknown_scripts(commands: Sequence[Command], replies: list[Any]) -> list[int]:
    """Positions of the script calls the server answered NOSCRIPT."""
    return [
        n
        for n, reply in enumerate(replies)
        if isinstance(reply, redis.exceptions.NoScriptError)
        and commands[n][1][:1] == ("EVALSHA",)
        and commands[n][1][1] in Script._texts
    ]


def _whole(call: Command) -> Command:
    """A script call (EVALSHA) as EVAL with the script's text."""
    name, (_, sha, *rest), kwargs = call
    return name, ("EVAL", Script._texts[sha], *rest), kwargs


def _pipeline(client: Any, commands: Iterable[Command]) -> Any:
    """A pipeline (no transaction) holding ``commands``, ready to execute: on a cluster,
    redis-py's cluster pipeline, which sends each node its share at once."""
    pipe = client.pipeline(transaction=False)
    for name, args, kwargs in commands:
        getattr(pipe, name)(*args, **kwargs)
    return pipe


def run_plan(client: Client, plan: Plan[T], doing: str) -> T:
    """Run ``plan`` on the sync client: one pipeline per round trip."""
    try:
        commands = next(plan)
        while True:
            with unavailable(doing):
                replies = _pipeline(client, commands).execute(raise_on_error=False)
                unknown = _unknown_scripts(commands, replies)
                if unknown:
                    again = _pipeline(client, [_whole(commands[n]) for n in unknown])
                    for n, reply in zip(unknown, again.execute(raise_on_error=False), strict=True):
                        replies[n] = reply
                failed = next((r for r in replies if isinstance(r, Exception)), None)
                if failed is not None:
                    raise failed
            commands = plan.send(replies)
    except StopIteration as done:
        return done.value


class AsyncReader:
    """Runs plans on an asyncio client, coalescing the round trips of concurrent requests:
    while one pipeline is in flight, the commands of every request that asks meanwhile
    wait, then travel together in the next one. Under load a round trip carries several
    requests; alone, a request waits for nobody. Create it inside the loop that uses it.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster,
        timeout_seconds: float = 0.5,
    ) -> None:
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
                    sent = [c for commands, _, _ in batch for c in commands]
                    pipe = _pipeline(self.client, sent)
                    async with asyncio.timeout(self.timeout_seconds):
                        replies = await pipe.execute(raise_on_error=False)
                        unknown = _unknown_scripts(sent, replies)
                        if unknown:
                            again = _pipeline(self.client, [_whole(sent[n]) for n in unknown])
                            found = await again.execute(raise_on_error=False)
                            for n, reply in zip(unknown, found, strict=True):
                                replies[n] = reply
                except (*UNREACHABLE, TimeoutError) as exc:
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
                for commands, doing, future in batch:
                    part = replies[at : at + len(commands)]
                    at += len(commands)
                    if future.done():  # the request was cancelled meanwhile
                        continue
                    failed = next((r for r in part if isinstance(r, Exception)), None)
                    if failed is not None:
                        metrics.REDIS_ERRORS.labels("reply").inc()
                        if isinstance(failed, UNREACHABLE):  # one node of a cluster
                            failed = StoreUnavailable(f"Redis unreachable while {doing}: {failed}")
                        future.set_exception(failed)
                    else:
                        future.set_result(part)
        finally:
            self._flushing = False


def async_twin(client: Client) -> AsyncReader:
    """A reader on an asyncio client for the server (or cluster) ``client`` talks to, with
    the same settings; its timeout covers a whole round trip instead of each reply."""
    if isinstance(client, redis.cluster.RedisCluster):
        return _async_cluster_twin(client)
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


#: What redis-py's asyncio cluster client accepts of the sync one's connection options.
_ASYNC_CLUSTER_OPTIONS = frozenset(
    inspect.signature(redis.asyncio.cluster.RedisCluster.__init__).parameters
) - {"self", "host", "port", "startup_nodes"}


def _async_cluster_twin(client: redis.cluster.RedisCluster) -> AsyncReader:
    manager = client.nodes_manager
    options = dict(manager.connection_kwargs)
    timeout = options.get("socket_timeout") or 0.5
    tls = issubclass(
        options.pop("connection_class", redis.connection.Connection), redis.connection.SSLConnection
    )
    options = {k: v for k, v in options.items() if k in _ASYNC_CLUSTER_OPTIONS}
    options |= {"socket_timeout": None, "ssl": tls}
    nodes = [
        redis.asyncio.cluster.ClusterNode(node.host, node.port)
        for node in manager.startup_nodes.values()
    ]
    cluster = redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **options)
    # The nodes serving requests are made from these options once the client has read the
    # layout (the startup nodes only ask for it), so their class can still change.
    kwargs = cluster.nodes_manager.connection_kwargs
    kwargs["connection_class"] = _packed_by_hiredis(kwargs["connection_class"])
    return AsyncReader(cluster, timeout)


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
    except UNREACHABLE as exc:
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
