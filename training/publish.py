"""Publishing what serving needs into Redis: per-person history, popularity, items."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from service.events import CONTACT_EVENT_TYPES, ITEM_EVENT_TYPES
from service.store import FeatureStore
from service.store.codecs import UserFeatures, contact_member
from training.matrix import SECONDS_PER_DAY

log = logging.getLogger(__name__)


def user_features(
    frame: pd.DataFrame,
    history_length: int,
    engagement: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, UserFeatures]]:
    """Each person's newest ``history_length`` item events, purchases and dislikes, and
    their send-time profile (JSON) where ``engagement`` has one."""
    engagement = engagement or {}
    items = frame[frame["event_type"].isin(ITEM_EVENT_TYPES)]
    items = items.sort_values(["user_id", "timestamp"], ascending=[True, False], kind="stable")
    users = items["user_id"].to_numpy()
    item_ids = items["item_id"].to_numpy()
    types = items["event_type"].astype(str).to_numpy()
    stamps = items["timestamp"].to_numpy(dtype=np.int64)
    bounds = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate(([0], bounds)) if len(users) else np.empty(0, dtype=np.int64)
    ends = np.concatenate((bounds, [len(users)])) if len(users) else np.empty(0, dtype=np.int64)
    for start, end in zip(starts, ends, strict=True):
        kinds = types[start:end]
        stop = min(end, start + history_length)
        user = str(users[start])
        yield (
            user,
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
                engagement=engagement.get(user),
            ),
        )
    # People with messages or visits but no item events yet.
    with_items = set(users.tolist())
    for user, profile in engagement.items():
        if user not in with_items:
            yield user, UserFeatures(engagement=profile)


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


def bought_together(frame: pd.DataFrame, top: int = 50) -> dict[str, dict[str, float]]:
    """Item → the ``top`` items most often bought by the same people (counts)."""
    bought = frame.loc[frame["event_type"] == "purchase", ["user_id", "item_id"]]
    bought = bought.drop_duplicates()
    if bought.empty:
        return {}
    users = pd.Index(bought["user_id"].unique())
    items = pd.Index(bought["item_id"].unique())
    matrix = sp.csr_matrix(
        (
            np.ones(len(bought), dtype=np.float32),
            (users.get_indexer(bought["user_id"]), items.get_indexer(bought["item_id"])),
        ),
        shape=(len(users), len(items)),
    )
    together = (matrix.T @ matrix).tocsr()
    together.setdiag(0)
    together.eliminate_zeros()
    out: dict[str, dict[str, float]] = {}
    for j in range(together.shape[0]):
        start, end = together.indptr[j], together.indptr[j + 1]
        if start == end:
            continue
        cols, counts = together.indices[start:end], together.data[start:end]
        best = np.argsort(-counts, kind="stable")[:top]
        out[str(items[j])] = {
            str(items[c]): float(n) for c, n in zip(cols[best], counts[best], strict=True)
        }
    return out


def contact_marks(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per person, the newest time of each ``unsubscribe`` / ``resubscribe`` channel in
    the log (``service/contact.py``). They join the live opt-out marks, never replace
    them: a newer mark tracked live wins."""
    found = frame[frame["event_type"].isin(CONTACT_EVENT_TYPES) & (frame["channel"] != "")]
    if found.empty:
        return {}
    newest = found.groupby(["user_id", "event_type", "channel"], sort=True)["timestamp"].max()
    out: dict[str, dict[str, int]] = {}
    for (user, kind, channel), ts in newest.items():
        out.setdefault(str(user), {})[contact_member(str(kind), str(channel))] = int(ts)
    return out


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
    engagement: Mapping[str, str] | None = None,
) -> str:
    """Upsert the catalogue, then write a new publication and make it live; returns
    its id. Items seen only in events join the catalogue without metadata (what
    ``UpsertItems`` set for them stays)."""
    known = {i: {} for i in frame["item_id"].unique() if i and i not in catalogue}
    created = store.upsert_items([*catalogue.items(), *known.items()])
    log.info("catalogue: %d items written, %d new", len(catalogue) + len(known), created)
    marks = contact_marks(frame)
    if marks:
        store.add_contact_marks(marks)
        log.info("opt-outs: unsubscribe / resubscribe times of %d people written", len(marks))
    n_users = int(frame["user_id"].nunique())
    log.info("publishing features of %d people to Redis", n_users)
    return store.publish(
        user_features(frame, history_length, engagement),
        popularity(frame, weights, popularity_half_life_days),
        bought_together(frame),
        meta,
        keep=keep,
        total_users=n_users,
    )
