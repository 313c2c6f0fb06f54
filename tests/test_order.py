"""Order-aware ranking (issue 12): transitions learnt from the order of events, blended at
request time with the reason ``after: <item>``, shipped in the bundle; the sentences for
people; and the shop's defaults (recently seen left out, consumables back after a while).
Pure logic: no servers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from service.bundle import ModelBundle
from service.catalogue import Catalogue
from service.config import ConfigError, load_settings, repurchase_days
from service.recommender import (
    Blend,
    RankingOptions,
    Recommender,
    RepurchasePolicy,
    ServingParams,
    explain,
)
from service.store.codecs import UserFeatures
from service.store.reads import ServingView
from training.matrix import DEFAULT_WEIGHTS
from training.transitions import fit_transitions

ITEMS = np.array(["phone", "case", "charger", "shirt", "socks"])


def frame(rows):
    """``(user, item, type, ts)`` rows as an events frame."""
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"])


def test_transitions_count_steps_ahead_collapse_repeats_and_shrink():
    events = frame(
        [
            # u1: phone (viewed, carted, bought: one step) → case → charger
            ("u1", "phone", "view", 1),
            ("u1", "phone", "add_to_cart", 2),
            ("u1", "phone", "purchase", 3),
            ("u1", "case", "view", 4),
            ("u1", "charger", "view", 5),
            # u2: phone → case; a dislike is no step
            ("u2", "phone", "view", 10),
            ("u2", "shirt", "dislike", 11),
            ("u2", "case", "view", 12),
            # u3's events never follow u2's, though they come later in time
            ("u3", "socks", "view", 13),
        ]
    )
    t = fit_transitions(events, DEFAULT_WEIGHTS, ITEMS, window=2, shrinkage=1.0).toarray()
    phone, case, charger = 0, 1, 2
    # From phone: case twice at distance 1, charger once at distance 2 (weight 1/2).
    outgoing = 2 + 0.5
    assert t[phone, case] == pytest.approx(2 / (outgoing + 1.0))
    assert t[phone, charger] == pytest.approx(0.5 / (outgoing + 1.0))
    assert t[case, charger] == pytest.approx(1 / (1 + 1.0))
    assert t[phone, phone] == 0 and t[:, 3].sum() == 0  # no self-steps; dislikes no steps
    assert t[2].sum() == 0 and t[4].sum() == 0  # last steps lead nowhere
    one = fit_transitions(events, DEFAULT_WEIGHTS, ITEMS, window=1, shrinkage=1.0).toarray()
    assert one[phone, charger] == 0


def test_transitions_keep_each_items_strongest_followers_only():
    rows = [(f"u{n}", "phone", "view", 2 * n) for n in range(5)]
    rows += [(f"u{n}", ITEMS[1 + n % 4], "view", 2 * n + 1) for n in range(5)]
    t = fit_transitions(frame(rows), DEFAULT_WEIGHTS, ITEMS, max_next=2).toarray()
    assert (t[0] > 0).sum() == 2
    assert t[0, 1] == t[0].max()  # case followed phone twice, the others once


def bundle(transitions=None, weight=0.0, events=3):
    # Items along two tastes; the transition row of "phone" points at "charger", which
    # the factors put far from it.
    factors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.95, 0.05], [0.1, 0.9]], dtype=np.float32)
    return ModelBundle(
        "als",
        user_ids=np.array(["someone"]),
        item_ids=ITEMS,
        user_factors=np.array([[1, 0]], dtype=np.float32),
        item_factors=factors,
        transitions=transitions,
        metadata={
            "params": {"alpha": 1.0, "regularization": 0.1},
            "serving": Blend(10.0, weight, events).to_metadata(),
        },
    )


def phone_then_charger():
    return fit_transitions(
        frame([("u1", "phone", "purchase", 1), ("u1", "charger", "view", 2)]),
        DEFAULT_WEIGHTS,
        ITEMS,
    )


def person(*history):
    return ServingView("p", UserFeatures(list(history)), [])


def test_the_blend_puts_what_follows_first_and_says_after_which_item():
    bought_phone = person(("phone", "purchase", 100))
    plain = Recommender(bundle(phone_then_charger(), weight=0.0))
    first = plain.recommend(
        "p", bought_phone, Catalogue(0, {}), RankingOptions(2, exclude_seen=True)
    )
    assert "charger" not in [r.item_id for r in first]  # the factors alone: phone-like items
    blended = Recommender(bundle(phone_then_charger(), weight=1.5))
    recs = blended.recommend(
        "p", bought_phone, Catalogue(0, {}), RankingOptions(2, exclude_seen=True)
    )
    assert recs[0].item_id == "charger" and recs[0].reason == "after: phone"
    assert recs[1].reason.startswith(("recent: ", "similar: "))  # the model's own pick
    # The same bundle without a weight, or without transitions, is served by the model.
    assert Recommender(bundle(None, weight=1.5)).recommend(
        "p", bought_phone, Catalogue(0, {}), RankingOptions(2, exclude_seen=True)
    ) == plain.recommend("p", bought_phone, Catalogue(0, {}), RankingOptions(2, exclude_seen=True))


def test_only_the_newest_distinct_items_query_the_transitions():
    # phone long ago, then four views of other things: with the newest 3 only, phone's
    # follower gets nothing from the transitions.
    history = [
        ("socks", "view", 500),
        ("shirt", "view", 400),
        ("shirt", "view", 390),
        ("case", "view", 300),
        ("phone", "purchase", 100),
    ]
    narrow = Recommender(bundle(phone_then_charger(), weight=5.0, events=3))
    recs = narrow.recommend("p", person(*history), Catalogue(0, {}), RankingOptions(5))
    assert not any(r.reason.startswith("after:") for r in recs)
    wide = Recommender(bundle(phone_then_charger(), weight=5.0, events=4))
    recs = wide.recommend("p", person(*history), Catalogue(0, {}), RankingOptions(5))
    assert [r.reason for r in recs if r.item_id == "charger"] == ["after: phone"]


def test_the_bundles_blend_is_used_unless_the_setting_overrides_its_half_life(tmp_path):
    saved = bundle(phone_then_charger(), weight=0.7).save(tmp_path / "b")
    loaded = ModelBundle.load(saved)
    assert (loaded.transitions != phone_then_charger()).nnz == 0
    assert Recommender(loaded).blend == Blend(10.0, 0.7, 3)
    assert Recommender(loaded, ServingParams(recency_half_life_events=2.0)).blend == Blend(
        2.0, 0.7, 3
    )
    old = ModelBundle("als", ITEMS[:1], ITEMS, np.ones((1, 2)), np.ones((5, 2)))
    assert Recommender(old).blend == Blend()  # bundles from before: the old behaviour


def test_explanations_name_items_by_title_where_the_catalogue_has_one():
    catalogue = Catalogue(1, {"phone": {"title": "Pixel 9"}, "case": {}})
    assert explain("after: phone", catalogue) == "Often chosen next after “Pixel 9”"
    assert explain("similar: case", catalogue) == "Similar to “case”"
    assert explain("bought together: zzz", catalogue) == "Often bought with “zzz”"
    assert explain("popular", catalogue) == "Popular lately"
    assert explain("something new", catalogue) == "something new"


# -- the shop's defaults --

NOW = 1_000_000


def shopper():
    history = [
        ("shirt", "view", NOW - 60),  # a minute ago
        ("socks", "purchase", NOW - 40 * 86_400),  # consumable, 40 days ago
        ("case", "purchase", NOW - 5 * 86_400),  # consumable, 5 days ago
        ("phone", "purchase", NOW - 90 * 86_400),  # not a consumable
    ]
    return ServingView("p", UserFeatures(history, {"socks", "case", "phone", "charger"}), [])


CATEGORIES = Catalogue(
    1,
    {
        "socks": {"category": "basics"},
        "case": {"category": "basics"},
        "charger": {"category": "basics"},
        "phone": {"category": "phones"},
    },
)


def test_recently_seen_items_are_left_out_unless_the_request_says_otherwise():
    recent = RankingOptions(5, seen_since=NOW - 24 * 3600)
    assert {"shirt", "socks", "case", "phone"} - recent.excluded(shopper()) == set()
    assert "shirt" not in RankingOptions(5, seen_since=NOW - 30).excluded(shopper())
    assert RankingOptions(5, exclude_seen=True).excluded(shopper()) >= {"shirt", "socks"}


def test_bought_consumables_come_back_after_their_period():
    policy = RepurchasePolicy({"basics": 30 * 86_400}, NOW)
    options = RankingOptions(5, repurchase=policy)
    excluded = options.excluded(shopper(), CATEGORIES)
    # socks: 40 days > 30; charger: bought before the kept history, so long ago.
    assert "socks" not in excluded and "charger" not in excluded
    assert {"case", "phone"} <= excluded  # 5 days; not a consumable
    assert (
        RankingOptions(5, repurchase=policy, exclude_purchased=False)
        .excluded(shopper(), CATEGORIES)
        .isdisjoint({"case", "phone"})
    )


@pytest.mark.parametrize(
    "raw, problem",
    [("basics", "is not category=days"), ("basics=x", "is not a number"), ("a=0", "positive")],
)
def test_repurchase_setting_is_checked(raw, problem):
    with pytest.raises(ConfigError, match=f"OMNIREC_REPURCHASE_DAYS.*{problem}"):
        load_settings({"OMNIREC_REPURCHASE_DAYS": raw})


def test_repurchase_setting_reads_categories_and_days():
    settings = load_settings({"OMNIREC_REPURCHASE_DAYS": "basics=30, pet food = 14.5"})
    assert repurchase_days(settings) == {"basics": 30.0, "pet food": 14.5}
