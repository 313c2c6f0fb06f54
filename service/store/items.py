"""The catalogue in Redis: one live hash per item (category, title, price, in_stock),
written by training (``--items``), ``python -m training items`` and ``UpsertItems``
alike; a version counter tells replicas when to reload (:mod:`service.catalogue` keeps
their in-memory copy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.store.codecs import decode_item, encode_item, text
from service.store.keys import catalogue_ids_key, catalogue_version_key, item_key
from service.store.plans import Client, chunks, unavailable
from service.store.publications import PUBLISH_BATCH


class ItemStore:
    """Catalogue reads and writes (part of :class:`~service.store.FeatureStore`)."""

    client: Client
    prefix: str

    def upsert_items(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
        """Set the given fields of each item (others keep their value); returns how many
        items are new to the catalogue."""
        if not items:
            return 0
        p = self.prefix
        created = 0
        with unavailable("writing the catalogue"):
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
        with unavailable("reading the catalogue"):
            version = int(self.client.get(catalogue_version_key(p)) or 0)
            ids = sorted(text(i) for i in self.client.smembers(catalogue_ids_key(p)))
            items: dict[str, dict[str, Any]] = {}
            for batch in chunks(ids, PUBLISH_BATCH):
                pipe = self.client.pipeline(transaction=False)
                for item_id in batch:
                    pipe.hgetall(item_key(p, item_id))
                for item_id, raw in zip(batch, pipe.execute(), strict=True):
                    items[item_id] = decode_item(raw)
        return version, items


def _sadd_mask(batch: Sequence[tuple[str, Mapping[str, Any]]]) -> list[bool]:
    """Which pipeline replies are SADD results (one per item, then an HSET when fields)."""
    mask: list[bool] = []
    for _, meta in batch:
        mask.append(True)
        if encode_item(meta):
            mask.append(False)
    return mask
