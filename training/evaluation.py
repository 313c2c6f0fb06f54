"""Time-based holdout and ranking metrics, the same for every model and baseline.

The holdout is the latest part of each person's item history: what a model trained on
the past should have recommended next. Only people with enough history are held out, so
everyone evaluated has something to learn from.

Metrics at cut-off ``k`` over people with at least one relevant held-out item (relevant
= a positive held-out item they had not interacted with in training; recommenders filter
training items, so those could never be hit):

- recall@k: hits / number of relevant items
- ndcg@k: DCG of the hits / DCG of a perfect list (binary relevance)
- map@k: average precision at k, normalised by min(k, relevant)
- coverage: share of the catalogue that appears in anybody's top k
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from service.events import ITEM_EVENT_TYPES
from service.recommender import Recommender, top_k
from service.store.codecs import HistoryEntry
from training.matrix import Interactions, build_interactions, index_of
from training.publish import user_features

METRICS = ("recall", "ndcg", "map", "coverage")


@dataclass
class Holdout:
    train: pd.DataFrame
    test: pd.DataFrame


def time_split(
    frame: pd.DataFrame, test_fraction: float = 0.2, min_user_events: int = 5
) -> Holdout:
    """Hold out the latest ``test_fraction`` of each person's item events.

    People with fewer than ``min_user_events`` item events stay wholly in training.
    Message and session events always stay in training.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be between 0 and 1")
    is_item = frame["event_type"].isin(ITEM_EVENT_TYPES).to_numpy()
    items = frame[is_item]
    order = items.sort_values(["user_id", "timestamp"], kind="stable")
    rank = order.groupby("user_id", sort=False).cumcount().to_numpy()
    count = order.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    n_test = np.ceil(count * test_fraction).astype(np.int64)
    in_test = (count >= min_user_events) & (rank >= count - n_test)
    test_index = order.index[in_test]
    test_mask = frame.index.isin(test_index)
    return Holdout(train=frame[~test_mask], test=frame[test_mask])


@dataclass
class Prepared:
    """A split ready to score models on."""

    split: Holdout
    train: Interactions
    """The training part's matrix, over every person and item of the whole frame."""
    relevant: dict[int, np.ndarray]
    """Row index → what each held-out person should find (:func:`relevant_items`)."""


def prepare(
    frame: pd.DataFrame,
    weights: Mapping[str, float],
    *,
    half_life_days: float | None = None,
    test_fraction: float = 0.2,
    min_user_events: int = 5,
) -> Prepared:
    """Split ``frame`` by time (:func:`time_split`), build the training part's matrix and
    each held-out person's relevant items."""
    split = time_split(frame, test_fraction, min_user_events)
    items = frame[frame["event_type"].isin(list(weights) + ["dislike"])]
    user_ids, item_ids = index_of(items["user_id"]), index_of(items["item_id"])
    train = build_interactions(
        split.train, weights, half_life_days=half_life_days, user_ids=user_ids, item_ids=item_ids
    )
    relevant = relevant_items(split.test, train.matrix, user_ids, item_ids, weights)
    return Prepared(split, train, relevant)


def relevant_items(
    test: pd.DataFrame,
    train_matrix: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    weights: Mapping[str, float],
) -> dict[int, np.ndarray]:
    """Row index → column indices a good recommender should have ranked, per person."""
    positive = [t for t, w in weights.items() if w > 0]
    test = test[test["event_type"].isin(positive)]
    rows = pd.Index(user_ids).get_indexer(test["user_id"])
    cols = pd.Index(item_ids).get_indexer(test["item_id"])
    known = (rows >= 0) & (cols >= 0)
    pairs = pd.DataFrame({"u": rows[known], "i": cols[known]}).drop_duplicates()
    out: dict[int, np.ndarray] = {}
    for u, group in pairs.groupby("u"):
        seen = train_matrix.indices[train_matrix.indptr[u] : train_matrix.indptr[u + 1]]
        fresh = np.setdiff1d(group["i"].to_numpy(), seen)
        if len(fresh):
            out[int(u)] = fresh
    return out


