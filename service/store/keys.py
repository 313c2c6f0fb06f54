"""THE Redis key schema: every key omnirec reads or writes is built here, by pure
functions (testable without a server). Nothing else in omnirec spells a key.

Keys (``P`` is the configured prefix, ``<pub>`` a publication id)::

    P:pub:current                       string  id of the live publication
    P:pub:all                           list    publication ids, newest first
    P:pub:<pub>:meta                    hash    facts about the publication
    P:pub:<pub>:popular                 zset    item_id -> popularity
    P:pub:<pub>:cobuy:{<item>}          zset    item_id -> times bought by the same people
    P:pub:<pub>:user:{<user>}           hash    history / purchased / disliked (JSON),
                                                engagement (send-time profile, JSON)
    P:live:user:{<user>}:history        list    JSON [item, type, ts], newest first, bounded
    P:live:user:{<user>}:purchased      set     item ids, the newest MAX_PERSON_ITEMS
    P:live:user:{<user>}:purchased_at   zset    item id -> time of its newest purchase (so
                                                the set keeps the newest when trimmed)
    P:live:user:{<user>}:disliked       set     item ids, the newest MAX_PERSON_ITEMS
    P:live:user:{<user>}:disliked_at    zset    item id -> time of its newest dislike
    P:live:user:{<user>}:engagement     list    JSON [channel, type, ts, zone, automated],
                                                newest first, bounded (send time, channels)
    P:live:user:{<user>}:contact        zset    "unsubscribe:<channel>" / "resubscribe:
                                                <channel>" -> newest time (opt-outs; never
                                                trimmed, see service/contact.py)
    P:live:trending:<day>               zset    item_id -> decayed weight (see below)
    P:events                            stream  every accepted live event, bounded
    P:events:exported                   string  id of the last exported stream entry
    P:seen:{<event id>}                 string  an Event.event_id recorded in the last
                                                DEDUPE_WINDOW_SECONDS (expires then)
    P:items:ids                         set     every catalogue item id
    P:items:version                     counter bumped on every catalogue change
    P:item:{<item>}                     hash    category, title, price, in_stock
    P:idn:{<token>}                     string  person id an identifier token names
    P:person:{<person>}:tokens          set     identifier tokens linked to the person
    P:person:{<person>}:aliases         set     person ids merged into this one
    P:identity:lock                     string  held while links / erasures rewrite people
    P:erased                            set     keyed hashes of erased ids (training skips)

Only on a Redis Cluster (see "Slots" below)::

    P:person:{<person>}:moved           string  the person this one was merged into (for a
                                                day: writes racing the merge go there)
    P:slot:{<tag>}:erased               set     erasure marks of the people of one slot
    P:slot:{<tag>}:seen                 zset    event id -> expiry, of one slot's people
    P:events:{P:events}:seen            zset    event id -> expiry, of the stream's entries
    P:events:{P:events}:erased          set     every erasure mark, beside the stream

Slots
-----
Braces are Redis Cluster hash tags: Redis hashes only what is between the first ``{`` and
the next ``}``, so every key of one person (live, published in any publication, tokens,
aliases) has the tag ``{<person>}`` and shares one slot: a request reads a person in one
round trip to one node, and a script or transaction may write them atomically. The
other per-request keys (identity token, erased set, trending, catalogue version) live in
slots of their own; a cluster pipeline sends each node its part, all at once.

A script may only touch keys of one slot, so what a write must check atomically with a
person's keys is kept in that person's slot, without naming the person: ``P:slot:{<tag>}``
keys, where :func:`slot_tag` gives a short tag hashing to the slot wanted (erasure marks
and dedupe guards of the people of that slot). The stream's own guards and marks are
tagged with the stream's key name, which puts them in the stream's slot. Every key starts
with the prefix, so one deployment's keys are still ``P:*``.
"""

from __future__ import annotations

import functools
import time
import uuid

import numpy as np
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# --- key schema (pure) ---------------------------------------------------------------


def current_key(prefix: str) -> str:
    return f"{prefix}:pub:current"


def publications_key(prefix: str) -> str:
    return f"{prefix}:pub:all"


def publication_prefix(prefix: str, pub: str) -> str:
    return f"{prefix}:pub:{pub}"


def meta_key(prefix: str, pub: str) -> str:
    return f"{publication_prefix(prefix, pub)}:meta"


def popular_key(prefix: str, pub: str) -> str:
    return f"{publication_prefix(prefix, pub)}:popular"


