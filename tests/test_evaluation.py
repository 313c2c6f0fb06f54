import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from training.evaluation import popularity_ranker, ranking_metrics, relevant_items, time_split


def test_perfect_and_empty_rankings():
    rel = [np.array([0, 1]), np.array([2])]
    perfect = ranking_metrics(np.array([[0, 1, 5], [2, 3, 4]]), rel, n_items=6, k=3)
    assert perfect["recall"] == pytest.approx(1.0)
    assert perfect["ndcg"] == pytest.approx(1.0)
    assert perfect["map"] == pytest.approx(1.0)
    assert perfect["coverage"] == pytest.approx(1.0)
    miss = ranking_metrics(np.array([[3, 4, 5], [0, 1, 3]]), rel, n_items=6, k=3)
    assert miss["recall"] == miss["ndcg"] == miss["map"] == 0.0


def test_metrics_match_hand_computed_values():
    # One person, relevant {7, 9}; list [1, 7, 3, 9]: hits at ranks 2 and 4.
    m = ranking_metrics(np.array([[1, 7, 3, 9]]), [np.array([7, 9])], n_items=10, k=4)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3)
    assert m["recall"] == pytest.approx(1.0)
    assert m["ndcg"] == pytest.approx(dcg / idcg)
    assert m["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert m["coverage"] == pytest.approx(0.4)
    # Cut-off k=2 only sees the first hit; -1 padding never counts.
    m2 = ranking_metrics(np.array([[1, 7, -1]]), [np.array([7, 9])], n_items=10, k=2)
    assert m2["recall"] == pytest.approx(0.5)
    assert m2["map"] == pytest.approx((1 / 2) / 2)


def test_time_split_holds_out_each_persons_latest_events():
    rows = [("a", f"i{t}", "view", t) for t in range(10)]
    rows += [("b", "i0", "view", 5), ("b", "i1", "view", 6)]  # too short to hold out
    rows += [("a", "", "message_open", 100)]
    f = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"])
    split = time_split(f, test_fraction=0.2, min_user_events=5)
    assert sorted(split.test["timestamp"]) == [8, 9]
    assert set(split.test["user_id"]) == {"a"}
    assert len(split.train) + len(split.test) == len(f)
    assert "message_open" in set(split.train["event_type"])


def test_relevant_items_exclude_training_items_and_non_positive_events():
    train = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    test = pd.DataFrame(
        [
            ("a", "i0", "view", 1),
            ("a", "i1", "purchase", 2),
            ("a", "i2", "dislike", 3),
            ("b", "i3", "view", 4),
        ],
        columns=["user_id", "item_id", "event_type", "timestamp"],
    )
    rel = relevant_items(
        test,
        train,
        np.array(["a", "b"]),
        np.array(["i0", "i1", "i2", "i3"]),
        {"view": 1, "purchase": 5},
    )
    assert rel[0].tolist() == [1]
    assert rel[1].tolist() == [3]


def test_popularity_ranker_skips_each_persons_own_items():
    m = sp.csr_matrix(
        np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    )
    ranked = popularity_ranker(m)(np.array([0, 3]), 2)
    assert ranked[0].tolist() == [2, 3]
    assert ranked[1].tolist() == [0, 1]
