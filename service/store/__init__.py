"""The feature store: everything omnirec keeps in Redis, split by what it holds.

=====================  ==============================================================
module                 holds
=====================  ==============================================================
:mod:`.keys`           THE key schema (every key is built there, and listed)
:mod:`.codecs`         how values are encoded, and the value types
:mod:`.plans`          round trips: the client, plans with sync/async runners,
                       coalescing, Redis trouble → ``StoreUnavailable``
:mod:`.publications`   published (batch) feature sets and the atomic pointer flip
:mod:`.reads`          what one request reads about one person, in one round trip
:mod:`.live`           the live layer TrackEvents writes (history, sets, trending)
:mod:`.stream`         the durable event stream training exports
:mod:`.items`          the catalogue
:mod:`.identities`     identity links, merges, erasure, the erased set
=====================  ==============================================================

Two layers: **published** (training writes a complete set under a fresh publication id,
then flips one pointer) and **live** (``TrackEvents`` appends at once; serving merges
both, newest first). :class:`FeatureStore` is the one object the rest of omnirec holds;
its parts are the mix-ins of the modules above, sharing one injected client. Nothing
outside this package talks to a Redis client.

The client may be a Redis Cluster's (``redis+cluster://``): reads run unchanged on
redis-py's cluster pipelines, while writes that must be atomic go slot by slot (see
:mod:`.keys` for the slots, :mod:`.live`, :mod:`.identities` and :mod:`.publications`
for the writes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TypeVar

import redis

from service.store.codecs import UserFeatures
from service.store.identities import IdentityStore
from service.store.items import ItemStore
from service.store.keys import slot_tag
from service.store.live import LiveLayer
from service.store.plans import AsyncReader, Client, Plan, async_twin, is_cluster, run_plan
from service.store.publications import Publications
from service.store.reads import PUBLISHED_CACHED, ServingReads
from service.store.stream import EventStream

T = TypeVar("T")


class FeatureStore(ServingReads, LiveLayer, EventStream, ItemStore, Publications, IdentityStore):
    """Reads and writes omnirec's features in Redis (one server or a Redis Cluster). The
    client is injected."""

    def __init__(
        self,
        client: Client,
        prefix: str = "omnirec",
        *,
        history_length: int = 200,
        engagement_length: int = 500,
        trending_half_life_hours: float = 6.0,
        stream_maxlen: int = 5_000_000,
        published_cached: int = PUBLISHED_CACHED,
    ) -> None:
        self.client = client
        self.cluster = is_cluster(client)
        """Whether ``client`` is a Redis Cluster's: writes then go slot by slot."""
        if self.cluster:
            slot_tag(0)  # the slot-tag table, built now rather than in the first request
        self.prefix = prefix
        self.history_length = history_length
        self.engagement_length = engagement_length
        self.trending_half_life_hours = trending_half_life_hours
        self.stream_maxlen = stream_maxlen
        self.published_cached = published_cached
        self._published: dict[str, OrderedDict[str, UserFeatures]] = {}
        self._data_end: dict[str, int | None] = {}
        self._popular: dict[str, list[tuple[str, float]]] = {}
        self._pointer: tuple[str | None, float] = (None, 0.0)
        self._pointer_lock = threading.Lock()

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def run(self, plan: Plan[T], doing: str) -> T:
        """Run a read or write plan on this store's (sync) client."""
        return run_plan(self.client, plan, doing)

    def async_reader(self) -> AsyncReader:
        """An asyncio runner of plans on the same Redis (create it inside its loop)."""
        return async_twin(self.client)

    def close(self) -> None:
        self.client.close()
