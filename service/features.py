"""The feature store: Redis key schema, value encoding, and the one class that reads and
writes it. Nothing else in omnirec builds a Redis key.

Two layers:

* **Published** (batch): training writes a complete feature set under a fresh
  *publication* id, then flips one pointer key, so a running service sees either the old
  set or the new one, never a mix. Older publications are removed after the flip,
  keeping a few so that a replica still holding the previous pointer for a moment keeps
  reading complete data.
* **Live** (speed layer): ``TrackEvents`` appends to each person's live history and
  sets, to time-decayed trending counters, to engagement counters, and to a durable
  stream that ``python -m training export-events`` turns into Parquet for the next
  training run. Serving merges both layers, newest first, duplicates dropped.

The catalogue is one live hash per item, written by training (``--items``) and by
``UpsertItems`` alike; a counter tells replicas when to reload it.

Keys (``P`` is the configured prefix, ``<pub>`` a publication id)::

    P:pub:current                       string  id of the live publication
    P:pub:all                           list    publication ids, newest first
    P:pub:<pub>:meta                    hash    facts about the publication
    P:pub:<pub>:popular                 zset    item_id -> popularity
    P:pub:<pub>:cobuy:{<item>}          zset    item_id -> times bought by the same people
    P:pub:<pub>:user:{<user>}           hash    history / purchased / disliked (JSON),
                                                engagement (send-time profile, JSON)
    P:live:user:{<user>}:history        list    JSON [item, type, ts], newest first, bounded
    P:live:user:{<user>}:purchased      set     item ids, the newest MAX_PERSON_ITEMS
    P:live:user:{<user>}:purchased_at   zset    item id -> time of its newest purchase (so
                                                the set keeps the newest when trimmed)
    P:live:user:{<user>}:disliked       set     item ids, the newest MAX_PERSON_ITEMS
    P:live:user:{<user>}:disliked_at    zset    item id -> time of its newest dislike
    P:live:user:{<user>}:engagement     list    JSON [channel, type, ts, zone, automated],
                                                newest first, bounded (send time, channels)
    P:live:trending:<day>               zset    item_id -> decayed weight (see below)
    P:events                            stream  every accepted live event, bounded
    P:events:exported                   string  id of the last exported stream entry
    P:seen:{<event id>}                 string  an Event.event_id recorded in the last
                                                DEDUPE_WINDOW_SECONDS (expires then)
    P:items:ids                         set     every catalogue item id
    P:items:version                     counter bumped on every catalogue change
    P:item:{<item>}                     hash    category, title, price, in_stock
    P:idn:{<token>}                     string  person id an identifier token names
    P:person:{<person>}:tokens          set     identifier tokens linked to the person
    P:person:{<person>}:aliases         set     person ids merged into this one
    P:identity:lock                     string  held while links / erasures rewrite people
    P:erased                            set     keyed hashes of erased ids (training skips)

Braces are Redis Cluster hash tags: all of one person's keys share a slot.

Trending uses the "growing weight" trick: an event at time ``t`` adds
``w · 2^((t − day_start) / H)`` to the zset of its day, so one ZINCRBY keeps the ranking
equal to an exponentially decayed count with half-life ``H``, without rewriting scores.
Readers combine today's and yesterday's zsets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import redis.asyncio

from service.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: How long a service trusts its cached publication pointer before re-reading it.
POINTER_TTL_SECONDS = 1.0
#: Popular items a service keeps per publication (the most a request can need).
POPULAR_CACHED = 1000
#: Users (or items) written per pipeline while publishing.
PUBLISH_BATCH = 1000
SECONDS_PER_DAY = 86_400
#: Trending zsets outlive their day by this much, then Redis drops them.
TRENDING_TTL_SECONDS = 3 * SECONDS_PER_DAY
#: Item events that make an item trend; a dislike does not.
TRENDING_TYPES = frozenset({"view", "click", "favourite", "add_to_cart", "purchase"})
#: People whose published features a service keeps decoded in memory (per publication).
PUBLISHED_CACHED = 20_000
#: How long an ``Event.event_id`` is remembered: the same id again within it is a retry,
#: accepted and not recorded twice. A day outlasts a client retrying through a Redis
#: outage or a deploy; each remembered id costs about 100 bytes of Redis memory.
DEDUPE_WINDOW_SECONDS = SECONDS_PER_DAY
#: Purchases, and apart dislikes, kept per person in the live layer: the newest by event
#: time. Every Recommend reads both sets whole to leave their items out.
MAX_PERSON_ITEMS = 1000


# --- key schema (pure) ---------------------------------------------------------------


def current_key(prefix: str) -> str:
    return f"{prefix}:pub:current"


def publications_key(prefix: str) -> str:
    return f"{prefix}:pub:all"


def publication_prefix(prefix: str, pub: str) -> str:
    return f"{prefix}:pub:{pub}"


def meta_key(prefix: str, pub: str) -> str:
    return f"{publication_prefix(prefix, pub)}:meta"


def popular_key(prefix: str, pub: str) -> str:
    return f"{publication_prefix(prefix, pub)}:popular"


def cobuy_key(prefix: str, pub: str, item_id: str) -> str:
    return f"{publication_prefix(prefix, pub)}:cobuy:{{{item_id}}}"


def user_key(prefix: str, pub: str, user_id: str) -> str:
    return f"{publication_prefix(prefix, pub)}:user:{{{user_id}}}"


def live_key(prefix: str, user_id: str, part: str) -> str:
    """``part``: one of :data:`LIVE_PARTS`."""
    return f"{prefix}:live:user:{{{user_id}}}:{part}"


def trending_key(prefix: str, day: int) -> str:
    return f"{prefix}:live:trending:{day}"


def stream_key(prefix: str) -> str:
    return f"{prefix}:events"


def export_checkpoint_key(prefix: str) -> str:
    return f"{prefix}:events:exported"


def seen_key(prefix: str, event_id: str) -> str:
    return f"{prefix}:seen:{{{event_id}}}"


def catalogue_ids_key(prefix: str) -> str:
    return f"{prefix}:items:ids"


def catalogue_version_key(prefix: str) -> str:
    return f"{prefix}:items:version"


def item_key(prefix: str, item_id: str) -> str:
    return f"{prefix}:item:{{{item_id}}}"


def identity_key(prefix: str, token: str) -> str:
    return f"{prefix}:idn:{{{token}}}"


def person_key(prefix: str, person: str, part: str) -> str:
    """``part``: ``tokens`` or ``aliases``."""
    return f"{prefix}:person:{{{person}}}:{part}"


def identity_lock_key(prefix: str) -> str:
    return f"{prefix}:identity:lock"


def erased_key(prefix: str) -> str:
    return f"{prefix}:erased"


LIVE_PARTS = (
    "history",
    "purchased",
    "purchased_at",
    "disliked",
    "disliked_at",
    "engagement",
)


def new_publication_id(now: float | None = None) -> str:
    """Sortable, unique: UTC time to the second plus a random suffix."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


