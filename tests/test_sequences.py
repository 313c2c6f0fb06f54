"""Planted order in the synthetic log: the generator plants leads with their followers
and series, truth.json lists them, and the item → next-item transitions recover them
where plain item-item CF (EASE), blind to order, does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.events import MESSAGE_CHANNELS
from training.ease import ease_weights
from training.event_log import load_events
from training.matrix import DEFAULT_WEIGHTS, build_interactions
from training.synthetic import GeneratedData, generate
from training.transitions import fit_transitions

USERS, ITEMS, DAYS, SEED = 300, 400, 30, 2
#: A lead is judged only when seen this often: fewer views are too little to learn from.
MIN_LEAD_VIEWS = 10


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> GeneratedData:
    return generate(USERS, ITEMS, DAYS, SEED, tmp_path_factory.mktemp("sequences"))


@pytest.fixture(scope="module")
def events(data: GeneratedData) -> pd.DataFrame:
    return load_events(data.events).frame


@pytest.fixture(scope="module")
def sequences(data: GeneratedData) -> dict:
    return json.loads(data.truth.read_text())["sequences"]


@pytest.fixture(scope="module")
def leads(events: pd.DataFrame, sequences: dict) -> dict[str, str]:
    """Planted followers of the leads seen at least :data:`MIN_LEAD_VIEWS` times."""
    views = events[events.event_type == "view"].item_id.value_counts()
    return {
        lead: follower
        for lead, follower in sequences["followers"].items()
        if views.get(lead, 0) >= MIN_LEAD_VIEWS
    }


@pytest.fixture(scope="module")
def models(events: pd.DataFrame) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """Item positions, transitions T and EASE's B, both items × items (dense)."""
    interactions = build_interactions(events, DEFAULT_WEIGHTS)
    item_ids = interactions.item_ids
    transitions = fit_transitions(events, DEFAULT_WEIGHTS, item_ids, window=3, shrinkage=5.0)
    similarity = ease_weights(interactions.matrix, 300.0)
    position = {item: k for k, item in enumerate(item_ids)}
    return position, transitions.toarray(), similarity


def _next_views(events: pd.DataFrame, ahead: int) -> pd.DataFrame:
    """Each view with the items of the same person's next ``ahead`` views (None past the
    last), in columns ``next_1`` … ``next_<ahead>``."""
    views = events[events.event_type == "view"].sort_values(["user_id", "timestamp"], kind="stable")
    views = views[["user_id", "item_id", "timestamp"]].reset_index(drop=True)
    for d in range(1, ahead + 1):
        same = views.user_id.shift(-d) == views.user_id
        views[f"next_{d}"] = views.item_id.shift(-d).where(same)
    return views


def _share_in_top(
    matrix: np.ndarray, position: dict[str, int], pairs: list[tuple[str, str]], k: int = 3
) -> float:
    """Share of pairs (a, b) whose b has a positive score among the k best of a's row."""
    hits = []
    for a, b in pairs:
        row = matrix[position[a]].copy()
        row[position[a]] = -np.inf
        score = row[position[b]]
        hits.append(score > 0 and (row > score).sum() < k)
    return float(np.mean(hits))


# --- what the generator plants ---------------------------------------------------------


def test_truth_lists_the_sequences(
    data: GeneratedData, events: pd.DataFrame, sequences: dict, tmp_path: Path
) -> None:
    catalogue = pd.read_parquet(data.items)
    category = dict(zip(catalogue.item_id, catalogue.category, strict=True))
    followers = sequences["followers"]
    assert len(followers) == round(0.2 * ITEMS)
    assert set(followers) | set(followers.values()) <= set(category)
    assert len(set(followers.values())) == len(followers), "each follower has one lead"
    assert not set(followers) & set(followers.values())
    assert all(category[lead] != category[f] for lead, f in followers.items())

    series = sequences["series"]
    assert len(series) == ITEMS // 40
    assert all(3 <= len(steps) <= 5 for steps in series)
    assert all(len({category[item] for item in steps}) == 1 for steps in series)
    in_series = [item for steps in series for item in steps]
    assert len(set(in_series)) == len(in_series)
    assert not set(in_series) & (set(followers) | set(followers.values()))

    # Off, nothing is planted, and every other event is the same as with it on.
    plain = generate(USERS, ITEMS, DAYS, SEED, tmp_path, sequences=False)
    assert json.loads(plain.truth.read_text())["sequences"] == {"followers": {}, "series": []}
    without = load_events(plain.events).frame
    columns = list(without.columns)
    found = without.merge(events.assign(found=True), how="left", on=columns).found
    assert found.notna().all()
    added = len(events) - len(without)
    views = (events.event_type == "view").sum() - (without.event_type == "view").sum()
    assert 0.03 < views / (without.event_type == "view").sum() < 0.15
    assert views < added, "planted views come with their clicks, carts and purchases"


