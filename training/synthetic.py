"""Synthetic omnichannel event logs with a planted truth, for tests, demos and benchmarks.

:func:`generate` writes three files for an imaginary fashion brand:

``events.<ext>``
    the event log in the contract's column order (``service.events.COLUMNS``), sorted by
    timestamp: site sessions (``session_start``, ``view``, ``click``, ``favourite``,
    ``add_to_cart``, ``purchase``, ``dislike``) and messages (``message_delivered``,
    ``message_open``, ``message_click``).
``items.<ext>``
    the catalogue: ``item_id``, ``category``, ``title``, ``price``, ``in_stock``.
``truth.json``
    what was planted per user (taste categories, time zone, active local hour, preferred
    message channel, open rates and whether a mail privacy proxy opens their email) and
    in what order items are seen (``sequences``), so tests can check that models recover it.

The log is a window export: only events in ``[end - days, end)`` are kept. Sessions and
messages are kept whole when they start in the window, except that events after ``end``
have not happened yet, so every open has its delivery, every purchase its cart and view,
and every planted view (below) what caused it.

Some order is planted too, for models that learn what follows what. A planted view comes
shortly after its cause: later in the same session or, as often, first thing in the
person's next session. It has the usual chances of a click, favourite, cart and purchase,
times 1.5.

* **Accessories.** A fifth of the items are *leads*, each with one *follower*: an item of
  another category (so tastes do not explain it), not among the most popular tenth, that
  is neither a lead nor another lead's follower. A person who carts a lead views its
  follower after it with probability 0.6; one who only views the lead, with 0.2 (carts
  alone, about one view in eight, would leave the follower lost among the popular items
  that follow any view). ``sequences.followers`` maps lead ids to follower ids.
* **Series** (next episode, next size, a journey through a category): one per 40 items,
  each 3 to 5 items of one category: a first item not among the most popular tenth, then
  items from the less popular half (seen mostly by the people going through the series).
  Half the people who view a first item go through its series in order, each step caused
  by the one before, the next reached with probability 0.8. ``sequences.series`` lists
  each series' item ids in order.

Leads, followers and series share no item, so nothing planted starts another sequence.

The brand's historical send schedule is deliberately biased: most deliveries go out at
:data:`SEND_HOURS_UTC`, and opens follow deliveries within about half an hour. A histogram
of open hours therefore mirrors the brand's schedule; a person's own best hour only shows
up as the open *rate per delivery* by local hour.

About :data:`PROXY_SHARE` of people read email through a privacy proxy (as Apple Mail
Privacy Protection does): every email delivered to them is "opened" by the proxy within a
minute, whatever the hour, and those opens carry ``automated=True``. Their own opens follow
as for everyone else. Every other event has ``automated=False``.

Everything is drawn from one ``numpy.random.default_rng(seed)`` and vectorised, so the
same arguments give byte-identical files; it runs at roughly a second per million events.
The planted order is drawn after everything but the opt-outs, so without it
(``sequences=False``) every other event is the same.

**Opt-outs**, drawn last, from a second generator seeded from ``seed`` (so they are the
same with or without the planted order): :data:`OPT_OUT_SHARE` of people
``unsubscribe`` from the message channel they open least, at a random moment of the
window, and a quarter of them
``resubscribe`` to it later. Deliveries on it stop from then until the resubscribe.
``users.<id>.opted_out`` in ``truth.json`` lists the channels closed at the window's end.
Without them (``opt_outs=False``) every other event is the same.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from service.errors import BadInput
from service.events import CHANNELS, COLUMNS, EVENT_TYPES, MESSAGE_CHANNELS

logger = logging.getLogger(__name__)

#: Output formats and their file extensions.
FORMATS: tuple[str, ...] = ("parquet", "csv")
#: Default end of the window: fixed, so a seed alone pins the output.
DEFAULT_END = datetime(2026, 10, 1, tzinfo=UTC)
#: UTC hours at which the brand has historically sent most of its messages.
SEND_HOURS_UTC: tuple[int, ...] = (9, 13, 18)
#: Share of people whose email a privacy proxy opens automatically on delivery.
PROXY_SHARE = 0.3
#: Share of people who unsubscribe from one message channel during the window.
OPT_OUT_SHARE = 0.08
_P_RESUBSCRIBE = 0.25
#: Time zones users live in.
TIMEZONES: tuple[str, ...] = (
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
)
# category -> (median price, product noun used in titles)
_CATEGORY_SPECS: dict[str, tuple[float, str]] = {
    "sneakers": (95.0, "Sneaker"),
    "boots": (150.0, "Chelsea Boot"),
    "dresses": (85.0, "Wrap Dress"),
    "jackets": (160.0, "Bomber Jacket"),
    "bags": (120.0, "Tote Bag"),
    "watches": (230.0, "Chronograph Watch"),
    "jeans": (75.0, "Slim Jeans"),
    "shirts": (50.0, "Oxford Shirt"),
    "sunglasses": (110.0, "Aviator Sunglasses"),
    "jewellery": (90.0, "Pendant Necklace"),
    "knitwear": (80.0, "Merino Sweater"),
    "hats": (35.0, "Wool Beanie"),
}
#: Item categories, in the order the catalogue is built from.
CATEGORIES: tuple[str, ...] = tuple(_CATEGORY_SPECS)
_ADJECTIVES = ("Classic", "Urban", "Vintage", "Everyday", "Premium", "Signature", "Essential")
_COLOURS = ("Black", "White", "Navy", "Olive", "Sand", "Burgundy", "Grey")

_DAY = 86_400
_HOUR = 3_600

# Catalogue.
_POPULARITY_EXPONENT = 1.0
_PRICE_SPREAD = 0.35  # sd of log price around the category median
_OUT_OF_STOCK = 0.10

# People.
_MAX_TASTES = 3
_TASTE_CONCENTRATION = 2.0  # Dirichlet alpha of the weights between a user's tastes
_ACTIVE_HOURS = (7, 22)  # inclusive range of preferred local hours
_SESSIONS_PER_DAY_MEAN = 0.7
_SESSIONS_PER_DAY_SPREAD = 0.8  # sigma of the lognormal: a long tail of heavy users
_PREFERRED_OPEN_RATE = (0.45, 0.07, 0.25, 0.7)  # mean, sd, clip low, clip high
_OTHER_OPEN_RATE = (0.05, 0.12)  # uniform range
_OTHER_SITE_CHANNEL = 0.10  # sessions on the site channel the user does not prefer
_STORE_VISIT = 0.05

# Sessions.
_SESSION_HOUR_SD = 1.5
_MEAN_VIEWS = 3.0
_VIEW_GAP_S = (10.0, 140.0)  # floor and exponential mean of the time between views
_TASTE_SHARE = 0.8  # views drawn from the user's tastes; the rest by global popularity
# (on a taste item, off-taste item) probabilities per view
_P_CLICK = (0.12, 0.06)
_P_FAVOURITE = (0.10, 0.04)
_P_CART = (0.13, 0.05)
_P_PURCHASE_GIVEN_CART = (0.45, 0.25)
_P_DISLIKE_OFF_TASTE = 0.02

# Planted order.
_LEAD_SHARE = 0.2  # items with a planted follower
_POPULAR_SHARE = 0.1  # the most popular items are never followers nor in a series
_P_FOLLOW_CART = 0.6  # a cart of a lead is followed by a view of its follower
_P_FOLLOW_VIEW = 0.2  # ... and a view of a lead that was not carted
_NEXT_SESSION = 0.5  # planted views first thing in the next session, else later in this one
_FOLLOW_GAP_S = (10, 120)  # after the cause's last event, when in the same session
_FIRST_THING_S = (4, 6)  # after a session's start: before its first drawn view
_ITEMS_PER_SERIES = 40
_SERIES_LENGTH = (3, 5)  # inclusive
_SERIES_TAIL = 0.5  # share of items, the most popular, never a later step of a series
_P_SERIES_START = 0.5  # a person's first view of a series' first item starts it
_P_SERIES_NEXT = 0.8  # each further step, given the one before
_PLANTED_BOOST = 1.5  # click, favourite, cart and purchase chances on a planted view

# Messages.
_MESSAGES_PER_WEEK = {"email": 4.0, "push": 2.5, "messenger": 1.5, "sms": 1.0}
_SCHEDULED_SHARE = 0.75
_AWAKE_FLOOR = 0.15
_AWAKE_SD_H = 2.0
_OPEN_DELAY_MEAN_S = 1_800.0
_P_MESSAGE_CLICK = 0.3
_PROXY_DELAY_S = 60  # a proxy fetches the email within this many seconds (inclusive)

_TYPE = {name: code for code, name in enumerate(EVENT_TYPES)}
_CHANNEL = {name: code for code, name in enumerate(CHANNELS)}
_SITE_CHANNELS = (_CHANNEL["web"], _CHANNEL["app"])
_MESSAGE_EVENT_TYPES = ("message_delivered", "message_open", "message_click")
_MESSAGE_CHANNEL_CODES = np.array([_CHANNEL[c] for c in MESSAGE_CHANNELS], dtype=np.int8)


@dataclass(frozen=True)
class GeneratedData:
    """Paths of the files :func:`generate` wrote."""

    events: Path
    """Event log, columns ``service.events.COLUMNS``, sorted by timestamp."""
    items: Path
    """Item catalogue: ``item_id``, ``category``, ``title``, ``price``, ``in_stock``."""
    truth: Path
    """Planted truth (JSON): ``seed``, ``categories``, ``send_hours_utc``, ``start`` and
    ``end`` (epoch seconds of the window), ``users`` keyed by user id, and ``sequences``
    (``followers``: lead id → follower id; ``series``: lists of item ids in order)."""


def generate(
    users: int,
    items: int,
    days: int,
    seed: int,
    out_dir: Path | str,
    fmt: str = "parquet",
    end: datetime | None = None,
    sequences: bool = True,
    opt_outs: bool = True,
) -> GeneratedData:
    """Write a synthetic event log, item catalogue and planted truth into ``out_dir``.

    Parameters
    ----------
    users, items, days
        How many users and catalogue items, and how many days the log covers (each >= 1).
    seed
        Seed of the only random generator used: equal arguments give identical files.
    out_dir
        Folder for ``events.<fmt>``, ``items.<fmt>`` and ``truth.json``; created if
        missing, existing files are overwritten.
    fmt
        ``"parquet"`` or ``"csv"``. In CSV a missing ``value`` is an empty field.
    end
        End of the window (exclusive); naive datetimes are taken as UTC. Defaults to
        :data:`DEFAULT_END`.
    sequences
        Plant the order described in the module docstring (leads and their followers,
        series). Without it, the events are those of a log without planted order (every
        other event the same as with it) and ``truth.json`` lists no sequences.
    opt_outs
        Plant the opt-outs described in the module docstring; without, none.

    Raises
    ------
    BadInput
        naming ``users``, ``items``, ``days`` or ``format``.
    """
    _check_count("users", users)
    _check_count("items", items)
    _check_count("days", days)
    if fmt not in FORMATS:
        raise BadInput("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    end = DEFAULT_END if end is None else end
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    end_ts = int(end.timestamp())
    clock = _Clock(end_ts - days * _DAY, end_ts)

    logger.info("generating %d users, %d items, %d days (seed %d)", users, items, days, seed)
    rng = np.random.default_rng(seed)
    catalogue = _make_catalogue(rng, items)
    people = _make_people(rng, users, catalogue)
    log = _EventLog()
    visits = _add_sessions(rng, people, catalogue, clock, log)
    proxy_opens = _add_messages(rng, people, clock, log)
    # Drawn last, so that planting order leaves every other event as it was.
    if sequences:
        planted = _plant_sequences(rng, people, catalogue, visits, log)
    else:
        planted = _Sequences(follower=np.full(len(catalogue.ids), -1, np.int32), series=[])
    # A generator of their own: the same opt-outs with or without the planted order.
    closed = (
        _plant_opt_outs(np.random.default_rng([seed, 1]), people, clock, log) if opt_outs else {}
    )
    events = log.to_table(people, catalogue, clock.end)
    logger.info("generated %d events for %d users", events.num_rows, users)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = GeneratedData(
        events=out / f"events.{fmt}", items=out / f"items.{fmt}", truth=out / "truth.json"
    )
    _write(events, data.events, fmt)
    _write(catalogue.to_table(), data.items, fmt)
    truth = _truth(seed, clock, people, catalogue, proxy_opens, planted, closed)
    data.truth.write_text(json.dumps(truth) + "\n", encoding="utf-8")
    logger.info("wrote %s, %s and %s", data.events, data.items, data.truth)
    return data


def _check_count(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise BadInput(field, f"must be an integer, got {value!r}")
    if value < 1:
        raise BadInput(field, f"must be at least 1, got {value}")


class _Clock:
    """The window plus each zone's UTC offset per calendar day.

    Offsets are looked up per (zone, day) in a small table instead of per event, which
    is exact except on the day of a DST switch.
    """

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        # One spare day on each side: local dates near the edges map across UTC midnight.
        self.base = start - start % _DAY - _DAY
        self.n_days = (end - self.base) // _DAY + 2
        noons = [
            datetime.fromtimestamp(self.base + d * _DAY + 12 * _HOUR, UTC)
            for d in range(self.n_days)
        ]
        self.offsets = np.array(
            [
                [int(n.astimezone(ZoneInfo(z)).utcoffset().total_seconds()) for n in noons]
                for z in TIMEZONES
            ],
            dtype=np.int64,
        )

    def local_to_utc(self, zone: np.ndarray, day: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """Epoch seconds of local time ``seconds`` after midnight on table day ``day``."""
        return self.base + day * _DAY + seconds - self.offsets[zone, day]

    def local_hour(self, zone: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Local wall-clock hour (fractional) of epoch seconds ``ts`` in ``zone``."""
        local = ts + self.offsets[zone, (ts - self.base) // _DAY]
        return (local % _DAY) / _HOUR


@dataclass(frozen=True)
class _Catalogue:
    ids: list[str]
    category: np.ndarray  # code into CATEGORIES
    popularity: np.ndarray
    price: np.ndarray
    in_stock: np.ndarray
    titles: list[str]
    present: np.ndarray  # category codes that have at least one item
    # Items sorted by category, with cumulative popularity, to draw by popularity within
    # a category (or globally) with one searchsorted.
    by_category: np.ndarray
    cum_popularity: np.ndarray
    first: np.ndarray  # per category: first position in by_category
    last: np.ndarray  # per category: last position in by_category

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "item_id": pa.array(self.ids, pa.string()),
                "category": pa.array([CATEGORIES[c] for c in self.category], pa.string()),
                "title": pa.array(self.titles, pa.string()),
                "price": pa.array(self.price, pa.float64()),
                "in_stock": pa.array(self.in_stock, pa.bool_()),
            }
        )


