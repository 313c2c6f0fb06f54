"""What a request reads about one person, usually in one round trip: both feature layers
merged, popular and trending items, the catalogue version, send-time evidence,
identifier tokens, and whether the person was erased.

Published features never change within a publication, so they are read once per person
and publication and kept decoded; live keys, trending items and the catalogue version
are read on every call, so an event tracked a moment ago, by any process, shapes the
next answer.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service import metrics
from service.store.codecs import (
    EngagementEvent,
    UserFeatures,
    decode_engagements,
    decode_entries,
    decode_user,
    is_empty,
    merge_features,
    text,
)
from service.store.keys import (
    catalogue_version_key,
    cobuy_key,
    current_key,
    erased_key,
    identity_key,
    live_key,
    meta_key,
    person_key,
    popular_key,
    trending_key,
    user_key,
)
from service.store.live import SECONDS_PER_DAY, combine_trending
from service.store.plans import Client, Command, Plan, command, run_plan
from service.store.publications import POINTER_TTL_SECONDS

# Label children looked up once: every request counts one of them.
_PUBLISHED_HIT = metrics.CACHE.labels("published_features", "hit")
_PUBLISHED_MISS = metrics.CACHE.labels("published_features", "miss")

#: The person id of a request that names nobody (or an erased person): never a valid id
#: (ids have no control characters), so it reads no one's features and has no row in any
#: model.
NOBODY = "\x00"
#: Popular items a service keeps per publication (the most a request can need).
POPULAR_CACHED = 1000
#: People whose published features a service keeps decoded in memory (per publication).
PUBLISHED_CACHED = 20_000


@dataclass
class EngagementView:
    """What send-time and channel questions need about one person, in one round trip."""

    published: list[str]
    """Profiles training published (JSON): the person's and those of people merged in."""
    published_until: int | None
    """Newest event time the published profile covers (its data end)."""
    live: list[EngagementEvent]
    """Tracked events, newest first; those after ``published_until`` are new."""
    contact: dict[str, float] = field(default_factory=dict)
    """Opt-out marks: ``unsubscribe:<channel>`` / ``resubscribe:<channel>`` → newest
    time (``service/contact.py``)."""


@dataclass
class ServingView:
    """Everything one request needs, read in one round trip."""

    publication: str | None
    user: UserFeatures
    """Published and live layers merged."""
    popular: list[tuple[str, float]]
    """Most popular items first, ``(item_id, score)``."""
    trending: list[tuple[str, float]] = field(default_factory=list)
    """Items gaining live interactions, best first, ``(item_id, decayed weight)``."""
    catalogue_version: int = 0
    bought_together: list[tuple[str, float]] = field(default_factory=list)
    """Items bought by the people who bought the item asked about (when asked)."""


@dataclass
class PersonView:
    """One person as a request needs them, read in one round trip (usually)."""

    person: str
    """The person id the request's identifier names."""
    serving: ServingView | None = None
    """Features, popular and trending items (when asked for)."""
    engagement: EngagementView | None = None
    """Send-time and channel evidence (when asked for)."""
    tokens: list[str] = field(default_factory=list)
    """Identifier tokens stored for the person (when asked for)."""
    erased: bool = False
    """The person was erased (checked when the caller gave an erasure ``mark``): read as
    nobody, whatever is left of them."""

    @property
    def scored_as(self) -> str:
        """The id a model may score: :data:`NOBODY` for an erased person, so a row a
        model learnt from them is never used."""
        return NOBODY if self.erased else self.person


@dataclass
class _PersonReplies:
    live: UserFeatures
    engagement: list[EngagementEvent]
    contact: dict[str, float]
    aliases: list[str]
    tokens: list[str]
    published: UserFeatures | None
    """Their features in the publication (empty when it holds none); None when there is
    no publication, or the request read neither features nor engagement."""


