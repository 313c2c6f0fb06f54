"""Approximate search for large catalogues (``service/ann.py``): index build and its
measured effort, the setting and its threshold, the bundle round trip, Recommend over
candidates (filters, exclusions and blends exact), and one real gRPC server serving a
bundle with an index.

The catalogues are small and clustered (items around a few topic centres, lengths spread
as popularity spreads them), with the index forced on by naming its kind."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import grpc
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service import ann
from service.api.server import build_server
from service.bundle import ModelBundle
from service.catalogue import Catalogue, ItemFilter
from service.config import feature_store, load_settings, settings_table
from service.errors import ConfigError, OmnirecError
from service.recommender import ANN_MIN_FETCH, RankingOptions, Recommender, ServingParams
from service.registry import ServedModel
from service.store.codecs import UserFeatures
from service.store.reads import ServingView
from tests.conftest import make_settings
from training.event_log import load_events, write_events
from training.publish import publish

ITEMS = 3000
FACTORS = 16
TOPICS = 30
USERS = 300
CATEGORIES = 10
#: Any event before this is long past: nothing counts as recently seen.
PAST = 1_700_000_000


class World:
    """A clustered ALS bundle, its catalogue and people whose histories stay in a topic."""

    def __init__(self, seed: int = 3, transitions: bool = False) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.centres = centres = rng.standard_normal((TOPICS, FACTORS)).astype(np.float32)
        self.topic = rng.integers(0, TOPICS, ITEMS)
        items = centres[self.topic] + 0.4 * rng.standard_normal((ITEMS, FACTORS))
        items *= np.exp(0.3 * rng.standard_normal((ITEMS, 1)))
        self.user_topic = rng.integers(0, TOPICS, USERS)
        users = centres[self.user_topic] + 0.3 * rng.standard_normal((USERS, FACTORS))
        self.item_ids = np.array([f"i{j:04d}" for j in range(ITEMS)])
        meta = {"params": {"alpha": 1.0, "regularization": 0.5}}
        extra = {}
        if transitions:
            extra["transitions"] = sp.random(
                ITEMS, ITEMS, density=0.003, random_state=seed, format="csr", dtype=np.float32
            )
            meta["serving"] = {"transition_weight": 0.5}
        self.bundle = ModelBundle(
            "als",
            np.array([f"u{k:03d}" for k in range(USERS)]),
            self.item_ids,
            (users / 4).astype(np.float32),
            (items / 4).astype(np.float32),
            metadata=meta,
            **extra,
        )
        self.catalogue = Catalogue(
            1,
            {
                item: {"category": f"c{j % CATEGORIES}", "in_stock": j % 4 != 0}
                for j, item in enumerate(self.item_ids.tolist())
            },
        )

    def history(self, k: int, events: int = 25) -> list[tuple[str, str, int]]:
        """Person ``k``'s history (newest first): items of their topic, a purchase last."""
        mine = np.flatnonzero(self.topic == self.user_topic[k])
        picked = np.random.default_rng([self.seed, k]).choice(
            mine, min(events, len(mine)), replace=False
        )
        kinds = ["view"] * (len(picked) - 1) + ["purchase"]
        return [
            (str(self.item_ids[j]), kind, PAST - n * 60)
            for n, (j, kind) in enumerate(zip(picked, kinds, strict=True))
        ]

    def view(self, k: int, history: list[tuple[str, str, int]] | None = None) -> ServingView:
        history = self.history(k) if history is None else history
        bought = {item for item, kind, _ in history if kind == "purchase"}
        return ServingView("p", UserFeatures(list(history), bought), [])


@pytest.fixture(scope="module")
def world() -> World:
    w = World()
    w.bundle.ann = ann.build(w.bundle.item_factors, ann.HNSW, w.bundle.user_factors)
    return w


def answers(recommender: Recommender, world: World, k: int, options: RankingOptions):
    history = world.history(k)
    return recommender.recommend(f"u{k:03d}", world.view(k, history), world.catalogue, options)


