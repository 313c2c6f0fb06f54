"""Published feature sets (the batch layer): training writes a complete set under a fresh
*publication* id, then flips one pointer key, so a running service sees either the old
set or the new one, never a mix. Older publications are removed after the flip, keeping
a few so that a replica still holding the previous pointer for a moment keeps reading
complete data."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from service.store.codecs import UserFeatures, encode_user, text
from service.store.keys import (
    cobuy_key,
    current_key,
    meta_key,
    new_publication_id,
    popular_key,
    publication_prefix,
    publications_key,
    user_key,
)
from service.store.plans import Client, chunks, unavailable

log = logging.getLogger(__name__)

#: How long a service trusts its cached publication pointer before re-reading it.
POINTER_TTL_SECONDS = 1.0
#: Users (or items) written per pipeline while publishing.
PUBLISH_BATCH = 1000


class Publications:
    """Publishing and the publication pointer (part of :class:`~service.store.FeatureStore`)."""

    client: Client
    prefix: str
    _pointer: tuple[str | None, float]
    _pointer_lock: threading.Lock

    def current_publication(self, refresh: bool = False) -> str | None:
        """The live publication id, cached for :data:`POINTER_TTL_SECONDS`."""
        pub, read_at = self._pointer
        if refresh or time.monotonic() - read_at > POINTER_TTL_SECONDS:
            with unavailable("reading the publication pointer"):
                raw = self.client.get(current_key(self.prefix))
            pub = text(raw) if raw is not None else None
            with self._pointer_lock:
                self._pointer = (pub, time.monotonic())
        return pub

    def publication_meta(self, pub: str) -> dict[str, str]:
        with unavailable("reading publication metadata"):
            raw = self.client.hgetall(meta_key(self.prefix, pub))
        return {text(k): text(v) for k, v in raw.items()}

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
        with unavailable("publishing features"):
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
            # The flip: the list first, then the pointer, so the pointer never names a
            # publication the list lacks (erasures find people's published keys through
            # the list). Two commands, not one MULTI: on a Redis Cluster the two keys
            # live in different slots, and the order alone is what matters.
            self.client.lpush(publications_key(self.prefix), pub)
            self.client.set(current_key(self.prefix), pub)
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
        stale = [text(p) for p in self.client.lrange(publications_key(self.prefix), keep, -1)]
        for pub in stale:
            self.delete_publication(pub)
        if stale:
            self.client.ltrim(publications_key(self.prefix), 0, keep - 1)

    def delete_publication(self, pub: str) -> int:
        """Remove every key of one publication; returns how many keys went. On a Redis
        Cluster, redis-py's SCAN walks every primary in turn, and UNLINK goes slot by
        slot."""
        removed = 0
        pattern = f"{publication_prefix(self.prefix, pub)}:*"
        for batch in chunks(self.client.scan_iter(match=pattern, count=1000), 1000):
            removed += self.client.unlink(*batch)
        log.info("removed publication %s (%d keys)", pub, removed)
        return removed

    def publications(self) -> list[str]:
        return [text(p) for p in self.client.lrange(publications_key(self.prefix), 0, -1)]