def _make_catalogue(rng: np.random.Generator, n: int) -> _Catalogue:
    n_cat = len(CATEGORIES)
    share = rng.dirichlet(np.full(n_cat, 4.0))
    # Every category gets an item first (when there are enough), the rest by share.
    category = np.concatenate(
        [np.arange(min(n, n_cat)), rng.choice(n_cat, size=max(n - n_cat, 0), p=share)]
    )
    category = rng.permutation(category)
    rank = rng.permutation(n) + 1
    popularity = 1.0 / rank**_POPULARITY_EXPONENT
    medians = np.array([spec[0] for spec in _CATEGORY_SPECS.values()])
    price = np.round(medians[category] * rng.lognormal(0.0, _PRICE_SPREAD, n), 2)
    in_stock = rng.random(n) >= _OUT_OF_STOCK
    adjective = rng.integers(0, len(_ADJECTIVES), n)
    colour = rng.integers(0, len(_COLOURS), n)
    nouns = [spec[1] for spec in _CATEGORY_SPECS.values()]
    titles = [
        f"{_ADJECTIVES[a]} {_COLOURS[c]} {nouns[k]}"
        for a, c, k in zip(adjective, colour, category, strict=True)
    ]
    width = max(4, len(str(n - 1)))

    by_category = np.argsort(category, kind="stable")
    counts = np.bincount(category, minlength=n_cat)
    last = np.cumsum(counts) - 1
    return _Catalogue(
        ids=[f"i{j:0{width}d}" for j in range(n)],
        category=category,
        popularity=popularity,
        price=price,
        in_stock=in_stock,
        titles=titles,
        present=np.flatnonzero(counts),
        by_category=by_category,
        cum_popularity=np.cumsum(popularity[by_category]),
        first=last - counts + 1,
        last=last,
    )