def cobuy_key(prefix: str, pub: str, item_id: str) -> str:
    return f"{publication_prefix(prefix, pub)}:cobuy:{{{item_id}}}"


def user_key(prefix: str, pub: str, user_id: str) -> str:
    return f"{publication_prefix(prefix, pub)}:user:{{{user_id}}}"


def live_key(prefix: str, user_id: str, part: str) -> str:
    """``part``: one of :data:`LIVE_PARTS`."""
    return f"{prefix}:live:user:{{{user_id}}}:{part}"


def trending_key(prefix: str, day: int) -> str:
    return f"{prefix}:live:trending:{day}"


def stream_key(prefix: str) -> str:
    return f"{prefix}:events"


def export_checkpoint_key(prefix: str) -> str:
    return f"{prefix}:events:exported"


def seen_key(prefix: str, event_id: str) -> str:
    return f"{prefix}:seen:{{{event_id}}}"


def catalogue_ids_key(prefix: str) -> str:
    return f"{prefix}:items:ids"


def catalogue_version_key(prefix: str) -> str:
    return f"{prefix}:items:version"


def item_key(prefix: str, item_id: str) -> str:
    return f"{prefix}:item:{{{item_id}}}"


def identity_key(prefix: str, token: str) -> str:
    return f"{prefix}:idn:{{{token}}}"


def person_key(prefix: str, person: str, part: str) -> str:
    """``part``: ``tokens`` or ``aliases``."""
    return f"{prefix}:person:{{{person}}}:{part}"


def moved_key(prefix: str, person: str) -> str:
    """Cluster only: who ``person`` was merged into, in ``person``'s slot."""
    return person_key(prefix, person, "moved")


def identity_lock_key(prefix: str) -> str:
    return f"{prefix}:identity:lock"


def erased_key(prefix: str) -> str:
    return f"{prefix}:erased"


def slot_of(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (its hash tag's when it has one)."""
    return int(key_slot(key.encode()))


def slot_key(prefix: str, slot: int, part: str) -> str:
    """Cluster only: a key in hash slot ``slot`` that names no one. ``part``: ``erased``
    (erasure marks of the slot's people) or ``seen`` (their recent event ids)."""
    return f"{prefix}:slot:{{{slot_tag(slot)}}}:{part}"


def stream_seen_key(prefix: str) -> str:
    """Cluster only: event ids the stream holds (expiry as score), in the stream's slot."""
    return f"{stream_key(prefix)}:{{{stream_key(prefix)}}}:seen"


def stream_erased_key(prefix: str) -> str:
    """Cluster only: every erasure mark, in the stream's slot (the stream refuses them)."""
    return f"{stream_key(prefix)}:{{{stream_key(prefix)}}}:erased"


def slot_tag(slot: int) -> str:
    """A hash tag whose slot is ``slot``: the first five-digit lower-case hex number
    (00000, 00001, …) that hashes to it. Part of the key schema: never change it."""
    return _slot_tags()[slot]


@functools.cache
def _slot_tags() -> list[str]:
    # CRC16 (XMODEM, as Redis Cluster hashes) of all 16^5 candidates at once: a Python
    # loop over them takes seconds, this a fifth of one, once per process.
    table = np.zeros(256, dtype=np.uint16)
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
        table[byte] = crc
    numbers = np.arange(16**5, dtype=np.int64)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8).astype(np.uint16)
    crc16 = np.zeros(len(numbers), dtype=np.uint16)
    for shift in (16, 12, 8, 4, 0):
        char = digits[(numbers >> shift) & 15]
        crc16 = (crc16 << 8) ^ table[((crc16 >> 8) ^ char) & 0xFF]
    slots = crc16 % REDIS_CLUSTER_HASH_SLOTS
    order = np.argsort(slots, kind="stable")  # stable: the lowest number first
    first = np.searchsorted(slots[order], np.arange(REDIS_CLUSTER_HASH_SLOTS))
    return [format(int(n), "05x") for n in order[first]]


LIVE_PARTS = (
    "history",
    "purchased",
    "purchased_at",
    "disliked",
    "disliked_at",
    "engagement",
    "contact",
)


def new_publication_id(now: float | None = None) -> str:
    """Sortable, unique: UTC time to the second plus a random suffix."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def linked_user_ids_pattern(prefix: str) -> str:
    """SCAN pattern of the identity keys of ``user_id`` tokens (training reads them)."""
    return f"{prefix}:idn:{{user_id:*"


def token_of_identity_key(key: str) -> str:
    """The token an :func:`identity_key` names (inverse of it)."""
    return key.split("{", 1)[1].rstrip("}")
