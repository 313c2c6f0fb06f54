import numpy as np
import scipy.sparse as sp

from service.bundle import ModelBundle
from service.catalogue import Catalogue, ItemFilter
from service.recommender import RankingOptions, Recommender, ServingParams
from service.store.codecs import UserFeatures, decode_user, encode_user, merge_features
from service.store.keys import user_key
from service.store.live import combine_trending, trending_increment
from service.store.reads import ServingView

# Two taste directions: items a* along x, items b* along y.
ITEMS = np.array(["a1", "a2", "a3", "b1", "b2"])
ITEM_FACTORS = np.array([[1, 0], [0.9, 0.1], [0.8, 0], [0, 1], [0.1, 0.9]], dtype=np.float32)
CATALOGUE = Catalogue(
    1,
    {
        "a1": {"category": "shoes", "in_stock": True},
        "a2": {"category": "shoes", "in_stock": False},
        "a3": {"category": "bags"},
        "b1": {"category": "bags", "in_stock": True},
        "b2": {"category": "hats"},
    },
)


def bundle(alpha=1.0):
    return ModelBundle(
        "als",
        user_ids=np.array(["likes_a", "likes_b"]),
        item_ids=ITEMS,
        user_factors=np.array([[1, 0], [0, 1]], dtype=np.float32),
        item_factors=ITEM_FACTORS,
        metadata={"params": {"alpha": alpha, "regularization": 0.1}},
    )


def view(
    history=(),
    purchased=(),
    disliked=(),
    popular=(("b2", 9.0), ("a3", 8.0), ("b1", 7.0)),
    trending=(),
):
    features = UserFeatures(list(history), set(purchased), set(disliked))
    return ServingView("p1", features, list(popular), list(trending))


def ids(recs):
    return [r.item_id for r in recs]


def test_known_user_without_history_uses_the_trained_factors():
    recs = Recommender(bundle()).recommend("likes_a", view(), CATALOGUE, RankingOptions(3))
    assert ids(recs) == ["a1", "a2", "a3"]
    assert recs[0].score >= recs[1].score >= recs[2].score


def test_history_folds_in_and_the_newest_events_weigh_most():
    # Symmetric toy: three items per taste direction.
    b = ModelBundle(
        "als",
        user_ids=np.array(["someone"]),
        item_ids=np.array(["a1", "a2", "a3", "b1", "b2", "b3"]),
        user_factors=np.zeros((1, 2), dtype=np.float32),
        item_factors=np.array(
            [[1, 0], [0.9, 0.1], [0.8, 0], [0, 1], [0.1, 0.9], [0, 0.8]], dtype=np.float32
        ),
        metadata={"params": {"alpha": 5.0, "regularization": 0.1}},
    )
    rec = Recommender(b, ServingParams(recency_half_life_events=1.0))
    b_newest = [("b1", "view", 10), ("b2", "view", 9), ("a1", "view", 2), ("a2", "view", 1)]
    recs = rec.recommend(
        "stranger", view(b_newest), Catalogue(0, {}), RankingOptions(1, exclude_seen=True)
    )
    assert ids(recs) == ["b3"]
    a_newest = [("a1", "view", 10), ("a2", "view", 9), ("b1", "view", 2), ("b2", "view", 1)]
    recs = rec.recommend(
        "stranger", view(a_newest), Catalogue(0, {}), RankingOptions(1, exclude_seen=True)
    )
    assert ids(recs) == ["a3"]
    assert recs[0].reason.startswith("recent: a")


def test_a_new_view_changes_the_answer_of_a_known_user():
    rec = Recommender(bundle(), ServingParams(recency_half_life_events=2.0))
    before = rec.recommend("likes_a", view(), CATALOGUE, RankingOptions(1))
    after = rec.recommend(
        "likes_a",
        view([("b2", "add_to_cart", 100), ("b2", "view", 99)]),
        CATALOGUE,
        RankingOptions(1, exclude_seen=True),
    )
    assert ids(before) == ["a1"] and ids(after) == ["b1"]
    assert after[0].reason == "recent: b2"


def test_purchased_disliked_and_excluded_items_are_left_out_unless_switched_off():
    v = view(purchased=["a1"], disliked=["a2"])
    rec = Recommender(bundle())
    options = RankingOptions(3, ItemFilter(exclude_item_ids=frozenset({"a3"})))
    assert not {"a1", "a2", "a3"} & set(ids(rec.recommend("likes_a", v, CATALOGUE, options)))
    keep = RankingOptions(2, exclude_purchased=False, exclude_disliked=False)
    assert ids(rec.recommend("likes_a", v, CATALOGUE, keep)) == ["a1", "a2"]


