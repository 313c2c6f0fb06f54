"""What a run serves, chosen by validation on a time split carved out of the training
part, never on the final holdout: the model kind and EASE's λ (``--model auto``, the
default), the recency half-life, and how much the item transitions weigh.

The validation split is the final holdout's own rule (:func:`evaluation.time_split`)
applied once more, to the training part only: each held-in person's latest
``test_fraction`` of their training events is scored, everything before it is fitted on.
Every candidate is ranked **the way serving ranks** (``evaluation.served_ranker``: the
person's published history, recency-weighted, through ``Recommender``), so the choice is
made on what ``Recommend`` will answer, not on a model's own ``recommend``.

Three stages, each keeping the best of the one before (a tie keeps the earlier, simpler
candidate, so the defaults come first):

1. **model**: ALS (the default) and item-kNN with the run's settings, and EASE at λ 100 /
   300 / 1000 where the catalogue is small enough for it (``--model auto``); only the
   named kind otherwise. Scored with serving's default half-life and no transitions.
   BPR is left out: it trailed ALS on the bench (NDCG@10 0.171 vs 0.195) and on issue
   12's split (0.160 vs 0.193).
2. **recency**: the half-life of :data:`HALF_LIVES` (in events).
3. **transitions** (``training/transitions.py``): every window of :data:`WINDOWS`, the
   newest 1, 3 or 5 distinct items as the query, and each weight of
   :data:`TRANSITION_WEIGHTS`; none at all stays a candidate (weight 0).

Why on the final holdout's training part: the holdout decides registration and promotion,
so choosing there too would flatter the winner.

Cost: each model candidate is fitted once on the validation part, in a process of its
own (``training/guarded_fit.py``), within ``--budget-seconds``; then each ranking scores
blocks of people with one matrix product, as serving does per person
(``evaluation.served_ranker``), and the 60 transition blends re-rank the model's top
items instead of the catalogue. At most :data:`MAX_PEOPLE` people are ranked, fewer on
large catalogues (:func:`people_for`). MovieLens 100K: 11 s on 2 cores (34 s before
rankings were batched), the same choice and NDCG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from service.bundle import EASE, ModelBundle
from service.recommender import Blend, Recommender
from training import ease, evaluation
from training.guarded_fit import FitFailed, available_memory, fit_bundle
from training.models import Cost, ModelParams, predicted_cost
from training.transitions import fit_transitions

log = logging.getLogger(__name__)

#: What ``--model`` names to choose by validation.
AUTO = "auto"
#: EASE's λ candidates, in the order a time budget admits them: the default first.
EASE_LAMBDAS = (300.0, 1000.0, 100.0, 3000.0)
#: Recency half-lives (events) tried; serving's old fixed value first.
HALF_LIVES = (10.0, 2.0, 3.0, 5.0, 20.0)
#: Transition windows (steps ahead counted) tried.
WINDOWS = (1, 3, 5, 10)
#: How many of the person's newest distinct items query the transitions.
TRANSITION_EVENTS = (1, 3, 5)
#: Weights of the transition part tried (beside 0: none).
TRANSITION_WEIGHTS = (0.1, 0.2, 0.35, 0.5, 1.0)
#: Validation ranks at most this many people (a fixed sample above it)...
MAX_PEOPLE = 5000
#: ... and fewer on large catalogues, so one ranking scores at most this many items
#: (about 10 s on 2 cores) ...
MAX_SCORES = 1_000_000_000
#: ... but never fewer than this many: below it NDCG@10's noise swamps the differences.
MIN_PEOPLE = 1000


def candidates(base: ModelParams, n_items: int) -> list[ModelParams]:
    """ALS and item-kNN with ``base``'s settings, then EASE at each of
    :data:`EASE_LAMBDAS` when ``n_items`` is within :data:`ease.MAX_EASE_ITEMS`."""
    out = [replace(base, kind="als"), replace(base, kind="item_knn")]
    if n_items <= ease.MAX_EASE_ITEMS:
        out += [replace(base, kind=EASE, regularization=lam) for lam in EASE_LAMBDAS]
    return out


def label(params: ModelParams) -> str:
    """``als``, ``item_knn``, ``ease λ=300``: how a candidate is printed and tagged."""
    return f"{EASE} λ={params.regularization:g}" if params.kind == EASE else params.kind


def metric_key(params: ModelParams) -> str:
    """``als``, ``item_knn``, ``ease_lambda_300``: a candidate's MLflow metric suffix."""
    return f"{EASE}_lambda_{params.regularization:g}" if params.kind == EASE else params.kind


