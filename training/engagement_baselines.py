"""Simple per-person send-time and channel baselines, to score a model against.

Every baseline learns from a TRAINING frame alone (the loader's shape, see
:mod:`training.event_log`) and answers the same :class:`~training.engagement_regimes.Query`
list a model does. Automated events (privacy-proxy opens, link scanners) are ignored by
all of them. Hours are local in the query's ``timezone`` (else the person's latest known
zone, else UTC); a baseline without data for a person falls back to the global best hour
(or channel).

Hour baselines (:data:`HOUR_BASELINES`, :func:`hour_baselines`):

``global_best_hour``
    everybody's most engaged local hour (activity and human opens and clicks, one count
    per person and clock hour).
``active_hour_histogram``
    the person's own most frequent activity hour (distinct clock hours).
``own_hours_1h``
    the plain rule of a person's own habit: the hour with the most of their past active
    hours (activity, human opens and clicks; distinct clock hours) within ±1 h of it, all
    history weighted alike, no population pull (:func:`own_hours`).
``own_hours_1h_day_type``
    the same on the query's kind of day (weekdays or weekends), else all days.
``last_active_hour``
    the hour of the person's latest activity, open or click.
``open_hour_histogram``
    the person's most frequent hour of human opens and clicks.
``opens_per_delivery``
    per local delivery hour, the share of the person's deliveries that got an open or
    click (credited to the latest delivery on the same channel within 48 h before it),
    both counts pooled with the neighbouring hours (weight 0.5) and shrunk to the
    person's overall rate with one pseudo-delivery; the argmax.
``reference_heuristic``
    ``opens_per_delivery`` recency-weighted (half-life 30 days) and shrunk with two
    pseudo-deliveries, times the square root of the person's relative activity by hour;
    on queries for a kind of day, counts from that kind of day (weekdays, weekends)
    with a quarter of the all-days counts as a prior.

Channel baselines (:data:`CHANNEL_BASELINES`, :func:`channel_baselines`):
``most_opens_channel`` (the person's channel with most human engagements: opens, or
clicks where the channel records more clicks than opens, as SMS does; ties and people
without any go to the global one) and ``global_best_channel`` (the channel with most
human engagements over everybody).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from service.events import MESSAGE_CHANNELS
from service.send_time import ATTRIBUTION_WINDOW_SECONDS, SITE_ACTIVITY_EVENT_TYPES
from training.engagement_regimes import Query

HOURS = 24
_HOUR = 3_600
_DAY = 86_400
#: Recency half-life of ``reference_heuristic``.
HALF_LIFE_DAYS = 30.0


@dataclass
class TrainingLog:
    """A training frame prepared once for every baseline: integer codes, local times."""

    users: pd.Index
    """User ids; ``user`` indexes it."""
    user: np.ndarray
    ts: np.ndarray
    hour: np.ndarray
    """Local hour of each row in its person's zone (see the module docstring)."""
    weekend: np.ndarray
    """Whether each row falls on a local Saturday or Sunday."""
    channel: np.ndarray
    """Position in ``MESSAGE_CHANNELS``, -1 for others and none."""
    delivered: np.ndarray
    opened: np.ndarray
    """Human ``message_open`` on a message channel."""
    clicked: np.ndarray
    """Human ``message_click`` on a message channel."""
    active: np.ndarray
    """Human activity (``SITE_ACTIVITY_EVENT_TYPES``), the first row per person and clock hour."""
    end: int
    """Latest timestamp of the frame."""
    credited: np.ndarray
    """Deliveries that got a human open or click (:func:`credited_deliveries`)."""

    @property
    def engaged(self) -> np.ndarray:
        """Human opens and clicks."""
        return self.opened | self.clicked

    def per_person(self, mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """(people, 24) sums of ``weights`` (default 1) of the rows in ``mask`` by hour."""
        out = np.zeros((len(self.users), HOURS))
        w = 1.0 if weights is None else weights[mask]
        np.add.at(out, (self.user[mask], self.hour[mask]), w)
        return out


def prepare(frame: pd.DataFrame, queries: Iterable[Query] = ()) -> TrainingLog:
    """The frame as a :class:`TrainingLog`, hours in each person's first query's zone
    (else their latest zone in the frame, else UTC)."""
    frame = frame.reset_index(drop=True)
    codes, users = pd.factorize(frame["user_id"].astype(str), sort=True)
    ts = frame["timestamp"].to_numpy(dtype=np.int64)
    kind = frame["event_type"].astype(str).to_numpy()
    automated = (
        frame["automated"].fillna(False).to_numpy(dtype=bool)
        if "automated" in frame.columns
        else np.zeros(len(frame), dtype=bool)
    )
    channel_names = frame["channel"].fillna("").astype(str) if "channel" in frame else None
    channel = np.full(len(frame), -1, dtype=np.int64)
    if channel_names is not None:
        lookup = {c: i for i, c in enumerate(MESSAGE_CHANNELS)}
        channel = channel_names.map(lookup).fillna(-1).to_numpy(dtype=np.int64)
    on_channel = channel >= 0
    human = ~automated

    zone = _person_zones(frame, users, queries)
    hour, weekend = _local_times(ts, zone[codes])
    active = np.isin(kind, SITE_ACTIVITY_EVENT_TYPES) & human
    # A burst of events in one clock hour is one sign of being around, not fifty.
    repeat = pd.DataFrame({"u": codes[active], "h": ts[active] // _HOUR}).duplicated().to_numpy()
    rows = np.flatnonzero(active)
    active[rows[repeat]] = False
    log = TrainingLog(
        users=users,
        user=codes,
        ts=ts,
        hour=hour,
        weekend=weekend,
        channel=channel,
        delivered=(kind == "message_delivered") & on_channel,
        opened=(kind == "message_open") & on_channel & human,
        clicked=(kind == "message_click") & on_channel & human,
        active=active,
        end=int(ts.max()) if len(ts) else 0,
        credited=np.zeros(len(frame), dtype=bool),
    )
    log.credited = credited_deliveries(log)
    return log


def _person_zones(frame: pd.DataFrame, users: pd.Index, queries: Iterable[Query]) -> np.ndarray:
    zone = pd.Series("UTC", index=users, dtype=object)
    if "timezone" in frame.columns:
        zoned = frame[frame["timezone"].fillna("").astype(str) != ""]
        latest = zoned.sort_values("timestamp", kind="stable").groupby("user_id")["timezone"]
        known = latest.last()
        known.index = known.index.astype(str)
        zone.loc[known.index.intersection(users)] = known
    asked: dict[str, str] = {}
    for query in queries:
        if query.timezone:
            asked.setdefault(query.user_id, query.timezone)
    for user, name in asked.items():
        if user in zone.index:
            zone.loc[user] = name
    return zone.to_numpy()


def _local_times(ts: np.ndarray, zones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local hour and weekend flag of each epoch second in its IANA zone (one
    ``tz_convert`` per zone)."""
    hours = np.zeros(len(ts), dtype=np.int64)
    weekend = np.zeros(len(ts), dtype=bool)
    for name in pd.unique(zones):
        rows = np.flatnonzero(zones == name)
        local = pd.DatetimeIndex(pd.to_datetime(ts[rows], unit="s", utc=True)).tz_convert(str(name))
        hours[rows] = local.hour
        weekend[rows] = local.day_of_week >= 5
    return hours, weekend


def _pool(counts: np.ndarray) -> np.ndarray:
    """Counts plus half of each circular neighbour hour (last axis)."""
    return counts + 0.5 * (np.roll(counts, 1, axis=-1) + np.roll(counts, -1, axis=-1))


def _argmax_or(scores: np.ndarray, has: np.ndarray, fallback: int) -> np.ndarray:
    return np.where(has, np.argmax(scores, axis=-1), fallback)


def _rows(log: TrainingLog, queries: list[Query]) -> np.ndarray:
    """Position of each query's person in ``log.users``, -1 when not in the log."""
    at = log.users.get_indexer([q.user_id for q in queries])
    return np.asarray(at, dtype=np.int64)


def _answer(per_person: np.ndarray, rows: np.ndarray, fallback: int) -> np.ndarray:
    return np.where(rows >= 0, per_person[np.maximum(rows, 0)], fallback)


def _global_hour(log: TrainingLog) -> int:
    mask = log.active | log.engaged
    counts = np.bincount(log.hour[mask], minlength=HOURS)
    return int(np.argmax(counts)) if counts.any() else 12


def global_best_hour(log: TrainingLog, queries: list[Query]) -> np.ndarray:
    """Everybody's most engaged hour, the same for every query."""
    return np.full(len(queries), _global_hour(log), dtype=np.int64)


def active_hour_histogram(log: TrainingLog, queries: list[Query]) -> np.ndarray:
    """The person's most frequent activity hour (distinct clock hours; ties: the earliest)."""
    counts = log.per_person(log.active)
    best = _argmax_or(counts, counts.sum(axis=1) > 0, _global_hour(log))
    return _answer(best, _rows(log, queries), _global_hour(log))


@dataclass(frozen=True)
class PlainRule:
    """One plain per-person rule of the family :func:`own_hours` answers."""

    within: int = 1
    """Hours each side that count with an hour (0: the histogram's own mode)."""
    day_type: bool = False
    """Count only the query's kind of day (weekdays or weekends), else all days."""
    half_life_days: float | None = None
    """Recency half-life from the person's latest row; None: all history alike."""

    @property
    def name(self) -> str:
        parts = [f"±{self.within}h"]
        parts.append("weekday vs weekend" if self.day_type else "all days")
        parts.append(
            "all history" if self.half_life_days is None else f"half-life {self.half_life_days:g} d"
        )
        return "own hours " + ", ".join(parts)


#: The family searched for the best plain rule: widths, day type or not, memories.
PLAIN_RULES = tuple(
    PlainRule(within, day_type, half_life)
    for within in (0, 1, 2)
    for day_type in (False, True)
    for half_life in (None, 30.0, 90.0, 365.0)
)


def own_hours(log: TrainingLog, queries: list[Query], rule: PlainRule = PlainRule()) -> np.ndarray:
    """The person's own habit as a plain rule: the local hour with the most of their past
    active hours (activity, human opens and clicks; one per clock hour) within
    ``rule.within`` hours of it (circular; ties: the hour with more of its own, then the
    earliest, so a lone peak answers itself, not its neighbour), on the query's kind of day
    when ``rule.day_type`` and they have any there, else on all days; the global best hour
    for people without any."""
    seen = log.active | log.engaged
    weights = np.ones(len(log.ts))
    if rule.half_life_days is not None:
        latest = np.zeros(len(log.users), dtype=np.int64)
        np.maximum.at(latest, log.user[seen], log.ts[seen])
        weights = np.exp2(-(latest[log.user] - log.ts) / (rule.half_life_days * _DAY))

    def best_of(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = log.per_person(seen & mask, weights)
        near = sum(np.roll(counts, shift, axis=1) for shift in range(-rule.within, rule.within + 1))
        # An hour's own count is at most its window's: a millionth of it breaks ties only.
        return np.argmax(near + 1e-6 * counts, axis=1), counts.sum(axis=1) > 0

    fallback = _global_hour(log)
    everywhere, has = best_of(np.ones(len(log.ts), dtype=bool))
    best = {"": np.where(has, everywhere, fallback)}
    if rule.day_type:
        for kind, mask in (("weekday", ~log.weekend), ("weekend", log.weekend)):
            mine, has_mine = best_of(mask)
            best[kind] = np.where(has_mine, mine, best[""])
    rows = _rows(log, queries)
    out = np.empty(len(queries), dtype=np.int64)
    for k, query in enumerate(queries):
        hours = best.get(query.day_type, best[""])
        out[k] = hours[rows[k]] if rows[k] >= 0 else fallback
    return out


def own_hours_1h(log: TrainingLog, queries: list[Query]) -> np.ndarray:
    """:func:`own_hours`: ±1 h, all days, all history alike."""
    return own_hours(log, queries, PlainRule(1, False, None))


def own_hours_1h_day_type(log: TrainingLog, queries: list[Query]) -> np.ndarray:
    """:func:`own_hours`: ±1 h, the query's kind of day, all history alike."""
    return own_hours(log, queries, PlainRule(1, True, None))


def last_active_hour(log: TrainingLog, queries: list[Query]) -> np.ndarray:
    """The hour of the person's latest activity, open or click (on equal times the later
    row)."""
    rows = np.flatnonzero(log.active | log.engaged)
    rows = rows[np.lexsort((rows, log.ts[rows]))]
    last = np.full(len(log.users), _global_hour(log), dtype=np.int64)
    last[log.user[rows]] = log.hour[rows]  # later rows overwrite earlier ones
    return _answer(last, _rows(log, queries), _global_hour(log))


def open_hour_histogram(log: TrainingLog, queries: list[Query]) -> np.ndarray:
    """The person's most frequent hour of human opens and clicks."""
    counts = log.per_person(log.engaged)
    best = _argmax_or(counts, counts.sum(axis=1) > 0, _global_hour(log))
    return _answer(best, _rows(log, queries), _global_hour(log))


def credited_deliveries(log: TrainingLog) -> np.ndarray:
    """Mask of the deliveries that got a human open or click: each engagement goes to the
    latest delivery on its channel at most 48 h before it (same second included)."""
    sent_rows = np.flatnonzero(log.delivered)
    sent = pd.DataFrame(
        {"u": log.user[sent_rows], "c": log.channel[sent_rows], "ts": log.ts[sent_rows],
         "row": sent_rows}
    ).sort_values("ts", kind="stable")  # fmt: skip
    at = np.flatnonzero(log.engaged)
    answers = pd.DataFrame({"u": log.user[at], "c": log.channel[at], "ts": log.ts[at]}).sort_values(
        "ts", kind="stable"
    )
    credited = np.zeros(len(log.ts), dtype=bool)
    if not len(sent) or not len(answers):
        return credited
    linked = pd.merge_asof(
        answers,
        sent,
        on="ts",
        by=["u", "c"],
        tolerance=ATTRIBUTION_WINDOW_SECONDS,
        direction="backward",
    )
    rows = linked["row"].dropna().to_numpy(dtype=np.int64)
    credited[rows] = True
    return credited


def _rates(
    log: TrainingLog, weights: np.ndarray, mask: np.ndarray, pseudo: float
) -> tuple[np.ndarray, np.ndarray]:
    """(people, 24) pooled engaged-per-delivery rates shrunk to the person's overall rate,
    and whether the person has any delivery in ``mask``."""
    delivered = log.per_person(log.delivered & mask, weights)
    engaged = log.per_person(log.credited & mask, weights)
    total_d, total_e = delivered.sum(axis=1), engaged.sum(axis=1)
    overall = total_e.sum() / total_d.sum() if total_d.sum() > 0 else 0.0
    own = (total_e + pseudo * overall) / (total_d + pseudo)
    rates = (_pool(engaged) + pseudo * own[:, None]) / (_pool(delivered) + pseudo)
    return rates, total_e > 0


def opens_per_delivery(log: TrainingLog, queries: list[Query]) -> np.ndarray:
    """The person's local delivery hour with the highest pooled open-or-click rate."""
    everywhere = np.ones(len(log.ts), dtype=bool)
    rates, has = _rates(log, np.ones(len(log.ts)), everywhere, pseudo=1.0)
    best = _argmax_or(rates, has, _global_hour(log))
    return _answer(best, _rows(log, queries), _global_hour(log))


def reference_heuristic(log: TrainingLog, queries: list[Query]) -> np.ndarray:
    """Recency-weighted rates per delivery times the square root of relative activity,
    per kind of day where the query asks for one."""
    weights = np.exp2(-(log.end - log.ts) / (HALF_LIFE_DAYS * _DAY))
    everywhere = np.ones(len(log.ts), dtype=bool)
    days = {"": everywhere, "weekday": ~log.weekend, "weekend": log.weekend}
    scores: dict[str, np.ndarray] = {}
    for day, mask in days.items():
        rates, has_rates = _rates(log, weights, mask, pseudo=2.0)
        active = log.per_person(log.active & mask, weights)
        if day:
            # The kind of day alone is thin: all days, at a quarter weight, as a prior.
            all_rates, all_has = _rates(log, weights, everywhere, pseudo=2.0)
            rates = np.where(has_rates[:, None], (rates + 0.25 * all_rates) / 1.25, all_rates)
            has_rates |= all_has
            active = active + 0.25 * log.per_person(log.active, weights)
        # Without any credited delivery the rates say nothing: activity alone decides.
        rates = np.where(has_rates[:, None], rates, 1.0)
        pooled = _pool(active)
        has_active = pooled.sum(axis=1) > 0
        awake = (pooled + 0.5) / (pooled.mean(axis=1, keepdims=True) + 0.5)
        score = np.where(has_active[:, None], rates * np.sqrt(awake), rates)
        scores[day] = _argmax_or(score, has_rates | has_active, _global_hour(log))
    rows = _rows(log, queries)
    out = np.empty(len(queries), dtype=np.int64)
    for k, query in enumerate(queries):
        best = scores.get(query.day_type, scores[""])
        out[k] = best[rows[k]] if rows[k] >= 0 else _global_hour(log)
    return out


#: Hour baselines by name, in table order: (log, queries) -> local hour per query.
HOUR_BASELINES: dict[str, Callable[[TrainingLog, list[Query]], np.ndarray]] = {
    "global_best_hour": global_best_hour,
    "active_hour_histogram": active_hour_histogram,
    "own_hours_1h": own_hours_1h,
    "own_hours_1h_day_type": own_hours_1h_day_type,
    "last_active_hour": last_active_hour,
    "open_hour_histogram": open_hour_histogram,
    "opens_per_delivery": opens_per_delivery,
    "reference_heuristic": reference_heuristic,
}


def hour_baselines(frame: pd.DataFrame, queries: list[Query]) -> dict[str, np.ndarray]:
    """Every hour baseline's local hour per query (int64 arrays in query order)."""
    log = prepare(frame, queries)
    return {name: method(log, queries) for name, method in HOUR_BASELINES.items()}


# --- channels -----------------------------------------------------------------------------


def _engagements(log: TrainingLog) -> np.ndarray:
    """(people, channels) human engagements: opens, or clicks where there are more."""
    shape = (len(log.users), len(MESSAGE_CHANNELS))
    opens, clicks = np.zeros(shape), np.zeros(shape)
    np.add.at(opens, (log.user[log.opened], log.channel[log.opened]), 1.0)
    np.add.at(clicks, (log.user[log.clicked], log.channel[log.clicked]), 1.0)
    return np.maximum(opens, clicks)


def _global_channel(counts: np.ndarray) -> int:
    return int(np.argmax(counts.sum(axis=0)))


def global_best_channel(log: TrainingLog, users: list[str]) -> list[str]:
    """The channel with the most human engagements over everybody, for every person."""
    best = MESSAGE_CHANNELS[_global_channel(_engagements(log))]
    return [best] * len(users)


def most_opens_channel(log: TrainingLog, users: list[str]) -> list[str]:
    """The person's channel with the most human engagements; ties go to the global best
    channel when it is among them (else the first in ``MESSAGE_CHANNELS``), people without
    any to the global best channel."""
    counts = _engagements(log)
    overall = _global_channel(counts)
    top = counts.max(axis=1, keepdims=True)
    tied = (counts == top) & (top > 0)
    best = np.where(tied[:, overall], overall, np.argmax(tied, axis=1))
    best = np.where(top[:, 0] > 0, best, overall)
    at = log.users.get_indexer(users)
    return [MESSAGE_CHANNELS[best[i]] if i >= 0 else MESSAGE_CHANNELS[overall] for i in at]


#: Channel baselines by name, in table order: (log, user ids) -> channel per person.
CHANNEL_BASELINES: dict[str, Callable[[TrainingLog, list[str]], list[str]]] = {
    "most_opens_channel": most_opens_channel,
    "global_best_channel": global_best_channel,
}


def channel_baselines(frame: pd.DataFrame, users: list[str]) -> dict[str, list[str]]:
    """Every channel baseline's channel per person (in ``users`` order)."""
    log = prepare(frame)
    return {name: method(log, users) for name, method in CHANNEL_BASELINES.items()}
