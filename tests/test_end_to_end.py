"""The whole path with real parts: synthetic events → implicit ALS → MLflow (sqlite) →
Redis (a real redis-server) → gRPC (a real server on loopback)."""

from __future__ import annotations

import random
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.server import build_server
from service.catalogue import Catalogue
from service.recommender import RankingOptions, Recommender
from service.registry import ModelRegistry
from service.store import FeatureStore
from service.store.codecs import UserFeatures
from service.store.plans import connect
from service.store.reads import ServingView
from training.catalogue_file import load_catalogue

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(trained):
    settings = replace(trained.settings, port=0, host="127.0.0.1")
    registry = ModelRegistry(settings)
    store = FeatureStore(connect(settings.redis_url), settings.key_prefix)
    running = build_server(
        settings,
        registry.load_alias(settings.model_alias),
        store,
        reload_model=registry.load_version,
        current_version=lambda: registry.version_behind(settings.model_alias),
    )
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.RecommenderStub(channel)


@pytest.fixture(scope="module")
def categories(synthetic):
    return {i: m["category"] for i, m in load_catalogue(synthetic.items).items()}


def test_training_logs_everything_to_mlflow_and_names_a_champion(trained):
    from mlflow import MlflowClient

    s = trained.settings
    client = MlflowClient(s.mlflow_tracking_uri, registry_uri=s.mlflow_tracking_uri)
    run = client.get_run(trained.result.run_id)
    assert run.data.params["model.kind"] == "als"
    assert run.data.params["weight.purchase"] == "10.0"
    for name in (
        "ndcg_at_10",
        "recall_at_10",
        "map_at_10",
        "coverage_at_10",
        "baseline_popularity_ndcg_at_10",
    ):
        assert name in run.data.metrics
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(losses) == 15
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    assert artifacts == {"bundle/manifest.json", "bundle/arrays.npz"}
    assert str(client.get_model_version_by_alias(s.model_name, "champion").version) == "1"
    assert trained.result.promoted


def test_model_beats_popularity_on_the_time_based_holdout(trained):
    m = trained.result.holdout.metrics
    assert m["als"]["ndcg"] > 1.2 * m["popularity"]["ndcg"]
    assert m["als"]["recall"] > m["popularity"]["recall"]
    assert m["als"]["coverage"] > 2 * m["popularity"]["coverage"]


def test_features_are_published_under_a_live_publication(trained, truth):
    s = trained.settings
    store = FeatureStore(connect(s.redis_url), s.key_prefix)
    pub = store.current_publication(refresh=True)
    assert pub == trained.result.publication
    meta = store.publication_meta(pub)
    assert meta["model_version"] == "1" and int(meta["users"]) > 300
    user = sorted(truth["users"])[0]
    view = store.serving_view(user, 5)
    assert view.user.history and len(view.popular) == 5
    stamps = [ts for _, _, ts in view.user.history]
    assert stamps == sorted(stamps, reverse=True)


def test_known_user_gets_personalised_items_with_reasons_and_version(stub, trained, truth):
    s = trained.settings
    store = FeatureStore(connect(s.redis_url), s.key_prefix)
    for user in sorted(truth["users"])[:20]:
        reply = stub.Recommend(pb.RecommendRequest(user_id=user, limit=10), timeout=5)
        assert len(reply.items) == 10
        assert reply.model_version == "omnirec/1"
        assert len(reply.recommendation_id) == 32
        assert all(
            r.reason.startswith(("recent: ", "similar: ", "after: ", "personalised"))
            for r in reply.items
        )
        scores = [r.score for r in reply.items]
        assert scores == sorted(scores, reverse=True)
        features = store.serving_view(user, 1).user
        assert not {r.item_id for r in reply.items} & (features.purchased | features.disliked)


def test_planted_tastes_are_recovered_far_better_than_by_popularity(
    stub, trained, truth, categories
):
    """An answer is right when it is of a planted taste, or what the planted order says
    comes next after something in the person's history (a lead's follower, the next step
    of a series): the served model learns both."""
    s = trained.settings
    store = FeatureStore(connect(s.redis_url), s.key_prefix)
    planted = truth["sequences"]
    after = dict(planted["followers"])
    for series in planted["series"]:
        after |= dict(zip(series, series[1:], strict=False))
    personal = popular = shown = 0
    for user in sorted(truth["users"])[:150]:
        tastes = set(truth["users"][user]["tastes"])
        history = {item for item, _, _ in store.serving_view(user, 1).user.history}
        comes_next = {after[item] for item in history if item in after}

        def right(item: str, tastes=tastes, comes_next=comes_next) -> bool:
            return categories[item] in tastes or item in comes_next

        reply = stub.Recommend(pb.RecommendRequest(user_id=user, limit=10), timeout=5)
        personal += sum(right(r.item_id) for r in reply.items)
        shown += len(reply.items)
        pop = stub.Recommend(pb.RecommendRequest(user_id=f"new-{user}", limit=10), timeout=5)
        popular += sum(right(r.item_id) for r in pop.items)
    # Measured: 0.68 against popular items' 0.15. (0.7 before issue 12: the log has
    # planted cross-category followers since, and the transitions' own picks include
    # what happened to come next for people with other tastes.)
    assert personal / shown > 0.6
    assert personal / shown > popular / shown + 0.4


