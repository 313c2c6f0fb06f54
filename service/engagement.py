"""Send time and channel: what the Engagement service and the campaign planner share.

A person's engagement profile as the model reads it (published profile + live events
since, ``send_time`` being the pure model), the model's priors from a bundle, and the
rules of a send window: how long, how far ahead, which quiet hours, and how the fatigue
rules (``service/contact.py``) move its start. The gRPC servicer is
``service/api/engagement.py``; ``service/campaigns.py`` plans audiences with the same
rules.
"""

from __future__ import annotations

import math

from service.config import Settings
from service.errors import BadInput
from service.send_time import EngagementProfile, Priors, served_profile
from service.store.reads import EngagementView

MAX_WINDOW_HOURS = 168
#: Furthest ahead of now a ``not_before`` may lie: habits a year out are guesswork, and
#: the bound keeps every window (and its local times) inside the calendar.
MAX_DAYS_AHEAD = 366
DEFAULT_WINDOW_HOURS = 24
DEFAULT_QUIET = (22, 8)


def priors_of(metadata: dict) -> Priors:
    raw = metadata.get("engagement_priors")
    return Priors.from_dict(raw) if raw else Priors.flat()


def profile_of(view: EngagementView, settings: Settings, priors: Priors) -> EngagementProfile:
    """The profile a person's engagement evidence gives, with the recency half-lives the
    model learnt (else the configured one)."""
    messages, activity = priors.tuning.recency(settings.engagement_half_life_days)
    return served_profile(
        view.published,
        view.published_until,
        view.live,
        messages,
        settings.default_timezone,
        activity,
    )


def check_window(window_hours: int) -> int:
    """A request's ``window_hours`` (0: the default); :class:`BadInput` when out of range."""
    window = window_hours or DEFAULT_WINDOW_HOURS
    if not 1 <= window <= MAX_WINDOW_HOURS:
        raise BadInput(
            "window_hours",
            f"must be between 1 and {MAX_WINDOW_HOURS} (0 means {DEFAULT_WINDOW_HOURS}); "
            f"got {window_hours}",
        )
    return window


def check_quiet_hours(start: int | None, end: int | None, ignore: bool) -> tuple[int, int] | None:
    """A request's quiet hours (unset: :data:`DEFAULT_QUIET`), None when ignored;
    :class:`BadInput` naming the field for an hour outside 0-23."""
    hours = []
    for name, value, default in (
        ("quiet_start_hour", start, DEFAULT_QUIET[0]),
        ("quiet_end_hour", end, DEFAULT_QUIET[1]),
    ):
        if value is not None and not 0 <= value <= 23:
            raise BadInput(name, f"must be an hour 0-23, got {value}")
        hours.append(default if value is None else int(value))
    return None if ignore else (hours[0], hours[1])


def check_ahead(not_before: float, now: float) -> None:
    """:class:`BadInput` when ``not_before`` (epoch seconds) lies too far ahead."""
    if not_before - now > MAX_DAYS_AHEAD * 86_400:
        raise BadInput("not_before", f"is more than {MAX_DAYS_AHEAD} days ahead")


def open_window(start: float, window_hours: int, allowed_from: float) -> tuple[float, int]:
    """The window left once the fatigue rules allow sending from ``allowed_from``: its
    start moves later, never its end, and only whole hours of it count. Returns (start,
    hours); hours < 1 means nothing is left."""
    if allowed_from <= start:
        return start, window_hours
    end = start + window_hours * 3600
    return allowed_from, math.floor((end - allowed_from) / 3600)
