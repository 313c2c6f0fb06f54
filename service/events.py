"""The event contract: the vocabulary every event source (files, live TrackEvents) shares.

The names here are part of the public contract (see DESIGN.md, "Events"): clients send
them as lower-case strings, and an unknown value is bad input, never a silent default.
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from service.errors import BadInput, quote

#: Events about an item: they need an ``item_id``.
ITEM_EVENT_TYPES: tuple[str, ...] = (
    "view",
    "click",
    "favourite",
    "add_to_cart",
    "purchase",
    "dislike",
)
#: Events about a message or a visit: ``item_id`` is empty.
ENGAGEMENT_EVENT_TYPES: tuple[str, ...] = (
    "message_delivered",
    "message_open",
    "message_click",
    "session_start",
)
#: A person closes (``unsubscribe``) or reopens (``resubscribe``) one message channel:
#: ``channel`` is required and one of :data:`MESSAGE_CHANNELS`; ``item_id`` is empty.
#: ``service/contact.py`` says what they change.
CONTACT_EVENT_TYPES: tuple[str, ...] = ("unsubscribe", "resubscribe")
#: What clients send (TrackEvents, event files).
CLIENT_EVENT_TYPES: tuple[str, ...] = (
    ITEM_EVENT_TYPES + ENGAGEMENT_EVENT_TYPES + CONTACT_EVENT_TYPES
)
#: Written by the server only: ``exposure``, a Recommend answer given under an A/B
#: experiment (its ``recommendation_id`` names the experiment and arm). Exports carry
#: them, so ``python -m training experiment-report`` counts what each arm was shown;
#: TrackEvents refuses them (a client could otherwise invent exposures).
SERVER_EVENT_TYPES: tuple[str, ...] = ("exposure",)
EXPOSURE = SERVER_EVENT_TYPES[0]
#: Every type an event file may hold.
EVENT_TYPES: tuple[str, ...] = CLIENT_EVENT_TYPES + SERVER_EVENT_TYPES

CHANNELS: tuple[str, ...] = (
    "web",
    "app",
    "email",
    "sms",
    "push",
    "messenger",
    "store",
    "call_center",
)
#: Channels a message can be sent on (what the orchestrator chooses between).
MESSAGE_CHANNELS: tuple[str, ...] = ("email", "sms", "push", "messenger")

#: Column order of the event files (CSV header / Parquet schema).
COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "event_type",
    "timestamp",
    "channel",
    "timezone",
    "value",
    "automated",
)
#: Optional columns beyond the contract's: files and the live stream may carry them;
#: frames and exports have them only when some event does.
EXTRA_COLUMNS: tuple[str, ...] = ("recommendation_id",)
REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "event_type", "timestamp")
#: ``automated`` (optional, boolean): the open or click came from a mail privacy proxy or a
#: link scanner, not the person. Such events say nothing about when the person reads, so
#: engagement models ignore them. In text files these spellings are accepted (any case);
#: an empty field is false.
AUTOMATED_TRUE: tuple[str, ...] = ("true", "1", "yes", "t")
#: ``recommendation_id`` (optional): the Recommend answer the event came from (the
#: person clicked it, then carted or bought), for A/B attribution; empty when none.
MAX_RECOMMENDATION_ID_LENGTH = 128
AUTOMATED_FALSE: tuple[str, ...] = ("false", "0", "no", "f", "")

#: Longest id accepted; longer ones are almost always a column mix-up.
MAX_ID_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def id_problem(value: str) -> str | None:
    """What is wrong with ``value`` as an id (a person's, an item's, an identifier's), or
    None: ids are required, not blank, at most :data:`MAX_ID_LENGTH` characters, and free
    of control characters (they end up in keys, logs and exports)."""
    if not value:
        return "is required"
    if not value.strip():
        return "must not be blank"
    if len(value) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    if _CONTROL.search(value):
        return "must not contain control characters"
    return None


class InvalidEvent(BadInput):
    """One event breaks the contract; ``field`` names the offending field."""


def is_valid_timezone(name: str) -> bool:
    """True when ``name`` is an IANA zone this machine knows (e.g. ``Europe/Berlin``)."""
    return name in _known_zones() or _loads_zone(name)


def validate_event(
    user_id: str,
    item_id: str,
    event_type: str,
    channel: str = "",
    timezone: str = "",
) -> None:
    """Check one event's fields against the contract.

    Raises
    ------
    InvalidEvent
        naming the first field that is wrong and why.
    """
    problem = id_problem(user_id)
    if problem is not None:
        raise InvalidEvent("user_id", problem)
    if event_type not in CLIENT_EVENT_TYPES:
        raise InvalidEvent(
            "event_type", f"{quote(event_type)} is not one of {', '.join(CLIENT_EVENT_TYPES)}"
        )
    if event_type in ITEM_EVENT_TYPES and not item_id:
        raise InvalidEvent("item_id", f"is required for a {event_type!r} event")
    if item_id and (problem := id_problem(item_id)) is not None:
        raise InvalidEvent("item_id", problem)
    if channel and channel not in CHANNELS:
        raise InvalidEvent("channel", f"{quote(channel)} is not one of {', '.join(CHANNELS)}")
    if event_type in CONTACT_EVENT_TYPES and channel not in MESSAGE_CHANNELS:
        raise InvalidEvent(
            "channel",
            f"a {event_type!r} event needs one of {', '.join(MESSAGE_CHANNELS)}, "
            f"got {quote(channel)}",
        )
    if event_type in CONTACT_EVENT_TYPES and item_id:
        raise InvalidEvent("item_id", f"must be empty for a {event_type!r} event")
    if timezone and not is_valid_timezone(timezone):
        raise InvalidEvent("timezone", f"{quote(timezone)} is not a known IANA time zone")


_ZONES: frozenset[str] | None = None


def _known_zones() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    return _ZONES


def _loads_zone(name: str) -> bool:
    # available_timezones() can miss zones that tzdata still loads (links such as "UTC").
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a folder name ("America") or a path too long for the file system.
        return False
    return True
