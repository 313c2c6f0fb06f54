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

from service.store.codecs import TrackedEvent, encode_engagement, encode_entry, stream_entry
from service.store.keys import erased_key, live_key, seen_key, stream_key, trending_key
from service.store.plans import Plan, command, run_plan

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
#: recorded, or those of people erased a moment ago). ARGV: the dedupe window (s), the
#: set bound, the erased set's key, the number of trims T, T pairs (times zset, members
#: set), then groups: an erasure mark ("" = none), a guard key ("" = none), the group's
#: command count, and each command as its argument count then its arguments. A group
#: whose mark is in the erased set is skipped (an erasure that committed first wins; one
#: that commits later deletes what the group wrote); a guarded group runs only when SET
#: NX creates its guard. Each trimmed set keeps its newest members by the zset's times;
#: members without a time (kept before times were, or merged in from another person) go
#: first. Returns {groups skipped as duplicates, groups skipped as erased}.
_RECORD_SCRIPT = """#!lua
local window, bound, erased = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local trims = tonumber(ARGV[4])
local at, group, duplicates, gone = 5 + 2 * trims, 0, {}, {}
while at <= #ARGV do
  local mark, guard, count = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  at = at + 3
  local run = true
  if mark ~= '' and redis.call('SISMEMBER', erased, mark) == 1 then
    run = false
    gone[#gone + 1] = group
  elseif guard ~= '' and not redis.call('SET', guard, '1', 'NX', 'EX', window) then
    run = false
    duplicates[#duplicates + 1] = group
  end
  for _ = 1, count do
    local argc = tonumber(ARGV[at])
    if run then redis.call(unpack(ARGV, at + 1, at + argc)) end
    at = at + argc + 1
  end
  group = group + 1
end
local function each_chunk(values, apply)
  for from = 1, #values, 1000 do
    apply(unpack(values, from, math.min(from + 999, #values)))
  end
end
for t = 0, trims - 1 do
  local times, members = ARGV[5 + 2 * t], ARGV[6 + 2 * t]
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
return {duplicates, gone}
"""


def _add_group(argv: list[Any], mark: str, guard: str, commands: Sequence[Sequence[Any]]) -> None:
    """Append one group of :data:`_RECORD_SCRIPT`'s ARGV."""
    argv += (mark, guard, len(commands))
    for args in commands:
        argv.append(len(args))
        argv += args


@dataclass
class Recorded:
    """What :meth:`LiveLayer.record` did not write."""

    duplicates: int = 0
    """Events whose ``event_id`` was recorded within :data:`DEDUPE_WINDOW_SECONDS`."""
    erased: list[int] = field(default_factory=list)
    """Positions (in the batch) of events naming people erased meanwhile."""


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

    def record_plan(
        self,
        events: Sequence[TrackedEvent],
        weights: Mapping[str, float],
        marks: Mapping[str, str] | None = None,
    ) -> Plan[Recorded]:
        """The writes of :meth:`record` as one :data:`_RECORD_SCRIPT` call: one group of
        commands per event, guarded by its erasure mark and its event id, then the trims."""
        if not events:
            return Recorded()
        marks = marks or {}
        p = self.prefix
        now = time.time()
        today = trending_key(p, int(now) // SECONDS_PER_DAY)
        argv: list[Any] = []
        trims: dict[tuple[str, str], None] = {}  # (times, members), in order, once each
        histories: set[str] = set()
        for e in events:
            xadd = ["XADD", stream_key(p), "MAXLEN", "~", self.stream_maxlen, "*"]
            xadd += [v for pair in stream_entry(e).items() for v in pair]
            writes: list[list[Any]] = [xadd]
            if e.item_id:
                entry = encode_entry((e.item_id, e.event_type, e.timestamp))
                writes.append(["LPUSH", live_key(p, e.user_id, "history"), entry])
                histories.add(e.user_id)
                kept = _KEPT_SETS.get(e.event_type)
                if kept is not None:
                    members = live_key(p, e.user_id, kept)
                    times = live_key(p, e.user_id, f"{kept}_at")
                    writes.append(["SADD", members, e.item_id])
                    # GT: a repeated purchase moves the item's time forward, never back.
                    writes.append(["ZADD", times, "GT", e.timestamp, e.item_id])
                    trims[times, members] = None
                weight = weights.get(e.event_type, 0.0)
                if e.event_type in TRENDING_TYPES and weight > 0:
                    inc = trending_increment(
                        weight, e.timestamp, now, self.trending_half_life_hours
                    )
                    writes.append(["ZINCRBY", today, repr(inc), e.item_id])
            engaged = encode_engagement(
                (e.channel, e.event_type, e.timestamp, e.timezone, e.automated)
            )
            writes.append(["LPUSH", live_key(p, e.user_id, "engagement"), engaged])
            guard = seen_key(p, e.event_id) if e.event_id else ""
            _add_group(argv, marks.get(e.user_id, ""), guard, writes)
        upkeep = [
            ["LTRIM", live_key(p, u, "history"), 0, self.history_length - 1] for u in histories
        ]
        upkeep += [
            ["LTRIM", live_key(p, u, "engagement"), 0, self.engagement_length - 1]
            for u in {e.user_id for e in events}
        ]
        upkeep.append(["EXPIRE", today, TRENDING_TTL_SECONDS])
        _add_group(argv, "", "", upkeep)
        head = [DEDUPE_WINDOW_SECONDS, MAX_PERSON_ITEMS, erased_key(p), len(trims)]
        head += [key for pair in trims for key in pair]
        ((duplicates, gone),) = yield [command("eval", _RECORD_SCRIPT, 0, *head, *argv)]
        return Recorded(len(duplicates), [int(i) for i in gone])
