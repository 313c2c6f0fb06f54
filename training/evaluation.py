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

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from service.events import ITEM_EVENT_TYPES
from service.recommender import Recommender, positions
from service.store.codecs import HistoryEntry
from training.matrix import Interactions, build_interactions, index_of
from training.publish import user_features

METRICS = ("recall", "ndcg", "map", "coverage")

log = logging.getLogger(__name__)


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


def people_for(n_items: int, max_scores: int, min_people: int, max_people: int | None) -> int:
    """How many people a ranking over ``n_items`` may score: as many as keep it under
    ``max_scores`` scores, never fewer than ``min_people``, never more than
    ``max_people`` (None: no such cap)."""
    limit = max(min_people, max_scores // max(n_items, 1))
    return int(limit if max_people is None else min(max_people, limit))


def sample(
    relevant: dict[int, np.ndarray], limit: int, what: str, n_items: int, max_scores: int
) -> dict[int, np.ndarray]:
    """At most ``limit`` of ``relevant``, the same ones every run (a seeded draw), with
    one logged line saying so when it draws."""
    if len(relevant) <= limit:
        return relevant
    log.info(
        "%s: ranking %d of %d people (%s items: at most %s scores a ranking)",
        what,
        limit,
        len(relevant),
        f"{n_items:,}",
        f"{max_scores:,}",
    )
    rows = np.random.default_rng(0).choice(sorted(relevant), limit, replace=False)
    return {int(u): relevant[int(u)] for u in sorted(rows)}


def ranking_metrics(
    recommended: np.ndarray, relevant: list[np.ndarray], n_items: int, k: int
) -> dict[str, float]:
    """Metrics of ranked lists (``recommended``: people × ≥k item indices, -1 = none;
    ``relevant``: each person's distinct relevant items)."""
    if len(relevant) == 0:
        return {m: 0.0 for m in METRICS}
    top = recommended[:, :k]
    n = len(relevant)
    n_rel = np.array([len(rel) for rel in relevant], dtype=np.int64)
    # Every (person, item) as one number, so all hits are found by one isin.
    wanted = np.repeat(np.arange(n), n_rel) * (n_items + 1) + np.concatenate(relevant)
    keys = np.arange(n)[:, None] * (n_items + 1) + top
    hits = np.isin(keys, wanted) & (top >= 0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(n_rel, k) - 1]
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    shown = np.unique(top[top >= 0])
    return {
        "recall": float((hits.sum(axis=1) / n_rel).sum() / n),
        "ndcg": float(((hits * discounts).sum(axis=1) / ideal).sum() / n),
        "map": float(((precision_at * hits).sum(axis=1) / np.minimum(n_rel, k)).sum() / n),
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
    """Rank as ``Recommend`` does (the model, recency weighting and transitions of the
    recommender's bundle, :meth:`Recommender.score_history`) from each person's
    ``history``, minus the items in their training row. The bundle's items must be
    ``train_matrix``'s columns. People are scored a block at a time with one matrix
    product (:meth:`Recommender.score_people`), as cheap per person as serving is."""
    blend = recommender.blend
    transitions = recommender.bundle.transitions if blend.transition_weight > 0 else None

    def rank(users: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(users), k), -1, dtype=np.int64)
        for block in blocks(len(users), train_matrix.shape[1]):
            people = recommender.positives([history.get(int(u), []) for u in users[block]])
            scores = recommender.score_people(people)
            seen = train_matrix[users[block]]
            own = model_top(scores, seen, k)
            if transitions is None:
                out[block] = own.items
                continue
            part = recommender.transition_parts(people, transitions, blend.transition_events)
            out[block] = own.blend(part, blend.transition_weight, k)
        return out

    return rank


#: Scores held at once while ranking many people (people × items, float32): 64 MB.
BLOCK_CELLS = 16_000_000


def blocks(n_people: int, n_items: int) -> list[slice]:
    """``n_people`` in slices of at most :data:`BLOCK_CELLS` scores each."""
    size = max(1, BLOCK_CELLS // max(n_items, 1))
    return [slice(start, min(start + size, n_people)) for start in range(0, n_people, size)]


@dataclass(frozen=True)
class ModelTop:
    """A block of people's best ``k`` unseen items by the model's own scores, with what a
    transition blend needs to re-rank them exactly (:meth:`blend`)."""

    items: np.ndarray
    """people × k item indices, best first, -1 where a person has fewer (or nothing)."""
    scaled: np.ndarray
    """people × items: the model's scores over each row's largest ``|score|`` (how
    serving scales the model's part before adding the transition part), seen items and
    rows with nothing known at -inf."""
    seen: np.ndarray
    """The seen (person, item) pairs as ``row × items + column``, ascending."""

    def blend(self, part: sp.csr_matrix, weight: float, k: int) -> np.ndarray:
        """The top ``k`` of the scaled model scores plus ``weight`` × ``part`` (serving's
        blend), without ranking every item again: an item outside the model's top ``k``
        and outside the transition part keeps its model score, which no top-``k`` item's
        blended score is below, so only those two sets can hold the answer."""
        n, n_items = self.scaled.shape
        part = sp.csr_matrix(part)
        part.sort_indices()
        rows = np.repeat(np.arange(n), np.diff(part.indptr))
        cols = part.indices.astype(np.int64)
        keys = rows * n_items + cols  # ascending: rows in order, columns sorted in each
        # The top k, with their own transition part where they have one.
        valid = self.items >= 0
        top_keys = np.arange(n)[:, None] * n_items + np.where(valid, self.items, 0)
        found = positions(keys, top_keys)
        own = np.where(found >= 0, part.data[np.maximum(found, 0)], 0.0)
        top_scores = np.take_along_axis(self.scaled, np.where(valid, self.items, 0), 1)
        top_scores = np.where(valid, top_scores + weight * own, -np.inf)
        # The rest of the transition part: not in the top k, not seen, of people the
        # model can score.
        base = self.scaled[rows, cols]
        keep = (
            np.isfinite(base) & ~np.isin(keys, top_keys[valid]) & (positions(self.seen, keys) < 0)
        )
        rows, cols = rows[keep], cols[keep]
        extra = base[keep] + weight * part.data[keep]
        width = int(np.bincount(rows, minlength=n).max()) if len(rows) else 0
        cand = np.full((n, k + width), -1, dtype=np.int64)
        score = np.full((n, k + width), -np.inf, dtype=np.float64)
        cand[:, :k], score[:, :k] = self.items, top_scores
        if width:
            slot = np.arange(len(rows)) - np.searchsorted(rows, rows)  # place within its row
            cand[rows, k + slot], score[rows, k + slot] = cols, extra
        best = np.argsort(-score, axis=1, kind="stable")[:, :k]
        picked = np.take_along_axis(cand, best, 1)
        return np.where(np.isfinite(np.take_along_axis(score, best, 1)), picked, -1)


def _keys(matrix: sp.csr_matrix) -> np.ndarray:
    """``row × columns + column`` of each stored entry, ascending."""
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices.astype(np.int64)


def model_top(scores: np.ndarray, seen: sp.csr_matrix, k: int) -> ModelTop:
    """:class:`ModelTop` of a block of ``scores`` (people × items, NaN rows: nothing
    known; overwritten), each person's ``seen`` items left out. Every step is one pass
    over the block in place: at a million items a block is the whole cost of ranking."""
    known = ~np.isnan(scores[:, 0]) if scores.shape[1] else np.zeros(len(scores), bool)
    largest = np.zeros(len(scores), dtype=np.float32)
    rows = scores if known.all() else scores[known]  # a copy only when some are unknown
    if len(rows):
        largest[known] = np.maximum(rows.max(axis=1), -rows.min(axis=1))
    scores *= (1.0 / np.maximum(largest, 1e-12))[:, None]
    scores[~known] = -np.inf
    seen_keys = _keys(seen)
    np.put(scores, seen_keys, -np.inf)  # flat positions: row × items + column
    k = min(k, scores.shape[1])
    top = np.argpartition(scores, -k, axis=1)[:, -k:]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    top = np.where(np.isfinite(np.take_along_axis(scores, top, 1)), top, -1)
    return ModelTop(top, scores, seen_keys)