def ids(ranked) -> list[str]:
    return [r.item_id for r in ranked]


# --- the setting and its threshold -----------------------------------------------------


def test_setting_picks_the_index_by_kind_and_size():
    big = ann.AUTO_MIN_ITEMS + 1
    assert ann.wanted("auto", "als", ann.AUTO_MIN_ITEMS) is None
    assert ann.wanted("auto", "als", big) == ann.KINDS[0]
    assert ann.wanted("auto", "bpr", big) == ann.KINDS[0]
    assert ann.wanted("off", "als", big) is None
    assert ann.wanted("ivf", "als", 10) == "ivf"
    # Only factor models have vectors to search.
    assert ann.wanted("hnsw", "item_knn", big) is None
    assert ann.wanted("auto", "ease", big) is None
    with pytest.raises(ValueError, match="OMNIREC_ANN"):
        ann.wanted("fast", "als", big)


def test_bad_setting_is_one_line_naming_the_variable():
    assert load_settings({"OMNIREC_ANN": "hnsw"}).ann == "hnsw"
    assert load_settings({}).ann == "auto"
    with pytest.raises(ConfigError) as raised:
        load_settings({"OMNIREC_ANN": "faiss"})
    message = str(raised.value)
    assert message.startswith("OMNIREC_ANN='faiss'") and "\n" not in message
    # The documented threshold is the one the code uses.
    assert f"{ann.AUTO_MIN_ITEMS:,}" in settings_table()


def test_auto_serves_the_shipped_index_only_above_the_threshold(world, monkeypatch, caplog):
    auto = ServingParams(ann="auto")
    assert Recommender(world.bundle, auto)._ann is None
    assert Recommender(world.bundle, ServingParams(ann="off"))._ann is None
    assert Recommender(world.bundle)._ann is None  # library use: exact
    monkeypatch.setattr(ann, "AUTO_MIN_ITEMS", ITEMS - 1)
    assert Recommender(world.bundle, auto)._ann is world.bundle.ann
    # Above the threshold without an index (an older bundle): exact, and it says so.
    older = replace(world.bundle, ann=None)
    with caplog.at_level(logging.WARNING, logger="service.ann"):
        assert Recommender(older, auto)._ann is None
    assert "ships no index" in caplog.text


def test_a_named_kind_is_built_at_start_when_the_bundle_lacks_it(world):
    served = Recommender(world.bundle, ServingParams(ann="ivf"))._ann
    assert served is not None and served.kind == "ivf" and served.size == ITEMS
    assert Recommender(world.bundle, ServingParams(ann="hnsw"))._ann is world.bundle.ann


def test_training_ships_an_index_only_where_serving_would_search_one(world):
    assert ann.training_index(world.bundle, "auto") is None
    assert ann.training_index(world.bundle, "off") is None
    built = ann.training_index(world.bundle, "ivf")
    assert built is not None and built.kind == "ivf"


# --- building and measuring ------------------------------------------------------------


@pytest.mark.parametrize("kind", ann.KINDS)
def test_build_measures_the_effort_that_reaches_the_target(world, kind):
    index = ann.build(world.bundle.item_factors, kind, world.bundle.user_factors)
    facts = index.describe()
    assert facts["kind"] == kind and facts["items"] == ITEMS
    assert facts["recall_at_10"] >= ann.TARGET_RECALL
    assert facts["effort"] == index.effort >= 1
    # Fresh queries the build never saw find the exact top 10 too.
    rng = np.random.default_rng(9)
    queries = world.centres[rng.integers(0, TOPICS, 100)] + 0.3 * rng.standard_normal(
        (100, FACTORS)
    )
    exact = ann.exact_top(world.bundle.item_factors, queries, 10)
    found = np.array([index.search(q, 10) for q in queries])
    assert ann.recall_of(found, exact) >= 0.95


