import numpy as np
import scipy.sparse as sp

from service.bundle import ModelBundle
from service.features import ServingView, UserFeatures, decode_user, encode_user, user_key
from service.recommender import Exclusions, Recommender

# Two taste directions: items a* along x, items b* along y.
ITEMS = np.array(["a1", "a2", "a3", "b1", "b2"])
ITEM_FACTORS = np.array([[1, 0], [0.9, 0.1], [0.8, 0], [0, 1], [0.1, 0.9]], dtype=np.float32)


def bundle():
    return ModelBundle(
        "als",
        user_ids=np.array(["likes_a", "likes_b"]),
        item_ids=ITEMS,
        user_factors=np.array([[1, 0], [0, 1]], dtype=np.float32),
        item_factors=ITEM_FACTORS,
    )


def view(history=(), purchased=(), disliked=(), popular=(("b2", 9.0), ("a3", 8.0), ("b1", 7.0))):
    return ServingView(
        "p1", UserFeatures(list(history), set(purchased), set(disliked)), list(popular)
    )


def test_known_user_gets_items_of_their_taste_best_first():
    recs = Recommender(bundle()).recommend("likes_a", view(), 3, Exclusions())
    assert [r.item_id for r in recs] == ["a1", "a2", "a3"]
    assert recs[0].score >= recs[1].score >= recs[2].score


def test_purchased_disliked_and_excluded_items_are_left_out_unless_switched_off():
    v = view(purchased=["a1"], disliked=["a2"])
    rec = Recommender(bundle())
    got = [r.item_id for r in rec.recommend("likes_a", v, 3, Exclusions(frozenset({"a3"})))]
    assert not {"a1", "a2", "a3"} & set(got)
    again = rec.recommend("likes_a", v, 2, Exclusions(purchased=False, disliked=False))
    assert [r.item_id for r in again] == ["a1", "a2"]


def test_unknown_user_gets_popular_items_with_reason_popular():
    recs = Recommender(bundle()).recommend("stranger", view(purchased=["b2"]), 2, Exclusions())
    assert [(r.item_id, r.reason) for r in recs] == [("a3", "popular"), ("b1", "popular")]


def test_reason_names_the_closest_history_item():
    v = view(history=[("b1", "view", 100), ("a2", "purchase", 90)], purchased=["a2"])
    recs = Recommender(bundle()).recommend("likes_a", v, 1, Exclusions())
    assert recs[0].item_id == "a1" and recs[0].reason == "similar: a2"


def test_dislikes_never_explain_and_no_history_says_personalised():
    v = view(history=[("a2", "dislike", 100)], disliked=["a2"])
    recs = Recommender(bundle()).recommend("likes_a", v, 1, Exclusions())
    assert recs[0].reason == "personalised"


def test_item_knn_scores_from_history():
    sim = sp.csr_matrix(np.array([[0, 0.9, 0.1], [0.9, 0, 0], [0.1, 0, 0]], dtype=np.float32))
    b = ModelBundle("item_knn", np.array(["u"]), np.array(["x", "y", "z"]), similarity=sim)
    recs = Recommender(b).recommend(
        "anyone", view(history=[("x", "view", 1)], popular=()), 2, Exclusions()
    )
    assert [r.item_id for r in recs] == ["y", "z"]
    assert recs[0].reason == "similar: x"


def test_user_features_encoding_round_trip_and_key_hash_tag():
    f = UserFeatures([("i1", "view", 5), ("i2", "purchase", 3)], {"i2"}, {"i9"})
    raw = {k.encode(): v.encode() for k, v in encode_user(f).items()}
    assert decode_user(raw) == f
    assert user_key("omnirec", "p1", "u:42") == "omnirec:pub:p1:user:{u:42}"
