"""One person across channels: identifiers, links between them, merges and erasure.

A person is named by any of their identifiers. Each identifier becomes a *token*:
``<kind>:<value>`` for ids that are not personal data, and ``<kind>:h:<keyed hash>`` for
emails and phones, so raw emails and phone numbers never reach Redis, MLflow, files or
logs (the key is ``OMNIREC_IDENTITY_SECRET``).

Features are keyed by a *person id*. An identifier nobody linked names the person id
it implies — the value itself for ``user_id`` (so plain user ids work as before), the
token for every other kind. ``link`` points every token of the people it joins at one
person id.

Merging two people who both have histories (e.g. an anonymous cookie that browsed, and
the account she logs into): the survivor is the person of the first ``user_id`` among
the identifiers (the account), else the first identifier's person. The others' live
histories, purchases, dislikes and engagement are merged into the survivor by time
(duplicates dropped, bounds kept); their identifiers point at the survivor; their
published (trained) features keep counting through the survivor's *aliases* until the
next training run, which relabels their events to the survivor. Links and erasures
rewrite people under one Redis lock, so concurrent calls never lose history.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from service.errors import BadInput, StoreUnavailable
from service.events import MAX_ID_LENGTH
from service.features import (
    LIVE_PARTS,
    FeatureStore,
    PersonView,
    Plan,
    chunks,
    command,
    erased_key,
    identity_key,
    identity_lock_key,
    live_key,
    person_key,
    run_plan,
    stream_key,
    user_key,
)

KINDS: tuple[str, ...] = ("user_id", "cookie", "device_id", "email", "phone", "loyalty_card")
#: Kinds that are personal data: only their keyed hash is ever stored.
HASHED_KINDS = frozenset({"email", "phone"})
LOCK_SECONDS = 10.0
#: Optimistic merge attempts before a link gives up (each aborted by a live event).
MERGE_ATTEMPTS = 20

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_NOISE = re.compile(r"[\s().\-/]")
_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")


def normalise(kind: str, value: str, field: str = "identifier") -> str:
    """The canonical form of an identifier value; :class:`BadInput` naming ``field``."""
    if kind not in KINDS:
        raise BadInput(f"{field}.kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    text = value.strip()
    if not text:
        raise BadInput(f"{field}.value", "is required")
    if len(text) > MAX_ID_LENGTH:
        raise BadInput(f"{field}.value", f"is longer than {MAX_ID_LENGTH} characters")
    if kind == "email":
        text = text.lower()
        if not _EMAIL.match(text):
            # The value is not echoed: error messages end up in logs.
            raise BadInput(f"{field}.value", "is not a valid email address")
    elif kind == "phone":
        text = _PHONE_NOISE.sub("", text)
        if text.startswith("00"):
            text = "+" + text[2:]
        if not _PHONE.match(text):
            raise BadInput(
                f"{field}.value",
                "is not a phone number with country code (e.g. +49 151 23456789)",
            )
    return text


def default_person(token: str) -> str:
    """The person id a token names while nobody has linked it."""
    kind, _, value = token.partition(":")
    return value if kind == "user_id" else token


def default_token(person: str) -> str:
    """The token whose default person is ``person`` (inverse of :func:`default_person`)."""
    kind = person.partition(":")[0]
    return person if kind in KINDS and kind != "user_id" else f"user_id:{person}"


def all_tokens(person: str, stored: Iterable[str]) -> list[str]:
    """Every token naming ``person``: those stored for them and the default one."""
    return sorted(set(stored) | {default_token(person)})


@dataclass(frozen=True)
class Forgotten:
    keys_removed: int
    events_removed: int


class Identities:
    """Resolves, links and forgets people in the feature store's Redis."""

    def __init__(self, store: FeatureStore, secret: str) -> None:
        if not secret:
            raise ValueError("an identity secret is required")
        self.store = store
        self.client = store.client
        self.prefix = store.prefix
        self._secret = secret.encode()

    # -- tokens --

    def token(self, kind: str, value: str, field: str = "identifier") -> str:
        text = normalise(kind, value, field)
        if kind in HASHED_KINDS:
            return f"{kind}:h:{self.keyed_hash(f'{kind}:{text}')}"
        return f"{kind}:{text}"

    def keyed_hash(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()[:32]

    def request_token(self, message: object, field: str = "user_id") -> str | None:
        """The token a request or event names: its ``user_id`` when set, else its
        ``identifier``; None when it names nobody."""
        user_id = getattr(message, field)
        if user_id:
            if len(user_id) > MAX_ID_LENGTH:
                raise BadInput(field, f"is longer than {MAX_ID_LENGTH} characters")
            return f"user_id:{user_id}"
        if not message.HasField("identifier"):  # type: ignore[attr-defined]
            return None
        identifier = message.identifier  # type: ignore[attr-defined]
        return self.token(identifier.kind, identifier.value, "identifier")

    def person_of(self, message: object, field: str = "user_id") -> str:
        """The person a request names; :class:`BadInput` when it names nobody."""
        token = self.request_token(message, field)
        if token is None:
            raise BadInput(field, "is required (or give an identifier)")
        return self.person(token)

    # -- resolving --

    def resolve(self, tokens: Sequence[str]) -> list[str]:
        """The person id of each token, in one round trip."""
        return run_plan(self.client, self.resolve_plan(tokens), "resolving identities")

    def resolve_plan(self, tokens: Sequence[str]) -> Plan[list[str]]:
        if not tokens:
            return []
        (found,) = yield [command("mget", [identity_key(self.prefix, t) for t in tokens])]
        return [
            _text(f) if f is not None else default_person(t)
            for t, f in zip(tokens, found, strict=True)
        ]

    def person(self, token: str) -> str:
        return self.resolve([token])[0]

    def view_plan(self, token: str | None, **parts: Any) -> Plan[PersonView]:
        """The person ``token`` names and what a request needs of them (see
        :meth:`FeatureStore.person_plan` for ``parts``), usually in one round trip.
        ``None`` names nobody: only the shared reads (popular, trending, catalogue)."""
        if token is None:
            # "\x00" is never a valid id: it reads no one's features.
            return self.store.person_plan(None, "\x00", **parts)
        return self.store.person_plan(token, default_person(token), **parts)

    # -- linking --

    def link(self, tokens: Sequence[str]) -> tuple[str, int]:
        """Make every token name one person; returns ``(person id, people merged)``."""
        with self._locked():
            resolved = self.resolve(tokens)
            people = list(dict.fromkeys(resolved))
            account = next(
                (who for t, who in zip(tokens, resolved, strict=True) if t.startswith("user_id:")),
                None,
            )
            survivor = account or people[0]
            others = [p for p in people if p != survivor]
            for _ in range(MERGE_ATTEMPTS):
                try:
                    self._merge(tokens, survivor, others)
                    return survivor, len(others)
                except redis.WatchError:
                    # A live event reached one of these people mid-merge: read again.
                    continue
        raise StoreUnavailable("merging people kept racing live events; try again")

    def _merge(self, tokens: Sequence[str], survivor: str, others: list[str]) -> None:
        """One optimistic transaction: the live keys read are WATCHed, so an event
        tracked meanwhile aborts it instead of being lost."""
        p = self.prefix
        people = [survivor, *others]
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(*(live_key(p, who, part) for who in people for part in LIVE_PARTS))
            all_tokens = set(tokens) | {default_token(survivor)}
            aliases: set[str] = set(others)
            for other in others:
                all_tokens |= {_text(t) for t in pipe.smembers(person_key(p, other, "tokens"))}
                all_tokens.add(default_token(other))
                aliases |= {_text(a) for a in pipe.smembers(person_key(p, other, "aliases"))}
            merged_lists = {
                part: self._merged_list(pipe, part, people) for part in ("history", "engagement")
            }
            pipe.multi()
            for token in all_tokens:
                pipe.set(identity_key(p, token), survivor)
            pipe.sadd(person_key(p, survivor, "tokens"), *all_tokens)
            if aliases:
                pipe.sadd(person_key(p, survivor, "aliases"), *aliases)
            if others:
                for part, entries in merged_lists.items():
                    key = live_key(p, survivor, part)
                    pipe.delete(key)
                    if entries:
                        pipe.rpush(key, *entries)
                for part in ("purchased", "disliked"):
                    keys = [live_key(p, who, part) for who in people]
                    pipe.sunionstore(live_key(p, survivor, part), keys)
                for other in others:
                    pipe.delete(
                        *(live_key(p, other, part) for part in LIVE_PARTS),
                        person_key(p, other, "tokens"),
                        person_key(p, other, "aliases"),
                    )
            pipe.execute()

    def _merged_list(
        self, reader: redis.client.Pipeline, part: str, people: Sequence[str]
    ) -> list[str]:
        limit = self.store.history_length if part == "history" else self.store.engagement_length
        entries: dict[str, int] = {}
        for person in people:
            for raw in reader.lrange(live_key(self.prefix, person, part), 0, -1):
                text = _text(raw)
                entries.setdefault(text, int(json.loads(text)[2]))
        newest_first = sorted(entries, key=lambda e: -entries[e])
        return newest_first[:limit]

    def aliases(self, person: str) -> list[str]:
        return [_text(a) for a in self.client.smembers(person_key(self.prefix, person, "aliases"))]

    def tokens(self, person: str) -> list[str]:
        stored = [_text(t) for t in self.client.smembers(person_key(self.prefix, person, "tokens"))]
        return all_tokens(person, stored)

    # -- erasure --

    def forget(self, token: str) -> Forgotten:
        """Erase the person ``token`` names from Redis; record it for training."""
        with self._locked():
            p = self.prefix
            person = self.person(token)
            ids = {person, *self.aliases(person)}
            tokens = set(self.tokens(person)) | {token}
            for alias in ids - {person}:
                tokens |= set(self.tokens(alias))
            keys = [identity_key(p, t) for t in tokens]
            for who in ids:
                keys += [live_key(p, who, part) for part in LIVE_PARTS]
                keys += [person_key(p, who, "tokens"), person_key(p, who, "aliases")]
                keys += [user_key(p, pub, who) for pub in self.store.publications()]
            removed = int(self.client.delete(*keys)) if keys else 0
            events = self._drop_stream_events(ids)
            names = ids | {default_person(t) for t in tokens}
            self.client.sadd(erased_key(p), *(self.keyed_hash(f"person:{n}") for n in names))
            return Forgotten(removed, events)

    def _drop_stream_events(self, ids: set[str]) -> int:
        removed = 0
        after = "-"
        while True:
            batch = self.client.xrange(stream_key(self.prefix), min=after, count=1000)
            if not batch:
                return removed
            doomed = [i for i, fields in batch if _text(fields.get(b"user_id", b"")) in ids]
            if doomed:
                removed += int(self.client.xdel(stream_key(self.prefix), *doomed))
            after = f"({_text(batch[-1][0])}"

    def is_erased(self, person_ids: Iterable[str]) -> set[str]:
        """Which of ``person_ids`` were erased (for the training job)."""
        erased = {_text(h) for h in self.client.smembers(erased_key(self.prefix))}
        return {p for p in person_ids if self.keyed_hash(f"person:{p}") in erased}

    def links(self) -> dict[str, str]:
        """Every linked ``user_id`` → its person id (for the training job)."""
        out: dict[str, str] = {}
        keys = self.client.scan_iter(match=f"{self.prefix}:idn:{{user_id:*", count=1000)
        for batch in chunks(keys, 1000):
            for key, target in zip(batch, self.client.mget(batch), strict=True):
                if target is not None:
                    token = _text(key).split("{", 1)[1].rstrip("}")
                    out[default_person(token)] = _text(target)
        return out

    def _locked(self) -> redis.lock.Lock:
        return self.client.lock(
            identity_lock_key(self.prefix), timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