class ServingReads:
    """Per-request reads (part of :class:`~service.store.FeatureStore`)."""

    client: Client
    prefix: str
    history_length: int
    engagement_length: int
    trending_half_life_hours: float
    published_cached: int
    _published: dict[str, OrderedDict[str, UserFeatures]]
    _popular: dict[str, list[tuple[str, float]]]
    _data_end: dict[str, int | None]
    _pointer: tuple[str | None, float]
    _pointer_lock: threading.Lock

    def serving_view(
        self, user_id: str, popular_count: int, now: float | None = None
    ) -> ServingView:
        """One person's features (both layers), popular and trending items, and the
        catalogue version, in one round trip (sync; the server runs :meth:`person_plan`)."""
        view = run_plan(
            self.client,
            self.person_plan(None, user_id, popular_count=popular_count, now=now),
            "reading features",
        )
        assert view.serving is not None
        return view.serving

    def person_plan(
        self,
        token: str | None,
        guess: str,
        *,
        popular_count: int | None = None,
        engagement: bool = False,
        tokens: bool = False,
        together: tuple[str, int] | None = None,
        now: float | None = None,
        mark: Callable[[str], str] | None = None,
    ) -> Plan[PersonView]:
        """Everything one request needs about one person, usually in one round trip.

        ``token`` is the identifier the request names (None: ``guess`` is the person id
        already); its person is resolved in the same round trip as the reads, which are
        made for ``guess`` (the person an unlinked token names): only when the token is
        linked to someone else does a second round trip read that person. Asks for:
        features plus ``popular_count`` popular and trending items (``popular_count``
        not None), send-time evidence (``engagement``), stored identifier tokens
        (``tokens``), and items bought with ``together[0]`` (at most ``together[1]``).

        Published features never change within a publication, so they are read once per
        person and publication and kept decoded (:data:`PUBLISHED_CACHED` people); live
        keys, trending items and the catalogue version are read on every call, so an
        event tracked a moment ago, by any process, shapes the next answer.
        """
        now = time.time() if now is None else now
        p = self.prefix
        features = popular_count is not None
        pub, read_at = self._pointer
        stale = time.monotonic() - read_at > POINTER_TTL_SECONDS
        head: list[Command] = []
        if token is not None:
            head.append(command("get", identity_key(p, token)))
        if mark is not None:
            head.append(command("sismember", erased_key(p), mark(guess)))
        if stale:
            head.append(command("get", current_key(p)))
        if features:
            day = int(now) // SECONDS_PER_DAY
            top = max(popular_count or 0, 1) - 1
            head.append(_top_with_scores(trending_key(p, day), top))
            head.append(_top_with_scores(trending_key(p, day - 1), top))
            head.append(command("get", catalogue_version_key(p)))
        wanted = (features, engagement, together)
        pub_commands, pub_decode = self._publication_commands(pub, *wanted)
        own_commands, own_decode = self._person_commands(guess, pub, features, engagement, tokens)
        replies = yield head + pub_commands + own_commands
        at = 0
        person = guess
        if token is not None:
            if replies[0] is not None:
                person = text(replies[0])
            at += 1
        erased = False
        if mark is not None:
            erased = bool(replies[at])
            at += 1
        if stale:
            raw = replies[at]
            at += 1
            current = text(raw) if raw is not None else None
            with self._pointer_lock:
                self._pointer = (current, time.monotonic())
        else:
            current = pub
        trending: list[tuple[str, float]] = []
        version = 0
        if features:
            today, yesterday, raw_version = replies[at : at + 3]
            at += 3
            trending = combine_trending(
                _score_pairs(today),
                _score_pairs(yesterday),
                now,
                self.trending_half_life_hours,
            )[: popular_count or 0]
            version = int(raw_version or 0)
        bought = pub_decode(replies[at : at + len(pub_commands)])
        mine = own_decode(replies[at + len(pub_commands) :])
        if person != guess or current != pub:
            # Linked to someone else, or a new publication went live: read them (there).
            pub = current
            pub_commands, pub_decode = self._publication_commands(pub, *wanted)
            own_commands, own_decode = self._person_commands(
                person, pub, features, engagement, tokens
            )
            check = [command("sismember", erased_key(p), mark(person))] if mark else []
            replies = yield check + pub_commands + own_commands
            if check:
                erased, replies = bool(replies[0]), replies[1:]
            bought = pub_decode(replies[: len(pub_commands)])
            mine = own_decode(replies[len(pub_commands) :])
        if erased:
            # Whatever is left of them (a cached row, a racing write) is not theirs to use.
            mine = _PersonReplies(UserFeatures(), [], {}, [], [], None)
        theirs: list[_PersonReplies] = []
        if mine.aliases:
            # People merged into this one: their published features count until the next
            # training run relabels them (read once per publication, then cached). Their
            # live keys moved into this person at the merge; an event that raced the merge
            # is redirected by the write itself (see service.store.live).
            reads = [
                self._person_commands(a, pub, features, engagement, False, with_live=False)
                for a in mine.aliases
            ]
            wanted = [c for commands, _ in reads for c in commands]
            replies = (yield wanted) if wanted else []
            at = 0
            for commands, decode in reads:
                theirs.append(decode(replies[at : at + len(commands)]))
                at += len(commands)
        view = PersonView(person, tokens=mine.tokens, erased=erased)
        if features:
            published, live = mine.published or UserFeatures(), mine.live
            for other in theirs:
                published = merge_features(
                    other.published or UserFeatures(), published, self.history_length
                )
                live = merge_features(other.live, live, self.history_length)
            view.serving = ServingView(
                publication=pub,
                user=merge_features(live, published, self.history_length),
                popular=self._popular.get(pub, [])[: popular_count or 0] if pub else [],
                trending=trending,
                catalogue_version=version,
                bought_together=bought,
            )
        if engagement:
            texts = []
            own = mine.published
            if own is not None and own.engagement is not None:
                texts.append(own.engagement)
            events = list(mine.engagement)
            for other in theirs:
                if other.published is not None and other.published.engagement:
                    texts.append(other.published.engagement)
                events += other.engagement
            events.sort(key=lambda e: -e[2])
            until = self._data_end.get(pub) if pub is not None else None
            view.engagement = EngagementView(texts, until, events, mine.contact)
        return view

    def _publication_commands(
        self,
        pub: str | None,
        features: bool,
        engagement: bool,
        together: tuple[str, int] | None,
    ) -> tuple[list[Command], Any]:
        """Reads of the publication itself a request needs: the popular list and the data
        end once per publication (they never change within one), bought-together items
        each time. The decoder fills the caches and returns the bought-together items."""
        if pub is None:
            return [], lambda replies: []
        p = self.prefix
        commands: list[Command] = []
        want_popular = features and pub not in self._popular
        want_end = engagement and pub not in self._data_end
        if want_popular:
            commands.append(
                command("zrevrange", popular_key(p, pub), 0, POPULAR_CACHED - 1, withscores=True)
            )
        if want_end:
            commands.append(command("hget", meta_key(p, pub), "data_end"))
        if together is not None:
            item, count = together
            commands.append(
                command("zrevrange", cobuy_key(p, pub, item), 0, count - 1, withscores=True)
            )

        def decode(replies: list[Any]) -> list[tuple[str, float]]:
            it = iter(replies)
            if want_popular:
                popular = [(text(i), float(s)) for i, s in next(it)]
                # Only the live publication and its predecessor are ever asked for.
                kept = {k: v for k, v in self._popular.items() if k == pub}
                self._popular = kept | {pub: popular}
            if want_end:
                raw = next(it)
                self._data_end[pub] = int(text(raw)) if raw else None
            if together is None:
                return []
            return [(text(i), float(s)) for i, s in next(it)]

        return commands, decode

    def _person_commands(
        self,
        person: str,
        pub: str | None,
        features: bool,
        engagement: bool,
        tokens: bool,
        with_live: bool = True,
    ) -> tuple[list[Command], Any]:
        """One person's reads and their decoder (-> :class:`_PersonReplies`). Without
        ``live``, only their published features (a person merged into another: their live
        keys moved at the merge)."""
        p = self.prefix
        commands: list[Command] = []
        features_live, engagement_live = features and with_live, engagement and with_live
        if features_live:
            commands.append(
                command("lrange", live_key(p, person, "history"), 0, self.history_length - 1)
            )
            commands.append(command("smembers", live_key(p, person, "purchased")))
            commands.append(command("smembers", live_key(p, person, "disliked")))
        if engagement_live:
            commands.append(
                command("lrange", live_key(p, person, "engagement"), 0, self.engagement_length - 1)
            )
            commands.append(
                command("zrange", live_key(p, person, "contact"), 0, -1, withscores=True)
            )
        if with_live:
            commands.append(command("smembers", person_key(p, person, "aliases")))
        if tokens:
            commands.append(command("smembers", person_key(p, person, "tokens")))
        cached = self._published_of(pub, person) if pub is not None else None
        want_published = pub is not None and cached is None and (features or engagement)
        if want_published:
            commands.append(command("hgetall", user_key(p, pub, person)))
        # A publication never changes, but a person can be erased from it (by any
        # process): a cached person counts only while their published key still exists.
        # (Not for merged people: the survivor's own check and erased mark cover them.)
        check = with_live and pub is not None and cached is not None and not is_empty(cached)
        if check:
            commands.append(command("exists", user_key(p, pub, person)))

        def decode(replies: list[Any]) -> _PersonReplies:
            it = iter(replies)
            live = UserFeatures()
            if features_live:
                history, purchased, disliked = next(it), next(it), next(it)
                live = UserFeatures(
                    history=decode_entries(history),
                    purchased={text(i) for i in purchased},
                    disliked={text(i) for i in disliked},
                )
            events = decode_engagements(next(it)) if engagement_live else []
            contact = {text(m): float(t) for m, t in next(it)} if engagement_live else {}
            aliases = [text(a) for a in next(it)] if with_live else []
            stored = [text(t) for t in next(it)] if tokens else []
            published = cached
            if want_published:
                raw = next(it)
                published = decode_user(raw) if raw else UserFeatures()
                self._remember(pub, person, published)  # type: ignore[arg-type]
            if check and not next(it):
                published = UserFeatures()
                self._remember(pub, person, published)  # type: ignore[arg-type]
            return _PersonReplies(live, events, contact, aliases, stored, published)

        return commands, decode

    def _published_of(self, pub: str, person: str) -> UserFeatures | None:
        cache = self._published.get(pub)
        found = None if cache is None else cache.get(person)
        if found is not None:
            cache.move_to_end(person)  # type: ignore[union-attr]
            _PUBLISHED_HIT.inc()
        else:
            _PUBLISHED_MISS.inc()
        return found

    def _remember(self, pub: str, person: str, features: UserFeatures) -> None:
        cache = self._published.get(pub)
        if cache is None:
            # A new publication: keep only its predecessor's cache beside it.
            newest = list(self._published)[-1:]
            self._published = {k: self._published[k] for k in newest} | {pub: OrderedDict()}
            cache = self._published[pub]
        cache[person] = features
        if len(cache) > self.published_cached:
            cache.popitem(last=False)


