"""Send-time and channel engagement from an events log: profiles, priors, evaluation.

The model itself lives in :mod:`service.send_time` (the service imports it; see there why
rates per delivery, why activity, why automated opens are dropped). This module computes
the same profiles for everybody in a log at once, vectorised (local hours with one
``tz_convert`` per zone, opens matched to deliveries with one ``merge_asof``), learns the
:class:`~service.send_time.Priors`, and evaluates the model against baselines on a
time-based holdout.

``frame`` everywhere is the loader's frame (``training.event_log``): the columns of
``service.events.COLUMNS``, ``timestamp`` int64 epoch seconds. A frame without the
optional ``automated`` column is read as if it were all False.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
import pandas as pd

from service.events import EVENT_TYPES, MESSAGE_CHANNELS
from service.send_time import (
    ACTIVITY_EVENT_TYPES,
    ATTRIBUTION_WINDOW_SECONDS,
    DEFAULT_RATE,
    DEFAULT_STRENGTH,
    HOURS,
    LEARNT_MIX,
    OWN_HOURS,
    OWN_HOURS_BY_DAY_TYPE,
    WEEK_HOURS,
    WEEKEND,
    ChannelCounts,
    EngagementProfile,
    Priors,
    SendPlan,
    Tuning,
    activity_share,
    awake_from_share,
    channel_rate,
    channel_score,
    day_type_counts,
    day_type_rates,
    hour_probabilities,
    is_known_zone,
    plan_send,
    posterior_rates,
    prior_curve,
    rank_channels,
    served_profile,
    shrunk_share,
    smooth,
    smoothed_counts,
    week_tables,
)

log = logging.getLogger(__name__)

#: Metrics of :class:`SendTimeReport`, in table order.
METRICS = ("hit_rate_1h", "log_likelihood", "channel_accuracy")
#: Methods of :class:`SendTimeReport`, in table order.
METHODS = (
    "model",
    "open_histogram",
    "last_active_hour",
    "global_best_hour",
    "uniform",
    "global_best_channel",
)
#: Probability floor of the log likelihood.
LOG_FLOOR = 1e-6
#: Share of the global activity prior spread evenly over the day, so no hour is impossible.
_ACTIVITY_FLOOR = 0.01
#: The last-active-hour baseline: weight of the hour itself, of each neighbour, and floor.
_SPIKE = (0.5, 0.25, 0.01)
#: Deliveries a segment needs on a channel (and activity events) for priors of its own.
DEFAULT_MIN_SEGMENT = 200
_SECONDS_PER_DAY = 86_400


# --- counting ----------------------------------------------------------------------------


@dataclass
class _Rows:
    """Per-user count rows (24 hours of the day, or 168 of the week), only for the users
    that have any."""

    users: np.ndarray
    """Positions into ``_Counts.users``, ascending."""
    values: np.ndarray
    """(len(users), 24) or (len(users), 168)."""


@dataclass
class _Counts:
    """Every person's profile counts as arrays (what ``user_profiles`` is built from)."""

    users: pd.Index
    zone: np.ndarray
    """Latest known zone per user, "" when none."""
    channels: dict[str, tuple[_Rows, _Rows, _Rows]]
    """Channel -> (deliveries, opens, clicks), by local hour."""
    weekly: dict[str, tuple[_Rows, _Rows, _Rows]]
    """Channel -> (deliveries, opens, clicks), by local hour of the week."""
    activity: _Rows
    weekly_activity: _Rows
    """Activity by local hour of the week (same users as ``activity``)."""
    raw_deliveries: dict[str, np.ndarray]
    """Channel -> unweighted deliveries per user (for the segment threshold)."""
    raw_answered: dict[str, np.ndarray]
    """Channel -> unweighted engagements per user (opens, or clicks where more)."""
    raw_activity: np.ndarray
    """Unweighted activity events per user."""
    latest: np.ndarray
    """Per user the time of their latest row: where their weights are 1."""

    def profile(self, i: int) -> EngagementProfile:
        channels = {}
        for name, parts in self.channels.items():
            rows = [_row(part, i) for part in parts]
            if any(r is not None for r in rows):
                day = [np.zeros(HOURS) if r is None else r for r in rows]
                weekly = [_row(part, i) for part in self.weekly[name]]
                week = [np.zeros(WEEK_HOURS) if r is None else r for r in weekly]
                channels[name] = ChannelCounts(
                    *day,
                    *week,
                    sent=float(self.raw_deliveries[name][i]),
                    answered=float(self.raw_answered[name][i]),
                )
        activity = _row(self.activity, i)
        weekly_activity = _row(self.weekly_activity, i)
        return EngagementProfile(
            timezone=self.zone[i] or None,
            channels=channels,
            activity=np.zeros(HOURS) if activity is None else activity,
            as_of=float(self.latest[i]) if self.latest[i] >= 0 else None,
            weekly_activity=np.zeros(WEEK_HOURS) if weekly_activity is None else weekly_activity,
            active_hours=float(self.raw_activity[i]),
        )


