"""The synthetic event generator: file contract, determinism, and the planted signals."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from service.errors import BadInput
from service.events import (
    CHANNELS,
    CLIENT_EVENT_TYPES,
    COLUMNS,
    ENGAGEMENT_EVENT_TYPES,
    EVENT_TYPES,
    ITEM_EVENT_TYPES,
    MESSAGE_CHANNELS,
    is_valid_timezone,
)
from training.synthetic import DEFAULT_END, GeneratedData, generate

DAY = 86_400


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> GeneratedData:
    return generate(300, 200, 30, seed=11, out_dir=tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def events(small: GeneratedData) -> pd.DataFrame:
    return pd.read_parquet(small.events)


@pytest.fixture(scope="module")
def catalogue(small: GeneratedData) -> pd.DataFrame:
    return pd.read_parquet(small.items)


@pytest.fixture(scope="module")
def truth(small: GeneratedData) -> dict:
    return json.loads(small.truth.read_text())


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict]:
    """Few users over a year: enough messages per person to see their own best hour."""
    data = generate(100, 60, 365, seed=5, out_dir=tmp_path_factory.mktemp("year"))
    return pd.read_parquet(data.events), json.loads(data.truth.read_text())


def _local_hours(frame: pd.DataFrame) -> np.ndarray:
    """Fractional local wall-clock hour of each event, DST-correct via pandas."""
    utc = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    hours = np.empty(len(frame))
    for zone, rows in frame.groupby("timezone").indices.items():
        local = utc.iloc[rows].dt.tz_convert(zone)
        hours[rows] = local.dt.hour + local.dt.minute / 60 + local.dt.second / 3600
    return hours


def _circular(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Signed distance a - b between hours on a 24-hour clock, in [-12, 12)."""
    return (np.asarray(a) - np.asarray(b) + 12) % 24 - 12


def _taste_flags(frame: pd.DataFrame, catalogue: pd.DataFrame, truth: dict) -> np.ndarray:
    category = frame["item_id"].map(dict(zip(catalogue.item_id, catalogue.category, strict=True)))
    return np.array(
        [c in truth["users"][u]["tastes"] for u, c in zip(frame.user_id, category, strict=True)]
    )


def test_writes_the_three_files_in_contract_order(small: GeneratedData) -> None:
    assert small.events.name == "events.parquet"
    assert small.items.name == "items.parquet"
    assert small.truth.name == "truth.json"
    schema = pq.read_schema(small.events)
    assert tuple(schema.names) == COLUMNS
    assert str(schema.field("timestamp").type) == "int64"
    assert str(schema.field("value").type) == "double"
    for name in ("user_id", "item_id", "event_type", "channel", "timezone"):
        assert str(schema.field(name).type) == "string"
    assert str(schema.field("automated").type) == "bool"
    items = pq.read_schema(small.items)
    assert items.names == ["item_id", "category", "title", "price", "in_stock"]
    assert str(items.field("in_stock").type) == "bool"


def test_events_use_only_the_vocabulary(events: pd.DataFrame) -> None:
    assert set(events.event_type) <= set(EVENT_TYPES)
    assert set(events.channel) <= set(CHANNELS)
    assert all(is_valid_timezone(zone) for zone in events.timezone.unique())
    messages = events[events.event_type.str.startswith("message_")]
    assert set(messages.channel) == set(MESSAGE_CHANNELS)
    sessions = events[events.event_type == "session_start"]
    assert set(sessions.channel) == {"web", "app", "store"}
    assert set(events.event_type) == set(CLIENT_EVENT_TYPES), "every client event type occurs"
    assert events.user_id.str.fullmatch(r"u\d{5}").all()


def test_item_events_carry_items_and_the_others_do_not(
    events: pd.DataFrame, catalogue: pd.DataFrame
) -> None:
    about_items = events.event_type.isin(ITEM_EVENT_TYPES)
    assert set(events.item_id[about_items]) <= set(catalogue.item_id)
    assert (events.item_id[events.event_type.isin(ENGAGEMENT_EVENT_TYPES)] == "").all()

    priced = events.event_type.isin(["add_to_cart", "purchase"])
    assert events.value[~priced].isna().all()
    price = events.item_id[priced].map(dict(zip(catalogue.item_id, catalogue.price, strict=True)))
    np.testing.assert_allclose(events.value[priced], price)


