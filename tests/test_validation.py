"""`train --model auto`: the kind, EASE's λ, the recency half-life and the transitions'
blend chosen by validation inside the training part, ranked as serving ranks, logged,
tagged, shipped in the bundle, and never looking at the final holdout."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.catalogue import Catalogue
from service.recommender import Blend, RankingOptions, Recommender
from service.registry import ModelRegistry
from service.store.codecs import UserFeatures
from service.store.reads import ServingView
from tests.conftest import deployment_env, make_settings
from training import ease, evaluation, validation
from training.__main__ import main as training_main
from training.event_log import load_events
from training.matrix import DEFAULT_WEIGHTS
from training.models import ModelParams, fit, to_bundle
from training.transitions import fit_transitions

ALL = [
    "als",
    "item_knn",
    "ease_lambda_300",
    "ease_lambda_1000",
    "ease_lambda_100",
    "ease_lambda_3000",
]


def test_candidates_leave_ease_out_above_its_size_limit(monkeypatch):
    base = ModelParams(factors=8, neighbours=20)
    picked = validation.candidates(base, 150)
    assert [validation.metric_key(p) for p in picked] == ALL
    assert picked[0].factors == 8 and picked[1].neighbours == 20
    monkeypatch.setattr(ease, "MAX_EASE_ITEMS", 149)
    assert [p.kind for p in validation.candidates(base, 150)] == ["als", "item_knn"]


def test_choice_keeps_the_best_trial_and_a_tie_keeps_the_earlier():
    als, knn, strong = (
        ModelParams(),
        ModelParams(kind="item_knn"),
        ModelParams(kind="ease", regularization=300.0),
    )
    plain, short = Blend(), Blend(recency_half_life_events=3.0)
    after = replace(short, transition_weight=0.2, transition_events=3)
    trials = [
        validation.Trial("model", als, plain, 0, 0.2),
        validation.Trial("model", knn, plain, 0, 0.2),
        validation.Trial("model", strong, plain, 0, 0.25),
        validation.Trial("recency", strong, short, 0, 0.26),
        validation.Trial("transitions", strong, after, 5, 0.27),
        validation.Trial("transitions", strong, replace(after, transition_weight=1.0), 5, 0.27),
    ]
    choice = validation.Choice(trials, 10, 40, 10)
    assert choice.params == strong and choice.blend == after and choice.window == 5
    assert choice.text == (
        "validation: ease λ=300, half-life 3 events, transitions: window 5, newest 3, "
        "weight 0.2: ndcg@10 0.2700 (without transitions 0.2600)"
    )
    flat = choice.flat()
    assert flat["validation_ndcg_at_10_ease_lambda_300"] == 0.25
    assert flat["validation_ndcg_at_10_half_life_3"] == 0.26
    assert flat["validation_ndcg_at_10_chosen"] == 0.27
    assert choice.params_logged()["serving.transition_window"] == 5
    assert len(choice.rows()["candidate"]) == len(trials)
    # Nothing beats the first candidate: it stays, without transitions.
    tie = validation.Choice([replace(t, ndcg=0.0) for t in trials], 0, 0, 10)
    assert tie.params == als and tie.blend == plain and tie.window == 0


@pytest.fixture(scope="module")
def auto_run(redis_server, synthetic, tmp_path_factory):
    """One `train --model auto` run, with every time split it makes recorded."""
    tmp = tmp_path_factory.mktemp("auto")
    settings = make_settings(redis_server.url, tmp, key_prefix="auto")
    splits = []
    real_split = evaluation.time_split

    def spy(frame, *args, **kwargs):
        out = real_split(frame, *args, **kwargs)
        splits.append((set(frame.index), set(out.test.index)))
        return out

    with pytest.MonkeyPatch.context() as mp:
        for name, value in deployment_env(settings).items():
            mp.setenv(name, value)
        mp.setattr(evaluation, "time_split", spy)
        argv = ["train", "--events", str(synthetic.events), "--model", "auto", "--no-publish"]
        assert training_main(argv) == 0
    return settings, splits


@pytest.mark.integration
def test_auto_logs_every_candidate_and_registers_the_best(auto_run):
    settings, _ = auto_run
    registry = ModelRegistry(settings)
    metrics = registry.run_metrics("1")
    logged = {key: metrics[f"validation_ndcg_at_10_{key}"] for key in ALL}
    # max() keeps the first of equals: the candidate order, as the choice does.
    best = max(ALL, key=lambda key: logged[key])
    tags = registry.version_tags("1")
    params = registry.load_version("1").bundle.metadata["params"]
    assert tags["omnirec.kind"] == params["kind"] == best.split("_lambda_")[0]
    if params["kind"] == "ease":
        assert best == f"ease_lambda_{params['regularization']:g}"
    assert tags["omnirec.chosen_by"].startswith(f"validation: {best.replace('_lambda_', ' λ=')},")
    assert metrics["validation_users"] > 0
    # The chosen blend travels in the bundle and in the run's params.
    serving = registry.load_version("1").bundle.metadata["serving"]
    run_id = registry.client.get_model_version(registry.name, "1").run_id
    logged_params = registry.client.get_run(run_id).data.params
    assert (
        float(logged_params["serving.recency_half_life_events"])
        == (serving["recency_half_life_events"])
    )
    assert float(logged_params["serving.transition_weight"]) == serving["transition_weight"]
    assert (
        metrics["validation_ndcg_at_10_chosen"]
        >= metrics["validation_ndcg_at_10_without_transitions"]
    )


@pytest.mark.integration
def test_auto_validates_inside_the_training_part_only(auto_run):
    _, splits = auto_run
    everything = max((frame for frame, _ in splits), key=len)
    held_out = {frozenset(test) for frame, test in splits if frame == everything}
    assert len(held_out) == 1, "the final holdout is one split of all events"
    (final_test,) = held_out
    inner = [(frame, test) for frame, test in splits if frame != everything]
    assert inner, "no validation split was made"
    for frame, test in inner:
        assert frame == everything - final_test
        assert test and test <= frame


@pytest.mark.parametrize(
    ("kind", "weight"),
    [("als", 0.5), ("als", 0.0), ("item_knn", 0.35), ("ease", 0.2), ("ease", 0.0)],
)
def test_validation_ranks_people_exactly_as_recommend_does(synthetic, kind, weight):
    """The served ranker validation uses (a block of people at a time, the transition
    blend re-ranking the model's top items) gives each person the same top items, in the
    same order, as ``Recommend(exclude_seen=true)`` with the same bundle and history."""
    frame = load_events(synthetic.events).frame
    prepared = evaluation.prepare(frame, DEFAULT_WEIGHTS)
    train = prepared.train
    params = ModelParams(kind=kind, factors=8, iterations=3)
    model = fit(params, train.matrix)
    bundle = to_bundle(
        model,
        params,
        train.user_ids,
        train.item_ids,
        {"weights": dict(DEFAULT_WEIGHTS), "serving": Blend(3.0, weight, 3).to_metadata()},
    )
    bundle.transitions = fit_transitions(prepared.split.train, DEFAULT_WEIGHTS, train.item_ids)
    recommender = Recommender(bundle)
    history = evaluation.histories(prepared.split.train, train.user_ids, 200)
    rank = evaluation.served_ranker(recommender, history, train.matrix)
    # Whole histories without dislikes: then exclude_seen leaves out exactly the items of
    # their training row, as validation does.
    people = [
        u for u in sorted(prepared.relevant) if len(history[u]) < 200 and not _disliked(history[u])
    ][:25]
    assert len(people) == 25
    ranked = rank(np.array(people), 10)
    for row, u in zip(ranked, people, strict=True):
        view = ServingView(None, UserFeatures(history=history[u]), [])
        served = recommender.recommend(
            str(train.user_ids[u]), view, Catalogue(0, {}), RankingOptions(10, exclude_seen=True)
        )
        assert [str(train.item_ids[j]) for j in row] == [r.item_id for r in served]


def _disliked(history):
    return any(kind == "dislike" for _, kind, _ in history)
