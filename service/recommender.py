"""Ranking at request time: a loaded bundle plus one person's features → items with reasons.

Pure logic (numpy over the bundle's arrays); it neither talks to Redis nor to gRPC, so it
can be tested and benchmarked in-process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from service.bundle import FACTOR_KINDS, ModelBundle
from service.features import ServingView

#: History items looked at when explaining an item ("similar: <item>").
EXPLAIN_HISTORY = 50
#: Event types whose items explain a recommendation; a dislike explains nothing.
POSITIVE_TYPES = frozenset({"view", "click", "favourite", "add_to_cart", "purchase"})


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    reason: str


@dataclass(frozen=True)
class Exclusions:
    """What a request asked to leave out."""

    item_ids: frozenset[str] = frozenset()
    purchased: bool = True
    disliked: bool = True

    def for_view(self, view: ServingView) -> set[str]:
        excluded = set(self.item_ids)
        if self.purchased:
            excluded |= view.user.purchased
        if self.disliked:
            excluded |= view.user.disliked
        return excluded


class Recommender:
    """Scores items for one person with one bundle. Thread-safe (read-only after init)."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.item_index = {str(item): j for j, item in enumerate(bundle.item_ids)}
        self.user_index = {str(user): i for i, user in enumerate(bundle.user_ids)}
        if bundle.kind in FACTOR_KINDS:
            factors = bundle.item_factors.astype(np.float32)
            norms = np.linalg.norm(factors, axis=1, keepdims=True)
            # Unit vectors make "which history item is closest" a dot product.
            self._unit_items = factors / np.maximum(norms, 1e-12)

    def popular_count(self, limit: int, exclusions: Exclusions) -> int:
        """How many popular items to fetch so ``limit`` remain after exclusions."""
        return min(limit + len(exclusions.item_ids) + 50, 1000)

    def recommend(
        self, user_id: str, view: ServingView, limit: int, exclusions: Exclusions
    ) -> list[Recommendation]:
        """Top ``limit`` items for ``user_id``: personalised when the model can, then
        filled up with popular items."""
        excluded = exclusions.for_view(view)
        history = [h for h in view.user.history if h[1] in POSITIVE_TYPES]
        ranked = self._personalised(user_id, history, limit, excluded)
        if len(ranked) < limit:
            taken = excluded | {r.item_id for r in ranked}
            ranked += self._popular(view.popular, limit - len(ranked), taken)
        return ranked

    def _personalised(
        self, user_id: str, history: list[tuple[str, str, int]], limit: int, excluded: set[str]
    ) -> list[Recommendation]:
        scores = self._scores(user_id, history)
        if scores is None:
            return []
        scores = scores.astype(np.float32, copy=True)
        blocked = [self.item_index[i] for i in excluded if i in self.item_index]
        scores[blocked] = -np.inf
        top = _top_k(scores, limit)
        history_idx = self._history_indices(history)
        return [
            Recommendation(
                str(self.bundle.item_ids[j]), float(scores[j]), self._reason(j, history_idx)
            )
            for j in top
        ]

    def _scores(self, user_id: str, history: list[tuple[str, str, int]]) -> np.ndarray | None:
        b = self.bundle
        if b.kind in FACTOR_KINDS:
            row = self.user_index.get(user_id)
            if row is None:
                return None
            return b.item_factors @ b.user_factors[row]
        idx = self._history_indices(history)
        if not idx:
            return None
        weights = np.zeros(len(b.item_ids), dtype=np.float32)
        weights[idx] = 1.0
        return np.asarray(b.similarity.T @ weights).ravel()

    def _history_indices(self, history: list[tuple[str, str, int]]) -> list[int]:
        seen: dict[int, None] = {}
        for item, _, _ in history[:EXPLAIN_HISTORY]:
            j = self.item_index.get(item)
            if j is not None:
                seen.setdefault(j)
        return list(seen)

    def _reason(self, item: int, history_idx: list[int]) -> str:
        # An item never explains itself: "similar: <item>" names another one.
        history_idx = [h for h in history_idx if h != item]
        if not history_idx:
            return "personalised"
        if self.bundle.kind in FACTOR_KINDS:
            closeness = self._unit_items[history_idx] @ self._unit_items[item]
        else:
            closeness = self.bundle.similarity[history_idx, item].toarray().ravel()
        best = int(np.argmax(closeness))
        if closeness[best] <= 0:
            return "personalised"
        return f"similar: {self.bundle.item_ids[history_idx[best]]}"

    @staticmethod
    def _popular(
        popular: Iterable[tuple[str, float]], count: int, excluded: set[str]
    ) -> list[Recommendation]:
        out: list[Recommendation] = []
        for item, score in popular:
            if len(out) == count:
                break
            if item not in excluded:
                out.append(Recommendation(item, score, "popular"))
        return out


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best finite scores, best first."""
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