def test_exact_top_works_across_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    items = rng.standard_normal((1000, 8)).astype(np.float32)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    monkeypatch.setattr(ann, "EXACT_CHUNK", 64)
    expected = np.argsort(-(queries @ items.T), axis=1)[:, :10]
    assert ann.recall_of(ann.exact_top(items, queries, 10), expected) == 1.0


# --- the bundle round trip -------------------------------------------------------------


@pytest.mark.parametrize("kind", ann.KINDS)
def test_bundle_round_trip_with_and_without_an_index(world, tmp_path, kind):
    index = world.bundle.ann if kind == ann.HNSW else ann.build(world.bundle.item_factors, kind)
    loaded = ModelBundle.load(replace(world.bundle, ann=index).save(tmp_path / "with"))
    assert loaded.ann is not None
    assert loaded.ann.describe() == index.describe()
    query = world.bundle.user_factors[7]
    assert loaded.ann.search(query, 20).tolist() == index.search(query, 20).tolist()
    manifest = json.loads((tmp_path / "with" / "manifest.json").read_text())
    assert manifest["ann"]["kind"] == kind

    # Bundles without one (older runs, small catalogues) load as before.
    plain = ModelBundle.load(replace(world.bundle, ann=None).save(tmp_path / "without"))
    assert plain.ann is None
    assert "ann" not in json.loads((tmp_path / "without" / "manifest.json").read_text())
    with np.load(tmp_path / "without" / "arrays.npz") as npz:
        assert "ann_index" not in npz.files


def test_bundle_refuses_an_index_that_does_not_fit(world):
    with pytest.raises(OmnirecError, match="does not match"):
        replace(
            world.bundle,
            user_factors=world.bundle.user_factors[:, :8],
            item_factors=world.bundle.item_factors[:, :8],
        )
    similarity = sp.identity(ITEMS, format="csr", dtype=np.float32)
    with pytest.raises(OmnirecError, match="no factors"):
        ModelBundle(
            "item_knn",
            world.bundle.user_ids,
            world.item_ids,
            similarity=similarity,
            ann=world.bundle.ann,
        )


# --- Recommend over candidates ---------------------------------------------------------


def test_plain_answers_find_the_exact_top_items(world):
    exact = Recommender(world.bundle)
    approximate = Recommender(world.bundle, ServingParams(ann="hnsw"))
    options = RankingOptions(10)
    hits = 0
    for k in range(60):
        want, got = answers(exact, world, k, options), answers(approximate, world, k, options)
        hits += len(set(ids(want)) & set(ids(got)))
        # Same items, same scores and reasons: only which items were looked at differs.
        by_id = {r.item_id: r for r in want}
        for r in got:
            if r.item_id in by_id:
                assert r.score == pytest.approx(by_id[r.item_id].score, rel=1e-9)
                assert r.reason == by_id[r.item_id].reason
    assert hits / 600 >= 0.95


def test_filters_and_exclusions_stay_exact(world):
    approximate = Recommender(world.bundle, ServingParams(ann="hnsw"))
    k = 5
    history = world.history(k)
    bought = {item for item, kind, _ in history if kind == "purchase"}
    plain = answers(approximate, world, k, RankingOptions(10))
    unwanted = frozenset(ids(plain)[:3])
    item_filter = ItemFilter(frozenset({"c2", "c5"}), frozenset(), unwanted, in_stock_only=True)
    got = approximate.recommend(
        f"u{k:03d}", world.view(k, history), world.catalogue, RankingOptions(10, item_filter)
    )
    assert len(got) == 10
    for r in got:
        meta = world.catalogue.meta(r.item_id)
        assert meta["category"] in ("c2", "c5") and meta["in_stock"]
        assert r.item_id not in unwanted and r.item_id not in bought


