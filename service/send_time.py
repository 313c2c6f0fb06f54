"""Best send time and best channel for one person: the pure model, no I/O.

The message orchestrator asks two questions: *when* should this person get a message on
channel C, and *which channel* will they read. Both are answered from a small per-person
:class:`EngagementProfile` (recency-weighted counts by local hour of day) and from
:class:`Priors` learnt in training over everybody, so that people with little history
still get sensible answers. Training (``training/engagement.py``) builds profiles for
everyone in a log; the service builds them from live events with
:func:`profile_from_events` and adds the published ones with
:meth:`EngagementProfile.merged`.

Why rates per delivery, not a histogram of opens
    Opens cluster within an hour or two of a send, so a histogram of the hours a person
    opened mostly mirrors the hours the brand used to send, and recommending its peak
    just repeats the old schedule. The model estimates instead the probability of an open
    *given a delivery* in local hour ``h``: each delivery counts as an exposure at its
    local hour, and each open (or click) is credited to the hour of the delivery it
    answers (the latest earlier delivery on that channel within
    :data:`ATTRIBUTION_WINDOW_SECONDS`), not to the hour it happened.

Why automated opens are dropped
    Mail privacy proxies (Apple Mail Privacy Protection and the like) and link scanners
    fetch every message at delivery, whatever the hour: those opens would make every hour
    look equally good and every proxied inbox look like a keen reader. Events flagged
    ``automated`` (except deliveries, for which the flag means nothing) are ignored.

Why site and app activity
    The brand only sent at a few hours, so a person's delivery-conditioned rate is well
    known at those hours and unknown elsewhere. When someone starts sessions, views or
    buys is a second, independent sign of when they are awake and around. It enters as
    an *awake factor* (mean 1 over the day, tempered by the exponent
    :data:`ACTIVITY_EXPONENT`) that multiplies the *prior* rate of each hour: where the
    person has few deliveries, activity decides; where they have many, their measured
    rate does, so activity cannot overrule strong delivery evidence. (On the synthetic
    data, rates alone find the planted hour for under half of the people, activity
    folded in for over 90 %.)

How shrinkage works
    Each hour's rate is a Beta posterior mean ``(opens + s·m) / (deliveries + s)``: ``s``
    (``Priors.strength``) pseudo-deliveries at the prior rate ``m(h)``. The prior curve
    ``m`` is the person's time zone segment's learnt curve (else the global one for the
    channel), times the awake factor, times the person's *lift*: how much more or less
    than that curve expects they engaged on the channel overall, itself shrunk towards
    "as expected" with ``s`` pseudo-deliveries. Deliveries and opens are pooled over
    neighbouring hours (circular Gaussian kernel, sd :data:`SMOOTHING_SD_HOURS`, weight
    1 at the hour itself) first, so an hour borrows evidence from its neighbours. The
    activity share per hour is shrunk the same way towards the segment's (or global)
    activity share with ``s`` pseudo-events. With no data the answer is the prior; with
    lots of data it is the data.

Hour of the week
    Profiles also keep the same counts by local hour of the WEEK (weekday * 24 + hour).
    :func:`week_probabilities` adds a second level: per (weekday, hour) a Beta posterior
    whose prior mean is the day-level answer of :func:`hour_probabilities` for that hour,
    with ``s`` pseudo-deliveries, and whose data are the weekly counts pooled over
    neighbouring hours of the week. Sparse weekly data thus barely moves the day-level
    answer; without any (profiles written before the week was kept) it is that answer on
    every day. :func:`choose_slots` ranks slots by their local weekday and hour.

Many people at once
    A campaign page plans hundreds of people, and one person's plan is a few dozen numpy
    operations on arrays of 24 or 168 values, so one at a time their overhead, not their
    arithmetic, is the cost. :func:`plan_sends` and :func:`channel_rankings` stack
    everybody's counts into arrays of (people, hours) and run the same kernels
    (:func:`plan_send` and :func:`rank_channels` are them for one person). Each answer is
    the one that person alone gets, to the last bit: each row is smoothed as a vector
    (BLAS gemv, as for one person; a people × hours matrix product rounds differently),
    and a window's candidate slots (its zone, start, length and quiet hours) are worked
    out once for everybody who shares it.

Engagement is the open, or the click where a channel records more clicks than opens
(SMS has no open tracking). Counts are recency-weighted (half-life set by the caller), so
a person whose habits change is followed.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from service.events import MESSAGE_CHANNELS

HOURS = 24
#: Days of the week (Monday is 0, as ``datetime.weekday``).
DAYS = 7
#: Hours of the week: weekly arrays are indexed ``weekday * 24 + hour`` (local).
WEEK_HOURS = DAYS * HOURS
#: Where an answer's evidence comes from (``hour_probabilities``' second value).
SOURCES = ("user", "segment_prior", "global_prior")

#: Site, app and store activity: visits and item events (not dislikes, which also
#: arrive as feedback on a recommendation sent earlier).
SITE_ACTIVITY_EVENT_TYPES: tuple[str, ...] = (
    "session_start",
    "view",
    "click",
    "favourite",
    "add_to_cart",
    "purchase",
)
#: Events that show the person is awake and around: site activity, and their own (not
#: automated) opens and clicks of messages, at the moment they happen. (An open is also
#: credited to the delivery it answers; as activity it says when the person reads, which
#: where people check their inbox at set times is the best sign there is.)
ACTIVITY_EVENT_TYPES: tuple[str, ...] = (
    *SITE_ACTIVITY_EVENT_TYPES,
    "message_open",
    "message_click",
)
#: An open or click answers the latest delivery on its channel at most this long before.
ATTRIBUTION_WINDOW_SECONDS = 48 * 3600
#: Standard deviation, in hours, of the circular Gaussian kernel smoothing hourly counts.
SMOOTHING_SD_HOURS = 1.5
#: Exponent tempering the awake factor: (activity share / mean share) ** exponent.
ACTIVITY_EXPONENT = 0.75
#: A person's own evidence is "meaningful" (source "user") from this many deliveries on
#: the channel, or this many distinct active clock hours (plain counts, whatever their
#: age: a short memory weighs old evidence less, it does not make it less).
MIN_USER_DELIVERIES = 5.0
MIN_USER_ACTIVITY = 10.0
#: Pseudo-observations of the priors where nothing was learnt (``Tuning.strength``).
DEFAULT_STRENGTH = 8.0
#: Open rate assumed for a channel the priors know nothing about.
DEFAULT_RATE = 0.1
#: Pseudo-observations of the Thompson-style draw used when exploring.
EXPLORE_CONCENTRATION = 20.0

_SECONDS_PER_DAY = 86_400
_RATE_FLOOR = 1e-4
_JSON_VERSION = 1


# --- profile -----------------------------------------------------------------------------


def _zeros() -> np.ndarray:
    return np.zeros(HOURS, dtype=np.float64)


def _week_zeros() -> np.ndarray:
    return np.zeros(WEEK_HOURS, dtype=np.float64)


def _hours(values: object, what: str, size: int = HOURS) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (size,):
        raise ValueError(f"{what} must have {size} values, got shape {array.shape}")
    return array


@dataclass
class ChannelCounts:
    """One channel's recency-weighted counts, indexed by the person's LOCAL hour 0..23,
    and the same counts by LOCAL hour of the week (``weekly_*``, float64[168], index
    ``weekday * 24 + hour``, Monday 0), whose sums over the days are the hourly arrays
    (for counts that recorded the week: profiles from before it have weekly zeros).

    ``opens`` and ``clicks`` are non-automated and sit at the hour (and weekday) of the
    delivery they answer (at their own when no delivery precedes them within 48 h).
    ``sent`` and ``answered`` are the same deliveries and engagements counted plainly,
    without recency weights: how much evidence there is, whatever its age.
    """

    deliveries: np.ndarray = field(default_factory=_zeros)
    opens: np.ndarray = field(default_factory=_zeros)
    clicks: np.ndarray = field(default_factory=_zeros)
    weekly_deliveries: np.ndarray = field(default_factory=_week_zeros)
    weekly_opens: np.ndarray = field(default_factory=_week_zeros)
    weekly_clicks: np.ndarray = field(default_factory=_week_zeros)
    sent: float = 0.0
    answered: float = 0.0

    def engaged(self) -> np.ndarray:
        """Engagements per delivery hour: opens, or clicks where a channel tracks more
        clicks than opens (SMS has no open tracking; a click implies the read)."""
        return np.maximum(self.opens, self.clicks)

    def weekly_engaged(self) -> np.ndarray:
        """:meth:`engaged` per hour of the week."""
        return np.maximum(self.weekly_opens, self.weekly_clicks)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self.deliveries,
            self.opens,
            self.clicks,
            self.weekly_deliveries,
            self.weekly_opens,
            self.weekly_clicks,
        )

    def mapped(self, change: Callable[[np.ndarray], np.ndarray]) -> ChannelCounts:
        """Every weighted array through ``change``; the plain counts as they are."""
        return ChannelCounts(
            *(change(values) for values in self._arrays()), sent=self.sent, answered=self.answered
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChannelCounts):
            return NotImplemented
        return (self.sent, self.answered) == (other.sent, other.answered) and all(
            np.array_equal(a, b) for a, b in zip(self._arrays(), other._arrays(), strict=True)
        )


@dataclass
class EngagementProfile:
    """What send-time and channel answers need to know about one person.

    ``channels`` holds the channels of ``MESSAGE_CHANNELS`` the person has any counted
    message event on (a missing channel means all zeros); ``activity`` counts activity
    events (:data:`ACTIVITY_EVENT_TYPES`) by local hour; ``timezone`` is the person's
    latest known IANA zone, ``None`` when no event named one. Counts are recency-weighted
    relative to ``as_of`` (epoch seconds; the person's latest event, where weights are 1;
    None for an empty profile).
    """

    timezone: str | None = None
    channels: dict[str, ChannelCounts] = field(default_factory=dict)
    activity: np.ndarray = field(default_factory=_zeros)
    as_of: float | None = None
    weekly_activity: np.ndarray = field(default_factory=_week_zeros)
    """``activity`` by local hour of the week (zeros in profiles written before it)."""
    active_hours: float = 0.0
    """Distinct clock hours with activity, counted plainly (no recency weights)."""

    def channel(self, name: str) -> ChannelCounts:
        """The counts of channel ``name`` (zeros when the person has none)."""
        return self.channels.get(name) or ChannelCounts()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EngagementProfile):
            return NotImplemented
        return (
            self.timezone == other.timezone
            and self.as_of == other.as_of
            and self.channels == other.channels
            and np.array_equal(self.activity, other.activity)
            and np.array_equal(self.weekly_activity, other.weekly_activity)
            and self.active_hours == other.active_hours
        )

    def to_json(self) -> str:
        """Compact JSON (6 significant digits; all-zero arrays and channels left out).

        Keys: ``d``/``o``/``c`` the hourly deliveries, opens and clicks of a channel,
        ``wd``/``wo``/``wc`` the same per hour of the week, sparse, ``a``/``wa`` the
        activity by hour of the day and of the week, ``t`` the ``as_of`` time (``{"hour of the
        week": value}`` for the non-zero ones; absent in profiles written before the week
        was kept: they load as zeros)."""
        channels = {}
        for name, counts in self.channels.items():
            parts: dict[str, object] = {
                key: _compact(values)
                for key, values in (
                    ("d", counts.deliveries),
                    ("o", counts.opens),
                    ("c", counts.clicks),
                )
                if np.any(values)
            }
            parts.update(
                (key, _sparse(values))
                for key, values in (
                    ("wd", counts.weekly_deliveries),
                    ("wo", counts.weekly_opens),
                    ("wc", counts.weekly_clicks),
                )
                if np.any(values)
            )
            if counts.sent or counts.answered:
                parts["n"] = [_number(counts.sent), _number(counts.answered)]
            if parts:
                channels[name] = parts
        payload: dict[str, object] = {"v": _JSON_VERSION}
        if self.timezone:
            payload["tz"] = self.timezone
        if self.as_of is not None:
            payload["t"] = int(self.as_of)
        if channels:
            payload["ch"] = channels
        if np.any(self.activity):
            payload["a"] = _compact(self.activity)
        if np.any(self.weekly_activity):
            payload["wa"] = _sparse(self.weekly_activity)
        if self.active_hours:
            payload["n"] = _number(self.active_hours)
        return json.dumps(payload, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> EngagementProfile:
        """The profile :meth:`to_json` wrote (equal up to its rounding).

        Raises
        ------
        ValueError
            when ``text`` is not such a profile.
        """
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"engagement profile is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ValueError("engagement profile must be a JSON object")

        def array(raw: Mapping, key: str, what: str) -> np.ndarray:
            return _hours(raw[key], what) if key in raw else _zeros()

        def weekly(raw: Mapping, key: str, what: str) -> np.ndarray:
            if key not in raw:
                return _week_zeros()
            if not isinstance(raw[key], Mapping):  # a dense list is read too
                return _hours(raw[key], what, WEEK_HOURS)
            values = _week_zeros()
            for at, value in raw[key].items():
                try:
                    index, number = int(at), float(value)
                except (TypeError, ValueError):
                    index, number = -1, 0.0
                if not 0 <= index < WEEK_HOURS:
                    raise ValueError(f"{what}: bad entry {at!r}: {value!r}")
                values[index] = number
            return values

        def plain(raw: Mapping, at: int, what: str) -> float:
            values = raw.get("n", [])
            try:
                return float(values[at]) if len(values) > at else 0.0
            except (TypeError, ValueError):
                raise ValueError(f"{what}: not numbers: {values!r}") from None

        channels = {
            str(name): ChannelCounts(
                deliveries=array(raw, "d", f"{name} deliveries"),
                opens=array(raw, "o", f"{name} opens"),
                clicks=array(raw, "c", f"{name} clicks"),
                weekly_deliveries=weekly(raw, "wd", f"{name} weekly deliveries"),
                weekly_opens=weekly(raw, "wo", f"{name} weekly opens"),
                weekly_clicks=weekly(raw, "wc", f"{name} weekly clicks"),
                sent=plain(raw, 0, f"{name} plain counts"),
                answered=plain(raw, 1, f"{name} plain counts"),
            )
            for name, raw in dict(payload.get("ch", {})).items()
        }
        return cls(
            timezone=payload.get("tz") or None,
            channels=channels,
            activity=array(payload, "a", "activity"),
            as_of=float(payload["t"]) if payload.get("t") is not None else None,
            weekly_activity=weekly(payload, "wa", "weekly activity"),
            active_hours=plain({"n": [payload.get("n", 0)]}, 0, "active hours"),
        )

    def merged(self, other: EngagementProfile) -> EngagementProfile:
        """Element-wise sums (align ``as_of`` first: :meth:`faded_to`); the time zone is
        this profile's when set, else ``other``'s; ``as_of`` the later one."""
        channels = {}
        for name in (*self.channels, *(c for c in other.channels if c not in self.channels)):
            mine, theirs = self.channel(name), other.channel(name)
            channels[name] = ChannelCounts(
                *(a + b for a, b in zip(mine._arrays(), theirs._arrays(), strict=True)),
                sent=mine.sent + theirs.sent,
                answered=mine.answered + theirs.answered,
            )
        return EngagementProfile(
            timezone=self.timezone or other.timezone,
            channels=channels,
            activity=self.activity + other.activity,
            weekly_activity=self.weekly_activity + other.weekly_activity,
            active_hours=self.active_hours + other.active_hours,
            as_of=max((t for t in (self.as_of, other.as_of) if t is not None), default=None),
        )

    def faded_to(
        self, as_of: float, half_life_days: float, activity_half_life_days: float | None = None
    ) -> EngagementProfile:
        """The profile with weights relative to the later moment ``as_of``: message counts
        times ``2 ** (-(as_of - self.as_of) / half_life)``, activity with its own
        half-life (default: the same). An empty profile only takes the new ``as_of``."""
        if self.as_of is None:
            return replace(self, as_of=as_of)
        age = max(as_of - self.as_of, 0.0) / _SECONDS_PER_DAY
        faded = self.scaled(
            2.0 ** (-age / half_life_days),
            2.0 ** (-age / (activity_half_life_days or half_life_days)),
        )
        faded.as_of = max(as_of, self.as_of)
        return faded

    def scaled(self, factor: float, activity_factor: float | None = None) -> EngagementProfile:
        """Message counts times ``factor``, activity times ``activity_factor`` (default:
        the same)."""
        active = factor if activity_factor is None else activity_factor
        return EngagementProfile(
            as_of=self.as_of,
            timezone=self.timezone,
            channels={
                name: c.mapped(lambda values: values * factor) for name, c in self.channels.items()
            },
            activity=self.activity * active,
            weekly_activity=self.weekly_activity * active,
            active_hours=self.active_hours,
        )


def _compact(values: np.ndarray) -> list[float | int]:
    return [0 if v == 0 else float(f"{v:.6g}") for v in np.asarray(values, dtype=np.float64)]


def _number(value: float) -> float | int:
    """``value`` with 6 significant digits, an integer when it is one."""
    rounded = float(f"{value:.6g}")
    return int(rounded) if rounded.is_integer() else rounded


def _sparse(values: np.ndarray) -> dict[str, float]:
    """The non-zero entries as ``{str(index): value}`` (6 significant digits)."""
    values = np.asarray(values, dtype=np.float64)
    return {str(i): float(f"{values[i]:.6g}") for i in np.flatnonzero(values)}


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    """The zone called ``name``; None for "" and names this machine does not know."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def is_known_zone(name: str) -> bool:
    """Whether ``name`` is an IANA zone this machine loads (cached; "" is not)."""
    return _zone(name) is not None


def local_hour(timestamp: float, zone: str) -> int:
    """Local wall-clock hour (0..23) of epoch seconds ``timestamp`` in IANA ``zone``."""
    tz = _zone(zone)
    if tz is None:
        raise ValueError(f"{zone!r} is not a known IANA time zone")
    return datetime.fromtimestamp(timestamp, tz).hour


def latest_zone(events: Iterable[tuple[int, str]]) -> str | None:
    """The zone of the latest ``(timestamp, zone)`` naming a known zone (on equal times the
    greatest name, so that the choice does not depend on order); None when none does."""
    best: tuple[int, str] | None = None
    for ts, zone in events:
        if zone and _zone(zone) is not None and (best is None or (ts, zone) > best):
            best = (ts, zone)
    return None if best is None else best[1]


def profile_from_events(
    events: Iterable[tuple[str, str, int, str, bool]],
    half_life_days: float,
    default_timezone: str = "UTC",
    activity_half_life_days: float | None = None,
) -> EngagementProfile:
    """One person's profile from their events, in any order.

    Parameters
    ----------
    events
        ``(channel, event_type, epoch_seconds, timezone, automated)``; channel and time
        zone may be empty. Other event types (dislike, ...) only tell the time zone.
    half_life_days
        Recency: an event weighs ``2 ** (-(latest - ts) / (half_life_days * 86400))``,
        ``latest`` being the person's latest event (the profile's ``as_of``). Relative to
        the person's own latest event, not to the clock: someone who has been quiet for a
        year keeps the evidence of their habits (newer habits still outweigh older ones).
    activity_half_life_days
        The same for activity events (default: ``half_life_days``): how fast a person's
        hours of being around go stale need not match how fast message habits do.
    default_timezone
        Zone of events when neither they nor any other event of the person names one.

    A delivery counts at its local hour (and local hour of the week) on its channel; a
    non-automated ``message_open`` (``message_click``) counts, with its own weight, at the
    local hour and weekday of the latest delivery on the same channel at most 48 h before
    it (same second included; on equal times the greatest hour, then weekday), else at its
    own. Session starts and item events (:data:`ACTIVITY_EVENT_TYPES`)
    count as activity at their local hour, on any channel. The zone of an event is its
    own, else the person's latest known zone, else ``default_timezone``. Events flagged
    automated are ignored, deliveries excepted.
    """
    rows = [
        (str(channel or ""), str(kind), int(ts), str(zone or ""), bool(automated))
        for channel, kind, ts, zone, automated in events
    ]
    known = latest_zone((ts, zone) for _, _, ts, zone, _ in rows)
    fallback = known or default_timezone
    scale = half_life_days * _SECONDS_PER_DAY
    active_scale = (activity_half_life_days or half_life_days) * _SECONDS_PER_DAY
    now = max((ts for _, _, ts, _, _ in rows), default=None)
    if now is None:
        return EngagementProfile()

    def when_and_weight(ts: int, zone: str, scale: float = scale) -> tuple[int, int, float]:
        """Local hour, local weekday and recency weight."""
        name = zone if _zone(zone) is not None else fallback
        local = datetime.fromtimestamp(ts, _zone(name))
        return local.hour, local.weekday(), 2.0 ** (-(now - ts) / scale)

    channels: dict[str, ChannelCounts] = {}
    activity = _zeros()
    weekly_activity = _week_zeros()
    # Per channel, deliveries sorted by time with their local hours and weekdays.
    sent: dict[str, list[tuple[int, int, int]]] = {}
    answers: list[tuple[str, str, int, str]] = []
    active: dict[int, tuple[int, str]] = {}  # clock hour -> its earliest activity event
    for channel, kind, ts, zone, automated in rows:
        if kind == "message_delivered" and channel in MESSAGE_CHANNELS:
            hour, day, weight = when_and_weight(ts, zone)
            # A new ChannelCounts is six arrays: made on a channel's first event only.
            counts = channels.get(channel) or channels.setdefault(channel, ChannelCounts())
            counts.deliveries[hour] += weight
            counts.weekly_deliveries[day * HOURS + hour] += weight
            counts.sent += 1
            sent.setdefault(channel, []).append((ts, hour, day))
        elif automated:
            continue
        if kind in ("message_open", "message_click") and channel in MESSAGE_CHANNELS:
            answers.append((channel, kind, ts, zone))
        if kind in ACTIVITY_EVENT_TYPES:
            # Keep the earliest, ties to the smallest zone name (as training does).
            first = active.get(ts // 3600)
            if first is None or (ts, zone) < first:
                active[ts // 3600] = (ts, zone)
    # A burst of events in one clock hour is one sign of being around, not fifty.
    plain: dict[str, list[int]] = {channel: [0, 0] for channel, _, _, _ in answers}
    for ts, zone in active.values():
        hour, day, weight = when_and_weight(ts, zone, active_scale)
        activity[hour] += weight
        weekly_activity[day * HOURS + hour] += weight
    for deliveries in sent.values():
        deliveries.sort()
    for channel, kind, ts, zone in answers:
        hour, day, weight = when_and_weight(ts, zone)
        deliveries = sent.get(channel, [])
        # The last delivery at or before ts: (ts, 24) sorts after every (ts, hour, day).
        at = bisect.bisect_right(deliveries, (ts, HOURS)) - 1
        if at >= 0 and ts - deliveries[at][0] <= ATTRIBUTION_WINDOW_SECONDS:
            _, hour, day = deliveries[at]
        counts = channels.get(channel) or channels.setdefault(channel, ChannelCounts())
        opened = kind == "message_open"
        (counts.opens if opened else counts.clicks)[hour] += weight
        (counts.weekly_opens if opened else counts.weekly_clicks)[day * HOURS + hour] += weight
        plain[channel][0 if opened else 1] += 1
    for channel, (opened, clicked) in plain.items():
        channels[channel].answered = float(max(opened, clicked))
    ordered = {name: channels[name] for name in MESSAGE_CHANNELS if name in channels}
    return EngagementProfile(
        timezone=known,
        channels=ordered,
        activity=activity,
        as_of=now,
        weekly_activity=weekly_activity,
        active_hours=float(len(active)),
    )


def served_profile(
    published: Iterable[str],
    published_until: int | None,
    live: Iterable[tuple[str, str, int, str, bool]],
    half_life_days: float,
    default_timezone: str = "UTC",
    activity_half_life_days: float | None = None,
) -> EngagementProfile:
    """The profile a request is answered from: the published profiles (JSON, as training
    wrote them; ``published_until`` is the data end they cover) and every live event (as
    :func:`profile_from_events` takes them) that they do not cover, weighted relative to
    the latest of them all (half-lives as :func:`profile_from_events`)."""
    fresh = [e for e in live if published_until is None or e[2] > published_until]
    parts = [profile_from_events(fresh, half_life_days, default_timezone, activity_half_life_days)]
    for text in published:
        part = EngagementProfile.from_json(text)
        if part.as_of is None and published_until is not None:  # written before as_of
            part.as_of = float(published_until)
        parts.append(part)
    parts = [part for part in parts if part.as_of is not None or part.channels]
    if len(parts) == 1 and parts[0].as_of is not None:
        return parts[0]  # the usual case: a published profile and nothing new
    latest = max((p.as_of for p in parts if p.as_of is not None), default=None)
    profile = EngagementProfile()
    for part in parts:
        if latest is not None:
            part = part.faded_to(latest, half_life_days, activity_half_life_days)
        profile = profile.merged(part)
    return profile


# --- priors ------------------------------------------------------------------------------

#: The learnt mix: message evidence, activity, day type and priors, as tuned.
LEARNT_MIX = "learnt_mix"
#: The plain rule of the person's own habit: the hours they were around most, all days.
OWN_HOURS = "own_hours"
#: The same per kind of day (weekdays, weekends).
OWN_HOURS_BY_DAY_TYPE = "own_hours_by_day_type"
#: What an answer can rest on (``Tuning.rule``).
RULES = (LEARNT_MIX, OWN_HOURS, OWN_HOURS_BY_DAY_TYPE)


@dataclass(frozen=True)
class Tuning:
    """How far to trust a person's own evidence: learnt per training run from the data
    (``training.engagement.learn_tuning``: empirical Bayes and a validation time split),
    never tuned by hand on one generator. The defaults are only for bundles from before.
    """

    strength: float = DEFAULT_STRENGTH
    """Pseudo-deliveries per hour slot of the rate prior."""
    activity_strength: float = DEFAULT_STRENGTH
    """Pseudo-events of the activity share prior (the segment's or everybody's share)."""
    activity_exponent: float = ACTIVITY_EXPONENT
    """How strongly activity shapes the prior rate: (share / mean) ** exponent."""
    activity_smoothing_hours: float = SMOOTHING_SD_HOURS
    """Standard deviation (hours) of the kernel spreading activity to nearby hours."""
    day_type_strength: float = DEFAULT_STRENGTH
    """Pseudo-events of the person's all-days activity share behind each day type's
    (weekdays, weekends): large ignores the difference, small trusts each day type."""
    half_life_days: float | None = None
    """Recency half-life of message counts; None: the service's configured one."""
    activity_half_life_days: float | None = None
    """Recency half-life of activity counts; None: as ``half_life_days``."""
    channel_strength: dict[str, float] = field(default_factory=dict)
    """Per channel, pseudo-deliveries of the person's overall open rate prior (empirical
    Bayes, beta-binomial); absent: ``strength``."""
    curve_exponent: float = 1.0
    """How much of everybody's hour-by-hour rate shapes a person's prior: the curve's
    shape (its ratio to its mean) to this power; 0: a flat curve, no population pull
    towards the hours everybody answers at."""
    rule: str = LEARNT_MIX
    """Which answer training chose (:data:`RULES`): the learnt mix of message evidence,
    activity, day type and priors, or a plain rule of the person's own habit (the same
    arithmetic with long memories, no population pull and no delivery evidence). Said in
    every answer (``evidence_detail.rule``)."""

    def recency(self, default_days: float) -> tuple[float, float]:
        """``(message, activity)`` half-lives in days, ``default_days`` where not learnt."""
        message = self.half_life_days or default_days
        return message, self.activity_half_life_days or message

    def to_dict(self) -> dict:
        out = {
            "strength": float(self.strength),
            "activity_strength": float(self.activity_strength),
            "activity_exponent": float(self.activity_exponent),
            "activity_smoothing_hours": float(self.activity_smoothing_hours),
            "day_type_strength": float(self.day_type_strength),
            "channel_strength": {c: float(v) for c, v in self.channel_strength.items()},
            "curve_exponent": float(self.curve_exponent),
            "rule": self.rule,
        }
        if self.half_life_days is not None:
            out["half_life_days"] = float(self.half_life_days)
        if self.activity_half_life_days is not None:
            out["activity_half_life_days"] = float(self.activity_half_life_days)
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> Tuning:
        """The tuning :meth:`to_dict` wrote; missing keys take the defaults.

        Raises
        ------
        ValueError
            on a value out of its range.
        """

        def number(key: str, default: float | None) -> float | None:
            value = d.get(key, default)
            return None if value is None else float(value)

        tuning = cls(
            strength=number("strength", DEFAULT_STRENGTH),
            activity_strength=number("activity_strength", DEFAULT_STRENGTH),
            activity_exponent=number("activity_exponent", ACTIVITY_EXPONENT),
            activity_smoothing_hours=number("activity_smoothing_hours", SMOOTHING_SD_HOURS),
            day_type_strength=number("day_type_strength", DEFAULT_STRENGTH),
            half_life_days=number("half_life_days", None),
            activity_half_life_days=number("activity_half_life_days", None),
            channel_strength={str(c): float(v) for c, v in d.get("channel_strength", {}).items()},
            curve_exponent=number("curve_exponent", 1.0),
            rule=str(d.get("rule", LEARNT_MIX)),
        )
        if tuning.rule not in RULES:
            raise ValueError(f"tuning rule must be one of {', '.join(RULES)}, got {tuning.rule!r}")
        if not 0 <= tuning.curve_exponent <= 1:
            raise ValueError(
                f"tuning curve_exponent must be in [0, 1], got {tuning.curve_exponent}"
            )
        for name in (
            "strength",
            "activity_strength",
            "activity_smoothing_hours",
            "day_type_strength",
        ):
            if not getattr(tuning, name) > 0:
                raise ValueError(f"tuning {name} must be positive, got {getattr(tuning, name)}")
        return tuning


@dataclass
class Priors:
    """What training learnt over everybody; JSON-serialisable (bundle metadata).

    Rates are open rates per delivery; hour lists have 24 entries indexed by local hour.
    Segments are IANA time zones, present only where training had enough data.
    """

    channel_rate: dict[str, float]
    """Global open rate per delivery, per channel."""
    channel_hour_rate: dict[str, list[float]]
    """Global rate per channel per local hour (smoothed, shrunk to ``channel_rate``)."""
    segment_hour_rate: dict[str, dict[str, list[float]]]
    """Segment -> channel -> rate per local hour."""
    activity: list[float]
    """Global share of activity per local hour (sums to 1)."""
    segment_activity: dict[str, list[float]]
    """Segment -> share of activity per local hour."""
    tuning: Tuning = field(default_factory=Tuning)
    """How far to trust each person's own evidence (learnt)."""
    fatigue: list[float] = field(default_factory=list)
    """Fatigue learnt from the log: entry k multiplies a channel's score for a person whose
    last k deliveries on it went unanswered (the last entry: k or more). Empty: none
    (``training.engagement.learn_fatigue``)."""

    @classmethod
    def flat(cls, rate: float = DEFAULT_RATE) -> Priors:
        """Priors that know nothing: every channel and hour at ``rate``, activity uniform
        (no events to learn from, or a bundle from before priors were learnt)."""
        return cls(
            channel_rate={c: rate for c in MESSAGE_CHANNELS},
            channel_hour_rate={c: [rate] * HOURS for c in MESSAGE_CHANNELS},
            segment_hour_rate={},
            activity=[1.0 / HOURS] * HOURS,
            segment_activity={},
        )

    @property
    def strength(self) -> float:
        """Pseudo-deliveries per hour slot of the rate prior."""
        return self.tuning.strength

    def to_dict(self) -> dict:
        return {
            "channel_rate": {c: float(r) for c, r in self.channel_rate.items()},
            "channel_hour_rate": {c: _floats(r) for c, r in self.channel_hour_rate.items()},
            "segment_hour_rate": {
                s: {c: _floats(r) for c, r in by_channel.items()}
                for s, by_channel in self.segment_hour_rate.items()
            },
            "activity": _floats(self.activity),
            "segment_activity": {s: _floats(a) for s, a in self.segment_activity.items()},
            "tuning": self.tuning.to_dict(),
            "fatigue": _floats(self.fatigue),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Priors:
        """Priors from :meth:`to_dict`'s output (e.g. after a JSON round trip); priors
        written before the tuning was learnt (a lone ``strength``) read with defaults.

        Raises
        ------
        ValueError
            when an hour list does not have 24 values, a key is missing or a tuning value
            is out of range.
        """
        try:
            raw_tuning = d.get("tuning")
            if raw_tuning is None:
                raw_tuning = {"strength": d.get("strength", DEFAULT_STRENGTH)}
                raw_tuning["activity_strength"] = raw_tuning["strength"]
            return cls(
                channel_rate={str(c): float(r) for c, r in d["channel_rate"].items()},
                channel_hour_rate={
                    str(c): _hour_list(r, f"channel_hour_rate[{c}]")
                    for c, r in d["channel_hour_rate"].items()
                },
                segment_hour_rate={
                    str(s): {
                        str(c): _hour_list(r, f"segment_hour_rate[{s}][{c}]")
                        for c, r in by_channel.items()
                    }
                    for s, by_channel in d.get("segment_hour_rate", {}).items()
                },
                activity=_hour_list(d["activity"], "activity"),
                segment_activity={
                    str(s): _hour_list(a, f"segment_activity[{s}]")
                    for s, a in d.get("segment_activity", {}).items()
                },
                tuning=Tuning.from_dict(raw_tuning),
                fatigue=_floats(d.get("fatigue", [])),
            )
        except KeyError as exc:
            raise ValueError(f"priors lack {exc.args[0]!r}") from None


def _floats(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values]


def _hour_list(values: Iterable[float], what: str) -> list[float]:
    return _floats(_hours(list(values), what))


# --- the model ---------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _smoothing_matrix(sd_hours: float, size: int = HOURS) -> np.ndarray:
    half = size // 2
    distance = (np.arange(size)[:, None] - np.arange(size)[None, :] + half) % size - half
    kernel = np.exp(-0.5 * (distance / sd_hours) ** 2)
    kernel = kernel / kernel.sum(axis=1, keepdims=True)
    kernel.setflags(write=False)
    return kernel


@lru_cache(maxsize=64)
def _pooling_matrix(sd_hours: float) -> np.ndarray:
    # The smoothing kernel with weight 1 at the hour itself: a delivery one hour away is
    # worth exp(-1 / (2 sd^2)) of one in the hour (0.8 at sd 1.5 h), so an hour's evidence
    # is its neighbourhood's, compared with `strength` pseudo-deliveries per hour.
    kernel = _smoothing_matrix(sd_hours)
    pooled = kernel / kernel[0, 0]
    pooled.setflags(write=False)
    return pooled


def smooth(counts: np.ndarray, sd_hours: float = SMOOTHING_SD_HOURS) -> np.ndarray:
    """Circular Gaussian smoothing over the last axis (24 hours); totals are kept."""
    return np.asarray(counts, dtype=np.float64) @ _smoothing_matrix(float(sd_hours))


def pool(counts: np.ndarray, sd_hours: float = SMOOTHING_SD_HOURS) -> np.ndarray:
    """Evidence near each hour: the counts weighted by the Gaussian kernel, 1 at the hour
    itself (circular, over the last axis). Rates of pooled counts are smoothed rates."""
    return np.asarray(counts, dtype=np.float64) @ _pooling_matrix(float(sd_hours))


def channel_rate(priors: Priors, channel: str) -> float:
    """Everybody's engagement rate per delivery on ``channel`` (:data:`DEFAULT_RATE` where
    the priors know none)."""
    rate = priors.channel_rate.get(channel)
    return DEFAULT_RATE if rate is None or not math.isfinite(rate) else float(rate)


def _check_channel(channel: str) -> None:
    if channel not in MESSAGE_CHANNELS:
        raise ValueError(f"channel {channel!r} is not one of {', '.join(MESSAGE_CHANNELS)}")


def activity_prior(priors: Priors, segment: str | None) -> np.ndarray:
    """The share of activity per local hour that a person without any is assumed to have:
    the segment's learnt share, else everybody's (float64[24], sums to 1)."""
    raw = priors.segment_activity.get(segment) if segment else None
    share = np.asarray(raw if raw is not None else priors.activity, dtype=np.float64)
    if share.shape != (HOURS,) or not np.isfinite(share).all() or share.sum() <= 0:
        return np.full(HOURS, 1.0 / HOURS)
    return np.maximum(share, 0.0) / share.sum()


def activity_share(activity: np.ndarray, tuning: Tuning, prior: np.ndarray) -> np.ndarray:
    """The person's share of activity per local hour: their counts smoothed over nearby
    hours, shrunk to ``prior`` with ``tuning.activity_strength`` pseudo-events. Works on
    any leading axes (the last one is the 24 hours)."""
    activity = np.maximum(np.asarray(activity, dtype=np.float64), 0.0)
    smoothed = smoothed_counts(activity, tuning.activity_smoothing_hours)
    return shrunk_share(smoothed, tuning.activity_strength, prior)


def smoothed_counts(counts: np.ndarray, sd_hours: float) -> tuple[np.ndarray, np.ndarray]:
    """(``counts`` smoothed over nearby hours, their total over the day kept as an axis):
    the part of :func:`activity_share` and :func:`day_type_share` that no strength
    changes, so a tuning grid works it out once per smoothing."""
    return smooth(counts, sd_hours), counts.sum(axis=-1, keepdims=True)


def shrunk_share(
    smoothed: tuple[np.ndarray, np.ndarray], strength: float, toward: np.ndarray
) -> np.ndarray:
    """Smoothed counts (:func:`smoothed_counts`) as a share of the day, shrunk to
    ``toward`` with ``strength`` pseudo-events."""
    counts, total = smoothed
    return (counts + strength * toward) / (total + strength)


def awake_factor(activity: np.ndarray, priors: Priors, segment: str | None) -> np.ndarray:
    """How much likelier than average the person is to be around in each local hour:
    :func:`activity_share` (towards the segment's, else everybody's share) raised to
    ``tuning.activity_exponent`` and normalised to mean 1 over the day. Any leading axes."""
    share = activity_share(activity, priors.tuning, activity_prior(priors, segment))
    return awake_from_share(share, priors.tuning.activity_exponent)


def prior_curve(priors: Priors, channel: str, segment: str | None) -> np.ndarray:
    """Everybody's engagement rate per delivery by local hour on ``channel``: the
    segment's curve, else the global one, else the channel's flat rate (float64[24]);
    its shape tempered by ``tuning.curve_exponent``."""
    by_channel = priors.segment_hour_rate.get(segment, {}) if segment else {}
    curve = by_channel.get(channel) or priors.channel_hour_rate.get(channel)
    if not curve:
        return np.full(HOURS, channel_rate(priors, channel))
    curve = np.asarray(curve, dtype=np.float64)
    exponent = priors.tuning.curve_exponent
    if exponent == 1.0:
        return curve
    mean = curve.mean()
    if mean <= 0:
        return curve
    return mean * (np.maximum(curve, 0.0) / mean) ** exponent


def posterior_rates(
    deliveries: np.ndarray,
    engaged: np.ndarray,
    prior: np.ndarray,
    base: float | np.ndarray,
    tuning: Tuning,
) -> np.ndarray:
    """Beta posterior mean of P(engagement | delivery in local hour h) over the last axis
    (24 hours; any leading axes, e.g. people).

    Prior mean per hour: ``prior`` (the curve times the awake factor) times the person's
    lift on the channel, their engagements against what ``prior`` expects at the hours
    they were sent, with ``strength`` deliveries' worth of "as expected" (rate ``base``:
    a number, or one per row with the leading axes and a last axis of 1) added to both
    sides; prior weight ``tuning.strength`` pseudo-deliveries. Data: the deliveries and
    engagements pooled over neighbouring hours (:func:`pool`).
    """
    strength = tuning.strength
    base = np.maximum(base, 1e-3)
    deliveries = np.maximum(np.asarray(deliveries, dtype=np.float64), 0.0)
    engaged = np.maximum(np.asarray(engaged, dtype=np.float64), 0.0)
    expected = np.sum(deliveries * prior, axis=-1, keepdims=True)
    lift = (engaged.sum(axis=-1, keepdims=True) + strength * base) / (expected + strength * base)
    mean = np.clip(prior * lift, _RATE_FLOOR, 1.0 - _RATE_FLOOR)
    return (pool(engaged) + strength * mean) / (pool(deliveries) + strength)


def _day_rates(
    activity: np.ndarray,
    deliveries: np.ndarray,
    engaged: np.ndarray,
    curve: np.ndarray,
    activity_prior_share: np.ndarray,
    base: float | np.ndarray,
    tuning: Tuning,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`hour_probabilities`' rates, any leading axes: the Beta posterior rates
    (:func:`posterior_rates`) whose prior is ``curve`` (:func:`prior_curve`) times the
    awake factor of ``activity`` (its :func:`activity_share` towards
    ``activity_prior_share``), clipped to [0, 1]. Returns (probabilities, activity share,
    awake factor): the week's layer (:func:`_week_table`) starts from all three."""
    share = activity_share(activity, tuning, activity_prior_share)
    awake = awake_from_share(share, tuning.activity_exponent)
    rates = posterior_rates(deliveries, engaged, curve * awake, base, tuning)
    return np.clip(rates, 0.0, 1.0), share, awake


def _source(
    delivered: float, active: float, channel: str, priors: Priors, segment: str | None
) -> tuple[str, int]:
    """:func:`hour_probabilities`' source and evidence, from the person's plain counts of
    deliveries on ``channel`` and of active hours."""
    if delivered >= MIN_USER_DELIVERIES or active >= MIN_USER_ACTIVITY:
        source = "user"
    elif segment and (
        channel in priors.segment_hour_rate.get(segment, {}) or segment in priors.segment_activity
    ):
        source = "segment_prior"
    else:
        source = "global_prior"
    return source, int(round(delivered + active))


def hour_probabilities(
    profile: EngagementProfile, channel: str, priors: Priors, segment: str | None
) -> tuple[np.ndarray, str, int]:
    """P(engagement | delivery in local hour h) for h = 0..23, its source and evidence.

    The delivery-conditioned Beta posterior rate per hour (:func:`posterior_rates`, prior
    curve :func:`prior_curve`) whose prior mean carries the awake factor from activity
    (:func:`awake_factor`), clipped to [0, 1]. ``segment`` is the person's time zone (the
    priors' segments are zones; None or an unknown one: global priors).

    Returns
    -------
    probabilities
        float64[24].
    source
        ``"user"`` when the person has at least :data:`MIN_USER_DELIVERIES` deliveries
        on the channel or :data:`MIN_USER_ACTIVITY` distinct active hours (plain counts);
        else ``"segment_prior"`` when the priors have that segment, else
        ``"global_prior"``.
    evidence
        Deliveries on the channel plus distinct active hours (plain counts), rounded.

    Raises
    ------
    ValueError
        for a channel not in ``MESSAGE_CHANNELS``.
    """
    _check_channel(channel)
    counts = profile.channel(channel)
    probabilities, _, _ = _day_rates(
        profile.activity,
        counts.deliveries,
        counts.engaged(),
        prior_curve(priors, channel, segment),
        activity_prior(priors, segment),
        channel_rate(priors, channel),
        priors.tuning,
    )
    delivered, _, active = _plain_counts(profile, counts)
    return probabilities, *_source(delivered, active, channel, priors, segment)


#: Weekday indexes (Monday 0) of the weekend.
WEEKEND = (5, 6)


def by_day_type(weekly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weekday, weekend) hourly counts from weekly ones (last axis 168, any leading
    axes): the sums over Monday–Friday and over Saturday–Sunday."""
    weekly = np.asarray(weekly, dtype=np.float64)
    days = weekly.reshape(*weekly.shape[:-1], DAYS, HOURS)
    weekend = days[..., list(WEEKEND), :].sum(axis=-2)
    return days.sum(axis=-2) - weekend, weekend


def day_type_share(
    weekly_activity: np.ndarray, overall: np.ndarray, tuning: Tuning
) -> tuple[np.ndarray, np.ndarray]:
    """(weekday, weekend) activity shares: each day type's own activity, smoothed, shrunk
    towards the person's ``overall`` share (:func:`activity_share`) with
    ``tuning.day_type_strength`` pseudo-events. A day type without activity of its own is
    the overall share; much of it, its own. Any leading axes."""
    weekday, weekend = day_type_counts(weekly_activity, tuning.activity_smoothing_hours)
    strength = tuning.day_type_strength
    return shrunk_share(weekday, strength, overall), shrunk_share(weekend, strength, overall)


def day_type_counts(
    weekly_activity: np.ndarray, sd_hours: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(weekday, weekend) :func:`smoothed_counts` of weekly activity counts."""
    weekday, weekend = by_day_type(np.maximum(weekly_activity, 0.0))
    return smoothed_counts(weekday, sd_hours), smoothed_counts(weekend, sd_hours)


def awake_from_share(share: np.ndarray, exponent: float) -> np.ndarray:
    """``(share / mean share) ** exponent`` normalised to mean 1 over the last axis."""
    factor = (np.asarray(share) * HOURS) ** exponent
    return factor / factor.mean(axis=-1, keepdims=True)


def day_type_rates(
    day: np.ndarray,
    awake: np.ndarray,
    weekly_deliveries: np.ndarray,
    weekly_engaged: np.ndarray,
    weekly_activity: np.ndarray,
    overall_share: np.ndarray,
    tuning: Tuning,
) -> tuple[np.ndarray, np.ndarray]:
    """(weekday, weekend) rates per local hour: a second level over the all-days rates
    ``day`` (whose prior carried ``awake``). Per day type a Beta posterior whose prior mean
    is ``day`` times how much likelier the person is around at that hour on that day type
    than on an average day (:func:`day_type_share` against ``overall_share``), with
    ``tuning.strength`` pseudo-deliveries; data: that day type's deliveries and
    engagements pooled over neighbouring hours. Any leading axes."""
    out = []
    shares = day_type_share(weekly_activity, overall_share, tuning)
    sent = by_day_type(np.maximum(weekly_deliveries, 0.0))
    read = by_day_type(np.maximum(weekly_engaged, 0.0))
    strength = tuning.strength
    for k in range(2):
        mean = np.clip(
            day * awake_from_share(shares[k], tuning.activity_exponent) / awake,
            _RATE_FLOOR,
            1.0 - _RATE_FLOOR,
        )
        rate = (pool(read[k]) + strength * mean) / (pool(sent[k]) + strength)
        out.append(np.clip(rate, 0.0, 1.0))
    return out[0], out[1]


def week_probabilities(
    profile: EngagementProfile,
    channel: str,
    priors: Priors,
    segment: str | None,
    day: np.ndarray | None = None,
) -> np.ndarray:
    """P(engagement | delivery on local weekday d at local hour h): float64[7, 24],
    Monday row 0.

    Habits differ between weekdays and weekends (lie-ins, commutes), and a weekend has
    2/7 of the evidence, so the week is two day types, not seven days, and each is a
    second level over the all-days answer of :func:`hour_probabilities`
    (:func:`day_type_rates`): with little evidence about a day type, the all-days answer;
    with much, the day type's own. Profiles without weekly counts: every row the same.

    ``day`` is :func:`hour_probabilities`' answer when the caller has it already.

    Raises
    ------
    ValueError
        for a channel not in ``MESSAGE_CHANNELS``.
    """
    if day is None:
        day, _, _ = hour_probabilities(profile, channel, priors, segment)
    else:
        _check_channel(channel)
    counts = profile.channel(channel)
    if not _has_week(profile.weekly_activity, counts.weekly_deliveries, counts.weekly_engaged()):
        return np.tile(day, (DAYS, 1))
    tuning = priors.tuning
    overall = activity_share(profile.activity, tuning, activity_prior(priors, segment))
    return _week_table(
        day,
        awake_from_share(overall, tuning.activity_exponent),
        overall,
        counts.weekly_deliveries,
        counts.weekly_engaged(),
        profile.weekly_activity,
        tuning,
    )


def _has_week(
    weekly_activity: np.ndarray, weekly_deliveries: np.ndarray, weekly_engaged: np.ndarray
) -> np.ndarray:
    """Whether a person has weekly counts at all, over the leading axes (profiles written
    before the week was kept have none: their week is the day, every day)."""
    return (
        np.any(weekly_activity, axis=-1)
        | np.any(weekly_deliveries, axis=-1)
        | np.any(weekly_engaged, axis=-1)
    )


def _week_table(
    day: np.ndarray,
    awake: np.ndarray,
    overall_share: np.ndarray,
    weekly_deliveries: np.ndarray,
    weekly_engaged: np.ndarray,
    weekly_activity: np.ndarray,
    tuning: Tuning,
) -> np.ndarray:
    """:func:`week_probabilities` from :func:`_day_rates`' answer: the day-type rates
    (:func:`day_type_rates`) laid out over the week, weekday rows then the weekend's. Any
    leading axes; the last two are (7 days, 24 hours)."""
    weekday, weekend = day_type_rates(
        day, awake, weekly_deliveries, weekly_engaged, weekly_activity, overall_share, tuning
    )
    table = np.repeat(weekday[..., None, :], DAYS, axis=-2)
    table[..., list(WEEKEND), :] = weekend[..., None, :]
    return table


def channel_score(
    engaged: np.ndarray | float,
    delivered: np.ndarray | float,
    rate: np.ndarray | float,
    strength: float,
) -> np.ndarray | float:
    """A person's posterior engagement rate per delivery on a channel: ``engaged`` of
    ``delivered`` (recency-weighted), shrunk to the channel's ``rate`` with ``strength``
    pseudo-deliveries (a Beta posterior mean). Scalars or arrays alike."""
    return (engaged + strength * rate) / (delivered + strength)


def fatigue_factor(priors: Priors, unanswered: int) -> float:
    """What ``unanswered`` deliveries in a row do to a channel's score (1: nothing)."""
    if not priors.fatigue or unanswered <= 0:
        return 1.0
    return float(priors.fatigue[min(unanswered, len(priors.fatigue) - 1)])


def rank_channels(
    profile: EngagementProfile, priors: Priors, unanswered: Mapping[str, int] | None = None
) -> list[tuple[str, float, int]]:
    """``(channel, score, evidence)`` for every channel of ``MESSAGE_CHANNELS``, best first.

    ``score`` is the person's posterior engagement rate per delivery on the channel, a
    Beta posterior mean shrunk to ``priors.channel_rate`` with the channel's learnt
    pseudo-deliveries (``tuning.channel_strength``, else ``tuning.strength``): opens per
    delivery, not opens, since a brand that sends mostly email gets mostly email opens
    from everybody; times the learnt fatigue of the person's latest deliveries on it that
    went unanswered (``unanswered``: channel → how many in a row, newest back).
    ``evidence`` is the deliveries (plain count). Ties keep the order of
    ``MESSAGE_CHANNELS``.
    """
    return channel_rankings([profile], priors, [unanswered])[0]


#: Position of each message channel in ``MESSAGE_CHANNELS`` (the axis of channel arrays).
_CHANNEL_AT = {channel: n for n, channel in enumerate(MESSAGE_CHANNELS)}


def channel_rankings(
    profiles: Sequence[EngagementProfile],
    priors: Priors,
    unanswered: Sequence[Mapping[str, int] | None] | None = None,
) -> list[list[tuple[str, float, int]]]:
    """:func:`rank_channels` of each of ``profiles`` (``unanswered``: one mapping or None
    per profile), scored together in arrays of (people, channels, hours): a campaign page
    at once. Each ranking is the one :func:`rank_channels` gives that person alone."""
    people, width = len(profiles), len(MESSAGE_CHANNELS)
    deliveries = np.zeros((people, width, HOURS))
    engaged = np.zeros((people, width, HOURS))
    sent = np.zeros((people, width))
    fatigue = np.ones((people, width))
    tuning = priors.tuning
    for n, profile in enumerate(profiles):
        for name, counts in profile.channels.items():
            if (at := _CHANNEL_AT.get(name)) is not None:
                deliveries[n, at] = counts.deliveries
                engaged[n, at] = counts.engaged()
                sent[n, at] = counts.sent
        for name, times in ((unanswered[n] if unanswered else None) or {}).items():
            if (at := _CHANNEL_AT.get(name)) is not None:
                fatigue[n, at] = fatigue_factor(priors, times)
    delivered = _positive_sum(deliveries)
    strength = np.array([tuning.channel_strength.get(c, tuning.strength) for c in MESSAGE_CHANNELS])
    rate = np.array([channel_rate(priors, c) for c in MESSAGE_CHANNELS])
    score = channel_score(_positive_sum(engaged), delivered, rate, strength)
    scores = np.clip(score * fatigue, 0.0, 1.0)
    rankings = []
    for row, plain, weighted, order in zip(
        scores.tolist(), sent.tolist(), delivered.tolist(), _best_first(scores), strict=True
    ):
        rankings.append(
            [
                (MESSAGE_CHANNELS[c], row[c], int(round(_plain(plain[c], weighted[c]))))
                for c in order
            ]
        )
    return rankings


def _best_first(
    scores: np.ndarray, count: int | None = None, then: Sequence | None = None
) -> list[list[int]]:
    """Per row of ``scores`` (people, options): the positions of its ``count`` (None: all)
    best scores, best first, ties keeping their order, as Python's stable sort on
    ``-score`` (then on ``then``, the options' own order) ranks them. Rows holding NaN
    are sorted by Python itself: numpy puts NaN last, Python's comparisons do not."""
    if count == 1:
        order = np.argmax(scores, axis=-1)[:, None].tolist()
    else:
        order = np.argsort(-scores, axis=-1, kind="stable")[:, :count].tolist()
    for n in np.flatnonzero(np.isnan(scores).any(axis=-1)).tolist():
        keys = [-score for score in scores[n]]
        if then is not None:
            keys = list(zip(keys, then, strict=True))
        order[n] = sorted(range(len(keys)), key=keys.__getitem__)[:count]
    return order


# --- choosing slots ----------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A moment to send: ``send_at`` (UTC, tz-aware), the model's probability for its
    local hour, and that local hour."""

    send_at: datetime
    probability: float
    local_hour: int


def is_quiet(hour: int, quiet: tuple[int, int] | None) -> bool:
    """Whether local ``hour`` is in the quiet hours ``(start, end)``: start inclusive, end
    exclusive, wrapping midnight when start > end; start == end or None: never quiet."""
    if quiet is None:
        return False
    start, end = quiet
    if start == end:
        return False
    if start < end:
        return start <= hour < end
    return hour >= start or hour < end


def choose_slots(
    probabilities: np.ndarray,
    timezone: str,
    not_before: datetime,
    window_hours: int,
    quiet: tuple[int, int] | None,
    explore_rate: float = 0.0,
    rng: np.random.Generator | None = None,
    alternatives: int = 3,
) -> list[Slot]:
    """The best moments to send in ``[not_before, not_before + window_hours)``, best first.

    Candidates are ``not_before`` itself (when it is not on a local whole hour) and every
    start of a local hour in the window, found by stepping through UTC hours and
    converting each to local time: a local hour repeated when clocks go back appears
    twice, one skipped when they go forward never does. Candidates whose local hour is
    quiet (:func:`is_quiet`) are dropped. The rest are ranked by ``probabilities`` of
    their local hour (float64[24]), or of their local weekday and hour (float64[7, 24],
    Monday row 0, as :func:`week_probabilities` gives), ties going to the earliest; at
    most ``1 + alternatives`` come back, and none when every candidate is quiet.

    With probability ``explore_rate`` the ranking instead uses a Thompson-style draw per
    slot (Beta around its probability, :data:`EXPLORE_CONCENTRATION` pseudo-observations),
    so that future data stops echoing past schedules. Returned probabilities are always
    the model's. A naive ``not_before`` is taken as UTC.

    Raises
    ------
    ValueError
        on a ``probabilities`` shape other than (24,) or (7, 24), a ``window_hours`` below
        1, or an unknown time zone.
    """
    table = np.asarray(probabilities, dtype=np.float64)
    if table.shape == (HOURS,):
        table = np.broadcast_to(table, (DAYS, HOURS))
    elif table.shape != (DAYS, HOURS):
        raise ValueError(
            f"probabilities must have {HOURS} values (or {DAYS} rows of {HOURS} values), "
            f"got shape {table.shape}"
        )
    _check_window_and_zone(window_hours, timezone)
    window = (timezone, not_before, window_hours, quiet)
    return _choose_all(table[None], [window], [rng], explore_rate, alternatives)[0]


def _check_window_and_zone(window_hours: int, timezone: str) -> None:
    if window_hours < 1:
        raise ValueError(f"window_hours must be at least 1, got {window_hours}")
    if _zone(timezone) is None:
        raise ValueError(f"{timezone!r} is not a known IANA time zone")


_Window = tuple[str, datetime, int, "tuple[int, int] | None"]
"""Where :func:`choose_slots` looks: (time zone, not_before, window_hours, quiet hours)."""


def _choose_all(
    tables: np.ndarray,
    windows: Sequence[_Window],
    rngs: Sequence[np.random.Generator | None],
    explore_rate: float,
    alternatives: int,
) -> list[list[Slot]]:
    """:func:`choose_slots` for each of ``windows``, on the row of ``tables`` (people, 7,
    24; checked) and with the ``rngs`` at its position. Rows whose windows have the same
    candidates are ranked together; exploring draws in the order of ``windows``."""
    found = []
    for timezone, not_before, window_hours, quiet in windows:
        if not_before.tzinfo is None:
            not_before = not_before.replace(tzinfo=UTC)
        found.append(
            _candidates(
                timezone,
                not_before.astimezone(UTC),
                window_hours,
                None if quiet is None else tuple(quiet),
            )
        )
    # The candidates are cached, so rows with the same ones share one object.
    groups: dict[int, list[int]] = {}
    for n, candidates in enumerate(found):
        if candidates[0]:
            groups.setdefault(id(candidates), []).append(n)
    flat = tables.reshape(len(tables), WEEK_HOURS)
    model = {key: flat[rows][:, found[rows[0]][1]] for key, rows in groups.items()}
    scores = model
    if explore_rate > 0:
        scores = {key: values.copy() for key, values in model.items()}
        at = {n: (key, k) for key, rows in groups.items() for k, n in enumerate(rows)}
        for n in sorted(at):
            key, k = at[n]
            rng = rngs[n] if rngs[n] is not None else np.random.default_rng()
            if rng.random() < explore_rate:
                p = np.clip(model[key][k], 0.0, 1.0)
                scores[key][k] = rng.beta(
                    1.0 + EXPLORE_CONCENTRATION * p, 1.0 + EXPLORE_CONCENTRATION * (1 - p)
                )
    slots: list[list[Slot]] = [[] for _ in windows]
    for key, rows in groups.items():
        moments, _, hours = found[rows[0]]
        # Candidates are in time order, so keeping ties in order sends at the earliest.
        orders = _best_first(scores[key], 1 + max(alternatives, 0), then=moments)
        for n, values, order in zip(rows, model[key].tolist(), orders, strict=True):
            slots[n] = [Slot(moments[k], values[k], hours[k]) for k in order]
    return slots


@lru_cache(maxsize=1024)
def _candidates(
    timezone: str, start: datetime, window_hours: int, quiet: tuple[int, int] | None
) -> tuple[tuple[datetime, ...], np.ndarray, tuple[int, ...]]:
    """The candidates of :func:`choose_slots` outside quiet hours, in time order: their
    moments (UTC, as ``start`` is), their local hours of the week (weekday * 24 + hour)
    and their local hours. Kept for the latest windows asked about: a campaign page
    plans most of its members in a few zones from one start."""
    zone = _zone(timezone)
    end = start + timedelta(hours=window_hours)
    local = start.astimezone(zone)
    past_the_hour = timedelta(
        minutes=local.minute, seconds=local.second, microseconds=local.microsecond
    )
    moments = [start] if past_the_hour else []
    # The local hour that began at or before `start` began this long before it (offset
    # changes fall on whole local hours), so whole local hours are that instant + k hours.
    at = start - past_the_hour
    if at < start:
        at += timedelta(hours=1)
    while at < end:
        if at.astimezone(zone).minute == 0:  # false only across a half-hour offset change
            moments.append(at)
        at += timedelta(hours=1)

    kept, cells, hours = [], [], []
    for moment in moments:
        there = moment.astimezone(zone)
        if not is_quiet(there.hour, quiet):
            kept.append(moment)
            cells.append(there.weekday() * HOURS + there.hour)
            hours.append(there.hour)
    cell_array = np.array(cells, dtype=np.int64)
    cell_array.setflags(write=False)
    return tuple(kept), cell_array, tuple(hours)


# --- one answer --------------------------------------------------------------------------


def moved_to_zone(
    profile: EngagementProfile, counted_in: str, zone: str, at: datetime
) -> EngagementProfile:
    """The profile with every count moved from the hours of ``counted_in`` to those of
    ``zone``, by their difference in UTC offset at ``at`` (whole hours, rounded): for a
    person whose zone was unknown when their events were counted, so that their hours are
    the default zone's, and a request names the zone to plan in.

    Raises
    ------
    ValueError
        when either zone is unknown.
    """
    source, target = _zone(counted_in), _zone(zone)
    if source is None or target is None:
        raise ValueError(f"unknown time zone: {counted_in if source is None else zone!r}")
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    offset = target.utcoffset(at) - source.utcoffset(at)  # type: ignore[operator]
    shift = int(round(offset.total_seconds() / 3600))
    if shift == 0:
        return profile

    def moved(values: np.ndarray) -> np.ndarray:
        return np.roll(values, shift)  # local = old + shift, wrapping the day (the week)

    return EngagementProfile(
        timezone=profile.timezone,
        channels={name: c.mapped(moved) for name, c in profile.channels.items()},
        activity=moved(profile.activity),
        as_of=profile.as_of,
        weekly_activity=moved(profile.weekly_activity),
        active_hours=profile.active_hours,
    )


@dataclass(frozen=True)
class Evidence:
    """The person's own evidence behind an answer on one channel: recency-weighted
    deliveries, engagements (opens, or clicks where they are more) and activity events,
    each rounded."""

    deliveries: int
    engagements: int
    activity_events: int
    rule: str = LEARNT_MIX
    """The tuning's rule the answer was made under (``Tuning.rule``)."""


def _plain(count: float, weighted: float) -> float:
    """A plain count; profiles written before plain counts were kept have only the
    recency-weighted one (the sum of the positive weighted counts)."""
    return max(count, weighted)


def _positive_sum(values: np.ndarray) -> np.ndarray:
    """The sum of the positive values over the last axis (any leading axes)."""
    return np.maximum(values, 0.0).sum(axis=-1)


def _plain_counts(
    profile: EngagementProfile,
    counts: ChannelCounts,
    weighted: tuple[float, float, float] | None = None,
) -> tuple[float, float, float]:
    """(deliveries, engagements, activity events) of ``profile``, ``counts`` being one of
    its channels, counted plainly (:func:`_plain`); ``weighted`` are their weighted sums
    (:func:`_positive_sum`) when the caller has them already."""
    if weighted is None:
        weighted = (
            float(_positive_sum(counts.deliveries)),
            float(_positive_sum(counts.engaged())),
            float(_positive_sum(profile.activity)),
        )
    delivered, engaged, active = weighted
    return (
        _plain(counts.sent, delivered),
        _plain(counts.answered, engaged),
        _plain(profile.active_hours, active),
    )


def _evidence(plain: tuple[float, float, float], rule: str = LEARNT_MIX) -> Evidence:
    deliveries, engagements, activity = (int(round(count)) for count in plain)
    return Evidence(deliveries, engagements, activity, rule)


def evidence_of(profile: EngagementProfile, channel: str) -> Evidence:
    """:class:`Evidence` of ``profile`` on ``channel``: plain counts (how much there is,
    whatever its age; the answer weighs recent evidence more)."""
    return _evidence(_plain_counts(profile, profile.channel(channel)))


def channel_source(profile: EngagementProfile) -> str:
    """Where a channel ranking comes from: ``"user"`` when the person has at least
    :data:`MIN_USER_DELIVERIES` deliveries over all message channels, else
    ``"global_prior"`` (the channels' overall rates decide)."""
    delivered = sum(
        _plain(c.sent, float(_positive_sum(c.deliveries))) for c in profile.channels.values()
    )
    return "user" if delivered >= MIN_USER_DELIVERIES else "global_prior"


@dataclass(frozen=True)
class SendPlan:
    """What :func:`plan_send` answers: the slots best first (empty when every candidate
    is quiet), where the evidence came from, how much of it there was in all, and what
    it was."""

    slots: list[Slot]
    source: str
    evidence: int
    detail: Evidence


def plan_send(
    profile: EngagementProfile,
    channel: str,
    priors: Priors,
    timezone: str,
    not_before: datetime,
    window_hours: int,
    quiet: tuple[int, int] | None,
    explore_rate: float = 0.0,
    rng: np.random.Generator | None = None,
    alternatives: int = 3,
    counted_in: str | None = None,
) -> SendPlan:
    """The whole ``PredictSendTime`` answer for one person, planned in ``timezone`` (also
    the priors' segment): :func:`hour_probabilities`, the hour-of-week layer
    (:func:`week_probabilities`), then :func:`choose_slots`. The service, the campaign
    planner and the evaluations all plan through :func:`plan_sends` (this is it with one
    question), so what is measured is what is served.

    ``counted_in`` is the zone whose hours the profile's counts are in when the person
    has no known zone (the default zone their events were read in); planning in another
    zone first moves the counts to it (:func:`moved_to_zone`). A person with a known zone
    keeps their local hours wherever the plan is made: habits follow the local clock.

    Raises
    ------
    ValueError
        as :func:`hour_probabilities` and :func:`choose_slots` do.
    """
    question = SendQuestion(profile, channel, timezone, not_before, window_hours, quiet, rng)
    return plan_sends([question], priors, explore_rate, alternatives, counted_in)[0]


@dataclass(frozen=True)
class SendQuestion:
    """One person's question to :func:`plan_sends`: when to send to them on ``channel``
    in ``[not_before, not_before + window_hours)`` outside the local ``quiet`` hours,
    planned in ``timezone``; ``rng`` draws for them when exploring."""

    profile: EngagementProfile
    channel: str
    timezone: str
    not_before: datetime
    window_hours: int
    quiet: tuple[int, int] | None
    rng: np.random.Generator | None = None


#: The counts of a channel a person has none on (read, never written).
_NO_COUNTS = ChannelCounts()


def plan_sends(
    questions: Sequence[SendQuestion],
    priors: Priors,
    explore_rate: float = 0.0,
    alternatives: int = 3,
    counted_in: str | None = None,
) -> list[SendPlan]:
    """:func:`plan_send`'s answer to each question, worked out together: the day's and the
    week's probabilities of every person in arrays of (people, hours), then the slots.
    Each answer is the one that question alone gets, to the last bit; exploring draws
    from each question's ``rng`` in the order of the questions, as one :func:`plan_send`
    after another would.

    Raises
    ------
    ValueError
        as :func:`plan_send`, for the first question at fault.
    """
    profiles = []
    for q in questions:
        profile = q.profile
        if profile.timezone is None and counted_in and counted_in != q.timezone:
            profile = moved_to_zone(profile, counted_in, q.timezone, q.not_before)
        _check_channel(q.channel)
        _check_window_and_zone(q.window_hours, q.timezone)
        profiles.append(profile)
    if not questions:
        return []
    week, (deliveries, engaged, activity), counts = _week_rates(
        profiles, [q.channel for q in questions], [q.timezone for q in questions], priors
    )
    slots = _choose_all(
        week,
        [(q.timezone, q.not_before, q.window_hours, q.quiet) for q in questions],
        [q.rng for q in questions],
        explore_rate,
        alternatives,
    )
    weighted = zip(
        *(_positive_sum(values)[:, 0].tolist() for values in (deliveries, engaged, activity)),
        strict=True,
    )
    plans = []
    for q, profile, c, chosen, sums in zip(
        questions, profiles, counts, slots, weighted, strict=True
    ):
        plain = _plain_counts(profile, c, sums)
        source, evidence = _source(plain[0], plain[2], q.channel, priors, q.timezone)
        plans.append(SendPlan(chosen, source, evidence, _evidence(plain, priors.tuning.rule)))
    return plans


def week_tables(
    profiles: Sequence[EngagementProfile],
    channels: Sequence[str],
    timezones: Sequence[str],
    priors: Priors,
) -> np.ndarray:
    """(people, 7, 24) rates by local weekday and hour, each person on their channel and
    in their zone (the priors' segment) as :func:`week_probabilities` gives them (the
    counts as they are: no move between zones). What :func:`plan_sends` chooses slots
    from; training scores its candidate tunings on it (the served arithmetic)."""
    for channel in channels:
        _check_channel(channel)
    if not profiles:
        return np.zeros((0, DAYS, HOURS))
    return _week_rates(profiles, channels, timezones, priors)[0]


def _week_rates(
    profiles: Sequence[EngagementProfile],
    channels: Sequence[str],
    timezones: Sequence[str],
    priors: Priors,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], list[ChannelCounts]]:
    """:func:`week_tables`, the stacked (deliveries, engagements, activity) of each person
    behind it (a lone axis between the people and the hours) and their channel's counts."""
    asked = list(zip(channels, timezones, strict=True))
    counts = [p.channels.get(c) or _NO_COUNTS for p, (c, _) in zip(profiles, asked, strict=True)]
    curves: dict[tuple[str, str], np.ndarray] = {}
    shares: dict[str, np.ndarray] = {}
    for channel, zone in asked:
        if (channel, zone) not in curves:
            curves[channel, zone] = prior_curve(priors, channel, zone)
        if zone not in shares:
            shares[zone] = activity_prior(priors, zone)

    def stacked(rows: Iterable[np.ndarray]) -> np.ndarray:
        # People on axis 0, then a lone axis before the hours: smooth() and pool() then
        # multiply each person's row as a vector (BLAS gemv), exactly as for one person;
        # a (people, 24) matrix would go through gemm, whose rounding differs.
        return np.array(list(rows), dtype=np.float64)[:, None, :]

    activity = stacked(p.activity for p in profiles)
    deliveries = stacked(c.deliveries for c in counts)
    engaged = np.maximum(stacked(c.opens for c in counts), stacked(c.clicks for c in counts))
    day, overall, awake = _day_rates(
        activity,
        deliveries,
        engaged,
        stacked(curves[c, zone] for c, zone in asked),
        stacked(shares[zone] for _, zone in asked),
        np.array([channel_rate(priors, c) for c, _ in asked])[:, None, None],
        priors.tuning,
    )
    weekly_activity = stacked(p.weekly_activity for p in profiles)
    weekly_deliveries = stacked(c.weekly_deliveries for c in counts)
    weekly_engaged = np.maximum(
        stacked(c.weekly_opens for c in counts), stacked(c.weekly_clicks for c in counts)
    )
    week = np.repeat(day, DAYS, axis=1)
    # People without weekly counts keep the day on every day.
    rows = np.flatnonzero(_has_week(weekly_activity, weekly_deliveries, weekly_engaged)[:, 0])
    if len(rows):
        week[rows] = _week_table(
            day[rows],
            awake[rows],
            overall[rows],
            weekly_deliveries[rows],
            weekly_engaged[rows],
            weekly_activity[rows],
            priors.tuning,
        )[:, 0]
    return week, (deliveries, engaged, activity), counts