@dataclass(frozen=True)
class Trial:
    """One candidate of one stage and its validation NDCG@k."""

    stage: str
    """``model``, ``recency`` or ``transitions``."""
    params: ModelParams
    blend: Blend
    window: int
    """Transition window; 0: no transitions."""
    ndcg: float

    @property
    def label(self) -> str:
        if self.stage == "model":
            return label(self.params)
        if self.stage == "recency":
            return f"half-life {self.blend.recency_half_life_events:g} events"
        return describe_transitions(self.blend, self.window)


def describe_transitions(blend: Blend, window: int) -> str:
    if not window or not blend.transition_weight:
        return "no transitions"
    return (
        f"transitions: window {window}, newest {blend.transition_events}, "
        f"weight {blend.transition_weight:g}"
    )


@dataclass(frozen=True)
class Skipped:
    """A model candidate validation did not score, and why in words."""

    label: str
    reason: str
    """``left out: its fit should take …`` (the budget, memory) or ``skipped: its fit
    crashed (SIGSEGV)`` (:class:`training.guarded_fit.FitFailed`)."""


@dataclass(frozen=True)
class Choice:
    """Every trial, in the order tried, and the best of them."""

    trials: list[Trial]
    people: int
    """People ranked (with something new to find in the validation part)."""
    events: int
    """Validation events (the latest part of the training part)."""
    k: int
    skipped: list[Skipped] = field(default_factory=list)
    """Candidates left out by the budget or skipped when their fit failed."""

    @property
    def best(self) -> Trial:
        """The best trial; a tie keeps the earlier (simpler) one."""
        return max(self.trials, key=lambda t: t.ndcg)  # max keeps the first of equals

    def fallbacks(self) -> list[ModelParams]:
        """The chosen model's params, then every other fitted candidate's, best
        validation NDCG first (what the run falls back to when a fit fails later)."""
        models = sorted(self.stage("model"), key=lambda t: -t.ndcg)
        return [self.params] + [t.params for t in models if t.params != self.params]

    def stage(self, name: str) -> list[Trial]:
        return [t for t in self.trials if t.stage == name]

    @property
    def params(self) -> ModelParams:
        return self.best.params

    @property
    def blend(self) -> Blend:
        return self.best.blend

    @property
    def window(self) -> int:
        return self.best.window if self.best.blend.transition_weight > 0 else 0

    @property
    def alone(self) -> float:
        """The chosen model's best NDCG@k without transitions."""
        return max(t.ndcg for t in self.trials if t.stage != "transitions")

    @property
    def text(self) -> str:
        """``validation: ease λ=300, half-life 5 events, transitions: …: ndcg@10 0.2400
        (without transitions 0.2210)`` (tagged and printed)."""
        best = self.best
        return (
            f"validation: {label(best.params)}, half-life "
            f"{best.blend.recency_half_life_events:g} events, "
            f"{describe_transitions(best.blend, self.window)}: ndcg@{self.k} {best.ndcg:.4f} "
            f"(without transitions {self.alone:.4f})"
        )

    def flat(self) -> dict[str, float]:
        """Model and recency trials as ``validation_ndcg_at_<k>_<candidate>``, the chosen
        and the no-transition scores: what MLflow charts (the whole grid is a table)."""
        key = f"validation_ndcg_at_{self.k}"
        out = {f"{key}_{metric_key(t.params)}": t.ndcg for t in self.stage("model")}
        for t in self.stage("recency"):
            out[f"{key}_half_life_{t.blend.recency_half_life_events:g}"] = t.ndcg
        out[f"{key}_chosen"] = self.best.ndcg
        out[f"{key}_without_transitions"] = self.alone
        return out

    def params_logged(self) -> dict[str, Any]:
        """What was chosen, as MLflow params."""
        return serving_params(self.blend, self.window)

    def rows(self) -> dict[str, list[Any]]:
        """Every trial as columns (logged as an MLflow table)."""
        return {
            "stage": [t.stage for t in self.trials],
            "candidate": [t.label for t in self.trials],
            "model": [label(t.params) for t in self.trials],
            "half_life_events": [t.blend.recency_half_life_events for t in self.trials],
            "transition_window": [t.window for t in self.trials],
            "transition_events": [t.blend.transition_events for t in self.trials],
            "transition_weight": [t.blend.transition_weight for t in self.trials],
            f"ndcg_at_{self.k}": [t.ndcg for t in self.trials],
        }

    def table(self) -> str:
        lines = [
            f"validation (latest part of the training part, ranked as served): "
            f"{self.events} events, {self.people} people, k={self.k}"
        ]
        for name in ("model", "recency"):
            lines += [f"  {t.label:<24}ndcg@{self.k} {t.ndcg:.4f}" for t in self.stage(name)]
            if name == "model":
                lines += [f"  {s.label:<24}{s.reason}" for s in self.skipped]
        moves = sorted(self.stage("transitions"), key=lambda t: -t.ndcg)[:3]
        lines += [f"  {t.label:<50}ndcg@{self.k} {t.ndcg:.4f}" for t in moves]
        return "\n".join(lines)


