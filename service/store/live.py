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

import redis
import redis.asyncio

from service.events import COLUMNS, CONTACT_EVENT_TYPES, EXPOSURE, EXTRA_COLUMNS
from service.store.codecs import TrackedEvent, contact_member, encode_engagement, encode_entry
from service.store.keys import (
    erased_key,
    identity_key,
    live_key,
    seen_key,
    stream_key,
    trending_key,
)
from service.store.plans import Command, Plan, command, run_plan, unavailable

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

#: The write of one batch of live events, as one script: Redis runs a script alone and
#: whole, and its effects reach the AOF and replicas as one MULTI/EXEC, so a batch is
#: written entirely or not at all (a MULTI/EXEC alone could not skip the events already
#: recorded, or those of people erased a moment ago). Every key comes built in ARGV (by
#: :mod:`service.store.keys`); the script only decides which commands run.
#:
#: ARGV: the dedupe window (s), the kept-set bound, the erased set, the stream, its
#: approximate MAXLEN, the history and engagement lengths, today's trending zset and its
#: TTL, then :data:`_EVENT_FIELDS` values per event (see :meth:`LiveLayer.record_plan`).
#: An event whose erasure mark is in the erased set is skipped (an erasure that committed
#: first wins; one that commits later deletes what the event wrote); one whose token a
#: link has meanwhile pointed at another person is skipped as *moved* (the caller
#: resolves it again and writes it there: a merge that commits first moved the old
#: person's keys, and one that commits later WATCHes them, so no event is lost between
#: them); one with an event id runs only when SET NX creates its guard. Each trimmed
#: kept set keeps its newest members by the times zset; members without a time (kept
#: before times were, or merged in from another person) go first. Returns {events
#: skipped as duplicates, as erased, as moved}, 0-based.
_RECORD_SCRIPT = """#!lua
local window, bound, erased, stream = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local maxlen, hlen, elen = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local trending, ttl = ARGV[8], ARGV[9]
local duplicates, gone, moved, histories, engagements, kept = {}, {}, {}, {}, {}, {}
local trended, event = false, 0
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
for at = 10, #ARGV, STRIDE do
  local mark, guard = ARGV[at], ARGV[at + <event id guard key>]
  local link = ARGV[at + <identity key of the event's token>]
  local owner = owner_of(link)
  if is_gone(mark) then
    gone[#gone + 1] = event
  elseif owner and owner ~= ARGV[at + <user_id>] then
    moved[#moved + 1] = event
  elseif guard ~= '' and not redis.call('SET', guard, '1', 'NX', 'EX', window) then
    duplicates[#duplicates + 1] = event
  else
    local item, ts = ARGV[at + <item_id>], ARGV[at + <timestamp>]
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', STREAM_ENTRY)
    local history, engagement = ARGV[at + <history key>], ARGV[at + <engagement key>]
    if ARGV[at + <history entry>] ~= '' then
      redis.call('LPUSH', history, ARGV[at + <history entry>])
      histories[history] = true
    end
    redis.call('LPUSH', engagement, ARGV[at + <engagement entry>])
    engagements[engagement] = true
    if ARGV[at + <trending increment>] ~= '' then
      redis.call('ZINCRBY', trending, ARGV[at + <trending increment>], item)
      trended = true
    end
    local members, times = ARGV[at + <kept set key>], ARGV[at + <kept times key>]
    if members ~= '' then
      redis.call('SADD', members, item)
      redis.call('ZADD', times, 'GT', ts, item)
      kept[times] = members
    end
  end
  event = event + 1
end
for key in pairs(histories) do redis.call('LTRIM', key, 0, hlen - 1) end
for key in pairs(engagements) do redis.call('LTRIM', key, 0, elen - 1) end
if trended then redis.call('EXPIRE', trending, ttl) end
local function each_chunk(values, apply)
  for from = 1, #values, 1000 do
    apply(unpack(values, from, math.min(from + 999, #values)))
  end
end
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
return {duplicates, gone, moved}
"""
#: Values per event in :data:`_RECORD_SCRIPT`'s ARGV, in this order.
_EVENT_FIELDS = (
    "erasure mark",
    "event id guard key",
    *COLUMNS,  # the stream entry, as the event files spell it
    *EXTRA_COLUMNS,
    "history key",
    "engagement key",
    "history entry",
    "engagement entry",
    "trending increment",
    "kept set key",
    "kept times key",
    "identity key of the event's token",
)
# The stride and the stream entry (the event file columns, so exports read it back as
# the contract spells it) come from the tuples above rather than being typed twice.
_RECORD_SCRIPT = _RECORD_SCRIPT.replace("STRIDE", str(len(_EVENT_FIELDS))).replace(
    "STREAM_ENTRY",
    ", ".join(f"'{c}', ARGV[at + {_EVENT_FIELDS.index(c)}]" for c in (*COLUMNS, *EXTRA_COLUMNS)),
)
# The script names each value by its field (``ARGV[at + <history key>]``): the offsets
# follow _EVENT_FIELDS, so a new event column cannot shift them out of step.
for _n, _name in enumerate(_EVENT_FIELDS):
    _RECORD_SCRIPT = _RECORD_SCRIPT.replace(f"<{_name}>", str(_n))


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

    client: redis.Redis
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
        """Apply live events at once and all together, in one round trip. ``marks``: the
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
        """The writes of :meth:`record` as one :data:`_RECORD_SCRIPT` call. Each event
        travels as its :data:`_EVENT_FIELDS` only: packing and sending the arguments is
        most of a batch's cost, so the script, not the argument list, spells the
        commands."""
        if not events:
            return Recorded()
        marks = marks or {}
        p = self.prefix
        now = time.time()
        today = trending_key(p, int(now) // SECONDS_PER_DAY)
        argv: list[Any] = [
            DEDUPE_WINDOW_SECONDS,
            MAX_PERSON_ITEMS,
            erased_key(p),
            stream_key(p),
            self.stream_maxlen,
            self.history_length,
            self.engagement_length,
            today,
            TRENDING_TTL_SECONDS,
        ]
        half_life = self.trending_half_life_hours
        for e in events:
            user, item, kind = e.user_id, e.item_id, e.event_type
            kept = _KEPT_SETS.get(kind, "") if item else ""
            weight = weights.get(kind, 0.0)
            trend = item and kind in TRENDING_TYPES and weight > 0
            argv += (
                marks.get(user, ""),
                seen_key(p, e.event_id) if e.event_id else "",
                user,
                item,
                kind,
                e.timestamp,
                e.channel,
                e.timezone,
                repr(e.value),
                "1" if e.automated else "0",
                e.recommendation_id,
                live_key(p, user, "history"),
                live_key(p, user, "engagement"),
                encode_entry((item, kind, e.timestamp)) if item else "",
                encode_engagement((e.channel, kind, e.timestamp, e.timezone, e.automated)),
                repr(trending_increment(weight, e.timestamp, now, half_life)) if trend else "",
                live_key(p, user, kept) if kept else "",
                live_key(p, user, f"{kept}_at") if kept else "",
                identity_key(p, e.token) if e.token else "",
            )
        ((duplicates, gone, moved),) = yield [command("eval", _RECORD_SCRIPT, 0, *argv)]
        # Opt-outs live in their own untrimmed zset (service/contact.py), written once the
        # script said which events were recorded: a second round trip, only for batches
        # that hold any. GT keeps each (kind, channel)'s newest time whatever the order.
        skipped = {int(n) for n in (*duplicates, *gone, *moved)}
        contact = [
            command(
                "zadd",
                live_key(p, e.user_id, "contact"),
                {contact_member(e.event_type, e.channel): e.timestamp},
                gt=True,
            )
            for n, e in enumerate(events)
            if e.event_type in CONTACT_EVENT_TYPES and n not in skipped
        ]
        if contact:
            yield contact
        return Recorded(len(duplicates), [int(i) for i in gone], [int(i) for i in moved])
