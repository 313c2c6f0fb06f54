"""Score a send-time/channel model and every baseline on a :class:`Regime`, side by side.

:func:`evaluate` fits the model under test on the regime's training frame (through a
factory, so any model with ``plan`` and ``channels`` can be measured; the default is the
served one, :meth:`training.engagement.SendTimeModel.fit`), asks it every query, runs the
baselines of :mod:`training.engagement_baselines` on the same frame and queries, and
returns a :class:`RegimeReport`.

Scores: for planted queries, the share of queries whose predicted local hour is within
±1 h (circular) of a target hour; for held-out activity queries the share of held-out
hours within ±1 h of the person's predicted hour, over all held-out hours. A random hour
scores 3/24 = 0.125 on either. Channel: the share of people with a planted channel whose
top channel is it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np
import pandas as pd

from training.engagement import SendTimeModel
from training.engagement_baselines import (
    CHANNEL_BASELINES,
    HOUR_BASELINES,
    channel_baselines,
    hour_baselines,
)
from training.engagement_regimes import Query, Regime

#: Name of the model under test in reports.
MODEL = "model"
#: The same model answered through the real train job and gRPC server (a second row of
#: the model, never a rival baseline).
SERVED = "served (gRPC)"
#: Column of channel accuracy.
CHANNEL_METRIC = "channel_top1"
#: Chance that a random hour is within ±1 h of a given one.
RANDOM_HIT = 3 / 24


class SendTimePredictor(Protocol):
    """What :func:`evaluate` asks of a model (``SendTimeModel`` answers this)."""

    def plan(
        self,
        user_id: str,
        channel: str,
        not_before: datetime,
        window_hours: int = 24,
        timezone: str = "",
        quiet: tuple[int, int] | None = None,
    ) -> object:
        """A send plan whose ``slots[0].local_hour`` is the best local hour (no slots:
        no answer)."""
        ...

    def channels(self, user_id: str) -> list[str]:
        """Message channels, best first."""
        ...


#: Builds a fitted model from a training frame.
ModelFactory = Callable[[pd.DataFrame], SendTimePredictor]


def served_model(frame: pd.DataFrame) -> SendTimePredictor:
    """The served send-time model fitted on ``frame`` (default zone UTC)."""
    return SendTimeModel.fit(frame, default_timezone="UTC")


def hour_metric(label: str) -> str:
    """Metric name of a query label: ``hit_1h_`` plus the label in snake case."""
    return "hit_1h_" + "_".join(label.lower().split())


@dataclass
class RegimeReport:
    """Per-method scores on one regime."""

    regime: str
    description: str
    metrics: dict[str, dict[str, float]]
    """Method -> metric -> value. Hour baselines have only hour metrics, channel baselines
    only ``channel_top1``; the model has both."""
    counts: dict[str, int]
    """Metric -> how many things it averages (queries, held-out hours, or people)."""
    people: int
    held_out: bool = False
    """Whether the hour metrics average held-out activity hours (else planted queries)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """``fit`` and ``answer`` time of the model, ``baselines`` time of all baselines."""

    @property
    def columns(self) -> list[str]:
        """Metric columns in table order: hour metrics by first query, then channel."""
        return list(self.counts)

    def table(self) -> str:
        """A printable table: methods as rows, metric columns, their counts in the last row."""
        kind = "held-out hours" if self.held_out else "queries"
        head = [
            f"== {self.regime}: {self.description}",
            f"   {self.people} people; random hour scores {RANDOM_HIT:.3f}; model fit "
            f"{self.seconds.get('fit', 0):.1f} s, answers {self.seconds.get('answer', 0):.1f} s",
        ]
        columns = self.columns
        width = max(16, *(len(c) + 2 for c in columns))
        lines = [*head, f"{'method':<24}" + "".join(f"{c:>{width}}" for c in columns)]
        for method, row in self.metrics.items():
            cells = "".join(
                f"{row[c]:>{width}.3f}" if c in row else f"{'-':>{width}}" for c in columns
            )
            lines.append(f"{method:<24}{cells}")
        counts = "".join(
            f"{self.counts[c]:>{width}d}" if c in self.counts else f"{'':>{width}}" for c in columns
        )
        lines.append(f"{'n (' + kind + ' / people)':<24}{counts}")
        return "\n".join(lines)

    def flat(self) -> dict[str, float]:
        """``regime_<name>_<method>_<metric>`` -> value (MLflow metric names), plus
        ``regime_<name>_people``."""
        out = {
            f"regime_{self.regime}_{_metric_name(method)}_{metric}": float(value)
            for method, row in self.metrics.items()
            for metric, value in row.items()
        }
        out[f"regime_{self.regime}_people"] = float(self.people)
        return out

    def versus_best(self) -> dict[str, tuple[str, float, float]]:
        """Metric -> (best baseline, its value, model minus it), for the model's metrics."""
        out = {}
        for metric, value in self.metrics.get(MODEL, {}).items():
            rivals = {
                m: row[metric]
                for m, row in self.metrics.items()
                if m not in (MODEL, SERVED) and metric in row
            }
            if rivals:
                best = max(rivals, key=lambda m: rivals[m])
                out[metric] = (best, rivals[best], value - rivals[best])
        return out


