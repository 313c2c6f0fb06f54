"""Publishing what serving needs into Redis: per-person history, popularity, items."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from service.events import ITEM_EVENT_TYPES
from service.features import FeatureStore, UserFeatures
from training.matrix import SECONDS_PER_DAY

log = logging.getLogger(__name__)


def user_features(frame: pd.DataFrame, history_length: int) -> Iterator[tuple[str, UserFeatures]]:
    """Each person's newest ``history_length`` item events, purchases and dislikes."""
    items = frame[frame["event_type"].isin(ITEM_EVENT_TYPES)]
    items = items.sort_values(["user_id", "timestamp"], ascending=[True, False], kind="stable")
    users = items["user_id"].to_numpy()
    item_ids = items["item_id"].to_numpy()
    types = items["event_type"].astype(str).to_numpy()
    stamps = items["timestamp"].to_numpy(dtype=np.int64)
    bounds = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(users)]))
    for start, end in zip(starts, ends, strict=True):
        kinds = types[start:end]
        stop = min(end, start + history_length)
        yield (
            str(users[start]),
            UserFeatures(
                history=list(
                    zip(
                        item_ids[start:stop].tolist(),
                        types[start:stop].tolist(),
                        stamps[start:stop].tolist(),
                        strict=True,
                    )
                ),
                purchased=set(item_ids[start:end][kinds == "purchase"].tolist()),
                disliked=set(item_ids[start:end][kinds == "dislike"].tolist()),
            ),
        )


def popularity(
    frame: pd.DataFrame, weights: Mapping[str, float], half_life_days: float
) -> dict[str, float]:
    """Item → recent popularity: summed event weights, halving every ``half_life_days``,
    counted from the newest event so a replayed old log ranks like it did then."""
    items = frame[frame["event_type"].isin([t for t, w in weights.items() if w > 0])]
    if items.empty:
        return {}
    w = items["event_type"].astype(str).map(weights).to_numpy(dtype=np.float64)
    ts = items["timestamp"].to_numpy(dtype=np.float64)
    w = w * np.exp2(-(ts.max() - ts) / SECONDS_PER_DAY / half_life_days)
    scores = pd.Series(w).groupby(items["item_id"].to_numpy()).sum()
    return {str(k): round(float(v), 6) for k, v in scores.items()}


def publish(
    store: FeatureStore,
    frame: pd.DataFrame,
    catalogue: Mapping[str, Mapping[str, Any]],
    weights: Mapping[str, float],
    meta: Mapping[str, Any],
    *,
    history_length: int,
    popularity_half_life_days: float,
    keep: int,
) -> str:
    """Write a new publication and make it live; returns its id."""
    items: dict[str, Mapping[str, Any]] = {i: {} for i in frame["item_id"].unique() if i}
    items.update(catalogue)
    n_users = int(frame.loc[frame["event_type"].isin(ITEM_EVENT_TYPES), "user_id"].nunique())
    log.info("publishing features of %d users and %d items to Redis", n_users, len(items))
    return store.publish(
        user_features(frame, history_length),
        popularity(frame, weights, popularity_half_life_days),
        items,
        meta,
        keep=keep,
        total_users=n_users,
    )
