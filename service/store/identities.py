"""Identity links in Redis: which person each identifier token names, the tokens and
merged people (aliases) of each person, merges as optimistic transactions, erasure, and
the erased set. The rules (tokens, survivors, hashing) are :mod:`service.identity`'s;
this module only reads and writes what they decide."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

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
    person_key,
    token_of_identity_key,
    user_key,
)
from service.store.plans import Plan, chunks, command, unavailable

#: How long the identity lock lives: a crashed holder blocks others at most this long.
#: Nothing held under it grows with the data (an erasure's stream clean-up runs after it
#: is released), so it is never renewed.
LOCK_SECONDS = 10.0
#: People merged into one person whose published features keep counting through it
#: (until the next training run relabels them). Every request of that person reads each
#: alias, so the set is bounded: beyond it, the aliases without published features go
#: first, then the rest in a stable order (and a training run brings them back).
MAX_ALIASES = 64


class IdentityStore:
    """Identity reads and writes (part of :class:`~service.store.FeatureStore`)."""

    client: redis.Redis
    prefix: str
    history_length: int
    engagement_length: int
    publications: Callable[[], list[str]]  # Publications provides it

    def identity_targets_plan(self, tokens: Sequence[str]) -> Plan[list[str | None]]:
        """The person id stored for each token (None: nobody linked it), one round trip."""
        if not tokens:
            return []
        (found,) = yield [command("mget", [identity_key(self.prefix, t) for t in tokens])]
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
        the caller tries again) instead of being lost."""
        p = self.prefix
        people = [survivor, *others]
        with unavailable("merging people"), self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*(live_key(p, who, part) for who in people for part in LIVE_PARTS))
                all_tokens = set(tokens) | {default_token(survivor)}
                aliases: set[str] = set(others)
                for other in others:
                    all_tokens |= {text(t) for t in pipe.smembers(person_key(p, other, "tokens"))}
                    all_tokens.add(default_token(other))
                    aliases |= {text(a) for a in pipe.smembers(person_key(p, other, "aliases"))}
                aliases |= {text(a) for a in pipe.smembers(person_key(p, survivor, "aliases"))}
                kept = self._bounded_aliases(aliases)
                merged_lists = {
                    part: self._merged_list(pipe, part, people)
                    for part in ("history", "engagement")
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
                    for part in ("purchased", "purchased_at", "disliked", "disliked_at", "contact"):
                        keys = [live_key(p, who, part) for who in people]
                        zset = part.endswith("_at") or part == "contact"
                        store = pipe.zunionstore if zset else pipe.sunionstore
                        # Newest time of each member wins (an opt-out of either person
                        # stays unless a later resubscribe of either lifts it).
                        if zset:
                            store(live_key(p, survivor, part), keys, aggregate="MAX")
                        else:
                            store(live_key(p, survivor, part), keys)
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

    def _merged_list(
        self, reader: redis.client.Pipeline, part: str, people: Sequence[str]
    ) -> list[str]:
        limit = self.history_length if part == "history" else self.engagement_length
        entries: dict[str, int] = {}
        for person in people:
            for raw in reader.lrange(live_key(self.prefix, person, part), 0, -1):
                entry = text(raw)
                entries.setdefault(entry, int(json.loads(entry)[2]))
        newest_first = sorted(entries, key=lambda e: -entries[e])
        return newest_first[:limit]

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
        self, people: Sequence[str], tokens: Iterable[str], marks: Iterable[str]
    ) -> int:
        """Delete every key of ``people`` (live, published in every kept publication,
        identity) and the identity keys of ``tokens``, and add ``marks`` to the erased
        set, in one transaction; returns how many keys went."""
        p = self.prefix
        keys = [identity_key(p, t) for t in tokens]
        for who in people:
            keys += [live_key(p, who, part) for part in LIVE_PARTS]
            keys += [person_key(p, who, "tokens"), person_key(p, who, "aliases")]
        marks = list(marks)
        with unavailable("erasing a person"):
            pubs = self.publications()
            for who in people:
                keys += [user_key(p, pub, who) for pub in pubs]
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*keys)
            if marks:
                pipe.sadd(erased_key(p), *marks)
            removed, *_ = pipe.execute()
        return int(removed)

    def erased_marks(self) -> set[str]:
        """Every erasure mark (for the training job)."""
        with unavailable("reading erased people"):
            return {text(h) for h in self.client.smembers(erased_key(self.prefix))}

    def linked_user_ids(self) -> dict[str, str]:
        """Every linked ``user_id`` token → its person id (for the training job)."""
        out: dict[str, str] = {}
        with unavailable("reading identity links"):
            keys = self.client.scan_iter(match=linked_user_ids_pattern(self.prefix), count=1000)
            for batch in chunks(keys, 1000):
                for key, target in zip(batch, self.client.mget(batch), strict=True):
                    if target is not None:
                        out[token_of_identity_key(text(key))] = text(target)
        return out