@dataclass(frozen=True)
class _People:
    ids: list[str]
    zone: np.ndarray  # code into TIMEZONES
    tastes: np.ndarray  # (users, _MAX_TASTES) category codes, strongest first, -1 padded
    taste_weight: np.ndarray  # (users, _MAX_TASTES), rows sum to 1
    n_tastes: np.ndarray
    taste_mask: np.ndarray  # (users, categories) bool
    active_hour: np.ndarray
    preferred: np.ndarray  # index into MESSAGE_CHANNELS
    open_rate: np.ndarray  # (users, len(MESSAGE_CHANNELS))
    sessions_per_day: np.ndarray
    site_channel: np.ndarray  # channel code (web or app)


def _make_people(rng: np.random.Generator, n: int, catalogue: _Catalogue) -> _People:
    n_cat = len(CATEGORIES)
    # Distinct random categories per user: sort random keys, absent categories last.
    keys = rng.random((n, n_cat))
    absent = np.ones(n_cat, dtype=bool)
    absent[catalogue.present] = False
    keys[:, absent] = np.inf
    candidates = np.argsort(keys, axis=1)[:, :_MAX_TASTES]
    n_tastes = np.minimum(rng.integers(1, _MAX_TASTES + 1, n), len(catalogue.present))
    used = np.arange(_MAX_TASTES) < n_tastes[:, None]
    weight = rng.gamma(_TASTE_CONCENTRATION, size=(n, _MAX_TASTES)) * used
    weight /= weight.sum(axis=1, keepdims=True)
    strongest_first = np.argsort(-weight, axis=1, kind="stable")
    weight = np.take_along_axis(weight, strongest_first, axis=1)
    tastes = np.where(used, np.take_along_axis(candidates, strongest_first, axis=1), -1)
    taste_mask = np.zeros((n, n_cat), dtype=bool)
    rows, cols = np.nonzero(used)
    taste_mask[rows, tastes[rows, cols]] = True

    zone = rng.integers(0, len(TIMEZONES), n)
    active_hour = rng.integers(_ACTIVE_HOURS[0], _ACTIVE_HOURS[1] + 1, n)

    n_msg = len(MESSAGE_CHANNELS)
    preferred = rng.integers(0, n_msg, n)
    open_rate = rng.uniform(*_OTHER_OPEN_RATE, size=(n, n_msg))
    mean, sd, low, high = _PREFERRED_OPEN_RATE
    open_rate[np.arange(n), preferred] = np.clip(rng.normal(mean, sd, n), low, high)

    sigma = _SESSIONS_PER_DAY_SPREAD
    sessions_per_day = rng.lognormal(np.log(_SESSIONS_PER_DAY_MEAN) - sigma**2 / 2, sigma, n)
    site_channel = np.array(_SITE_CHANNELS, dtype=np.int8)[rng.integers(0, 2, n)]
    width = max(5, len(str(n - 1)))
    return _People(
        ids=[f"u{i:0{width}d}" for i in range(n)],
        zone=zone,
        tastes=tastes,
        taste_weight=weight,
        n_tastes=n_tastes,
        taste_mask=taste_mask,
        active_hour=active_hour,
        preferred=preferred,
        open_rate=open_rate,
        sessions_per_day=sessions_per_day,
        site_channel=site_channel,
    )