def _metric_name(method: str) -> str:
    """``method`` as MLflow takes it in a metric name (``served (gRPC)`` -> ``served_grpc``)."""
    return re.sub(r"[^0-9a-z_]+", "_", method.lower()).strip("_")


def evaluate(regime: Regime, model: ModelFactory = served_model) -> RegimeReport:
    """Fit ``model`` on ``regime.frame``, score it and every baseline on the regime's
    queries and planted channels.

    Quiet hours are ignored (``quiet=None``). A plan without slots counts as a miss.
    """
    queries = regime.queries
    started = time.perf_counter()
    fitted = model(regime.frame)
    fit_s = time.perf_counter() - started

    started = time.perf_counter()
    hours = {MODEL: np.array([_model_hour(fitted, q) for q in queries], dtype=np.int64)}
    users = sorted(regime.channel_truth)
    picks = {MODEL: [_top_channel(fitted, u) for u in users]}
    answer_s = time.perf_counter() - started

    started = time.perf_counter()
    hours.update(hour_baselines(regime.frame, queries))
    if users:
        picks.update(channel_baselines(regime.frame, users))
    baselines_s = time.perf_counter() - started

    metrics: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for method, predicted in hours.items():
        scores, counts = hour_scores(queries, predicted)
        metrics.setdefault(method, {}).update(scores)
    if users:
        truth = [regime.channel_truth[u] for u in users]
        for method, chosen in picks.items():
            right = np.mean([a == b for a, b in zip(chosen, truth, strict=True)])
            metrics.setdefault(method, {})[CHANNEL_METRIC] = float(right)
        counts[CHANNEL_METRIC] = len(users)
    order = [MODEL, *HOUR_BASELINES, *CHANNEL_BASELINES]
    return RegimeReport(
        regime=regime.name,
        description=regime.description,
        metrics={m: metrics[m] for m in order if m in metrics},
        counts=counts,
        people=len({q.user_id for q in queries} | set(users)),
        held_out=any(q.held_out for q in queries),
        seconds={"fit": fit_s, "answer": answer_s, "baselines": baselines_s},
    )


def _model_hour(model: SendTimePredictor, query: Query) -> int:
    plan = model.plan(
        query.user_id,
        query.channel,
        query.not_before,
        query.window_hours,
        query.timezone,
        quiet=None,
    )
    slots = getattr(plan, "slots", [])
    return int(slots[0].local_hour) if slots else -1


def _top_channel(model: SendTimePredictor, user_id: str) -> str:
    ranked = model.channels(user_id)
    return ranked[0] if ranked else ""


def hour_scores(
    queries: list[Query], predicted: np.ndarray
) -> tuple[dict[str, float], dict[str, int]]:
    """Metric -> score and metric -> count, by query label (labels in first-seen order)."""
    hits: dict[str, float] = {}
    totals: dict[str, int] = {}
    for query, hour in zip(queries, predicted, strict=True):
        metric = hour_metric(query.label)
        targets = np.asarray(query.target_hours, dtype=np.int64)
        distance = np.abs((targets - hour + 12) % 24 - 12)
        close = (distance <= 1) & (hour >= 0)
        if query.held_out:
            hits[metric] = hits.get(metric, 0.0) + float(close.sum())
            totals[metric] = totals.get(metric, 0) + len(targets)
        else:
            hits[metric] = hits.get(metric, 0.0) + float(close.any())
            totals[metric] = totals.get(metric, 0) + 1
    return {m: hits[m] / totals[m] for m in hits if totals[m]}, totals
