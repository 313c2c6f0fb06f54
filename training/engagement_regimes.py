"""Independent send-time and channel test data: event logs of several realistic regimes.

The send-time model was tuned on :mod:`training.synthetic`, where opens follow deliveries
within about half an hour and the chance of an open falls with the distance between the
local send hour and one active hour. A model that only learnt that shape looks good there
and nowhere else. The generators here plant a truth per person with *other* mechanisms,
mixed across people, so that a method has to read each person's own evidence:

``react``
    the person opens a delivery soon after it arrives (minutes, or an hour or two later),
    with a probability that peaks when it arrives at their planted hour; the peak's width
    differs per person (a von Mises bump over the clock, with a floor).
``check``
    the person reads their inbox at a few moments a day: most days early in their planted
    hour, plus a few random checks. A message is read at the next check with a probability
    that falls with its age then (newer mail buries it), so the open *time* is the check,
    not the delivery, and the best whole-hour send slot is the planted hour.

Per channel, every person has an open probability per delivery; the planted best channel
is the highest. The brand sends most messages by email (:data:`BRAND_CHANNEL_MIX`), so the
channel with the most opens is often not the best one. SMS has no open tracking: its
engagement shows as a ``message_click`` only. Elsewhere an open leads to a click now and
then. Site and app sessions come in bursts of events within one hour, around 1–3 habitual
windows per person (one of them usually the planted hour, not always the heaviest).

Each generator returns a :class:`Regime`: the TRAINING log in the loader's frame shape and
the queries to score on a day after it, with the planted answers. All are deterministic
given ``seed`` and run in about a second at the default sizes. :func:`activity_holdout`
turns any activity log (MovieLens too) into a regime-like split: each person's latest
events held out, their distinct active clock hours the targets; :func:`held_out_days`
holds out whole days instead, each day's first active hour its target (the real-log
benchmark's protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from service.events import MESSAGE_CHANNELS
from service.send_time import SITE_ACTIVITY_EVENT_TYPES

#: End (exclusive) of every generated training log. The 90 days before it cross the end
#: of summer time in Europe and North America and its start in Australia.
END = datetime(2025, 11, 20, tzinfo=UTC)
#: Days every generated log covers.
DAYS = 90
#: Zones people live in (whole-hour offsets, so a planted local hour is a whole UTC hour).
ZONES: tuple[str, ...] = (
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Singapore",
    "Australia/Sydney",
)
#: Share of deliveries per message channel (MESSAGE_CHANNELS order): mostly email.
BRAND_CHANNEL_MIX: tuple[float, ...] = (0.6, 0.1, 0.2, 0.1)
#: How often each channel is a person's planted best channel.
BEST_CHANNEL_MIX: tuple[float, ...] = (0.35, 0.15, 0.3, 0.2)
#: Relative frequency of planted local hours 0..23: few at night, bumps at breakfast,
#: lunch and evening, as engagement studies of retail email report.
HOUR_WEIGHTS: tuple[float, ...] = (
    0.2, 0.15, 0.1, 0.1, 0.1, 0.2,
    0.6, 1.3, 1.3, 0.9, 0.9, 0.9,
    1.2, 1.2, 0.8, 0.8, 0.8, 1.0,
    1.4, 1.4, 1.4, 1.4, 0.9, 0.4,
)  # fmt: skip

_DAY = 86_400
_HOUR = 3_600
_START = int(END.timestamp()) - DAYS * _DAY
_END = int(END.timestamp())
# Local days are counted from the local midnight one day before the window's first UTC
# day, so every zone's local days cover the window.
_LOCAL_DAY0 = _START - _START % _DAY - _DAY
_LOCAL_DAYS = DAYS + 3
_ITEMS = 400

# Sessions: bursts of events in one hour.
_EVENTS_PER_SESSION = 6.0  # mean, geometric; the first is the session_start
_EVENT_GAP_S = (15.0, 90.0)  # floor and exponential mean between events of a session
_ITEM_KINDS = ("view", "favourite", "add_to_cart", "purchase")
_ITEM_KIND_SHARE = (0.85, 0.08, 0.05, 0.02)
_OFF_WINDOW = 0.25  # sessions starting an hour before or after their window
_PLANTED_WINDOW = 0.85  # share of people one of whose windows is their planted hour

# Opens.
_REACT_FLOOR = 0.12
_REACT_KAPPA = (2.0, 6.0)  # von Mises concentration, per person
_REACT_QUICK = 0.5  # share of reactions within minutes; the rest an hour or two later
_CHECK_MAIN = (0.6, 0.95)  # chance per day of the check in the planted hour
_CHECK_EXTRA = (0.3, 1.5)  # mean random checks per day (at 7..23 local)
_CHECK_MINUTES = 30  # the main check falls in the planted hour's first half hour
_CHECK_AGE_H = 4.0  # a message's chance at a check falls by e per this many hours of age
_BEST_RATE = (0.4, 0.9)
_OTHER_RATE_SHARE = (0.15, 0.6)  # other channels' rate as a share of the best one
_P_CLICK = 0.3
_PROXY_DELAY_S = 60


@dataclass(frozen=True)
class Query:
    """One question to a send-time model, with the answers that count as right.

    ``target_hours`` are local hours in ``timezone``. For planted regimes the query is a
    hit when the predicted hour is within ±1 h (circular) of any of them; for held-out
    activity (``held_out``) they are the person's held-out distinct active clock hours
    (repeats kept) and the score is the share of them within ±1 h of the prediction.
    """

    user_id: str
    channel: str
    not_before: datetime
    """UTC-aware start of the window to plan in."""
    window_hours: int
    timezone: str
    target_hours: tuple[int, ...]
    label: str
    """Column the query is scored in, e.g. ``"hour"``, ``"weekday hour"``."""
    day_type: str = ""
    """``"weekday"`` or ``"weekend"`` when the query asks for a kind of day, else ""."""
    held_out: bool = False


@dataclass
class Regime:
    """A training log plus the queries (and planted channels) to score a model on."""

    name: str
    description: str
    """One line."""
    frame: pd.DataFrame
    """The TRAINING events, in the loader's frame shape (``service.events.COLUMNS``)."""
    queries: list[Query]
    channel_truth: dict[str, str] = field(default_factory=dict)
    """User id -> planted best channel (people of regimes that have one)."""


