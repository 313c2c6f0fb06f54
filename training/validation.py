"""``--model auto``: the model kind, and EASE's λ, chosen per run by validation on a time
split carved out of the training part, never on the final holdout.

The validation split is the final holdout's own rule (:func:`evaluation.time_split`)
applied once more, to the training part only: each held-in person's latest
``test_fraction`` of their training events is scored, everything before it is fitted on.
Every candidate is fitted on that and ranked by NDCG@k; the best is then fitted on the
whole training part and meets popularity on the final holdout, as a fixed ``--model``
would.

Why not choose on the final holdout: it decides registration and promotion, so choosing
there too would flatter the winner (EASE's default λ was picked that way on the bench and
reads better there than it will on new data).

Why these candidates: ALS (the default) and item-kNN with the run's settings, and EASE
at λ 100 / 300 / 1000 (a factor of about 3 apart around the bench's best) where the
catalogue is small enough for it. BPR is left out: it trailed ALS on the bench (NDCG@10
0.171 vs 0.195) and on issue 12's split (0.160 vs 0.193).

What it does not see: candidates are scored in-process like the holdout, without the
recency-weighted history serving adds. On the bench (ml-100k) validation preferred
item-kNN (0.180 vs EASE λ=300 0.166), which then served NDCG@10 0.193 against served
EASE's 0.232.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import pandas as pd

from service.bundle import EASE
from training import ease, evaluation
from training.models import ModelParams, fit

log = logging.getLogger(__name__)

#: What ``--model`` names to choose by validation.
AUTO = "auto"
#: EASE's λ candidates.
EASE_LAMBDAS = (100.0, 300.0, 1000.0)


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
class Choice:
    """Every candidate's validation NDCG@k, in candidate order, and the best of them."""

    scores: list[tuple[ModelParams, float]]
    people: int
    """People in the validation split with something new to find."""
    events: int
    """Validation events (the latest part of the training part)."""
    k: int

    @property
    def ranked(self) -> list[tuple[ModelParams, float]]:
        """Best first; a tie keeps candidate order, so the earlier (ALS first) wins."""
        return sorted(self.scores, key=lambda pair: -pair[1])

    @property
    def best(self) -> ModelParams:
        return self.ranked[0][0]

    @property
    def text(self) -> str:
        """``validation: ease λ=300 0.2100 > als 0.1900 > …`` (tagged and printed)."""
        ranked = self.ranked
        text = f"validation: {label(ranked[0][0])} {ranked[0][1]:.4f}"
        for (_, before), (params, score) in zip(ranked, ranked[1:], strict=False):
            text += f" {'=' if score == before else '>'} {label(params)} {score:.4f}"
        return text

    def flat(self) -> dict[str, float]:
        """``validation_ndcg_at_<k>_<candidate>`` → value, as logged to MLflow."""
        return {f"validation_ndcg_at_{self.k}_{metric_key(p)}": score for p, score in self.scores}

    def table(self) -> str:
        lines = [
            f"validation (latest part of the training part): {self.events} events, "
            f"{self.people} people, k={self.k}"
        ]
        lines += [f"  {label(p):<14}ndcg@{self.k} {score:.4f}" for p, score in self.scores]
        return "\n".join(lines)


def choose(
    training_part: pd.DataFrame,
    options: list[ModelParams],
    weights: Mapping[str, float],
    *,
    half_life_days: float | None = None,
    test_fraction: float = 0.2,
    min_user_events: int = 5,
    k: int = 10,
) -> Choice:
    """Score each of ``options`` on a time split of ``training_part`` (give it the
    training part of the final holdout, and nothing of the holdout itself)."""
    prepared = evaluation.prepare(
        training_part,
        weights,
        half_life_days=half_life_days,
        test_fraction=test_fraction,
        min_user_events=min_user_events,
    )
    matrix, relevant = prepared.train.matrix, prepared.relevant
    scores = []
    for params in options:
        model = fit(params, matrix)
        metrics = evaluation.evaluate(
            evaluation.model_ranker(model, matrix), relevant, matrix.shape[1], k
        )
        log.info("validation: %s ndcg@%d %.4f", label(params), k, metrics["ndcg"])
        scores.append((params, metrics["ndcg"]))
    return Choice(scores, len(relevant), len(prepared.split.test), k)
