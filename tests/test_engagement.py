"""Send-time profiles, priors and evaluation from an events log (training/engagement.py),
on hand-made frames and on synthetic data with planted hours and channels."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.events import COLUMNS, EVENT_TYPES, MESSAGE_CHANNELS
from service.send_time import (
    HOURS,
    LEARNT_MIX,
    OWN_HOURS,
    OWN_HOURS_BY_DAY_TYPE,
    EngagementProfile,
    Priors,
    Tuning,
    hour_probabilities,
    profile_from_events,
    rank_channels,
    smooth,
)
from training.engagement import (
    SendTimeModel,
    SendTimeReport,
    TuningReport,
    _choose_rule,
    _events,
    _held_out_days,
    _validation,
    evaluate_send_time,
    learn_priors,
    learn_tuning,
    plain_rule,
    user_profiles,
)
from training.event_log import load_events
from training.synthetic import generate

DAY = 86_400
HOUR = 3_600
T0 = 1_780_000_000  # 2026-05-28T20:26:40Z


def frame_of(rows: list[tuple]) -> pd.DataFrame:
    """A loader-shaped frame from (user, type, ts, channel, zone, automated) rows."""
    users, types, stamps, channels, zones, automated = zip(*rows, strict=True)
    frame = pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype="str"),
            "item_id": pd.Series(
                ["i1" if t in ("view", "purchase", "dislike") else "" for t in types], dtype="str"
            ),
            "event_type": pd.Categorical(types, categories=list(EVENT_TYPES)),
            "timestamp": np.array(stamps, dtype=np.int64),
            "channel": pd.Series(channels, dtype="str"),
            "timezone": pd.Series(zones, dtype="str"),
            "value": np.nan,
            "automated": np.array(automated, dtype=bool),
        }
    )
    return frame[list(COLUMNS)]


def events_of(frame: pd.DataFrame, user: str) -> list[tuple[str, str, int, str, bool]]:
    mine = frame[frame.user_id == user]
    return list(
        zip(
            mine.channel,
            mine.event_type.astype(str),
            mine.timestamp.astype(int),
            mine.timezone,
            mine.automated,
            strict=True,
        )
    )


def assert_same(a: EngagementProfile, b: EngagementProfile) -> None:
    assert a.timezone == b.timezone
    assert set(a.channels) == set(b.channels)
    for name in a.channels:
        for part in (
            "deliveries",
            "opens",
            "clicks",
            "weekly_deliveries",
            "weekly_opens",
            "weekly_clicks",
        ):
            np.testing.assert_allclose(
                getattr(a.channels[name], part), getattr(b.channels[name], part), rtol=1e-12
            )
    np.testing.assert_allclose(a.activity, b.activity, rtol=1e-12)


TRICKY = [
    # A delivery, the open and click it gets, and an automated open to ignore.
    ("a", "message_delivered", T0, "email", "Europe/Berlin", False),
    ("a", "message_open", T0 + 5, "email", "Europe/Berlin", True),
    ("a", "message_open", T0 + 2 * HOUR, "email", "", False),
    ("a", "message_click", T0 + 2 * HOUR + 60, "email", "", False),
    # An open 49 h after the last delivery, and one on a channel never delivered on.
    ("a", "message_open", T0 + 49 * HOUR, "email", "Europe/Berlin", False),
    ("a", "message_open", T0 + 3 * HOUR, "sms", "Europe/Berlin", False),
    # Two deliveries in the same second in different zones, then an open.
    ("a", "message_delivered", T0 + 10 * DAY, "push", "Asia/Tokyo", False),
    ("a", "message_delivered", T0 + 10 * DAY, "push", "America/New_York", False),
    ("a", "message_open", T0 + 10 * DAY + 30, "push", "", False),
    # Activity on any channel; dislikes and automated views are not activity.
    ("a", "session_start", T0 - 3 * DAY, "web", "", False),
    ("a", "view", T0 - 3 * DAY + 40, "app", "Europe/Berlin", False),
    ("a", "purchase", T0 - 40 * DAY, "store", "", False),
    ("a", "dislike", T0, "web", "", False),
    ("a", "view", T0, "web", "", True),
    # Messages on a non-message channel are not counted.
    ("a", "message_delivered", T0, "web", "", False),
    # Someone with no zone at all, and someone with only a dislike.
    ("b", "message_delivered", T0 + DAY, "messenger", "", False),
    ("b", "message_open", T0 + DAY + 600, "messenger", "", False),
    ("b", "view", T0 + DAY + 700, "web", "", False),
    ("c", "dislike", T0, "web", "America/New_York", False),
    # Equal times, different zones: the greatest name wins the person's zone.
    ("d", "view", T0, "", "Asia/Tokyo", False),
    ("d", "view", T0, "", "America/New_York", False),
    ("d", "session_start", T0 - DAY, "web", "", False),
    # Equal times, zones a day apart: the same local hour on different weekdays.
    ("e", "message_delivered", T0, "push", "Pacific/Kiritimati", False),
    ("e", "message_delivered", T0, "push", "Pacific/Honolulu", False),
    ("e", "message_open", T0 + 60, "push", "", False),
    ("e", "message_delivered", T0 + 3 * DAY, "email", "Pacific/Honolulu", False),
    ("e", "message_click", T0 + 3 * DAY + 60, "email", "", False),
]


@pytest.mark.parametrize("default_timezone", ["UTC", "Australia/Sydney"])
def test_user_profiles_agree_with_profile_from_events(default_timezone: str) -> None:
    frame = frame_of(TRICKY)
    profiles = user_profiles(frame, 20.0, default_timezone)
    assert list(profiles) == ["a", "b", "c", "d", "e"]
    for user, built in profiles.items():
        # Any order of events gives the same profile.
        events = events_of(frame, user)[::-1]
        assert_same(built, profile_from_events(events, 20.0, default_timezone))
    # a's latest zones are two at the same second: the greatest name wins.
    assert profiles["a"].timezone == "Asia/Tokyo"
    assert profiles["b"].timezone is None
    assert profiles["c"].timezone == "America/New_York"
    assert profiles["d"].timezone == "Asia/Tokyo"
    assert not profiles["c"].channels and not profiles["c"].activity.any()
    assert set(profiles["a"].channels) == {"email", "sms", "push"}
    # The open answers one of the two same-second deliveries: same hour, another weekday.
    push = profiles["e"].channels["push"]
    assert np.flatnonzero(push.weekly_deliveries).size == 2
    assert np.flatnonzero(push.weekly_opens).size == 1
    for name, counts in profiles["a"].channels.items():
        np.testing.assert_allclose(
            counts.weekly_deliveries.reshape(7, HOURS).sum(0), counts.deliveries, err_msg=name
        )


def test_user_profiles_without_the_automated_column() -> None:
    frame = frame_of(TRICKY[:4]).drop(columns="automated")
    profile = user_profiles(frame)["a"]
    # Read as all False: the proxy's open counts too.
    assert profile.channels["email"].opens.sum() == pytest.approx(2.0, rel=1e-2)


# --- synthetic data with planted truth --------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict]:
    data = generate(300, 100, 120, seed=7, out_dir=tmp_path_factory.mktemp("planted"))
    return load_events(data.events).frame, json.loads(data.truth.read_text())


@pytest.fixture(scope="module")
def fitted(planted: tuple[pd.DataFrame, dict]) -> tuple[dict[str, EngagementProfile], Priors]:
    frame, _ = planted
    return user_profiles(frame), learn_priors(frame)


def circular(a: int, b: int) -> int:
    d = abs(a - b) % HOURS
    return min(d, HOURS - d)


def test_synthetic_profiles_agree_with_profile_from_events(
    planted: tuple[pd.DataFrame, dict], fitted: tuple
) -> None:
    frame, truth = planted
    profiles, _ = fitted
    proxied = [u for u, t in truth["users"].items() if t["proxy_opens"]][:3]
    for user in [*proxied, "u00000", "u00299"]:
        assert_same(profiles[user], profile_from_events(events_of(frame, user), 30.0))


def test_planted_hours_are_found_where_open_histograms_echo_the_schedule(
    planted: tuple[pd.DataFrame, dict], fitted: tuple
) -> None:
    frame, truth = planted
    profiles, priors = fitted
    sent = frame[frame.event_type == "message_delivered"].groupby(["user_id", "channel"]).size()
    opens = frame[(frame.event_type == "message_open") & ~frame.automated]
    model_hits = naive_hits = people = 0
    for user, planted_user in truth["users"].items():
        channel, hour = planted_user["preferred_channel"], planted_user["active_hour_local"]
        if sent.get((user, channel), 0) < 30:
            continue
        people += 1
        p, source, _ = hour_probabilities(profiles[user], channel, priors, planted_user["timezone"])
        assert source == "user"
        model_hits += circular(int(np.argmax(p)), hour) <= 1
        # The naive method: when did this person open (anything), smoothed.
        mine = opens[opens.user_id == user]
        local = pd.to_datetime(mine.timestamp, unit="s", utc=True).dt.tz_convert(
            planted_user["timezone"]
        )
        histogram = smooth(np.bincount(local.dt.hour, minlength=HOURS).astype(float))
        naive_hits += circular(int(np.argmax(histogram)), hour) <= 1
    assert people >= 100
    assert model_hits / people >= 0.7
    assert model_hits / people >= naive_hits / people + 0.2


def test_planted_channels_rank_first(planted: tuple[pd.DataFrame, dict], fitted: tuple) -> None:
    _, truth = planted
    profiles, priors = fitted
    top = [
        rank_channels(profiles[user], priors)[0][0] == planted_user["preferred_channel"]
        for user, planted_user in truth["users"].items()
    ]
    assert np.mean(top) >= 0.8


def test_automated_opens_do_not_make_proxied_email_look_keen(
    planted: tuple[pd.DataFrame, dict], fitted: tuple
) -> None:
    _, truth = planted
    profiles, priors = fitted
    proxied = [u for u, t in truth["users"].items() if t["proxy_opens"]]
    assert len(proxied) > 50
    email_first = [rank_channels(profiles[u], priors)[0][0] == "email" for u in proxied]
    prefer_email = [truth["users"][u]["preferred_channel"] == "email" for u in proxied]
    assert np.mean(email_first) < np.mean(prefer_email) + 0.15


def test_learnt_priors(planted: tuple[pd.DataFrame, dict], fitted: tuple) -> None:
    frame, truth = planted
    _, priors = fitted
    assert set(priors.channel_rate) == set(MESSAGE_CHANNELS)
    assert all(0 < r < 0.3 for r in priors.channel_rate.values())
    for curve in priors.channel_hour_rate.values():
        assert len(curve) == HOURS and all(0 <= r <= 1 for r in curve)
    # Planted hours are 7..22 local: the population reads by day.
    email = np.array(priors.channel_hour_rate["email"])
    assert email[12:20].mean() > 1.5 * email[1:5].mean()
    assert sum(priors.activity) == pytest.approx(1.0)
    assert np.argmax(priors.activity) in range(7, 23)
    zones = {u["timezone"] for u in truth["users"].values()}
    assert set(priors.segment_hour_rate) == zones
    assert set(priors.segment_activity) == zones
    assert Priors.from_dict(json.loads(json.dumps(priors.to_dict()))) == priors

    none = learn_priors(frame, min_segment_deliveries=10**9)
    assert none.segment_hour_rate == {} and none.segment_activity == {}


def test_evaluation_beats_every_baseline(planted: tuple[pd.DataFrame, dict]) -> None:
    frame, _ = planted
    report = evaluate_send_time(frame)
    metrics = report.metrics
    assert report.users > 200 and report.events > 1000 and report.channel_users > 100
    baselines = ("open_histogram", "last_active_hour", "global_best_hour", "uniform")
    for baseline in baselines:
        for metric in ("hit_rate_1h", "log_likelihood"):
            assert metrics["model"][metric] > metrics[baseline][metric], (baseline, metric)
    assert metrics["uniform"]["hit_rate_1h"] == pytest.approx(3 / 24)
    assert metrics["uniform"]["log_likelihood"] == pytest.approx(np.log(1 / 24))
    assert metrics["model"]["channel_accuracy"] > metrics["global_best_channel"]["channel_accuracy"]

    flat = report.flat()
    assert flat["sendtime_model_hit_rate_1h"] == metrics["model"]["hit_rate_1h"]
    assert "sendtime_global_best_channel_channel_accuracy" in flat
    assert all(key.startswith("sendtime_") for key in flat)
    table = report.table()
    lines = table.splitlines()
    assert "hit_rate_1h" in lines[1] and "channel_accuracy" in lines[1]
    assert [line.split()[0] for line in lines[2:8]] == [
        "model",
        "open_histogram",
        "last_active_hour",
        "global_best_hour",
        "uniform",
        "global_best_channel",
    ]


# --- logs without messages, and degenerate logs ----------------------------------------


def views_only(tmp_path: Path) -> pd.DataFrame:
    """Like ml-100k ratings read as views: no channel, no zone, no messages."""
    data = generate(120, 50, 60, seed=3, out_dir=tmp_path)
    frame = load_events(data.events).frame
    frame = frame[frame.event_type == "view"].reset_index(drop=True)
    frame["channel"] = ""
    frame["timezone"] = ""
    return frame


def test_a_log_without_messages_evaluates_activity_alone(tmp_path: Path) -> None:
    frame = views_only(tmp_path)
    priors = learn_priors(frame)
    assert len(set(priors.channel_rate.values())) == 1
    assert list(priors.segment_activity) == ["UTC"]
    report = evaluate_send_time(frame)
    assert report.users > 50 and report.channel_users == 0
    assert set(report.metrics) == {"model", "last_active_hour", "global_best_hour", "uniform"}
    assert all("channel_accuracy" not in row for row in report.metrics.values())
    for baseline in ("last_active_hour", "uniform"):
        assert (
            report.metrics["model"]["log_likelihood"] > report.metrics[baseline]["log_likelihood"]
        )
    assert "no message events" in report.table()
    assert not any("channel" in key for key in report.flat())


def test_degenerate_logs_report_nothing_to_evaluate() -> None:
    one_moment = frame_of([("a", "view", T0, "web", "", False)] * 3)
    for frame in (one_moment, one_moment.iloc[:0]):
        report = evaluate_send_time(frame)
        assert isinstance(report, SendTimeReport)
        assert (report.users, report.events, report.metrics) == (0, 0, {})
        assert "nothing to evaluate" in report.table()
        assert report.flat() == {}
    assert learn_priors(one_moment.iloc[:0]).activity == pytest.approx([1 / HOURS] * HOURS)
    assert user_profiles(one_moment.iloc[:0]) == {}
    with pytest.raises(ValueError, match="test_fraction"):
        evaluate_send_time(one_moment, test_fraction=1.0)


# --- validation on whole days, and the plain rules -----------------------------------------


def habit_log(people: int = 40, days: int = 15, pull: int = 0) -> pd.DataFrame:
    """People each active at their own UTC hour (3 + 2k mod 18) on ``days`` days, bursts of
    three views; ``pull`` more people all at 12, a crowd to pull the others there."""
    rows = []
    for k in range(people + pull):
        hour = 12 if k >= people else 3 + (2 * k) % 18
        for d in range(days):
            ts = T0 + d * DAY + hour * HOUR - (T0 % DAY)
            rows += [(f"u{k:02d}", "view", ts + 60 * m, "web", "UTC", False) for m in range(3)]
    return frame_of(rows)


def test_validation_holds_out_whole_days() -> None:
    rows = [
        ("a", "view", T0 + d * DAY + m * 60, "web", "UTC", False)
        for d in range(10)
        for m in range(4)
    ]
    rows += [("b", "view", T0 + d * DAY, "web", "UTC", False) for d in range(4)]
    events = _events(frame_of(rows), "UTC")
    held = _held_out_days(events, 0.2)
    a = events.codes == list(events.users).index("a")
    # a's latest two of ten days, every row of them; b has too few days to hold any out.
    assert held[a].sum() == 8 and held[a][-8:].all() and not held[a][:-8].any()
    assert not held[~a].any()


def test_a_plain_rule_answers_the_persons_own_hours_against_the_crowd() -> None:
    frame = habit_log(people=3, days=12, pull=60)
    mix = SendTimeModel.fit(frame, tuning=Tuning(activity_strength=64.0))
    rule = SendTimeModel.fit(frame, tuning=plain_rule(OWN_HOURS, 1.0, Tuning()))
    start = datetime.fromtimestamp(T0 + 30 * DAY - (T0 % DAY), UTC)
    # u01 is around at 5 every day; the crowd at 12 pulls a mix with a strong prior there.
    assert mix.plan("u01", "email", start, 24, quiet=None).slots[0].local_hour == 12
    plan = rule.plan("u01", "email", start, 24, quiet=None)
    assert plan.slots[0].local_hour == 5
    assert plan.detail.rule == OWN_HOURS and plan.source == "user"
    with pytest.raises(ValueError, match="not a plain rule"):
        plain_rule(LEARNT_MIX, 1.0, Tuning())


def test_the_rule_is_chosen_on_held_out_days() -> None:
    frame = habit_log(people=40, days=15)
    split = _validation(frame, "UTC")
    # A mix that ignores activity (exponent 0) answers the flat prior: it cannot know.
    report = TuningReport(Tuning())
    chosen = _choose_rule(split, Tuning(activity_exponent=0.0), report)
    assert chosen.rule in (OWN_HOURS, OWN_HOURS_BY_DAY_TYPE)
    hits = report.rule_hit_rates
    assert set(hits) == {LEARNT_MIX, OWN_HOURS, OWN_HOURS_BY_DAY_TYPE}
    assert hits[chosen.rule] == max(hits.values()) > hits[LEARNT_MIX] + 0.5
    assert report.rule_hours == len(split.a_hours) > 0
    report.tuning = chosen
    assert "answers: own hours" in report.summary()
    # The learnt tuning: whatever wins, it is the best of the three, the mix on ties.
    learnt = learn_tuning(frame)
    # 40 people's three held-out days are too few to choose on: the latest events instead.
    assert any(note.startswith("validated on the latest events") for note in learnt.notes)
    best = max(learnt.rule_hit_rates.values())
    assert learnt.rule_hit_rates[learnt.tuning.rule] == best
    if learnt.rule_hit_rates[LEARNT_MIX] == best:
        assert learnt.tuning.rule == LEARNT_MIX
