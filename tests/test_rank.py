"""Recommender.rank: a caller's own list re-ordered for one person (pure logic; the gRPC
path is in tests/test_end_to_end.py)."""

from service.catalogue import ItemFilter
from service.recommender import RankingOptions, Recommender
from tests.test_recommender import CATALOGUE, bundle, ids, view


def test_the_callers_items_come_back_in_the_persons_order_and_only_them():
    recs = Recommender(bundle()).rank(
        "likes_b", ["a1", "b2", "a3", "b1"], view(), CATALOGUE, RankingOptions(4)
    )
    assert ids(recs) == ["b1", "b2", "a1", "a3"]
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)
    assert all(r.reason != "unranked" for r in recs)


def test_unknown_items_follow_in_the_callers_order_and_repeats_keep_their_first_place():
    recs = Recommender(bundle()).rank(
        "likes_a", ["new-2", "b1", "a1", "new-1", "a1"], view(), CATALOGUE, RankingOptions(5)
    )
    assert ids(recs) == ["a1", "b1", "new-2", "new-1"]
    assert [r.reason for r in recs[2:]] == ["unranked", "unranked"]


def test_filters_apply_as_in_recommend():
    history = [("a2", "purchase", 5), ("b2", "dislike", 4)]
    options = RankingOptions(
        5, ItemFilter(exclude_categories=frozenset({"bags"}), exclude_item_ids=frozenset({"a1"}))
    )
    recs = Recommender(bundle()).rank(
        "likes_a",
        ["a1", "a2", "a3", "b1", "b2", "new"],
        view(history, purchased={"a2"}, disliked={"b2"}),
        CATALOGUE,
        options,
    )
    # a1 excluded by id, a2 bought, a3 and b1 bags, b2 disliked: only the unknown is left.
    assert ids(recs) == ["new"]
    kept = Recommender(bundle()).rank(
        "likes_a",
        ["a2", "b1"],
        view(history, purchased={"a2"}),
        CATALOGUE,
        RankingOptions(2, exclude_purchased=False),
    )
    assert ids(kept) == ["a2", "b1"]


def test_a_person_with_nothing_to_go_on_gets_trending_then_popular_first():
    recs = Recommender(bundle()).rank(
        "stranger",
        ["a1", "b1", "a3", "b2"],
        view(trending=[("a1", 3.0)]),
        CATALOGUE,
        RankingOptions(4),
    )
    # Trending a1, then popular b2, a3, b1 (the view's popular list), none unranked.
    assert ids(recs) == ["a1", "b2", "a3", "b1"]
    assert [r.reason for r in recs] == ["trending", "popular", "popular", "popular"]