def ranking_metrics(
    recommended: np.ndarray, relevant: list[np.ndarray], n_items: int, k: int
) -> dict[str, float]:
    """Metrics of ranked lists (``recommended``: people × ≥k item indices, -1 = none)."""
    if len(relevant) == 0:
        return {m: 0.0 for m in METRICS}
    top = recommended[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall = ndcg = ap = 0.0
    for row, rel in zip(top, relevant, strict=True):
        hits = np.isin(row, rel) & (row >= 0)
        n_rel = len(rel)
        recall += hits.sum() / n_rel
        ndcg += (discounts * hits).sum() / discounts[: min(n_rel, k)].sum()
        if hits.any():
            precision_at = np.cumsum(hits) / np.arange(1, k + 1)
            ap += (precision_at * hits).sum() / min(n_rel, k)
    shown = np.unique(top[top >= 0])
    n = len(relevant)
    return {
        "recall": recall / n,
        "ndcg": ndcg / n,
        "map": ap / n,
        "coverage": len(shown) / n_items if n_items else 0.0,
    }


Ranker = Callable[[np.ndarray, int], np.ndarray]
"""``(user row indices, k) → people × k item indices``, training items filtered."""


def evaluate(
    ranker: Ranker, relevant: Mapping[int, np.ndarray], n_items: int, k: int
) -> dict[str, float]:
    users = np.fromiter(relevant.keys(), dtype=np.int64, count=len(relevant))
    if len(users) == 0:
        return {m: 0.0 for m in METRICS}
    recommended = ranker(users, k)
    return ranking_metrics(recommended, [relevant[int(u)] for u in users], n_items, k)


def popularity_ranker(train_matrix: sp.csr_matrix) -> Ranker:
    """The baseline: the items most people interacted with, minus each person's own."""
    people_per_item = np.asarray((train_matrix > 0).sum(axis=0)).ravel()
    order = np.argsort(-people_per_item, kind="stable")

    def rank(users: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(users), k), -1, dtype=np.int64)
        for n, u in enumerate(users):
            seen = train_matrix.indices[train_matrix.indptr[u] : train_matrix.indptr[u + 1]]
            # Enough candidates that k survive the person's own items.
            head = order[: k + len(seen)]
            picked = head[~np.isin(head, seen)][:k]
            out[n, : len(picked)] = picked
        return out

    return rank


def model_ranker(model: object, train_matrix: sp.csr_matrix) -> Ranker:
    """Rank with an implicit model, filtering each person's training items."""

    def rank(users: np.ndarray, k: int) -> np.ndarray:
        ids, _ = model.recommend(  # type: ignore[attr-defined]
            users, train_matrix[users], N=k, filter_already_liked_items=True
        )
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape[1] < k:
            ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
        return ids

    return rank


def histories(
    train: pd.DataFrame, user_ids: np.ndarray, history_length: int
) -> dict[int, list[HistoryEntry]]:
    """Row index → the history serving would hold for each person after ``train`` (the
    publisher's own rule: newest ``history_length`` item events, newest first)."""
    rows = {str(user): n for n, user in enumerate(user_ids)}
    return {
        rows[user]: features.history
        for user, features in user_features(train, history_length)
        if user in rows and features.history
    }


def served_ranker(
    recommender: Recommender,
    history: Mapping[int, list[HistoryEntry]],
    train_matrix: sp.csr_matrix,
) -> Ranker:
    """Rank as ``Recommend`` does (``Recommender.score_history``: the model, recency
    weighting and transitions of its bundle) from each person's ``history``, minus the
    items in their training row. The bundle's items must be ``train_matrix``'s columns."""

    def rank(users: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(users), k), -1, dtype=np.int64)
        for n, u in enumerate(users):
            scores = recommender.score_history(history.get(int(u), []))
            if scores is None:
                continue
            scores = np.array(scores, dtype=np.float32, copy=True)
            scores[
                train_matrix.indices[train_matrix.indptr[u] : train_matrix.indptr[u + 1]]
            ] = -np.inf
            top = top_k(scores, k)
            out[n, : len(top)] = top
        return out

    return rank
