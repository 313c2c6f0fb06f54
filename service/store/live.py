"""The live layer (speed layer): what ``TrackEvents`` writes at once, so the next
answer reflects it without retraining — each person's live history and sets, their
engagement events, time-decayed *trending* counters, and an entry in the durable
stream (:mod:`service.store.stream`) that training exports.

Trending uses the "growing weight" trick: an event at time ``t`` adds
``w · 2^((t − day_start) / H)`` to the zset of its day, so one ZINCRBY keeps the ranking
equal to an exponentially decayed count with half-life ``H``, without rewriting scores.
Readers combine today's and yesterday's zsets.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.events import COLUMNS, CONTACT_EVENT_TYPES, EXPOSURE, EXTRA_COLUMNS
from service.store.codecs import TrackedEvent, contact_member, encode_engagement, encode_entry
from service.store.keys import (
    erased_key,
    identity_key,
    live_key,
    moved_key,
    seen_key,
    slot_key,
    slot_of,
    stream_erased_key,
    stream_key,
    stream_seen_key,
    trending_key,
)
from service.store.plans import Client, Command, Plan, Script, command, run_plan, unavailable

SECONDS_PER_DAY = 86_400
#: Trending zsets outlive their day by this much, then Redis drops them.
TRENDING_TTL_SECONDS = 3 * SECONDS_PER_DAY
#: Item events that make an item trend; a dislike does not.
TRENDING_TYPES = frozenset({"view", "click", "favourite", "add_to_cart", "purchase"})
#: How long an ``Event.event_id`` is remembered: the same id again within it is a retry,
#: accepted and not recorded twice. A day outlasts a client retrying through a Redis
#: outage or a deploy; each remembered id costs about 100 bytes of Redis memory.
DEDUPE_WINDOW_SECONDS = SECONDS_PER_DAY
#: Purchases, and apart dislikes, kept per person in the live layer: the newest by event
#: time. Every Recommend reads both sets whole to leave their items out.
MAX_PERSON_ITEMS = 1000


def trending_increment(weight: float, ts: float, now: float, half_life_hours: float) -> float:
    """What an event adds to today's trending zset (see the module docstring)."""
    day_start = (int(now) // SECONDS_PER_DAY) * SECONDS_PER_DAY
    return weight * 2.0 ** ((min(ts, now) - day_start) / (half_life_hours * 3600.0))


def combine_trending(
    today: Sequence[tuple[str, float]],
    yesterday: Sequence[tuple[str, float]],
    now: float,
    half_life_hours: float,
) -> list[tuple[str, float]]:
    """Today's and yesterday's growing-weight zsets → ``(item, decayed weight now)``,
    best first."""
    h = half_life_hours * 3600.0
    day_start = (int(now) // SECONDS_PER_DAY) * SECONDS_PER_DAY
    scores: dict[str, float] = {}
    for item, score in yesterday:
        scores[item] = score * 2.0 ** (-SECONDS_PER_DAY / h)
    for item, score in today:
        scores[item] = scores.get(item, 0.0) + score
    now_factor = 2.0 ** (-(now - day_start) / h)
    return sorted(((i, s * now_factor) for i, s in scores.items()), key=lambda x: -x[1])


_KEPT_SETS = {"purchase": "purchased", "dislike": "disliked"}

# Lua shared by both record scripts: a person's live writes (opt-out marks included, newest
# time of each kept by GT, untrimmed), and the trims after a batch
# (each list to its length; each kept set to its newest members by the times zset, those
# without a time - kept before times were, or merged in from another person - first).
_WRITE_LIVE = """
local histories, engagements, kept = {}, {}, {}
local function write_live(history, engagement, members, times, item, ts, hentry, eentry,
                          contact, member)
  if hentry ~= '' then
    redis.call('LPUSH', history, hentry)
    histories[history] = true
  end
  redis.call('LPUSH', engagement, eentry)
  engagements[engagement] = true
  if members ~= '' then
    redis.call('SADD', members, item)
    redis.call('ZADD', times, 'GT', ts, item)
    kept[times] = members
  end
  if member ~= '' then redis.call('ZADD', contact, 'GT', ts, member) end
end
local function each_chunk(values, apply)
  for from = 1, #values, 1000 do
    apply(unpack(values, from, math.min(from + 999, #values)))
  end
end
local function trim_live(hlen, elen, bound)
  for key in pairs(histories) do redis.call('LTRIM', key, 0, hlen - 1) end
  for key in pairs(engagements) do redis.call('LTRIM', key, 0, elen - 1) end
  for times, members in pairs(kept) do
    local excess = redis.call('ZCARD', times) - bound
    if excess > 0 then
      local oldest = redis.call('ZRANGE', times, 0, excess - 1)
      redis.call('ZREMRANGEBYRANK', times, 0, excess - 1)
      each_chunk(oldest, function(...) redis.call('SREM', members, ...) end)
    end
    if redis.call('SCARD', members) > bound then
      redis.call('DEL', members)
      each_chunk(redis.call('ZRANGE', times, 0, -1), function(...)
        redis.call('SADD', members, ...)
      end)
    end
  end
end
"""


def _named(script: str, keys: tuple[str, ...], values: tuple[str, ...]) -> str:
    """``script`` with each ``<name>`` replaced by its offset in ``keys`` or ``values``
    (the per-event KEYS and ARGV), and ``KEY_STRIDE`` / ``STRIDE`` by their lengths: the
    offsets follow the tuples, so a new event column cannot shift them out of step."""
    script = script.replace("KEY_STRIDE", str(len(keys))).replace("STRIDE", str(len(values)))
    for fields_ in (keys, values):
        for n, name in enumerate(fields_):
            script = script.replace(f"<{name}>", str(n))
    return script


def _stream_entry(values: tuple[str, ...]) -> str:
    """The XADD field list of a stream entry: the event file columns, so exports read it
    back as the contract spells it."""
    return ", ".join(f"'{c}', ARGV[at + {values.index(c)}]" for c in (*COLUMNS, *EXTRA_COLUMNS))


#: Keys per event of :data:`_RECORD_SCRIPT`, in this order ('' where an event has none).
_EVENT_KEYS = (
    "event id guard",
    "history list",
    "engagement list",
    "kept set",
    "kept times",
    "identity key of the event's token",
    "contact zset",
)
#: Values per event of :data:`_RECORD_SCRIPT`, in this order.
_EVENT_FIELDS = (
    "erasure mark",
    *COLUMNS,  # the stream entry, as the event files spell it
    *EXTRA_COLUMNS,
    "history entry",
    "engagement entry",
    "trending increment",
    "contact member",
)

#: The write of one batch of live events on one Redis server, as one script: Redis runs
#: a script alone and whole, and its effects reach the AOF and replicas as one
#: MULTI/EXEC, so a batch is written entirely or not at all (a MULTI/EXEC alone could not
#: skip the events already recorded, or those of people erased a moment ago). Every key
#: comes built in KEYS (by :mod:`service.store.keys`); the script only decides which
#: commands run.
#:
#: KEYS: the erased set, the stream, today's trending zset, then :data:`_EVENT_KEYS` per
#: event. ARGV: the dedupe window (s), the kept-set bound, the stream's approximate
#: MAXLEN, the history and engagement lengths, the trending TTL, then
#: :data:`_EVENT_FIELDS` per event (see :meth:`LiveLayer.record_plan`). An event whose
#: erasure mark is in the erased set is skipped (an erasure that committed first wins; one
#: that commits later deletes what the event wrote); one whose token a link has meanwhile
#: pointed at another person is skipped as *moved* (the caller resolves it again and
#: writes it there: a merge that commits first moved the old person's keys, and one that
#: commits later WATCHes them, so no event is lost between them); one with an event id
#: runs only when SET NX creates its guard. Returns {events skipped as duplicates, as
#: erased, as moved}, 0-based.
_RECORD_SCRIPT = _named(
    """#!lua
local window, bound, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local hlen, elen, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local erased, stream, trending = KEYS[1], KEYS[2], KEYS[3]
local duplicates, gone, moved = {}, {}, {}
local trended = false
"""
    + _WRITE_LIVE
    + """
-- A batch names few people many times: each is looked up once.
local owners, gone_marks = {}, {}
local function owner_of(link)
  if link == '' then return false end
  if owners[link] == nil then owners[link] = redis.call('GET', link) end
  return owners[link]
end
local function is_gone(mark)
  if mark == '' then return false end
  if gone_marks[mark] == nil then
    gone_marks[mark] = redis.call('SISMEMBER', erased, mark) == 1
  end
  return gone_marks[mark]
end
for event = 0, (#ARGV - 6) / STRIDE - 1 do
  local at, key = 7 + event * STRIDE, 4 + event * KEY_STRIDE
  local guard = KEYS[key + <event id guard>]
  local owner = owner_of(KEYS[key + <identity key of the event's token>])
  if is_gone(ARGV[at + <erasure mark>]) then
    gone[#gone + 1] = event
  elseif owner and owner ~= ARGV[at + <user_id>] then
    moved[#moved + 1] = event
  elseif guard ~= '' and not redis.call('SET', guard, '1', 'NX', 'EX', window) then
    duplicates[#duplicates + 1] = event
  else
    local item, ts = ARGV[at + <item_id>], ARGV[at + <timestamp>]
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', STREAM_ENTRY)
    write_live(KEYS[key + <history list>], KEYS[key + <engagement list>],
      KEYS[key + <kept set>], KEYS[key + <kept times>], item, ts,
      ARGV[at + <history entry>], ARGV[at + <engagement entry>],
      KEYS[key + <contact zset>], ARGV[at + <contact member>])
    if ARGV[at + <trending increment>] ~= '' then
      redis.call('ZINCRBY', trending, ARGV[at + <trending increment>], item)
      trended = true
    end
  end
end
trim_live(hlen, elen, bound)
if trended then redis.call('EXPIRE', trending, ttl) end
return {duplicates, gone, moved}
""".replace("STREAM_ENTRY", _stream_entry(_EVENT_FIELDS)),
    _EVENT_KEYS,
    _EVENT_FIELDS,
)

#: Values per event of :data:`_PERSON_SCRIPT`, in this order: the event's, then where its
#: person's keys are in KEYS (1-based; 0 where the event needs none of that part).
_PERSON_FIELDS = (
    "erasure mark",
    "event id",
    "item",
    "time",
    "history entry",
    "engagement entry",
    "contact member",
    "history list",
    "engagement list",
    "kept set",
    "kept times",
    "contact zset",
    "moved marker",
)

#: On a Redis Cluster, a batch is written per slot, as a script may only touch one slot's
#: keys: first, per slot of the batch's people, this script writes their live keys (and
#: opt-out marks) all or nothing; then :data:`_STREAM_SCRIPT` appends the events it wrote
#: to the stream. The checks the one-server script makes against shared keys are made
#: against keys in the people's own slot instead: the erasure marks of the slot's people
#: (an erasure adds them first, then deletes each slot's keys), the moved marker a merge
#: leaves on a merged-away person (set as it takes their keys), and the event ids of the
#: slot's people (a sorted set scored by expiry, so one key holds them all).
#:
#: KEYS: the slot's erased marks and seen ids, then the live keys the events write and
#: their people's moved markers, each once (only those: redis-py hashes every key of a
#: call to route it). ARGV: the dedupe window (s), now (s), the kept-set bound, the
#: history and engagement lengths, then :data:`_PERSON_FIELDS` per event. Returns
#: {duplicates, erased, moved}, 0-based among the call's events.
_PERSON_SCRIPT = _named(
    """#!lua
local window, now, bound = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hlen, elen = tonumber(ARGV[4]), tonumber(ARGV[5])
local erased, seen = KEYS[1], KEYS[2]
local duplicates, gone, moved = {}, {}, {}
"""
    + _WRITE_LIVE
    + """
redis.call('ZREMRANGEBYSCORE', seen, '-inf', now)
local gone_marks, movers = {}, {}
for event = 0, (#ARGV - 5) / STRIDE - 1 do
  local at = 6 + event * STRIDE
  local function key(field)
    local n = tonumber(ARGV[at + field])
    if n > 0 then return KEYS[n] end
    return ''
  end
  local mark, id, marker = ARGV[at + <erasure mark>], ARGV[at + <event id>], key(<moved marker>)
  if mark ~= '' and gone_marks[mark] == nil then
    gone_marks[mark] = redis.call('SISMEMBER', erased, mark) == 1
  end
  if movers[marker] == nil then movers[marker] = redis.call('EXISTS', marker) == 1 end
  if mark ~= '' and gone_marks[mark] then
    gone[#gone + 1] = event
  elseif movers[marker] then
    moved[#moved + 1] = event
  elseif id ~= '' and redis.call('ZSCORE', seen, id) then
    duplicates[#duplicates + 1] = event
  else
    if id ~= '' then redis.call('ZADD', seen, now + window, id) end
    local item, ts = ARGV[at + <item>], ARGV[at + <time>]
    write_live(key(<history list>), key(<engagement list>), key(<kept set>), key(<kept times>),
      item, ts, ARGV[at + <history entry>], ARGV[at + <engagement entry>],
      key(<contact zset>), ARGV[at + <contact member>])
  end
end
trim_live(hlen, elen, bound)
return {duplicates, gone, moved}
""",
    (),
    _PERSON_FIELDS,
)

#: Values per event of :data:`_STREAM_SCRIPT`: the erasure mark, the event id, then the
#: stream entry.
_STREAM_FIELDS = ("erasure mark", "event id", *COLUMNS, *EXTRA_COLUMNS)

#: On a Redis Cluster, the stream's share of a batch (after :data:`_PERSON_SCRIPT`): the
#: events it wrote, and those it found already written that carry an event id (a retry
#: after a failure between the two steps), each appended unless the stream already holds
#: its id or its person was erased meanwhile (an erasure adds its marks here before it
#: removes their entries). KEYS: the stream, its event ids (expiry as score), the erasure
#: marks. ARGV: the dedupe window (s), now (s), the approximate MAXLEN, then
#: :data:`_STREAM_FIELDS` per event.
_STREAM_SCRIPT = _named(
    """#!lua
local window, now, maxlen = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local stream, seen, erased = KEYS[1], KEYS[2], KEYS[3]
redis.call('ZREMRANGEBYSCORE', seen, '-inf', now)
for at = 4, #ARGV, STRIDE do
  local mark, id = ARGV[at + <erasure mark>], ARGV[at + <event id>]
  if (mark == '' or redis.call('SISMEMBER', erased, mark) == 0)
      and (id == '' or not redis.call('ZSCORE', seen, id)) then
    if id ~= '' then redis.call('ZADD', seen, now + window, id) end
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', STREAM_ENTRY)
  end
end
return 0
""".replace("STREAM_ENTRY", _stream_entry(_STREAM_FIELDS)),
    (),
    _STREAM_FIELDS,
)

#: On a Redis Cluster, the trending share of a batch: one call instead of a command per
#: item. KEYS: today's trending zset. ARGV: its TTL, then item, increment, item, ….
_TRENDING_SCRIPT = """#!lua
for at = 2, #ARGV, 2 do redis.call('ZINCRBY', KEYS[1], ARGV[at + 1], ARGV[at]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 0
"""

_RECORD = Script(_RECORD_SCRIPT)
_TRENDING = Script(_TRENDING_SCRIPT)
_PERSON = Script(_PERSON_SCRIPT)
_STREAM = Script(_STREAM_SCRIPT)


@dataclass
class Recorded:
    """What :meth:`LiveLayer.record` did not write."""

    duplicates: int = 0
    """Events whose ``event_id`` was recorded within :data:`DEDUPE_WINDOW_SECONDS`."""
    erased: list[int] = field(default_factory=list)
    """Positions (in the batch) of events naming people erased meanwhile."""
    moved: list[int] = field(default_factory=list)
    """Positions of events whose token a link pointed at another person meanwhile: not
    written; resolve them again and record them again."""


class LiveLayer:
    """Writes of live events (part of :class:`~service.store.FeatureStore`)."""

    client: Client
    cluster: bool
    prefix: str
    history_length: int
    engagement_length: int
    trending_half_life_hours: float
    stream_maxlen: int

    def record(
        self,
        events: Sequence[TrackedEvent],
        weights: Mapping[str, float],
        marks: Mapping[str, str] | None = None,
    ) -> Recorded:
        """Apply live events at once and all together, in one round trip (on a Redis
        Cluster two, and all together per slot: see :meth:`record_plan`). ``marks``: the
        erasure mark of each person (events of people in the erased set are skipped)."""
        return run_plan(self.client, self.record_plan(events, weights, marks), "recording events")

    def add_contact_marks(self, marks: Mapping[str, Mapping[str, int]]) -> None:
        """Merge opt-out marks (person → member → time, from an event file) into the live
        ones; ``GT`` keeps each member's newest time, so a newer live mark stays."""
        people = list(marks)
        with unavailable("writing opt-outs"):
            for start in range(0, len(people), 1000):
                pipe = self.client.pipeline(transaction=False)
                for person in people[start : start + 1000]:
                    pipe.zadd(
                        live_key(self.prefix, person, "contact"), dict(marks[person]), gt=True
                    )
                pipe.execute()

    def exposure_command(self, person: str, recommendation_id: str, timestamp: int) -> Command:
        """The stream entry of an answer given under an experiment (event type
        ``exposure``, in the event files' columns), so exports carry it to the report."""
        entry = {column: "" for column in (*COLUMNS, *EXTRA_COLUMNS)}
        entry |= {
            "user_id": person,
            "event_type": EXPOSURE,
            "timestamp": str(timestamp),
            "automated": "0",
            "recommendation_id": recommendation_id,
        }
        return command(
            "xadd", stream_key(self.prefix), entry, maxlen=self.stream_maxlen, approximate=True
        )

    def record_plan(
        self,
        events: Sequence[TrackedEvent],
        weights: Mapping[str, float],
        marks: Mapping[str, str] | None = None,
    ) -> Plan[Recorded]:
        """The writes of :meth:`record`: one :data:`_RECORD_SCRIPT` call on one server; on
        a Redis Cluster, one :data:`_PERSON_SCRIPT` call per slot of the batch's people,
        then one :data:`_STREAM_SCRIPT` call (two round trips). Each event travels as its
        fields only: packing and sending the arguments is most of a batch's cost, so the
        script, not the argument list, spells the commands."""
        if not events:
            return Recorded()
        if self.cluster:
            return (yield from self._record_by_slot(events, weights, marks or {}))
        marks = marks or {}
        p = self.prefix
        now = time.time()
        keys: list[str] = [
            erased_key(p),
            stream_key(p),
            trending_key(p, int(now) // SECONDS_PER_DAY),
        ]
        argv: list[Any] = [
            DEDUPE_WINDOW_SECONDS,
            MAX_PERSON_ITEMS,
            self.stream_maxlen,
            self.history_length,
            self.engagement_length,
            TRENDING_TTL_SECONDS,
        ]
        half_life = self.trending_half_life_hours
        for e in events:
            user, item, kind = e.user_id, e.item_id, e.event_type
            kept = _KEPT_SETS.get(kind, "") if item else ""
            weight = weights.get(kind, 0.0)
            trend = item and kind in TRENDING_TYPES and weight > 0
            contact = kind in CONTACT_EVENT_TYPES
            keys += (
                seen_key(p, e.event_id) if e.event_id else "",
                live_key(p, user, "history"),
                live_key(p, user, "engagement"),
                live_key(p, user, kept) if kept else "",
                live_key(p, user, f"{kept}_at") if kept else "",
                identity_key(p, e.token) if e.token else "",
                live_key(p, user, "contact") if contact else "",
            )
            argv += (
                marks.get(user, ""),
                user,
                item,
                kind,
                e.timestamp,
                e.channel,
                e.timezone,
                repr(e.value),
                "1" if e.automated else "0",
                e.recommendation_id,
                encode_entry((item, kind, e.timestamp)) if item else "",
                encode_engagement((e.channel, kind, e.timestamp, e.timezone, e.automated)),
                repr(trending_increment(weight, e.timestamp, now, half_life)) if trend else "",
                contact_member(kind, e.channel) if contact else "",
            )
        ((duplicates, gone, moved),) = yield [_RECORD.call(keys, argv)]
        return Recorded(len(duplicates), [int(i) for i in gone], [int(i) for i in moved])

    def _record_by_slot(
        self,
        events: Sequence[TrackedEvent],
        weights: Mapping[str, float],
        marks: Mapping[str, str],
    ) -> Plan[Recorded]:
        """:meth:`record_plan` on a Redis Cluster. A batch is all or nothing per slot of
        its people; the stream step skips what it already holds, so a batch retried
        after a failure between the two round trips is written once, whole."""
        p = self.prefix
        now = time.time()
        slots: dict[int, _SlotShare] = {}
        for n, e in enumerate(events):
            slot = slot_of(live_key(p, e.user_id, "history"))
            share = slots.get(slot)
            if share is None:
                share = slots[slot] = _SlotShare(
                    [slot_key(p, slot, "erased"), slot_key(p, slot, "seen")]
                )
            item, kind = e.item_id, e.event_type
            kept = _KEPT_SETS.get(kind, "") if item else ""
            contact = kind in CONTACT_EVENT_TYPES
            share.positions.append(n)
            share.argv += (
                marks.get(e.user_id, ""),
                e.event_id,
                item,
                e.timestamp,
                encode_entry((item, kind, e.timestamp)) if item else "",
                encode_engagement((e.channel, kind, e.timestamp, e.timezone, e.automated)),
                contact_member(kind, e.channel) if contact else "",
                share.at(live_key(p, e.user_id, "history")) if item else 0,
                share.at(live_key(p, e.user_id, "engagement")),
                share.at(live_key(p, e.user_id, kept)) if kept else 0,
                share.at(live_key(p, e.user_id, f"{kept}_at")) if kept else 0,
                share.at(live_key(p, e.user_id, "contact")) if contact else 0,
                share.at(moved_key(p, e.user_id)),
            )
        head = [DEDUPE_WINDOW_SECONDS, repr(now), MAX_PERSON_ITEMS]
        head += [self.history_length, self.engagement_length]
        shares = list(slots.values())
        replies = yield [_PERSON.call(share.keys, head + share.argv) for share in shares]
        duplicates: list[int] = []
        gone: list[int] = []
        moved: list[int] = []
        for share, (dup, erased, elsewhere) in zip(shares, replies, strict=True):
            duplicates += [share.positions[int(i)] for i in dup]
            gone += [share.positions[int(i)] for i in erased]
            moved += [share.positions[int(i)] for i in elsewhere]
        skipped = set(gone) | set(moved)
        written = set(range(len(events))) - skipped - set(duplicates)
        argv: list[Any] = [DEDUPE_WINDOW_SECONDS, repr(now), self.stream_maxlen]
        increments: dict[str, float] = {}
        half_life = self.trending_half_life_hours
        for n, e in enumerate(events):
            if n in skipped or (n not in written and not e.event_id):
                continue
            argv += (
                marks.get(e.user_id, ""),
                e.event_id,
                e.user_id,
                e.item_id,
                e.event_type,
                e.timestamp,
                e.channel,
                e.timezone,
                repr(e.value),
                "1" if e.automated else "0",
                e.recommendation_id,
            )
            weight = weights.get(e.event_type, 0.0)
            if n in written and e.item_id and e.event_type in TRENDING_TYPES and weight > 0:
                add = trending_increment(weight, e.timestamp, now, half_life)
                increments[e.item_id] = increments.get(e.item_id, 0.0) + add
        stream = [stream_key(p), stream_seen_key(p), stream_erased_key(p)]
        second = [_STREAM.call(stream, argv)] if len(argv) > 3 else []
        if increments:
            today = trending_key(p, int(now) // SECONDS_PER_DAY)
            pairs = [value for item, w in increments.items() for value in (item, repr(w))]
            second.append(_TRENDING.call([today], [TRENDING_TTL_SECONDS, *pairs]))
        if second:
            yield second
        return Recorded(len(duplicates), sorted(gone), sorted(moved))


@dataclass
class _SlotShare:
    """The events of one slot's people in a batch, as :data:`_PERSON_SCRIPT` takes them."""

    keys: list[str]
    positions: list[int] = field(default_factory=list)
    """Each event's place in the batch."""
    argv: list[Any] = field(default_factory=list)
    places: dict[str, int] = field(default_factory=dict)
    """Key -> its 1-based place in ``keys``."""

    def at(self, key: str) -> int:
        """The 1-based place of ``key`` in KEYS, added the first time it is asked for."""
        place = self.places.get(key)
        if place is None:
            self.keys.append(key)
            place = self.places[key] = len(self.keys)
        return place