def test_unknown_user_gets_popular_items(stub):
    reply = stub.Recommend(pb.RecommendRequest(user_id="never-seen", limit=5), timeout=5)
    assert len(reply.items) == 5
    assert {r.reason for r in reply.items} == {"popular"}
    assert reply.model_version == "omnirec/1"


def test_exclusions_can_be_asked_for_and_switched_off(stub, trained, truth):
    s = trained.settings
    store = FeatureStore(connect(s.redis_url), s.key_prefix)
    buyer = next(u for u in sorted(truth["users"]) if store.serving_view(u, 1).user.purchased)
    first = stub.Recommend(pb.RecommendRequest(user_id=buyer, limit=5), timeout=5)
    excluded = [r.item_id for r in first.items[:2]]
    again = stub.Recommend(
        pb.RecommendRequest(user_id=buyer, limit=5, exclude_item_ids=excluded), timeout=5
    )
    assert not set(excluded) & {r.item_id for r in again.items}
    bought = store.serving_view(buyer, 1).user.purchased
    everything = stub.Recommend(
        pb.RecommendRequest(user_id=buyer, limit=100, exclude_purchased=False), timeout=5
    )
    assert bought & {r.item_id for r in everything.items}


@pytest.mark.parametrize(
    "request_, field",
    [
        (pb.RecommendRequest(user_id="", limit=5), "user_id"),
        (pb.RecommendRequest(user_id="u", limit=-1), "limit"),
        (pb.RecommendRequest(user_id="u", limit=101), "limit"),
        (pb.RecommendRequest(user_id="x" * 300, limit=5), "user_id"),
        (pb.RecommendRequest(user_id="u", exclude_item_ids=[""]), "exclude_item_ids"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(request_, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


def test_limit_zero_means_the_default(stub, truth):
    reply = stub.Recommend(pb.RecommendRequest(user_id=sorted(truth["users"])[0]), timeout=5)
    assert len(reply.items) == 10


def test_health_and_reflection(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "omnirec.v1.Recommender"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
        names = {s.name for s in answer.list_services_response.service}
        assert {"omnirec.v1.Recommender", "grpc.health.v1.Health"} <= names


def test_republishing_switches_atomically_and_cleans_up(trained, truth):
    s = trained.settings
    store = FeatureStore(connect(s.redis_url), "republish")
    from service.store.codecs import UserFeatures

    def users(seen_during_write: list):
        for n, user in enumerate(sorted(truth["users"])[:50]):
            if n == 25:
                # Halfway through writing, readers still see the previous publication.
                seen_during_write.append(store.current_publication(refresh=True))
            yield user, UserFeatures([("i1", "view", n)], set(), set())

    first = store.publish(users([]), {"i1": 1.0}, {"i1": {"i2": 1.0}}, {}, keep=2)
    during: list = []
    second = store.publish(users(during), {"i1": 2.0}, {"i1": {"i2": 1.0}}, {}, keep=2)
    assert during == [first]
    assert store.current_publication(refresh=True) == second
    third = store.publish(users([]), {"i1": 3.0}, {"i1": {"i2": 1.0}}, {}, keep=2)
    assert store.publications() == [third, second]
    client = connect(s.redis_url)  # a cluster too: SCAN then walks every primary
    assert not list(client.scan_iter(match=f"republish:pub:{first}:*"))
    assert len(list(client.scan_iter(match=f"republish:pub:{third}:*"))) == 53


def test_catalogue_metadata_is_published(trained, synthetic):
    s = trained.settings
    store = FeatureStore(connect(s.redis_url), s.key_prefix)
    version, items = store.catalogue()
    catalogue = load_catalogue(synthetic.items)
    assert version >= 1
    for item in sorted(catalogue)[:20]:
        assert items[item] == catalogue[item]


def test_bundle_file_is_the_served_one(trained):
    registry = ModelRegistry(trained.settings)
    model = registry.load_alias("champion")
    assert model.label == "omnirec/1"
    assert model.bundle.metadata["run_id"] == trained.result.run_id


def test_a_purchase_brings_its_planted_follower_next_where_the_model_alone_does_not(
    stub, trained, truth
):
    """Issue 12: a new person buys a lead item; the very next Recommend puts its planted
    follower (another category) near the top, saying ``after: <lead>``. The same bundle
    without its transition part (in-process, same history) rarely does."""
    followers = truth["sequences"]["followers"]
    leads = sorted(followers)[:40]
    bundle = ModelRegistry(trained.settings).load_alias(trained.settings.model_alias).bundle
    assert bundle.transitions is not None and bundle.metadata["serving"]["transition_weight"] > 0
    alone = Recommender(replace(bundle, transitions=None))
    served = model_alone = after = 0
    for lead in leads:
        user = f"buyer-of-{lead}"
        reply = stub.TrackEvents(
            pb.TrackEventsRequest(
                events=[
                    pb.Event(user_id=user, item_id=lead, event_type=kind)
                    for kind in ("view", "add_to_cart", "purchase")
                ]
            ),
            timeout=5,
        )
        assert reply.accepted == 3
        top = stub.Recommend(pb.RecommendRequest(user_id=user, limit=3), timeout=5).items
        hit = [r for r in top if r.item_id == followers[lead]]
        served += bool(hit)
        # Named after the lead: "after:" where the transitions won, else the model's own.
        assert all(r.reason.endswith(f": {lead}") for r in hit)
        after += any(r.reason.startswith("after: ") for r in hit)
        history = [(lead, "purchase", 3), (lead, "add_to_cart", 2), (lead, "view", 1)]
        view = ServingView(None, UserFeatures(history, {lead}), [])
        own = alone.recommend(user, view, Catalogue(0, {}), RankingOptions(3))
        model_alone += followers[lead] in {r.item_id for r in own}
    print(
        f"follower in the top 3: served {served}/{len(leads)} ({after} after:), alone {model_alone}"
    )
    assert served / len(leads) >= 0.6 and after >= served / 2
    assert served / len(leads) >= model_alone / len(leads) + 0.4


def test_what_a_person_just_viewed_is_not_recommended_unless_asked(stub, truth):
    """The shop default: a view a moment ago leaves the item out of the next answer
    (OMNIREC_RECENTLY_SEEN_HOURS); ``exclude_seen=false`` brings it back."""
    user = sorted(truth["users"])[1]
    first = stub.Recommend(pb.RecommendRequest(user_id=user, limit=1), timeout=5).items[0]
    stub.TrackEvents(
        pb.TrackEventsRequest(
            events=[pb.Event(user_id=user, item_id=first.item_id, event_type="view")]
        ),
        timeout=5,
    )
    again = stub.Recommend(pb.RecommendRequest(user_id=user, limit=20), timeout=5).items
    assert first.item_id not in {r.item_id for r in again}
    asked = stub.Recommend(
        pb.RecommendRequest(user_id=user, limit=20, exclude_seen=False), timeout=5
    ).items
    assert first.item_id in {r.item_id for r in asked}


def test_rank_puts_a_persons_planted_tastes_first(stub, trained, truth, categories):
    """Recommender.Rank on a caller's list of (up to) 6 items of the person's planted
    tastes and 6 others, shuffled: the liked ones lead; items the model never saw follow
    in the caller's order."""
    s = trained.settings
    store = FeatureStore(connect(s.redis_url), s.key_prefix)
    by_category: dict[str, list[str]] = {}
    for item, category in sorted(categories.items()):
        by_category.setdefault(category, []).append(item)
    rng = random.Random(5)
    liked_first = caller_order = asked = 0
    for user in sorted(truth["users"])[:60]:
        tastes = set(truth["users"][user]["tastes"])
        features = store.serving_view(user, 1).user
        left_out = features.purchased | features.disliked  # Rank's defaults, as Recommend's
        liked = [i for c in sorted(tastes) for i in by_category[c] if i not in left_out]
        other = [
            i
            for c, items in by_category.items()
            if c not in tastes
            for i in items
            if i not in left_out
        ]
        n = min(6, len(liked))  # some people's tastes are small categories
        chosen = rng.sample(liked, n) + rng.sample(other, 6)
        rng.shuffle(chosen)
        reply = stub.Rank(
            pb.RankRequest(user_id=user, item_ids=[*chosen, "new-b", "new-a"]), timeout=5
        )
        ranked = [r.item_id for r in reply.items]
        assert sorted(ranked) == sorted([*chosen, "new-b", "new-a"])
        assert ranked[-2:] == ["new-b", "new-a"]
        assert [r.reason for r in reply.items[-2:]] == ["unranked", "unranked"]
        assert all(r.explanation for r in reply.items)
        liked_first += sum(categories[i] in tastes for i in ranked[:n])
        caller_order += sum(categories[i] in tastes for i in chosen[:n])
        asked += n
    print(
        f"liked items where Rank puts the liked ones: {liked_first / asked:.2f}, "
        f"in the caller's order: {caller_order / asked:.2f}"
    )
    # Measured: 0.87 against the caller's own order's 0.45.
    assert liked_first / asked > 0.75
    assert liked_first / asked > caller_order / asked + 0.3


def test_rank_filters_like_recommend_and_names_bad_items(stub, truth, categories):
    user = sorted(truth["users"])[2]
    items = sorted(categories)[:30]
    dropped = categories[items[0]]
    reply = stub.Rank(
        pb.RankRequest(
            user_id=user, item_ids=items, exclude_categories=[dropped], exclude_purchased=False
        ),
        timeout=5,
    )
    assert {r.item_id for r in reply.items} == {i for i in items if categories[i] != dropped}
    assert reply.model_version == "omnirec/1" and len(reply.recommendation_id) == 32
    for request, field in (
        (pb.RankRequest(user_id=user), "item_ids"),
        (pb.RankRequest(user_id=user, item_ids=["ok", ""]), "item_ids[1]"),
        (pb.RankRequest(item_ids=["a"]), "user_id"),
        (pb.RankRequest(user_id=user, item_ids=["x"] * 1001), "item_ids"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Rank(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(field)