def test_too_few_survivors_fetch_more_then_score_every_item(world, monkeypatch):
    approximate = Recommender(world.bundle, ServingParams(ann="hnsw"))
    asked: list[int] = []
    search = approximate._ann.search

    def counting(vector, k):
        asked.append(k)
        return search(vector, k)

    monkeypatch.setattr(approximate._ann, "search", counting)
    k = 8
    # A filter on metadata passes a share of the candidates: four times as many are asked.
    one = ItemFilter(frozenset({"c3"}))
    got = answers(approximate, world, k, RankingOptions(10, one))
    assert len(got) == 10 and {world.catalogue.category(r.item_id) for r in got} == {"c3"}
    assert asked == [4 * ANN_MIN_FETCH]

    # A handful of items far from the person: the index is asked for four times as many
    # each round, up to all of it here, then every item is scored: the exact answer.
    far = np.flatnonzero(world.topic != world.user_topic[k])[:4]
    sliver = {str(world.item_ids[j]) for j in far}
    catalogue = Catalogue(
        2,
        {
            item: {"category": "rare" if item in sliver else "common"}
            for item in world.item_ids.tolist()
        },
    )
    options = RankingOptions(10, ItemFilter(frozenset({"rare"})))
    history = world.history(k)
    asked.clear()
    got = approximate.recommend(f"u{k:03d}", world.view(k, history), catalogue, options)
    want = Recommender(world.bundle).recommend(
        f"u{k:03d}", world.view(k, history), catalogue, options
    )
    assert ids(got) == ids(want) and set(ids(got)[:4]) == sliver
    assert asked == [4 * ANN_MIN_FETCH * 4**n for n in range(len(asked))]
    assert asked[-1] >= ITEMS > asked[-2]


def test_transition_blend_is_applied_as_exactly_as_without_the_index():
    w = World(seed=5, transitions=True)
    w.bundle.ann = ann.build(w.bundle.item_factors, ann.HNSW, w.bundle.user_factors)
    exact = Recommender(w.bundle)
    approximate = Recommender(w.bundle, ServingParams(ann="hnsw"))
    hits = after = 0
    for k in range(40):
        want = answers(exact, w, k, RankingOptions(10))
        got = answers(approximate, w, k, RankingOptions(10))
        hits += len(set(ids(want)) & set(ids(got)))
        by_id = {r.item_id: r for r in want}
        for r in got:
            after += r.reason.startswith("after: ")
            if r.item_id in by_id:
                assert r.score == pytest.approx(by_id[r.item_id].score, rel=1e-9)
                assert r.reason == by_id[r.item_id].reason
    assert hits / 400 >= 0.95
    assert after > 0  # the transition part did win places


def test_a_known_person_without_history_is_served_from_their_trained_row(world):
    exact = Recommender(world.bundle)
    approximate = Recommender(world.bundle, ServingParams(ann="hnsw"))

    def nobody() -> ServingView:
        return ServingView("p", UserFeatures([], set()), [("i0001", 1.0)])

    options = RankingOptions(10)
    hits = 0
    for k in range(30):
        want = exact.recommend(f"u{k:03d}", nobody(), world.catalogue, options)
        got = approximate.recommend(f"u{k:03d}", nobody(), world.catalogue, options)
        hits += len(set(ids(want)) & set(ids(got)))
        assert all(r.reason == "personalised" for r in got)
    assert hits / 300 >= 0.95
    # A stranger with no history still gets the popular fallback.
    assert ids(approximate.recommend("stranger", nobody(), world.catalogue, options)) == ["i0001"]


def test_a_context_item_is_scored_exactly(world):
    exact = Recommender(world.bundle)
    approximate = Recommender(world.bundle, ServingParams(ann="hnsw"))
    options = RankingOptions(10, context_item_id="i0042")
    assert ids(answers(approximate, world, 3, options)) == ids(answers(exact, world, 3, options))


# --- through the real server -----------------------------------------------------------