def test_timestamps_are_sorted_and_inside_the_window(events: pd.DataFrame, truth: dict) -> None:
    end = int(DEFAULT_END.timestamp())
    assert (truth["start"], truth["end"]) == (end - 30 * DAY, end)
    assert events.timestamp.is_monotonic_increasing
    assert events.timestamp.min() >= end - 30 * DAY
    assert events.timestamp.max() < end
    # Activity is spread over the whole window, not bunched at one end.
    days = (events.timestamp - (end - 30 * DAY)) // DAY
    assert days.nunique() == 30


def test_a_naive_end_is_taken_as_utc(tmp_path: Path) -> None:
    end = datetime(2025, 3, 15, 12, 30)
    data = generate(20, 20, 3, seed=1, out_dir=tmp_path, end=end)
    stamps = pd.read_parquet(data.events).timestamp
    end_ts = int(end.replace(tzinfo=UTC).timestamp())
    assert stamps.min() >= end_ts - 3 * DAY
    assert stamps.max() < end_ts


def test_effects_follow_their_causes(events: pd.DataFrame) -> None:
    def preceded(effect: str, cause: str, by: list[str]) -> bool:
        later = events[events.event_type == effect]
        earlier = events[events.event_type == cause].assign(cause_ts=lambda f: f.timestamp)
        linked = pd.merge_asof(
            later, earlier[[*by, "timestamp", "cause_ts"]], on="timestamp", by=by
        )
        return bool(linked.cause_ts.notna().all())

    assert preceded("purchase", "add_to_cart", ["user_id", "item_id"])
    assert preceded("add_to_cart", "view", ["user_id", "item_id"])
    assert preceded("message_open", "message_delivered", ["user_id", "channel"])
    assert preceded("message_click", "message_open", ["user_id", "channel"])
    assert preceded("view", "session_start", ["user_id"])


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    first = generate(80, 50, 10, seed=3, out_dir=tmp_path / "a")
    again = generate(80, 50, 10, seed=3, out_dir=tmp_path / "b")
    other = generate(80, 50, 10, seed=4, out_dir=tmp_path / "c")
    for name in ("events", "items", "truth"):
        assert getattr(first, name).read_bytes() == getattr(again, name).read_bytes()
    assert not pd.read_parquet(first.events).equals(pd.read_parquet(other.events))


def test_csv_holds_the_same_rows_as_parquet(tmp_path: Path) -> None:
    parquet = generate(60, 40, 7, seed=2, out_dir=tmp_path / "p")
    csv = generate(60, 40, 7, seed=2, out_dir=tmp_path / "c", fmt="csv")
    assert csv.events.name == "events.csv"
    for name in ("events", "items"):
        expected = pq.read_table(getattr(parquet, name))
        options = pacsv.ConvertOptions(column_types=expected.schema)
        assert pacsv.read_csv(getattr(csv, name), convert_options=options).equals(expected)
    assert csv.truth.read_text() == parquet.truth.read_text()


def test_tiny_sizes_work(tmp_path: Path) -> None:
    data = generate(1, 1, 1, seed=0, out_dir=tmp_path)
    truth = json.loads(data.truth.read_text())
    assert list(truth["users"]) == ["u00000"]
    assert len(truth["users"]["u00000"]["tastes"]) == 1
    assert pd.read_parquet(data.items).item_id.tolist() == ["i0000"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"users": 0}, "users"),
        ({"items": -1}, "items"),
        ({"days": 0}, "days"),
        ({"days": 2.5}, "days"),
        ({"fmt": "json"}, "format"),
    ],
)
def test_bad_arguments_name_the_field(tmp_path: Path, kwargs: dict, field: str) -> None:
    arguments = {"users": 5, "items": 5, "days": 1, "seed": 0, "out_dir": tmp_path} | kwargs
    with pytest.raises(BadInput) as raised:
        generate(**arguments)
    assert raised.value.field == field
    assert not list(tmp_path.iterdir()), "nothing is written for bad input"


def test_truth_describes_every_user(events: pd.DataFrame, truth: dict) -> None:
    assert truth["seed"] == 11
    assert len(truth["users"]) == 300
    assert set(events.user_id) <= set(truth["users"])
    assert len(truth["categories"]) == 12
    for user in truth["users"].values():
        assert 1 <= len(user["tastes"]) <= 3
        assert len(set(user["tastes"])) == len(user["tastes"])
        assert set(user["tastes"]) <= set(truth["categories"])
        assert 7 <= user["active_hour_local"] <= 22
        assert user["preferred_channel"] in MESSAGE_CHANNELS
        assert set(user["open_rate"]) == set(MESSAGE_CHANNELS)
        assert isinstance(user["proxy_opens"], bool)
    proxies = sum(user["proxy_opens"] for user in truth["users"].values())
    assert 0.2 < proxies / 300 < 0.4
    zones = {user["timezone"] for user in truth["users"].values()}
    assert len(zones) == 6
    per_user_zone = events.groupby("user_id").timezone.agg(set)
    assert all(zone == {truth["users"][u]["timezone"]} for u, zone in per_user_zone.items())