class _EventLog:
    """Columns of events collected in parts; parts are added in causal order so a
    stable sort by timestamp keeps, e.g., a view before its cart on equal seconds."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(
        self,
        event_type: str,
        user: np.ndarray,
        ts: np.ndarray,
        channel: np.ndarray,
        item: np.ndarray | None = None,
        automated: bool = False,
    ) -> None:
        n = len(user)
        self._parts.append(
            (
                user.astype(np.int32, copy=False),
                np.full(n, -1, np.int32) if item is None else item.astype(np.int32, copy=False),
                np.full(n, _TYPE[event_type], np.int8),
                ts.astype(np.int64, copy=False),
                channel.astype(np.int8, copy=False),
                np.full(n, automated, dtype=bool),
            )
        )

    def drop_deliveries(
        self, people: np.ndarray, channels: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> None:
        """Drop the message events (deliveries and what followed them) of ``people[k]``
        on ``channels[k]`` timed in ``[start[k], end[k])``: nothing is sent there."""
        top = int(people.max()) + 1 if len(people) else 0
        channel_of = np.full(top, -1, np.int16)
        since, until = np.zeros(top, np.int64), np.zeros(top, np.int64)
        channel_of[people], since[people], until[people] = channels, start, end
        message = np.array([_TYPE[t] for t in _MESSAGE_EVENT_TYPES], np.int8)
        for n, (user, item, etype, ts, channel, automated) in enumerate(self._parts):
            if not np.isin(etype[:1], message).any():
                continue
            known = user < top
            hit = np.zeros(len(user), dtype=bool)
            u = user[known]
            hit[known] = (channel_of[u] == channel[known]) & (ts[known] >= since[u])
            hit[known] &= ts[known] < until[u]
            keep = ~hit
            self._parts[n] = tuple(c[keep] for c in (user, item, etype, ts, channel, automated))

    def to_table(self, people: _People, catalogue: _Catalogue, end: int) -> pa.Table:
        """All events before ``end``, sorted by timestamp, as a table in ``COLUMNS`` order."""
        user, item, etype, ts, channel, automated = (
            np.concatenate(c) for c in zip(*self._parts, strict=True)
        )
        self._parts.clear()
        # A window export: what would happen after the end has not happened yet.
        keep = np.flatnonzero(ts < end)
        order = keep[_stable_order(ts[keep])]
        user, item, etype, ts, channel, automated = (
            c[order] for c in (user, item, etype, ts, channel, automated)
        )
        priced = (etype == _TYPE["add_to_cart"]) | (etype == _TYPE["purchase"])
        value = np.where(priced, catalogue.price[item], np.nan)
        item_ids = pa.array([*catalogue.ids, ""], pa.string())
        columns = {
            "user_id": pa.array(people.ids, pa.string()).take(user),
            "item_id": item_ids.take(np.where(item < 0, len(catalogue.ids), item)),
            "event_type": pa.array(EVENT_TYPES, pa.string()).take(etype),
            "timestamp": pa.array(ts, pa.int64()),
            "channel": pa.array(CHANNELS, pa.string()).take(channel),
            "timezone": pa.array(TIMEZONES, pa.string()).take(people.zone[user]),
            "value": pa.array(value, pa.float64(), mask=~priced),
            "automated": pa.array(automated, pa.bool_()),
        }
        return pa.table([columns[name] for name in COLUMNS], names=list(COLUMNS))


def _stable_order(ts: np.ndarray) -> np.ndarray:
    """Indices sorting ``ts``, ties in input order (``argsort(kind="stable")``, faster)."""
    # Unique keys (offset, position) need no stable sort, and sorting plain int64 values
    # is several times quicker than a stable argsort.
    offset = ts - ts.min(initial=0)
    position_bits = max(len(ts) - 1, 1).bit_length()
    if int(offset.max(initial=0)).bit_length() + position_bits > 62:
        return np.argsort(ts, kind="stable")
    offset <<= position_bits
    offset |= np.arange(len(ts))
    offset.sort()
    offset &= (1 << position_bits) - 1
    return offset


@dataclass(frozen=True)
class _Visits:
    """Site sessions and the views drawn in them (not planted ones)."""

    user: np.ndarray  # per session
    start: np.ndarray
    channel: np.ndarray
    view_session: np.ndarray  # per view: index of its session
    view_item: np.ndarray
    view_ts: np.ndarray
    carted: np.ndarray  # per view: whether it was carted
    done: np.ndarray  # per view: timestamp of its purchase, else of its cart, else its own


def _by_taste(in_taste: np.ndarray, p: tuple[float, float]) -> np.ndarray:
    return np.where(in_taste, p[0], p[1])


def _add_sessions(
    rng: np.random.Generator,
    people: _People,
    catalogue: _Catalogue,
    clock: _Clock,
    log: _EventLog,
) -> _Visits:
    """Sessions, their views and what the views lead to; returns them for planting."""
    # Draw over every table day, then keep what starts inside the window: that leaves the
    # density flat across the window whatever each zone's offset.
    counts = rng.poisson(people.sessions_per_day * clock.n_days)
    user = np.repeat(np.arange(len(people.ids), dtype=np.int32), counts)
    day = rng.integers(0, clock.n_days, len(user))
    hour = (people.active_hour[user] + rng.normal(0.0, _SESSION_HOUR_SD, len(user))) % 24
    start = clock.local_to_utc(people.zone[user], day, (hour * _HOUR).astype(np.int64))
    inside = (start >= clock.start) & (start < clock.end)
    user, start = user[inside], start[inside]
    n_sessions = len(user)

    pick = rng.random(n_sessions)
    site = people.site_channel[user]
    other_site = np.where(site == _SITE_CHANNELS[0], _SITE_CHANNELS[1], _SITE_CHANNELS[0])
    channel = np.where(pick < _OTHER_SITE_CHANNEL, other_site, site)
    channel = np.where(pick > 1.0 - _STORE_VISIT, _CHANNEL["store"], channel).astype(np.int8)
    log.add("session_start", user, start, channel)

    n_views = rng.geometric(1.0 / _MEAN_VIEWS, n_sessions)
    session = np.repeat(np.arange(n_sessions, dtype=np.int32), n_views)
    gaps = _VIEW_GAP_S[0] + rng.exponential(_VIEW_GAP_S[1], len(session))
    elapsed = np.cumsum(gaps)
    first = np.cumsum(n_views) - n_views
    elapsed -= (elapsed[first] - gaps[first])[session]
    view_ts = start[session] + elapsed.astype(np.int64)
    view_user = user[session]
    item = _draw_items(rng, people, catalogue, view_user)
    in_taste = people.taste_mask[view_user, catalogue.category[item]]
    carted, done = _funnel(
        rng, log, view_user, channel[session], item, view_ts, in_taste, boost=1.0
    )
    return _Visits(
        user=user,
        start=start,
        channel=channel,
        view_session=session,
        view_item=item,
        view_ts=view_ts,
        carted=carted,
        done=done,
    )


def _funnel(
    rng: np.random.Generator,
    log: _EventLog,
    user: np.ndarray,
    channel: np.ndarray,
    item: np.ndarray,
    view_ts: np.ndarray,
    in_taste: np.ndarray,
    boost: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Log one view per entry, with what it leads to: a click before it, a favourite, a
    cart and purchase or a dislike after it. ``boost`` multiplies the chances of all but
    the dislike. Returns which views were carted and, per view, the timestamp of its
    last event (the purchase if bought, else the cart if carted, else the view)."""
    n = len(item)

    def emit(event_type: str, mask: np.ndarray, ts: np.ndarray) -> None:
        log.add(event_type, user[mask], ts, channel[mask], item[mask])

    def chance(p: tuple[float, float]) -> np.ndarray:
        return np.minimum(_by_taste(in_taste, p) * boost, 1.0)

    # Recommendation-widget clicks lead to the view a moment later.
    clicked = rng.random(n) < chance(_P_CLICK)
    emit("click", clicked, view_ts[clicked] - rng.integers(1, 4, clicked.sum()))
    log.add("view", user, view_ts, channel, item)

    favourite = rng.random(n) < chance(_P_FAVOURITE)
    carted = rng.random(n) < chance(_P_CART)
    bought = carted & (rng.random(n) < chance(_P_PURCHASE_GIVEN_CART))
    disliked = ~in_taste & ~favourite & ~carted & (rng.random(n) < _P_DISLIKE_OFF_TASTE)
    emit("favourite", favourite, view_ts[favourite] + rng.integers(5, 60, favourite.sum()))
    cart_ts = view_ts[carted] + rng.integers(10, 120, carted.sum())
    emit("add_to_cart", carted, cart_ts)
    checkout = 30 + rng.exponential(120.0, bought.sum()).astype(np.int64)
    purchase_ts = cart_ts[bought[carted]] + checkout
    emit("purchase", bought, purchase_ts)
    emit("dislike", disliked, view_ts[disliked] + rng.integers(2, 20, disliked.sum()))
    done = view_ts.copy()
    done[carted] = cart_ts
    done[bought] = purchase_ts
    return carted, done