# --- values (pure) -------------------------------------------------------------------

HistoryEntry = tuple[str, str, int]
"""``(item_id, event_type, epoch_seconds)``."""


@dataclass
class UserFeatures:
    """What serving knows about one person."""

    history: list[HistoryEntry] = field(default_factory=list)
    """Newest first."""
    purchased: set[str] = field(default_factory=set)
    disliked: set[str] = field(default_factory=set)
    engagement: str | None = None
    """Send-time profile as published by training (JSON owned by ``send_time``)."""


def encode_user(features: UserFeatures) -> dict[str, str]:
    encoded = {
        "history": _json([list(h) for h in features.history]),
        "purchased": _json(sorted(features.purchased)),
        "disliked": _json(sorted(features.disliked)),
    }
    if features.engagement is not None:
        encoded["engagement"] = features.engagement
    return encoded


def decode_user(raw: Mapping[bytes | str, bytes | str]) -> UserFeatures:
    fields_ = {_text(k): _text(v) for k, v in raw.items()}
    history = [(str(i), str(t), int(ts)) for i, t, ts in json.loads(fields_.get("history", "[]"))]
    return UserFeatures(
        history=history,
        purchased=set(json.loads(fields_.get("purchased", "[]"))),
        disliked=set(json.loads(fields_.get("disliked", "[]"))),
        engagement=fields_.get("engagement"),
    )


def encode_entry(entry: HistoryEntry) -> str:
    return _json(list(entry))


def decode_entry(raw: bytes | str) -> HistoryEntry:
    item, kind, ts = json.loads(raw)
    return str(item), str(kind), int(ts)


def merge_features(live: UserFeatures, published: UserFeatures, limit: int) -> UserFeatures:
    """Both layers as one: history newest first without duplicates, at most ``limit``."""
    seen: set[HistoryEntry] = set()
    history: list[HistoryEntry] = []
    for entry in sorted(live.history + published.history, key=lambda h: -h[2]):
        if entry not in seen:
            seen.add(entry)
            history.append(entry)
    return UserFeatures(
        history=history[:limit],
        purchased=live.purchased | published.purchased,
        disliked=live.disliked | published.disliked,
    )