def test_catalogue_is_skewed_and_mostly_in_stock(
    events: pd.DataFrame, catalogue: pd.DataFrame, truth: dict
) -> None:
    assert catalogue.item_id.is_unique
    assert set(catalogue.category) == set(truth["categories"])
    assert (catalogue.price > 0).all()
    assert 0.03 <= 1 - catalogue.in_stock.mean() <= 0.2
    # Zipf-like popularity: the top tenth of items draws a large share of the views.
    views = events[events.event_type == "view"].item_id.value_counts()
    assert views.iloc[: len(catalogue) // 10].sum() > 0.3 * views.sum()


def test_views_follow_planted_tastes(
    events: pd.DataFrame, catalogue: pd.DataFrame, truth: dict
) -> None:
    views = events[events.event_type == "view"]
    in_taste = pd.Series(_taste_flags(views, catalogue, truth), index=views.index)
    share = in_taste.groupby(views.user_id).mean()
    assert (share > 0.5).mean() > 0.9
    assert 0.7 < in_taste.mean() < 0.95, "a fifth of views come from global popularity"


def test_funnel_narrows_and_converts_better_on_taste(
    events: pd.DataFrame, catalogue: pd.DataFrame, truth: dict
) -> None:
    counts = events.event_type.value_counts()
    assert counts["view"] > counts["add_to_cart"] > counts["purchase"] > 0
    assert counts["view"] > counts["favourite"] > counts["dislike"] > 0
    assert 0.05 < counts["add_to_cart"] / counts["view"] < 0.2
    assert 0.25 < counts["purchase"] / counts["add_to_cart"] < 0.6

    def cart_rate(taste: bool) -> float:
        rates = {}
        for kind in ("view", "add_to_cart"):
            frame = events[events.event_type == kind]
            rates[kind] = (_taste_flags(frame, catalogue, truth) == taste).sum()
        return rates["add_to_cart"] / rates["view"]

    assert cart_rate(True) > 1.5 * cart_rate(False)
    dislikes = events[events.event_type == "dislike"]
    assert not _taste_flags(dislikes, catalogue, truth).any()


def test_some_users_are_heavy_and_some_light(events: pd.DataFrame) -> None:
    sessions = events[events.event_type == "session_start"].user_id.value_counts()
    assert sessions.quantile(0.9) > 3 * sessions.quantile(0.1)
    assert 0.5 < sessions.sum() / (300 * 30) < 0.9, "about 0.7 sessions per user and day"


def test_sessions_happen_around_the_active_hour_across_dst(year: tuple) -> None:
    events, truth = year
    starts = events[events.event_type == "session_start"]
    active = starts.user_id.map(lambda u: truth["users"][u]["active_hour_local"])
    offset = _circular(_local_hours(starts), active.to_numpy())
    month = pd.to_datetime(starts.timestamp, unit="s").dt.month.to_numpy()
    assert (np.abs(offset) < 4).mean() > 0.95
    # A zone offset off by the DST hour in half the year would shift one of these by ~1h.
    for zone in ("Europe/Berlin", "America/New_York", "Australia/Sydney"):
        in_zone = (starts.timezone == zone).to_numpy()
        for season in ((1, 2, 12), (6, 7, 8)):
            chosen = in_zone & np.isin(month, season)
            assert abs(offset[chosen].mean()) < 0.3, (zone, season)


def test_the_brand_mostly_sends_at_its_fixed_hours(events: pd.DataFrame, truth: dict) -> None:
    sent = events[events.event_type == "message_delivered"]
    at_send_hours = ((sent.timestamp // 3600) % 24).isin(truth["send_hours_utc"])
    assert 0.65 < at_send_hours.mean() < 0.85
    per_channel = sent.channel.value_counts()
    assert per_channel["email"] > per_channel["sms"]


def _deliveries_with_opens(events: pd.DataFrame) -> pd.DataFrame:
    """Deliveries with their local hour and whether an open followed on the same channel."""
    sent = events[events.event_type == "message_delivered"].copy()
    opens = events[(events.event_type == "message_open") & ~events.automated]
    sent["sent_ts"] = sent.timestamp
    linked = pd.merge_asof(
        opens,
        sent[["user_id", "channel", "timestamp", "sent_ts"]],
        on="timestamp",
        by=["user_id", "channel"],
    )
    opened = set(zip(linked.user_id, linked.channel, linked.sent_ts, strict=True))
    sent["opened"] = [
        key in opened for key in zip(sent.user_id, sent.channel, sent.sent_ts, strict=True)
    ]
    sent["hour"] = _local_hours(sent).astype(int)
    return sent


def test_open_rate_reveals_the_active_hour_that_open_counts_hide(year: tuple) -> None:
    events, truth = year
    sent = _deliveries_with_opens(events)
    opens = events[(events.event_type == "message_open") & ~events.automated]
    open_hours = pd.Series(_local_hours(opens).astype(int), index=opens.index)
    window = np.zeros(24)
    window[[-2, -1, 0, 1, 2]] = 1  # a five-hour circular window evens out noise

    def smoothed(counts: np.ndarray) -> np.ndarray:
        return np.array([np.roll(window, h) @ counts for h in range(24)])

    by_rate, by_count, trapped = [], [], []
    for user, mine in sent.groupby("user_id"):
        opened_at = np.bincount(open_hours[opens.user_id == user], minlength=24)
        if opened_at.sum() < 5:
            continue
        planted = truth["users"][user]["active_hour_local"]
        delivered = np.bincount(mine.hour, minlength=24)
        opened = np.bincount(mine.hour, weights=mine.opened, minlength=24)
        rate = smoothed(opened) / np.maximum(smoothed(delivered), 1)
        by_rate.append(abs(_circular(np.argmax(rate), planted)))
        by_count.append(abs(_circular(np.argmax(opened_at), planted)))
        # Where the brand's busiest local hours are far from the person's hour.
        busy = np.argsort(delivered)[-3:]
        trapped.append(np.abs(_circular(busy, planted)).min() >= 3)

    by_rate, by_count, trapped = map(np.array, (by_rate, by_count, trapped))
    assert len(by_rate) >= 80
    assert by_rate.mean() + 0.5 < by_count.mean()
    assert (by_rate <= by_count).mean() > 0.6
    assert trapped.sum() >= 20
    assert (by_rate[trapped] < by_count[trapped]).mean() > 0.7


def test_preferred_channel_has_the_best_open_rate(year: tuple) -> None:
    events, truth = year
    sent = _deliveries_with_opens(events)
    best = sent.groupby(["user_id", "channel"]).opened.mean().unstack().idxmax(axis=1)
    preferred = best.index.map(lambda u: truth["users"][u]["preferred_channel"])
    assert (best == preferred).mean() > 0.85


def test_privacy_proxies_open_email_at_once_for_their_users_only(
    events: pd.DataFrame, truth: dict
) -> None:
    automated = events[events.automated]
    assert len(automated) > 0
    assert set(automated.event_type) == {"message_open"}
    assert set(automated.channel) == {"email"}
    proxied = {user for user, planted in truth["users"].items() if planted["proxy_opens"]}
    assert set(automated.user_id) <= proxied

    # Each automated open follows an email delivery to the same person within a minute,
    # and each such delivery (unless cut off by the window's end) is followed by one.
    sent = events[(events.event_type == "message_delivered") & (events.channel == "email")]
    sent = sent[["user_id", "timestamp"]].assign(sent_ts=sent.timestamp)
    fetches = automated[["user_id", "timestamp"]].assign(fetch_ts=automated.timestamp)
    back = pd.merge_asof(fetches, sent, on="timestamp", by="user_id")
    assert (back.fetch_ts - back.sent_ts).between(0, 60).all()
    to_proxies = sent[sent.user_id.isin(proxied)]
    ahead = pd.merge_asof(to_proxies, fetches, on="timestamp", by="user_id", direction="forward")
    in_time = (ahead.fetch_ts - ahead.sent_ts).between(0, 60)
    assert in_time[(ahead.sent_ts < truth["end"] - 60).to_numpy()].all()
    assert (to_proxies.sent_ts < truth["end"] - 60).sum() <= len(automated) <= len(to_proxies)

    # People's own opens are unchanged: not flagged, and proxies have them too.
    human = events[(events.event_type == "message_open") & ~events.automated]
    assert human.user_id.isin(proxied).any()
    assert not events[events.event_type != "message_open"].automated.any()
