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

Braces are Redis Cluster hash tags: all of one person's keys share a slot.
Braces are Redis Cluster hash tags: all of one person's keys share a slot.
"""

from __future__ import annotations

import time
import uuid

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


def identity_lock_key(prefix: str) -> str:
    return f"{prefix}:identity:lock"


def erased_key(prefix: str) -> str:
    return f"{prefix}:erased"


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