def _draw_items(
    rng: np.random.Generator, people: _People, catalogue: _Catalogue, user: np.ndarray
) -> np.ndarray:
    """One viewed item per entry of ``user``: from a taste category or globally, by
    popularity in either case."""
    n = len(user)
    from_taste = rng.random(n) < _TASTE_SHARE
    # Which taste: compare one uniform against the user's cumulative weights.
    cumulative = np.cumsum(people.taste_weight, axis=1)
    u = rng.random(n)
    slot = np.zeros(n, dtype=np.int8)
    for column in range(_MAX_TASTES - 1):
        slot += u >= cumulative[user, column]
    slot = np.minimum(slot, people.n_tastes[user] - 1)  # rounding can leave sum < 1
    category = people.tastes[user, slot]

    cum = catalogue.cum_popularity
    first = np.where(from_taste, catalogue.first[category], 0)
    last = np.where(from_taste, catalogue.last[category], len(cum) - 1)
    low = np.where(first > 0, cum[first - 1], 0.0)
    target = low + rng.random(n) * (cum[last] - low)
    position = np.clip(np.searchsorted(cum, target, side="right"), first, last)
    return catalogue.by_category[position].astype(np.int32)


def _add_messages(
    rng: np.random.Generator, people: _People, clock: _Clock, log: _EventLog
) -> np.ndarray:
    """Deliveries, opens and clicks; returns which people have a privacy proxy on email."""
    n_users, n_msg = people.open_rate.shape
    per_week = np.array([_MESSAGES_PER_WEEK[c] for c in MESSAGE_CHANNELS])
    counts = rng.poisson(np.broadcast_to(per_week * clock.n_days / 7, (n_users, n_msg)))
    user = np.repeat(np.repeat(np.arange(n_users, dtype=np.int32), n_msg), counts.ravel())
    which = np.repeat(np.tile(np.arange(n_msg), n_users), counts.ravel())
    n = len(user)

    day = rng.integers(0, clock.n_days, n)
    scheduled = rng.random(n) < _SCHEDULED_SHARE
    send_hours = np.array(SEND_HOURS_UTC)
    hour = np.where(
        scheduled, send_hours[rng.integers(0, len(send_hours), n)], rng.integers(0, 24, n)
    )
    # Scheduled batches leave within a quarter of an hour; ad-hoc sends any minute.
    second = np.where(scheduled, rng.integers(0, 900, n), rng.integers(0, _HOUR, n))
    sent = clock.base + day * _DAY + hour * _HOUR + second
    inside = (sent >= clock.start) & (sent < clock.end)
    user, which, sent = user[inside], which[inside], sent[inside]
    n = len(user)
    channel = _MESSAGE_CHANNEL_CODES[which]
    log.add("message_delivered", user, sent, channel)

    distance = np.abs(clock.local_hour(people.zone[user], sent) - people.active_hour[user])
    distance = np.minimum(distance, 24 - distance)
    awake = _AWAKE_FLOOR + (1 - _AWAKE_FLOOR) * np.exp(-(distance**2) / (2 * _AWAKE_SD_H**2))
    opened = rng.random(n) < people.open_rate[user, which] * awake
    open_ts = sent + 5 + rng.exponential(_OPEN_DELAY_MEAN_S, n).astype(np.int64)
    clicked = opened & (rng.random(n) < _P_MESSAGE_CLICK)
    click_ts = open_ts + rng.integers(20, 180, n)
    # Drawn last, so that adding proxies left every other event as it was.
    proxy = rng.random(n_users) < PROXY_SHARE
    fetched = proxy[user] & (channel == _CHANNEL["email"])
    fetch_ts = sent[fetched] + rng.integers(0, _PROXY_DELAY_S + 1, fetched.sum())
    log.add("message_open", user[fetched], fetch_ts, channel[fetched], automated=True)
    log.add("message_open", user[opened], open_ts[opened], channel[opened])
    log.add("message_click", user[clicked], click_ts[clicked], channel[clicked])
    return proxy


