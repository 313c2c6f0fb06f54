"""Who may be messaged, on which channel, and when: opt-outs and the fatigue rules.

Opt-outs. An ``unsubscribe`` event (its ``channel`` one of the message channels) closes
that channel for the person until a later ``resubscribe`` on it. Each person's newest
time of each (kind, channel) is kept in a Redis zset (``P:live:user:{u}:contact``,
written with ``ZADD GT``), so an event that arrives late or twice never reopens a
channel it should not; on the same second, the unsubscribe wins. The zset is not trimmed
like the engagement list: an opt-out must outlive any number of later events.

Fatigue. ``OMNIREC_MIN_MESSAGE_GAP_HOURS``: the least time between two messages to one
person on one channel; ``OMNIREC_MAX_MESSAGES_PER_DAY``: the most messages to one person
over all channels in any 24 hours. Both count the ``message_delivered`` events the
orchestrator tracks (what was planned but never delivered does not count), and both push
the earliest send time later, never earlier.

Pure logic: the store reads the zset and the engagement list (``EngagementView``); the
servicers and the campaign planner ask the questions below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.events import CONTACT_EVENT_TYPES, MESSAGE_CHANNELS
from service.store.codecs import contact_member

UNSUBSCRIBE, RESUBSCRIBE = CONTACT_EVENT_TYPES
#: A person's own answers to a message (automated ones, from mail proxies, are not).
ANSWERS = ("message_open", "message_click")
DAY_SECONDS = 86_400


@dataclass(frozen=True)
class ContactPolicy:
    """The fatigue rules of a deployment (settings)."""

    min_gap_hours: float = 0.0
    """Least hours between two messages to one person on one channel (0: none)."""
    max_per_day: int = 0
    """Most messages to one person, all channels, in any 24 hours (0: no cap)."""

    @classmethod
    def of(cls, settings: Any) -> ContactPolicy:
        return cls(float(settings.min_message_gap_hours), int(settings.max_messages_per_day))


@dataclass(frozen=True)
class ContactState:
    """One person's opt-outs and recent deliveries."""

    opted_out: frozenset[str] = frozenset()
    """Channels the person unsubscribed from (and did not resubscribe to since)."""
    deliveries: tuple[tuple[str, int], ...] = ()
    """``(channel, epoch seconds)`` of the deliveries the live layer keeps, newest first."""
    unanswered: Mapping[str, int] = field(default_factory=dict)
    """Per channel: the newest deliveries on it after the person's newest own open or
    click there (what the learnt fatigue, ``Priors.fatigue``, weighs)."""

    @classmethod
    def of(cls, view: Any) -> ContactState:
        """From an ``EngagementView`` (its ``contact`` marks and ``live`` events)."""
        deliveries = []
        unanswered: dict[str, int] = {}
        answered: set[str] = set()
        for channel, kind, ts, _zone, automated in view.live:  # newest first
            if not channel:
                continue
            if kind == "message_delivered":
                deliveries.append((channel, int(ts)))
                if channel not in answered:
                    unanswered[channel] = unanswered.get(channel, 0) + 1
            elif kind in ANSWERS and not automated:
                answered.add(channel)
        return cls(opted_out_channels(view.contact), tuple(deliveries), unanswered)


def opted_out_channels(marks: Mapping[str, float]) -> frozenset[str]:
    """The channels whose newest ``unsubscribe`` is at or after their newest
    ``resubscribe`` (``marks``: :func:`contact_member` → epoch seconds)."""
    out = set()
    for channel in MESSAGE_CHANNELS:
        left = marks.get(contact_member(UNSUBSCRIBE, channel))
        back = marks.get(contact_member(RESUBSCRIBE, channel))
        if left is not None and (back is None or left >= back):
            out.add(channel)
    return frozenset(out)


def allowed(state: ContactState, channels: Iterable[str]) -> list[str]:
    """``channels`` the person has not opted out of, in the given order."""
    return [c for c in channels if c not in state.opted_out]


def earliest_send(
    state: ContactState, channel: str, policy: ContactPolicy, not_before: float
) -> float:
    """The first moment at or after ``not_before`` (epoch seconds) at which a message on
    ``channel`` keeps the gap after the last delivery on it and the daily cap."""
    at = float(not_before)
    if policy.min_gap_hours > 0:
        last = max((ts for c, ts in state.deliveries if c == channel), default=None)
        if last is not None:
            at = max(at, last + policy.min_gap_hours * 3600)
    if policy.max_per_day > 0:
        # Deliveries in (at - 1 day, at]; while the cap is reached, wait until enough of
        # the oldest of them leave the day. Later deliveries are not known, so moving
        # later never adds any.
        in_day = sorted(ts for _, ts in state.deliveries if at - DAY_SECONDS < ts <= at)
        excess = len(in_day) - policy.max_per_day
        if excess >= 0:
            at = in_day[excess] + DAY_SECONDS
    return at
