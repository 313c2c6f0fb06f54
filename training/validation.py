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
   newest 1 or 3 distinct items as the query, and each weight of
   :data:`TRANSITION_WEIGHTS`; none at all stays a candidate (weight 0).

Why on the final holdout's training part: the holdout decides registration and promotion,
so choosing there too would flatter the winner.

Cost: one fit per model candidate on the validation part, then ~40 rankings of at most
:data:`MAX_PEOPLE` people (about 15 s on MovieLens 100K's 900 people on 2 cores).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from service.bundle import EASE, ModelBundle
from service.recommender import Blend, Recommender
from training import ease, evaluation
from training.models import ModelParams, fit, to_bundle
from training.transitions import fit_transitions

log = logging.getLogger(__name__)

#: What ``--model`` names to choose by validation.
AUTO = "auto"
#: EASE's λ candidates.
EASE_LAMBDAS = (100.0, 300.0, 1000.0, 3000.0)
#: Recency half-lives (events) tried; serving's old fixed value first.
HALF_LIVES = (10.0, 2.0, 3.0, 5.0, 20.0)
#: Transition windows (steps ahead counted) tried.
WINDOWS = (1, 3, 5, 10)
#: How many of the person's newest distinct items query the transitions.
TRANSITION_EVENTS = (1, 3, 5)
#: Weights of the transition part tried (beside 0: none).
TRANSITION_WEIGHTS = (0.1, 0.2, 0.35, 0.5, 1.0)
#: Validation ranks at most this many people (a fixed sample above it).
MAX_PEOPLE = 5000


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
class Choice:
    """Every trial, in the order tried, and the best of them."""

    trials: list[Trial]
    people: int
    """People ranked (with something new to find in the validation part)."""
    events: int
    """Validation events (the latest part of the training part)."""
    k: int

    @property
    def best(self) -> Trial:
        """The best trial; a tie keeps the earlier (simpler) one."""
        return max(self.trials, key=lambda t: t.ndcg)  # max keeps the first of equals

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
        return {
            "serving.recency_half_life_events": self.blend.recency_half_life_events,
            "serving.transition_weight": self.blend.transition_weight,
            "serving.transition_events": self.blend.transition_events,
            "serving.transition_window": self.window,
        }

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
        moves = sorted(self.stage("transitions"), key=lambda t: -t.ndcg)[:3]
        lines += [f"  {t.label:<50}ndcg@{self.k} {t.ndcg:.4f}" for t in moves]
        return "\n".join(lines)


def choose(
    training_part: pd.DataFrame,
    options: list[ModelParams],
    weights: Mapping[str, float],
    *,
    history_length: int = 200,
    half_life_days: float | None = None,
    test_fraction: float = 0.2,
    min_user_events: int = 5,
    k: int = 10,
    transitions: bool = True,
) -> Choice:
    """Run the three stages on a time split of ``training_part`` (give it the training
    part of the final holdout, and nothing of the holdout itself)."""
    prepared = evaluation.prepare(
        training_part,
        weights,
        half_life_days=half_life_days,
        test_fraction=test_fraction,
        min_user_events=min_user_events,
    )
    train, relevant = prepared.train, _sample(prepared.relevant)
    history = evaluation.histories(prepared.split.train, train.user_ids, history_length)
    n_items = train.matrix.shape[1]

    def score(bundle: ModelBundle, blend: Blend, transitions: sp.csr_matrix | None) -> float:
        served = replace(
            bundle,
            transitions=transitions,
            metadata={**bundle.metadata, "serving": blend.to_metadata()},
        )
        ranker = evaluation.served_ranker(Recommender(served), history, train.matrix)
        return evaluation.evaluate(ranker, relevant, n_items, k)["ndcg"]

    trials: list[Trial] = []
    bundles: dict[ModelParams, ModelBundle] = {}
    default = Blend()
    for params in options:
        model = fit(params, train.matrix)
        bundles[params] = to_bundle(
            model, params, train.user_ids, train.item_ids, {"weights": dict(weights)}
        )
        trials.append(Trial("model", params, default, 0, score(bundles[params], default, None)))
        log.info("validation: %s ndcg@%d %.4f", label(params), k, trials[-1].ndcg)
    best = max(trials, key=lambda t: t.ndcg)
    bundle = bundles[best.params]
    for half_life in HALF_LIVES[1:]:
        blend = Blend(recency_half_life_events=half_life)
        trials.append(Trial("recency", best.params, blend, 0, score(bundle, blend, None)))
    best = max(trials, key=lambda t: t.ndcg)
    if not transitions:
        return Choice(trials, len(relevant), len(prepared.split.test), k)
    log.info("validation: %s; trying %d transition blends", best.label, _blends())
    for window in WINDOWS:
        transitions = fit_transitions(prepared.split.train, weights, train.item_ids, window=window)
        for events in TRANSITION_EVENTS:
            for weight in TRANSITION_WEIGHTS:
                blend = replace(best.blend, transition_weight=weight, transition_events=events)
                ndcg = score(bundle, blend, transitions)
                trials.append(Trial("transitions", best.params, blend, window, ndcg))
    return Choice(trials, len(relevant), len(prepared.split.test), k)


def _blends() -> int:
    return len(WINDOWS) * len(TRANSITION_EVENTS) * len(TRANSITION_WEIGHTS)


def _sample(relevant: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """At most :data:`MAX_PEOPLE` of ``relevant``, the same ones every run."""
    if len(relevant) <= MAX_PEOPLE:
        return relevant
    rows = np.random.default_rng(0).choice(sorted(relevant), MAX_PEOPLE, replace=False)
    return {int(u): relevant[int(u)] for u in sorted(rows)}