def _plant_opt_outs(
    rng: np.random.Generator, people: _People, clock: _Clock, log: _EventLog
) -> dict[int, str]:
    """Unsubscribes (and some resubscribes) from each chosen person's least-opened
    channel; deliveries on it between the two are dropped. Returns person -> the channel
    still closed at the window's end."""
    n_users = len(people.ids)
    chosen = np.flatnonzero(rng.random(n_users) < OPT_OUT_SHARE)
    channel_of = np.argmin(people.open_rate[chosen], axis=1)
    left = rng.integers(clock.start, clock.end, len(chosen))
    back = np.where(
        rng.random(len(chosen)) < _P_RESUBSCRIBE,
        left + (rng.random(len(chosen)) * (clock.end - left)).astype(np.int64),
        clock.end,
    )
    codes = _MESSAGE_CHANNEL_CODES[channel_of]
    log.add("unsubscribe", chosen.astype(np.int32), left, codes)
    again = back < clock.end
    log.add("resubscribe", chosen[again].astype(np.int32), back[again], codes[again])
    log.drop_deliveries(chosen, codes, left, back)
    return {
        int(person): MESSAGE_CHANNELS[int(c)]
        for person, c, reopened in zip(chosen, channel_of, again, strict=True)
        if not reopened
    }


@dataclass(frozen=True)
class _Sequences:
    """The planted order: per item its follower (-1 for none), and the series."""

    follower: np.ndarray
    series: list[np.ndarray]


