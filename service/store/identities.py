"""Identity links in Redis: which person each identifier token names, the tokens and
merged people (aliases) of each person, merges as optimistic transactions, erasure, and
the erased set. The rules (tokens, survivors, hashing) are :mod:`service.identity`'s;
this module only reads and writes what they decide."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from service.errors import StoreUnavailable
from service.store.codecs import text
from service.store.keys import (
    LIVE_PARTS,
    erased_key,
    identity_key,
    identity_lock_key,
    linked_user_ids_pattern,
    live_key,
    moved_key,
    person_key,
    slot_key,
    slot_of,
    stream_erased_key,
    token_of_identity_key,
    user_key,
)
from service.store.plans import Client, Plan, Script, chunks, command, run_plan, unavailable

#: How long the identity lock lives: a crashed holder blocks others at most this long.
#: Nothing held under it grows with the data (an erasure's stream clean-up runs after it
#: is released), so it is never renewed.
LOCK_SECONDS = 10.0
#: People merged into one person whose published features keep counting through it
#: (until the next training run relabels them). Every request of that person reads each
#: alias, so the set is bounded: beyond it, the aliases without published features go
#: first, then the rest in a stable order (and a training run brings them back).
MAX_ALIASES = 64
#: How long a merged-away person's moved marker lives (Redis Cluster only): far longer
#: than any write resolved before the merge can take to arrive.
MOVED_SECONDS = 86_400

_LISTS = ("history", "engagement")
_SETS = ("purchased", "disliked")
_ZSETS = ("purchased_at", "disliked_at", "contact")  # merged keeping each member's newest

#: Redis Cluster only: one person's live keys, read whole in one step (for a merge). With
#: ARGV[1] = the survivor, the person is also *taken*: their moved marker (the last key)
#: is set for ARGV[2] seconds and every other key deleted, atomically in their slot, so a
#: write racing the merge either came before (and is returned) or sees the marker (and is
#: written to the survivor). KEYS: :data:`LIVE_PARTS`, tokens, aliases, moved marker.
#: Returns each live key's contents (a zset as member, score, …).
_LIVE_OF = Script(
    """#!lua
local out = {}
for n = 1, #KEYS - 3 do
  local key, kind = KEYS[n], redis.call('TYPE', KEYS[n]).ok
  if kind == 'list' then out[n] = redis.call('LRANGE', key, 0, -1)
  elseif kind == 'set' then out[n] = redis.call('SMEMBERS', key)
  elseif kind == 'zset' then out[n] = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  else out[n] = {} end
