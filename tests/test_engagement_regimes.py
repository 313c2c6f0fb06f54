"""Independent send-time regimes, their baselines and the harness (fast, no servers)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from service.events import COLUMNS
from training.engagement_baselines import (
    PlainRule,
    channel_baselines,
    hour_baselines,
    own_hours,
    prepare,
)
from training.engagement_regimes import (
    END,
    REGIMES,
    Query,
    Regime,
    activity_holdout,
    activity_only,
    few_opens,
    habit_change,
    held_out_days,
    no_timezone,
    proxy_opens,
    sparse_biased,
    weekday_weekend,
)
from training.regime_evaluation import MODEL, evaluate

PEOPLE = 120
T0 = int(datetime(2025, 6, 2, tzinfo=UTC).timestamp())  # a Monday, 00:00 UTC
H = 3600


def _local_hours(frame: pd.DataFrame) -> pd.Series:
    """Local hour of each row in its own zone."""
    out = pd.Series(0, index=frame.index)
    for zone, rows in frame.groupby("timezone").groups.items():
        stamps = pd.to_datetime(frame.loc[rows, "timestamp"], unit="s", utc=True)
        out.loc[rows] = stamps.dt.tz_convert(zone).dt.hour
    return out


@pytest.mark.parametrize("name", list(REGIMES))
def test_every_regime_has_the_loader_shape_and_is_deterministic(name: str) -> None:
    first, again = REGIMES[name](seed=11, people=60), REGIMES[name](seed=11, people=60)
    assert list(first.frame.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(first.frame, again.frame)
    assert first.queries == again.queries and first.queries
    frame = first.frame
    assert frame["timestamp"].dtype == np.int64
    assert frame["timestamp"].is_monotonic_increasing
    assert frame["timestamp"].max() < END.timestamp()
    assert frame["value"].isna().all() and frame["automated"].dtype == bool
    assert (frame.loc[frame["event_type"].str.startswith("message"), "item_id"] == "").all()
    for query in first.queries:
        assert query.not_before.tzinfo is not None
        # Planted questions come after the log; held-out days (held_out_days) lie within
        # it, and none of the person's events that day trained the model.
        if query.label != "day":
            assert query.not_before.timestamp() >= frame["timestamp"].max()
        else:
            end = query.not_before.timestamp() + query.window_hours * 3600
            mine = frame.loc[frame["user_id"] == query.user_id, "timestamp"]
            assert not ((mine >= query.not_before.timestamp()) & (mine < end)).any()
        assert query.window_hours == 24 and query.target_hours
        assert all(0 <= h < 24 for h in query.target_hours)


def test_activity_only_has_no_channel_and_no_zone() -> None:
    regime = activity_only(people=PEOPLE)
    frame = regime.frame
    assert (frame["channel"] == "").all() and (frame["timezone"] == "").all()
    assert not frame["event_type"].str.startswith("message").any()
    assert regime.channel_truth == {}
    # Whole held-out days, one question each: its first active hour (held_out_days).
    assert regime.queries and all(q.timezone == "UTC" for q in regime.queries)
    assert all(len(q.target_hours) == 1 and q.label == "day" for q in regime.queries)
    # Sessions are bursts: many events per person and clock hour.
    bursts = frame.groupby(["user_id", frame["timestamp"] // H]).size()
    assert bursts.mean() > 3
    days = frame.groupby("user_id")["timestamp"].apply(lambda t: (t // 86400).nunique())
    assert days.min() <= 3 and days.max() >= 24  # few active days for some, dozens for others


def test_no_timezone_has_empty_zones_and_utc_truth() -> None:
    regime = no_timezone(people=PEOPLE)
    assert (regime.frame["timezone"] == "").all()
    assert all(q.timezone == "UTC" for q in regime.queries)
    assert all(q.not_before == END for q in regime.queries)
    # People live in several zones, so the UTC truths spread over many hours.
    assert len({q.target_hours for q in regime.queries}) >= 10


@pytest.mark.parametrize(("generate", "most"), [(sparse_biased, 12), (few_opens, 5)])
def test_sparse_regimes_follow_the_brand_schedule(generate, most: int) -> None:
    regime = generate(people=PEOPLE)
    frame = regime.frame
    sent = frame[frame["event_type"] == "message_delivered"]
    per_person = sent.groupby("user_id").size()
    assert len(per_person) == PEOPLE
    assert per_person.min() >= 15 and per_person.max() <= 60
    at_schedule = _local_hours(sent).isin([10, 18]).mean()
    assert 0.72 <= at_schedule <= 0.85  # 75 % planned, plus random ones that land there
    assert sent["channel"].value_counts().idxmax() == "email"
    human = frame[
        ((frame["event_type"] == "message_open") & ~frame["automated"])
        | ((frame["event_type"] == "message_click") & (frame["channel"] == "sms"))
    ]
    opens = human.groupby("user_id").size().reindex(per_person.index, fill_value=0)
    assert opens.min() >= 1 and opens.max() <= most
    assert set(regime.channel_truth) == set(per_person.index)


def test_proxy_opens_are_automated_and_only_on_email_for_proxied_people() -> None:
    regime = proxy_opens(people=PEOPLE * 2)
    frame = regime.frame
    automated = frame[frame["automated"]]
    assert (automated["event_type"] == "message_open").all()
    assert (automated["channel"] == "email").all()
    proxied = set(automated["user_id"])
    assert 0.15 < len(proxied) / (PEOPLE * 2) < 0.35
    # Every email to a proxied person is fetched within a minute.
    emails = frame[(frame["event_type"] == "message_delivered") & (frame["channel"] == "email")]
    emails = emails[emails["user_id"].isin(proxied)]
    assert len(automated) == len(emails)
    gap = np.sort(automated["timestamp"].to_numpy()) - np.sort(emails["timestamp"].to_numpy())
    assert len(gap)
    # Their human email signal is clicks only; the rest of the people have human opens.
    mine = frame["user_id"].isin(proxied) & (frame["channel"] == "email") & ~frame["automated"]
    assert not (mine & (frame["event_type"] == "message_open")).any()
    assert (mine & (frame["event_type"] == "message_click")).any()
    labels = {q.user_id: q.label for q in regime.queries}
    assert {u for u, label in labels.items() if label == "proxied hour"} <= proxied


def test_weekday_and_saturday_queries_have_different_truths() -> None:
    regime = weekday_weekend(people=PEOPLE)
    by_user: dict[str, dict[str, Query]] = {}
    for query in regime.queries:
        by_user.setdefault(query.user_id, {})[query.label] = query
    assert len(by_user) == PEOPLE
    for queries in by_user.values():
        weekday, saturday = queries["weekday hour"], queries["saturday hour"]
        assert weekday.target_hours != saturday.target_hours
        zone = weekday.timezone
        assert zone == saturday.timezone and zone
        assert weekday.not_before.astimezone(_zone(zone)).weekday() < 5
        local_saturday = saturday.not_before.astimezone(_zone(zone))
        assert local_saturday.weekday() == 5 and local_saturday.hour == 0


def _zone(name: str):
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def test_habit_change_moves_a_third() -> None:
    regime = habit_change(people=PEOPLE * 3)
    labels = pd.Series([q.label for q in regime.queries]).value_counts(normalize=True)
    assert 0.25 < labels["changed hour"] < 0.42


def test_activity_holdout_keeps_the_latest_fifth_per_person_out() -> None:
    rows = []
    for user, n in (("a", 10), ("b", 5), ("c", 3)):
        for k in range(n):
            # One event per day at hour k (mod 24): distinct clock hours.
            rows.append((user, "i1", "view", T0 + k * 86400 + k * H, "", "", np.nan, False))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    train, queries = activity_holdout(frame, fraction=0.2)
    counts = train.groupby("user_id").size().to_dict()
    assert counts == {"a": 8, "b": 4, "c": 3}  # c has too few events to hold any out
    assert [q.user_id for q in queries] == ["a", "b"]
    a = queries[0]
    assert a.target_hours == (8, 9) and a.held_out and a.timezone == "UTC"
    assert train.groupby("user_id")["timestamp"].max()["a"] < T0 + 8 * 86400
    assert a.not_before.timestamp() >= train["timestamp"].max()


def test_held_out_days_asks_for_the_first_hour_of_each_latest_day() -> None:
    rows = []
    for user, days in (("a", 10), ("c", 4)):
        for d in range(days):
            # Two bursts a day: at 8 + d % 3 and at 20; the first is the day's answer.
            for hour in (8 + d % 3, 20):
                rows += [(user, "i1", "view", T0 + d * 86400 + hour * H + k, "", "Europe/Paris",
                          np.nan, False) for k in range(3)]  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    regime = held_out_days(frame, "t", "day")
    # a's latest fifth of ten days (days 8 and 9) is held out, whole; c has too few days.
    # Local hours in Paris (UTC+2 in June): 10 + d % 3 first, then 22.
    assert [(q.user_id, q.target_hours) for q in regime.queries] == [("a", (12,)), ("a", (10,))]
    # Paris is UTC+2 in June: the local day runs from 22:00 UTC the day before, 24 h.
    first = regime.queries[0]
    assert first.timezone == "Europe/Paris" and first.window_hours == 24
    assert first.not_before == datetime.fromtimestamp(T0 + 8 * 86400 - 2 * H, UTC)
    assert all(q.label == "day" and q.day_type == "weekday" for q in regime.queries)
    kept = regime.frame.groupby("user_id")["timestamp"].agg(["size", "max"])
    assert kept.loc["a", "size"] == 8 * 6 and kept.loc["a", "max"] < T0 + 8 * 86400
    assert kept.loc["c", "size"] == 4 * 6
    with pytest.raises(ValueError, match="fraction"):
        held_out_days(frame, "t", "day", fraction=1.0)


def test_own_hours_counts_the_hours_within_an_hour() -> None:
    # On weekdays (T0 is a Monday): hours 9 and 11 twice each, 10 never, 21 three times.
    # Within ±1 h, 10 gathers four hours; 21 has the most of its own.
    days_hours = zip((0, 1, 2, 3, 4, 7, 8), (9, 9, 11, 11, 21, 21, 21), strict=True)
    rows = [_event("u", "view", T0 + d * 86400 + h * H, "web", item="i") for d, h in days_hours]
    # Two Saturdays at 6, the latest events.
    rows += [_event("u", "view", T0 + d * 86400 + 6 * H, "web", item="i") for d in (12, 19)]
    log = prepare(_frame(rows))
    weekday, weekend = _query("u", day_type="weekday"), _query("u", day_type="weekend")
    assert own_hours(log, [weekday], PlainRule(1, False, None))[0] == 10
    assert own_hours(log, [weekday], PlainRule(0, False, None))[0] == 21
    # A lone peak answers itself (5, 6 and 7 each have both Saturdays within ±1 h).
    assert own_hours(log, [weekend], PlainRule(1, True, None))[0] == 6
    assert own_hours(log, [weekday], PlainRule(1, True, None))[0] == 10
    # A short memory keeps the latest habit: the Saturdays at 6 came last.
    assert own_hours(log, [weekday], PlainRule(1, False, 1.0))[0] == 6
    answers = hour_baselines(_frame(rows), [weekday, weekend])
    assert list(answers["own_hours_1h"]) == [10, 10]
    assert list(answers["own_hours_1h_day_type"]) == [10, 6]


def _event(user, kind, ts, channel="", automated=False, zone="UTC", item=""):
    return (user, item, kind, ts, channel, zone, np.nan, automated)


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _query(user: str, zone: str = "UTC", day_type: str = "") -> Query:
    start = datetime.fromtimestamp(T0 + 30 * 86400, UTC)
    return Query(user, "email", start, 24, zone, (0,), "hour", day_type)


def test_last_and_histogram_baselines_on_a_hand_made_log() -> None:
    rows = [_event("u", "view", T0 + d * 86400 + 9 * H, "web", item="i") for d in range(4)]
    rows.append(_event("u", "view", T0 + 5 * 86400 + 21 * H, "web", item="i"))
    # A burst of ten events in one clock hour counts once.
    rows += [_event("u", "view", T0 + 6 * 86400 + 15 * H + k, "web", item="i") for k in range(10)]
    rows.append(_event("u", "view", T0 + 7 * 86400 + 14 * H, "web", item="i"))
    # An automated open later on is ignored.
    rows.append(_event("u", "message_open", T0 + 8 * 86400 + 3 * H, "email", automated=True))
    answers = hour_baselines(_frame(rows), [_query("u"), _query("nobody")])
    assert answers["last_active_hour"][0] == 14
    assert answers["active_hour_histogram"][0] == 9
    assert answers["global_best_hour"][0] == 9
    # Someone the log never saw gets the global best hour from every baseline.
    assert all(int(a[1]) == 9 for a in answers.values())


def test_hours_are_local_in_the_query_zone() -> None:
    rows = [_event("u", "view", T0 + d * 86400 + 9 * H, "web", item="i") for d in range(3)]
    answers = hour_baselines(_frame(rows), [_query("u", zone="Asia/Tokyo")])
    assert answers["active_hour_histogram"][0] == 18  # 09 UTC is 18 in Tokyo


def test_opens_per_delivery_credits_an_open_to_its_delivery_hour() -> None:
    rows = []
    for d in range(6):
        day = T0 + d * 86400
        rows.append(_event("u", "message_delivered", day + 8 * H, "email"))
        rows.append(_event("u", "message_delivered", day + 17 * H, "email"))
        if d % 2 == 0:  # a morning email is read three hours later, at 11
            rows.append(_event("u", "message_open", day + 11 * H, "email"))
        # Every evening email gets an automated proxy open: ignored.
        rows.append(_event("u", "message_open", day + 17 * H + 30, "email", automated=True))
    answers = hour_baselines(_frame(rows), [_query("u")])
    assert answers["opens_per_delivery"][0] == 8
    assert answers["open_hour_histogram"][0] == 11


def test_reference_heuristic_answers_per_kind_of_day() -> None:
    rows = []
    for d in range(14):  # two weeks from a Monday
        day = T0 + d * 86400
        weekend = d % 7 >= 5
        rows.append(_event("u", "session_start", day + (20 if weekend else 7) * H, "app"))
    answers = hour_baselines(
        _frame(rows), [_query("u", day_type="weekday"), _query("u", day_type="weekend")]
    )
    assert list(answers["reference_heuristic"]) == [7, 20]


def test_channel_baselines() -> None:
    rows = []
    for k in range(6):
        ts = T0 + k * 86400
        rows.append(_event("a", "message_delivered", ts, "email"))
        rows.append(_event("a", "message_open", ts + 60, "email", automated=True))
        if k < 2:
            rows.append(_event("a", "message_open", ts + 600, "email"))
        rows.append(_event("a", "message_delivered", ts + 10, "push"))
        rows.append(_event("a", "message_open", ts + 700, "push"))
        # SMS has no open tracking: clicks count instead.
        rows.append(_event("b", "message_delivered", ts, "sms"))
        if k < 3:
            rows.append(_event("b", "message_click", ts + 100, "sms"))
        rows.append(_event("b", "message_delivered", ts, "email"))
        if k < 1:
            rows.append(_event("b", "message_open", ts + 100, "email"))
    picks = channel_baselines(_frame(rows), ["a", "b", "nobody"])
    assert picks["most_opens_channel"] == ["push", "sms", "push"]
    assert picks["global_best_channel"] == ["push", "push", "push"]


@dataclass
class _Slot:
    local_hour: int


@dataclass
class _Plan:
    slots: list[_Slot]


class _Noon:
    """A stand-in model: always noon, always email."""

    def plan(self, user_id, channel, not_before, window_hours=24, timezone="", quiet=None):
        return _Plan([_Slot(12)])

    def channels(self, user_id: str) -> list[str]:
        return ["email", "push"]


def _check_report(regime: Regime, factory=None) -> None:
    report = evaluate(regime) if factory is None else evaluate(regime, factory)
    expected = {
        MODEL,
        "global_best_hour",
        "active_hour_histogram",
        "own_hours_1h",
        "own_hours_1h_day_type",
        "last_active_hour",
        "open_hour_histogram",
        "opens_per_delivery",
        "reference_heuristic",
    }
    if regime.channel_truth:
        expected |= {"most_opens_channel", "global_best_channel"}
    assert set(report.metrics) == expected
    values = [v for row in report.metrics.values() for v in row.values()]
    assert values and all(math.isfinite(v) and 0 <= v <= 1 for v in values)
    flat = report.flat()
    assert all(k.startswith(f"regime_{regime.name}_") for k in flat)
    assert f"regime_{regime.name}_model_{report.columns[0]}" in flat
    table = report.table()
    assert all(method in table for method in expected)
    assert set(report.versus_best()) == set(report.metrics[MODEL])


def test_harness_with_any_model_factory() -> None:
    regime = weekday_weekend(people=40)
    _check_report(regime, lambda _frame: _Noon())
    report = evaluate(regime, lambda _frame: _Noon())
    saturday = [q for q in regime.queries if q.label == "saturday hour"]
    noon = np.mean([min(abs(q.target_hours[0] - 12), 24 - abs(q.target_hours[0] - 12)) <= 1
                    for q in saturday])  # fmt: skip
    assert report.metrics[MODEL]["hit_1h_saturday_hour"] == pytest.approx(noon)
    truth = np.mean([c == "email" for c in regime.channel_truth.values()])
    assert report.metrics[MODEL]["channel_top1"] == pytest.approx(truth)


@pytest.mark.parametrize("generate", [activity_only, sparse_biased])
def test_harness_with_the_served_model(generate) -> None:
    _check_report(generate(people=60))


# --- the served model against every baseline ----------------------------------------------

#: Where the model does not beat the best baseline, by how much it may trail it, and why
#: (the same exceptions `make bench` prints, at the bench's size).
TIES = {
    # Site bursts only: the held-out days ask for each day's first hour, and the
    # recency-weighted heuristic reaches 0.733 where the model gives 0.728 (a plain rule of
    # the person's own hours 0.72).
    ("activity_only", "hit_1h_day"): 0.01,
    # Against the plain rule of the person's own hours (±1 h, every human open counted at
    # its own time beside their distinct active hours, all history alike): the learnt mix
    # trails it where the validation keeps the mix, or picks the model's own plain rule,
    # which smooths and counts a little differently (model vs rule in the bench: sparse
    # 0.572 vs 0.581, few opens 0.547 vs 0.550, proxied 0.653 vs 0.683 and 0.649 vs 0.682,
    # weekday/weekend 0.677 vs 0.683 and 0.589 vs 0.594, everything 0.487 vs 0.506 and
    # 0.451 vs 0.468, channel hours 0.647 vs 0.655). Issue 24 stays open on exactly this.
    ("sparse_biased", "hit_1h_hour"): 0.015,
    ("few_opens", "hit_1h_hour"): 0.01,
    ("proxy_opens", "hit_1h_hour"): 0.04,
    ("proxy_opens", "hit_1h_proxied_hour"): 0.04,
    ("weekday_weekend", "hit_1h_weekday_hour"): 0.01,
    ("weekday_weekend", "hit_1h_saturday_hour"): 0.01,
    ("everything_at_once", "hit_1h_weekday_hour"): 0.025,
    ("everything_at_once", "hit_1h_saturday_hour"): 0.025,
    ("channel_hours", "hit_1h_hour"): 0.015,
    # With 1-5 opens per person, the message memory chosen on held-out whole days ranks
    # channels a little below the count of opens (0.461 vs 0.492).
    ("few_opens", "channel_top1"): 0.04,
    # Steady people are best served by a long memory, changed people by a short one; the
    # validation picks one memory for everybody, so the steady two thirds trail the plain
    # rule of all their history while the changed third leads by 0.07 (the regime as a
    # whole leads every baseline: test_habit_change_as_a_whole).
    ("habit_change", "hit_1h_steady_hour"): 0.04,
}


@pytest.fixture(scope="module")
def reports() -> dict[str, object]:
    return {name: evaluate(generate()) for name, generate in REGIMES.items()}


@pytest.mark.parametrize("name", list(REGIMES))
def test_the_served_model_beats_every_baseline(reports, name: str) -> None:
    report = reports[name]
    for metric, (best, value, margin) in report.versus_best().items():
        allowed = TIES.get((name, metric), 0.0)
        assert margin > -allowed, (
            f"{name} {metric}: model trails {best} ({value:.3f}) by {-margin:.3f}"
        )
        if not allowed:
            assert margin > 0, f"{name} {metric}: model only ties {best}"


def test_habit_change_as_a_whole(reports) -> None:
    report = reports["habit_change"]
    counts = report.counts
    labels = ("hit_1h_changed_hour", "hit_1h_steady_hour")

    def overall(method: str) -> float:
        row = report.metrics[method]
        return sum(row[m] * counts[m] for m in labels) / sum(counts[m] for m in labels)

    rivals = [m for m, row in report.metrics.items() if m != MODEL and labels[0] in row]
    assert overall(MODEL) > max(overall(m) for m in rivals) + 0.03


def test_the_tuning_learnt_on_a_log_fits_that_log() -> None:
    # Bursty site visits want a different memory and shrinkage than weekday/weekend
    # message readers; each log's own tuning answers it better than the other's.
    from training.engagement import SendTimeModel, learn_tuning

    logs = {
        "activity_only": activity_only(people=600),
        "weekday_weekend": weekday_weekend(people=600),
    }
    tunings = {name: learn_tuning(regime.frame).tuning for name, regime in logs.items()}
    assert tunings["activity_only"] != tunings["weekday_weekend"]

    def score(regime: Regime, tuning: object) -> float:
        report = evaluate(regime, lambda frame: SendTimeModel.fit(frame, tuning=tuning))
        hours = [v for k, v in report.metrics[MODEL].items() if k.startswith("hit_1h")]
        return float(np.mean(hours))

    for name, regime in logs.items():
        other = next(t for n, t in tunings.items() if n != name)
        assert score(regime, tunings[name]) > score(regime, other) + 0.01, name
