"""Ranking at request time: a loaded bundle plus one person's features → items with reasons.

Pure logic (numpy over the bundle's arrays); it neither talks to Redis nor to gRPC, so it
can be tested and benchmarked in-process.

Recency: a person's representation is rebuilt at every request from their merged
history (published + live), each event weighted by its type and by its position in the
history — the newest event counts fully, the one ``recency_half_life_events`` back half
as much. For ALS and BPR this is the closed-form ALS user solve against the fixed item
factors ("fold-in"); for item-kNN and EASE it is the weighted sum of the history items'
``similarity`` rows. A view tracked a moment ago therefore changes the very next answer,
and people the model never saw get personalised items as soon as they have history.

Order: a bundle may carry ``transitions`` (what tends to follow each item, learnt from
the order of people's events, ``training/transitions.py``). Their scores, from the
person's last ``transition_events`` distinct items (the newest counting fully, each one
before it half as much), are blended with the model's own: each part is scaled to its own
maximum, and the transition part weighs ``transition_weight``. Training chooses both
numbers, and the recency half-life, by validation and ships them in the bundle
(:class:`Blend`); an item the transition part put there has the reason ``after: <item>``.

A ``popularity`` bundle (the baseline, registered when no personalised model beat it)
scores nobody personally: every answer is the trending-then-popular fallback — the
published lists first, then the bundle's own ranking, so a run that published nothing
still answers — and SimilarItems is bought-together plus popular items of the item's
category. The reasons say so (``trending``, ``popular``, ``bought together: …``).

Large catalogues: with an approximate-search index (``service/ann.py``, ``OMNIREC_ANN``)
a factor model's Recommend scores only candidates, never every item. The index is asked
for the best items by inner product with the person's vector (folded in as above); those
candidates, and the items the transition part scores, get their exact scores and blend;
exclusions and filters then apply to them exactly, best first. When too few survive, the
index is asked for four times as many, and past :data:`ANN_MAX_FETCH` (or the whole
index) the request is scored exactly after all (a filter that leaves only a sliver of the
catalogue). Requests
with a context item, Rank and SimilarItems are scored exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from service import ann
from service.bundle import EASE, FACTOR_KINDS, POPULARITY, ModelBundle
from service.catalogue import Catalogue, ItemFilter
from service.config import Settings
from service.store.codecs import HistoryEntry
from service.store.reads import ServingView

#: History items looked at when explaining an item.
EXPLAIN_HISTORY = 50
#: Items of a popularity bundle's own ranking kept as the last fallback.
OWN_POPULAR = 1000
#: Candidates first asked of an approximate-search index (more with exclusions), and the
#: most asked before scoring every item instead.
ANN_MIN_FETCH = 100
ANN_MAX_FETCH = 25_600
#: Event weights used when a bundle does not carry its own.
FALLBACK_WEIGHTS: Mapping[str, float] = {
    "view": 1.0,
    "click": 1.0,
    "favourite": 4.0,
    "add_to_cart": 6.0,
    "purchase": 10.0,
}


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    reason: str


@dataclass(frozen=True)
class Positives:
    """A person's positive history events the model knows, newest first."""

    items: np.ndarray
    """Item index of each event."""
    weights: np.ndarray
    """Weight of each event (type and recency)."""
    ranks: np.ndarray
    """Position of each among the person's positive events (0 = newest)."""

    @classmethod
    def none(cls) -> Positives:
        empty = np.empty(0, dtype=np.int64)
        return cls(empty, np.empty(0, dtype=np.float64), empty)

    def summed(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct items (ascending) and each one's summed weight."""
        items, inverse = np.unique(self.items, return_inverse=True)
        return items, np.bincount(inverse, weights=self.weights)


class Transitions(NamedTuple):
    """The transition part of one person's scores: :class:`Following` but the blend."""

    items: np.ndarray
    rows: list[tuple[np.ndarray, np.ndarray]]
    weight: np.ndarray
    columns: np.ndarray
    part: np.ndarray


@dataclass(frozen=True)
class Following:
    """The transition part of one person's scores, kept to explain it."""

    items: np.ndarray
    """The history items whose followers were scored, newest first."""
    rows: list[tuple[np.ndarray, np.ndarray]]
    """Their transition rows: (columns, sorted; values)."""
    weight: np.ndarray
    """Each one's weight (newest 1, then halving)."""
    columns: np.ndarray
    """The items the transition part scored (sorted)."""
    part: np.ndarray
    """Its score for each of ``columns``."""
    blended: np.ndarray | CandidateScores
    """Every item's blended score (the model's own part plus ``part``)."""

    def sources(self, top: np.ndarray) -> np.ndarray:
        """For each of ``top``: the history item whose followers scored it most where the
        transition part is larger than the model's own, else -1."""
        part = np.zeros(len(top))
        found = positions(self.columns, top)
        part[found >= 0] = self.part[found[found >= 0]]
        won = part > self.blended[top] - part
        weighted = np.zeros((len(self.rows), len(top)))
        for r, (columns, values) in enumerate(self.rows):
            at = positions(columns, top)
            weighted[r, at >= 0] = values[at[at >= 0]] * self.weight[r]
        best = np.argmax(weighted, axis=0)
        return np.where(won & (weighted.max(axis=0) > 0), self.items[best], -1)


def _transition_query(history: np.ndarray, events: int) -> tuple[np.ndarray, np.ndarray]:
    """The items whose followers make a person's transition part (their newest ``events``
    distinct ``history`` items, newest first) and each one's weight: the newest 1, each
    one before it half as much."""
    items = history[:events]
    return items, 0.5 ** np.arange(len(items))


def positions(sorted_keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each of ``wanted`` (any shape) in ``sorted_keys``, or -1."""
    if not len(sorted_keys):
        return np.full(np.shape(wanted), -1)
    at = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == wanted, at, -1)


@dataclass(frozen=True)
class CandidateScores:
    """The scores of a few items, read by item index as an array of every item's scores
    is read (``scores[top]``): what Recommend scored from an approximate search's
    candidates, without an array the size of the catalogue."""

    items: np.ndarray
    """Item indices, ascending."""
    values: np.ndarray
    """The score of each of ``items``."""

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        return self.values[np.searchsorted(self.items, index)]


@dataclass(frozen=True)
class Scored:
    """One request's scores over every item, and what their reasons need."""

    scores: np.ndarray | CandidateScores
    from_context: np.ndarray | None
    """Where closeness to the request's context item outweighs the person's own part."""
    history: tuple[np.ndarray, np.ndarray]
    """The person's distinct recent items and their ranks (:meth:`Recommender._reasons`)."""
    after: Following | None


@dataclass(frozen=True)
class ServingParams:
    """Request-time knobs (from settings)."""

    recency_half_life_events: float | None = None
    """An event this many positions back in a person's history counts half; None: the
    bundle's validated value (:class:`Blend`)."""
    recent_events: int = 5
    """Explanations name an item among the newest this many as ``recent: <item>``."""
    transition_weight: float | None = None
    """Overrides the bundle's transition weight (an experiment arm's option); None: the
    bundle's."""
    ann: str = ann.OFF
    """Approximate search (``OMNIREC_ANN``: ``auto``, ``off`` or an index kind). The
    server passes the setting; elsewhere (training's validation, benches) exact."""

    @classmethod
    def of(cls, settings: Settings) -> ServingParams:
        """What the settings say, as the server serves it (the one place settings become
        serving knobs: the server, the audience export and the latency bench)."""
        return cls(
            settings.recency_half_life_events or None, settings.recent_events, ann=settings.ann
        )


@dataclass(frozen=True)
class Blend:
    """How a bundle's parts are combined at request time; chosen by validation in
    training (``training/validation.py``) and shipped as ``metadata["serving"]``."""

    recency_half_life_events: float = 10.0
    transition_weight: float = 0.0
    """Weight of the transition part beside the model's own (each scaled to its max)."""
    transition_events: int = 3
    """The person's newest distinct items whose followers are scored."""

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> Blend:
        """The bundle's blend; the defaults for bundles from before it was chosen."""
        found = metadata.get("serving") or {}
        return cls(
            float(found.get("recency_half_life_events", cls.recency_half_life_events)),
            float(found.get("transition_weight", cls.transition_weight)),
            int(found.get("transition_events", cls.transition_events)),
        )

    def to_metadata(self) -> dict[str, float | int]:
        return {
            "recency_half_life_events": self.recency_half_life_events,
            "transition_weight": self.transition_weight,
            "transition_events": self.transition_events,
        }


@dataclass(frozen=True)
class RankingOptions:
    """What one request asks for."""

    limit: int
    item_filter: ItemFilter = ItemFilter()
    exclude_purchased: bool = True
    exclude_disliked: bool = True
    exclude_seen: bool = False
    context_item_id: str = ""
    seen_since: int = 0
    """Unless ``exclude_seen``: items the person had any event with at or after this epoch
    second are left out too (0: none). The shop default: not what they just looked at."""
    repurchase: RepurchasePolicy | None = None
    """Bought consumables allowed back after a while (``exclude_purchased`` only)."""

    def excluded(self, view: ServingView | None, catalogue: Catalogue | None = None) -> set[str]:
        excluded = set(self.item_filter.exclude_item_ids)
        if view is not None:
            user = view.user
            if self.exclude_purchased:
                bought = user.purchased
                if self.repurchase is not None and catalogue is not None:
                    bought = bought - self.repurchase.due(user.history, bought, catalogue)
                excluded |= bought
            if self.exclude_disliked:
                excluded |= user.disliked
            if self.exclude_seen:
                excluded |= {item for item, _, _ in user.history}
            elif self.seen_since:
                # History is newest first: stop at the first older event.
                for item, _, ts in user.history:
                    if ts < self.seen_since:
                        break
                    excluded.add(item)
        return excluded


@dataclass(frozen=True)
class RepurchasePolicy:
    """Categories whose bought items may be recommended again (consumables)."""

    after_seconds: Mapping[str, float]
    """Category → seconds after the person's latest purchase of an item."""
    now: float
    """The request's time (epoch seconds)."""

    def due(self, history: list[HistoryEntry], bought: set[str], catalogue: Catalogue) -> set[str]:
        """The items of ``bought`` that may come back: of a listed category, and last
        bought longer ago than its period. A purchase no longer in the (bounded) history is
        older than everything in it, so it counts as long ago."""
        if not self.after_seconds:
            return set()
        candidates = {
            item: self.after_seconds[category]
            for item in bought
            if (category := catalogue.category(item)) in self.after_seconds
        }
        if not candidates:
            return set()
        latest: dict[str, int] = {}
        for item, kind, ts in history:  # newest first
            if kind == "purchase" and item in candidates and item not in latest:
                latest[item] = ts
        return {
            item
            for item, period in candidates.items()
            if item not in latest or latest[item] <= self.now - period
        }


class Recommender:
    """Scores items with one bundle. Thread-safe (read-only after init)."""

    def __init__(self, bundle: ModelBundle, params: ServingParams | None = None) -> None:
        self.bundle = bundle
        self.params = params or ServingParams()
        meta = bundle.metadata
        blend = Blend.of(meta)
        if self.params.recency_half_life_events is not None:
            blend = replace(blend, recency_half_life_events=self.params.recency_half_life_events)
        if self.params.transition_weight is not None:
            blend = replace(blend, transition_weight=self.params.transition_weight)
        self.blend = blend
        # Without a weight the transitions would cost work for nothing. Rows are read
        # by binary search (reasons), so their columns must be sorted.
        transitions = bundle.transitions if blend.transition_weight > 0 else None
        if transitions is not None and not transitions.has_sorted_indices:
            transitions = transitions.sorted_indices()
        self._transitions = transitions
        self.weights: Mapping[str, float] = meta.get("weights") or FALLBACK_WEIGHTS
        model_params = meta.get("params", {})
        self.alpha = float(model_params.get("alpha", 1.0))
        self.regularization = float(model_params.get("regularization", 0.05))
        personalised = bundle.kind != POPULARITY
        # The items the model can score. A popularity bundle scores none, so every path
        # that needs scores finds nothing and falls through to the popular items.
        self.item_index = (
            {str(item): j for j, item in enumerate(bundle.item_ids)} if personalised else {}
        )
        self.user_index = {str(user): i for i, user in enumerate(bundle.user_ids)}
        self._own_popular: list[tuple[str, float]] = (
            []
            if personalised
            else [
                (str(item), float(score))
                for item, score in zip(
                    bundle.item_ids[:OWN_POPULAR], bundle.item_scores[:OWN_POPULAR], strict=True
                )
            ]
        )
        if bundle.kind in FACTOR_KINDS:
            factors = bundle.item_factors.astype(np.float64)
            self._factors = factors
            # The fold-in solve needs YᵀY + λI for every request: compute it once.
            self._gram = factors.T @ factors + self.regularization * np.eye(factors.shape[1])
            self._item_factors32 = np.ascontiguousarray(bundle.item_factors, dtype=np.float32)
            norms = np.linalg.norm(factors, axis=1, keepdims=True)
            self._unit_items = (factors / np.maximum(norms, 1e-12)).astype(np.float32)
        self._ann = ann.serving_index(bundle, self.params.ann)

    # -- public --

    def popular_count(self, options: RankingOptions) -> int:
        """How many popular / trending items to fetch so enough survive the filters."""
        extra = len(options.item_filter.exclude_item_ids) + 20
        if options.item_filter.uses_metadata:
            extra += 4 * options.limit
        return min(options.limit + extra, 1000)

    def recommend(
        self, user_id: str, view: ServingView, catalogue: Catalogue, options: RankingOptions
    ) -> list[Recommendation]:
        """Top ``options.limit`` items for ``user_id``: personalised when there is
        anything to go on, then filled up with trending and popular items."""
        excluded = options.excluded(view, catalogue)
        context = self.item_index.get(options.context_item_id)
        approximate = None
        if self._ann is not None and context is None:
            approximate = self._approximate(user_id, view, catalogue, options, excluded)
        personal = None if approximate is not None else self._personal(user_id, view, options)
        ranked: list[Recommendation] = approximate or []
        if personal is not None:
            blocked = excluded | ({options.context_item_id} if context is not None else set())
            top = self._top(personal.scores, blocked, catalogue, options)
            ranked = self._recommendations(top, personal, options)
        if len(ranked) < options.limit:
            ranked += self._fallback(
                view, ranked, options.limit, excluded, catalogue, options.item_filter
            )
        return ranked

    def rank(
        self,
        user_id: str,
        item_ids: Iterable[str],
        view: ServingView,
        catalogue: Catalogue,
        options: RankingOptions,
    ) -> list[Recommendation]:
        """The caller's ``item_ids`` (a search result, a category page) in the order that
        suits ``user_id``, filtered as :meth:`recommend` filters (``options.limit`` is
        ignored: every allowed item comes back). Items the model scores come first, by
        the same scores and reasons as :meth:`recommend`; for a person with nothing to go
        on, trending then popular items lead instead. Items neither ranks know follow in
        the caller's order, with the reason ``unranked``. Repeats keep their first place."""
        excluded = options.excluded(view, catalogue)
        wanted = [
            item
            for item in dict.fromkeys(item_ids)
            if item not in excluded and options.item_filter.allows(item, catalogue.meta(item))
        ]
        personal = self._personal(user_id, view, options)
        ranked: list[Recommendation] = []
        if personal is not None:
            known = [self.item_index[i] for i in wanted if i in self.item_index]
            index = np.asarray(known, dtype=np.int64)
            # Stable: equal scores keep the caller's order.
            top = index[np.argsort(-personal.scores[index], kind="stable")]
            ranked = self._recommendations(top, personal, options)
        else:
            listed = set(wanted)
            ranked = self._fill(
                [
                    ((pair for pair in ranking if pair[0] in listed), reason)
                    for ranking, reason in (
                        (view.trending, "trending"),
                        (view.popular, "popular"),
                        (self._own_popular, "popular"),
                    )
                ],
                len(wanted),
                set(),
                catalogue,
                ItemFilter(),
            )
        placed = {r.item_id for r in ranked}
        return ranked + [Recommendation(i, 0.0, "unranked") for i in wanted if i not in placed]

    def similar_items(
        self,
        item_id: str,
        catalogue: Catalogue,
        options: RankingOptions,
        view: ServingView | None,
        bought_together: list[tuple[str, float]],
        bought_together_first: bool,
    ) -> list[Recommendation]:
        """Items like ``item_id`` (or bought with it, first, when asked), filtered."""
        excluded = options.excluded(view, catalogue) | {item_id}
        together = self._fill(
            [(bought_together, f"bought together: {item_id}")],
            options.limit,
            excluded,
            catalogue,
            options.item_filter,
        )
        ranked = together if bought_together_first else []
        j = self.item_index.get(item_id)
        if j is not None and len(ranked) < options.limit:
            taken = excluded | {r.item_id for r in ranked}
            scores = self._item_scores(j)
            need = RankingOptions(options.limit - len(ranked), options.item_filter)
            ranked += [
                Recommendation(
                    str(self.bundle.item_ids[k]), float(scores[k]), f"similar: {item_id}"
                )
                for k in self._top(scores, taken, catalogue, need)
            ]
        if not bought_together_first and len(ranked) < options.limit:
            taken = {r.item_id for r in ranked}
            ranked += [r for r in together if r.item_id not in taken][: options.limit - len(ranked)]
        if len(ranked) < options.limit and view is not None:
            # An item the model does not know yet (or a narrow filter): popular items of
            # the same category stand in.
            category = catalogue.category(item_id)
            narrowed = options.item_filter
            if category is not None and not narrowed.include_categories:
                narrowed = ItemFilter(
                    frozenset({category}),
                    narrowed.exclude_categories,
                    narrowed.exclude_item_ids,
                    narrowed.in_stock_only,
                )
            ranked += self._fallback(view, ranked, options.limit, excluded, catalogue, narrowed)
        return ranked

    def score_history(self, history: list[HistoryEntry]) -> np.ndarray | None:
        """Every item's score for a person with ``history`` (newest first), exactly as
        :meth:`recommend` ranks them before filters; None when nothing in it is known.
        Training's validation ranks with this, so it measures what serving serves."""
        scores, _ = self._blended("", self._positives(history))
        return scores

    def positives(self, histories: Sequence[list[HistoryEntry]]) -> list[Positives]:
        """Each history's positive events the model knows, weighted as :meth:`recommend`
        weighs them: what :meth:`score_people` and :meth:`transition_parts` take."""
        return [self._positives(history) for history in histories]

    def score_people(self, positives: Sequence[Positives]) -> np.ndarray:
        """The model's own scores for many people at once (float32, people × items): what
        :meth:`score_history` computes before any transition part, with one matrix product
        for the whole batch instead of one product per person. A row whose history holds
        nothing the model knows is NaN. Training's validation and holdout rank with it
        (``training/evaluation.py``), so their cost is serving's, not a Python loop's."""
        n_items = len(self.bundle.item_ids)
        out = np.full((len(positives), n_items), np.nan, dtype=np.float32)
        known = np.array([len(p.items) > 0 for p in positives], dtype=bool)
        if not known.any():
            return out
        rows = np.flatnonzero(known)
        if self.bundle.kind in FACTOR_KINDS:
            vectors = np.empty((len(rows), self._factors.shape[1]))
            for n, r in enumerate(rows.tolist()):
                vectors[n] = self._fold_in(*positives[r].summed())
            # float32 halves the product's cost; the scores are ranked as float32 anyway.
            out[rows] = vectors.astype(np.float32) @ self._item_factors32.T
            return out
        weighted = sp.csr_matrix(
            (
                np.concatenate([positives[r].weights for r in rows]),
                (
                    np.repeat(np.arange(len(rows)), [len(positives[r].items) for r in rows]),
                    np.concatenate([positives[r].items for r in rows]),
                ),
            ),
            shape=(len(rows), n_items),
            dtype=np.float32,
        )
        scores = weighted @ self.bundle.similarity
        out[rows] = scores.toarray() if sp.issparse(scores) else scores
        return out

    def transition_parts(
        self, positives: Sequence[Positives], transitions: sp.csr_matrix, events: int
    ) -> sp.csr_matrix:
        """Each person's transition part (people × items, sparse) before its weight: the
        followers of their newest ``events`` distinct items, the newest counting fully and
        each one before it half as much, scaled to the row's maximum (so 1 at most), as
        :meth:`recommend` blends them. A row with no follower is empty."""
        rows, cols, values = [], [], []
        for n, p in enumerate(positives):
            items, weight = _transition_query(self._history_indices(p)[0], events)
            rows.append(np.full(len(items), n))
            cols.append(items)
            values.append(weight)
        query = sp.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(positives), transitions.shape[0]),
        )
        part = sp.csr_matrix(query @ transitions)
        top = part.max(axis=1).toarray().ravel()
        scale = np.divide(1.0, top, out=np.zeros_like(top), where=top > 0)
        return sp.csr_matrix(sp.diags(scale) @ part)

    def knows_item(self, item_id: str) -> bool:
        """Whether the model can rank items like ``item_id`` (never, for popularity)."""
        return item_id in self.item_index

    # -- the person's representation --

    def _personal(self, user_id: str, view: ServingView, options: RankingOptions) -> Scored | None:
        """Every item's score for this request (the person's blended scores, and closeness
        to the context item when there is one), or None with nothing to go on."""
        memo = self._memo(view)
        scores, after = self._blended(user_id, memo["positives"], memo)
        context = self.item_index.get(options.context_item_id)
        context_scores = self._item_scores(context) if context is not None else None
        if scores is None and context_scores is None:
            return None
        combined, from_context = _combine(scores, context_scores)
        return Scored(combined, from_context, memo["history"], after)

    def _approximate(
        self,
        user_id: str,
        view: ServingView,
        catalogue: Catalogue,
        options: RankingOptions,
        excluded: set[str],
    ) -> list[Recommendation] | None:
        """:meth:`recommend`'s personal part from the index's candidates (module
        docstring); [] with nothing to go on, None when scoring every item is needed."""
        memo = self._memo(view)
        vector, folded = self._user_vector(user_id, memo["positives"], memo)
        if vector is None:
            return []
        factors = self._factors if folded else self.bundle.item_factors
        following = self._following(memo["positives"], memo)
        blocked = np.array(
            sorted(self.item_index[i] for i in excluded if i in self.item_index), dtype=np.int64
        )
        fetch = max(ANN_MIN_FETCH, 2 * (options.limit + len(blocked)))
        if options.item_filter.uses_metadata:
            fetch *= 4
        while True:
            found = self._ann.search(vector, fetch)
            pool = found if following is None else np.union1d(found, following.columns)
            pool = np.unique(pool)  # ascending: equal scores keep index order, as in top_k
            own = factors[pool] @ vector
            scores = own
            if following is not None:
                # Scaled to the largest |score| of any item, as the exact blend is: the
                # largest comes from the index, the most negative from searching -vector.
                if "scale" not in memo:
                    lowest = self._ann.search(-vector, 1)
                    low = factors[lowest] @ vector if len(lowest) else own[:0]
                    memo["scale"] = max(float(np.max(np.abs(np.concatenate([own, low])))), 1e-12)
                scores = own / memo["scale"]
                scores[np.searchsorted(pool, following.columns)] += following.part
            order = pool[np.argsort(-scores.astype(np.float32), kind="stable")]
            order = order[~np.isin(order, blocked)]
            top = self._allowed(order, catalogue, options)
            if len(top) == options.limit:
                scored = CandidateScores(pool, scores)
                after = None if following is None else Following(*following, scored)
                return self._recommendations(
                    top, Scored(scored, None, memo["history"], after), options
                )
            # Even asked for every item, a graph index may not reach them all: past
            # either bound, only scoring every item is sure to find the few allowed.
            if fetch >= ANN_MAX_FETCH or fetch >= self._ann.size:
                return None
            fetch *= 4

    def _allowed(
        self, order: np.ndarray, catalogue: Catalogue, options: RankingOptions
    ) -> np.ndarray:
        """The first ``options.limit`` of ``order`` that the request's filter allows."""
        item_filter = options.item_filter
        if not item_filter.uses_metadata:
            return order[: options.limit]
        ids = self.bundle.item_ids
        kept = []
        for j in order.tolist():
            item = str(ids[j])
            if item_filter.allows(item, catalogue.meta(item)):
                kept.append(j)
                if len(kept) == options.limit:
                    break
        return np.array(kept, dtype=np.int64)

    def _recommendations(
        self, top: np.ndarray, scored: Scored, options: RankingOptions
    ) -> list[Recommendation]:
        """``top`` (item indices, in order) with their scores and reasons."""
        reasons = self._reasons(top, scored.history, scored.after)
        from_context = scored.from_context
        scores = scored.scores[top].tolist()
        return [
            Recommendation(
                str(self.bundle.item_ids[j]),
                score,
                f"similar: {options.context_item_id}"
                if from_context is not None and from_context[j]
                else reason,
            )
            for j, score, reason in zip(top.tolist(), scores, reasons, strict=True)
        ]

    def _memo(self, view: ServingView) -> dict[str, Any]:
        """This request's positives and history items, kept with the person's features.

        A person's features are often the same cached object call after call (nothing
        live, one publication): their positives and user vector are worked out once."""
        memo = view.user.memo.get(self)
        if memo is None:
            positives = self._positives(view.user.history)
            memo = view.user.memo[self] = {
                "positives": positives,
                "history": self._history_indices(positives),
            }
        return memo

    def _positives(self, history: list[HistoryEntry]) -> Positives:
        """The positive history events the model knows, newest first, as arrays: item
        index, weight (by type, halved every ``recency_half_life_events`` positive
        events back) and rank (counting positive events only, known or not)."""
        if not history:
            return Positives.none()
        weights, index = self.weights, self.item_index
        kind = np.array([weights.get(k, 0.0) for _, k, _ in history], dtype=np.float64)
        item = np.array([index.get(i, -1) for i, _, _ in history], dtype=np.int64)
        positive = kind > 0
        rank = np.cumsum(positive) - 1
        keep = positive & (item >= 0)
        rank = rank[keep]
        weight = kind[keep] * 2.0 ** (-rank / self.blend.recency_half_life_events)
        return Positives(item[keep], weight, rank)

    def _blended(
        self, user_id: str, positives: Positives, memo: dict[str, Any] | None = None
    ) -> tuple[np.ndarray | None, Following | None]:
        """The model's scores blended with the transition part (:class:`Blend`), and what
        the reasons need to tell where that part won (None without one)."""
        scores = self._user_scores(user_id, positives, memo)
        if scores is None:
            return scores, None
        following = self._following(positives, memo)
        if following is None:
            return scores, None
        blended = scores / max(float(np.max(np.abs(scores))), 1e-12)
        blended[following.columns] += following.part
        return blended, Following(*following, blended)

    def _following(
        self, positives: Positives, memo: dict[str, Any] | None = None
    ) -> Transitions | None:
        """The person's transition part, or None without one."""
        if self._transitions is None or not len(positives.items):
            return None
        history, _ = memo["history"] if memo else self._history_indices(positives)
        items, weight = _transition_query(history, self.blend.transition_events)
        # Straight from the CSR arrays: a handful of short rows, where scipy's slicing
        # and products cost more than the arithmetic.
        t = self._transitions
        rows = [
            (t.indices[t.indptr[j] : t.indptr[j + 1]], t.data[t.indptr[j] : t.indptr[j + 1]])
            for j in items.tolist()
        ]
        # The transition part is sparse (a few hundred items): add it where it is.
        columns, inverse = np.unique(np.concatenate([c for c, _ in rows]), return_inverse=True)
        values = [w * v for (_, v), w in zip(rows, weight.tolist(), strict=True)]
        summed = np.bincount(inverse, weights=np.concatenate(values))
        top = float(summed.max()) if len(summed) else 0.0
        if not top > 0:
            return None
        part = self.blend.transition_weight * summed / top
        return Transitions(items, rows, weight, columns, part)

    def _user_scores(
        self, user_id: str, positives: Positives, memo: dict[str, Any] | None = None
    ) -> np.ndarray | None:
        b = self.bundle
        if b.kind in FACTOR_KINDS:
            vector, folded = self._user_vector(user_id, positives, memo)
            if vector is None:
                return None
            return self._factors @ vector if folded else b.item_factors @ vector
        if not len(positives.items):
            return None
        items, summed = positives.summed()
        if b.kind == EASE:
            # Dense: only the history's rows take part.
            return summed @ b.similarity[items]
        return np.asarray(b.similarity.T @ _dense(items, summed, len(b.item_ids))).ravel()

    def _user_vector(
        self, user_id: str, positives: Positives, memo: dict[str, Any] | None = None
    ) -> tuple[np.ndarray | None, bool]:
        """A factor model's vector for the person, and whether it was folded in from their
        history (float64, against :attr:`_factors`) rather than their trained row (float32,
        against the bundle's ``item_factors``); (None, False) with neither."""
        if len(positives.items):
            if memo is not None and "vector" in memo:
                return memo["vector"], True
            vector = self._fold_in(*positives.summed())
            if memo is not None:
                memo["vector"] = vector
            return vector, True
        row = self.user_index.get(user_id)
        if row is None:
            return None, False
        return self.bundle.user_factors[row], False

    def _fold_in(self, items: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """ALS user solve (Hu, Koren & Volinsky 2008) for confidences 1 + alpha·weight:
        (YᵀY + Yᵢᵀ(Cᵢ − I)Yᵢ + λI) x = Yᵢᵀ Cᵢ 1."""
        y = self._factors[items]
        confidence = 1.0 + self.alpha * weight
        a = self._gram + (y.T * (confidence - 1.0)) @ y
        return np.linalg.solve(a, y.T @ confidence)

    def _item_scores(self, j: int) -> np.ndarray:
        if self.bundle.kind in FACTOR_KINDS:
            return self._unit_items @ self._unit_items[j]
        return _rows(self.bundle.similarity, np.array([j]))[0]

    # -- selection --

    def _top(
        self, scores: np.ndarray, excluded: set[str], catalogue: Catalogue, options: RankingOptions
    ) -> np.ndarray:
        scores = np.array(scores, dtype=np.float32, copy=True)
        blocked = [self.item_index[i] for i in excluded if i in self.item_index]
        scores[blocked] = -np.inf
        allowed = catalogue.mask(self.bundle.item_ids, options.item_filter)
        if allowed is not None:
            scores[~allowed] = -np.inf
        return top_k(scores, options.limit)

    def _history_indices(self, positives: Positives) -> tuple[np.ndarray, np.ndarray]:
        """Distinct items among the newest :data:`EXPLAIN_HISTORY` positive events, with
        the rank of each one's newest event, newest first."""
        items = positives.items[:EXPLAIN_HISTORY]
        _, first = np.unique(items, return_index=True)
        first.sort()
        return items[first], positives.ranks[first]

    def _reasons(
        self,
        top: np.ndarray,
        history: tuple[np.ndarray, np.ndarray],
        after: Following | None = None,
    ) -> list[str]:
        """Why each of ``top``: ``after: <item>`` where the transition part won (``after``),
        else the history item closest to it (``recent:`` when among the newest
        ``recent_events``, else ``similar:``), never the item itself; ``personalised``
        when nothing in the history is close."""
        items, ranks = history
        if not len(items) or not len(top):
            return ["personalised"] * len(top)
        if after is not None:
            out = self._reasons(top, history)
            source = after.sources(top)
            return [
                f"after: {self.bundle.item_ids[source[n]]}" if source[n] >= 0 else reason
                for n, reason in enumerate(out)
            ]
        if self.bundle.kind in FACTOR_KINDS:
            closeness = self._unit_items[top] @ self._unit_items[items].T
        else:
            closeness = _rows(self.bundle.similarity, items)[:, top].T
        closeness = np.where(top[:, None] == items[None, :], -np.inf, closeness)
        best = np.argmax(closeness, axis=1)
        out = []
        for row, k in enumerate(best.tolist()):
            if not closeness[row, k] > 0:
                out.append("personalised")
                continue
            label = "recent" if ranks[k] < self.params.recent_events else "similar"
            out.append(f"{label}: {self.bundle.item_ids[items[k]]}")
        return out

    def _fallback(
        self,
        view: ServingView,
        ranked: list[Recommendation],
        limit: int,
        excluded: set[str],
        catalogue: Catalogue,
        item_filter: ItemFilter,
    ) -> list[Recommendation]:
        """Trending, then popular items to bring ``ranked`` up to ``limit``."""
        return self._fill(
            [
                (view.trending, "trending"),
                (view.popular, "popular"),
                (self._own_popular, "popular"),
            ],
            limit - len(ranked),
            excluded | {r.item_id for r in ranked},
            catalogue,
            item_filter,
        )

    @staticmethod
    def _fill(
        sources: Iterable[tuple[Iterable[tuple[str, float]], str]],
        count: int,
        excluded: set[str],
        catalogue: Catalogue,
        item_filter: ItemFilter,
    ) -> list[Recommendation]:
        out: list[Recommendation] = []
        taken = set(excluded)
        for items, reason in sources:
            for item, score in items:
                if len(out) == count:
                    return out
                if item not in taken and item_filter.allows(item, catalogue.meta(item)):
                    out.append(Recommendation(item, score, reason))
                    taken.add(item)
        return out


#: The sentence for each reason kind; ``{}`` is the named item's title (or its id).
EXPLANATIONS: Mapping[str, str] = {
    "recent": "Because you recently showed interest in {}",
    "similar": "Similar to {}",
    "after": "Often chosen next after {}",
    "bought together": "Often bought with {}",
    "personalised": "Picked for your taste",
    "trending": "Trending now",
    "popular": "Popular lately",
    "unranked": "New to our picks",
}


def explain(reason: str, catalogue: Catalogue) -> str:
    """``reason`` (``after: <item_id>``, ``popular``, …) as a sentence for people, naming
    the item by its catalogue title where it has one."""
    kind, _, item = reason.partition(": ")
    sentence = EXPLANATIONS.get(kind)
    if sentence is None:
        return reason
    meta = catalogue.meta(item) if item else None
    title = meta.get("title") if meta else None
    return sentence.format(f"“{title or item}”")


def _combine(
    user: np.ndarray | None, context: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Blend the person's scores with closeness to the context item, each scaled to its
    own maximum; also says where the context part dominates (for the reason)."""
    if context is None:
        return user, None  # type: ignore[return-value]
    ctx = context / max(float(np.max(np.abs(context))), 1e-12)
    if user is None:
        return ctx, np.ones(len(ctx), dtype=bool)
    own = user / max(float(np.max(np.abs(user))), 1e-12)
    return own + ctx, ctx > own


def _dense(items: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[items] = weight
    return out


def _rows(similarity: sp.csr_matrix | np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` of an item_knn (sparse) or EASE (dense) similarity, as a dense array."""
    if sp.issparse(similarity):
        return similarity[rows].toarray()
    return similarity[rows]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best finite scores, best first."""
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
