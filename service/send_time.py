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

Engagement is the open, or the click where a channel records more clicks than opens
(SMS has no open tracking). Counts are recency-weighted (half-life set by the caller), so
a person whose habits change is followed.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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

#: Events that show the person is awake and around (site, app, store).
ACTIVITY_EVENT_TYPES: tuple[str, ...] = (
    "session_start",
    "view",
    "click",
    "favourite",
    "add_to_cart",
    "purchase",
)
#: An open or click answers the latest delivery on its channel at most this long before.
ATTRIBUTION_WINDOW_SECONDS = 48 * 3600
#: Standard deviation, in hours, of the circular Gaussian kernel smoothing hourly counts.
SMOOTHING_SD_HOURS = 1.5
#: Exponent tempering the awake factor: (activity share / mean share) ** exponent.
ACTIVITY_EXPONENT = 0.75
#: A person's own evidence is "meaningful" (source "user") from this many weighted
#: deliveries on the channel, or this many weighted activity events.
MIN_USER_DELIVERIES = 5.0
MIN_USER_ACTIVITY = 10.0
#: Pseudo-observations of the priors (``Priors.strength``).
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
    """

    deliveries: np.ndarray = field(default_factory=_zeros)
    opens: np.ndarray = field(default_factory=_zeros)
    clicks: np.ndarray = field(default_factory=_zeros)
    weekly_deliveries: np.ndarray = field(default_factory=_week_zeros)
    weekly_opens: np.ndarray = field(default_factory=_week_zeros)
    weekly_clicks: np.ndarray = field(default_factory=_week_zeros)

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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChannelCounts):
            return NotImplemented
        return all(
            np.array_equal(a, b) for a, b in zip(self._arrays(), other._arrays(), strict=True)
        )


@dataclass
class EngagementProfile:
    """What send-time and channel answers need to know about one person.

    ``channels`` holds the channels of ``MESSAGE_CHANNELS`` the person has any counted
    message event on (a missing channel means all zeros); ``activity`` counts activity
    events (:data:`ACTIVITY_EVENT_TYPES`) by local hour; ``timezone`` is the person's
    latest known IANA zone, ``None`` when no event named one.
    """

    timezone: str | None = None
    channels: dict[str, ChannelCounts] = field(default_factory=dict)
    activity: np.ndarray = field(default_factory=_zeros)

    def channel(self, name: str) -> ChannelCounts:
        """The counts of channel ``name`` (zeros when the person has none)."""
        return self.channels.get(name) or ChannelCounts()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EngagementProfile):
            return NotImplemented
        return (
            self.timezone == other.timezone
            and self.channels == other.channels
            and np.array_equal(self.activity, other.activity)
        )

    def to_json(self) -> str:
        """Compact JSON (6 significant digits; all-zero arrays and channels left out).

        Keys: ``d``/``o``/``c`` the hourly deliveries, opens and clicks of a channel,
        ``wd``/``wo``/``wc`` the same per hour of the week, sparse (``{"hour of the
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
            if parts:
                channels[name] = parts
        payload: dict[str, object] = {"v": _JSON_VERSION}
        if self.timezone:
            payload["tz"] = self.timezone
        if channels:
            payload["ch"] = channels
        if np.any(self.activity):
            payload["a"] = _compact(self.activity)
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

        channels = {
            str(name): ChannelCounts(
                deliveries=array(raw, "d", f"{name} deliveries"),
                opens=array(raw, "o", f"{name} opens"),
                clicks=array(raw, "c", f"{name} clicks"),
                weekly_deliveries=weekly(raw, "wd", f"{name} weekly deliveries"),
                weekly_opens=weekly(raw, "wo", f"{name} weekly opens"),
                weekly_clicks=weekly(raw, "wc", f"{name} weekly clicks"),
            )
            for name, raw in dict(payload.get("ch", {})).items()
        }
        return cls(
            timezone=payload.get("tz") or None,
            channels=channels,
            activity=array(payload, "a", "activity"),
        )

    def merged(self, other: EngagementProfile) -> EngagementProfile:
        """Element-wise sums; the time zone is this profile's when set, else ``other``'s."""
        channels = {}
        for name in (*self.channels, *(c for c in other.channels if c not in self.channels)):
            mine, theirs = self.channel(name), other.channel(name)
            channels[name] = ChannelCounts(
                *(a + b for a, b in zip(mine._arrays(), theirs._arrays(), strict=True))
            )
        return EngagementProfile(
            timezone=self.timezone or other.timezone,
            channels=channels,
            activity=self.activity + other.activity,
        )

    def scaled(self, factor: float) -> EngagementProfile:
        """Every count times ``factor`` (e.g. to fade a published profile to now)."""
        return EngagementProfile(
            timezone=self.timezone,
            channels={
                name: ChannelCounts(*(values * factor for values in c._arrays()))
                for name, c in self.channels.items()
            },
            activity=self.activity * factor,
        )


def _compact(values: np.ndarray) -> list[float | int]:
    return [0 if v == 0 else float(f"{v:.6g}") for v in np.asarray(values, dtype=np.float64)]


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
    now: float,
    half_life_days: float,
    default_timezone: str = "UTC",
) -> EngagementProfile:
    """One person's profile from their events, in any order.

    Parameters
    ----------
    events
        ``(channel, event_type, epoch_seconds, timezone, automated)``; channel and time
        zone may be empty. Other event types (dislike, ...) only tell the time zone.
    now
        Epoch seconds the recency weights are relative to: an event weighs
        ``2 ** (-(now - ts) / (half_life_days * 86400))``.
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

    def when_and_weight(ts: int, zone: str) -> tuple[int, int, float]:
        """Local hour, local weekday and recency weight."""
        name = zone if _zone(zone) is not None else fallback
        local = datetime.fromtimestamp(ts, _zone(name))
        return local.hour, local.weekday(), 2.0 ** (-(now - ts) / scale)

    channels: dict[str, ChannelCounts] = {}
    activity = _zeros()
    # Per channel, deliveries sorted by time with their local hours and weekdays.
    sent: dict[str, list[tuple[int, int, int]]] = {}
    answers: list[tuple[str, str, int, str]] = []
    active: dict[int, tuple[int, str]] = {}  # clock hour -> its earliest activity event
    for channel, kind, ts, zone, automated in rows:
        if kind == "message_delivered" and channel in MESSAGE_CHANNELS:
            hour, day, weight = when_and_weight(ts, zone)
            counts = channels.setdefault(channel, ChannelCounts())
            counts.deliveries[hour] += weight
            counts.weekly_deliveries[day * HOURS + hour] += weight
            sent.setdefault(channel, []).append((ts, hour, day))
        elif automated:
            continue
        elif kind in ("message_open", "message_click") and channel in MESSAGE_CHANNELS:
            answers.append((channel, kind, ts, zone))
        elif kind in ACTIVITY_EVENT_TYPES:
            # Keep the earliest, ties to the smallest zone name (as training does).
            first = active.get(ts // 3600)
            if first is None or (ts, zone) < first:
                active[ts // 3600] = (ts, zone)
    # A burst of events in one clock hour is one sign of being around, not fifty.
    for ts, zone in active.values():
        hour, _, weight = when_and_weight(ts, zone)
        activity[hour] += weight
    for deliveries in sent.values():
        deliveries.sort()
    for channel, kind, ts, zone in answers:
        hour, day, weight = when_and_weight(ts, zone)
        deliveries = sent.get(channel, [])
        # The last delivery at or before ts: (ts, 24) sorts after every (ts, hour, day).
        at = bisect.bisect_right(deliveries, (ts, HOURS)) - 1
        if at >= 0 and ts - deliveries[at][0] <= ATTRIBUTION_WINDOW_SECONDS:
            _, hour, day = deliveries[at]
        counts = channels.setdefault(channel, ChannelCounts())
        opened = kind == "message_open"
        (counts.opens if opened else counts.clicks)[hour] += weight
        (counts.weekly_opens if opened else counts.weekly_clicks)[day * HOURS + hour] += weight
    ordered = {name: channels[name] for name in MESSAGE_CHANNELS if name in channels}
    return EngagementProfile(timezone=known, channels=ordered, activity=activity)


def served_profile(
    published: Iterable[str],
    published_until: int | None,
    live: Iterable[tuple[str, str, int, str, bool]],
    now: float,
    half_life_days: float,
    default_timezone: str = "UTC",
) -> EngagementProfile:
    """The profile a request is answered from: the published profiles (JSON, as training
    wrote them at ``published_until``), faded to ``now``, plus every live event (as
    :func:`profile_from_events` takes them) that they do not cover."""
    fresh = [e for e in live if published_until is None or e[2] > published_until]
    profile = profile_from_events(fresh, now, half_life_days, default_timezone)
    # Published weights were computed at the data end; fade them to now.
    age = max(now - published_until, 0.0) if published_until is not None else 0.0
    factor = 2.0 ** (-age / (half_life_days * _SECONDS_PER_DAY))
    for text in published:
        profile = profile.merged(EngagementProfile.from_json(text).scaled(factor))
    return profile


# --- priors ------------------------------------------------------------------------------


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
    strength: float = DEFAULT_STRENGTH
    """Pseudo-deliveries per hour slot (and pseudo-events of activity) of the priors."""

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
            "strength": float(self.strength),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Priors:
        """Priors from :meth:`to_dict`'s output (e.g. after a JSON round trip).

        Raises
        ------
        ValueError
            when an hour list does not have 24 values or a key is missing.
        """
        try:
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
                strength=float(d.get("strength", DEFAULT_STRENGTH)),
            )
        except KeyError as exc:
            raise ValueError(f"priors lack {exc.args[0]!r}") from None


def _floats(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values]


def _hour_list(values: Iterable[float], what: str) -> list[float]:
    return _floats(_hours(list(values), what))


# --- the model ---------------------------------------------------------------------------


def _smoothing_matrix(sd_hours: float, size: int = HOURS) -> np.ndarray:
    half = size // 2
    distance = (np.arange(size)[:, None] - np.arange(size)[None, :] + half) % size - half
    kernel = np.exp(-0.5 * (distance / sd_hours) ** 2)
    return kernel / kernel.sum(axis=1, keepdims=True)


_SMOOTHING = _smoothing_matrix(SMOOTHING_SD_HOURS)
# The same kernel with weight 1 at the hour itself: a delivery one hour away is worth
# exp(-1 / (2 sd^2)) of one in the hour (0.8 at sd 1.5 h), so an hour's evidence is its
# neighbourhood's, compared with `strength` pseudo-deliveries per hour.
_POOLING = _SMOOTHING / _SMOOTHING[0, 0]
# The same over the 168 hours of the week (circular: Sunday 23:00 neighbours Monday 00:00).
_WEEK_SMOOTHING = _smoothing_matrix(SMOOTHING_SD_HOURS, WEEK_HOURS)
_WEEK_POOLING = _WEEK_SMOOTHING / _WEEK_SMOOTHING[0, 0]


def smooth(counts: np.ndarray) -> np.ndarray:
    """Circular Gaussian smoothing over the last axis (24 hours); totals are kept."""
    return np.asarray(counts, dtype=np.float64) @ _SMOOTHING


def pool(counts: np.ndarray) -> np.ndarray:
    """Evidence near each hour: the counts weighted by the Gaussian kernel, 1 at the hour
    itself (circular, over the last axis). Rates of pooled counts are smoothed rates."""
    return np.asarray(counts, dtype=np.float64) @ _POOLING


def pool_week(counts: np.ndarray) -> np.ndarray:
    """:func:`pool` over the hours of the week (the last axis, 168, circular)."""
    return np.asarray(counts, dtype=np.float64) @ _WEEK_POOLING


def _channel_rate(priors: Priors, channel: str) -> float:
    rate = priors.channel_rate.get(channel)
    return DEFAULT_RATE if rate is None or not math.isfinite(rate) else float(rate)


def _check_channel(channel: str) -> None:
    if channel not in MESSAGE_CHANNELS:
        raise ValueError(f"channel {channel!r} is not one of {', '.join(MESSAGE_CHANNELS)}")


def _activity_prior(priors: Priors, segment: str | None) -> np.ndarray:
    raw = priors.segment_activity.get(segment) if segment else None
    share = np.asarray(raw if raw is not None else priors.activity, dtype=np.float64)
    if share.shape != (HOURS,) or not np.isfinite(share).all() or share.sum() <= 0:
        return np.full(HOURS, 1.0 / HOURS)
    return np.maximum(share, 0.0) / share.sum()


def awake_factor(activity: np.ndarray, priors: Priors, segment: str | None) -> np.ndarray:
    """How much likelier than average the person is to be around in each local hour:
    their smoothed activity share, shrunk to the segment's (else global) share with
    ``priors.strength`` pseudo-events, raised to :data:`ACTIVITY_EXPONENT` and normalised
    to mean 1 over the day."""
    activity = np.maximum(np.asarray(activity, dtype=np.float64), 0.0)
    strength = priors.strength
    share = (smooth(activity) + strength * _activity_prior(priors, segment)) / (
        activity.sum() + strength
    )
    factor = (share * HOURS) ** ACTIVITY_EXPONENT
    return factor / factor.mean()


def delivery_rates(
    counts: ChannelCounts,
    channel: str,
    priors: Priors,
    segment: str | None,
    awake: np.ndarray | None = None,
) -> np.ndarray:
    """Beta posterior mean of P(engagement | delivery in local hour h), h = 0..23.

    Prior mean per hour: the segment's (else global) curve for the channel, times
    ``awake`` (mean 1; none: all ones), times the person's lift on the channel; prior
    weight ``priors.strength`` pseudo-deliveries. Data: the person's deliveries and
    engagements pooled over neighbouring hours (:func:`pool`).
    """
    strength = priors.strength
    base = max(_channel_rate(priors, channel), 1e-3)
    by_channel = priors.segment_hour_rate.get(segment, {}) if segment else {}
    curve = by_channel.get(channel) or priors.channel_hour_rate.get(channel)
    prior = np.asarray(curve, dtype=np.float64) if curve else np.full(HOURS, base)
    if awake is not None:
        prior = prior * awake
    deliveries = np.maximum(counts.deliveries, 0.0)
    engaged = np.maximum(counts.engaged(), 0.0)
    # The person's lift over the prior on this channel: their engagements against what
    # the prior curve expects at the hours they were sent, with `strength` deliveries'
    # worth of "as expected" added to both sides.
    lift = (engaged.sum() + strength * base) / (deliveries @ prior + strength * base)
    mean = np.clip(prior * lift, _RATE_FLOOR, 1.0 - _RATE_FLOOR)
    return (pool(engaged) + strength * mean) / (pool(deliveries) + strength)


def hour_probabilities(
    profile: EngagementProfile, channel: str, priors: Priors, segment: str | None
) -> tuple[np.ndarray, str, int]:
    """P(engagement | delivery in local hour h) for h = 0..23, its source and evidence.

    The delivery-conditioned Beta posterior rate per hour (:func:`delivery_rates`) whose
    prior mean carries the awake factor from activity (:func:`awake_factor`), clipped to
    [0, 1]. ``segment`` is the person's time zone (the priors' segments are zones; None
    or an unknown one: global priors).

    Returns
    -------
    probabilities
        float64[24].
    source
        ``"user"`` when the person has at least :data:`MIN_USER_DELIVERIES` weighted
        deliveries on the channel or :data:`MIN_USER_ACTIVITY` weighted activity events;
        else ``"segment_prior"`` when the priors have that segment, else
        ``"global_prior"``.
    evidence
        Weighted deliveries on the channel plus weighted activity events, rounded.

    Raises
    ------
    ValueError
        for a channel not in ``MESSAGE_CHANNELS``.
    """
    _check_channel(channel)
    counts = profile.channel(channel)
    awake = awake_factor(profile.activity, priors, segment)
    probabilities = np.clip(delivery_rates(counts, channel, priors, segment, awake), 0.0, 1.0)

    delivered = float(np.maximum(counts.deliveries, 0.0).sum())
    active = float(np.maximum(profile.activity, 0.0).sum())
    if delivered >= MIN_USER_DELIVERIES or active >= MIN_USER_ACTIVITY:
        source = "user"
    elif segment and (
        channel in priors.segment_hour_rate.get(segment, {}) or segment in priors.segment_activity
    ):
        source = "segment_prior"
    else:
        source = "global_prior"
    return probabilities, source, int(round(delivered + active))


def week_probabilities(
    profile: EngagementProfile,
    channel: str,
    priors: Priors,
    segment: str | None,
    day: np.ndarray | None = None,
) -> np.ndarray:
    """P(engagement | delivery on local weekday d at local hour h): float64[7, 24],
    Monday row 0.

    A second level on top of :func:`hour_probabilities` (``day``, computed when not
    given): per (weekday, hour) a Beta posterior mean whose prior mean is the hour's
    day-level probability and whose prior weight is ``priors.strength`` pseudo-deliveries;
    its data are the person's weekly deliveries and engagements on the channel, pooled over
    neighbouring hours of the week (:func:`pool_week`). A weekday slot has about a seventh
    of an hour's evidence, so sparse weekly data moves the answer little from the
    day-level one; with no weekly data (e.g. profiles from before the week was kept) every
    row is the day-level answer.

    Raises
    ------
    ValueError
        for a channel not in ``MESSAGE_CHANNELS``.
    """
    if day is None:
        day, _, _ = hour_probabilities(profile, channel, priors, segment)
    else:
        _check_channel(channel)
        day = _hours(day, "day")
    counts = profile.channel(channel)
    deliveries = np.maximum(_hours(counts.weekly_deliveries, "weekly", WEEK_HOURS), 0.0)
    engaged = np.maximum(_hours(counts.weekly_engaged(), "weekly", WEEK_HOURS), 0.0)
    prior = np.tile(day, DAYS)  # index weekday * 24 + hour -> day[hour]
    if not deliveries.any() and not engaged.any():
        return prior.reshape(DAYS, HOURS)
    strength = priors.strength
    rates = (pool_week(engaged) + strength * prior) / (pool_week(deliveries) + strength)
    return np.clip(rates, 0.0, 1.0).reshape(DAYS, HOURS)


def rank_channels(profile: EngagementProfile, priors: Priors) -> list[tuple[str, float, int]]:
    """``(channel, score, evidence)`` for every channel of ``MESSAGE_CHANNELS``, best first.

    ``score`` is the person's posterior open rate per delivery on the channel, a Beta
    posterior mean shrunk to ``priors.channel_rate`` with ``priors.strength``
    pseudo-deliveries; ``evidence`` is the weighted deliveries, rounded. Ties keep the
    order of ``MESSAGE_CHANNELS``.
    """
    scored = []
    for channel in MESSAGE_CHANNELS:
        counts = profile.channel(channel)
        delivered = float(np.maximum(counts.deliveries, 0.0).sum())
        engaged = float(np.maximum(counts.engaged(), 0.0).sum())
        score = (engaged + priors.strength * _channel_rate(priors, channel)) / (
            delivered + priors.strength
        )
        scored.append((channel, float(np.clip(score, 0.0, 1.0)), int(round(delivered))))
    return sorted(scored, key=lambda entry: -entry[1])


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
    if window_hours < 1:
        raise ValueError(f"window_hours must be at least 1, got {window_hours}")
    zone = _zone(timezone)
    if zone is None:
        raise ValueError(f"{timezone!r} is not a known IANA time zone")
    if not_before.tzinfo is None:
        not_before = not_before.replace(tzinfo=UTC)
    start = not_before.astimezone(UTC)
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

    candidates = []
    for moment in moments:
        there = moment.astimezone(zone)
        hour = there.hour
        if not is_quiet(hour, quiet):
            candidates.append(Slot(moment, float(table[there.weekday(), hour]), hour))
    if not candidates:
        return []

    scores = np.array([slot.probability for slot in candidates])
    if explore_rate > 0:
        rng = rng if rng is not None else np.random.default_rng()
        if rng.random() < explore_rate:
            p = np.clip(scores, 0.0, 1.0)
            scores = rng.beta(
                1.0 + EXPLORE_CONCENTRATION * p, 1.0 + EXPLORE_CONCENTRATION * (1 - p)
            )
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i].send_at))
    return [candidates[i] for i in order[: 1 + max(alternatives, 0)]]


# --- one answer --------------------------------------------------------------------------


@dataclass(frozen=True)
class SendPlan:
    """What :func:`plan_send` answers: the slots best first (empty when every candidate
    is quiet), where the evidence came from, and how much of it there was."""

    slots: list[Slot]
    source: str
    evidence: int


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
) -> SendPlan:
    """The whole ``PredictSendTime`` answer for one person, planned in ``timezone`` (also
    the priors' segment): :func:`hour_probabilities`, the hour-of-week layer
    (:func:`week_probabilities`), then :func:`choose_slots`. The service and the
    evaluations call this one function, so what is measured is what is served.

    Raises
    ------
    ValueError
        as :func:`hour_probabilities` and :func:`choose_slots` do.
    """
    day, source, evidence = hour_probabilities(profile, channel, priors, timezone)
    week = week_probabilities(profile, channel, priors, timezone, day=day)
    slots = choose_slots(
        week,
        timezone,
        not_before,
        window_hours,
        quiet,
        explore_rate=explore_rate,
        rng=rng,
        alternatives=alternatives,
    )
    return SendPlan(slots, source, evidence)