def test_followers_are_viewed_right_after_their_leads(
    events: pd.DataFrame, sequences: dict, leads: dict[str, str]
) -> None:
    assert len(leads) >= 0.6 * len(sequences["followers"])
    views = _next_views(events, ahead=3)
    ahead = views[["next_1", "next_2", "next_3"]]
    # How much likelier a follower is among the next three views after its lead than
    # after any view: the popular items that follow every view have a lift near 1.
    lifts = []
    for lead, follower in leads.items():
        after_lead = (ahead[views.item_id == lead] == follower).any(axis=1).mean()
        after_any = (ahead == follower).any(axis=1).mean()
        lifts.append(after_lead / after_any if after_any else 0.0)
    assert np.median(lifts) >= 20
    assert np.mean(np.array(lifts) >= 5) >= 0.85

    # The planted chances, pooled over all leads: the follower is viewed later in the
    # same session or in the next one after 0.6 of carted lead views, 0.2 of the others.
    followers = sequences["followers"]
    steps = _in_sessions(events)
    lead_views = steps[(steps.event_type == "view") & steps.item_id.isin(followers.keys())]
    carts = steps[steps.event_type == "add_to_cart"]
    carted = set(zip(carts.user_id, carts.item_id, carts.session, strict=True))
    lead_views = lead_views.assign(
        carted=[
            key in carted
            for key in zip(lead_views.user_id, lead_views.item_id, lead_views.session, strict=True)
        ],
        item_id=lead_views.item_id.map(followers),
    )
    follower_views = steps[steps.event_type == "view"][
        ["user_id", "item_id", "session", "timestamp"]
    ]
    pairs = lead_views.reset_index().merge(
        follower_views, on=["user_id", "item_id"], suffixes=("", "_f")
    )
    later = ((pairs.session_f == pairs.session) & (pairs.timestamp_f > pairs.timestamp)) | (
        pairs.session_f == pairs.session + 1
    )
    followed = lead_views.index.isin(pairs["index"][later])
    assert 0.5 < followed[lead_views.carted].mean() < 0.8
    assert 0.15 < followed[~lead_views.carted].mean() < 0.32


def _in_sessions(events: pd.DataFrame) -> pd.DataFrame:
    """Site events with ``session``: the number of the person's session they belong to."""
    site = events[~events.channel.isin(MESSAGE_CHANNELS)]
    site = site.sort_values(["user_id", "timestamp"], kind="stable")
    started = (site.event_type == "session_start").astype(int)
    return site.assign(session=started.groupby(site.user_id).cumsum())


def test_series_are_viewed_in_order(events: pd.DataFrame, sequences: dict) -> None:
    views = _next_views(events, ahead=3)
    ahead = views[["next_1", "next_2", "next_3"]]

    def followed(first: str, then: str) -> int:
        """How often ``then`` is among a person's next three views after ``first``."""
        return int((ahead[views.item_id == first] == then).any(axis=1).sum())

    steps = [(s[k], s[k + 1]) for s in sequences["series"] for k in range(len(s) - 1)]
    forward = np.array([followed(a, b) for a, b in steps])
    backward = np.array([followed(b, a) for a, b in steps])
    assert forward.sum() >= 100
    # Without order each way round would win about half the time.
    assert np.mean(forward > backward) >= 0.9


# --- what models recover ---------------------------------------------------------------


def test_transitions_find_each_leads_follower_and_cf_mostly_does_not(
    models: tuple, leads: dict[str, str]
) -> None:
    position, transitions, similarity = models
    pairs = list(leads.items())
    by_transitions = _share_in_top(transitions, position, pairs)
    by_cf = _share_in_top(similarity, position, pairs)
    assert by_transitions >= 0.7
    assert by_transitions >= by_cf + 0.4


def test_transitions_know_which_comes_first_and_cf_does_not(
    models: tuple, leads: dict[str, str]
) -> None:
    """After the accessory, the lead is no next step: T knows, co-occurrence cannot."""
    position, transitions, similarity = models
    backwards = [(follower, lead) for lead, follower in leads.items()]
    by_transitions = _share_in_top(transitions, position, backwards)
    by_cf = _share_in_top(similarity, position, backwards)
    assert by_transitions <= 0.15
    assert by_cf >= by_transitions + 0.2


def test_transitions_find_the_next_step_of_each_series(models: tuple, sequences: dict) -> None:
    position, transitions, similarity = models
    steps = [(s[k], s[k + 1]) for s in sequences["series"] for k in range(len(s) - 1)]
    assert len(steps) >= 20
    by_transitions = _share_in_top(transitions, position, steps)
    by_cf = _share_in_top(similarity, position, steps)
    assert by_transitions >= 0.8
    # Steps of a series are co-viewed, so CF finds many of them too; order is what it lacks.
    assert by_transitions >= by_cf + 0.1

    # Co-viewing cannot tell the next step from the previous one; order can.
    middles = [
        (s[k - 1], s[k], s[k + 1]) for s in sequences["series"] for k in range(1, len(s) - 1)
    ]
    assert len(middles) >= 10

    def next_first(matrix: np.ndarray) -> float:
        return float(
            np.mean(
                [
                    matrix[position[a], position[after]] > matrix[position[a], position[before]]
                    for before, a, after in middles
                ]
            )
        )

    assert next_first(transitions) >= 0.9
    assert next_first(transitions) >= next_first(similarity) + 0.5