# --- time ---------------------------------------------------------------------------------


def _to_utc(local: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """Epoch seconds of naive local wall-clock seconds ``local`` in ``ZONES[zone]``
    (a skipped hour moves forward, a repeated one reads as standard time)."""
    out = np.empty(len(local), dtype=np.int64)
    for z in np.unique(zone):
        rows = np.flatnonzero(zone == z)
        stamps = pd.DatetimeIndex(pd.to_datetime(local[rows], unit="s"))
        aware = stamps.tz_localize(
            ZONES[z], ambiguous=np.zeros(len(rows), dtype=bool), nonexistent="shift_forward"
        )
        out[rows] = aware.as_unit("s").asi8
    return out


def _to_local(ts: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """Naive local wall-clock seconds of epoch seconds ``ts`` in ``ZONES[zone]``."""
    out = np.empty(len(ts), dtype=np.int64)
    for z in np.unique(zone):
        rows = np.flatnonzero(zone == z)
        stamps = pd.DatetimeIndex(pd.to_datetime(ts[rows], unit="s", utc=True))
        out[rows] = stamps.tz_convert(ZONES[z]).tz_localize(None).as_unit("s").asi8
    return out


def _weekend(local: np.ndarray) -> np.ndarray:
    """Whether naive local seconds fall on a Saturday or Sunday (1970-01-01: Thursday)."""
    return (local // _DAY + 3) % 7 >= 5


def _first_midnight_after(moment: datetime, zone: str) -> datetime:
    """The first local midnight in ``zone`` strictly after ``moment``, as UTC."""
    local = moment.astimezone(ZoneInfo(zone))
    midnight = datetime(local.year, local.month, local.day, tzinfo=ZoneInfo(zone))
    return (midnight + timedelta(days=1)).astimezone(UTC)


# --- people -------------------------------------------------------------------------------


@dataclass
class _People:
    ids: list[str]
    zone: np.ndarray
    hour: np.ndarray
    """(n, 2): planted local hour on weekdays, on weekends."""
    new_hour: np.ndarray
    """Planted hour from local day ``change_day`` on, for people with ``changes``."""
    changes: np.ndarray
    change_day: int
    check: np.ndarray
    """Mechanism: True reads at inbox checks, False reacts to deliveries."""
    kappa: np.ndarray
    p_main: np.ndarray
    extra_checks: np.ndarray
    rates: np.ndarray
    """(n, len(MESSAGE_CHANNELS)) open probability per delivery at the best moment."""
    best_channel: np.ndarray
    windows: np.ndarray
    """(n, 3) local hours of the activity windows; -1 in column 0 means "the planted
    hour of the day"."""
    window_cum: np.ndarray
    """(n, 3) cumulative window weights."""
    sessions: np.ndarray
    """Whether the person uses the site or app at all."""
    active_days: np.ndarray
    site: np.ndarray
    """Channel of their sessions ("web" or "app", "" when the regime has none)."""

    def planted(self, user: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Planted hour of each person on the local day of naive seconds ``local``."""
        hour = self.hour[user, _weekend(local).astype(np.int64)]
        later = self.changes[user] & ((local - _LOCAL_DAY0) // _DAY >= self.change_day)
        return np.where(later, self.new_hour[user], hour)


def _draw_hours(rng: np.random.Generator, n: int) -> np.ndarray:
    p = np.asarray(HOUR_WEIGHTS)
    return rng.choice(24, size=n, p=p / p.sum())


def _circular(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Circular distance in hours between (fractional) clock hours."""
    d = np.abs(np.asarray(a, dtype=np.float64) - b) % 24
    return np.minimum(d, 24 - d)


def _people(
    rng: np.random.Generator,
    n: int,
    prefix: str,
    sessions_share: float,
    active_days_mean: float,
    site_channels: bool = True,
    weekend_hours: bool = False,
    change_share: float = 0.0,
) -> _People:
    zone = rng.integers(0, len(ZONES), n)
    weekday = _draw_hours(rng, n)
    weekend = weekday.copy()
    if weekend_hours:
        # A different weekend hour, at least three hours away (people sleep in, go out).
        weekend = _away_from(rng, weekday, 3)
    changes = rng.random(n) < change_share
    new_hour = np.where(changes, _away_from(rng, weekday, 4), weekday)

    best = rng.choice(len(MESSAGE_CHANNELS), size=n, p=BEST_CHANNEL_MIX)
    best_rate = rng.uniform(*_BEST_RATE, n)
    rates = best_rate[:, None] * rng.uniform(*_OTHER_RATE_SHARE, (n, len(MESSAGE_CHANNELS)))
    rates[np.arange(n), best] = best_rate

    n_windows = rng.integers(1, 4, n)
    windows = _draw_hours(rng, n * 3).reshape(n, 3)
    windows[:, 0] = np.where(rng.random(n) < _PLANTED_WINDOW, -1, windows[:, 0])
    weights = rng.gamma(1.5, size=(n, 3)) * (np.arange(3) < n_windows[:, None])
    window_cum = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)

    sigma = 0.9
    days = rng.lognormal(np.log(active_days_mean) - sigma**2 / 2, sigma, n)
    site = np.where(rng.random(n) < 0.5, "web", "app") if site_channels else np.full(n, "")
    width = len(str(n - 1))
    return _People(
        ids=[f"{prefix}{i:0{width}d}" for i in range(n)],
        zone=zone,
        hour=np.stack([weekday, weekend], axis=1),
        new_hour=new_hour,
        changes=changes,
        change_day=_LOCAL_DAYS // 2,
        check=rng.random(n) < 0.5,
        kappa=rng.uniform(*_REACT_KAPPA, n),
        p_main=rng.uniform(*_CHECK_MAIN, n),
        extra_checks=rng.uniform(*_CHECK_EXTRA, n),
        rates=rates,
        best_channel=best,
        windows=windows,
        window_cum=window_cum,
        sessions=rng.random(n) < sessions_share,
        active_days=np.clip(np.round(days), 1, DAYS).astype(np.int64),
        site=site,
    )


def _away_from(rng: np.random.Generator, hours: np.ndarray, gap: int) -> np.ndarray:
    """Hours drawn like planted ones but at least ``gap`` hours (circular) from ``hours``."""
    out = _draw_hours(rng, len(hours))
    close = _circular(out, hours) < gap
    while close.any():
        out[close] = _draw_hours(rng, int(close.sum()))
        close = _circular(out, hours) < gap
    return out


# --- events -------------------------------------------------------------------------------


class _Log:
    """Event columns collected in parts, turned into the loader's frame at the end."""

    def __init__(self, people: _People, with_zone: bool) -> None:
        self.people = people
        self.with_zone = with_zone
        self.parts: list[dict[str, np.ndarray]] = []

    def add(
        self,
        kind: str | np.ndarray,
        user: np.ndarray,
        ts: np.ndarray,
        channel: str | np.ndarray,
        item: np.ndarray | None = None,
        automated: bool = False,
    ) -> None:
        n = len(user)
        self.parts.append(
            {
                "user": user,
                "item": np.full(n, -1) if item is None else item,
                "kind": np.broadcast_to(np.asarray(kind, dtype=object), (n,)),
                "ts": ts.astype(np.int64),
                "channel": np.broadcast_to(np.asarray(channel, dtype=object), (n,)),
                "automated": np.full(n, automated),
            }
        )

    def frame(self) -> pd.DataFrame:
        """Events inside the window, sorted by time (ties in the order they were added)."""
        cols = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        keep = np.flatnonzero((cols["ts"] >= _START) & (cols["ts"] < _END))
        keep = keep[np.argsort(cols["ts"][keep], kind="stable")]
        cols = {k: v[keep] for k, v in cols.items()}
        ids = np.asarray(self.people.ids, dtype=object)
        zones = np.asarray(ZONES, dtype=object)
        items = np.array([f"i{k:03d}" for k in range(_ITEMS)] + [""], dtype=object)
        own = zones[self.people.zone[cols["user"]]]
        zone = own if self.with_zone else np.full(len(keep), "", dtype=object)
        return pd.DataFrame(
            {
                "user_id": ids[cols["user"]].astype(str),
                "item_id": items[np.where(cols["item"] < 0, _ITEMS, cols["item"])].astype(str),
                "event_type": cols["kind"].astype(str),
                "timestamp": cols["ts"],
                "channel": cols["channel"].astype(str),
                "timezone": zone.astype(str),
                "value": np.full(len(keep), np.nan),
                "automated": cols["automated"].astype(bool),
            }
        )


def _add_sessions(rng: np.random.Generator, people: _People, log: _Log) -> None:
    """Bursts of site/app events around each person's activity windows."""
    days = np.where(people.sessions, people.active_days, 0)
    user = np.repeat(np.arange(len(people.ids)), days)
    day = rng.integers(0, _LOCAL_DAYS, len(user))
    per_day = 1 + rng.poisson(0.5, len(user))
    user, day = np.repeat(user, per_day), np.repeat(day, per_day)
    n = len(user)
    slot = (rng.random(n)[:, None] >= people.window_cum[user]).sum(axis=1)
    slot = np.minimum(slot, 2)
    hour = people.windows[user, slot]
    midday = _LOCAL_DAY0 + day * _DAY + 12 * _HOUR
    hour = np.where(hour < 0, people.planted(user, midday), hour)
    shift = np.where(rng.random(n) < _OFF_WINDOW, rng.choice([-1, 1], n), 0)
    local = _LOCAL_DAY0 + day * _DAY + ((hour + shift) % 24) * _HOUR + rng.integers(0, _HOUR, n)
    start = _to_utc(local, people.zone[user])

    size = rng.geometric(1.0 / (_EVENTS_PER_SESSION - 1), n) + 1
    session = np.repeat(np.arange(n), size)
    gaps = _EVENT_GAP_S[0] + rng.exponential(_EVENT_GAP_S[1], len(session))
    first = np.cumsum(size) - size
    gaps[first] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= elapsed[first][session]
    ts = start[session] + elapsed.astype(np.int64)
    who = user[session]
    is_first = np.zeros(len(session), dtype=bool)
    is_first[first] = True
    kind = np.where(
        is_first,
        "session_start",
        rng.choice(np.array(_ITEM_KINDS, dtype=object), len(session), p=_ITEM_KIND_SHARE),
    )
    rank = np.arange(1, _ITEMS + 1)
    item = rng.choice(_ITEMS, len(session), p=(1 / rank) / (1 / rank).sum())
    log.add(kind, who, ts, people.site[who], np.where(is_first, -1, item))


@dataclass
class _Schedule:
    """How the brand sends: deliveries per person, and the share at fixed hours."""

    deliveries: tuple[int, int]
    """Inclusive range of deliveries per person over the window."""
    hours: tuple[int, ...]
    share: float
    """Share of deliveries at ``hours`` (batches leave within a quarter of an hour); the
    rest at any minute of any hour."""
    utc: bool = False
    """Whether ``hours`` are UTC hours (the brand does not know zones) or local ones."""
    channel_hours: tuple[tuple[int, ...], ...] | None = None
    """Per channel of ``MESSAGE_CHANNELS``, its own fixed hours (each channel's team keeps
    its own schedule), the channels used evenly; None: ``hours`` for every channel and
    the channels by :data:`BRAND_CHANNEL_MIX`."""


def _delivery_times(
    rng: np.random.Generator, people: _People, schedule: _Schedule
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(user, epoch second, channel) of every delivery, all inside the window; channel
    None unless the schedule fixes each channel's hours (then drawn evenly here)."""
    low, high = schedule.deliveries
    user = np.repeat(np.arange(len(people.ids)), rng.integers(low, high + 1, len(people.ids)))
    ts = np.zeros(len(user), dtype=np.int64)
    channel = None
    if schedule.channel_hours is not None:
        channel = rng.integers(0, len(MESSAGE_CHANNELS), len(user))
    todo = np.arange(len(user))
    # Redraw what fell outside the window so that every person keeps their count.
    while len(todo):
        n = len(todo)
        batch = rng.random(n) < schedule.share
        if channel is None:
            fixed = np.asarray(schedule.hours)[rng.integers(0, len(schedule.hours), n)]
        else:
            own = [schedule.channel_hours[c] for c in channel[todo]]
            fixed = np.array([hours[rng.integers(0, len(hours))] for hours in own])
        hour = np.where(batch, fixed, rng.integers(0, 24, n))
        second = np.where(batch, rng.integers(0, 900, n), rng.integers(0, _HOUR, n))
        day = rng.integers(0, _LOCAL_DAYS, n)
        moment = _LOCAL_DAY0 + day * _DAY + hour * _HOUR + second
        ts[todo] = moment if schedule.utc else _to_utc(moment, people.zone[user[todo]])
        todo = todo[(ts[todo] < _START) | (ts[todo] >= _END)]
    order = np.lexsort((ts, user))
    return user[order], ts[order], None if channel is None else channel[order]


def _checks(rng: np.random.Generator, people: _People) -> np.ndarray:
    """Sorted keys ``user << 34 | epoch second`` of every inbox check of check-people."""
    users = np.flatnonzero(people.check)
    user = np.repeat(users, _LOCAL_DAYS)
    day = np.tile(np.arange(_LOCAL_DAYS), len(users))
    midday = _LOCAL_DAY0 + day * _DAY + 12 * _HOUR
    main = rng.random(len(user)) < people.p_main[user]
    main_local = (
        _LOCAL_DAY0
        + day * _DAY
        + people.planted(user, midday) * _HOUR
        + rng.integers(0, _CHECK_MINUTES * 60, len(user))
    )
    extra = rng.poisson(people.extra_checks[user])
    extra_user, extra_day = np.repeat(user, extra), np.repeat(day, extra)
    extra_local = (
        _LOCAL_DAY0
        + extra_day * _DAY
        + rng.integers(7, 24, len(extra_user)) * _HOUR
        + rng.integers(0, _HOUR, len(extra_user))
    )
    who = np.concatenate([user[main], extra_user])
    local = np.concatenate([main_local[main], extra_local])
    ts = _to_utc(local, people.zone[who])
    return np.sort((who.astype(np.int64) << 34) | ts)


def _add_messages(
    rng: np.random.Generator,
    people: _People,
    schedule: _Schedule,
    log: _Log,
    opens_per_person: tuple[int, int] | None = None,
    proxy: np.ndarray | None = None,
) -> None:
    """Deliveries and the person's engagement with them.

    ``opens_per_person``: keep only that many (inclusive range, drawn per person) of each
    person's engaged deliveries, chosen at random (a person with none gets one, drawn by
    its open probability), as for a brand that rarely gets a reaction. ``proxy``: people
    whose email a privacy proxy opens at delivery; their own email opens leave no open
    event (the pixel has already been fetched), only the occasional click.
    """
    user, ts, channel = _delivery_times(rng, people, schedule)
    n = len(user)
    if channel is None:
        channel = rng.choice(len(MESSAGE_CHANNELS), n, p=BRAND_CHANNEL_MIX)
    channel_names = np.asarray(MESSAGE_CHANNELS, dtype=object)
    log.add("message_delivered", user, ts, channel_names[channel])

    local = _to_local(ts, people.zone[user])
    rate = people.rates[user, channel]
    # react: a von Mises bump over the clock around the planted hour, with a floor.
    distance = _circular((local % _DAY) / _HOUR, people.planted(user, local))
    bump = np.exp(people.kappa[user] * (np.cos(2 * np.pi * distance / 24) - 1))
    p_react = rate * (_REACT_FLOOR + (1 - _REACT_FLOOR) * bump)
    quick = rng.random(n) < _REACT_QUICK
    delay = np.where(
        quick, rng.exponential(180.0, n), rng.lognormal(np.log(2_700.0), 1.0, n)
    ).astype(np.int64)
    react_at = ts + 5 + delay
    # check: read at the next inbox check, less likely the older the message is by then.
    checks = _checks(rng, people)
    key = (user.astype(np.int64) << 34) | ts
    at = np.searchsorted(checks, key, side="right")
    found = at < len(checks)
    nxt = checks[np.minimum(at, len(checks) - 1)]
    found &= (nxt >> 34) == user
    check_ts = nxt & ((1 << 34) - 1)
    age_h = np.where(found, (check_ts - ts) / _HOUR, np.inf)
    p_check = np.where(found, rate * np.exp(-age_h / _CHECK_AGE_H), 0.0)
    check_at = check_ts + rng.integers(5, 600, n)

    is_check = people.check[user]
    p = np.where(is_check, p_check, p_react)
    engaged = rng.random(n) < p
    when = np.where(is_check, check_at, react_at)
    if opens_per_person is not None:
        # Count only what the log will show: an open after the window has not happened.
        visible = when + 200 < _END
        engaged = _thin(
            rng, user, engaged & visible, p * visible, len(people.ids), opens_per_person
        )

    email, sms = MESSAGE_CHANNELS.index("email"), MESSAGE_CHANNELS.index("sms")
    proxied = np.zeros(n, dtype=bool) if proxy is None else proxy[user] & (channel == email)
    if proxy is not None:
        log.add(
            "message_open",
            user[proxied],
            ts[proxied] + rng.integers(0, _PROXY_DELAY_S + 1, int(proxied.sum())),
            "email",
            automated=True,
        )
    opened = engaged & (channel != sms) & ~proxied
    log.add("message_open", user[opened], when[opened], channel_names[channel[opened]])
    # SMS has no open tracking: engagement is the link click itself.
    clicked = engaged & ((channel == sms) | (rng.random(n) < _P_CLICK))
    click_at = when + rng.integers(10, 200, n)
    log.add("message_click", user[clicked], click_at[clicked], channel_names[channel[clicked]])


def _thin(
    rng: np.random.Generator,
    user: np.ndarray,
    engaged: np.ndarray,
    p: np.ndarray,
    n_people: int,
    keep: tuple[int, int],
) -> np.ndarray:
    """``engaged`` keeping a random ``keep``-range count per person, and one drawn by ``p``
    for each person without any (rows with ``p`` 0 are never drawn)."""
    quota = rng.integers(keep[0], keep[1] + 1, n_people)
    rows = np.flatnonzero(engaged)
    rows = rows[np.lexsort((rng.random(len(rows)), user[rows]))]
    rank = pd.Series(user[rows]).groupby(user[rows]).cumcount().to_numpy()
    kept = np.zeros(len(user), dtype=bool)
    kept[rows[rank < quota[user[rows]]]] = True
    # People without any engagement get one, drawn by its chance: the conditional draw.
    none = np.bincount(user[kept], minlength=n_people) == 0
    lacking = np.flatnonzero(none[user] & (p > 0))
    if len(lacking):
        frame = pd.DataFrame({"u": user[lacking], "w": p[lacking], "row": lacking})
        frame["cum"] = frame.groupby("u")["w"].cumsum()
        total = frame.groupby("u")["cum"].transform("max")
        draw = pd.Series(rng.random(n_people)[frame["u"].to_numpy()], index=frame.index)
        first = frame[frame["cum"] >= draw * total].groupby("u")["row"].first()
        kept[first.to_numpy()] = True
    return kept


# --- queries ------------------------------------------------------------------------------


def _planted_queries(
    people: _People,
    in_utc: bool = False,
    label: Callable[[int], str] = lambda _i: "hour",
) -> list[Query]:
    """One query per person for the first local midnight after the data (UTC midnight
    when ``in_utc``; the planted local hour then converted to UTC for that day)."""
    queries = []
    for i, user_id in enumerate(people.ids):
        zone = ZONES[people.zone[i]]
        hour = int(people.new_hour[i] if people.changes[i] else people.hour[i, 0])
        if in_utc:
            start = _first_midnight_after(END - timedelta(seconds=1), "UTC")
            hour = _utc_hour_of(hour, zone, start)
            zone = "UTC"
        else:
            start = _first_midnight_after(END, zone)
        queries.append(Query(user_id, "email", start, 24, zone, (hour,), label(i)))
    return queries


def _utc_hour_of(local_hour: int, zone: str, day_start: datetime) -> int:
    """UTC hour of local ``local_hour`` in ``zone`` within the 24 h from ``day_start``."""
    for k in range(24):
        moment = day_start + timedelta(hours=k)
        if moment.astimezone(ZoneInfo(zone)).hour == local_hour:
            return moment.hour
    return local_hour  # a skipped hour (summer time starts): no better answer exists


def _truth(people: _People) -> dict[str, str]:
    return {u: MESSAGE_CHANNELS[c] for u, c in zip(people.ids, people.best_channel, strict=True)}


def _message_regime(
    name: str,
    description: str,
    seed: int,
    people: int,
    schedule: _Schedule,
    sessions_share: float,
    opens_per_person: tuple[int, int] | None = None,
    proxy_share: float = 0.0,
    with_zone: bool = True,
    weekend_hours: bool = False,
    change_share: float = 0.0,
) -> tuple[Regime, _People, np.ndarray]:
    rng = np.random.default_rng(seed)
    crowd = _people(
        rng,
        people,
        "p",
        sessions_share,
        active_days_mean=12.0,
        weekend_hours=weekend_hours,
        change_share=change_share,
    )
    log = _Log(crowd, with_zone)
    _add_sessions(rng, crowd, log)
    proxy = rng.random(people) < proxy_share
    _add_messages(rng, crowd, schedule, log, opens_per_person, proxy if proxy_share else None)
    regime = Regime(name, description, log.frame(), [], _truth(crowd))
    return regime, crowd, proxy


# --- regimes ------------------------------------------------------------------------------


def activity_only(seed: int = 1, people: int = 1500) -> Regime:
    """Site/app activity only, no channel and no zone values; each person's latest fifth
    of active days held out, the first hour of each the target (:func:`held_out_days`)."""
    rng = np.random.default_rng(seed)
    crowd = _people(rng, people, "a", 1.0, active_days_mean=14.0, site_channels=False)
    # No planted hour here: every window is a habit of its own.
    crowd.windows[:, 0] = np.where(crowd.windows[:, 0] < 0, crowd.hour[:, 0], crowd.windows[:, 0])
    log = _Log(crowd, with_zone=False)
    _add_sessions(rng, crowd, log)
    regime = held_out_days(log.frame(), "activity_only", "day")
    regime.description = (
        "site/app bursts only (no channel, no zone): 1-3 habitual windows; latest fifth of "
        "active days held out, first hour of each"
    )
    return regime


def no_timezone(seed: int = 2, people: int = 1500) -> Regime:
    """Messages and activity of people in eight zones, logged without zone values."""
    regime, crowd, _ = _message_regime(
        "no_timezone",
        "people in 8 zones, no timezone values; 40-100 deliveries, half at 9/17 UTC; truth in UTC",
        seed,
        people,
        _Schedule((40, 100), (9, 17), 0.5, utc=True),
        sessions_share=0.7,
        with_zone=False,
    )
    regime.queries = _planted_queries(crowd, in_utc=True)
    return regime


def sparse_biased(seed: int = 3, people: int = 1500) -> Regime:
    """15-60 deliveries, 75 % at 10 and 18 local, a handful of opens (at most 12; as many as
    the person's reactions give, at least one), half of the people with sessions."""
    return _sparse("sparse_biased", seed, people, (3, 12), "a handful of opens (<= 12)")


def few_opens(seed: int = 4, people: int = 1500) -> Regime:
    """As :func:`sparse_biased` with 1-5 opens per person."""
    return _sparse("few_opens", seed, people, (1, 5), "1-5 opens")


def _sparse(name: str, seed: int, people: int, opens: tuple[int, int], said: str) -> Regime:
    regime, crowd, _ = _message_regime(
        name,
        f"15-60 deliveries, 75 % at 10/18 local, {said} each, half with sessions",
        seed,
        people,
        _Schedule((15, 60), (10, 18), 0.75),
        sessions_share=0.5,
        opens_per_person=opens,
    )
    regime.queries = _planted_queries(crowd)
    return regime


def proxy_opens(seed: int = 5, people: int = 1500) -> Regime:
    """A quarter of people behind a mail privacy proxy (automated opens on every email)."""
    regime, crowd, proxy = _message_regime(
        "proxy_opens",
        "25 % behind a mail privacy proxy (automated email opens; human signal: clicks, "
        "other channels); 40-100 deliveries, half at 11/20 local",
        seed,
        people,
        _Schedule((40, 100), (11, 20), 0.5),
        sessions_share=0.7,
        proxy_share=0.25,
    )
    regime.queries = _planted_queries(crowd, label=lambda i: "proxied hour" if proxy[i] else "hour")
    return regime


def _day_type_queries(crowd: _People) -> list[Query]:
    """Per person a query for the next weekday and one for the next Saturday, each from
    local midnight in their zone, for 24 h; truths: the planted weekday / weekend hour."""
    queries = []
    for i, user_id in enumerate(crowd.ids):
        zone = ZONES[crowd.zone[i]]
        day = _first_midnight_after(END, zone)
        weekday = saturday = None
        while weekday is None or saturday is None:
            local_day = day.astimezone(ZoneInfo(zone)).weekday()
            if local_day < 5 and weekday is None:
                weekday = day
            if local_day == 5 and saturday is None:
                saturday = day
            day = _first_midnight_after(day, zone)
        hours = crowd.hour[i]
        queries.append(
            Query(user_id, "email", weekday, 24, zone, (int(hours[0]),), "weekday hour", "weekday")
        )
        queries.append(
            Query(
                user_id, "email", saturday, 24, zone, (int(hours[1]),), "saturday hour", "weekend"
            )
        )
    return queries


def weekday_weekend(seed: int = 6, people: int = 1500) -> Regime:
    """Different planted hours on weekdays and weekends; a query for each kind of day."""
    regime, crowd, _ = _message_regime(
        "weekday_weekend",
        "planted weekday hour != weekend hour (>= 3 h apart); 60-120 deliveries, half at "
        "10/18 local",
        seed,
        people,
        _Schedule((60, 120), (10, 18), 0.5),
        sessions_share=0.8,
        weekend_hours=True,
    )
    regime.queries = _day_type_queries(crowd)
    return regime


def habit_change(seed: int = 7, people: int = 1500) -> Regime:
    """A third of people move their planted hour (and that activity window) half-way."""
    regime, crowd, _ = _message_regime(
        "habit_change",
        "a third move their planted hour (>= 4 h) half-way; truth: the new hour; 60-120 "
        "deliveries, half at 10/18 local",
        seed,
        people,
        _Schedule((60, 120), (10, 18), 0.5),
        sessions_share=0.8,
        change_share=1 / 3,
    )
    regime.queries = _planted_queries(
        crowd, label=lambda i: "changed hour" if crowd.changes[i] else "steady hour"
    )
    return regime


def everything_at_once(seed: int = 8, people: int = 1500) -> Regime:
    """The hard cases together: weekday and weekend habits, a third changing habits
    half-way, a quarter behind a privacy proxy, 30-90 deliveries with 75 % at two fixed
    hours; a query for the next weekday and the next Saturday."""
    regime, crowd, _ = _message_regime(
        "everything_at_once",
        "weekday != weekend habits, a third change half-way, a quarter proxied; 30-90 "
        "deliveries, 75 % at 10/18 local",
        seed,
        people,
        _Schedule((30, 90), (10, 18), 0.75),
        sessions_share=0.5,
        proxy_share=0.25,
        weekend_hours=True,
        change_share=1 / 3,
    )
    regime.queries = _day_type_queries(crowd)
    return regime


def channel_hours(seed: int = 9, people: int = 1500) -> Regime:
    """Where counting opens misleads: every channel used evenly but each at its own fixed
    hours (email 9, SMS 13, push 18, messenger 21 local, 80 % of sends), 30-90 deliveries
    in all, so a few per channel. The channel sent nearest a person's hours gets most of
    her opens whatever she prefers; the truth is her best rate per delivery."""
    regime, crowd, _ = _message_regime(
        "channel_hours",
        "channels used evenly, each at its own hours (email 9, sms 13, push 18, messenger "
        "21 local, 80 %); 30-90 deliveries in all",
        seed,
        people,
        _Schedule((30, 90), (), 0.8, channel_hours=((9,), (13,), (18,), (21,))),
        sessions_share=0.6,
    )
    regime.queries = _planted_queries(crowd)
    return regime


#: Every regime generator by name, in table order.
REGIMES: dict[str, Callable[..., Regime]] = {
    "activity_only": activity_only,
    "no_timezone": no_timezone,
    "sparse_biased": sparse_biased,
    "few_opens": few_opens,
    "proxy_opens": proxy_opens,
    "weekday_weekend": weekday_weekend,
    "habit_change": habit_change,
    "everything_at_once": everything_at_once,
    "channel_hours": channel_hours,
}


# --- held-out activity --------------------------------------------------------------------


def activity_holdout(
    frame: pd.DataFrame, fraction: float = 0.2
) -> tuple[pd.DataFrame, list[Query]]:
    """Split an activity log per person: their latest ``fraction`` of events (by time; on
    equal times the later row) are held out, the rest is the training frame.

    Each person with held-out activity (``SITE_ACTIVITY_EVENT_TYPES`` and human opens and
    clicks) gets one query: channel ``email``, planned from the next whole UTC hour after
    the training data, window 24 h, in the person's latest zone known in training (else
    UTC); its targets are the local hours of their held-out distinct active clock hours (a
    burst of events in one clock hour counts once). People with fewer than ``1/fraction``
    events keep everything in training and get no query.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    frame = frame.reset_index(drop=True)
    order = np.lexsort((np.arange(len(frame)), frame["timestamp"].to_numpy(), frame["user_id"]))
    users = frame["user_id"].to_numpy()[order]
    size = pd.Series(users).groupby(users).transform("size").to_numpy()
    rank = pd.Series(users).groupby(users).cumcount().to_numpy()
    held_sorted = rank >= size - np.floor(fraction * size)
    held = np.zeros(len(frame), dtype=bool)
    held[order] = held_sorted
    train = frame[~held].reset_index(drop=True)
    test = frame[held]

    kind = test["event_type"].astype(str)
    automated = test["automated"].fillna(False).astype(bool) if "automated" in test else False
    active = kind.isin(SITE_ACTIVITY_EVENT_TYPES) | (
        kind.isin(("message_open", "message_click")) & ~automated
    )
    test = test[active]
    zone = _latest_zones(train)
    clock = pd.DataFrame(
        {"u": test["user_id"].astype(str), "h": test["timestamp"].to_numpy() // _HOUR}
    ).drop_duplicates()
    clock["zone"] = [zone.get(u, "UTC") for u in clock["u"]]
    clock["local"] = _local_hours(clock["h"].to_numpy() * _HOUR, clock["zone"].to_numpy())
    start_ts = -(-int(train["timestamp"].max()) // _HOUR) * _HOUR if len(train) else _END
    start = datetime.fromtimestamp(start_ts, UTC)
    queries = [
        Query(str(u), "email", start, 24, str(g["zone"].iat[0]), tuple(g["local"].tolist()),
              "hour", held_out=True)
        for u, g in clock.sort_values(["u", "h"]).groupby("u", sort=True)
    ]  # fmt: skip
    return train, queries


def held_out_days(
    frame: pd.DataFrame, name: str, label: str = "day", fraction: float = 0.2
) -> Regime:
    """Split a log by whole days, as a send-time question is asked: "on that later day,
    at which local hour will she first be active?".

    A person's *active days* are the distinct local days (in their latest zone in the
    log, else UTC) with at least one event. The latest ``floor(fraction * days)`` of them
    are held out; people with fewer than ``1 / fraction`` active days keep everything in
    training and get no question. The training frame is every event on a person's other
    days. Each held-out day is one :class:`Query` (label ``label``) for that day's window,
    from its local midnight to the next (23, 24 or 25 h across a change of clock), in her
    zone, channel ``email``; its target is the local hour of her FIRST event that day.

    Why days and not the latest events (:func:`activity_holdout`): a session or a basket
    is many rows within an hour, so the latest rows mostly continue the last session (on
    MovieLens 77 % of them come within an hour of the last training rating), which
    rewards remembering the last hour rather than knowing the person's hours.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    frame = frame.reset_index(drop=True)
    users = frame["user_id"].astype(str)
    zoned = frame.assign(user_id=users)
    zoned = zoned[zoned["timezone"].fillna("").astype(str) != ""]
    latest = zoned.sort_values("timestamp", kind="stable").groupby("user_id")["timezone"].last()
    mapped = users.map(latest).to_numpy(dtype=object)  # NaN where no zone is known
    zone = np.where(pd.isna(mapped), "UTC", mapped).astype(object)

    ts = frame["timestamp"].to_numpy(dtype=np.int64)
    day = np.empty(len(frame), dtype="datetime64[D]")
    hour = np.empty(len(frame), dtype=np.int64)
    for name_ in pd.unique(zone):
        rows = np.flatnonzero(zone == name_)
        local = pd.DatetimeIndex(pd.to_datetime(ts[rows], unit="s", utc=True)).tz_convert(
            str(name_)
        )
        day[rows] = local.tz_localize(None).normalize().to_numpy().astype("datetime64[D]")
        hour[rows] = local.hour

    days = pd.DataFrame({"u": users, "day": day, "ts": ts, "hour": hour, "zone": zone})
    first = days.sort_values("ts", kind="stable").groupby(["u", "day"], sort=True).first()
    first = first.reset_index()
    rank = first.groupby("u").cumcount(ascending=False).to_numpy()  # 0: latest day
    count = first.groupby("u")["day"].transform("size").to_numpy()
    first["held"] = rank < np.floor(fraction * count)

    held_keys = pd.MultiIndex.from_frame(first.loc[first["held"], ["u", "day"]])
    row_keys = pd.MultiIndex.from_arrays([users, day])
    train = frame[~row_keys.isin(held_keys)].reset_index(drop=True)

    queries = []
    for row in first[first["held"]].itertuples(index=False):
        local_zone = ZoneInfo(str(row.zone))
        date = pd.Timestamp(row.day).date()
        midnight = datetime(date.year, date.month, date.day, tzinfo=local_zone)
        following = midnight.date() + timedelta(days=1)
        next_midnight = datetime(following.year, following.month, following.day, tzinfo=local_zone)
        start = midnight.astimezone(UTC)
        window = round((next_midnight.astimezone(UTC) - start).total_seconds() / 3600)
        queries.append(
            Query(
                str(row.u),
                "email",
                start,
                window,
                str(row.zone),
                (int(row.hour),),
                label,
                day_type="weekend" if date.weekday() >= 5 else "weekday",
            )
        )
    description = f"{name}: latest {fraction:.0%} of active days held out, first hour of each"
    return Regime(name, description, train, queries)


def _latest_zones(frame: pd.DataFrame) -> dict[str, str]:
    """User id -> the zone of their latest row with a non-empty zone."""
    if "timezone" not in frame.columns:
        return {}
    zoned = frame[frame["timezone"].fillna("").astype(str) != ""]
    latest = zoned.sort_values("timestamp", kind="stable").groupby("user_id")["timezone"].last()
    return {str(u): str(z) for u, z in latest.items()}


def _local_hours(ts: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """Local hour of each epoch second in its IANA zone name."""
    hours = np.zeros(len(ts), dtype=np.int64)
    for zone in pd.unique(zones):
        rows = np.flatnonzero(zones == zone)
        stamps = pd.DatetimeIndex(pd.to_datetime(ts[rows], unit="s", utc=True))
        hours[rows] = stamps.tz_convert(str(zone)).hour
    return hours
