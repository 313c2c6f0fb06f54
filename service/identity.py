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
the account she logs into): the survivor is the account (a person whose id is a
``user_id``), whichever identifier named it, else the first identifier's person; two
accounts merge only when the caller says so (``merge_accounts``). The others' live
histories, purchases, dislikes and engagement are merged into the survivor by time
(duplicates dropped, bounds kept); their identifiers point at the survivor; their
published (trained) features keep counting through the survivor's *aliases* until the
next training run, which relabels their events to the survivor. Links and erasures
rewrite people under one Redis lock, so concurrent calls never lose history.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import AccountConflict, BadInput, StoreUnavailable, quote
from service.events import id_problem
from service.store import FeatureStore
from service.store.plans import Plan
from service.store.reads import NOBODY, PersonView

KINDS: tuple[str, ...] = ("user_id", "cookie", "device_id", "email", "phone", "loyalty_card")
#: Kinds that are personal data: only their keyed hash is ever stored.
HASHED_KINDS = frozenset({"email", "phone"})
#: Optimistic merge attempts before a link gives up (each aborted by a live event).
MERGE_ATTEMPTS = 20

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_NOISE = re.compile(r"[\s().\-/]")
_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")


def normalise(kind: str, value: str, field: str = "identifier") -> str:
    """The canonical form of an identifier value; :class:`BadInput` naming ``field``."""
    if kind not in KINDS:
        raise BadInput(f"{field}.kind", f"{quote(kind)} is not one of {', '.join(KINDS)}")
    text = value.strip()
    problem = id_problem(text)
    if problem is not None:
        raise BadInput(f"{field}.value", problem)
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
    """Resolves, links and forgets people; what it decides is stored by the feature
    store (:mod:`service.store.identities`)."""

    def __init__(self, store: FeatureStore, secret: str) -> None:
        if not secret:
            raise ValueError("an identity secret is required")
        self.store = store
        self._secret = secret.encode()

    # -- tokens --

    def token(self, kind: str, value: str, field: str = "identifier") -> str:
        text = normalise(kind, value, field)
        if kind in HASHED_KINDS:
            return f"{kind}:h:{self.keyed_hash(f'{kind}:{text}')}"
        return f"{kind}:{text}"

    def keyed_hash(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()[:32]

    def erasure_mark(self, person: str) -> str:
        """What the erased set holds for ``person``: a keyed hash, never the id itself."""
        return self.keyed_hash(f"person:{person}")

    def request_token(self, message: object, field: str = "user_id") -> str | None:
        """The token a request or event names: its ``user_id`` when set, else its
        ``identifier``; None when it names nobody."""
        user_id = getattr(message, field)
        if user_id:
            check_user_id(field, user_id)
            return f"user_id:{user_id}"
        if not message.HasField("identifier"):  # type: ignore[attr-defined]
            return None
        identifier = message.identifier  # type: ignore[attr-defined]
        return self.token(identifier.kind, identifier.value, "identifier")

    def required_token(self, message: object, field: str = "user_id") -> str:
        """:meth:`request_token`, or :class:`BadInput` naming ``field`` when the message
        names nobody (every RPC about one person asks this)."""
        token = self.request_token(message, field)
        if token is None:
            raise BadInput(field, "is required (or give an identifier)")
        return token

    def person_of(self, message: object, field: str = "user_id") -> str:
        """The person a request names; :class:`BadInput` when it names nobody."""
        return self.person(self.required_token(message, field))

    # -- resolving --

    def resolve(self, tokens: Sequence[str]) -> list[str]:
        """The person id of each token, in one round trip."""
        return self.store.run(self.resolve_plan(tokens), "resolving identities")

    def resolve_plan(self, tokens: Sequence[str]) -> Plan[list[str]]:
        found = yield from self.store.identity_targets_plan(tokens)
        return [
            f if f is not None else default_person(t)
            for t, f in zip(tokens, found or [], strict=True)
        ]

    def erased_plan(self, people: Sequence[str]) -> Plan[set[str]]:
        """Which of ``people`` were erased, in one round trip."""
        marks = [self.erasure_mark(p) for p in people]
        found = yield from self.store.erased_plan(marks)
        return {p for p, gone in zip(people, found or [], strict=True) if gone}

    def person(self, token: str) -> str:
        return self.resolve([token])[0]

    def view_plan(self, token: str | None, **parts: Any) -> Plan[PersonView]:
        """The person ``token`` names and what a request needs of them (see
        :meth:`~service.store.reads.ServingReads.person_plan` for ``parts``), usually in
        one round trip. ``None`` names nobody: only the shared reads (popular, trending,
        catalogue). An erased person is read as nobody, whatever a model learnt of them."""
        if token is None:
            # "\x00" is never a valid id: it reads no one's features.
            return (yield from self.store.person_plan(None, NOBODY, **parts))
        return (
            yield from self.store.person_plan(
                token, default_person(token), mark=self.erasure_mark, **parts
            )
        )

    # -- linking --

    def link(self, tokens: Sequence[str], merge_accounts: bool = False) -> tuple[str, int]:
        """Make every token name one person; returns ``(person id, people merged)``.

        Two different accounts (people whose id is a ``user_id``) are merged only with
        ``merge_accounts``: otherwise :class:`AccountConflict`, so linking someone
        else's email to one's own account cannot take theirs over."""
        with self.store.identity_lock():
            resolved = self.resolve(tokens)
            people = list(dict.fromkeys(resolved))
            accounts = [p for p in people if is_account(p)]
            if len(accounts) > 1 and not merge_accounts:
                raise AccountConflict(
                    "identifiers: they belong to different accounts; merging accounts needs "
                    "merge_accounts=true"
                )
            # The account survives, whichever identifier named it: an anonymous cookie
            # linked to an account's email joins the account, never the other way round.
            survivor = accounts[0] if accounts else people[0]
            others = [p for p in people if p != survivor]
            for _ in range(MERGE_ATTEMPTS):
                # False: a live event reached one of these people mid-merge; read again.
                if self.store.merge_people(tokens, survivor, others, default_token):
                    return survivor, len(others)
        raise StoreUnavailable("merging people kept racing live events; try again")

    def aliases(self, person: str) -> list[str]:
        return self.store.person_aliases(person)

    def tokens(self, person: str) -> list[str]:
        return all_tokens(person, self.store.person_tokens(person))

    # -- erasure --

    def forget(self, token: str) -> Forgotten:
        """Erase the person ``token`` names: their keys go and their erasure mark is set in
        one transaction under the identity lock (from then on every process reads them as
        nobody, and live events naming them are refused); then their stream entries go,
        in bounded steps outside the lock."""
        with self.store.identity_lock():
            person = self.person(token)
            ids = {person, *self.aliases(person)}
            tokens = set(self.tokens(person)) | {token}
            for alias in ids - {person}:
                tokens |= set(self.tokens(alias))
            names = ids | {default_person(t) for t in tokens}
            removed = self.store.erase_people(
                sorted(ids), sorted(tokens), {n: self.erasure_mark(n) for n in sorted(names)}
            )
        events = self.store.drop_events_of(ids)
        return Forgotten(removed, events)

    def is_erased(self, person_ids: Iterable[str]) -> set[str]:
        """Which of ``person_ids`` were erased (for the training job)."""
        erased = self.store.erased_marks()
        return {p for p in person_ids if self.erasure_mark(p) in erased}

    def links(self) -> dict[str, str]:
        """Every linked ``user_id`` → its person id (for the training job)."""
        return {default_person(t): who for t, who in self.store.linked_user_ids().items()}


def is_account(person: str) -> bool:
    """Whether ``person`` is an account: their id is a ``user_id``, not another kind's
    token (an anonymous cookie, a device, …)."""
    return default_token(person).startswith("user_id:")


def check_user_id(field: str, value: str) -> str:
    """``value`` as a user id, or :class:`BadInput` naming ``field``: not blank, no
    control characters, not too long, and not spelled like another kind's token (user
    ids and identifier tokens share no namespace: ``cookie:ck1`` as a user id would name
    the cookie's person)."""
    problem = id_problem(value)
    kind, colon, _ = value.partition(":")
    if problem is None and colon and kind in KINDS:
        problem = f"must not start with {kind + ':'!r}: send such ids as an identifier"
    if problem is not None:
        raise BadInput(field, problem)
    return value
