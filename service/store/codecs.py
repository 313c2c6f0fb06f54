"""How values are encoded in Redis: pure functions and the value types they produce.
The key each value lives under is :mod:`service.store.keys`' business."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HistoryEntry = tuple[str, str, int]
"""``(item_id, event_type, epoch_seconds)``."""


@dataclass
class UserFeatures:
    """What serving knows about one person."""

    history: list[HistoryEntry] = field(default_factory=list)
    """Newest first."""
    purchased: set[str] = field(default_factory=set)
    disliked: set[str] = field(default_factory=set)
    engagement: str | None = None
    """Send-time profile as published by training (JSON owned by ``send_time``)."""
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """What a model worked out from these features (its positives, a user vector), kept
    by that model while these features are the cached ones."""
    merged_alone: tuple[int, UserFeatures] | None = field(default=None, repr=False, compare=False)
    """(limit, these features merged with an empty live layer), kept by
    :func:`merge_features`."""


def encode_user(features: UserFeatures) -> dict[str, str]:
    encoded = {
        "history": to_json([list(h) for h in features.history]),
        "purchased": to_json(sorted(features.purchased)),
        "disliked": to_json(sorted(features.disliked)),
    }
    if features.engagement is not None:
        encoded["engagement"] = features.engagement
    return encoded


def decode_user(raw: Mapping[bytes | str, bytes | str]) -> UserFeatures:
    fields_ = {text(k): text(v) for k, v in raw.items()}
    history = [(str(i), str(t), int(ts)) for i, t, ts in json.loads(fields_.get("history", "[]"))]
    return UserFeatures(
        history=history,
        purchased=set(json.loads(fields_.get("purchased", "[]"))),
        disliked=set(json.loads(fields_.get("disliked", "[]"))),
        engagement=fields_.get("engagement"),
    )


def encode_entry(entry: HistoryEntry) -> str:
    """``[item, type, ts]`` as JSON, byte for byte what :func:`to_json` writes (merges
    compare entries as text), formatted directly: TrackEvents encodes one per event."""
    item, kind, ts = entry
    return f"[{_string(item)},{_string(kind)},{int(ts)}]"


def decode_entries(raws: Sequence[bytes | str]) -> list[HistoryEntry]:
    """The entries :func:`encode_entry` wrote (a person's history list), in one parse."""
    return [(str(item), str(kind), int(ts)) for item, kind, ts in _each_json(raws)]


def _each_json(raws: Sequence[bytes | str]) -> list[Any]:
    """``json.loads`` of each of ``raws``, parsed as one JSON array of them all: reading a
    page of people decodes thousands of short entries, and one parse per list costs a
    quarter of one per entry. Should an entry not be JSON on its own (a corrupt value),
    each is parsed alone, so that the error is that entry's."""
    if not raws:
        return []
    parts = [raw if isinstance(raw, bytes) else raw.encode() for raw in raws]
    try:
        values = json.loads(b"[" + b",".join(parts) + b"]")
    except ValueError:
        values = None
    if values is None or len(values) != len(raws):
        return [json.loads(raw) for raw in raws]
    return values


def merge_features(live: UserFeatures, published: UserFeatures, limit: int) -> UserFeatures:
    """Both layers as one: history newest first without duplicates, at most ``limit``.

    Most requests find nothing live and the same cached published features each time:
    that merge is kept on the published object (which never changes), so it is done once.
    The result is shared: callers read it and never change it."""
    if not (live.history or live.purchased or live.disliked):
        alone = published.merged_alone
        if alone is None or alone[0] != limit:
            alone = published.merged_alone = (limit, _merged(live, published, limit))
        return alone[1]
    return _merged(live, published, limit)


def _merged(live: UserFeatures, published: UserFeatures, limit: int) -> UserFeatures:
    seen: set[HistoryEntry] = set()
    history: list[HistoryEntry] = []
    for entry in sorted(live.history + published.history, key=lambda h: -h[2]):
        if entry not in seen:
            seen.add(entry)
            history.append(entry)
    return UserFeatures(
        history=history[:limit],
        purchased=live.purchased | published.purchased,
        disliked=live.disliked | published.disliked,
    )


def encode_item(meta: Mapping[str, Any]) -> dict[str, str]:
    """Catalogue fields as hash values (booleans as "1"/"0")."""
    out: dict[str, str] = {}
    for key, value in meta.items():
        if value is None:
            continue
        out[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return out


def decode_item(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        key, value = text(k), text(v)
        if key == "price":
            meta[key] = float(value)
        elif key == "in_stock":
            meta[key] = value == "1"
        else:
            meta[key] = value
    return meta


EngagementEvent = tuple[str, str, int, str, bool]
"""``(channel, event_type, epoch_seconds, timezone, automated)``."""


def encode_engagement(event: EngagementEvent) -> str:
    """As :func:`encode_entry`, for ``[channel, type, ts, zone, automated]``."""
    channel, kind, ts, zone, automated = event
    flag = "true" if automated else "false"
    return f"[{_string(channel)},{_string(kind)},{int(ts)},{_string(zone)},{flag}]"


def decode_engagements(raws: Sequence[bytes | str]) -> list[EngagementEvent]:
    """The events :func:`encode_engagement` wrote (a person's list), in one parse."""
    return [
        (str(channel), str(kind), int(ts), str(zone), bool(automated))
        for channel, kind, ts, zone, automated in _each_json(raws)
    ]


def is_empty(features: UserFeatures) -> bool:
    return not (features.history or features.purchased or features.disliked or features.engagement)


@dataclass
class TrackedEvent:
    """One validated live event (``timestamp`` already resolved to epoch seconds)."""

    user_id: str
    item_id: str
    event_type: str
    timestamp: int
    channel: str = ""
    timezone: str = ""
    value: float = 0.0
    automated: bool = False
    event_id: str = ""
    """The caller's idempotency key; empty when it gave none (then never deduplicated)."""
    token: str = ""
    """The identifier token the event named (``user_id`` holds its resolved person); empty
    when the person was given directly."""
    recommendation_id: str = ""
    """The Recommend answer the event came from, when the client says so."""


#: A string as JSON (``json``'s own C escaper, as :func:`to_json` uses).
_string = json.encoder.encode_basestring_ascii
#: One encoder for every value: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def to_json(value: Any) -> str:
    return _ENCODER.encode(value)


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def contact_member(kind: str, channel: str) -> str:
    """The member an ``unsubscribe`` / ``resubscribe`` event sets in a person's contact
    zset (score: the event's time; ``service/contact.py`` reads them)."""
    return f"{kind}:{channel}"
