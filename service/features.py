"""The feature store: Redis key schema, value encoding, and the one class that reads and
writes it. Nothing else in omnirec builds a Redis key.

Training publishes a complete feature set under a fresh *publication* id, then flips one
pointer key, so a running service sees either the old set or the new one, never a mix.
Older publications are removed after the flip, keeping a few so that a replica still
holding the previous pointer for a moment keeps reading complete data.

Keys (``P`` is the configured prefix, ``<pub>`` a publication id)::

    P:pub:current                 string  id of the live publication
    P:pub:all                     list    publication ids, newest first
    P:pub:<pub>:meta              hash    facts about the publication (run, counts, time)
    P:pub:<pub>:popular           zset    item_id -> popularity score
    P:pub:<pub>:items             hash    item_id -> JSON item metadata
    P:pub:<pub>:user:{<user_id>}  hash    one person's features (fields below)

User hash fields: ``history`` (JSON list of ``[item_id, event_type, epoch_seconds]``,
newest first, bounded), ``purchased`` and ``disliked`` (JSON lists of item ids).
The braces are Redis Cluster hash tags: all of one person's keys share a slot.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from service.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: How long a service trusts its cached publication pointer before re-reading it.
POINTER_TTL_SECONDS = 1.0
#: Users written per pipeline while publishing.
PUBLISH_BATCH = 1000


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


def items_key(prefix: str, pub: str) -> str:
    return f"{publication_prefix(prefix, pub)}:items"


def user_key(prefix: str, pub: str, user_id: str) -> str:
    return f"{publication_prefix(prefix, pub)}:user:{{{user_id}}}"


def new_publication_id(now: float | None = None) -> str:
    """Sortable, unique: UTC time to the second plus a random suffix."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


# --- values (pure) -------------------------------------------------------------------


@dataclass
class UserFeatures:
    """What serving knows about one person."""

    history: list[tuple[str, str, int]] = field(default_factory=list)
    """``(item_id, event_type, epoch_seconds)``, newest first."""
    purchased: set[str] = field(default_factory=set)
    disliked: set[str] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return not (self.history or self.purchased or self.disliked)


def encode_user(features: UserFeatures) -> dict[str, str]:
    return {
        "history": json.dumps([list(h) for h in features.history], separators=(",", ":")),
        "purchased": json.dumps(sorted(features.purchased), separators=(",", ":")),
        "disliked": json.dumps(sorted(features.disliked), separators=(",", ":")),
    }


def decode_user(raw: Mapping[bytes | str, bytes | str]) -> UserFeatures:
    fields_ = {_text(k): _text(v) for k, v in raw.items()}
    history = [(str(i), str(t), int(ts)) for i, t, ts in json.loads(fields_.get("history", "[]"))]
    return UserFeatures(
        history=history,
        purchased=set(json.loads(fields_.get("purchased", "[]"))),
        disliked=set(json.loads(fields_.get("disliked", "[]"))),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the store -----------------------------------------------------------------------


@dataclass
class ServingView:
    """Everything one request needs, read in one round trip."""

    publication: str | None
    user: UserFeatures
    popular: list[tuple[str, float]]
    """Most popular items first, ``(item_id, score)``."""


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


class FeatureStore:
    """Reads and writes omnirec's features in Redis. The client is injected."""

    def __init__(self, client: redis.Redis, prefix: str = "omnirec") -> None:
        self.client = client
        self.prefix = prefix
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

    def serving_view(self, user_id: str, popular_count: int) -> ServingView:
        """One person's features plus the top ``popular_count`` popular items."""
        pub = self.current_publication()
        if pub is None:
            return ServingView(None, UserFeatures(), [])
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(user_key(self.prefix, pub, user_id))
        pipe.zrevrange(popular_key(self.prefix, pub), 0, popular_count - 1, withscores=True)
        with _unavailable("reading features"):
            raw_user, raw_popular = pipe.execute()
        return ServingView(
            publication=pub,
            user=decode_user(raw_user) if raw_user else UserFeatures(),
            popular=[(_text(item), float(score)) for item, score in raw_popular],
        )

    def publication_meta(self, pub: str) -> dict[str, str]:
        with _unavailable("reading publication metadata"):
            raw = self.client.hgetall(meta_key(self.prefix, pub))
        return {_text(k): _text(v) for k, v in raw.items()}

    def items(self, pub: str, item_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(item_ids)
        if not ids:
            return {}
        with _unavailable("reading item metadata"):
            values = self.client.hmget(items_key(self.prefix, pub), ids)
        return {i: json.loads(v) for i, v in zip(ids, values, strict=True) if v is not None}

    # -- writing (training) --

    def publish(
        self,
        users: Iterable[tuple[str, UserFeatures]],
        popular: Mapping[str, float],
        items: Mapping[str, Mapping[str, Any]],
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
            for chunk in _chunks(list(items.items()), PUBLISH_BATCH):
                pipe.hset(
                    items_key(self.prefix, pub),
                    mapping={k: json.dumps(v, separators=(",", ":")) for k, v in chunk},
                )
            info = {str(k): str(v) for k, v in meta.items()}
            info |= {"users": str(written), "items": str(len(items)), "created": str(time.time())}
            pipe.hset(meta_key(self.prefix, pub), mapping=info)
            pipe.execute()
            # The flip: one MULTI so the pointer and the list never disagree.
            flip = self.client.pipeline(transaction=True)
            flip.set(current_key(self.prefix), pub)
            flip.lpush(publications_key(self.prefix), pub)
            flip.execute()
            log.info("publication %s is live (%d users, %d items)", pub, written, len(items))
            self._pointer = (pub, time.monotonic())
            self._drop_old(keep)
        return pub

    def _write_users(
        self, pub: str, users: Iterable[tuple[str, UserFeatures]], total: int | None
    ) -> int:
        written = 0
        next_report = time.monotonic() + 2.0
        for batch in _chunks(users, PUBLISH_BATCH):
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
        for batch in _chunks(self.client.scan_iter(match=pattern, count=1000), 1000):
            removed += self.client.unlink(*batch)
        log.info("removed publication %s (%d keys)", pub, removed)
        return removed

    def publications(self) -> list[str]:
        return [_text(p) for p in self.client.lrange(publications_key(self.prefix), 0, -1)]


@contextmanager
def _unavailable(doing: str) -> Iterator[None]:
    """Turns Redis connection trouble into :class:`StoreUnavailable` with context."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis unreachable while {doing}: {exc}") from exc


def _chunks(values: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for value in values:
        batch.append(value)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