def _top_with_scores(key: str, last: int) -> Command:
    """``ZRANGE key 0 last REV WITHSCORES`` as a bare command, decoded by
    :func:`_score_pairs`: redis-py's own decoding turns each RESP3 double back into
    RESP2 bytes and parses them again, a tenth of a request's CPU."""
    return command("execute_command", "ZRANGE", key, 0, last, "REV", "WITHSCORES")


def _score_pairs(reply: Sequence[Any]) -> list[tuple[str, float]]:
    """``[[member, score], ...]`` (RESP3) or ``[member, score, ...]`` (RESP2) as pairs."""
    if reply and not isinstance(reply[0], list):
        reply = list(zip(reply[::2], reply[1::2], strict=True))
    return [(text(member), float(score)) for member, score in reply]


def together(plans: Sequence[Plan[Any]]) -> Plan[list[Any]]:
    """``plans`` run side by side, their values in order: each round trip carries the
    commands of every plan still running, so reading N people (one ``person_plan`` each)
    takes the round trips of the slowest of them, not N times as many."""
    values: list[Any] = [None] * len(plans)
    pending: dict[int, list[Command]] = {}
    for n, plan in enumerate(plans):
        try:
            pending[n] = next(plan)
        except StopIteration as done:
            values[n] = done.value
    while pending:
        replies = yield [c for commands in pending.values() for c in commands]
        at = 0
        running: dict[int, list[Command]] = {}
        for n, commands in pending.items():
            part = replies[at : at + len(commands)]
            at += len(commands)
            try:
                running[n] = plans[n].send(part)
            except StopIteration as done:
                values[n] = done.value
        pending = running
    return values
