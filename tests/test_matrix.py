import numpy as np
import pandas as pd
import pytest

from service.errors import BadInput
from training.matrix import DEFAULT_WEIGHTS, build_interactions, parse_weights


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"])


def dense(inter):
    return pd.DataFrame(inter.matrix.toarray(), index=inter.user_ids, columns=inter.item_ids)


def test_weights_sum_per_pair_and_message_events_are_ignored():
    m = dense(
        build_interactions(
            frame(
                [
                    ("a", "x", "view", 10),
                    ("a", "x", "view", 20),
                    ("a", "x", "purchase", 30),
                    ("a", "y", "favourite", 30),
                    ("b", "y", "add_to_cart", 40),
                    ("b", "", "message_open", 50),
                    ("b", "", "session_start", 50),
                ]
            )
        )
    )
    assert list(m.index) == ["a", "b"] and list(m.columns) == ["x", "y"]
    assert m.loc["a", "x"] == pytest.approx(
        2 * DEFAULT_WEIGHTS["view"] + DEFAULT_WEIGHTS["purchase"]
    )
    assert m.loc["a", "y"] == pytest.approx(DEFAULT_WEIGHTS["favourite"])
    assert m.loc["b", "y"] == pytest.approx(DEFAULT_WEIGHTS["add_to_cart"])
    assert m.loc["b", "x"] == 0


def test_a_dislike_is_never_positive_and_vetoes_the_pair():
    inter = build_interactions(
        frame(
            [
                ("a", "x", "view", 10),
                ("a", "x", "purchase", 11),
                ("a", "x", "dislike", 12),
                ("a", "y", "view", 13),
                ("b", "z", "dislike", 14),
            ]
        )
    )
    m = dense(inter)
    assert m.loc["a", "x"] == 0
    assert m.loc["a", "y"] == pytest.approx(1.0)
    assert m.loc["b"].sum() == 0
    assert (inter.matrix.data > 0).all()


def test_half_life_halves_the_weight_of_an_event_that_old():
    day = 86_400
    m = dense(
        build_interactions(
            frame([("a", "old", "view", 0), ("a", "new", "view", 10 * day)]), half_life_days=10
        )
    )
    assert m.loc["a", "new"] == pytest.approx(1.0)
    assert m.loc["a", "old"] == pytest.approx(0.5)


def test_fixed_index_drops_unknown_ids_and_keeps_order():
    inter = build_interactions(
        frame([("a", "x", "view", 1), ("c", "x", "view", 1), ("a", "q", "view", 1)]),
        user_ids=np.array(["b", "a"]),
        item_ids=np.array(["x"]),
    )
    assert inter.shape == (2, 1)
    assert inter.matrix.toarray().tolist() == [[0.0], [1.0]]


def test_parse_weights_overrides_defaults():
    w = parse_weights("view=0.5, purchase=20")
    assert (
        w["view"] == 0.5 and w["purchase"] == 20 and w["favourite"] == DEFAULT_WEIGHTS["favourite"]
    )


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("dislike=1", "never positive"),
        ("teleport=1", "not an item event type"),
        ("view=-1", "≥ 0"),
        ("view=abc", "not a number"),
        ("view", "event_type=weight"),
    ],
)
def test_parse_weights_rejects_bad_input(text, fragment):
    with pytest.raises(BadInput) as err:
        parse_weights(text)
    assert err.value.field == "event_weights" and fragment in str(err.value)