end
if ARGV[1] then
  redis.call('SET', KEYS[#KEYS], ARGV[1], 'EX', ARGV[2])
  redis.call('DEL', unpack(KEYS, 1, #KEYS - 1))
end
return out
"""
)


class IdentityStore:
    """Identity reads and writes (part of :class:`~service.store.FeatureStore`)."""

    client: Client
    cluster: bool
    prefix: str
    history_length: int
    engagement_length: int
    publications: Callable[[], list[str]]  # Publications provides it

    def identity_targets_plan(self, tokens: Sequence[str]) -> Plan[list[str | None]]:
        """The person id stored for each token (None: nobody linked it), one round trip."""
        if not tokens:
            return []
        keys = [identity_key(self.prefix, t) for t in tokens]
        if self.cluster:
            # Tokens hash to slots of their own: one GET each, each node its share.
            found = yield [command("get", key) for key in keys]
        else:
            (found,) = yield [command("mget", keys)]
        return [text(f) if f is not None else None for f in found]

    def erased_plan(self, marks: Sequence[str]) -> Plan[list[bool]]:
        """Whether each erasure mark (keyed hash of a person id) is in the erased set."""
        if not marks:
            return []
        (found,) = yield [command("smismember", erased_key(self.prefix), list(marks))]
        return [bool(f) for f in found]

    @contextmanager
    def identity_lock(self) -> Iterator[redis.lock.Lock]:
        """The lock links and erasures hold while they rewrite people; a busy or
        unreachable lock is :class:`StoreUnavailable` (the caller may retry)."""
        lock = self.client.lock(
            identity_lock_key(self.prefix), timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS
        )
        with unavailable("taking the identity lock"):
            acquired = lock.acquire()
        if not acquired:
            raise StoreUnavailable("another link or erasure held the identity lock too long")
        try:
            yield lock
        finally:
            try:
                with unavailable("releasing the identity lock"):
                    lock.release()
            except redis.exceptions.LockError:
                pass  # it expired: nothing of ours to release

    def merge_people(
        self,
        tokens: Iterable[str],
        survivor: str,
        others: Sequence[str],
        default_token: Callable[[str], str],
    ) -> bool:
        """Point ``tokens`` and every token of ``others`` at ``survivor`` and merge the
        others' live keys into the survivor's, as one optimistic transaction: the live
        keys read are WATCHed, so an event tracked meanwhile aborts it (returns False,
        the caller tries again) instead of being lost. On a Redis Cluster the people may
        live in different slots: see :meth:`_merge_by_slot`."""
        if self.cluster:
            return self._merge_by_slot(tokens, survivor, others, default_token)
        p = self.prefix
        people = [survivor, *others]
        with unavailable("merging people"), self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*(live_key(p, who, part) for who in people for part in LIVE_PARTS))
                all_tokens, kept = self._merged_identity(
                    pipe, tokens, survivor, others, default_token
                )
                merged_lists = {
                    part: merged_entries(
                        [pipe.lrange(live_key(p, who, part), 0, -1) for who in people],
                        self._list_length(part),
                    )
                    for part in _LISTS
                }
                pipe.multi()
                for token in all_tokens:
                    pipe.set(identity_key(p, token), survivor)
                pipe.sadd(person_key(p, survivor, "tokens"), *all_tokens)
                if others:
                    pipe.delete(person_key(p, survivor, "aliases"))
                    if kept:
                        pipe.sadd(person_key(p, survivor, "aliases"), *kept)
                    for part, entries in merged_lists.items():
                        key = live_key(p, survivor, part)
                        pipe.delete(key)
                        if entries:
                            pipe.rpush(key, *entries)
                    for part in (*_SETS, *_ZSETS):
                        keys = [live_key(p, who, part) for who in people]
                        # Newest time of each member wins (an opt-out of either person
                        # stays unless a later resubscribe of either lifts it).
                        if part in _ZSETS:
                            pipe.zunionstore(live_key(p, survivor, part), keys, aggregate="MAX")
                        else:
                            pipe.sunionstore(live_key(p, survivor, part), keys)
                    for other in others:
                        pipe.delete(
                            *(live_key(p, other, part) for part in LIVE_PARTS),
                            person_key(p, other, "tokens"),
                            person_key(p, other, "aliases"),
                        )
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def _merged_identity(
        self,
        reader: Any,
        tokens: Iterable[str],
        survivor: str,
        others: Sequence[str],
        default_token: Callable[[str], str],
    ) -> tuple[set[str], list[str]]:
        """Every token the merged person has, and their aliases (bounded)."""
        p = self.prefix
        all_tokens = set(tokens) | {default_token(survivor)}
        aliases: set[str] = set(others)
        for other in others:
            all_tokens |= {text(t) for t in reader.smembers(person_key(p, other, "tokens"))}
            all_tokens.add(default_token(other))
            aliases |= {text(a) for a in reader.smembers(person_key(p, other, "aliases"))}
        if others:
            aliases |= {text(a) for a in reader.smembers(person_key(p, survivor, "aliases"))}
        return all_tokens, self._bounded_aliases(aliases) if others else []

    def _merge_by_slot(
        self,
        tokens: Iterable[str],
        survivor: str,
        others: Sequence[str],
        default_token: Callable[[str], str],
    ) -> bool:
        """:meth:`merge_people` on a Redis Cluster, where a transaction may only span one
        slot, in steps that each keep every event (links and erasures wait on the
        identity lock; only live events race a merge):

        1. the survivor's tokens and aliases are written (the others become aliases), then
           every token is pointed at the survivor, so events resolved from now on go
           there;
        2. each other person's live keys are copied into the survivor's (one transaction
           in the survivor's slot, WATCHing the survivor's keys as on one server);
        3. then *taken* in one script in their own slot: their moved marker is set and
           their keys deleted, so an event resolved before step 1 and written after this
           is refused as *moved* and written again under the survivor;
        4. what reached them between 2 and 3, if anything, is copied too.

        A crash between steps leaves the others where an erasure of the survivor finds
        them (they are its aliases from step 1 on): before 3 their live keys are intact
        (merged or not yet), and only a crash between 3 and 4 loses what arrived between
        2 and 3. Returns False when an event reached the survivor mid-copy (the caller
        retries: every step is idempotent)."""
        p = self.prefix
        with unavailable("merging people"):
            all_tokens, kept = self._merged_identity(
                self.client, tokens, survivor, others, default_token
            )
            with self.client.pipeline(transaction=True) as pipe:  # the survivor's slot
                pipe.sadd(person_key(p, survivor, "tokens"), *all_tokens)
                if others:
                    pipe.delete(person_key(p, survivor, "aliases"))
                    if kept:
                        pipe.sadd(person_key(p, survivor, "aliases"), *kept)
                pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for token in all_tokens:
                pipe.set(identity_key(p, token), survivor)
            pipe.execute()
            for other in others:
                keys = [
                    *(live_key(p, other, part) for part in LIVE_PARTS),
                    person_key(p, other, "tokens"),
                    person_key(p, other, "aliases"),
                    moved_key(p, other),
                ]
                first = self._live_of(keys)
                if not self._absorb(survivor, first):
                    return False
                rest = self._live_of(keys, taken_by=survivor)
                if rest != first and not self._absorb(survivor, rest):
                    return False
        return True

    def _live_of(self, keys: list[str], taken_by: str | None = None) -> dict[str, Any]:
        """One person's live keys (see :data:`_LIVE_OF`), by part: lists and sets as lists
        of text, zsets as member -> score."""

        def plan() -> Plan[list[Any]]:
            args = [taken_by, MOVED_SECONDS] if taken_by is not None else []
            (found,) = yield [_LIVE_OF.call(keys, args)]
            return found

        found = run_plan(self.client, plan(), "merging people")
        out: dict[str, Any] = {}
        for part, raw in zip(LIVE_PARTS, found, strict=False):
            if part in _ZSETS:
                out[part] = {text(m): float(sc) for m, sc in zip(raw[::2], raw[1::2], strict=True)}
            else:
                out[part] = [text(v) for v in raw]
        return out

    def _absorb(self, survivor: str, other: Mapping[str, Any]) -> bool:
        """One transaction in the survivor's slot: ``other``'s live keys merged into the
        survivor's (as :meth:`merge_people` merges them). False when an event reached the
        survivor meanwhile."""
        p = self.prefix
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*(live_key(p, survivor, part) for part in LIVE_PARTS))
                lists = {
                    part: merged_entries(
                        [pipe.lrange(live_key(p, survivor, part), 0, -1), other[part]],
                        self._list_length(part),
                    )
                    for part in _LISTS
                }
                pipe.multi()
                for part, entries in lists.items():
                    key = live_key(p, survivor, part)
                    pipe.delete(key)
                    if entries:
                        pipe.rpush(key, *entries)
                for part in _SETS:
                    if other[part]:
                        pipe.sadd(live_key(p, survivor, part), *other[part])
                for part in _ZSETS:
                    if other[part]:
                        # GT: each member's newest time wins, as ZUNIONSTORE … MAX does.
                        pipe.zadd(live_key(p, survivor, part), other[part], gt=True)
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def _list_length(self, part: str) -> int:
        return self.history_length if part == "history" else self.engagement_length

    def _bounded_aliases(self, aliases: set[str]) -> list[str]:
        """At most :data:`MAX_ALIASES` of ``aliases``: those with published features in a
        kept publication first, each group in sorted order."""
        ordered = sorted(aliases)
        if len(ordered) <= MAX_ALIASES:
            return ordered
        # Publications are not watched: one plain pipeline asks about every alias at once.
        pubs = self.publications()
        published: list[str] = []
        if pubs:
            pipe = self.client.pipeline(transaction=False)
            for alias in ordered:
                pipe.exists(*(user_key(self.prefix, pub, alias) for pub in pubs))
            published = [a for a, found in zip(ordered, pipe.execute(), strict=True) if found]
        first = set(published)
        rest = [a for a in ordered if a not in first]
        return (published + rest)[:MAX_ALIASES]

    def person_aliases(self, person: str) -> list[str]:
        with unavailable("reading merged people"):
            return [
                text(a) for a in self.client.smembers(person_key(self.prefix, person, "aliases"))
            ]

    def person_tokens(self, person: str) -> list[str]:
        """The identifier tokens stored for ``person`` (not their default one)."""
        with unavailable("reading identifiers"):
            return [
                text(t) for t in self.client.smembers(person_key(self.prefix, person, "tokens"))
            ]

    def erase_people(
        self, people: Sequence[str], tokens: Iterable[str], marks: Mapping[str, str]
    ) -> int:
        """Delete every key of ``people`` (live, published in every kept publication,
        identity) and the identity keys of ``tokens``, and add ``marks`` (person id ->
        their erasure mark) to the erased set, in one transaction; returns how many keys
        went. On a Redis Cluster, see :meth:`_erase_by_slot`."""
        p = self.prefix
        keys = [identity_key(p, t) for t in tokens]
        for who in people:
            keys += [live_key(p, who, part) for part in LIVE_PARTS]
            keys += [person_key(p, who, "tokens"), person_key(p, who, "aliases")]
        with unavailable("erasing a person"):
            pubs = self.publications()
            for who in people:
                keys += [user_key(p, pub, who) for pub in pubs]
            if self.cluster:
                return self._erase_by_slot(keys, [moved_key(p, who) for who in people], marks)
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*keys)
            if marks:
                pipe.sadd(erased_key(p), *marks.values())
            removed, *_ = pipe.execute()
        return int(removed)

    def _erase_by_slot(self, keys: list[str], markers: list[str], marks: Mapping[str, str]) -> int:
        """Erasure on a Redis Cluster, where one transaction cannot span the people's
        slots. The marks go first, to every place that is checked: the erased set (every
        read), the copy beside the stream (stream writes), and each person's slot (live
        writes, atomically with them). From then on nobody reads or writes the people,
        whatever is left of them; then each slot's keys go in one DEL (atomic within the
        slot), in slot order; so do their moved ``markers`` (not counted: they are the
        cluster's bookkeeping, not the person's data, and the count is the same as on one
        server). A crash half way leaves keys nobody uses, and ForgetUser again (by any of
        their identifiers: the tokens of people not yet erased still resolve) removes
        them."""
        p = self.prefix
        if marks:
            pipe = self.client.pipeline(transaction=False)
            pipe.sadd(erased_key(p), *marks.values())
            pipe.sadd(stream_erased_key(p), *marks.values())
            by_slot: dict[int, list[str]] = {}
            for who, mark in marks.items():
                by_slot.setdefault(slot_of(live_key(p, who, "history")), []).append(mark)
            for slot, slot_marks in sorted(by_slot.items()):
                pipe.sadd(slot_key(p, slot, "erased"), *slot_marks)
            pipe.execute()
        in_slot: dict[int, list[str]] = {}
        for key in keys:
            in_slot.setdefault(slot_of(key), []).append(key)
        pipe = self.client.pipeline(transaction=False)
        for _, slot_keys in sorted(in_slot.items()):
            pipe.execute_command("DEL", *slot_keys)
        for marker in markers:
            pipe.delete(marker)
        removed = pipe.execute()
        return sum(int(n) for n in removed[: len(in_slot)])

    def erased_marks(self) -> set[str]:
        """Every erasure mark (for the training job)."""
        with unavailable("reading erased people"):
            return {text(h) for h in self.client.smembers(erased_key(self.prefix))}

    def linked_user_ids(self) -> dict[str, str]:
        """Every linked ``user_id`` token → its person id (for the training job)."""
        out: dict[str, str] = {}
        with unavailable("reading identity links"):
            # On a cluster, SCAN runs on every primary, and the keys of a batch span slots.
            keys = self.client.scan_iter(match=linked_user_ids_pattern(self.prefix), count=1000)
            read = self.client.mget_nonatomic if self.cluster else self.client.mget
            for batch in chunks(keys, 1000):
                for key, target in zip(batch, read(batch), strict=True):
                    if target is not None:
                        out[token_of_identity_key(text(key))] = text(target)
        return out


def merged_entries(lists: Sequence[Sequence[bytes | str]], limit: int) -> list[str]:
    """Live list entries (JSON ``[…, ts, …]``) of several people as one list: newest
    first, each entry once (its first copy), at most ``limit``."""
    entries: dict[str, int] = {}
    for values in lists:
        for raw in values:
            entry = text(raw)
            entries.setdefault(entry, int(json.loads(entry)[2]))
    newest_first = sorted(entries, key=lambda e: -entries[e])
    return newest_first[:limit]
