"""The send-time and channel model (service/send_time.py): pure functions, no servers."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from service.events import MESSAGE_CHANNELS
from service.send_time import (
    DAYS,
    HOURS,
    LEARNT_MIX,
    OWN_HOURS,
    SOURCES,
    WEEK_HOURS,
    ChannelCounts,
    EngagementProfile,
    Evidence,
    Priors,
    SendQuestion,
    Tuning,
    awake_factor,
    channel_rankings,
    channel_source,
    choose_slots,
    evidence_of,
    hour_probabilities,
    is_quiet,
    moved_to_zone,
    plan_send,
    plan_sends,
    prior_curve,
    profile_from_events,
    rank_channels,
    served_profile,
    smooth,
    week_probabilities,
    week_tables,
)

DAY = 86_400
HOUR = 3_600
NOW = 1_790_000_000  # 2026-09-21T13:33:20Z
BERLIN = "Europe/Berlin"


def flat_priors(rate: float = 0.1, **changes: object) -> Priors:
    """Flat rates and uniform activity: the prior contributes no shape of its own."""
    priors = Priors.flat(rate)
    for name, value in changes.items():
        setattr(priors, name, value)
    return priors


def at_hour(hour: int, count: float) -> np.ndarray:
    values = np.zeros(HOURS)
    values[hour] = count
    return values


def profile(
    channel: str = "email",
    deliveries: np.ndarray | None = None,
    opens: np.ndarray | None = None,
    activity: np.ndarray | None = None,
    timezone: str | None = BERLIN,
) -> EngagementProfile:
    counts = ChannelCounts(
        deliveries=np.zeros(HOURS) if deliveries is None else deliveries,
        opens=np.zeros(HOURS) if opens is None else opens,
    )
    return EngagementProfile(
        timezone=timezone,
        channels={channel: counts},
        activity=np.zeros(HOURS) if activity is None else activity,
    )


def ts_at(local: str, zone: str = BERLIN) -> int:
    """Epoch seconds of a local wall-clock time."""
    return int(datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone)).timestamp())


# --- shrinkage -------------------------------------------------------------------------


def test_no_data_gives_the_prior_curve() -> None:
    curve = [0.05 + 0.01 * h for h in range(HOURS)]
    priors = flat_priors(channel_hour_rate={c: curve for c in MESSAGE_CHANNELS})
    p, source, evidence = hour_probabilities(EngagementProfile(), "email", priors, None)
    np.testing.assert_allclose(p, curve)
    assert (source, evidence) == ("global_prior", 0)
    assert p.dtype == np.float64 and p.shape == (HOURS,)


def test_lots_of_data_gives_the_data() -> None:
    # A smooth daily curve (smoothing flattens sharper ones a little), 0.15 to 0.35.
    rate = 0.25 + 0.1 * np.cos(2 * np.pi * (np.arange(HOURS) - 18) / HOURS)
    deliveries = np.full(HOURS, 50_000.0)
    p, source, evidence = hour_probabilities(
        profile(deliveries=deliveries, opens=deliveries * rate), "email", flat_priors(), BERLIN
    )
    np.testing.assert_allclose(p, rate, atol=0.01)
    assert source == "user"
    assert evidence == 24 * 50_000


def test_little_data_moves_the_estimate_a_little() -> None:
    priors = flat_priors(0.1)
    few = profile(deliveries=at_hour(9, 2.0), opens=at_hour(9, 2.0))
    many = profile(deliveries=at_hour(9, 200.0), opens=at_hour(9, 200.0))
    p_few = hour_probabilities(few, "email", priors, None)[0]
    p_many = hour_probabilities(many, "email", priors, None)[0]
    assert 0.1 < p_few[9] < 0.5 < p_many[9] <= 1.0
    assert p_few[9] < p_many[9]


def test_a_keen_reader_lifts_the_whole_curve() -> None:
    priors = flat_priors(0.1)
    keen = profile(deliveries=at_hour(9, 40.0), opens=at_hour(9, 20.0))
    p = hour_probabilities(keen, "email", priors, None)[0]
    # Hours never sent at still expect more than the global 10 % from this person.
    assert p[21] > 0.2


def test_counts_are_smoothed_over_neighbouring_hours() -> None:
    priors = flat_priors(0.1)
    p = hour_probabilities(
        profile(deliveries=at_hour(0, 100.0), opens=at_hour(0, 60.0)), "email", priors, None
    )[0]
    assert p[0] > p[1] > p[2] > p[6]
    assert p[1] == pytest.approx(p[23])  # circular: midnight's neighbour is 23:00
    assert p[2] == pytest.approx(p[22])

    counts = np.arange(HOURS, dtype=float)
    assert smooth(counts).sum() == pytest.approx(counts.sum())
    assert smooth(at_hour(0, 1.0))[23] == pytest.approx(smooth(at_hour(0, 1.0))[1])


def test_segment_priors_are_used_when_present() -> None:
    evening = [0.02] * 18 + [0.3] * 6
    priors = flat_priors(segment_hour_rate={"Asia/Tokyo": {"sms": evening}})
    p, source, _ = hour_probabilities(EngagementProfile(), "sms", priors, "Asia/Tokyo")
    np.testing.assert_allclose(p, evening)
    assert source == "segment_prior"
    p, source, _ = hour_probabilities(EngagementProfile(), "email", priors, "Asia/Tokyo")
    assert source == "global_prior"
    np.testing.assert_allclose(p, 0.1)


def test_source_and_evidence() -> None:
    priors = flat_priors()
    assert SOURCES == ("user", "segment_prior", "global_prior")
    by_activity = profile(activity=at_hour(20, 12.4))
    assert hour_probabilities(by_activity, "email", priors, None)[1:] == ("user", 12)
    thin = profile(deliveries=at_hour(9, 4.0), activity=at_hour(20, 3.0))
    assert hour_probabilities(thin, "email", priors, None)[1:] == ("global_prior", 7)
    by_deliveries = profile(deliveries=at_hour(9, 5.0))
    assert hour_probabilities(by_deliveries, "email", priors, None)[1] == "user"
    # Evidence is per channel: email deliveries say nothing about push.
    assert hour_probabilities(by_deliveries, "push", priors, None)[1:] == ("global_prior", 0)


def test_unknown_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="channel 'fax'"):
        hour_probabilities(EngagementProfile(), "fax", flat_priors(), None)


# --- activity --------------------------------------------------------------------------


def test_activity_points_at_the_hours_the_person_is_around() -> None:
    priors = flat_priors()
    person = profile(activity=at_hour(20, 30.0) + at_hour(21, 10.0))
    p, source, _ = hour_probabilities(person, "email", priors, BERLIN)
    assert int(np.argmax(p)) in (20, 21)
    assert p[20] > 2 * p[8]
    assert source == "user"

    factor = awake_factor(person.activity, priors, BERLIN)
    assert factor.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(awake_factor(np.zeros(HOURS), priors, None), 1.0)


def test_activity_shrinks_to_the_activity_prior() -> None:
    daytime = np.where((np.arange(HOURS) >= 8) & (np.arange(HOURS) < 20), 1.0, 0.2)
    priors = flat_priors(activity=list(daytime / daytime.sum()))
    factor = awake_factor(np.zeros(HOURS), priors, None)
    assert factor[12] > 1 > factor[3]
    # One event at 3 am barely moves a person towards the night.
    once = awake_factor(at_hour(3, 1.0), priors, None)
    assert once[12] > once[3]


def test_strong_delivery_evidence_beats_activity() -> None:
    deliveries = np.full(HOURS, 100.0)
    opens = np.full(HOURS, 5.0)
    opens[9] = 60.0
    person = profile(deliveries=deliveries, opens=opens, activity=at_hour(20, 200.0))
    p = hour_probabilities(person, "email", flat_priors(), BERLIN)[0]
    assert int(np.argmax(p)) == 9


def test_activity_decides_where_deliveries_are_few() -> None:
    # Sent only at 9 and 13, where the person rarely opens; they are around at 19.
    deliveries = at_hour(9, 30.0) + at_hour(13, 30.0)
    opens = at_hour(9, 1.0) + at_hour(13, 1.0)
    person = profile(deliveries=deliveries, opens=opens, activity=at_hour(19, 80.0))
    p = hour_probabilities(person, "email", flat_priors(), BERLIN)[0]
    assert abs(int(np.argmax(p)) - 19) <= 1


# --- profiles from events --------------------------------------------------------------


def test_an_open_counts_at_the_hour_of_the_delivery_it_answers() -> None:
    sent = ts_at("2026-09-01T09:50")
    events = [
        ("email", "message_delivered", sent, BERLIN, False),
        ("email", "message_open", sent + 90 * 60, BERLIN, False),  # 11:20 local
        ("email", "message_click", sent + 95 * 60, BERLIN, False),
    ]
    person = profile_from_events(events, 30.0)
    email = person.channels["email"]
    assert np.flatnonzero(email.deliveries).tolist() == [9]
    assert np.flatnonzero(email.opens).tolist() == [9]
    assert np.flatnonzero(email.clicks).tolist() == [9]
    assert person.timezone == BERLIN


def test_opens_without_a_recent_delivery_count_at_their_own_hour() -> None:
    sent = ts_at("2026-09-01T09:00")
    events = [
        ("email", "message_delivered", sent, BERLIN, False),
        ("email", "message_open", sent + 49 * HOUR, BERLIN, False),  # 10:00, too late
        ("sms", "message_open", sent + HOUR, BERLIN, False),  # no sms delivery
    ]
    person = profile_from_events(events, 30.0)
    assert np.flatnonzero(person.channels["email"].opens).tolist() == [10]
    assert np.flatnonzero(person.channels["sms"].opens).tolist() == [10]
    assert not person.channels["sms"].deliveries.any()


def test_an_open_answers_the_latest_earlier_delivery() -> None:
    first, second = ts_at("2026-09-01T08:00"), ts_at("2026-09-01T18:00")
    events = [
        ("push", "message_open", second + 600, BERLIN, False),
        ("push", "message_delivered", second, BERLIN, False),
        ("push", "message_delivered", first, BERLIN, False),
        ("push", "message_open", first + 7 * HOUR, BERLIN, False),  # 15:00, before 18:00
    ]
    person = profile_from_events(events, 30.0)
    assert np.flatnonzero(person.channels["push"].opens).tolist() == [8, 18]


def test_automated_opens_and_clicks_are_ignored() -> None:
    sent = ts_at("2026-09-01T09:00")
    events = [
        ("email", "message_delivered", sent, BERLIN, False),
        ("email", "message_open", sent + 10, BERLIN, True),
        ("email", "message_click", sent + 20, BERLIN, True),
        ("web", "view", sent + 30, BERLIN, True),
    ]
    person = profile_from_events(events, 30.0)
    email = person.channels["email"]
    assert email.deliveries.sum() > 0
    assert not email.opens.any() and not email.clicks.any()
    assert not person.activity.any()

    human = [(c, t, ts, z, False) for c, t, ts, z, _ in events]
    counted = profile_from_events(human, 30.0)
    assert counted.channels["email"].opens.sum() > 0
    assert counted.activity.sum() > 0


def test_recency_weights_and_activity_events() -> None:
    events = [
        ("web", "session_start", NOW, "UTC", False),
        ("app", "view", NOW - 30 * DAY, "UTC", False),
        ("", "purchase", NOW - 60 * DAY, "UTC", False),
        ("web", "dislike", NOW, "UTC", False),  # not activity
        ("email", "message_open", NOW, "UTC", False),  # a message, not activity
    ]
    person = profile_from_events(events, 30.0)
    assert person.activity.sum() == pytest.approx(1 + 0.5 + 0.25)
    assert set(person.channels) == {"email"}


def test_zones_fall_back_to_the_latest_known_then_the_default() -> None:
    morning = ts_at("2026-07-01T08:30", "UTC")
    events = [
        ("web", "session_start", morning, "", False),
        ("web", "session_start", morning - DAY, "America/New_York", False),
        ("web", "session_start", morning - 2 * DAY, "Asia/Tokyo", False),
    ]
    person = profile_from_events(events, 30.0)
    assert person.timezone == "America/New_York"
    # New York is UTC-4 in July: the zone-less 08:30Z is 04:30 local; Tokyo's is 17:30.
    assert np.flatnonzero(person.activity).tolist() == [4, 17]

    nobody = profile_from_events([("web", "view", morning, "", False)], 30.0, "Asia/Tokyo")
    assert nobody.timezone is None
    assert np.flatnonzero(nobody.activity).tolist() == [17]


def test_local_hours_follow_dst() -> None:
    summer, winter = ts_at("2026-07-01T09:15"), ts_at("2026-12-01T09:15")
    events = [("web", "view", summer, BERLIN, False), ("web", "view", winter, BERLIN, False)]
    person = profile_from_events(events, 30.0)
    assert np.flatnonzero(person.activity).tolist() == [9]


def test_profile_json_round_trip_and_merge() -> None:
    sent = ts_at("2026-09-01T09:00")
    events = [
        ("email", "message_delivered", sent, BERLIN, False),
        ("email", "message_open", sent + 60, BERLIN, False),
        ("push", "message_delivered", sent - DAY, BERLIN, False),
        ("web", "session_start", sent - 5 * DAY, BERLIN, False),
    ]
    person = profile_from_events(events, 30.0)
    text = person.to_json()
    assert " " not in text and len(text) < 500
    back = EngagementProfile.from_json(text)
    assert back.timezone == BERLIN and set(back.channels) == {"email", "push"}
    # Plain counts (how much evidence, whatever its age) and the weights' moment survive.
    assert (back.channels["email"].sent, back.channels["email"].answered) == (1.0, 1.0)
    assert (back.channels["push"].sent, back.channels["push"].answered) == (1.0, 0.0)
    # The open is activity too (the person was around then): two distinct active hours.
    assert back.active_hours == 2.0 and back.as_of == sent + 60
    np.testing.assert_allclose(
        back.channels["email"].opens, person.channels["email"].opens, rtol=1e-5
    )
    np.testing.assert_allclose(back.activity, person.activity, rtol=1e-5)
    assert EngagementProfile.from_json(EngagementProfile().to_json()) == EngagementProfile()
    with pytest.raises(ValueError):
        EngagementProfile.from_json("[1, 2]")

    other = EngagementProfile(
        timezone="Asia/Tokyo",
        channels={"sms": ChannelCounts(deliveries=at_hour(3, 1.0))},
        activity=at_hour(3, 2.0),
    )
    both = person.merged(other)
    assert both.timezone == BERLIN
    assert set(both.channels) == {"email", "push", "sms"}
    np.testing.assert_allclose(both.activity, person.activity + other.activity)
    assert EngagementProfile().merged(other).timezone == "Asia/Tokyo"
    np.testing.assert_allclose(person.scaled(0.5).activity, person.activity / 2)


def test_priors_round_trip_through_json() -> None:
    priors = flat_priors(
        segment_hour_rate={"Asia/Tokyo": {"sms": [0.2] * HOURS}},
        segment_activity={"Asia/Tokyo": [1 / HOURS] * HOURS},
        tuning=Tuning(strength=5.0, activity_strength=3.0, channel_strength={"sms": 40.0}),
    )
    again = Priors.from_dict(json.loads(json.dumps(priors.to_dict())))
    assert again == priors
    with pytest.raises(ValueError, match="24 values"):
        Priors.from_dict({**priors.to_dict(), "activity": [0.5, 0.5]})


# --- channels --------------------------------------------------------------------------


def test_rank_channels_puts_the_best_read_channel_first() -> None:
    priors = flat_priors(0.1)
    person = EngagementProfile(
        channels={
            "email": ChannelCounts(deliveries=at_hour(9, 40.0), opens=at_hour(9, 2.0)),
            "push": ChannelCounts(deliveries=at_hour(9, 20.0), opens=at_hour(9, 10.0)),
            "sms": ChannelCounts(deliveries=at_hour(9, 2.0), opens=at_hour(9, 1.0)),
        }
    )
    ranked = rank_channels(person, priors)
    assert [c for c, _, _ in ranked] == ["push", "sms", "messenger", "email"]
    scores = [s for _, s, _ in ranked]
    assert scores == sorted(scores, reverse=True)
    assert dict((c, e) for c, _, e in ranked) == {"push": 20, "sms": 2, "messenger": 0, "email": 40}
    # No data: the priors' rates, ties in MESSAGE_CHANNELS order.
    rates = {"email": 0.05, "sms": 0.2, "push": 0.2, "messenger": 0.1}
    cold = rank_channels(EngagementProfile(), flat_priors(channel_rate=rates))
    assert [(c, s) for c, s, _ in cold] == [
        ("sms", 0.2),
        ("push", 0.2),
        ("messenger", 0.1),
        ("email", 0.05),
    ]


# --- hour of the week -------------------------------------------------------------------


def saturday_reader(weeks: int = 8) -> EngagementProfile:
    """Email at 10:00 Berlin every day for ``weeks`` weeks, opened only on Saturdays."""
    first = datetime(2026, 9, 21) - timedelta(weeks=weeks)  # a Monday
    events = []
    for k in range(weeks * DAYS):
        day = first + timedelta(days=k)
        sent = ts_at(f"{day:%Y-%m-%d}T10:00")
        events.append(("email", "message_delivered", sent, BERLIN, False))
        if day.weekday() == 5:
            events.append(("email", "message_open", sent + 300, BERLIN, False))
    return profile_from_events(events, 30.0)


def test_weekly_counts_sum_to_the_hourly_ones() -> None:
    person = saturday_reader()
    email = person.channels["email"]
    assert email.weekly_deliveries.shape == (WEEK_HOURS,)
    np.testing.assert_allclose(
        email.weekly_deliveries.reshape(DAYS, HOURS).sum(0), email.deliveries
    )
    np.testing.assert_allclose(email.weekly_opens.reshape(DAYS, HOURS).sum(0), email.opens)
    assert np.flatnonzero(email.weekly_deliveries).tolist() == [d * HOURS + 10 for d in range(7)]
    assert np.flatnonzero(email.weekly_opens).tolist() == [5 * HOURS + 10]


def test_without_weekly_data_every_weekday_is_the_day_level_answer() -> None:
    priors = flat_priors(channel_hour_rate={c: ramp(15).tolist() for c in MESSAGE_CHANNELS})
    for person in (
        EngagementProfile(),
        profile(deliveries=at_hour(9, 30.0), opens=at_hour(9, 12.0), activity=at_hour(20, 9.0)),
    ):
        day, _, _ = hour_probabilities(person, "email", priors, BERLIN)
        week = week_probabilities(person, "email", priors, BERLIN)
        assert week.dtype == np.float64 and week.shape == (DAYS, HOURS)
        np.testing.assert_allclose(week, np.tile(day, (DAYS, 1)))
    with pytest.raises(ValueError, match="channel 'fax'"):
        week_probabilities(EngagementProfile(), "fax", priors, None)


def test_a_saturday_reader_gets_saturday() -> None:
    person, priors = saturday_reader(), flat_priors()
    day, _, _ = hour_probabilities(person, "email", priors, BERLIN)
    week = week_probabilities(person, "email", priors, BERLIN)
    saturday, tuesday = week[5, 10], week[1, 10]
    assert saturday > day[10] > tuesday
    assert saturday > 2 * tuesday
    # The week is two day types: every weekday alike, Saturday and Sunday alike.
    np.testing.assert_allclose(week[:5], np.tile(week[0], (5, 1)))
    np.testing.assert_allclose(week[6], week[5])

    start = datetime(2026, 9, 21, 0, 0, tzinfo=UTC)  # Monday 02:00 in Berlin
    best = choose_slots(week, BERLIN, start, 7 * 24, None)[0]
    local = best.send_at.astimezone(ZoneInfo(BERLIN))
    assert (local.weekday(), local.hour, best.local_hour) == (5, 10, 10)
    assert best.probability == pytest.approx(saturday)
    # The day-level answer cannot tell the days apart: the earliest 10:00 wins.
    first = choose_slots(day, BERLIN, start, 7 * 24, None)[0]
    assert first.send_at.astimezone(ZoneInfo(BERLIN)).weekday() == 0


def test_weekly_counts_round_trip_through_json_and_old_json_loads() -> None:
    person = saturday_reader()
    text = person.to_json()
    payload = json.loads(text)
    assert list(payload["ch"]["email"]["wo"]) == [str(5 * HOURS + 10)]
    back = EngagementProfile.from_json(text)
    for part in ("weekly_deliveries", "weekly_opens", "weekly_clicks"):
        np.testing.assert_allclose(
            getattr(back.channels["email"], part),
            getattr(person.channels["email"], part),
            rtol=1e-5,
        )
    # Profiles written before the week was kept load with weekly zeros.
    for key in ("wd", "wo", "wc"):
        payload["ch"]["email"].pop(key, None)
    old = EngagementProfile.from_json(json.dumps(payload))
    assert not old.channels["email"].weekly_deliveries.any()
    assert not old.channels["email"].weekly_opens.any()
    np.testing.assert_allclose(
        old.channels["email"].opens, person.channels["email"].opens, rtol=1e-5
    )
    # A dense list is read too; a bad index is refused.
    dense = {"v": 1, "ch": {"email": {"wd": [1.0] * WEEK_HOURS}}}
    loaded = EngagementProfile.from_json(json.dumps(dense))
    assert loaded.channels["email"].weekly_deliveries.sum() == WEEK_HOURS
    with pytest.raises(ValueError, match="bad entry"):
        EngagementProfile.from_json('{"ch": {"email": {"wo": {"168": 1}}}}')

    both = person.merged(old)
    np.testing.assert_allclose(
        both.channels["email"].weekly_opens, person.channels["email"].weekly_opens
    )
    np.testing.assert_allclose(
        both.channels["email"].opens, 2 * person.channels["email"].opens, rtol=1e-5
    )
    half = person.scaled(0.5).channels["email"]
    np.testing.assert_allclose(
        half.weekly_deliveries, person.channels["email"].weekly_deliveries / 2
    )


# --- slots -----------------------------------------------------------------------------


def ramp(best: int) -> np.ndarray:
    """Probabilities falling with circular distance from ``best``."""
    distance = np.abs((np.arange(HOURS) - best + 12) % HOURS - 12)
    return 0.5 - 0.02 * distance


def test_slots_stay_in_the_window_and_rank_by_probability() -> None:
    start = datetime(2026, 6, 1, 4, 0, tzinfo=UTC)  # 06:00 in Berlin
    slots = choose_slots(ramp(15), BERLIN, start, 24, None, alternatives=3)
    assert len(slots) == 4
    assert [s.local_hour for s in slots] == [15, 14, 16, 13]  # ties: earliest first
    for slot in slots:
        assert start <= slot.send_at < start + timedelta(hours=24)
        assert slot.send_at.tzinfo is not None and slot.send_at.utcoffset() == timedelta(0)
        assert slot.send_at.astimezone(ZoneInfo(BERLIN)).hour == slot.local_hour
        assert slot.probability == pytest.approx(ramp(15)[slot.local_hour])
    assert slots[0].send_at == datetime(2026, 6, 1, 13, 0, tzinfo=UTC)
    assert len({s.send_at for s in slots}) == 4

    short = choose_slots(ramp(15), BERLIN, start, 3, None, alternatives=10)
    assert sorted(s.local_hour for s in short) == [6, 7, 8]


def test_quiet_hours_are_respected() -> None:
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # 14:00 in Berlin
    night_owl = ramp(2)
    slots = choose_slots(night_owl, BERLIN, start, 24, (22, 8), alternatives=30)
    hours = {s.local_hour for s in slots}
    assert hours == set(range(8, 22))
    assert slots[0].local_hour == 21  # the allowed hour nearest to 2 am
    assert all(not is_quiet(h, (22, 8)) for h in hours)

    ignored = choose_slots(night_owl, BERLIN, start, 24, None)
    assert ignored[0].local_hour == 2
    assert choose_slots(night_owl, BERLIN, start, 24, (5, 5))[0].local_hour == 2
    daytime_quiet = choose_slots(night_owl, BERLIN, start, 24, (9, 17), alternatives=30)
    assert {s.local_hour for s in daytime_quiet}.isdisjoint(range(9, 17))

    window_in_the_night = datetime(2026, 6, 1, 21, 0, tzinfo=UTC)  # 23:00 local
    assert choose_slots(night_owl, BERLIN, window_in_the_night, 6, (22, 8)) == []


def test_is_quiet() -> None:
    assert [h for h in range(HOURS) if is_quiet(h, (22, 8))] == [0, 1, 2, 3, 4, 5, 6, 7, 22, 23]
    assert [h for h in range(HOURS) if is_quiet(h, (1, 3))] == [1, 2]
    assert not any(is_quiet(h, (7, 7)) for h in range(HOURS))
    assert not any(is_quiet(h, None) for h in range(HOURS))


def test_dst_fall_back_repeats_a_local_hour() -> None:
    # 2026-10-25: Berlin goes from 03:00 CEST back to 02:00 CET at 01:00 UTC.
    start = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # 00:00 CEST
    slots = choose_slots(np.full(HOURS, 0.3), BERLIN, start, 5, None, alternatives=10)
    assert [s.send_at.hour for s in slots] == [22, 23, 0, 1, 2]
    assert [s.local_hour for s in slots] == [0, 1, 2, 2, 3]
    berlin = [s.send_at.astimezone(ZoneInfo(BERLIN)) for s in slots]
    assert [b.utcoffset() for b in berlin] == [timedelta(hours=h) for h in (2, 2, 2, 1, 1)]


def test_dst_spring_forward_never_offers_the_skipped_hour() -> None:
    # 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST at 01:00 UTC.
    start = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # 00:00 CET
    best_at_two = ramp(2)
    slots = choose_slots(best_at_two, BERLIN, start, 5, None, alternatives=10)
    assert [s.local_hour for s in slots] == [1, 3, 0, 4, 5]
    assert all(s.local_hour != 2 for s in slots)
    utc = {s.local_hour: s.send_at for s in slots}
    assert utc[1] == datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    assert utc[3] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert utc[4] == datetime(2026, 3, 29, 2, 0, tzinfo=UTC)


def test_not_before_off_the_hour_is_a_slot_of_its_own() -> None:
    start = datetime(2026, 6, 1, 8, 20, 30, tzinfo=UTC)  # 10:20:30 in Berlin
    slots = choose_slots(ramp(10), BERLIN, start, 3, None, alternatives=10)
    assert slots[0].send_at == start and slots[0].local_hour == 10
    assert [s.send_at for s in slots[1:]] == [
        datetime(2026, 6, 1, 9, 0, tzinfo=UTC),
        datetime(2026, 6, 1, 10, 0, tzinfo=UTC),
        datetime(2026, 6, 1, 11, 0, tzinfo=UTC),
    ]
    # Exactly on the hour it is just the first whole hour; naive means UTC.
    on_the_hour = choose_slots(ramp(10), BERLIN, datetime(2026, 6, 1, 8, 0), 2, None)
    assert [s.send_at for s in on_the_hour] == [
        datetime(2026, 6, 1, 8, 0, tzinfo=UTC),
        datetime(2026, 6, 1, 9, 0, tzinfo=UTC),
    ]


def test_half_hour_zones_get_their_own_whole_hours() -> None:
    start = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)  # 05:30 in Kolkata
    slots = choose_slots(ramp(9), "Asia/Kolkata", start, 6, None, alternatives=10)
    assert slots[0].local_hour == 9 and slots[0].send_at == datetime(2026, 6, 1, 3, 30, tzinfo=UTC)
    moments = sorted(s.send_at for s in slots)
    assert moments[0] == start  # off the local hour: a slot of its own
    assert [m.minute for m in moments[1:]] == [30] * 6


def test_explore_changes_the_ranking_sometimes_but_stays_in_the_window() -> None:
    start = datetime(2026, 6, 1, 4, 0, tzinfo=UTC)
    probabilities = ramp(15)
    greedy = choose_slots(probabilities, BERLIN, start, 24, None)
    rng = np.random.default_rng(7)
    firsts = []
    for _ in range(200):
        slots = choose_slots(probabilities, BERLIN, start, 24, None, explore_rate=0.5, rng=rng)
        assert len(slots) == 4 and len({s.send_at for s in slots}) == 4
        for slot in slots:
            assert start <= slot.send_at < start + timedelta(hours=24)
            assert slot.probability == pytest.approx(probabilities[slot.local_hour])
        firsts.append(slots[0].local_hour)
    assert 20 < sum(h != 15 for h in firsts) < 180
    unexplored = choose_slots(
        probabilities, BERLIN, start, 24, None, explore_rate=0.0, rng=np.random.default_rng(1)
    )
    assert unexplored == greedy


def test_choose_slots_refuses_bad_arguments() -> None:
    start = datetime(2026, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="24 values"):
        choose_slots(np.ones(12), BERLIN, start, 24, None)
    with pytest.raises(ValueError, match="24 values"):
        choose_slots(np.ones((DAYS, 12)), BERLIN, start, 24, None)
    with pytest.raises(ValueError, match="window_hours"):
        choose_slots(np.ones(HOURS), BERLIN, start, 0, None)
    with pytest.raises(ValueError, match="time zone"):
        choose_slots(np.ones(HOURS), "Mars/Olympus", start, 24, None)


# --- evidence that does not evaporate, zones, explanations --------------------------------


def test_old_evidence_keeps_its_weight_relative_to_the_persons_latest_event() -> None:
    # Twenty evenings of 1998 (the MovieLens regime): recency is relative to the person's
    # own latest event, so a year-old habit still decides, with source "user".
    start = int(datetime(1998, 3, 2, 21, 5, tzinfo=UTC).timestamp())
    events = [("", "view", start + d * DAY, "", False) for d in range(20)]
    person = profile_from_events(events, 30.0)
    assert person.as_of == start + 19 * DAY
    assert person.activity[21] > 10 and person.active_hours == 20
    priors = flat_priors()
    p, source, evidence = hour_probabilities(person, "email", priors, "UTC")
    assert source == "user" and evidence == 20 and int(np.argmax(p)) == 21


def test_a_short_memory_weighs_old_evidence_less_but_still_counts_it() -> None:
    start = int(datetime(2026, 3, 2, 8, 5, tzinfo=UTC).timestamp())
    old = [("", "view", start + d * DAY, "", False) for d in range(30)]  # mornings
    recent = [("", "view", start + 40 * DAY + 12 * HOUR, "", False)]  # one evening, 20:05
    person = profile_from_events(old + recent, 30.0, activity_half_life_days=1.0)
    assert person.activity[20] == pytest.approx(1.0) and person.activity[8] < 1e-3
    _, source, evidence = hour_probabilities(person, "email", flat_priors(), "UTC")
    assert source == "user" and evidence == 31  # plain counts: how much, not how recent


def test_served_profile_aligns_published_and_live_counts_to_the_latest_event() -> None:
    published_at = NOW - 10 * DAY
    published = profile_from_events([("", "view", published_at, BERLIN, False)], 10.0)
    live = [("", "view", NOW, BERLIN, False), ("", "view", published_at - DAY, BERLIN, False)]
    served = served_profile([published.to_json()], published_at, live, 10.0)
    assert served.as_of == NOW
    # The published view is 10 days (one half-life) older than the latest live one; the
    # live event from before the data end is covered by the publication and not counted.
    assert served.activity.sum() == pytest.approx(1.5, rel=1e-4)
    assert served.active_hours == 2


def test_a_zoneless_person_is_moved_to_the_zone_asked_for() -> None:
    monday_20_utc = int(datetime(2026, 9, 21, 20, 0, tzinfo=UTC).timestamp())
    events = [
        ("email", "message_delivered", monday_20_utc, "", False),
        ("email", "message_open", monday_20_utc + 60, "", False),
    ]
    person = profile_from_events(events, 30.0)  # counted in UTC: no zone known
    at = datetime(2026, 9, 22, tzinfo=UTC)
    tokyo = moved_to_zone(person, "UTC", "Asia/Tokyo", at)
    assert int(np.argmax(tokyo.activity)) == 5  # 20:00 UTC is 05:00 in Tokyo
    # ... on Tuesday there: the week wraps across the day boundary.
    assert np.flatnonzero(tokyo.channels["email"].weekly_deliveries).tolist() == [1 * HOURS + 5]
    assert tokyo.channels["email"].sent == 1 and tokyo.active_hours == person.active_hours
    assert moved_to_zone(person, "UTC", "UTC", at) is person
    with pytest.raises(ValueError, match="unknown time zone"):
        moved_to_zone(person, "UTC", "Mars/Olympus", at)
    # plan_send moves only people without a zone: habits follow the local clock.
    priors = flat_priors()
    planned = plan_send(person, "email", priors, "Asia/Tokyo", at, 24, None, counted_in="UTC")
    assert planned.slots[0].local_hour == 5
    known = replace(person, timezone="UTC")
    kept = plan_send(known, "email", priors, "Asia/Tokyo", at, 24, None, counted_in="UTC")
    assert kept.slots[0].local_hour == 20


def test_plans_explain_their_evidence_and_channel_source() -> None:
    sent = ts_at("2026-09-01T09:00")
    events = [("email", "message_delivered", sent + d * DAY, BERLIN, False) for d in range(6)] + [
        ("email", "message_open", sent + 120, BERLIN, False),
        ("email", "message_open", sent + 240, BERLIN, True),  # automated: not counted
        ("web", "session_start", sent - DAY, BERLIN, False),
    ]
    person = profile_from_events(events, 30.0)
    assert evidence_of(person, "email") == Evidence(deliveries=6, engagements=1, activity_events=2)
    assert evidence_of(person, "sms") == Evidence(deliveries=0, engagements=0, activity_events=2)
    assert channel_source(person) == "user"
    assert channel_source(EngagementProfile()) == "global_prior"
    plan = plan_send(
        person, "email", flat_priors(), BERLIN, datetime.fromtimestamp(NOW, UTC), 24, None
    )
    assert plan.detail == evidence_of(person, "email") and plan.source == "user"


def test_tuning_round_trips_and_old_priors_read_with_defaults() -> None:
    tuning = Tuning(
        strength=3.0,
        activity_strength=0.3,
        activity_exponent=1.0,
        activity_smoothing_hours=0.5,
        day_type_strength=10.0,
        half_life_days=90.0,
        activity_half_life_days=1 / 24,
        channel_strength={"email": 16.0},
    )
    assert Tuning.from_dict(json.loads(json.dumps(tuning.to_dict()))) == tuning
    assert tuning.recency(30.0) == (90.0, 1 / 24)
    assert Tuning().recency(30.0) == (30.0, 30.0)
    old = {**Priors.flat().to_dict(), "strength": 5.0}
    del old["tuning"]
    assert Priors.from_dict(old).tuning == Tuning(strength=5.0, activity_strength=5.0)
    with pytest.raises(ValueError, match="strength must be positive"):
        Tuning.from_dict({"strength": 0})
    # What training chose (a plain rule, no population curve) survives the bundle.
    plain = Tuning(curve_exponent=0.0, rule=OWN_HOURS)
    assert Tuning.from_dict(json.loads(json.dumps(plain.to_dict()))) == plain
    assert Tuning.from_dict({}).rule == LEARNT_MIX and Tuning.from_dict({}).curve_exponent == 1
    with pytest.raises(ValueError, match="rule must be one of"):
        Tuning.from_dict({"rule": "best_guess"})
    with pytest.raises(ValueError, match="curve_exponent"):
        Tuning.from_dict({"curve_exponent": 2.0})


def test_the_curve_exponent_tempers_the_population_curve() -> None:
    curve = [0.05 + 0.01 * h for h in range(HOURS)]
    priors = flat_priors(channel_hour_rate={c: curve for c in MESSAGE_CHANNELS})
    np.testing.assert_allclose(prior_curve(priors, "email", None), curve)
    flat = replace(priors, tuning=Tuning(curve_exponent=0.0))
    np.testing.assert_allclose(prior_curve(flat, "email", None), np.full(HOURS, np.mean(curve)))
    half = prior_curve(replace(priors, tuning=Tuning(curve_exponent=0.5)), "email", None)
    assert np.argmax(half) == np.argmax(curve) and np.ptp(half) < np.ptp(curve)


def test_week_tables_are_each_persons_week_probabilities() -> None:
    weekly = np.zeros(WEEK_HOURS)
    weekly[5 * HOURS + 10] = 6.0  # Saturdays at 10
    people = [
        profile(deliveries=at_hour(9, 20.0), opens=at_hour(9, 8.0), activity=at_hour(20, 5.0)),
        profile("sms", deliveries=at_hour(18, 4.0), opens=at_hour(18, 1.0)),
        replace(profile(activity=at_hour(10, 6.0)), weekly_activity=weekly),
        EngagementProfile(),
    ]
    channels, zones = ["email", "sms", "push", "email"], [BERLIN, BERLIN, "UTC", "Asia/Tokyo"]
    priors = flat_priors()
    tables = week_tables(people, channels, zones, priors)
    assert tables.shape == (len(people), DAYS, HOURS)
    for person, channel, zone, table in zip(people, channels, zones, tables, strict=True):
        np.testing.assert_allclose(table, week_probabilities(person, channel, priors, zone))
    with pytest.raises(ValueError, match="channel"):
        week_tables(people[:1], ["fax"], [BERLIN], priors)


def test_a_weekend_habit_from_activity_alone_gives_weekend_slots() -> None:
    # Weekday mornings at 07:00, weekend late mornings at 11:00 (Berlin), no messages.
    monday = datetime(2026, 9, 7, 7, 10, tzinfo=ZoneInfo(BERLIN))
    events = []
    for week in range(6):
        for day in range(7):
            hour = 11 if day >= 5 else 7
            moment = monday + timedelta(weeks=week, days=day)
            events.append(("", "view", int(moment.replace(hour=hour).timestamp()), BERLIN, False))
    person = profile_from_events(events, 30.0)
    priors = replace(flat_priors(), tuning=Tuning(day_type_strength=1.0))
    week = week_probabilities(person, "email", priors, BERLIN)
    assert int(np.argmax(week[2])) == 7 and int(np.argmax(week[5])) == 11
    saturday = datetime(2026, 10, 24, tzinfo=ZoneInfo(BERLIN))
    plan = plan_send(person, "email", priors, BERLIN, saturday, 24, None)
    assert plan.slots[0].local_hour == 11


# --- many people at once -------------------------------------------------------------------

#: Zones with DST both ways, half- and 45-minute offsets, a 30-minute DST shift, and none.
VARIED_ZONES = (
    None,
    "UTC",
    BERLIN,
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
)


def varied_priors(rng: np.random.Generator) -> Priors:
    """Priors as training learns them: segments for some zones, per-channel strengths,
    fatigue, and an activity share with empty hours."""

    def curve() -> list[float]:
        return rng.uniform(0.01, 0.4, HOURS).tolist()

    share = rng.random(HOURS) * (rng.random(HOURS) > 0.2)
    return Priors(
        channel_rate={c: float(rng.uniform(0.02, 0.3)) for c in MESSAGE_CHANNELS[1:]},
        channel_hour_rate={c: curve() for c in MESSAGE_CHANNELS[2:]},
        segment_hour_rate={BERLIN: {"email": curve()}, "Asia/Kolkata": {"sms": curve()}},
        activity=(share / share.sum()).tolist(),
        segment_activity={BERLIN: [1.0 / HOURS] * HOURS},
        tuning=Tuning(strength=5.0, day_type_strength=2.0, channel_strength={"email": 12.0}),
        fatigue=[1.0, 0.8, 0.6, 0.5],
    )


def varied_person(rng: np.random.Generator) -> EngagementProfile:
    """Anyone from nobody (an empty profile) to a reader with weekly counts on several
    channels, in any of :data:`VARIED_ZONES`."""
    if rng.random() < 0.15:
        return EngagementProfile()

    def counts(size: int, keep: float) -> np.ndarray:
        return rng.random(size) * 4 * (rng.random(size) < keep)

    weekly = rng.random() < 0.7
    channels = {}
    for channel in MESSAGE_CHANNELS:
        if rng.random() < 0.4:
            channels[channel] = ChannelCounts(
                counts(HOURS, 0.5),
                counts(HOURS, 0.3),
                counts(HOURS, 0.2),
                *(counts(WEEK_HOURS, 0.2 * weekly) for _ in range(3)),
                sent=float(rng.integers(0, 20)),
                answered=float(rng.integers(0, 5)),
            )
    return EngagementProfile(
        timezone=VARIED_ZONES[rng.integers(len(VARIED_ZONES))],
        channels=channels,
        activity=counts(HOURS, 0.4),
        as_of=float(NOW),
        weekly_activity=counts(WEEK_HOURS, 0.3 * weekly),
        active_hours=float(rng.integers(0, 30)),
    )


def varied_questions(rng: np.random.Generator, count: int) -> list[SendQuestion]:
    """Windows of 1 h to a week, starting on and off the hour (some across DST changes),
    naive and aware, with quiet hours that wrap, do not, or are ignored."""
    questions = []
    for _ in range(count):
        person = varied_person(rng)
        zone = person.timezone or VARIED_ZONES[1 + rng.integers(len(VARIED_ZONES) - 1)]
        start = datetime(2026, 3, 25, tzinfo=UTC) + timedelta(
            hours=int(rng.integers(0, 24 * 40)), seconds=int(rng.integers(0, 2)) * 1234
        )
        quiet = [None, (22, 8), (9, 17), (3, 3)][rng.integers(4)]
        questions.append(
            SendQuestion(
                person,
                MESSAGE_CHANNELS[rng.integers(len(MESSAGE_CHANNELS))],
                zone,
                start if rng.random() < 0.8 else start.replace(tzinfo=None),
                int(rng.choice([1, 3, 8, rng.integers(1, 169)])),
                quiet,
            )
        )
    return questions


def reseeded(questions: list[SendQuestion], seed: int) -> list[SendQuestion]:
    """``questions``, each with a fresh generator seeded from ``seed``: two calls give two
    sets that draw the same numbers."""
    seeds = np.random.default_rng(seed).integers(1 << 31, size=len(questions))
    return [
        replace(q, rng=np.random.default_rng(int(s))) for q, s in zip(questions, seeds, strict=True)
    ]


@pytest.mark.parametrize("explore_rate", [0.0, 0.5])
def test_planning_many_people_at_once_answers_each_as_planned_alone(explore_rate) -> None:
    rng = np.random.default_rng(23)
    priors = varied_priors(rng)
    questions = varied_questions(rng, 150)
    together = plan_sends(reseeded(questions, 1), priors, explore_rate, 2, counted_in="UTC")
    alone = [
        plan_send(
            q.profile,
            q.channel,
            priors,
            q.timezone,
            q.not_before,
            q.window_hours,
            q.quiet,
            explore_rate,
            q.rng,
            2,
            counted_in="UTC",
        )
        for q in reseeded(questions, 1)
    ]
    assert together == alone
    assert {plan.source for plan in together} == set(SOURCES)
    assert any(plan.slots for plan in together) and any(not plan.slots for plan in together)
    for plan in together:
        assert all(type(s.probability) is float and type(s.local_hour) is int for s in plan.slots)


def test_planning_at_once_is_the_per_person_model_to_the_last_bit() -> None:
    # The day's and the week's probabilities from arrays of people are those of the
    # per-person functions: no row's rounding depends on the others on the page.
    rng = np.random.default_rng(4)
    priors = varied_priors(rng)
    questions = [
        replace(q, profile=replace(q.profile, timezone=q.timezone))
        for q in varied_questions(rng, 120)
    ]
    planned = plan_sends(questions, priors, alternatives=30)
    for q, plan in zip(questions, planned, strict=True):
        day, source, evidence = hour_probabilities(q.profile, q.channel, priors, q.timezone)
        week = week_probabilities(q.profile, q.channel, priors, q.timezone, day=day)
        slots = choose_slots(week, q.timezone, q.not_before, q.window_hours, q.quiet, 0.0, None, 30)
        assert (plan.slots, plan.source, plan.evidence) == (slots, source, evidence)
        assert plan.detail == evidence_of(q.profile, q.channel)


def test_channels_ranked_at_once_are_ranked_as_alone() -> None:
    rng = np.random.default_rng(5)
    priors = varied_priors(rng)
    people = [varied_person(rng) for _ in range(80)]
    unanswered = [
        {c: int(rng.integers(0, 6)) for c in MESSAGE_CHANNELS if rng.random() < 0.3} or None
        for _ in people
    ]
    together = channel_rankings(people, priors, unanswered)
    assert together == [
        rank_channels(p, priors, u) for p, u in zip(people, unanswered, strict=True)
    ]
    assert channel_rankings([], priors) == [] and plan_sends([], priors) == []


def test_planning_at_once_refuses_what_one_plan_refuses() -> None:
    good = SendQuestion(EngagementProfile(), "email", BERLIN, datetime.now(UTC), 24, None)
    for bad, message in (
        (replace(good, channel="web"), "not one of"),
        (replace(good, window_hours=0), "at least 1"),
        (replace(good, timezone="Mars/Olympus"), "not a known IANA time zone"),
    ):
        with pytest.raises(ValueError, match=message):
            plan_sends([good, bad], flat_priors())