def _aligned(parts: tuple[_Rows, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The union of the parts' users, and each part's rows on it (zeros where absent)."""
    users = parts[0].users
    for part in parts[1:]:
        users = np.union1d(users, part.users)
    aligned = []
    for part in parts:
        values = np.zeros((len(users), part.values.shape[1]))
        values[np.searchsorted(users, part.users)] = part.values
        aligned.append(values)
    return users, aligned


def _row(rows: _Rows, i: int) -> np.ndarray | None:
    at = np.searchsorted(rows.users, i)
    if at < len(rows.users) and rows.users[at] == i:
        return rows.values[at].copy()
    return None


def _bincount_rows(
    users: np.ndarray, hours: np.ndarray, weights: np.ndarray, width: int = HOURS
) -> _Rows:
    present, compact = np.unique(users, return_inverse=True)
    flat = np.bincount(compact * width + hours, weights=weights, minlength=len(present) * width)
    return _Rows(present, flat.reshape(len(present), width))


def _automated(frame: pd.DataFrame) -> np.ndarray:
    if "automated" not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return frame["automated"].fillna(False).to_numpy(dtype=bool)


def _lookup(frame: pd.DataFrame, name: str, vocabulary: tuple[str, ...]) -> np.ndarray:
    """Per row the position of the column's value in ``vocabulary``, -1 when not in it."""
    if name not in frame.columns:
        return np.full(len(frame), -1, dtype=np.int16)
    column = frame[name]
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes, names = column.cat.codes.to_numpy(), column.cat.categories
    else:
        codes, names = pd.factorize(column)
    table = np.array([vocabulary.index(v) if v in vocabulary else -1 for v in names] + [-1])
    return table[np.where(codes < 0, len(names), codes)].astype(np.int16)


@dataclass
class _Events:
    """The columns of a frame the send-time model reads, as integer codes."""

    codes: np.ndarray
    """Position of the row's user in ``users``."""
    users: pd.Index
    kind: np.ndarray
    """Position in ``EVENT_TYPES``, -1 for anything else."""
    channel: np.ndarray
    """Position in ``MESSAGE_CHANNELS``, -1 for other channels and none."""
    ts: np.ndarray
    automated: np.ndarray
    own_zone: np.ndarray
    """Position of the row's zone in ``zone_names``, -1 when it has none (or unknown)."""
    zone_names: np.ndarray
    user_zone: np.ndarray
    """Per user: position of their latest known zone in ``zone_names``, -1 when none."""
    hour: np.ndarray
    """Local hour (see :func:`_with_hours`)."""
    weekday: np.ndarray
    """Local weekday, Monday 0 (see :func:`_with_hours`)."""
    day: np.ndarray
    """Local date as days since 1970-01-01 (see :func:`_with_hours`)."""

    def of_kind(self, *names: str) -> np.ndarray:
        return np.isin(self.kind, [EVENT_TYPES.index(n) for n in names])

    @property
    def zone(self) -> np.ndarray:
        """Per user: latest known zone, "" when none."""
        names = np.append(self.zone_names.astype(object), "")
        return names[np.where(self.user_zone < 0, len(self.zone_names), self.user_zone)]

    def take(self, rows: np.ndarray) -> _Events:
        """The rows ``rows`` as a log of their own (same users and zone names; each
        person's latest zone from these rows alone; hours not computed)."""
        own_zone, ts, codes = self.own_zone[rows], self.ts[rows], self.codes[rows]
        return _Events(
            codes=codes,
            users=self.users,
            kind=self.kind[rows],
            channel=self.channel[rows],
            ts=ts,
            automated=self.automated[rows],
            own_zone=own_zone,
            zone_names=self.zone_names,
            user_zone=_latest_zones(codes, ts, own_zone, len(self.users)),
            hour=np.zeros(len(rows), dtype=np.int64),
            weekday=np.zeros(len(rows), dtype=np.int64),
            day=np.zeros(len(rows), dtype=np.int64),
        )


def _parse(frame: pd.DataFrame) -> _Events:
    codes, users = pd.factorize(frame["user_id"].astype("str"), sort=True)
    ts = frame["timestamp"].to_numpy(dtype=np.int64)
    if "timezone" in frame.columns:
        # Sorted names: on equal times the greatest name wins, as in send_time.latest_zone.
        zone_codes, names = pd.factorize(frame["timezone"], sort=True)
        names = np.asarray(names, dtype=object)
    else:
        zone_codes, names = np.full(len(frame), -1), np.array([], dtype=object)
    known = np.array([bool(z) and is_known_zone(str(z)) for z in names] + [False])
    own_zone = np.where(known[np.where(zone_codes < 0, len(names), zone_codes)], zone_codes, -1)
    return _Events(
        codes=codes,
        users=users,
        kind=_lookup(frame, "event_type", EVENT_TYPES),
        channel=_lookup(frame, "channel", MESSAGE_CHANNELS),
        ts=ts,
        automated=_automated(frame),
        own_zone=own_zone,
        zone_names=names,
        user_zone=_latest_zones(codes, ts, own_zone, len(users)),
        hour=np.zeros(len(frame), dtype=np.int64),
        weekday=np.zeros(len(frame), dtype=np.int64),
        day=np.zeros(len(frame), dtype=np.int64),
    )


def _latest_zones(codes: np.ndarray, ts: np.ndarray, zones: np.ndarray, n: int) -> np.ndarray:
    """Per user the zone code of their latest row with a zone (codes follow name order, so
    on equal times the greatest name wins), -1 when none."""
    rows = np.flatnonzero(zones >= 0)
    if not len(rows):
        return np.full(n, -1, dtype=np.int64)
    # One key ordered by (time, zone): the greatest per user is the one to keep.
    width = int(zones[rows].max()) + 1
    key = ts[rows].astype(np.int64) * width + zones[rows]
    best = np.full(n, -1, dtype=np.int64)
    np.maximum.at(best, codes[rows], key)
    return np.where(best >= 0, best % width, -1)


def _with_hours(events: _Events, default_timezone: str) -> _Events:
    """``events`` with each row's local hour, weekday and date: in its own zone, else its
    person's latest known zone, else ``default_timezone``."""
    zone = np.where(events.own_zone >= 0, events.own_zone, events.user_zone[events.codes])
    events.hour, events.weekday, events.day = _local_times(
        events.ts, zone, events.zone_names, default_timezone
    )
    return events


def _local_hours(
    ts: np.ndarray, zone: np.ndarray, names: np.ndarray, default_timezone: str
) -> np.ndarray:
    """Local hour of each epoch second (see :func:`_local_times`)."""
    return _local_times(ts, zone, names, default_timezone)[0]


def _local_times(
    ts: np.ndarray, zone: np.ndarray, names: np.ndarray, default_timezone: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local hour, weekday (Monday 0) and date (days since 1970-01-01) of each epoch
    second; ``zone`` indexes ``names``, -1 is the default zone. One ``tz_convert`` per
    distinct zone."""
    hours = np.zeros(len(ts), dtype=np.int64)
    weekdays = np.zeros(len(ts), dtype=np.int64)
    days = np.zeros(len(ts), dtype=np.int64)
    if not len(ts):
        return hours, weekdays, days
    order = np.argsort(zone, kind="stable")
    present, starts = np.unique(zone[order], return_index=True)
    bounds = np.append(starts, len(order))
    for k, code in enumerate(present):
        rows = order[bounds[k] : bounds[k + 1]]
        name = default_timezone if code < 0 else str(names[code])
        stamps = pd.DatetimeIndex(pd.to_datetime(ts[rows], unit="s", utc=True))
        local = stamps.tz_convert(name)
        hours[rows] = local.hour
        weekdays[rows] = local.day_of_week
        days[rows] = local.tz_localize(None).to_numpy().astype("datetime64[D]").astype(np.int64)
    return hours, weekdays, days


def _events(frame: pd.DataFrame, default_timezone: str) -> _Events:
    return _with_hours(_parse(frame), default_timezone)


def _one_per_clock_hour(events: _Events, mask: np.ndarray) -> np.ndarray:
    """``mask`` keeping each person's earliest row per clock hour (ties: the smallest zone
    name, "" for none), as :func:`service.send_time.profile_from_events` counts activity."""
    rows = np.flatnonzero(mask)
    names = np.append(np.asarray(events.zone_names, dtype=object), "")
    zone = events.own_zone[rows]
    burst = pd.DataFrame(
        {
            "u": events.codes[rows],
            "h": events.ts[rows] // 3600,
            "ts": events.ts[rows],
            "zone": names[np.where(zone < 0, len(names) - 1, zone)],
            "row": rows,
        }
    )
    first = burst.sort_values(["ts", "zone"], kind="stable").drop_duplicates(["u", "h"])["row"]
    kept = np.zeros(len(mask), dtype=bool)
    kept[first.to_numpy()] = True
    return kept


def _latest(events: _Events) -> np.ndarray:
    """Per user the time of their latest row (-1 for users without rows)."""
    latest = np.full(len(events.users), -1, dtype=np.int64)
    np.maximum.at(latest, events.codes, events.ts)
    return latest


def _counts(
    events: _Events, half_life_days: float, activity_half_life_days: float | None = None
) -> _Counts:
    n = len(events.users)
    # Recency relative to each person's own latest event (see send_time.profile_from_events).
    latest = _latest(events)
    age = (latest[events.codes] - events.ts) / _SECONDS_PER_DAY
    weight = np.exp2(-age / half_life_days)
    active_weight = np.exp2(-age / (activity_half_life_days or half_life_days))
    on_message_channel = events.channel >= 0
    delivered = events.of_kind("message_delivered") & on_message_channel
    answer = events.of_kind("message_open", "message_click") & on_message_channel
    answer &= ~events.automated
    active = events.of_kind(*ACTIVITY_EVENT_TYPES) & ~events.automated
    # A burst of events in one clock hour is one sign of being around, not fifty.
    active = _one_per_clock_hour(events, active)

    # Each open or click goes to the hour and weekday of the delivery it answers.
    channel_codes = events.channel  # position in MESSAGE_CHANNELS, -1 for others
    answer_rows, delivery_rows = _answer_links(events)
    answer_hour = events.hour.copy()
    answer_day = events.weekday.copy()
    matched = delivery_rows >= 0
    answer_hour[answer_rows[matched]] = events.hour[delivery_rows[matched]]
    answer_day[answer_rows[matched]] = events.weekday[delivery_rows[matched]]
    week_hour = events.weekday * HOURS + events.hour
    answer_week_hour = answer_day * HOURS + answer_hour

    channels: dict[str, tuple[_Rows, _Rows, _Rows]] = {}
    weekly: dict[str, tuple[_Rows, _Rows, _Rows]] = {}
    raw_deliveries: dict[str, np.ndarray] = {}
    raw_answered: dict[str, np.ndarray] = {}
    for c, name in enumerate(MESSAGE_CHANNELS):
        on = channel_codes == c
        parts, week_parts = [], []
        for mask, hours, week_hours in (
            (delivered & on, events.hour, week_hour),
            (answer & on & events.of_kind("message_open"), answer_hour, answer_week_hour),
            (answer & on & events.of_kind("message_click"), answer_hour, answer_week_hour),
        ):
            users, w = events.codes[mask], weight[mask]
            parts.append(_bincount_rows(users, hours[mask], w))
            week_parts.append(_bincount_rows(users, week_hours[mask], w, WEEK_HOURS))
        if any(len(p.users) for p in parts):
            channels[name] = (parts[0], parts[1], parts[2])
            weekly[name] = (week_parts[0], week_parts[1], week_parts[2])
        raw_deliveries[name] = np.bincount(events.codes[delivered & on], minlength=n)
        raw_answered[name] = np.maximum(
            np.bincount(events.codes[answer & on & events.of_kind("message_open")], minlength=n),
            np.bincount(events.codes[answer & on & events.of_kind("message_click")], minlength=n),
        )
    return _Counts(
        users=events.users,
        zone=events.zone,
        channels=channels,
        weekly=weekly,
        activity=_bincount_rows(events.codes[active], events.hour[active], active_weight[active]),
        weekly_activity=_bincount_rows(
            events.codes[active], week_hour[active], active_weight[active], WEEK_HOURS
        ),
        raw_deliveries=raw_deliveries,
        raw_answered=raw_answered,
        raw_activity=np.bincount(events.codes[active], minlength=n),
        latest=latest,
    )


def user_profiles(
    frame: pd.DataFrame,
    half_life_days: float = 30.0,
    default_timezone: str = "UTC",
    activity_half_life_days: float | None = None,
) -> dict[str, EngagementProfile]:
    """Every person's :class:`EngagementProfile`, keyed by user id (sorted), equal to what
    ``send_time.profile_from_events`` gives for that person's events.

    Everybody in ``frame`` gets a profile, possibly empty; weights are relative to each
    person's latest event.
    """
    started = time.perf_counter()
    counts = _counts(_events(frame, default_timezone), half_life_days, activity_half_life_days)
    built = [
        EngagementProfile(timezone=zone or None, as_of=float(t))
        for zone, t in zip(counts.zone, counts.latest, strict=True)
    ]
    for name, parts in counts.channels.items():
        # The weekly rows belong to the same users as the hourly ones (same events).
        users, arrays = _aligned((*parts, *counts.weekly[name]))
        for k, i in enumerate(users):
            built[i].channels[name] = ChannelCounts(
                *(a[k] for a in arrays),
                sent=float(counts.raw_deliveries[name][i]),
                answered=float(counts.raw_answered[name][i]),
            )
    for k, i in enumerate(counts.activity.users):
        built[i].activity = counts.activity.values[k]
        built[i].weekly_activity = counts.weekly_activity.values[k]
        built[i].active_hours = float(counts.raw_activity[i])
    profiles = {str(user): built[i] for i, user in enumerate(counts.users)}
    log.info("built %d engagement profiles in %.2fs", len(profiles), time.perf_counter() - started)
    return profiles


@dataclass
class SendTimeModel:
    """The send-time and channel model exactly as served, fitted on a log in memory.

    :meth:`fit` learns the priors and publishes (in memory) every person's profile as
    ``train`` does; :meth:`plan` and :meth:`channels` answer as ``PredictSendTime`` and
    ``RankChannels`` would at time ``now``, through the same functions
    (:func:`service.send_time.served_profile`, :func:`service.send_time.plan_send`,
    :func:`service.send_time.rank_channels`). Evaluations and benchmarks query this, so
    what they measure is what the service answers, without Redis or gRPC.
    """

    priors: Priors
    published: dict[str, str]
    """User id -> the profile JSON training would publish."""
    data_end: int
    half_life_days: float
    default_timezone: str

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        half_life_days: float = 30.0,
        default_timezone: str = "UTC",
        tuning: Tuning | None = None,
    ) -> SendTimeModel:
        """Learn the tuning (unless given) and priors on ``frame`` and build everybody's
        profile, as ``train`` does (``half_life_days``: the default where the tuning
        learns none)."""
        data_end = int(frame["timestamp"].max()) if len(frame) else 0
        priors = learn_priors(frame, half_life_days, default_timezone, tuning=tuning)
        messages, activity = priors.tuning.recency(half_life_days)
        profiles = user_profiles(frame, messages, default_timezone, activity)
        return cls(
            priors=priors,
            published={user: p.to_json() for user, p in profiles.items()},
            data_end=data_end,
            half_life_days=half_life_days,
            default_timezone=default_timezone,
        )

    def profile(self, user_id: str) -> EngagementProfile:
        """The person's profile as a request sees it (no live events)."""
        published = [self.published[user_id]] if user_id in self.published else []
        messages, activity = self.priors.tuning.recency(self.half_life_days)
        return served_profile(
            published, self.data_end, [], messages, self.default_timezone, activity
        )

    def plan(
        self,
        user_id: str,
        channel: str,
        not_before: datetime,
        window_hours: int = 24,
        timezone: str = "",
        quiet: tuple[int, int] | None = None,
    ) -> SendPlan:
        """``PredictSendTime`` for the person (``timezone`` empty: the person's known
        zone, else the default one)."""
        profile = self.profile(user_id)
        zone = timezone or profile.timezone or self.default_timezone
        return plan_send(
            profile,
            channel,
            self.priors,
            zone,
            not_before,
            window_hours,
            quiet,
            counted_in=self.default_timezone,
        )

    def channels(self, user_id: str) -> list[str]:
        """``RankChannels`` for the person: channel names, best first."""
        return [c for c, _, _ in rank_channels(self.profile(user_id), self.priors)]


# --- priors ------------------------------------------------------------------------------


def learn_priors(
    frame: pd.DataFrame,
    half_life_days: float = 30.0,
    default_timezone: str = "UTC",
    min_segment_deliveries: int = DEFAULT_MIN_SEGMENT,
    tuning: Tuning | None = None,
) -> Priors:
    """Priors over everybody in ``frame``, each person's counts weighted relative to
    their latest event, with the ``tuning`` of :func:`learn_tuning` (learnt here when not
    given; ``half_life_days`` is then its default message half-life).

    A person's segment is their latest known time zone (else ``default_timezone``). A
    segment gets a rate curve for a channel when it has at least
    ``min_segment_deliveries`` deliveries on it, and an activity share when it has at
    least that many activity events. With no message events at all the rates are flat
    (:data:`~service.send_time.DEFAULT_RATE`), with no activity the share is uniform.
    """
    if tuning is None:
        tuning = learn_tuning(frame, half_life_days, default_timezone).tuning
    if frame.empty:
        return replace(_priors(None, default_timezone, min_segment_deliveries), tuning=tuning)
    messages, activity = tuning.recency(half_life_days)
    events = _events(frame, default_timezone)
    counts = _counts(events, messages, activity)
    return replace(
        _priors(counts, default_timezone, min_segment_deliveries),
        tuning=tuning,
        fatigue=learn_fatigue(events),
    )


#: Fatigue is learnt for 0 .. FATIGUE_STREAKS - 1 unanswered deliveries in a row (the
#: last for that many or more).
FATIGUE_STREAKS = 6
#: Pseudo-deliveries at "no fatigue" behind each streak's factor: a streak seen on a few
#: deliveries says little.
FATIGUE_PSEUDO = 50.0


def learn_fatigue(events: _Events) -> list[float]:
    """How much less a person answers a message after k of their deliveries in a row on
    that channel went unanswered, relative to after an answered one (k = 0), for k in
    0 .. :data:`FATIGUE_STREAKS` - 1; [] without deliveries to learn from.

    People who rarely answer have long streaks anyway, so streaks are not compared with
    each other directly: each delivery's answer is compared with what that person's own
    rate on the channel predicts, leaving that delivery out (their other deliveries'
    answers, shrunk to the channel's rate with :data:`FATIGUE_PSEUDO`/10 pseudo-ones).
    Per streak, answers over predictions (shrunk to 1 with :data:`FATIGUE_PSEUDO`
    pseudo-deliveries) is its factor; factors are made relative to streak 0, at most 1,
    and never rising with the streak. Where nothing tires people, they come out near 1.
    """
    sent = np.flatnonzero(events.of_kind("message_delivered") & (events.channel >= 0))
    if len(sent) < FATIGUE_STREAKS:
        return []
    answered = _answered(events)[sent].astype(np.float64)
    frame = pd.DataFrame(
        {"u": events.codes[sent], "c": events.channel[sent], "ts": events.ts[sent], "a": answered}
    ).sort_values(["u", "c", "ts"], kind="stable")
    group = frame.groupby(["u", "c"], sort=False)
    a = frame["a"].to_numpy()
    # Unanswered in a row before each delivery: the position since the group's last answer.
    position = group.cumcount().to_numpy()
    keys = [frame["u"], frame["c"]]
    last_answer = (
        pd.Series(np.where(a > 0, position, -1), index=frame.index)
        .groupby(keys, sort=False)
        .cummax()
        .groupby(keys, sort=False)
        .shift(1, fill_value=-1)
        .to_numpy()
    )
    streak = np.minimum(position - last_answer - 1, FATIGUE_STREAKS - 1)
    started = last_answer >= 0  # before a person's first answer, "unanswered" means little
    total = group["a"].transform("sum").to_numpy()
    count = group["a"].transform("size").to_numpy()
    rate = {c: float(frame["a"][frame["c"] == c].mean()) for c in np.unique(frame["c"])}
    prior = np.array([rate[c] for c in frame["c"].to_numpy()])
    pseudo = FATIGUE_PSEUDO / 10
    predicted = (total - a + pseudo * prior) / (count - 1 + pseudo)
    factors = []
    for k in range(FATIGUE_STREAKS):
        at = started & (streak == k)
        factors.append(
            (a[at].sum() + FATIGUE_PSEUDO * _mean_or_1(predicted[at]))
            / (predicted[at].sum() + FATIGUE_PSEUDO * _mean_or_1(predicted[at]))
        )
    relative = np.minimum(np.array(factors) / factors[0], 1.0)
    return [float(f) for f in np.minimum.accumulate(relative)]


def _mean_or_1(predicted: np.ndarray) -> float:
    """The mean prediction of a streak's deliveries (1 when there are none): the scale of
    its pseudo-deliveries, so shrinking pulls the factor to 1."""
    return float(predicted.mean()) if len(predicted) else 1.0


def _priors(counts: _Counts | None, default_timezone: str, min_segment: int) -> Priors:
    # Pseudo-deliveries when smoothing the population curves, which rest on thousands of
    # deliveries: a constant that barely matters, unlike the per-person tuning.
    strength = DEFAULT_STRENGTH
    uniform = np.full(HOURS, 1.0 / HOURS)
    if counts is None:
        return Priors.flat()
    zones = np.where(counts.zone == "", default_timezone, counts.zone)
    segment_codes, segments = pd.factorize(zones)

    def by_segment(users: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Rows of ``users`` summed per segment: (segments, 24)."""
        out = np.zeros((len(segments), HOURS))
        np.add.at(out, segment_codes[users], values)
        return out

    totals: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, parts in counts.channels.items():
        users, (deliveries, opens, clicks) = _aligned(parts)
        totals[name] = (
            by_segment(users, deliveries),
            by_segment(users, np.maximum(opens, clicks)),
        )

    rates = {}
    for name, (deliveries, engaged) in totals.items():
        if deliveries.sum() > 0:
            rates[name] = float(engaged.sum() / deliveries.sum())
    fallback = float(np.mean(list(rates.values()))) if rates else DEFAULT_RATE
    channel_rate = {c: rates.get(c, fallback) for c in MESSAGE_CHANNELS}

    channel_hour_rate: dict[str, list[float]] = {}
    curves: dict[str, np.ndarray] = {}
    for name in MESSAGE_CHANNELS:
        base = channel_rate[name]
        if name in totals:
            deliveries, engaged = (t.sum(axis=0) for t in totals[name])
            curve = (smooth(engaged) + strength * base) / (smooth(deliveries) + strength)
        else:
            curve = np.full(HOURS, base)
        curves[name] = np.clip(curve, 0.0, 1.0)
        channel_hour_rate[name] = curves[name].tolist()

    segment_hour_rate: dict[str, dict[str, list[float]]] = {}
    for name, (deliveries, engaged) in totals.items():
        raw = np.bincount(
            segment_codes, weights=counts.raw_deliveries[name], minlength=len(segments)
        )
        for s in np.flatnonzero(raw >= min_segment):
            curve = (smooth(engaged[s]) + strength * curves[name]) / (
                smooth(deliveries[s]) + strength
            )
            segment_hour_rate.setdefault(str(segments[s]), {})[name] = np.clip(
                curve, 0.0, 1.0
            ).tolist()

    activity = by_segment(counts.activity.users, counts.activity.values)
    overall = activity.sum(axis=0)
    if overall.sum() > 0:
        share = (1 - _ACTIVITY_FLOOR) * smooth(overall) / overall.sum() + _ACTIVITY_FLOOR * uniform
    else:
        share = uniform
    segment_activity: dict[str, list[float]] = {}
    raw = np.bincount(segment_codes, weights=counts.raw_activity, minlength=len(segments))
    for s in np.flatnonzero(raw >= max(min_segment, 1)):
        mine = (smooth(activity[s]) + strength * share) / (activity[s].sum() + strength)
        segment_activity[str(segments[s])] = (mine / mine.sum()).tolist()
    return Priors(
        channel_rate=channel_rate,
        channel_hour_rate=channel_hour_rate,
        segment_hour_rate=segment_hour_rate,
        activity=(share / share.sum()).tolist(),
        segment_activity=segment_activity,
    )


# --- tuning ------------------------------------------------------------------------------

#: Candidate values of the tuning, searched on a validation split of the training log.
TUNING_GRID = {
    "activity_half_life_days": (1 / 24, 0.25, 1.0, 3.0, 10.0, 30.0, 90.0, 365.0, 36500.0),
    "activity_smoothing_hours": (0.5, 1.0, 1.5, 2.5),
    "activity_strength": (0.001, 0.03, 0.3, 1.0, 4.0, 16.0, 64.0),
    "day_type_strength": (0.3, 1.0, 3.0, 10.0, 1e6),
    "half_life_days": (30.0, 90.0, 365.0),
    "strength": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0),
    "activity_exponent": (0.0, 0.5, 1.0, 2.0),
}
#: Share of each person's latest events held out to validate the tuning.
VALIDATION_FRACTION = 0.2
#: Held-out active hours on whole days below which the tuning holds out the latest events
#: instead (a hit rate on fewer has a standard error above 0.02, more than most
#: candidates differ by).
MIN_DAY_VALIDATION = 500
#: Held-out activity hours (and deliveries) below which a part of the tuning keeps its
#: default: too little to tell candidates apart.
MIN_VALIDATION = 50
#: Candidate pseudo-deliveries of the channel prior (``Tuning.channel_strength``).
CHANNEL_STRENGTHS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


@dataclass
class TuningReport:
    """What :func:`learn_tuning` chose and on how much evidence."""

    tuning: Tuning
    activity_hours: int = 0
    """Held-out distinct active hours the activity part was chosen on."""
    activity_hit_rate: float | None = None
    """Their hit rate (±1 h) with the chosen activity tuning."""
    deliveries: int = 0
    """Held-out deliveries the message part was chosen on."""
    delivery_log_likelihood: float | None = None
    """Their mean Bernoulli log likelihood with the chosen tuning."""
    replay_rate: float | None = None
    """Share answered of the held-out deliveries sent within 1 h of the chosen hour."""
    presence_hit_rate: float | None = None
    """Share of those people's held-out active hours within 1 h of the chosen hour."""
    channel_replay_rate: float | None = None
    """Share answered of the held-out deliveries on the top-ranked channel."""
    rule_hit_rates: dict[str, float] = field(default_factory=dict)
    """Rule (``Tuning.rule``) -> hit rate (±1 h) of its served hours on the held-out
    active hours, the best tuning of each (:func:`_choose_rule`)."""
    rule_hours: int = 0
    """Held-out active hours the rule was chosen on."""
    notes: list[str] = field(default_factory=list)

    def flat(self) -> dict[str, float]:
        """``tuning_<name>`` -> value, for MLflow."""
        out = {
            f"tuning_{k}": float(v)
            for k, v in self.tuning.to_dict().items()
            if isinstance(v, int | float)
        }
        out.update({f"tuning_rule_hit_{r}": v for r, v in self.rule_hit_rates.items()})
        out.update(
            {f"tuning_channel_strength_{c}": v for c, v in self.tuning.channel_strength.items()}
        )
        return out

    def summary(self) -> str:
        t = self.tuning
        lines = [
            "send-time tuning (learnt on this log):",
            f"  activity: half-life {t.activity_half_life_days or '-'} d, smoothing "
            f"{t.activity_smoothing_hours} h, strength {t.activity_strength}, day-type strength "
            f"{t.day_type_strength:g}"
            + (
                f"  [{self.activity_hours} held-out hours, hit ±1h {self.activity_hit_rate:.3f}]"
                if self.activity_hit_rate is not None
                else ""
            ),
            f"  messages: half-life {t.half_life_days or '-'} d, strength {t.strength}, "
            f"activity exponent {t.activity_exponent}"
            + (
                f"  [{self.deliveries} held-out deliveries, "
                f"log-lik {self.delivery_log_likelihood:.4f}, answered at the chosen hour "
                f"{self.replay_rate:.3f}, around at it "
                + ("-" if self.presence_hit_rate is None else f"{self.presence_hit_rate:.3f}")
                + "]"
                if self.delivery_log_likelihood is not None
                else ""
            ),
            "  channel strength: "
            + (", ".join(f"{c} {v:.3g}" for c, v in t.channel_strength.items()) or "-"),
            f"  answers: {t.rule.replace('_', ' ')}"
            + (
                f"  [{self.rule_hours} held-out hours, hit ±1h "
                + ", ".join(
                    f"{r.replace('_', ' ')} {v:.3f}" for r, v in self.rule_hit_rates.items()
                )
                + "]"
                if self.rule_hit_rates
                else ""
            ),
        ]
        return "\n".join(lines + [f"  {n}" for n in self.notes])


def _held_out_latest(events: _Events, fraction: float) -> np.ndarray:
    """Per person the latest ``fraction`` of their rows by time (at least one row kept in
    the past; people with fewer than 5 rows keep all)."""
    order = np.lexsort((np.arange(len(events.ts)), events.ts, events.codes))
    codes = events.codes[order]
    starts = np.r_[0, np.flatnonzero(codes[1:] != codes[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(codes)])
    rank = np.arange(len(codes)) - np.repeat(starts, sizes)
    size = np.repeat(sizes, sizes)
    held = (size >= 5) & (rank >= np.ceil(size * (1 - fraction)))
    out = np.zeros(len(codes), dtype=bool)
    out[order] = held
    return out


def _held_out_days(events: _Events, fraction: float) -> np.ndarray:
    """Rows on each person's latest ``floor(fraction * days)`` local days with events (so
    people with fewer than ``1 / fraction`` such days keep everything).

    Whole days, not the latest rows: a basket, a session or a campaign's burst spreads
    over many rows of one hour, and holding out the end of one while the rest trains
    rewards a memory of the last hour (on a real shop's invoices such a split chose a
    one-hour half-life, which it scored at 0.82 while it scored 0.42 on the next days)."""
    pairs = events.codes.astype(np.int64) * (1 << 32) + (events.day - events.day.min())
    distinct, at = np.unique(pairs, return_inverse=True)
    person = distinct >> 32
    starts = np.r_[0, np.flatnonzero(person[1:] != person[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(distinct)])
    # Distinct (person, day) pairs sort by person, then day: rank 0 is a person's latest.
    from_latest = np.repeat(starts + sizes, sizes) - 1 - np.arange(len(distinct))
    held_day = from_latest < np.floor(fraction * np.repeat(sizes, sizes))
    return held_day[at]


def _rows_on(rows: _Rows, people: np.ndarray, width: int) -> np.ndarray:
    """``rows`` as a dense (len(people), width) array on ``people`` (user positions)."""
    out = np.zeros((len(people), width))
    if not len(rows.users):
        return out
    at = np.searchsorted(rows.users, people)
    ok = (at < len(rows.users)) & (rows.users[np.minimum(at, len(rows.users) - 1)] == people)
    out[ok] = rows.values[at[ok]]
    return out


def _answer_links(events: _Events) -> tuple[np.ndarray, np.ndarray]:
    """Every human open or click on a message channel (row positions) and the delivery it
    answers: the latest on its channel at most :data:`ATTRIBUTION_WINDOW_SECONDS` before
    it, same second included, on equal times the greatest local hour then weekday (as
    ``send_time.profile_from_events``); -1 where none."""
    on_channel = events.channel >= 0
    delivered = np.flatnonzero(events.of_kind("message_delivered") & on_channel)
    answers = np.flatnonzero(
        events.of_kind("message_open", "message_click") & on_channel & ~events.automated
    )
    links = np.full(len(answers), -1, dtype=np.int64)
    if not len(delivered) or not len(answers):
        return answers, links
    sent = pd.DataFrame(
        {
            "u": events.codes[delivered],
            "c": events.channel[delivered],
            "ts": events.ts[delivered],
            "hour": events.hour[delivered],
            "day": events.weekday[delivered],
            "sent": delivered,
        }
    ).sort_values(["ts", "hour", "day"], kind="stable")
    got = pd.DataFrame(
        {
            "u": events.codes[answers],
            "c": events.channel[answers],
            "ts": events.ts[answers],
            "at": np.arange(len(answers)),
        }
    ).sort_values("ts", kind="stable")
    linked = pd.merge_asof(
        got,
        sent.drop(columns=["hour", "day"]),
        on="ts",
        by=["u", "c"],
        tolerance=ATTRIBUTION_WINDOW_SECONDS,
        direction="backward",
    )
    found = linked["sent"].notna().to_numpy()
    links[linked["at"].to_numpy()[found]] = linked["sent"].to_numpy()[found].astype(np.int64)
    return answers, links


def _answered(events: _Events) -> np.ndarray:
    """Per row: a delivery that a human open or click answered (:func:`_answer_links`)."""
    out = np.zeros(len(events.ts), dtype=bool)
    links = _answer_links(events)[1]
    out[links[links >= 0]] = True
    return out


def _channel_strength(
    counts: _Counts,
    priors: Priors,
    people: np.ndarray,
    rows_of: np.ndarray,
    channel: np.ndarray,
    answered: np.ndarray,
) -> tuple[dict[str, float], float]:
    """The pseudo-deliveries of the channel prior (one value for every channel) under
    which each person's overall rate per channel, from the past ``counts``, best predicts
    whether their held-out deliveries (``channel``, ``answered``, each person's row in
    ``rows_of`` of ``people``) were answered: Bernoulli log likelihood, a proper score,
    so the chosen shrinkage is the one whose rates are right, and ranking by right rates
    is the best ranking the evidence allows. (The replay value of the top channel was
    tried first: with a handful of opens per person it is pure noise across candidates.)
    Returns the strengths and the replay value of the chosen ranking, for the report."""
    sent = np.zeros((len(people), len(MESSAGE_CHANNELS)))
    read = np.zeros_like(sent)
    for c, name in enumerate(MESSAGE_CHANNELS):
        if name in counts.channels:
            # Engagements per hour as ChannelCounts.engaged counts them, summed.
            hourly = [_rows_on(part, people, HOURS) for part in counts.channels[name]]
            sent[:, c] = hourly[0].sum(axis=1)
            read[:, c] = np.maximum(hourly[1], hourly[2]).sum(axis=1)
    mean = np.array([channel_rate(priors, name) for name in MESSAGE_CHANNELS])
    best_ll, best, best_value = -np.inf, DEFAULT_STRENGTH, 0.0
    for strength in CHANNEL_STRENGTHS:
        score = channel_score(read, sent, mean, strength)
        rate = np.clip(score[rows_of, channel], 1e-4, 1 - 1e-4)
        ll = float(np.mean(np.where(answered, np.log(rate), np.log1p(-rate))))
        if ll > best_ll:
            top = np.argmax(score, axis=1)  # ties: the earlier channel, as rank_channels
            matched = channel == top[rows_of]
            best_value = float(answered[matched].mean()) if matched.any() else 0.0
            best_ll, best = ll, strength
    return {name: float(best) for name in MESSAGE_CHANNELS}, best_value


@dataclass
class _Validation:
    """A log split for tuning: the past as events, and what was held out of each person's
    latest events: their distinct active hours (presence) and their deliveries."""

    past: _Events
    priors: Priors
    """Population priors of the past (default tuning)."""
    a_users: np.ndarray
    a_hours: np.ndarray
    a_weekend: np.ndarray
    d_users: np.ndarray
    d_channel: np.ndarray
    d_hours: np.ndarray
    d_weekend: np.ndarray
    d_answered: np.ndarray


def _validation(frame: pd.DataFrame, default_timezone: str, by_days: bool = True) -> _Validation:
    """Every person's latest :data:`VALIDATION_FRACTION` of active days held out of
    ``frame`` (:func:`_held_out_days`), or of their rows (:func:`_held_out_latest`)."""
    events = _events(frame, default_timezone)
    if by_days:
        held = _held_out_days(events, VALIDATION_FRACTION)
    else:
        held = _held_out_latest(events, VALIDATION_FRACTION)
    past_rows = np.flatnonzero(~held)
    past = events.take(past_rows)
    # Local times of past rows as the past alone knows the zones; held-out rows in the
    # person's zone known in the past (as a request would plan them).
    past = _with_hours(past, default_timezone)
    future_rows = np.flatnonzero(held)
    zone = events.own_zone[future_rows]
    zone = np.where(zone >= 0, zone, past.user_zone[events.codes[future_rows]])
    f_hour, f_day, _ = _local_times(
        events.ts[future_rows], zone, events.zone_names, default_timezone
    )
    f_weekend = np.isin(f_day, WEEKEND)
    f_users = events.codes[future_rows]

    # Held-out presence: distinct clock hours, as the profiles count them.
    active = events.of_kind(*ACTIVITY_EVENT_TYPES) & ~events.automated
    once = _one_per_clock_hour(events, active & held)[future_rows]

    # Held-out deliveries and whether they were answered.
    answered = _answered(events)[future_rows]
    sent = events.of_kind("message_delivered")[future_rows] & (events.channel[future_rows] >= 0)
    return _Validation(
        past=past,
        priors=_priors(_counts(past, 30.0), default_timezone, 10**9),
        a_users=f_users[once],
        a_hours=f_hour[once],
        a_weekend=f_weekend[once],
        d_users=f_users[sent],
        d_channel=events.channel[future_rows][sent],
        d_hours=f_hour[sent],
        d_weekend=f_weekend[sent],
        d_answered=answered[sent],
    )


def _tune_activity(split: _Validation, tuning: Tuning, report: TuningReport) -> Tuning:
    """The activity half-life, smoothing, strength and day-type strength under which the
    best hour of each held-out active hour's day type is within ±1 h of it most often;
    among candidates within one standard error of the best, the best log likelihood."""
    past, grid = split.past, TUNING_GRID
    prior_share = np.asarray(split.priors.activity)
    a_users, a_hours, a_weekend = split.a_users, split.a_hours, split.a_weekend
    a_people = np.unique(a_users)
    if len(a_hours) >= MIN_VALIDATION:
        log.info(
            "send-time tuning: activity part on %d held-out active hours of %d people",
            len(a_hours),
            len(a_people),
        )
        rows_of = np.searchsorted(a_people, a_users)
        # Each held-out hour as a slot (person, day type, hour of day): the grid below
        # scores the distinct slots, each counted as often as it was held out.
        slot_flat, slot_count = np.unique(
            (rows_of * 2 + a_weekend) * HOURS + a_hours, return_counts=True
        )
        slot_rows, slot_hours = np.divmod(slot_flat, HOURS)
        held = float(len(a_hours))
        scored: list[tuple[float, float, tuple[float, ...]]] = []
        for hl in grid["activity_half_life_days"]:
            counts = _counts(past, 30.0, hl)
            hourly = np.maximum(_rows_on(counts.activity, a_people, HOURS), 0.0)
            weekly = _rows_on(counts.weekly_activity, a_people, WEEK_HOURS)
            for sd in grid["activity_smoothing_hours"]:
                # activity_share and day_type_share with what no strength changes
                # worked out once per smoothing: the same arithmetic, 25 times less.
                smoothed = smoothed_counts(hourly, sd)
                weekday_counts, weekend_counts = day_type_counts(weekly, sd)
                for s in grid["activity_strength"]:
                    overall = shrunk_share(smoothed, s, prior_share)
                    for k in grid["day_type_strength"]:
                        weekday = shrunk_share(weekday_counts, k, overall)
                        weekend = shrunk_share(weekend_counts, k, overall)
                        # (person, day type) rows: each distinct held-out slot is scored
                        # once and counted as often as it was held out.
                        share = np.stack([weekday, weekend], axis=1).reshape(-1, HOURS)
                        guess = np.argmax(share, axis=1)[slot_rows]
                        hit = float(_within_an_hour(slot_hours, guess) @ slot_count) / held
                        share = share / share.sum(axis=1, keepdims=True)
                        at = share.reshape(-1)[slot_flat]
                        ll = float(np.log(np.maximum(at, LOG_FLOOR)) @ slot_count) / held
                        scored.append((hit, ll, (hl, sd, s, k)))
        # The one-standard-error rule: hit rates this close are noise, so among the
        # candidates within one standard error of the best, the best log likelihood.
        top = max(hit for hit, _, _ in scored)
        error = math.sqrt(top * (1 - top) / len(a_hours))
        hit, _, (hl, sd, s, k) = max((c for c in scored if c[0] >= top - error), key=lambda c: c[1])
        tuning = replace(
            tuning,
            activity_half_life_days=hl,
            activity_smoothing_hours=sd,
            activity_strength=s,
            day_type_strength=k,
        )
        report.activity_hours, report.activity_hit_rate = len(a_hours), hit
    else:
        report.notes.append(
            f"activity tuning left at defaults: {len(a_hours)} held-out active hours "
            f"(< {MIN_VALIDATION})"
        )

    return tuning


def _tune_messages(split: _Validation, tuning: Tuning, report: TuningReport) -> Tuning:
    """The message half-life, rate-prior strength and activity exponent, then the channel
    prior's strength (:func:`_channel_strength`), on the held-out deliveries.

    Under an old schedule that always sent at the same hours, the replay value (held-out
    deliveries sent within 1 h of the hour a candidate would choose, and how often they
    were answered) can hardly tell candidates apart, and the likelihood of every delivery
    is dominated by those hours. So: every candidate whose replay value is within two
    standard errors of the best, and of those the one whose chosen hours best meet the
    hours the person was around (presence), then the best likelihood."""
    past, grid, priors = split.past, TUNING_GRID, split.priors
    prior_share = np.asarray(priors.activity)
    a_users, a_hours, a_weekend = split.a_users, split.a_hours, split.a_weekend
    d_users, d_channel, d_hours = split.d_users, split.d_channel, split.d_hours
    d_weekend, d_answered = split.d_weekend, split.d_answered
    if len(d_hours) >= MIN_VALIDATION and d_answered.any():
        log.info("send-time tuning: message part on %d held-out deliveries", len(d_hours))
        d_people = np.unique(d_users)
        rows_of = np.searchsorted(d_people, d_users)
        counts_a = _counts(past, 30.0, tuning.activity_half_life_days or 30.0)
        hourly_a = _rows_on(counts_a.activity, d_people, HOURS)
        weekly_a = _rows_on(counts_a.weekly_activity, d_people, WEEK_HOURS)
        overall = activity_share(hourly_a, tuning, prior_share)
        # Presence targets of these people (held-out activity and own opens), each
        # against the best hour of the channel the person was sent most on.
        on_people = np.isin(a_users, d_people)
        p_rows = np.searchsorted(d_people, a_users[on_people])
        p_hours, p_weekend = a_hours[on_people], a_weekend[on_people]
        main = np.argmax(
            np.bincount(
                rows_of * len(MESSAGE_CHANNELS) + d_channel,
                minlength=len(d_people) * len(MESSAGE_CHANNELS),
            ).reshape(len(d_people), len(MESSAGE_CHANNELS)),
            axis=1,
        )
        p_channel = main[p_rows]
        scored_m: list[tuple[float, int, float, float, tuple[float, float, float]]] = []
        for hl in grid["half_life_days"]:
            counts = _counts(past, hl, tuning.activity_half_life_days)
            by_channel = {}
            for c, name in enumerate(MESSAGE_CHANNELS):
                if not (d_channel == c).any() or name not in counts.weekly:
                    continue
                hourly = [_rows_on(part, d_people, HOURS) for part in counts.channels[name]]
                weekly = [_rows_on(part, d_people, WEEK_HOURS) for part in counts.weekly[name]]
                by_channel[c] = (
                    hourly[0],
                    np.maximum(hourly[1], hourly[2]),
                    weekly[0],
                    np.maximum(weekly[1], weekly[2]),
                )
            for beta in grid["activity_exponent"]:
                awake = awake_from_share(overall, beta)
                for s in grid["strength"]:
                    t = replace(tuning, strength=s, activity_exponent=beta, half_life_days=hl)
                    rate = np.full(len(d_hours), 0.5)
                    best_hour = np.full(len(d_hours), -99)
                    p_best = np.full(len(p_hours), -99)
                    for c, (sent, read, weekly_sent, weekly_read) in by_channel.items():
                        name = MESSAGE_CHANNELS[c]
                        curve = prior_curve(priors, name, None)
                        base = channel_rate(priors, name)
                        day = np.clip(posterior_rates(sent, read, curve * awake, base, t), 0.0, 1.0)
                        types = day_type_rates(
                            day, awake, weekly_sent, weekly_read, weekly_a, overall, t
                        )
                        mine = d_channel == c
                        for k, weekend in enumerate((False, True)):
                            sel = mine & (d_weekend == weekend)
                            best = np.argmax(types[k], axis=1)
                            rate[sel] = types[k][rows_of[sel], d_hours[sel]]
                            best_hour[sel] = best[rows_of[sel]]
                            there = (p_channel == c) & (p_weekend == weekend)
                            p_best[there] = best[p_rows[there]]
                    # Replay (off-policy) value: held-out deliveries sent within 1 h of
                    # the hour this tuning would have chosen, and how often they were
                    # answered. What the choice of hour is for; the likelihood of every
                    # delivery is dominated by the hours the old schedule always used.
                    matched = _within_an_hour(d_hours, best_hour)
                    value = float(d_answered[matched].mean()) if matched.any() else 0.0
                    rate = np.clip(rate, 1e-4, 1 - 1e-4)
                    ll = float(np.mean(np.where(d_answered, np.log(rate), np.log1p(-rate))))
                    near = _within_an_hour(p_hours, p_best)
                    presence = float(near.mean()) if len(near) else 0.0
                    scored_m.append((value, int(matched.sum()), presence, ll, (hl, beta, s)))
        # Replay within two standard errors of the best, then presence, then likelihood.
        top, n_top = max((v, n) for v, n, _, _, _ in scored_m)
        error = 2 * math.sqrt(top * (1 - top) / max(n_top, 1))
        value, _, presence, best_ll, (hl, beta, s) = max(
            (c for c in scored_m if c[0] >= top - error), key=lambda c: (round(c[2], 3), c[3])
        )
        report.presence_hit_rate = presence if len(p_hours) else None
        tuning = replace(tuning, half_life_days=hl)
        strengths, report.channel_replay_rate = _channel_strength(
            _counts(past, hl, tuning.activity_half_life_days),
            priors,
            d_people,
            rows_of,
            d_channel,
            d_answered,
        )
        tuning = replace(tuning, channel_strength=strengths)
        tuning = replace(tuning, half_life_days=hl, activity_exponent=beta, strength=s)
        report.deliveries, report.delivery_log_likelihood = len(d_hours), best_ll
        report.replay_rate = value
    else:
        report.notes.append(
            f"message tuning left at defaults: {len(d_hours)} held-out deliveries "
            f"(< {MIN_VALIDATION}) or none answered"
        )
    return tuning


#: Activity smoothings (hours) tried for the plain rules.
PLAIN_RULE_SMOOTHINGS = (0.5, 1.0, 1.5)
#: "All history alike": a half-life of a century.
ALL_HISTORY_DAYS = 36_500.0
#: Pseudo-deliveries that drown a person's delivery evidence (a plain rule ignores it).
NO_EVIDENCE = 1e6
#: Pseudo-events that are no pull at all (towards everybody's share, or the all-days one).
NO_PULL = 1e-3


def plain_rule(rule: str, smoothing: float, mix: Tuning) -> Tuning:
    """A plain rule of the person's own habit as a tuning of the served arithmetic: their
    active hours (activity and their own opens) smoothed by ``smoothing`` hours, all
    history alike, no pull towards everybody's share or hourly curve, the share itself as
    the awake factor, no delivery evidence; per kind of day for
    :data:`~service.send_time.OWN_HOURS_BY_DAY_TYPE`. Channels rank as under ``mix``."""
    if rule not in (OWN_HOURS, OWN_HOURS_BY_DAY_TYPE):
        raise ValueError(f"{rule!r} is not a plain rule")
    return replace(
        mix,
        rule=rule,
        strength=NO_EVIDENCE,
        activity_strength=NO_PULL,
        activity_exponent=1.0,
        activity_smoothing_hours=smoothing,
        activity_half_life_days=ALL_HISTORY_DAYS,
        day_type_strength=NO_EVIDENCE if rule == OWN_HOURS else NO_PULL,
        curve_exponent=0.0,
        # Channels keep the mix's shrinkage, which the drowned strength would replace.
        channel_strength={c: mix.channel_strength.get(c, mix.strength) for c in MESSAGE_CHANNELS},
    )


def _choose_rule(split: _Validation, mix: Tuning, report: TuningReport) -> Tuning:
    """The learnt mix, or the plain rule (:func:`plain_rule`, each over
    :data:`PLAIN_RULE_SMOOTHINGS`) whose served hours meet the held-out active hours more
    often (±1 h), the mix winning ties.

    Why: on real logs a person's own long-run habit can be the strongest signal, and then
    the answer must be that habit, not a mix that only nearly reaches it. Each candidate is
    scored through the served arithmetic (:func:`service.send_time.week_tables`): each
    held-out hour against the best hour of its kind of day for the person, on the channel
    they were sent most on in the past (email when none)."""
    a_users, a_hours, a_weekend = split.a_users, split.a_hours, split.a_weekend
    if len(a_hours) < MIN_VALIDATION:
        return mix
    people = np.unique(a_users)
    rows_of = np.searchsorted(people, a_users)
    profiles_by_recency: dict[tuple[float, float], list[EngagementProfile]] = {}

    def profiles_of(recency: tuple[float, float]) -> list[EngagementProfile]:
        if recency not in profiles_by_recency:
            counts = _counts(split.past, *recency)
            profiles_by_recency[recency] = [counts.profile(int(u)) for u in people]
        return profiles_by_recency[recency]

    # Plain delivery counts (``sent``) are the same under any memory: the mix's tell.
    sent = np.array(
        [
            [p.channel(name).sent for name in MESSAGE_CHANNELS]
            for p in profiles_of(mix.recency(30.0))
        ]
    ).reshape(len(people), len(MESSAGE_CHANNELS))
    channels = np.where(
        sent.any(axis=1), np.asarray(MESSAGE_CHANNELS)[sent.argmax(axis=1)], "email"
    ).tolist()
    candidates = [(LEARNT_MIX, mix)] + [
        (rule, plain_rule(rule, sd, mix))
        for rule in (OWN_HOURS, OWN_HOURS_BY_DAY_TYPE)
        for sd in PLAIN_RULE_SMOOTHINGS
    ]
    best: dict[str, tuple[float, Tuning]] = {}
    for rule, tuning in candidates:
        profiles = profiles_of(tuning.recency(30.0))
        zones = [p.timezone or "UTC" for p in profiles]
        week = week_tables(profiles, channels, zones, replace(split.priors, tuning=tuning))
        # Rows 0 and 5 are a weekday's and a Saturday's (each kind of day is one row).
        guess = np.argmax(week[:, [0, WEEKEND[0]]], axis=-1)[rows_of, a_weekend.astype(int)]
        hit = float(np.mean(_within_an_hour(a_hours, guess)))
        if rule not in best or hit > best[rule][0]:
            best[rule] = (hit, tuning)
    report.rule_hit_rates = {rule: hit for rule, (hit, _) in best.items()}
    report.rule_hours = len(a_hours)
    # The mix first: a plain rule answers only where it is strictly better.
    rule = max(best, key=lambda r: best[r][0])
    return best[rule][1]


def learn_tuning(
    frame: pd.DataFrame,
    default_half_life_days: float = 30.0,
    default_timezone: str = "UTC",
) -> TuningReport:
    """How far to trust each person's own evidence, learnt from ``frame`` itself.

    Why learnt: a constant that fits one generator fails another (people whose only sign
    is browsing want a short memory and little shrinkage; people with a few opens strong
    shrinkage and a memory of months). So each run holds out every person's latest
    :data:`VALIDATION_FRACTION` of active days (:func:`_validation`) and picks, from
    :data:`TUNING_GRID`, the activity part (:func:`_tune_activity`), then the message part
    and the channel prior (:func:`_tune_messages`), then the answer: that mix or a plain
    rule of the person's own habit (:func:`_choose_rule`). A part with fewer than
    :data:`MIN_VALIDATION` held-out hours (deliveries) keeps its defaults, and the report
    says so.
    """
    started = time.perf_counter()
    tuning = Tuning(half_life_days=default_half_life_days)
    report = TuningReport(tuning)
    if frame.empty:
        report.notes.append("no events: default tuning")
        return report
    split = _validation(frame, default_timezone)
    if len(split.a_hours) < MIN_DAY_VALIDATION:
        # Too few people with five active days to tell candidates apart (MovieLens: most
        # rate in one sitting): the latest events are all the log can say, which is
        # mostly how a session goes on.
        report.notes.append(
            f"validated on the latest events: {len(split.a_hours)} held-out active hours on "
            f"whole days (< {MIN_DAY_VALIDATION})"
        )
        split = _validation(frame, default_timezone, by_days=False)
    tuning = _tune_activity(split, tuning, report)
    tuning = _tune_messages(split, tuning, report)
    tuning = _choose_rule(split, tuning, report)
    report.tuning = tuning
    log.info("learnt the send-time tuning in %.1fs", time.perf_counter() - started)
    return report


# --- evaluation --------------------------------------------------------------------------


@dataclass
class SendTimeReport:
    """Send-time and channel quality on a time-based holdout, per method."""

    metrics: dict[str, dict[str, float]]
    """Method -> metric -> value (``channel_accuracy`` only where there are messages)."""
    users: int
    """People evaluated for the hour (held-out engagement and past history)."""
    events: int
    """Held-out engagement events of those people."""
    channel_users: int = 0
    """People evaluated for the channel (a held-out open and past history)."""
    notes: list[str] = field(default_factory=list)
    """Remarks printed under the table (e.g. why channel metrics are absent)."""

    def table(self) -> str:
        """A printable table, methods as rows."""
        head = (
            f"send time on the held-out period: {self.users} users, {self.events} events"
            f"; channel: {self.channel_users} users"
        )
        if not self.metrics:
            return "\n".join([head, "  (nothing to evaluate)", *(f"  {n}" for n in self.notes)])
        columns = [m for m in METRICS if any(m in row for row in self.metrics.values())]
        lines = [head, f"{'method':<22}" + "".join(f"{c:>18}" for c in columns)]
        order = [m for m in METHODS if m in self.metrics]
        order += [m for m in self.metrics if m not in order]
        for method in order:
            row = self.metrics[method]
            cells = "".join(f"{row[c]:>18.4f}" if c in row else f"{'-':>18}" for c in columns)
            lines.append(f"{method:<22}{cells}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def flat(self) -> dict[str, float]:
        """``sendtime_<method>_<metric>`` -> value, for MLflow."""
        return {
            f"sendtime_{method}_{metric}": float(value)
            for method, row in self.metrics.items()
            for metric, value in row.items()
        }


def evaluate_send_time(
    frame: pd.DataFrame,
    test_fraction: float = 0.2,
    half_life_days: float = 30.0,
    default_timezone: str = "UTC",
) -> SendTimeReport:
    """Train profiles and priors on the past, score the held-out latest ``test_fraction``
    of the log's time span.

    Target A, the hour: held-out engagement events (non-automated opens and clicks,
    session starts, item events other than dislikes) of people with past engagement.
    Each method gives every person a distribution over local hours; ``hit_rate_1h`` is the
    share of held-out events within ±1 h (circular) of its argmax (for ``uniform``, 3/24,
    a random hour's chance), ``log_likelihood`` the mean log probability of their hours
    (floor 1e-6). Methods: ``model`` (``hour_probabilities`` on the person's best channel,
    normalised), ``open_histogram`` (the naive one: the person's past open hours,
    smoothed, shrunk to everybody's; only when there are opens), ``last_active_hour``,
    ``global_best_hour`` and ``uniform``. Held-out events without a zone of their own are
    placed in the person's latest zone known in the past.

    Target B, the channel: for each person with past events and a held-out non-automated
    open, whether the top of ``rank_channels`` is the channel of their first such open;
    ``global_best_channel`` always says the channel with most past opens. Absent when
    there are no such opens.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be between 0 and 1")
    started = time.perf_counter()
    empty = SendTimeReport(metrics={}, users=0, events=0)
    if frame.empty:
        return empty
    events = _parse(frame)
    low, high = int(events.ts.min()), int(events.ts.max())
    cut = high - test_fraction * (high - low)
    past = events.ts < cut
    if not past.any() or past.all():
        empty.notes.append("the log spans no time to split into past and held-out")
        return empty

    # Everything the model and the baselines learn comes from the past alone.
    past_rows = np.flatnonzero(past)
    past_events = _with_hours(events.take(past_rows), default_timezone)
    # The tuning as training learns it, from the past alone.
    tuning = learn_tuning(frame.iloc[past_rows], half_life_days, default_timezone).tuning
    counts = _counts(past_events, *tuning.recency(half_life_days))
    priors = replace(_priors(counts, default_timezone, DEFAULT_MIN_SEGMENT), tuning=tuning)
    with_rows = np.bincount(past_events.codes, minlength=len(events.users)) > 0
    # Held-out events without a zone of their own: the person's zone as known in the past.
    hour = np.empty(len(events.ts), dtype=np.int64)
    hour[past_rows] = past_events.hour
    future_rows = np.flatnonzero(~past)
    zone = events.own_zone[future_rows]
    zone = np.where(zone >= 0, zone, past_events.user_zone[events.codes[future_rows]])
    hour[future_rows] = _local_hours(
        events.ts[future_rows], zone, events.zone_names, default_timezone
    )

    engaged = ~events.automated & events.of_kind(
        "message_open", "message_click", *ACTIVITY_EVENT_TYPES
    )
    # Targets are distinct active hours: a binge of fifty events in one hour is one
    # "she was around then", for the model and every baseline alike.
    engaged = _one_per_clock_hour(events, engaged)
    past_engaged = past & engaged
    with_past = np.zeros(len(events.users), dtype=bool)
    with_past[events.codes[past_engaged]] = True
    held = ~past & engaged & with_past[events.codes]
    people = np.unique(events.codes[held])
    metrics: dict[str, dict[str, float]] = {}
    report = SendTimeReport(metrics=metrics, users=len(people), events=int(held.sum()))

    if len(people):
        row_of = np.full(len(events.users), -1)
        row_of[people] = np.arange(len(people))
        profiles = [counts.profile(int(u)) for u in people]
        distributions = _hour_distributions(
            events, hour, past, past_engaged, row_of, profiles, priors, default_timezone
        )
        rows, hours = row_of[events.codes[held]], hour[held]
        for method, dist in distributions.items():
            metrics[method] = _hour_metrics(dist, rows, hours, method == "uniform")

    if not events.of_kind("message_delivered", "message_open", "message_click").any():
        report.notes.append("no message events: the model uses activity alone")
    _channel_metrics(events, past, with_rows, counts, priors, metrics, report)
    log.info(
        "evaluated send time for %d users in %.2fs", report.users, time.perf_counter() - started
    )
    return report


def _hour_distributions(
    events: _Events,
    hour: np.ndarray,
    past: np.ndarray,
    past_engaged: np.ndarray,
    row_of: np.ndarray,
    profiles: list[EngagementProfile],
    priors: Priors,
    default_timezone: str,
) -> dict[str, np.ndarray]:
    """Method -> (people, 24) distributions over local hours; row r is ``profiles[r]``."""
    n = len(profiles)
    out: dict[str, np.ndarray] = {}

    model = np.empty((n, HOURS))
    for r, profile in enumerate(profiles):
        best = rank_channels(profile, priors)[0][0]
        segment = profile.timezone or default_timezone
        p, _, _ = hour_probabilities(profile, best, priors, segment)
        model[r] = p / p.sum() if p.sum() > 0 else np.full(HOURS, 1.0 / HOURS)
    out["model"] = model

    opens = past & events.of_kind("message_open") & ~events.automated
    if opens.any():
        everyone = smooth(np.bincount(hour[opens], minlength=HOURS).astype(np.float64))
        everyone /= everyone.sum()
        mine = opens & (row_of[events.codes] >= 0)
        own = np.zeros((n, HOURS))
        np.add.at(own, (row_of[events.codes[mine]], hour[mine]), 1.0)
        out["open_histogram"] = (smooth(own) + priors.strength * everyone) / (
            own.sum(axis=1, keepdims=True) + priors.strength
        )

    # Each person's last past engagement (on equal times the later row).
    mine = np.flatnonzero(past_engaged & (row_of[events.codes] >= 0))
    mine = mine[np.lexsort((mine, events.ts[mine]))]
    last_hour = np.zeros(n, dtype=np.int64)
    last_hour[row_of[events.codes[mine]]] = hour[mine]  # later rows overwrite earlier ones
    peak, side, floor = _SPIKE
    spike = np.full((n, HOURS), floor)
    people = np.arange(n)
    spike[people, last_hour] += peak
    spike[people, (last_hour + 1) % HOURS] += side
    spike[people, (last_hour - 1) % HOURS] += side
    out["last_active_hour"] = spike / spike.sum(axis=1, keepdims=True)

    histogram = np.bincount(hour[past_engaged], minlength=HOURS) + 1.0
    out["global_best_hour"] = np.tile(histogram / histogram.sum(), (n, 1))
    out["uniform"] = np.full((n, HOURS), 1.0 / HOURS)
    return out


def _within_an_hour(hours: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Whether each of ``hours`` is at most 1 h from ``guess`` around the clock."""
    return np.abs((np.asarray(hours) - guess + 12) % HOURS - 12) <= 1


def _hour_metrics(
    dist: np.ndarray, rows: np.ndarray, hours: np.ndarray, uniform: bool
) -> dict[str, float]:
    predicted = np.argmax(dist, axis=1)[rows]
    hit = 3 / HOURS if uniform else float(np.mean(_within_an_hour(hours, predicted)))
    likelihood = float(np.mean(np.log(np.maximum(dist[rows, hours], LOG_FLOOR))))
    return {"hit_rate_1h": hit, "log_likelihood": likelihood}


def _channel_metrics(
    events: _Events,
    past: np.ndarray,
    with_rows: np.ndarray,
    counts: _Counts,
    priors: Priors,
    metrics: dict[str, dict[str, float]],
    report: SendTimeReport,
) -> None:
    is_open = events.of_kind("message_open") & ~events.automated & (events.channel >= 0)
    past_opens = events.channel[past & is_open]
    held = np.flatnonzero(~past & is_open & with_rows[events.codes])
    if not len(past_opens) or not len(held):
        report.notes.append(
            "no channel metrics: "
            + ("no opens before the holdout" if not len(past_opens) else "no held-out opens")
        )
        return
    # Most past opens; ties go to the earlier channel of MESSAGE_CHANNELS.
    tally = np.bincount(past_opens, minlength=len(MESSAGE_CHANNELS))
    overall = MESSAGE_CHANNELS[int(np.argmax(tally))]
    # Each person's first held-out open (on equal times the earlier row).
    held = held[np.lexsort((held, events.ts[held], events.codes[held]))]
    first = held[np.r_[True, events.codes[held][1:] != events.codes[held][:-1]]]
    hits = baseline = 0
    for row in first:
        opened = MESSAGE_CHANNELS[events.channel[row]]
        profile = counts.profile(int(events.codes[row]))
        hits += rank_channels(profile, priors)[0][0] == opened
        baseline += overall == opened
    metrics.setdefault("model", {})["channel_accuracy"] = hits / len(first)
    metrics["global_best_channel"] = {"channel_accuracy": baseline / len(first)}
    report.channel_users = len(first)