def _choose_sequences(rng: np.random.Generator, catalogue: _Catalogue) -> _Sequences:
    n = len(catalogue.ids)
    # A popular follower or series step would be found by popularity alone.
    by_popularity = np.argsort(-catalogue.popularity, kind="stable")
    free = np.ones(n, dtype=bool)
    free[by_popularity[: int(np.ceil(n * _POPULAR_SHARE))]] = False
    # Later steps of a series come from the long tail: they are seen mostly by the
    # people going through the series, so their own views do not drown its order.
    tail = np.zeros(n, dtype=bool)
    tail[by_popularity[int(np.ceil(n * _SERIES_TAIL)) :]] = True

    series = []
    for _ in range(n // _ITEMS_PER_SERIES):
        length = int(rng.integers(_SERIES_LENGTH[0], _SERIES_LENGTH[1] + 1))
        heads = np.bincount(catalogue.category[free & ~tail], minlength=len(CATEGORIES))
        rests = np.bincount(catalogue.category[free & tail], minlength=len(CATEGORIES))
        fits = np.flatnonzero((heads >= 1) & (rests >= length - 1))
        if not len(fits):
            break
        in_category = free & (catalogue.category == fits[rng.integers(0, len(fits))])
        head = rng.choice(np.flatnonzero(in_category & ~tail), 1)
        rest = rng.choice(np.flatnonzero(in_category & tail), length - 1, replace=False)
        steps = np.concatenate([head, rest]).astype(np.int32)
        free[steps] = False
        series.append(steps)

    in_series = np.zeros(n, dtype=bool)
    for steps in series:
        in_series[steps] = True
    leads = rng.choice(np.flatnonzero(~in_series), int(round(n * _LEAD_SHARE)), replace=False)
    free[leads] = False
    # Followers are distinct, from another category than their lead (so a person's
    # tastes cannot explain them) and never leads themselves (so nothing chains).
    pool = list(rng.permutation(np.flatnonzero(free)))
    follower = np.full(n, -1, dtype=np.int32)
    for lead in leads:
        for k in range(len(pool) - 1, -1, -1):
            if catalogue.category[pool[k]] != catalogue.category[lead]:
                follower[lead] = pool.pop(k)
                break
    return _Sequences(follower=follower, series=series)


def _plant_sequences(
    rng: np.random.Generator,
    people: _People,
    catalogue: _Catalogue,
    visits: _Visits,
    log: _EventLog,
) -> _Sequences:
    """Choose leads, followers and series, and log the views they cause (with their
    clicks, carts and purchases)."""
    planted = _choose_sequences(rng, catalogue)
    planter = _Planter(rng, people, catalogue, visits, log)

    # Accessories: a viewed or carted lead, then its follower.
    lead = np.flatnonzero(planted.follower[visits.view_item] >= 0)
    chance = np.where(visits.carted[lead], _P_FOLLOW_CART, _P_FOLLOW_VIEW)
    lead = lead[rng.random(len(lead)) < chance]
    planter.view_after(
        visits.view_session[lead], visits.done[lead], planted.follower[visits.view_item[lead]]
    )

    # Series: a person's first view of a first step, then the steps in order.
    series_of = np.full(len(catalogue.ids), -1, dtype=np.int32)
    for s, steps in enumerate(planted.series):
        series_of[steps[0]] = s
    seen = np.flatnonzero(series_of[visits.view_item] >= 0)
    viewer = visits.user[visits.view_session[seen]]
    order = np.lexsort((visits.view_ts[seen], visits.view_item[seen], viewer))
    seen, viewer = seen[order], viewer[order]
    pair = viewer.astype(np.int64) * len(catalogue.ids) + visits.view_item[seen]
    first = np.ones(len(seen), dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    seen = seen[first]
    seen = seen[rng.random(len(seen)) < _P_SERIES_START]
    which = series_of[visits.view_item[seen]]
    session, done = visits.view_session[seen], visits.done[seen]
    for k in range(1, _SERIES_LENGTH[1]):
        going = np.array([len(steps) > k for steps in planted.series], dtype=bool)[which]
        if k > 1:
            going &= rng.random(len(which)) < _P_SERIES_NEXT
        which, session, done = which[going], session[going], done[going]
        # Step k of each series (shorter ones have stopped: their entry is never used).
        step = np.array([steps[min(k, len(steps) - 1)] for steps in planted.series], np.int32)
        session, done = planter.view_after(session, done, step[which])
    return planted


class _Planter:
    """Logs planted views into people's sessions, each shortly after what causes it:
    later in the same session or, as often, first thing in the person's next session."""

    def __init__(
        self,
        rng: np.random.Generator,
        people: _People,
        catalogue: _Catalogue,
        visits: _Visits,
        log: _EventLog,
    ) -> None:
        self.rng, self.people, self.catalogue = rng, people, catalogue
        self.visits, self.log = visits, log
        # Each person's sessions in time order, to find the one after a given one.
        self.order = np.lexsort((visits.start, visits.user))
        self.position = np.empty(len(self.order), dtype=np.int64)
        self.position[self.order] = np.arange(len(self.order))

    def view_after(
        self, session: np.ndarray, done: np.ndarray, item: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Log a view of ``item`` after the event at ``done`` in ``session``, with its
        funnel; returns the session of each view and its ``done`` (see :func:`_funnel`)."""
        rng, visits = self.rng, self.visits
        n = len(session)
        target = self.position[session] + 1
        following = self.order[np.minimum(target, len(self.order) - 1)]
        low, high = _FIRST_THING_S
        first_thing = visits.start[following] + rng.integers(low, high + 1, n)
        # Only a next session that starts after the cause: effects never come first.
        to_next = (
            (rng.random(n) < _NEXT_SESSION)
            & (target < len(self.order))
            & (visits.user[following] == visits.user[session])
            & (first_thing > done)
        )
        gap = rng.integers(_FOLLOW_GAP_S[0], _FOLLOW_GAP_S[1] + 1, n)
        session = np.where(to_next, following, session)
        ts = np.where(to_next, first_thing, done + gap)
        user = visits.user[session]
        in_taste = self.people.taste_mask[user, self.catalogue.category[item]]
        _, done = _funnel(
            rng, self.log, user, visits.channel[session], item, ts, in_taste, boost=_PLANTED_BOOST
        )
        return session, done


def _write(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)


def _truth(
    seed: int,
    clock: _Clock,
    people: _People,
    catalogue: _Catalogue,
    proxy_opens: np.ndarray,
    planted: _Sequences,
    closed: dict[int, str],
) -> dict:
    users = {}
    for i, user_id in enumerate(people.ids):
        users[user_id] = {
            "tastes": [CATEGORIES[c] for c in people.tastes[i, : people.n_tastes[i]]],
            "timezone": TIMEZONES[people.zone[i]],
            "active_hour_local": int(people.active_hour[i]),
            "preferred_channel": MESSAGE_CHANNELS[people.preferred[i]],
            "open_rate": {
                channel: float(rate)
                for channel, rate in zip(MESSAGE_CHANNELS, people.open_rate[i], strict=True)
            },
            "proxy_opens": bool(proxy_opens[i]),
            "opted_out": [closed[i]] if i in closed else [],
        }
    return {
        "seed": int(seed),
        "categories": [CATEGORIES[c] for c in catalogue.present],
        "send_hours_utc": list(SEND_HOURS_UTC),
        "start": clock.start,
        "end": clock.end,
        "users": users,
        "sequences": {
            "followers": {
                catalogue.ids[lead]: catalogue.ids[planted.follower[lead]]
                for lead in np.flatnonzero(planted.follower >= 0)
            },
            "series": [[catalogue.ids[i] for i in steps] for steps in planted.series],
        },
    }
