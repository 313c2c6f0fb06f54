"""Item metadata at serving time and the business filters that use it.

Each replica keeps the whole catalogue in memory and reloads it when the version counter
it reads with every request (``ServingView.catalogue_version``) moves, so filters cost no
extra Redis round trip.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import metrics
from service.errors import BadInput
from service.events import MAX_ID_LENGTH

#: Largest category name accepted.
MAX_CATEGORY_LENGTH = 128
#: Largest item title accepted: titles travel in every GetProfile answer and catalogue load.
MAX_TITLE_LENGTH = 500
#: Most values one filter list (``include_categories``, ``exclude_categories``,
#: ``exclude_item_ids``) may hold: a page shows far fewer, and each value costs every
#: ranking of the request.
MAX_FILTER_VALUES = 1000


@dataclass(frozen=True)
class ItemFilter:
    """What a request allows. Unknown stock counts as in stock; an item without a
    category never matches ``include_categories``."""

    include_categories: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    exclude_item_ids: frozenset[str] = frozenset()
    in_stock_only: bool = False

    @classmethod
    def from_request(cls, request: Any) -> ItemFilter:
        """From a request message with ``include_categories``, ``exclude_categories``,
        ``exclude_item_ids`` and ``in_stock_only`` (Recommend, SimilarItems)."""
        for field, limit in (
            ("include_categories", MAX_CATEGORY_LENGTH),
            ("exclude_categories", MAX_CATEGORY_LENGTH),
            ("exclude_item_ids", MAX_ID_LENGTH),
        ):
            values = getattr(request, field)
            if len(values) > MAX_FILTER_VALUES:
                raise BadInput(field, f"at most {MAX_FILTER_VALUES} values, got {len(values)}")
            for value in values:
                if not value:
                    raise BadInput(field, "must not contain empty strings")
                if len(value) > limit:
                    raise BadInput(field, f"{value[:20]!r}… is longer than {limit} characters")
        return cls(
            frozenset(request.include_categories),
            frozenset(request.exclude_categories),
            frozenset(request.exclude_item_ids),
            bool(request.in_stock_only),
        )

    @property
    def uses_metadata(self) -> bool:
        return bool(self.include_categories or self.exclude_categories or self.in_stock_only)

    def allows(self, item_id: str, meta: Mapping[str, Any] | None) -> bool:
        if item_id in self.exclude_item_ids:
            return False
        if not self.uses_metadata:
            return True
        meta = meta or {}
        category = meta.get("category")
        if self.include_categories and category not in self.include_categories:
            return False
        if category is not None and category in self.exclude_categories:
            return False
        return not (self.in_stock_only and meta.get("in_stock") is False)


class Catalogue:
    """An in-memory copy of the catalogue plus per-bundle arrays for fast masks."""

    def __init__(self, version: int, items: Mapping[str, Mapping[str, Any]]) -> None:
        self.version = version
        self.items = dict(items)
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def meta(self, item_id: str) -> Mapping[str, Any] | None:
        return self.items.get(item_id)

    def category(self, item_id: str) -> str | None:
        meta = self.items.get(item_id)
        return None if meta is None else meta.get("category")

    def mask(self, item_ids: np.ndarray, item_filter: ItemFilter) -> np.ndarray | None:
        """Boolean mask over ``item_ids`` of what the filter allows; None = all."""
        if not item_filter.uses_metadata:
            return None
        categories, out_of_stock = self._columns(item_ids)
        allowed = np.ones(len(item_ids), dtype=bool)
        if item_filter.include_categories:
            allowed &= np.isin(categories, list(item_filter.include_categories))
        if item_filter.exclude_categories:
            allowed &= ~np.isin(categories, list(item_filter.exclude_categories))
        if item_filter.in_stock_only:
            allowed &= ~out_of_stock
        return allowed

    def _columns(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Keyed by the bundle's id array itself (kept alive here), so a swapped-in bundle
        # never meets columns built for another one.
        cached = self._arrays.get(id(item_ids))
        if cached is None or cached[0] is not item_ids:
            metas = [self.items.get(str(i)) or {} for i in item_ids]
            categories = np.array([m.get("category", "") for m in metas], dtype=object)
            out_of_stock = np.array([m.get("in_stock") is False for m in metas], dtype=bool)
            cached = (item_ids, categories, out_of_stock)
            self._arrays[id(item_ids)] = cached
        return cached[1], cached[2]


_CATALOGUE_HIT = metrics.CACHE.labels("catalogue", "hit")
_CATALOGUE_MISS = metrics.CACHE.labels("catalogue", "miss")


class CatalogueCache:
    """Holds the current :class:`Catalogue`, reloading it when the version moves."""

    def __init__(self, load: Callable[[], tuple[int, dict[str, dict[str, Any]]]]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self.current = Catalogue(-1, {})

    def get(self, version: int) -> Catalogue:
        if version != self.current.version:
            with self._lock:
                if version != self.current.version:
                    loaded_version, items = self._load()
                    self.current = Catalogue(loaded_version, items)
        return self.current

    async def get_async(self, version: int) -> Catalogue:
        """:meth:`get` for the asyncio server: a reload (the whole catalogue, rare) runs
        on a worker thread so the loop keeps answering meanwhile."""
        current = self.current
        if version == current.version:
            _CATALOGUE_HIT.inc()
            return current
        _CATALOGUE_MISS.inc()
        return await asyncio.to_thread(self.get, version)