def serving_params(blend: Blend, window: int) -> dict[str, Any]:
    """A served blend and transition window as MLflow params (``serving.*``)."""
    return {
        "serving.recency_half_life_events": blend.recency_half_life_events,
        "serving.transition_weight": blend.transition_weight,
        "serving.transition_events": blend.transition_events,
        "serving.transition_window": window,
    }


def choose(
    training_part: pd.DataFrame,
    options: list[ModelParams],
    weights: Mapping[str, float],
    *,
    budget_seconds: float | None = None,
    history_length: int = 200,
    half_life_days: float | None = None,
    test_fraction: float = 0.2,
    min_user_events: int = 5,
    k: int = 10,
    transitions: bool = True,
) -> Choice:
    """Run the three stages on a time split of ``training_part`` (give it the training
    part of the final holdout, and nothing of the holdout itself).

    Every candidate is fitted in a process of its own (:mod:`training.guarded_fit`): one
    that crashes, runs out of memory or passes the budget is skipped with its reason and
    the others go on. With ``budget_seconds``, every candidate after the first (the
    named kind, or ALS for ``auto``, which always runs) is left out up front when its
    predicted time (:func:`training.models.predicted_cost`) exceeds what is left of the
    budget, and stopped when its fit passes it.

    Raises
    ------
    FitFailed
        when no candidate could be fitted (the reason of the first).
    """
    started = time.perf_counter()
    prepared = evaluation.prepare(
        training_part,
        weights,
        half_life_days=half_life_days,
        test_fraction=test_fraction,
        min_user_events=min_user_events,
    )
    train = prepared.train
    n_items = train.matrix.shape[1]
    relevant = _sample(prepared.relevant, n_items)
    history = evaluation.histories(prepared.split.train, train.user_ids, history_length)

    def score(bundle: ModelBundle, blend: Blend) -> float:
        served = replace(bundle, metadata={**bundle.metadata, "serving": blend.to_metadata()})
        ranker = evaluation.served_ranker(Recommender(served), history, train.matrix)
        return evaluation.evaluate(ranker, relevant, n_items, k)["ndcg"]

    trials: list[Trial] = []
    skipped: list[Skipped] = []
    # Only the best so far is kept: four EASE bundles at 16k items would be 4 GB.
    bundle: ModelBundle | None = None
    default = Blend()
    for n, params in enumerate(options):
        name = label(params)
        limit = None
        if n and budget_seconds is not None:
            limit = budget_seconds - (time.perf_counter() - started)
            reason = _left_out(predicted_cost(params, train.matrix), limit)
            if reason:
                skipped.append(Skipped(name, f"left out: {reason}"))
                log.warning("validation: %s left out: %s", name, reason)
                continue
        try:
            fitted = fit_bundle(
                params,
                train.matrix,
                train.user_ids,
                train.item_ids,
                {"weights": dict(weights)},
                label=name,
                time_limit=limit,
            )
        except FitFailed as exc:
            if not trials and n == len(options) - 1 and not skipped:
                raise
            skipped.append(Skipped(name, f"skipped: its fit {exc.reason}"))
            log.warning("validation: %s skipped: its fit %s", name, exc.reason)
            continue
        trial = Trial("model", params, default, 0, score(fitted.bundle, default))
        if bundle is None or trial.ndcg > max(t.ndcg for t in trials):
            bundle = fitted.bundle  # strictly better: a tie keeps the earlier
        trials.append(trial)
        log.info(
            "validation: %s ndcg@%d %.4f (fit %.1f s)", name, k, trials[-1].ndcg, fitted.seconds
        )
    if bundle is None:
        raise FitFailed("validation", "; ".join(f"{s.label} {s.reason}" for s in skipped))
    best = max(trials, key=lambda t: t.ndcg)
    for half_life in HALF_LIVES[1:]:
        blend = Blend(recency_half_life_events=half_life)
        trials.append(Trial("recency", best.params, blend, 0, score(bundle, blend)))
    best = max(trials, key=lambda t: t.ndcg)
    done = Choice(trials, len(relevant), len(prepared.split.test), k, skipped)
    if not transitions:
        return done
    log.info("validation: %s; trying %d transition blends", best.label, _blends())
    followers = {
        window: fit_transitions(prepared.split.train, weights, train.item_ids, window=window)
        for window in WINDOWS
    }
    trials += _transition_trials(bundle, best, followers, history, train.matrix, relevant, k)
    log.info("validation took %.1f s", time.perf_counter() - started)
    return replace(done, trials=trials)