def test_category_and_stock_filters_apply_to_personal_and_fallback_items():
    rec = Recommender(bundle())
    only_shoes_in_stock = RankingOptions(
        5, ItemFilter(include_categories=frozenset({"shoes"}), in_stock_only=True)
    )
    assert ids(rec.recommend("likes_a", view(), CATALOGUE, only_shoes_in_stock)) == ["a1"]
    no_bags = RankingOptions(5, ItemFilter(exclude_categories=frozenset({"bags"})))
    got = ids(rec.recommend("stranger", view(), CATALOGUE, no_bags))
    assert got == ["b2"]


def test_strangers_get_trending_then_popular_with_reasons():
    v = view(trending=[("b1", 3.0)], purchased=["b2"])
    recs = Recommender(bundle()).recommend("stranger", v, CATALOGUE, RankingOptions(2))
    assert [(r.item_id, r.reason) for r in recs] == [("b1", "trending"), ("a3", "popular")]


def test_reasons_name_recent_or_older_history_items_never_the_item_itself():
    rec = Recommender(bundle(), ServingParams(recent_events=1))
    history = [("b1", "view", 100), ("a2", "purchase", 90)]
    recs = rec.recommend("likes_a", view(history, purchased=["a2"]), CATALOGUE, RankingOptions(3))
    reasons = {r.item_id: r.reason for r in recs}
    assert reasons["a1"] == "similar: a2"
    assert reasons["b2"] == "recent: b1"
    dislike_only = view([("a2", "dislike", 100)], disliked=["a2"])
    assert rec.recommend("likes_a", dislike_only, CATALOGUE, RankingOptions(1))[0].reason == (
        "personalised"
    )


def test_context_item_pulls_similar_items_up():
    rec = Recommender(bundle())
    recs = rec.recommend("likes_a", view(), CATALOGUE, RankingOptions(2, context_item_id="b1"))
    assert "b2" in ids(recs) and "b1" not in ids(recs)
    assert {r.reason for r in recs if r.item_id == "b2"} == {"similar: b1"}


def test_similar_items_and_bought_together():
    rec = Recommender(bundle())
    sim = rec.similar_items("a1", CATALOGUE, RankingOptions(2), view(), [], False)
    assert ids(sim) == ["a3", "a2"] and sim[0].reason == "similar: a1"  # cosine 1.0, 0.99
    together = rec.similar_items("a1", CATALOGUE, RankingOptions(2), view(), [("b2", 4.0)], True)
    assert [(r.item_id, r.reason) for r in together] == [
        ("b2", "bought together: a1"),
        ("a3", "similar: a1"),
    ]
    # An item the model does not know: popular items of its category stand in.
    cat = Catalogue(2, {**CATALOGUE.items, "new": {"category": "bags"}})
    fresh = rec.similar_items("new", cat, RankingOptions(2), view(), [], False)
    assert ids(fresh) == ["a3", "b1"] and {r.reason for r in fresh} == {"popular"}


def test_item_knn_scores_from_history():
    sim = sp.csr_matrix(np.array([[0, 0.9, 0.1], [0.9, 0, 0], [0.1, 0, 0]], dtype=np.float32))
    b = ModelBundle("item_knn", np.array(["u"]), np.array(["x", "y", "z"]), similarity=sim)
    recs = Recommender(b).recommend(
        "anyone", view(history=[("x", "view", 1)], popular=()), Catalogue(0, {}), RankingOptions(2)
    )
    assert ids(recs) == ["y", "z"]
    assert recs[0].reason == "recent: x"


def test_user_features_encoding_merge_and_key_hash_tag():
    f = UserFeatures([("i1", "view", 5), ("i2", "purchase", 3)], {"i2"}, {"i9"})
    raw = {k.encode(): v.encode() for k, v in encode_user(f).items()}
    assert decode_user(raw) == f
    live = UserFeatures([("i3", "view", 9), ("i1", "view", 5)], {"i3"}, set())
    merged = merge_features(live, f, limit=10)
    assert merged.history == [("i3", "view", 9), ("i1", "view", 5), ("i2", "purchase", 3)]
    assert merged.purchased == {"i2", "i3"}
    assert merge_features(live, f, limit=1).history == [("i3", "view", 9)]
    assert user_key("omnirec", "p1", "u:42") == "omnirec:pub:p1:user:{u:42}"


def test_trending_scores_decay_with_the_half_life():
    day = 86_400 * 20_000
    now = day + 12 * 3600
    fresh = trending_increment(1.0, now, now, half_life_hours=6)
    old = trending_increment(1.0, now - 6 * 3600, now, half_life_hours=6)
    assert fresh == 2 * old
    ranked = combine_trending([("new", fresh)], [("yday", fresh * 4)], now, half_life_hours=6)
    assert [i for i, _ in ranked] == ["new", "yday"]
    assert ranked[0][1] == 1.0  # a weight-1 event right now is worth 1 now
