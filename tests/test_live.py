"""Hyper-personalisation with real parts: TrackEvents through a real gRPC server into a
real redis-server changes the very next answer; SimilarItems, filters, catalogue
upserts; live events exported and trained on."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import grpc
import pandas as pd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.config import feature_store
from service.registry import ModelRegistry
from tests.conftest import make_settings, publish_log
from training.catalogue_file import load_catalogue
from training.event_log import load_events
from training.export import export_events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live_settings(trained):
    return replace(trained.settings, key_prefix="live", port=0, host="127.0.0.1")


@pytest.fixture(scope="module")
def catalogue(synthetic):
    return load_catalogue(synthetic.items)


@pytest.fixture(scope="module")
def server(live_settings, synthetic):
    store = feature_store(live_settings)
    publish_log(store, synthetic)
    model = ModelRegistry(live_settings).load_alias("champion")
    running = build_server(live_settings, model, store)
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.RecommenderStub(channel)


def items_of(catalogue, category, n):
    return sorted(i for i, m in catalogue.items() if m.get("category") == category)[:n]


def views(user, items, kind="view"):
    return [pb.Event(user_id=user, item_id=i, event_type=kind, channel="app") for i in items]


def test_track_events_counts_and_names_each_rejected_event(stub):
    future = Timestamp(seconds=4_000_000_000)
    reply = stub.TrackEvents(
        pb.TrackEventsRequest(
            events=[
                pb.Event(user_id="t1", item_id="i0001", event_type="view"),
                pb.Event(user_id="t1", item_id="i0002", event_type="teleport"),
                pb.Event(user_id="t1", event_type="purchase"),
                pb.Event(
                    user_id="t1",
                    event_type="session_start",
                    channel="web",
                    timezone="Europe/Berlin",
                ),
                pb.Event(user_id="t1", item_id="i0003", event_type="view", timestamp=future),
                pb.Event(user_id="t1", item_id="i0004", event_type="view", channel="fax"),
            ]
        ),
        timeout=5,
    )
    assert (reply.accepted, reply.rejected) == (2, 4)
    assert [(r.index, r.field) for r in reply.rejections] == [
        (1, "event_type"),
        (2, "item_id"),
        (4, "timestamp"),
        (5, "channel"),
    ]
    assert "teleport" in reply.rejections[0].reason


def test_a_view_tracked_now_changes_the_next_answer(stub, truth, catalogue):
    user = sorted(truth["users"])[3]
    tastes = set(truth["users"][user]["tastes"])
    other = next(c for c in sorted({m["category"] for m in catalogue.values()}) if c not in tastes)
    request = pb.RecommendRequest(user_id=user, limit=50)
    before = stub.Recommend(request, timeout=5)
    fresh = items_of(catalogue, other, 4)
    # In the app a moment ago: she looked at four items of a new category and kept two.
    tracked = views(user, fresh) + views(user, fresh[:2], "favourite")
    stub.TrackEvents(pb.TrackEventsRequest(events=tracked), timeout=5)
    after = stub.Recommend(request, timeout=5)

    def ranks(reply):
        return [n for n, r in enumerate(reply.items) if catalogue[r.item_id]["category"] == other]

    assert [r.item_id for r in after.items[:10]] != [r.item_id for r in before.items[:10]]
    # The new category climbs: more of it in the list, and its best item ranks higher.
    assert len(ranks(after)) > len(ranks(before))
    assert min(ranks(after)) < min(ranks(before), default=50)
    assert {f"recent: {i}" for i in fresh} & {r.reason for r in after.items}


def test_someone_unseen_at_training_with_live_events_gets_personal_items(stub, catalogue):
    items = items_of(catalogue, "bags", 3)
    stub.TrackEvents(pb.TrackEventsRequest(events=views("brand-new-person", items)), timeout=5)
    reply = stub.Recommend(pb.RecommendRequest(user_id="brand-new-person", limit=10), timeout=5)
    assert not any(r.reason in ("popular", "trending") for r in reply.items)
    in_bags = sum(catalogue[r.item_id]["category"] == "bags" for r in reply.items)
    assert in_bags >= 6


def test_what_many_people_do_now_trends_for_strangers(stub, catalogue):
    hot = items_of(catalogue, "watches", 1)[0]
    events = [
        pb.Event(user_id=f"crowd-{n}", item_id=hot, event_type="add_to_cart") for n in range(30)
    ]
    stub.TrackEvents(pb.TrackEventsRequest(events=events), timeout=5)
    reply = stub.Recommend(pb.RecommendRequest(user_id="stranger-x", limit=5), timeout=5)
    assert (reply.items[0].item_id, reply.items[0].reason) == (hot, "trending")
    assert reply.items[-1].reason in ("trending", "popular")


def test_similar_items_share_the_category_and_say_why(stub, catalogue):
    categories = sorted({m["category"] for m in catalogue.values()})
    same = shown = 0
    for item in sorted(catalogue)[:40]:
        reply = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item, limit=10), timeout=5)
        assert len(reply.items) == 10 and item not in {r.item_id for r in reply.items}
        assert {r.reason for r in reply.items} == {f"similar: {item}"}
        assert reply.model_version == "omnirec/1"
        same += sum(
            catalogue[r.item_id]["category"] == catalogue[item]["category"] for r in reply.items
        )
        shown += len(reply.items)
    # By chance about 1 in len(categories) would share the category.
    assert same / shown > 4 / len(categories)


def test_bought_together_comes_from_co_purchases(stub, synthetic):
    frame = load_events(synthetic.events).frame
    bought = frame[frame.event_type == "purchase"]
    pairs = bought.merge(bought, on="user_id")
    pairs = pairs[pairs.item_id_x != pairs.item_id_y]
    top = pairs.groupby(["item_id_x", "item_id_y"]).user_id.nunique().sort_values()
    (anchor, partner), _ = top.index[-1], top.iloc[-1]
    reply = stub.SimilarItems(
        pb.SimilarItemsRequest(item_id=anchor, limit=5, mode="bought_together"), timeout=5
    )
    assert reply.items[0].reason == f"bought together: {anchor}"
    together = [r.item_id for r in reply.items if r.reason.startswith("bought together")]
    assert partner in together


def test_filters_and_stock(stub, truth, catalogue):
    user = sorted(truth["users"])[5]
    only = stub.Recommend(
        pb.RecommendRequest(user_id=user, limit=10, include_categories=["jackets", "boots"]),
        timeout=5,
    )
    assert len(only.items) == 10
    assert {catalogue[r.item_id]["category"] for r in only.items} <= {"jackets", "boots"}
    first = stub.Recommend(pb.RecommendRequest(user_id=user, limit=3), timeout=5).items[0]
    not_those = stub.Recommend(
        pb.RecommendRequest(
            user_id=user, limit=10, exclude_categories=[catalogue[first.item_id]["category"]]
        ),
        timeout=5,
    )
    assert catalogue[first.item_id]["category"] not in {
        catalogue[r.item_id]["category"] for r in not_those.items
    }
    # Sell out the top item: in-stock-only answers never show it, others still may.
    stub.UpsertItems(
        pb.UpsertItemsRequest(items=[pb.Item(item_id=first.item_id, in_stock=False)]), timeout=5
    )
    in_stock = stub.Recommend(
        pb.RecommendRequest(user_id=user, limit=10, in_stock_only=True), timeout=5
    )
    assert first.item_id not in {r.item_id for r in in_stock.items}
    anything = stub.Recommend(pb.RecommendRequest(user_id=user, limit=3), timeout=5)
    assert anything.items[0].item_id == first.item_id
    for r in in_stock.items:
        assert catalogue[r.item_id].get("in_stock", True) or r.item_id != first.item_id


def test_a_new_catalogue_item_shows_up_without_retraining(stub, catalogue):
    reply = stub.UpsertItems(
        pb.UpsertItemsRequest(
            items=[
                pb.Item(
                    item_id="new-sneaker",
                    category="sneakers",
                    title="Runner X",
                    price=99.0,
                    in_stock=True,
                )
            ]
        ),
        timeout=5,
    )
    assert (reply.upserted, reply.created) == (1, 1)
    similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id="new-sneaker", limit=5), timeout=5)
    assert len(similar.items) == 5
    assert {catalogue[r.item_id]["category"] for r in similar.items} == {"sneakers"}
    events = [
        pb.Event(user_id=f"fan-{n}", item_id="new-sneaker", event_type="purchase")
        for n in range(60)
    ]
    stub.TrackEvents(pb.TrackEventsRequest(events=events), timeout=5)
    stranger = stub.Recommend(
        pb.RecommendRequest(user_id="stranger-y", limit=3, include_categories=["sneakers"]),
        timeout=5,
    )
    assert ("new-sneaker", "trending") in {(r.item_id, r.reason) for r in stranger.items}


@pytest.mark.parametrize(
    "call, request_, code, field",
    [
        ("SimilarItems", pb.SimilarItemsRequest(item_id="nope"), "NOT_FOUND", "item_id"),
        (
            "SimilarItems",
            pb.SimilarItemsRequest(item_id="i0001", mode="x"),
            "INVALID_ARGUMENT",
            "mode",
        ),
        ("SimilarItems", pb.SimilarItemsRequest(item_id=""), "INVALID_ARGUMENT", "item_id"),
        (
            "Recommend",
            pb.RecommendRequest(user_id="u", include_categories=[""]),
            "INVALID_ARGUMENT",
            "include_categories",
        ),
        (
            "TrackEvents",
            pb.TrackEventsRequest(events=[pb.Event()] * 1001),
            "INVALID_ARGUMENT",
            "events",
        ),
        (
            "UpsertItems",
            pb.UpsertItemsRequest(items=[pb.Item(item_id="x", price=-1)]),
            "INVALID_ARGUMENT",
            "items[0].price",
        ),
        (
            "UpsertItems",
            pb.UpsertItemsRequest(items=[pb.Item()]),
            "INVALID_ARGUMENT",
            "items[0].item_id",
        ),
    ],
)
def test_bad_input_names_the_field(stub, call, request_, code, field):
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, call)(request_, timeout=5)
    assert err.value.code() == getattr(grpc.StatusCode, code)
    assert err.value.details().startswith(f"{field}:")


def test_nothing_tracked_is_lost_between_retrains(
    stub, live_settings, synthetic, tmp_path, redis_server
):
    store = feature_store(live_settings)
    export_events(store, tmp_path / "warmup")  # what earlier tests tracked
    items = ["i0001", "i0002", "i0003"]
    tracked = views("live-only-person", items) + views("live-only-person", items[:1], "purchase")
    assert stub.TrackEvents(pb.TrackEventsRequest(events=tracked), timeout=5).accepted == 4
    first = export_events(store, tmp_path / "exports")
    assert first.events == 4 and not first.gap
    again = export_events(store, tmp_path / "exports")
    assert again.events == 0
    stub.TrackEvents(pb.TrackEventsRequest(events=views("live-only-person", ["i0004"])), timeout=5)
    second = export_events(store, tmp_path / "exports")
    assert second.events == 1
    exported = load_events(tmp_path / "exports").frame
    assert Counter(exported.event_type.astype(str)) == {"view": 4, "purchase": 1}

    from training.pipeline import TrainConfig, train

    settings = make_settings(redis_server.url, tmp_path / "mlflow", key_prefix="retrain")
    result = train(settings, TrainConfig(events=[synthetic.events, tmp_path / "exports"]))
    bundle = ModelRegistry(settings).load_version(result.version).bundle
    assert "live-only-person" in set(bundle.user_ids.tolist())
    frame = pd.concat([load_events(synthetic.events).frame, exported])
    assert (frame.user_id == "live-only-person").sum() == 5


def test_items_command_updates_the_catalogue(live_settings, tmp_path, monkeypatch):
    from training.__main__ import main as training_main

    items = tmp_path / "items.csv"
    items.write_text("item_id,category,price,in_stock\ni0001,hats,12.5,false\nbrand-new,hats,,\n")
    monkeypatch.setenv("REDIS_URL", live_settings.redis_url)
    monkeypatch.setenv("OMNIREC_KEY_PREFIX", live_settings.key_prefix)
    assert training_main(["items", "--file", str(items)]) == 0
    _, catalogue = feature_store(live_settings).catalogue()
    assert catalogue["i0001"]["category"] == "hats"
    assert catalogue["i0001"]["in_stock"] is False and catalogue["i0001"]["price"] == 12.5
    assert catalogue["brand-new"] == {"category": "hats", "in_stock": True}
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,price\nx,-3\n")
    assert training_main(["items", "--file", str(bad)]) == 2