def _transition_trials(
    bundle: ModelBundle,
    best: Trial,
    followers: Mapping[int, sp.csr_matrix],
    history: Mapping[int, list],
    train_matrix: sp.csr_matrix,
    relevant: Mapping[int, np.ndarray],
    k: int,
) -> list[Trial]:
    """Every blend of the transition grid for the best model and half-life. The model
    scores each block of people once; each blend then only re-ranks its top items and
    the transition part's (``evaluation.ModelTop.blend``), so the grid costs about one
    ranking, not sixty."""
    recommender = Recommender(
        replace(bundle, metadata={**bundle.metadata, "serving": best.blend.to_metadata()})
    )
    users = np.fromiter(relevant, dtype=np.int64, count=len(relevant))
    grid = [
        (window, events, weight)
        for window in WINDOWS
        for events in TRANSITION_EVENTS
        for weight in TRANSITION_WEIGHTS
    ]
    ranked = {cell: np.full((len(users), k), -1, dtype=np.int64) for cell in grid}
    for block in evaluation.blocks(len(users), train_matrix.shape[1]):
        people = recommender.positives([history.get(int(u), []) for u in users[block]])
        seen = train_matrix[users[block]]
        own = evaluation.model_top(recommender.score_people(people), seen, k)
        for window, transitions in followers.items():
            for events in TRANSITION_EVENTS:
                part = recommender.transition_parts(people, transitions, events)
                for weight in TRANSITION_WEIGHTS:
                    ranked[window, events, weight][block] = own.blend(part, weight, k)
    wanted = [relevant[int(u)] for u in users]
    n_items = train_matrix.shape[1]
    out = []
    for (window, events, weight), top in ranked.items():
        ndcg = evaluation.ranking_metrics(top, wanted, n_items, k)["ndcg"]
        blend = replace(best.blend, transition_weight=weight, transition_events=events)
        out.append(Trial("transitions", best.params, blend, window, ndcg))
    return out


def _left_out(cost: Cost, seconds_left: float) -> str:
    """Why a candidate of ``cost`` cannot be fitted now, or "" when it can."""
    if cost.seconds > seconds_left:
        return (
            f"its fit should take about {cost.seconds:,.0f} s and "
            f"{max(seconds_left, 0):,.0f} s of the budget are left"
        )
    free = available_memory()
    if free is not None and cost.memory_bytes > 0.8 * free:
        return (
            f"its fit needs about {cost.memory_bytes / 2**30:,.1f} GiB and "
            f"{free / 2**30:,.1f} GiB are free"
        )
    return ""


def _blends() -> int:
    return len(WINDOWS) * len(TRANSITION_EVENTS) * len(TRANSITION_WEIGHTS)


def _sample(relevant: dict[int, np.ndarray], n_items: int) -> dict[int, np.ndarray]:
    """At most :func:`people_for` of ``relevant``, the same ones every run."""
    return evaluation.sample(relevant, people_for(n_items), "validation", n_items, MAX_SCORES)


def people_for(n_items: int) -> int:
    """How many people validation ranks over ``n_items``: :data:`MAX_PEOPLE`, fewer on
    catalogues where that many would pass :data:`MAX_SCORES` scores a ranking, never
    fewer than :data:`MIN_PEOPLE`."""
    return evaluation.people_for(n_items, MAX_SCORES, MIN_PEOPLE, MAX_PEOPLE)