def trending_increment(weight: float, ts: float, now: float, half_life_hours: float) -> float:
    """What an event adds to today's trending zset (see the module docstring)."""
    day_start = (int(now) // SECONDS_PER_DAY) * SECONDS_PER_DAY
    return weight * 2.0 ** ((min(ts, now) - day_start) / (half_life_hours * 3600.0))


def combine_trending(
    today: Sequence[tuple[str, float]],
    yesterday: Sequence[tuple[str, float]],
    now: float,
    half_life_hours: float,
) -> list[tuple[str, float]]:
    """Today's and yesterday's growing-weight zsets → ``(item, decayed weight now)``,
    best first."""
    h = half_life_hours * 3600.0
    day_start = (int(now) // SECONDS_PER_DAY) * SECONDS_PER_DAY
    scores: dict[str, float] = {}
    for item, score in yesterday:
        scores[item] = score * 2.0 ** (-SECONDS_PER_DAY / h)
    for item, score in today:
        scores[item] = scores.get(item, 0.0) + score
    now_factor = 2.0 ** (-(now - day_start) / h)
    return sorted(((i, s * now_factor) for i, s in scores.items()), key=lambda x: -x[1])


def encode_item(meta: Mapping[str, Any]) -> dict[str, str]:
    """Catalogue fields as hash values (booleans as "1"/"0")."""
    out: dict[str, str] = {}
    for key, value in meta.items():
        if value is None:
            continue
        out[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return out


def decode_item(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        key, value = _text(k), _text(v)
        if key == "price":
            meta[key] = float(value)
        elif key == "in_stock":
            meta[key] = value == "1"
        else:
            meta[key] = value
    return meta


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the store -----------------------------------------------------------------------


@dataclass
class TrackedEvent:
    """One validated live event (``timestamp`` already resolved to epoch seconds)."""

    user_id: str
    item_id: str
    event_type: str
    timestamp: int
    channel: str = ""
    timezone: str = ""
    value: float = 0.0
    automated: bool = False
    event_id: str = ""
    """The caller's idempotency key; empty when it gave none (then never deduplicated)."""


def stream_entry(event: TrackedEvent) -> dict[str, str]:
    """The fields of an event's entry in the stream (what ``export-events`` reads)."""
    return {
        "user_id": event.user_id,
        "item_id": event.item_id,
        "event_type": event.event_type,
        "timestamp": str(event.timestamp),
        "channel": event.channel,
        "timezone": event.timezone,
        "value": repr(event.value),
        "automated": "1" if event.automated else "0",
    }


#: The live sets an event type adds its item to (each with its ``<set>_at`` times).
_KEPT_SETS = {"purchase": "purchased", "dislike": "disliked"}

#: The write of one batch of live events, as one script: Redis runs a script alone and
#: whole, and its effects reach the AOF and replicas as one MULTI/EXEC, so a batch is
#: written entirely or not at all (a MULTI/EXEC alone could not skip the events already
#: recorded). ARGV: the dedupe window (s), the set bound, the number of trims T, T pairs
#: (times zset, members set), then groups: a guard key ("" = none), the group's command
#: count, and each command as its argument count then its arguments. A guarded group runs
#: only when SET NX creates its guard. Each trimmed set keeps its newest members by the
#: zset's times; members without a time (kept before times were, or merged in from
#: another person) go first. Returns the indexes of the groups skipped.
_RECORD_SCRIPT = """#!lua
local window, bound = ARGV[1], tonumber(ARGV[2])
local trims = tonumber(ARGV[3])
local at, group, skipped = 4 + 2 * trims, 0, {}
while at <= #ARGV do
  local guard, count = ARGV[at], tonumber(ARGV[at + 1])
  at = at + 2
  local fresh = guard == '' or redis.call('SET', guard, '1', 'NX', 'EX', window)
  if not fresh then skipped[#skipped + 1] = group end
  for _ = 1, count do
    local argc = tonumber(ARGV[at])
    if fresh then redis.call(unpack(ARGV, at + 1, at + argc)) end
    at = at + argc + 1
  end
  group = group + 1
end
local function each_chunk(values, apply)
  for from = 1, #values, 1000 do
    apply(unpack(values, from, math.min(from + 999, #values)))
  end
end
for t = 0, trims - 1 do
  local times, members = ARGV[4 + 2 * t], ARGV[5 + 2 * t]
  local excess = redis.call('ZCARD', times) - bound
  if excess > 0 then
    local oldest = redis.call('ZRANGE', times, 0, excess - 1)
    redis.call('ZREMRANGEBYRANK', times, 0, excess - 1)
    each_chunk(oldest, function(...) redis.call('SREM', members, ...) end)
  end
  if redis.call('SCARD', members) > bound then
    redis.call('DEL', members)
    each_chunk(redis.call('ZRANGE', times, 0, -1), function(...)
      redis.call('SADD', members, ...)
    end)
  end
end
return skipped
"""


def _add_group(argv: list[Any], guard: str, commands: Sequence[Sequence[Any]]) -> None:
    """Append one group of :data:`_RECORD_SCRIPT`'s ARGV."""
    argv += (guard, len(commands))
    for args in commands:
        argv.append(len(args))
        argv += args


EngagementEvent = tuple[str, str, int, str, bool]
"""``(channel, event_type, epoch_seconds, timezone, automated)``."""


@dataclass
class EngagementView:
    """What send-time and channel questions need about one person, in one round trip."""

    published: list[str]
    """Profiles training published (JSON): the person's and those of people merged in."""
    published_until: int | None
    """Newest event time the published profile covers (its data end)."""
    live: list[EngagementEvent]
    """Tracked events, newest first; those after ``published_until`` are new."""


@dataclass
class ServingView:
    """Everything one request needs, read in one round trip."""

    publication: str | None
    user: UserFeatures
    """Published and live layers merged."""
    popular: list[tuple[str, float]]
    """Most popular items first, ``(item_id, score)``."""
    trending: list[tuple[str, float]] = field(default_factory=list)
    """Items gaining live interactions, best first, ``(item_id, decayed weight)``."""
    catalogue_version: int = 0
    bought_together: list[tuple[str, float]] = field(default_factory=list)
    """Items bought by the people who bought the item asked about (when asked)."""


def connect(url: str, timeout_seconds: float = 0.5) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``).

    Connections are made lazily and re-made after a failure, so a client created while
    Redis is down starts working by itself once Redis is back.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
    )


# --- reads as plans: one description, a sync and an async runner ---------------------

T = TypeVar("T")
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
            with _unavailable(doing):
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

    async def run(self, plan: Plan[T], doing: str) -> T:
        try:
            commands = next(plan)
            while True:
                commands = plan.send(await self._queued(commands, doing))
        except StopIteration as done:
            return done.value

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
                pipe = _pipeline(self.client, (c for commands, _, _ in batch for c in commands))
                try:
                    async with asyncio.timeout(self.timeout_seconds):
                        replies = await pipe.execute(raise_on_error=False)
                except (redis.ConnectionError, redis.TimeoutError, TimeoutError) as exc:
                    for _, doing, future in batch:
                        if not future.done():
                            future.set_exception(
                                StoreUnavailable(f"Redis unreachable while {doing}: {exc}")
                            )
                    continue
                except Exception as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                at = 0
                for commands, _, future in batch:
                    part = replies[at : at + len(commands)]
                    at += len(commands)
                    if future.done():  # the request was cancelled meanwhile
                        continue
                    failed = next((r for r in part if isinstance(r, Exception)), None)
                    if failed is not None:
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
    kinds = {
        redis.connection.SSLConnection: redis.asyncio.connection.SSLConnection,
        redis.connection.UnixDomainSocketConnection: (
            redis.asyncio.connection.UnixDomainSocketConnection
        ),
    }
    connection_class = _packed_by_hiredis(
        kinds.get(pool.connection_class, redis.asyncio.connection.Connection)
    )
    pool = redis.asyncio.ConnectionPool(connection_class=connection_class, **kwargs)
    return AsyncReader(redis.asyncio.Redis(connection_pool=pool), timeout)


def _packed_by_hiredis(base: type) -> type:
    """``base`` packing commands with hiredis (C), as redis-py's sync connections do; its
    asyncio ones pack in Python, most of the CPU of writing a batch of events."""
    if not redis.utils.HIREDIS_AVAILABLE:
        return base
    serializer = redis.connection.HiredisRespSerializer()

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        return serializer.pack(*args)

    return type(f"Hiredis{base.__name__}", (base,), {"pack_command": pack_command})


@dataclass
class PersonView:
    """One person as a request needs them, read in one round trip (usually)."""

    person: str
    """The person id the request's identifier names."""
    serving: ServingView | None = None
    """Features, popular and trending items (when asked for)."""
    engagement: EngagementView | None = None
    """Send-time and channel evidence (when asked for)."""
    tokens: list[str] = field(default_factory=list)
    """Identifier tokens stored for the person (when asked for)."""


@dataclass
class _PersonReplies:
    live: UserFeatures
    engagement: list[EngagementEvent]
    aliases: list[str]
    tokens: list[str]
    published: UserFeatures | None
    """Their features in the publication (empty when it holds none); None when there is
    no publication, or the request read neither features nor engagement."""


class FeatureStore:
    """Reads and writes omnirec's features in Redis. The client is injected."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "omnirec",
        *,
        history_length: int = 200,
        engagement_length: int = 500,
        trending_half_life_hours: float = 6.0,
        stream_maxlen: int = 5_000_000,
        published_cached: int = PUBLISHED_CACHED,
    ) -> None:
        self.client = client
        self.published_cached = published_cached
        self._published: dict[str, OrderedDict[str, UserFeatures]] = {}
        self.prefix = prefix
        self.history_length = history_length
        self.engagement_length = engagement_length
        self._data_end: dict[str, int | None] = {}
        self._popular: dict[str, list[tuple[str, float]]] = {}
        self.trending_half_life_hours = trending_half_life_hours
        self.stream_maxlen = stream_maxlen
        self._pointer: tuple[str | None, float] = (None, 0.0)
        self._pointer_lock = threading.Lock()

    # -- reading (service) --

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def current_publication(self, refresh: bool = False) -> str | None:
        """The live publication id, cached for :data:`POINTER_TTL_SECONDS`."""
        pub, read_at = self._pointer
        if refresh or time.monotonic() - read_at > POINTER_TTL_SECONDS:
            with _unavailable("reading the publication pointer"):
                raw = self.client.get(current_key(self.prefix))
            pub = _text(raw) if raw is not None else None
            with self._pointer_lock:
                self._pointer = (pub, time.monotonic())
        return pub

    def serving_view(
        self, user_id: str, popular_count: int, now: float | None = None
    ) -> ServingView:
        """One person's features (both layers), popular and trending items, and the
        catalogue version, in one round trip (sync; the server runs :meth:`person_plan`)."""
        view = run_plan(
            self.client,
            self.person_plan(None, user_id, popular_count=popular_count, now=now),
            "reading features",
        )
        assert view.serving is not None
        return view.serving

    def engagement_view(self, user_id: str) -> EngagementView:
        view = run_plan(
            self.client, self.person_plan(None, user_id, engagement=True), "reading engagement"
        )
        assert view.engagement is not None
        return view.engagement

    def person_plan(
        self,
        token: str | None,
        guess: str,
        *,
        popular_count: int | None = None,
        engagement: bool = False,
        tokens: bool = False,
        together: tuple[str, int] | None = None,
        now: float | None = None,
    ) -> Plan[PersonView]:
        """Everything one request needs about one person, usually in one round trip.

        ``token`` is the identifier the request names (None: ``guess`` is the person id
        already); its person is resolved in the same round trip as the reads, which are
        made for ``guess`` (the person an unlinked token names): only when the token is
        linked to someone else does a second round trip read that person. Asks for:
        features plus ``popular_count`` popular and trending items (``popular_count``
        not None), send-time evidence (``engagement``), stored identifier tokens
        (``tokens``), and items bought with ``together[0]`` (at most ``together[1]``).

        Published features never change within a publication, so they are read once per
        person and publication and kept decoded (:data:`PUBLISHED_CACHED` people); live
        keys, trending items and the catalogue version are read on every call, so an
        event tracked a moment ago, by any process, shapes the next answer.
        """
        now = time.time() if now is None else now
        p = self.prefix
        features = popular_count is not None
        pub, read_at = self._pointer
        stale = time.monotonic() - read_at > POINTER_TTL_SECONDS
        head: list[Command] = []
        if token is not None:
            head.append(command("get", identity_key(p, token)))
        if stale:
            head.append(command("get", current_key(p)))
        if features:
            day = int(now) // SECONDS_PER_DAY
            top = max(popular_count or 0, 1) - 1
            head.append(_top_with_scores(trending_key(p, day), top))
            head.append(_top_with_scores(trending_key(p, day - 1), top))
            head.append(command("get", catalogue_version_key(p)))
        wanted = (features, engagement, together)
        pub_commands, pub_decode = self._publication_commands(pub, *wanted)
        own_commands, own_decode = self._person_commands(guess, pub, features, engagement, tokens)
        replies = yield head + pub_commands + own_commands
        at = 0
        person = guess
        if token is not None:
            if replies[0] is not None:
                person = _text(replies[0])
            at += 1
        if stale:
            raw = replies[at]
            at += 1
            current = _text(raw) if raw is not None else None
            with self._pointer_lock:
                self._pointer = (current, time.monotonic())
        else:
            current = pub
        trending: list[tuple[str, float]] = []
        version = 0
        if features:
            today, yesterday, raw_version = replies[at : at + 3]
            at += 3
            trending = combine_trending(
                _score_pairs(today),
                _score_pairs(yesterday),
                now,
                self.trending_half_life_hours,
            )[: popular_count or 0]
            version = int(raw_version or 0)
        bought = pub_decode(replies[at : at + len(pub_commands)])
        mine = own_decode(replies[at + len(pub_commands) :])
        if person != guess or current != pub:
            # Linked to someone else, or a new publication went live: read them (there).
            pub = current
            pub_commands, pub_decode = self._publication_commands(pub, *wanted)
            own_commands, own_decode = self._person_commands(
                person, pub, features, engagement, tokens
            )
            replies = yield pub_commands + own_commands
            bought = pub_decode(replies[: len(pub_commands)])
            mine = own_decode(replies[len(pub_commands) :])
        theirs: list[_PersonReplies] = []
        if mine.aliases:
            # People merged into this one: their published features count until the next
            # training run relabels them, and their live keys catch an event that reached
            # them just as the merge committed.
            reads = [self._person_commands(a, pub, True, True, False) for a in mine.aliases]
            replies = yield [c for commands, _ in reads for c in commands]
            at = 0
            for commands, decode in reads:
                theirs.append(decode(replies[at : at + len(commands)]))
                at += len(commands)
        view = PersonView(person, tokens=mine.tokens)
        if features:
            published, live = mine.published or UserFeatures(), mine.live
            for other in theirs:
                published = merge_features(
                    other.published or UserFeatures(), published, self.history_length
                )
                live = merge_features(other.live, live, self.history_length)
            view.serving = ServingView(
                publication=pub,
                user=merge_features(live, published, self.history_length),
                popular=self._popular.get(pub, [])[: popular_count or 0] if pub else [],
                trending=trending,
                catalogue_version=version,
                bought_together=bought,
            )
        if engagement:
            texts = []
            own = mine.published
            if own is not None and own.engagement is not None:
                texts.append(own.engagement)
            events = list(mine.engagement)
            for other in theirs:
                if other.published is not None and other.published.engagement:
                    texts.append(other.published.engagement)
                events += other.engagement
            events.sort(key=lambda e: -e[2])
            until = self._data_end.get(pub) if pub is not None else None
            view.engagement = EngagementView(texts, until, events)
        return view

    def _publication_commands(
        self,
        pub: str | None,
        features: bool,
        engagement: bool,
        together: tuple[str, int] | None,
    ) -> tuple[list[Command], Any]:
        """Reads of the publication itself a request needs: the popular list and the data
        end once per publication (they never change within one), bought-together items
        each time. The decoder fills the caches and returns the bought-together items."""
        if pub is None:
            return [], lambda replies: []
        p = self.prefix
        commands: list[Command] = []
        want_popular = features and pub not in self._popular
        want_end = engagement and pub not in self._data_end
        if want_popular:
            commands.append(
                command("zrevrange", popular_key(p, pub), 0, POPULAR_CACHED - 1, withscores=True)
            )
        if want_end:
            commands.append(command("hget", meta_key(p, pub), "data_end"))
        if together is not None:
            item, count = together
            commands.append(
                command("zrevrange", cobuy_key(p, pub, item), 0, count - 1, withscores=True)
            )

        def decode(replies: list[Any]) -> list[tuple[str, float]]:
            it = iter(replies)
            if want_popular:
                popular = [(_text(i), float(s)) for i, s in next(it)]
                # Only the live publication and its predecessor are ever asked for.
                kept = {k: v for k, v in self._popular.items() if k == pub}
                self._popular = kept | {pub: popular}
            if want_end:
                raw = next(it)
                self._data_end[pub] = int(_text(raw)) if raw else None
            if together is None:
                return []
            return [(_text(i), float(s)) for i, s in next(it)]

        return commands, decode

    def _person_commands(
        self, person: str, pub: str | None, features: bool, engagement: bool, tokens: bool
    ) -> tuple[list[Command], Any]:
        """One person's reads and their decoder (-> :class:`_PersonReplies`)."""
        p = self.prefix
        commands: list[Command] = []
        if features:
            commands.append(
                command("lrange", live_key(p, person, "history"), 0, self.history_length - 1)
            )
            commands.append(command("smembers", live_key(p, person, "purchased")))
            commands.append(command("smembers", live_key(p, person, "disliked")))
        if engagement:
            commands.append(
                command("lrange", live_key(p, person, "engagement"), 0, self.engagement_length - 1)
            )
        commands.append(command("smembers", person_key(p, person, "aliases")))
        if tokens:
            commands.append(command("smembers", person_key(p, person, "tokens")))
        cached = self._published_of(pub, person) if pub is not None else None
        want_published = pub is not None and cached is None and (features or engagement)
        if want_published:
            commands.append(command("hgetall", user_key(p, pub, person)))
        # A publication never changes, but a person can be erased from it (by any
        # process): a cached person counts only while their published key still exists.
        check = pub is not None and cached is not None and not _is_empty(cached)
        if check:
            commands.append(command("exists", user_key(p, pub, person)))

        def decode(replies: list[Any]) -> _PersonReplies:
            it = iter(replies)
            live = UserFeatures()
            if features:
                history, purchased, disliked = next(it), next(it), next(it)
                live = UserFeatures(
                    history=[decode_entry(e) for e in history],
                    purchased={_text(i) for i in purchased},
                    disliked={_text(i) for i in disliked},
                )
            events = [_decode_engagement(e) for e in next(it)] if engagement else []
            aliases = [_text(a) for a in next(it)]
            stored = [_text(t) for t in next(it)] if tokens else []
            published = cached
            if want_published:
                raw = next(it)
                published = decode_user(raw) if raw else UserFeatures()
                self._remember(pub, person, published)  # type: ignore[arg-type]
            if check and not next(it):
                published = UserFeatures()
                self._remember(pub, person, published)  # type: ignore[arg-type]
            return _PersonReplies(live, events, aliases, stored, published)

        return commands, decode

    def _published_of(self, pub: str, person: str) -> UserFeatures | None:
        cache = self._published.get(pub)
        if cache is None:
            return None
        found = cache.get(person)
        if found is not None:
            cache.move_to_end(person)
        return found

    def _remember(self, pub: str, person: str, features: UserFeatures) -> None:
        cache = self._published.get(pub)
        if cache is None:
            # A new publication: keep only its predecessor's cache beside it.
            newest = list(self._published)[-1:]
            self._published = {k: self._published[k] for k in newest} | {pub: OrderedDict()}
            cache = self._published[pub]
        cache[person] = features
        if len(cache) > self.published_cached:
            cache.popitem(last=False)

    def publication_meta(self, pub: str) -> dict[str, str]:
        with _unavailable("reading publication metadata"):
            raw = self.client.hgetall(meta_key(self.prefix, pub))
        return {_text(k): _text(v) for k, v in raw.items()}

    # -- live events (service) --

    def record(self, events: Sequence[TrackedEvent], weights: Mapping[str, float]) -> int:
        """Apply accepted live events at once, in one round trip (see the module
        docstring); returns how many of them were skipped as already recorded (their
        ``event_id`` was seen within :data:`DEDUPE_WINDOW_SECONDS`)."""
        return run_plan(self.client, self.record_plan(events, weights), "recording events")

    def record_plan(
        self, events: Sequence[TrackedEvent], weights: Mapping[str, float]
    ) -> Plan[int]:
        """The writes of :meth:`record` as one :data:`_RECORD_SCRIPT` call: one group of
        commands per event, guarded by its event id when it has one, then the trims."""
        if not events:
            return 0
        p = self.prefix
        now = time.time()
        today = trending_key(p, int(now) // SECONDS_PER_DAY)
        argv: list[Any] = []
        trims: dict[tuple[str, str], None] = {}  # (times, members), in order, once each
        histories: set[str] = set()
        for e in events:
            xadd = ["XADD", stream_key(p), "MAXLEN", "~", self.stream_maxlen, "*"]
            xadd += [v for pair in stream_entry(e).items() for v in pair]
            writes: list[list[Any]] = [xadd]
            if e.item_id:
                entry = encode_entry((e.item_id, e.event_type, e.timestamp))
                writes.append(["LPUSH", live_key(p, e.user_id, "history"), entry])
                histories.add(e.user_id)
                kept = _KEPT_SETS.get(e.event_type)
                if kept is not None:
                    members = live_key(p, e.user_id, kept)
                    times = live_key(p, e.user_id, f"{kept}_at")
                    writes.append(["SADD", members, e.item_id])
                    # GT: a repeated purchase moves the item's time forward, never back.
                    writes.append(["ZADD", times, "GT", e.timestamp, e.item_id])
                    trims[times, members] = None
                weight = weights.get(e.event_type, 0.0)
                if e.event_type in TRENDING_TYPES and weight > 0:
                    inc = trending_increment(
                        weight, e.timestamp, now, self.trending_half_life_hours
                    )
                    writes.append(["ZINCRBY", today, repr(inc), e.item_id])
            engaged = _json([e.channel, e.event_type, e.timestamp, e.timezone, e.automated])
            writes.append(["LPUSH", live_key(p, e.user_id, "engagement"), engaged])
            _add_group(argv, seen_key(p, e.event_id) if e.event_id else "", writes)
        upkeep = [
            ["LTRIM", live_key(p, u, "history"), 0, self.history_length - 1] for u in histories
        ]
        upkeep += [
            ["LTRIM", live_key(p, u, "engagement"), 0, self.engagement_length - 1]
            for u in {e.user_id for e in events}
        ]
        upkeep.append(["EXPIRE", today, TRENDING_TTL_SECONDS])
        _add_group(argv, "", upkeep)
        head = [DEDUPE_WINDOW_SECONDS, MAX_PERSON_ITEMS, len(trims)]
        head += [key for pair in trims for key in pair]
        (skipped,) = yield [command("eval", _RECORD_SCRIPT, 0, *head, *argv)]
        return len(skipped)

    # -- the durable event stream (export for training) --

    def read_events(self, after: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` stream entries with ids greater than ``after`` ("0" = all)."""
        with _unavailable("reading the event stream"):
            raw = self.client.xrange(stream_key(self.prefix), min=f"({after}", count=count)
        return [(_text(i), {_text(k): _text(v) for k, v in f.items()}) for i, f in raw]

    def first_event_id(self) -> str | None:
        with _unavailable("reading the event stream"):
            raw = self.client.xrange(stream_key(self.prefix), count=1)
        return _text(raw[0][0]) if raw else None

    def export_checkpoint(self) -> str:
        with _unavailable("reading the export checkpoint"):
            raw = self.client.get(export_checkpoint_key(self.prefix))
        return _text(raw) if raw else "0"

    def finish_export(self, last_id: str) -> None:
        """Remember what was exported, then drop it from the stream (memory)."""
        with _unavailable("finishing an export"):
            self.client.set(export_checkpoint_key(self.prefix), last_id)
            # MINID keeps last_id itself; readers start after the checkpoint anyway.
            self.client.xtrim(stream_key(self.prefix), minid=last_id)

    # -- the catalogue --

    def upsert_items(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
        """Set the given fields of each item (others keep their value); returns how many
        items are new to the catalogue."""
        if not items:
            return 0
        p = self.prefix
        created = 0
        with _unavailable("writing the catalogue"):
            for batch in chunks(items, PUBLISH_BATCH):
                pipe = self.client.pipeline(transaction=False)
                for item_id, meta in batch:
                    pipe.sadd(catalogue_ids_key(p), item_id)
                    fields_ = encode_item(meta)
                    if fields_:
                        pipe.hset(item_key(p, item_id), mapping=fields_)
                replies = pipe.execute()
                created += sum(r for r, cmd in zip(replies, _sadd_mask(batch), strict=True) if cmd)
            self.client.incr(catalogue_version_key(p))
        return created

    def catalogue(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """``(version, item_id → metadata)`` of the whole catalogue."""
        p = self.prefix
        with _unavailable("reading the catalogue"):
            version = int(self.client.get(catalogue_version_key(p)) or 0)
            ids = sorted(_text(i) for i in self.client.smembers(catalogue_ids_key(p)))
            items: dict[str, dict[str, Any]] = {}
            for batch in chunks(ids, PUBLISH_BATCH):
                pipe = self.client.pipeline(transaction=False)
                for item_id in batch:
                    pipe.hgetall(item_key(p, item_id))
                for item_id, raw in zip(batch, pipe.execute(), strict=True):
                    items[item_id] = decode_item(raw)
        return version, items

    # -- writing (training) --

    def publish(
        self,
        users: Iterable[tuple[str, UserFeatures]],
        popular: Mapping[str, float],
        cobuy: Mapping[str, Mapping[str, float]],
        meta: Mapping[str, Any],
        keep: int = 2,
        total_users: int | None = None,
    ) -> str:
        """Write a complete feature set under a new publication, then make it live.

        Returns the new publication id. ``keep`` publications (the new one included)
        stay in Redis; older ones are deleted after the switch.
        """
        pub = new_publication_id()
        with _unavailable("publishing features"):
            written = self._write_users(pub, users, total_users)
            pipe = self.client.pipeline(transaction=False)
            if popular:
                pipe.zadd(popular_key(self.prefix, pub), dict(popular))
            for item, partners in cobuy.items():
                if partners:
                    pipe.zadd(cobuy_key(self.prefix, pub, item), dict(partners))
            info = {str(k): str(v) for k, v in meta.items()}
            info |= {"users": str(written), "created": str(time.time())}
            pipe.hset(meta_key(self.prefix, pub), mapping=info)
            pipe.execute()
            # The flip: one MULTI so the pointer and the list never disagree.
            flip = self.client.pipeline(transaction=True)
            flip.set(current_key(self.prefix), pub)
            flip.lpush(publications_key(self.prefix), pub)
            flip.execute()
            log.info("publication %s is live (%d users)", pub, written)
            self._pointer = (pub, time.monotonic())
            self._drop_old(keep)
        return pub

    def _write_users(
        self, pub: str, users: Iterable[tuple[str, UserFeatures]], total: int | None
    ) -> int:
        written = 0
        next_report = time.monotonic() + 2.0
        for batch in chunks(users, PUBLISH_BATCH):
            pipe = self.client.pipeline(transaction=False)
            for user_id, feats in batch:
                pipe.hset(user_key(self.prefix, pub, user_id), mapping=encode_user(feats))
            pipe.execute()
            written += len(batch)
            if time.monotonic() >= next_report:
                of = f" of {total}" if total else ""
                log.info("publishing users: %d%s written", written, of)
                next_report = time.monotonic() + 2.0
        return written

    def _drop_old(self, keep: int) -> None:
        stale = [_text(p) for p in self.client.lrange(publications_key(self.prefix), keep, -1)]
        for pub in stale:
            self.delete_publication(pub)
        if stale:
            self.client.ltrim(publications_key(self.prefix), 0, keep - 1)

    def delete_publication(self, pub: str) -> int:
        """Remove every key of one publication; returns how many keys went."""
        removed = 0
        pattern = f"{publication_prefix(self.prefix, pub)}:*"
        for batch in chunks(self.client.scan_iter(match=pattern, count=1000), 1000):
            removed += self.client.unlink(*batch)
        log.info("removed publication %s (%d keys)", pub, removed)
        return removed

    def publications(self) -> list[str]:
        return [_text(p) for p in self.client.lrange(publications_key(self.prefix), 0, -1)]


def _top_with_scores(key: str, last: int) -> Command:
    """``ZRANGE key 0 last REV WITHSCORES`` as a bare command, decoded by
    :func:`_score_pairs`: redis-py's own decoding turns each RESP3 double back into
    RESP2 bytes and parses them again, a tenth of a request's CPU."""
    return command("execute_command", "ZRANGE", key, 0, last, "REV", "WITHSCORES")


def _score_pairs(reply: Sequence[Any]) -> list[tuple[str, float]]:
    """``[[member, score], ...]`` (RESP3) or ``[member, score, ...]`` (RESP2) as pairs."""
    if reply and not isinstance(reply[0], list):
        reply = list(zip(reply[::2], reply[1::2], strict=True))
    return [(_text(member), float(score)) for member, score in reply]


def _is_empty(features: UserFeatures) -> bool:
    return not (features.history or features.purchased or features.disliked or features.engagement)


def _decode_engagement(raw: bytes | str) -> EngagementEvent:
    channel, kind, ts, zone, automated = json.loads(raw)
    return str(channel), str(kind), int(ts), str(zone), bool(automated)


def _sadd_mask(batch: Sequence[tuple[str, Mapping[str, Any]]]) -> list[bool]:
    """Which pipeline replies are SADD results (one per item, then an HSET when fields)."""
    mask: list[bool] = []
    for _, meta in batch:
        mask.append(True)
        if encode_item(meta):
            mask.append(False)
    return mask


@contextmanager
def _unavailable(doing: str) -> Iterator[None]:
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