@pytest.fixture(scope="module")
def served(redis_server, world, tmp_path_factory) -> Iterator[pb_grpc.RecommenderStub]:
    """A server with ``OMNIREC_ANN=hnsw`` on the world's bundle (saved and loaded), with
    the people's histories and the catalogue published to Redis."""
    root = tmp_path_factory.mktemp("ann")
    settings = make_settings(
        redis_server.url, root, key_prefix="annit", port=0, host="127.0.0.1", ann="hnsw"
    )
    settings = replace(settings, model_poll_seconds=0)
    store = feature_store(settings)
    rows = [
        {"user_id": f"u{k:03d}", "item_id": item, "event_type": kind, "timestamp": ts}
        for k in range(20)
        for item, kind, ts in world.history(k)
    ]
    write_events(pd.DataFrame(rows), root / "events.csv")
    publish(
        store,
        load_events(root / "events.csv").frame,
        dict(world.catalogue.items),
        {"view": 1.0, "purchase": 10.0},
        {"model_version": "1"},
        history_length=settings.history_length,
        popularity_half_life_days=30.0,
        keep=settings.keep_publications,
    )
    bundle = ModelBundle.load(world.bundle.save(root / "bundle"))
    running = build_server(settings, ServedModel("omnirec", "1", "ann-run", bundle), store)
    try:
        assert running.models.engine.recommender._ann is not None
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield pb_grpc.RecommenderStub(channel)
    finally:
        running.stop(grace=1)


@pytest.mark.integration
def test_served_answers_keep_filters_and_follow_live_events(served, world):
    user = "u004"
    first = served.Recommend(pb.RecommendRequest(user_id=user, limit=10))
    assert len(first.items) == 10 and first.model_version == "omnirec/1"
    bought = {item for item, kind, _ in world.history(4) if kind == "purchase"}
    shown = [i.item_id for i in first.items]

    filtered = served.Recommend(
        pb.RecommendRequest(
            user_id=user,
            limit=10,
            include_categories=["c1", "c7"],
            in_stock_only=True,
            exclude_item_ids=shown[:5],
        )
    )
    assert len(filtered.items) == 10
    for item in filtered.items:
        meta = world.catalogue.meta(item.item_id)
        assert meta["category"] in ("c1", "c7") and meta["in_stock"]
        assert item.item_id not in shown[:5] and item.item_id not in bought

    # Live events from another topic move the folded-in vector: the next answer changes.
    elsewhere = np.flatnonzero(world.topic != world.user_topic[4])[:15]
    events = [
        pb.Event(user_id=user, item_id=str(world.item_ids[j]), event_type="purchase")
        for j in elsewhere
    ]
    accepted = served.TrackEvents(pb.TrackEventsRequest(events=events))
    assert accepted.accepted == len(events)
    deadline = time.monotonic() + 5
    after = first
    while [i.item_id for i in after.items] == shown and time.monotonic() < deadline:
        time.sleep(0.05)
        after = served.Recommend(pb.RecommendRequest(user_id=user, limit=10))
    moved = [i.item_id for i in after.items]
    assert moved != shown
    live = {str(world.item_ids[j]) for j in elsewhere}
    assert not live & set(moved)  # just bought: left out, exactly


@pytest.mark.integration
def test_training_ships_the_index_the_setting_names(redis_server, synthetic, tmp_path):
    from service.registry import ModelRegistry
    from training.pipeline import TrainConfig, train

    settings = make_settings(redis_server.url, tmp_path, key_prefix="anntrain", ann="hnsw")
    config = TrainConfig(events=synthetic.events, items=synthetic.items, publish=False)
    result = train(settings, config)
    assert result.kind == "als"
    registry = ModelRegistry(settings)
    bundle = registry.load_version(result.version).bundle
    assert bundle.ann is not None and bundle.ann.kind == "hnsw"
    assert bundle.ann.size == len(bundle.item_ids)
    assert registry.run_metrics(result.version)["ann_recall_at_10"] >= ann.TARGET_RECALL
